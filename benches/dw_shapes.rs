//! Weight-gradient kernels at the chapter's 96×96 shapes, batch 256: the channel-major direct kernel vs
//! im2col + gemm, alternating, best of 5 each.
//! `cargo bench --bench dw_shapes [-- NAME-FILTER]`, e.g. `-- 3×3/2`
use resnet::kernels::conv::channel_major::{
    conv_weight_grad_cm, weight_grad_chunk, weight_grad_handles,
};
use resnet::kernels::conv::{im2col::im2col, ConvGeom};
use resnet::kernels::gemm::{matmul, MatRef};
use std::time::Instant;

fn main() {
    let n = 256;
    let convs = [
        (64, 64, 3, 1, 1, 24, "stage1 3×3"),
        (128, 128, 3, 1, 1, 12, "stage2 3×3"),
        (256, 256, 3, 1, 1, 6, "stage3 3×3"),
        (512, 512, 3, 1, 1, 3, "stage4 3×3"),
        (1, 64, 7, 2, 3, 96, "stem 7×7/2"),
        (64, 128, 3, 2, 1, 24, "stage2 3×3/2"),
        (128, 256, 3, 2, 1, 12, "stage3 3×3/2"),
        (256, 512, 3, 2, 1, 6, "stage4 3×3/2"),
        (64, 128, 1, 2, 0, 24, "stage2 1×1/2"),
        (256, 512, 1, 2, 0, 6, "stage4 1×1/2"),
    ];
    // `cargo bench` appends `--bench` to the arguments given after `--`.
    let only = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .unwrap_or_default();
    for (cin, cout, k, s, p, h, name) in convs {
        if !name.contains(only.as_str()) {
            continue;
        }
        let g = ConvGeom::new(cin, cout, k, s, p, h, h).unwrap();
        let x: Vec<f32> = (0..n * h * h * cin)
            .map(|i| (i % 17) as f32 / 17.0)
            .collect();
        let rows = n * g.oh * g.ow;
        let dy: Vec<f32> = (0..rows * cout).map(|i| (i % 13) as f32 / 13.0).collect();
        let kk = g.live_patch_len();
        let mut dw = vec![0.0f32; kk * cout];
        let chunk = g.chunk_images(n);
        let mut cols = vec![0.0f32; chunk * g.oh * g.ow * kk];
        let mut ws = vec![0.0f32; weight_grad_chunk(&g, n).1];
        let (mut direct, mut gemm) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            if weight_grad_handles(&g) {
                let t = Instant::now();
                conv_weight_grad_cm(&g, n, &x, &dy, &mut dw, &mut ws);
                direct = direct.min(t.elapsed().as_secs_f64());
            }
            let t = Instant::now();
            let mut first = 0;
            while first < n {
                let images = chunk.min(n - first);
                let r = images * g.oh * g.ow;
                im2col(&g, images, &x[first * h * h * cin..], &mut cols);
                matmul(
                    kk,
                    cout,
                    r,
                    &mut dw,
                    first > 0,
                    MatRef::transposed(&cols[..r * kk], kk),
                    MatRef::row_major(&dy[first * g.oh * g.ow * cout..][..r * cout], cout),
                );
                first += images;
            }
            gemm = gemm.min(t.elapsed().as_secs_f64());
        }
        let flop = 2.0 * (rows * kk * cout) as f64 / 1e9;
        println!(
            "{name:<14} direct {:6.1} ms {:6.1} GFLOP/s   im2col+gemm {:6.1} ms {:6.1} GFLOP/s",
            direct * 1e3,
            flop / direct,
            gemm * 1e3,
            flop / gemm
        );
    }
}
