//! GFLOP/s of ResNet-50's 1×1 convolutions at 224×224, batch 32: the gemm crate against the direct kernels.
//! `cargo bench --bench pointwise_shapes [-- CIN-COUT]`, e.g. `-- 64-256`
use resnet::kernels::conv::channel_major;
use resnet::kernels::conv::direct::{self as conv_direct, Weights};
use resnet::kernels::conv::pointwise as conv_pointwise;
use resnet::kernels::conv::ConvGeom;
use resnet::kernels::gemm::{matmul, MatRef};
use std::time::Instant;

fn best(mut f: impl FnMut()) -> f64 {
    let mut b = f64::MAX;
    for _ in 0..6 {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}

fn main() {
    // RESNET_BENCH_THREADS=1: one thread (the minimum of six runs is then robust on a shared machine).
    let threads = std::env::var("RESNET_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(run);
}

fn run() {
    let n = 32;
    // `cargo bench` appends `--bench` to the arguments given after `--`.
    let only = std::env::args().skip(1).find(|a| a != "--bench");
    for (cin, cout, side) in [
        (64, 64, 56),
        (64, 256, 56),
        (256, 64, 56),
        (256, 128, 56),
        (128, 512, 28),
        (512, 128, 28),
        (256, 1024, 14),
        (1024, 256, 14),
        (512, 2048, 7),
        (2048, 512, 7),
    ] {
        if only
            .as_deref()
            .is_some_and(|o| o != format!("{cin}-{cout}"))
        {
            continue;
        }
        let rows = n * side * side;
        let x: Vec<f32> = (0..rows * cin).map(|i| (i % 17) as f32 / 17.0).collect();
        let w: Vec<f32> = (0..cin * cout).map(|i| (i % 13) as f32 / 130.0).collect();
        let mut y = vec![0.0f32; rows * cout];
        let flops = 2.0 * (rows * cin * cout) as f64 / 1e9;
        let tg = best(|| {
            matmul(
                rows,
                cout,
                cin,
                &mut y,
                false,
                MatRef::row_major(&x, cin),
                MatRef::row_major(&w, cout),
            )
        });
        let g = ConvGeom::new(cin, cout, 1, 1, 0, rows, 1).unwrap();
        let mut packed = vec![0.0f32; cin * cout];
        conv_direct::pack_weights(&g, &w, &mut packed);
        let td = best(|| {
            conv_direct::conv_direct(
                &g,
                1,
                &x,
                Weights::Hwio(&w),
                &mut y,
                false,
                Default::default(),
                false,
            )
        });
        let tp = best(|| {
            conv_direct::conv_direct(
                &g,
                1,
                &x,
                Weights::Packed(&packed),
                &mut y,
                false,
                Default::default(),
                false,
            )
        });
        let gp = ConvGeom::new(cin, cout, 1, 1, 0, side, side).unwrap();
        let mut pws = vec![0.0f32; conv_pointwise::workspace_len(&gp)];
        let tpw =
            best(|| conv_pointwise::forward(&gp, n, &x, &w, &mut y, Default::default(), &mut pws));
        // dw = xᵀ dy
        let dy = y.clone();
        let mut dw = vec![0.0f32; cin * cout];
        let tgw = best(|| {
            matmul(
                cin,
                cout,
                rows,
                &mut dw,
                false,
                MatRef::transposed(&x, cin),
                MatRef::row_major(&dy, cout),
            )
        });
        let (_, wl) = channel_major::weight_grad_chunk(&gp, n);
        let mut ws = vec![0.0f32; wl];
        let tcw = best(|| channel_major::conv_weight_grad_cm(&gp, n, &x, &dy, &mut dw, &mut ws));
        let mut dws = vec![0.0f32; conv_pointwise::weight_grad_workspace_len(&gp, n)];
        let tpdw = best(|| conv_pointwise::weight_grad(&gp, n, &x, &dy, &mut dw, &mut dws));
        // dx = dy wᵀ
        let mut dx = vec![0.0f32; rows * cin];
        let tgx = best(|| {
            matmul(
                rows,
                cin,
                cout,
                &mut dx,
                false,
                MatRef::row_major(&dy, cout),
                MatRef::transposed(&w, cout),
            )
        });
        let tpdx = best(|| conv_pointwise::input_grad(&gp, n, &dy, &w, &mut dx, &mut pws));
        println!("{cin:>4}->{cout:<4} {side:>2}²: fwd gemm {:6.1} direct {:6.1} packed {:6.1} ours {:6.1} | dw gemm {:6.1} cm {:6.1} ours {:6.1} | dx gemm {:6.1} ours {:6.1} GFLOP/s",
            flops / tg, flops / td, flops / tp, flops / tpw, flops / tgw, flops / tcw, flops / tpdw, flops / tgx, flops / tpdx);
    }
}
