//! The convolution by its definition: plain loops over every output position, kernel tap and channel pair,
//! forward and backward. Slow and plainly right, it is what the kernels' tests compare against, as llm.c keeps
//! its naive matmul beside the fast one; nothing on a training or inference path calls it.
//!
//! Shapes, as the kernels': input `x [n, h, w, cin]` (NHWC), weights `w [kh, kw, cin, cout]` (HWIO, i.e. a
//! row-major `[kh·kw·cin, cout]` matrix), bias `[cout]`, output and output gradient `y, dy [n, oh, ow, cout]`,
//! with `oh`, `ow`, the stride and the zero padding of the [`ConvGeom`].
//!
//! The sums run in f64 and are rounded once, so that the reference's own rounding is negligible next to the
//! kernels' (the Winograd tests bound theirs at 2e-6 of the output's scale). Each function allocates its result.

use super::ConvGeom;

/// Calls `f(position, pixel, tap)` for every output position and kernel tap whose input pixel lies inside the
/// image (a tap over the zero padding adds nothing): `position` numbers the rows of `y [n·oh·ow, cout]`, `pixel`
/// those of `x [n·h·w, cin]`, and `tap = ky·kw + kx` the `[cin, cout]` blocks of `w`.
fn for_each_tap(g: &ConvGeom, n: usize, mut f: impl FnMut(usize, usize, usize)) {
    for img in 0..n {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        // The input row and column under the tap, negative above and left of the image.
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        let position = (img * g.oh + oy) * g.ow + ox;
                        let pixel = (img * g.h + iy as usize) * g.w + ix as usize;
                        f(position, pixel, ky * g.kw + kx);
                    }
                }
            }
        }
    }
}

/// Rounds the f64 sums to f32.
fn rounded(sums: Vec<f64>) -> Vec<f32> {
    sums.into_iter().map(|v| v as f32).collect()
}

/// `y [n, oh, ow, cout]`: `y[p, co] = bias[co] + Σ_taps Σ_ci x[pixel, ci] · w[tap, ci, co]`, an empty `bias`
/// adding nothing (a convolution without one).
pub fn forward(g: &ConvGeom, n: usize, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    let (cin, cout) = (g.cin, g.cout);
    let mut y = vec![0.0f64; n * g.oh * g.ow * cout];
    if !bias.is_empty() {
        for (i, v) in y.iter_mut().enumerate() {
            *v = bias[i % cout] as f64;
        }
    }
    for_each_tap(g, n, |position, pixel, tap| {
        let out = &mut y[position * cout..][..cout];
        for ci in 0..cin {
            let xv = x[pixel * cin + ci] as f64;
            let w_row = &w[(tap * cin + ci) * cout..][..cout];
            for (o, &wv) in out.iter_mut().zip(w_row) {
                *o += xv * wv as f64;
            }
        }
    });
    rounded(y)
}

/// The input gradient `dx [n, h, w, cin]`: `dx[pixel, ci] = Σ dy[p, co] · w[tap, ci, co]` over the (position,
/// tap) pairs that read the pixel and every output channel.
pub fn input_grad(g: &ConvGeom, n: usize, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (cin, cout) = (g.cin, g.cout);
    let mut dx = vec![0.0f64; n * g.h * g.w * cin];
    for_each_tap(g, n, |position, pixel, tap| {
        let d = &dy[position * cout..][..cout];
        for ci in 0..cin {
            let w_row = &w[(tap * cin + ci) * cout..][..cout];
            for (&dv, &wv) in d.iter().zip(w_row) {
                dx[pixel * cin + ci] += dv as f64 * wv as f64;
            }
        }
    });
    rounded(dx)
}

/// The weight gradient `dw [kh·kw·cin, cout]`: `dw[tap, ci, co] = Σ x[pixel, ci] · dy[p, co]` over the (position,
/// pixel) pairs the tap joins (zero for a tap that only ever reads the padding).
pub fn weight_grad(g: &ConvGeom, n: usize, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (cin, cout) = (g.cin, g.cout);
    let mut dw = vec![0.0f64; g.patch_len() * cout];
    for_each_tap(g, n, |position, pixel, tap| {
        let d = &dy[position * cout..][..cout];
        for ci in 0..cin {
            let xv = x[pixel * cin + ci] as f64;
            let dw_row = &mut dw[(tap * cin + ci) * cout..][..cout];
            for (o, &dv) in dw_row.iter_mut().zip(d) {
                *o += xv * dv as f64;
            }
        }
    });
    rounded(dw)
}

/// The bias gradient `dbias [cout]`: `dbias[co] = Σ_p dy[p, co]` over the `n·oh·ow` output positions.
pub fn bias_grad(g: &ConvGeom, n: usize, dy: &[f32]) -> Vec<f32> {
    let mut db = vec![0.0f64; g.cout];
    for row in dy[..n * g.oh * g.ow * g.cout].chunks_exact(g.cout) {
        for (s, &v) in db.iter_mut().zip(row) {
            *s += v as f64;
        }
    }
    rounded(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_convolution_worked_by_hand() {
        // One channel, x = 1..=16 on a 4×4 plane, a 3×3 kernel of ones, stride 2, padding 1: each output is
        // the bias plus the pixels its window covers (rows and columns 0–1 or 1–3).
        let g = ConvGeom::new(1, 1, 3, 2, 1, 4, 4).unwrap();
        let x: Vec<f32> = (1..=16).map(|v| v as f32).collect();
        let y = forward(&g, 1, &x, &[1.0; 9], &[0.5]);
        assert_eq!(y, [14.5, 30.5, 57.5, 99.5]);
        // Every output's gradient 1: each pixel's gradient counts the windows that cover it.
        let dx = input_grad(&g, 1, &[1.0; 4], &[1.0; 9]);
        assert_eq!(
            dx,
            [1., 2., 1., 1., 2., 4., 2., 2., 1., 2., 1., 1., 1., 2., 1., 1.]
        );
        assert_eq!(bias_grad(&g, 1, &[1.0, 2.0, 3.0, 4.0]), [10.0]);
    }

    /// ⟨a, b⟩ in f64.
    fn dot(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(&u, &v)| u as f64 * v as f64).sum()
    }

    #[test]
    fn the_gradients_are_the_adjoints_of_the_forward_pass() {
        // ⟨dy, conv(x, w)⟩ = ⟨input_grad(dy, w), x⟩ = ⟨weight_grad(x, dy), w⟩, and the bias adds
        // ⟨bias_grad(dy), bias⟩: on odd planes, stride 2, a 1×1 stride-2 shortcut and a 1×1 plane with dead taps.
        for (cin, cout, k, stride, pad, h, w, n) in [
            (3, 5, 3, 1, 1, 5, 7, 2),
            (4, 3, 3, 2, 1, 7, 6, 3),
            (6, 4, 1, 2, 0, 5, 5, 2),
            (2, 3, 3, 1, 1, 1, 1, 4),
        ] {
            let g = ConvGeom::new(cin, cout, k, stride, pad, h, w).unwrap();
            let pattern = |len: usize, step: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| ((i * step % 97) as f32 - 48.0) / 48.0)
                    .collect()
            };
            let x = pattern(n * h * w * cin, 37);
            let wt = pattern(k * k * cin * cout, 53);
            let dy = pattern(n * g.oh * g.ow * cout, 29);
            let bias = pattern(cout, 11);
            let y = forward(&g, n, &x, &wt, &[]);
            // Each gradient value is rounded once to f32, and every product term is at most 1 in size.
            let terms = (n * g.oh * g.ow * k * k * cin * cout) as f64;
            let close = |what: &str, got: f64, want: f64| {
                assert!(
                    (got - want).abs() <= 1e-7 * terms,
                    "{what} of {g:?}: {got} vs {want}"
                );
            };
            let want = dot(&dy, &y);
            close(
                "input gradient",
                dot(&input_grad(&g, n, &dy, &wt), &x),
                want,
            );
            close(
                "weight gradient",
                dot(&weight_grad(&g, n, &x, &dy), &wt),
                want,
            );
            let with_bias = dot(&dy, &forward(&g, n, &x, &wt, &bias));
            close(
                "bias gradient",
                want + dot(&bias_grad(&g, n, &dy), &bias),
                with_bias,
            );
        }
    }
}
