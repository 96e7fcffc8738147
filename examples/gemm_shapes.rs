//! GFLOP/s of the GEMM shapes the chapter's convs produce. `cargo run --release --example gemm_shapes`
use resnet::kernels::gemm::{matmul, MatRef};
use std::time::Instant;

fn main() {
    let shapes: &[(usize, usize, usize, &str)] = &[
        (1024, 1024, 1024, "square 1024"),
        (12544, 64, 576, "28: stage1 conv fwd"),
        (576, 64, 12544, "28: stage1 dW (colsT x dy)"),
        (12544, 576, 64, "28: stage1 dcols (dy x Wt)"),
        (1024, 512, 4608, "28: stage4 conv fwd"),
        (147456, 64, 576, "96: stage1 conv fwd (full batch)"),
        (16384, 64, 576, "96: stage1 conv fwd (chunk)"),
        (589824, 64, 49, "96: stem fwd"),
    ];
    for &(m, n, k, name) in shapes {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0.0f32; m * n];
        let mut best = f64::MAX;
        for _ in 0..4 {
            let t = Instant::now();
            matmul(
                m,
                n,
                k,
                &mut c,
                false,
                MatRef::row_major(&a, k),
                MatRef::row_major(&b, n),
            );
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{name:<36} m={m:>6} n={n:>4} k={k:>5}: {:.1} GFLOP/s",
            2.0 * (m * n * k) as f64 / best / 1e9
        );
    }
}
