//! Milliseconds per batch of ResNet-50 at 224×224: the f32 compiled network against the int8 one (calibrated
//! on two random images) on this CPU's path. `cargo bench --bench int8_net [-- BATCH...]` (default 1 and 32);
//! `RESNET_AVX512=0` runs both on AVX2.
use resnet::compiled::int8::{Calibration, Method, QuantNet};
use resnet::compiled::CompiledNet;
use resnet::kernels::int8::Path;
use resnet::nn::{ArchName, ResNet, ResNetConfig};
use resnet::Shape4;
use std::time::Instant;

fn best(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut b = f64::MAX;
    for _ in 0..iters {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}

fn main() {
    let mut batches: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if batches.is_empty() {
        batches = vec![1, 32];
    }
    let net = ResNet::new(ResNetConfig::named(ArchName::Resnet50, 3, 1000), 1).unwrap();
    let image = |n: usize| -> (Vec<f32>, Shape4) {
        let xs = Shape4::new(n, 3, 224, 224);
        (
            (0..xs.len())
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect(),
            xs,
        )
    };
    let mut f32net = CompiledNet::new(&net, None).unwrap();
    let mut calibration = Calibration::new(&f32net);
    let (x, xs) = image(2);
    calibration.observe(&mut f32net, &x, xs).unwrap();
    let path = Path::detect();
    let clips = calibration.clips(Method::MinMax);
    let mut q = QuantNet::new(CompiledNet::new(&net, None).unwrap(), &clips, path).unwrap();
    println!("resnet50 224×224, int8 path {}", path.name());
    for n in batches {
        let (x, xs) = image(n);
        let iters = if n == 1 { 10 } else { 3 };
        let t32 = best(iters, || {
            f32net.forward(&x, xs).unwrap();
        });
        let t8 = best(iters, || {
            q.forward(&x, xs).unwrap();
        });
        println!(
            "batch {n:>3}: f32 {:8.1} ms  int8 {:8.1} ms  ×{:.2}",
            t32 * 1e3,
            t8 * 1e3,
            t32 / t8
        );
    }
}
