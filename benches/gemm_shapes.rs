//! GFLOP/s of the GEMM shapes the chapter's convs produce at 96×96 (2M-float im2col chunks).
//! `cargo bench --bench gemm_shapes`
use resnet::kernels::gemm::{matmul, MatRef};
use std::time::Instant;

fn main() {
    // (m, n, k, lhs transposed, name)
    let shapes: &[(usize, usize, usize, bool, &str)] = &[
        (1024, 1024, 1024, false, "square 1024"),
        (3600, 64, 576, false, "stage1 fwd / dx chunk"),
        (576, 64, 3600, true, "stage1 dW chunk (colsT dy)"),
        (1296, 128, 1152, false, "stage2 fwd chunk"),
        (1152, 128, 1296, true, "stage2 dW chunk"),
        (36864, 64, 49, false, "stem fwd chunk"),
        (49, 64, 36864, true, "stem dW chunk"),
        (9216, 128, 64, false, "1x1 shortcut"),
    ];
    for &(m, n, k, trans, name) in shapes {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0.0f32; m * n];
        let lhs = if trans {
            MatRef::transposed(&a, m)
        } else {
            MatRef::row_major(&a, k)
        };
        let mut best = f64::MAX;
        for _ in 0..6 {
            let t = Instant::now();
            matmul(m, n, k, &mut c, false, lhs, MatRef::row_major(&b, n));
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{name:<30} m={m:>6} n={n:>4} k={k:>6}: {:.1} GFLOP/s",
            2.0 * (m * n * k) as f64 / best / 1e9
        );
    }
}
