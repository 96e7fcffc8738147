//! GFLOP/s of the chapter's convolutions at 96×96, batch 256: forward, and backward (weights + input).
//! `cargo bench --bench conv_shapes` (set `RESNET_PORTABLE=1` for the im2col + gemm path).
use resnet::kernels::conv::{ConvGeom, ConvPlan};
use std::time::Instant;

fn main() {
    let n = 256;
    // (cin, cout, k, stride, pad, h)
    let convs = [
        (1, 64, 7, 2, 3, 96, "stem 7×7/2"),
        (64, 64, 3, 1, 1, 24, "stage1 3×3"),
        (64, 128, 3, 2, 1, 24, "stage2 3×3/2"),
        (128, 128, 3, 1, 1, 12, "stage2 3×3"),
        (64, 128, 1, 2, 0, 24, "stage2 1×1/2"),
        (256, 256, 3, 1, 1, 6, "stage3 3×3"),
        (512, 512, 3, 1, 1, 3, "stage4 3×3"),
    ];
    for (cin, cout, k, s, p, h, name) in convs {
        let g = ConvGeom::new(cin, cout, k, s, p, h, h).unwrap();
        let x: Vec<f32> = (0..n * h * h * cin)
            .map(|i| (i % 17) as f32 / 17.0)
            .collect();
        let w: Vec<f32> = (0..k * k * cin * cout)
            .map(|i| (i % 13) as f32 / 130.0)
            .collect();
        let bias = vec![0.1f32; cout];
        let mut y = vec![0.0f32; n * g.oh * g.ow * cout];
        let plan = ConvPlan::new(g, n);
        let mut ws = vec![0.0f32; plan.workspace_len()];
        let mut dw = vec![0.0f32; w.len()];
        let mut db = vec![0.0f32; cout];
        let mut dx = vec![0.0f32; x.len()];
        let macs = (n * g.oh * g.ow * k * k * cin * cout) as f64;
        let (mut fwd, mut bwd) = (f64::MAX, f64::MAX);
        for _ in 0..4 {
            let t = Instant::now();
            plan.forward(&x, &w, &bias, &mut y, &mut ws);
            fwd = fwd.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            plan.backward(&x, &w, &y, &mut dw, &mut db, Some(&mut dx), &mut ws);
            bwd = bwd.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{name:<14} fwd {:6.1} ms {:6.1} GFLOP/s   bwd {:6.1} ms {:6.1} GFLOP/s  {}",
            fwd * 1e3,
            2.0 * macs / fwd / 1e9,
            bwd * 1e3,
            4.0 * macs / bwd / 1e9,
            plan
        );
    }
}
