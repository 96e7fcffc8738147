//! Times forward + loss + backward of the chapter's ResNet-18 at batch 256 (1×28×28 by default).
//! `cargo bench --bench step_timing [-- SIZE [BATCH [ITERS]]]`
use resnet::nn::{resnet18, Buffers};
use resnet::Shape4;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        // `cargo bench` appends `--bench` to the arguments given after `--`.
        .filter(|a| a != "--bench")
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let size = args.first().copied().unwrap_or(28);
    let batch = args.get(1).copied().unwrap_or(256);
    let iters = args.get(2).copied().unwrap_or(5);
    let mut net = resnet18(1, 10, 0);
    let xs = Shape4::new(batch, 1, size, size);
    let x: Vec<f32> = (0..xs.len()).map(|i| (i % 255) as f32 / 255.0).collect();
    let labels: Vec<usize> = (0..batch).map(|i| i % 10).collect();
    for i in 0..iters + 1 {
        let t = Instant::now();
        net.forward(&x, xs, Buffers::Own).unwrap();
        let t_fwd = t.elapsed();
        net.loss(&labels).unwrap();
        net.backward(&x, false, None);
        let dt = t.elapsed().as_secs_f64();
        println!(
            "iter {i}: fwd {:.3}s total {:.3}s  {:.1} images/s",
            t_fwd.as_secs_f64(),
            dt,
            batch as f64 / dt
        );
    }
}
