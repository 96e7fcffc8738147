//! GOP/s of ResNet-50's convolutions at 224×224 (1×1, 3×3, the strided ones), the f32 inference plan (bias and
//! ReLU in the store) against the int8 kernel on this CPU's path (requantized to u8 in the store); for the 3×3
//! ones also a u8 im2col followed by the kernel as a 1×1 product (the patches copied, not read in place).
//! `cargo bench --bench int8_shapes [-- BATCH] [-- SHAPE]` (default 32; SHAPE a piece of a line's name, such as
//! `1x1/1 64->`, to run only those); `RESNET_AVX512=0` runs both on AVX2.
use rayon::prelude::*;
use resnet::kernels::conv::tile::MAX_CIN;
use resnet::kernels::conv::{ConvGeom, ConvPlan, Epilogue};
use resnet::kernels::int8::{self, Output, Path, Requant, Residual};
use std::time::Instant;

/// `cols [n·oh·ow, kh·kw·cin]`: each output position's patch, zeros in the padding.
fn im2col(g: &ConvGeom, x: &[u8], cols: &mut [u8]) {
    let k = g.kh * g.kw * g.cin;
    cols.par_chunks_mut(k).enumerate().for_each(|(r, patch)| {
        let plane = g.oh * g.ow;
        let (img, oy, ox) = (r / plane, r % plane / g.ow, r % g.ow);
        for (t, dst) in patch.chunks_exact_mut(g.cin).enumerate() {
            let iy = (oy * g.stride + t / g.kw) as isize - g.pad as isize;
            let ix = (ox * g.stride + t % g.kw) as isize - g.pad as isize;
            if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                dst.fill(0);
            } else {
                let pixel = (img * g.h + iy as usize) * g.w + ix as usize;
                dst.copy_from_slice(&x[pixel * g.cin..][..g.cin]);
            }
        }
    });
}

fn best(mut f: impl FnMut()) -> f64 {
    f();
    let mut b = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}

fn main() {
    // `cargo bench` appends `--bench` to the arguments given after `--`.
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(32);
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.parse::<usize>().is_err() && a != "--bench")
        .collect();
    let path = Path::detect();
    println!("batch {n}, int8 path {}", path.name());
    // (cin, cout, k, stride, pad, input side)
    let convs = [
        // The stem, its 3 channels padded to 4 as the quantized network's.
        (4, 64, 7, 2, 3, 224),
        (64, 64, 1, 1, 0, 56),
        (64, 256, 1, 1, 0, 56),
        (256, 64, 1, 1, 0, 56),
        (256, 512, 1, 2, 0, 56),
        (128, 512, 1, 1, 0, 28),
        (512, 128, 1, 1, 0, 28),
        (1024, 256, 1, 1, 0, 14),
        (2048, 512, 1, 1, 0, 7),
        (64, 64, 3, 1, 1, 56),
        (128, 128, 3, 2, 1, 56),
        (128, 128, 3, 1, 1, 28),
        (256, 256, 3, 1, 1, 14),
        (512, 512, 3, 1, 1, 7),
    ];
    for (cin, cout, k, s, p, h) in convs {
        let name = format!("{k}x{k}/{s} {cin:>4}->{cout:<4}");
        if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        let g = ConvGeom::new(cin, cout, k, s, p, h, h).unwrap();
        let out_len = n * g.oh * g.ow * cout;
        let ops = 2.0 * (n * g.oh * g.ow * k * k * cin * cout) as f64 / 1e9;
        let x: Vec<f32> = (0..n * h * h * cin)
            .map(|i| (i % 17) as f32 / 17.0)
            .collect();
        let w: Vec<f32> = (0..k * k * cin * cout)
            .map(|i| (i % 13) as f32 / 130.0 - 0.05)
            .collect();
        let bias = vec![0.1f32; cout];
        let mut y = vec![0.0f32; out_len];
        let plan = ConvPlan::inference(g, n, false);
        let mut prepared = plan.prepared_len().map(|l| vec![0.0f32; l]);
        if let Some(p) = prepared.as_mut() {
            plan.prepare_weights(&w, p);
        }
        let mut ws = vec![0.0f32; plan.forward_workspace_len()];
        let t32 = best(|| {
            let e = Epilogue::bias(&bias, None, true);
            plan.forward_with(&x, &w, prepared.as_deref(), e, &mut y, &mut ws)
        });
        let qmax = path.qmax();
        let xq: Vec<u8> = (0..x.len()).map(|i| (i % 17 * 7) as u8 % qmax).collect();
        let wq: Vec<i8> = (0..w.len()).map(|i| (i % 13) as i8 * 9 - 54).collect();
        let packed = int8::pack(path, k * k, cin, cout, &wq);
        let (bq, sq) = (vec![100i32; cout], vec![1e-4f32; cout]);
        let rq = Requant {
            bias: &bq,
            scale: &sq,
            residual: Residual::None,
            relu: true,
            qmax,
        };
        let mut yq = vec![0u8; out_len];
        let t8 = best(|| int8::conv(&g, n, &xq, &packed, &rq, Output::U8(&mut yq)));
        // The kernel reads at most MAX_CIN channels a tap (its zero block's length).
        let via_im2col = if k > 1 && k * k * cin <= MAX_CIN {
            let rows = n * g.oh * g.ow;
            let g1 = ConvGeom::new(k * k * cin, cout, 1, 1, 0, rows, 1).unwrap();
            let packed1 = int8::pack(path, 1, k * k * cin, cout, &wq);
            let mut cols = vec![0u8; rows * k * k * cin];
            let t = best(|| {
                im2col(&g, &xq, &mut cols);
                int8::conv(&g1, 1, &cols, &packed1, &rq, Output::U8(&mut yq))
            });
            format!("  im2col + 1x1 {:6.1} GOP/s", ops / t)
        } else {
            String::new()
        };
        println!(
            "{name} {h:>2}²: f32 {:6.1} GFLOP/s ({:<24}) int8 {:6.1} GOP/s  ×{:.2}{via_im2col}",
            ops / t32,
            plan.forward.to_string(),
            ops / t8,
            t32 / t8
        );
    }
}
