//! Max pooling (window `k`, stride, padding with −∞) and global average pooling over NHWC batches.

use rayon::prelude::*;

/// Geometry of a max pool: channels, window, stride, padding, input and output plane sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    /// Channels (last axis of the NHWC input and output; pooled independently).
    pub c: usize,
    /// Window side (square `k × k`).
    pub k: usize,
    /// Stride, in both directions.
    pub stride: usize,
    /// Padding on each side (counts as −∞).
    pub pad: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height, `(h + 2·pad − k) / stride + 1`.
    pub oh: usize,
    /// Output width, `(w + 2·pad − k) / stride + 1`.
    pub ow: usize,
}

impl PoolGeom {
    /// Output size `(h + 2·pad − k) / stride + 1` (PyTorch's floor mode). `None` if the window does not fit.
    pub fn new(c: usize, k: usize, stride: usize, pad: usize, h: usize, w: usize) -> Option<Self> {
        if stride == 0 || h + 2 * pad < k || w + 2 * pad < k {
            return None;
        }
        Some(PoolGeom {
            c,
            k,
            stride,
            pad,
            h,
            w,
            oh: (h + 2 * pad - k) / stride + 1,
            ow: (w + 2 * pad - k) / stride + 1,
        })
    }
}

/// `y [n, oh, ow, c] = max over each window of x [n, h, w, c]`; padding counts as −∞.
/// `argmax [n, oh, ow, c]` receives, per output, the index within its image of the winning input
/// (the first maximum in window order, as PyTorch picks it), for [`max_pool_backward`].
pub fn max_pool_forward(g: &PoolGeom, n: usize, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let plane_in = g.h * g.w * g.c;
    let plane_out = g.oh * g.ow * g.c;
    y[..n * plane_out]
        .par_chunks_mut(plane_out)
        .zip(argmax[..n * plane_out].par_chunks_mut(plane_out))
        .enumerate()
        .for_each(|(img, (y, am))| {
            let x = &x[img * plane_in..][..plane_in];
            for oy in 0..g.oh {
                let y0 = (oy * g.stride) as isize - g.pad as isize;
                let ys = y0.max(0) as usize..((y0 + g.k as isize).min(g.h as isize)) as usize;
                for ox in 0..g.ow {
                    let x0 = (ox * g.stride) as isize - g.pad as isize;
                    let xs = x0.max(0) as usize..((x0 + g.k as isize).min(g.w as isize)) as usize;
                    let out = &mut y[(oy * g.ow + ox) * g.c..][..g.c];
                    let idx = &mut am[(oy * g.ow + ox) * g.c..][..g.c];
                    out.fill(f32::NEG_INFINITY);
                    let first = ((ys.start * g.w + xs.start) * g.c) as u32;
                    for (ch, i) in idx.iter_mut().enumerate() {
                        *i = first + ch as u32;
                    }
                    for iy in ys.clone() {
                        for ix in xs.clone() {
                            let base = (iy * g.w + ix) * g.c;
                            let src = &x[base..][..g.c];
                            for ch in 0..g.c {
                                let v = src[ch];
                                if v > out[ch] || v.is_nan() {
                                    out[ch] = v;
                                    idx[ch] = (base + ch) as u32;
                                }
                            }
                        }
                    }
                }
            }
        });
}

/// [`max_pool_forward`] for inference: the same maxima, no winners kept, the work split by output rows (a batch
/// of one is one image, and `max_pool_forward` splits by images).
pub fn max_pool_infer(g: &PoolGeom, n: usize, x: &[f32], y: &mut [f32]) {
    // NaN wins, as in max_pool_forward (and PyTorch); a select, so that it vectorizes.
    max_pool_windows(g, n, x, y, f32::NEG_INFINITY, |o, v| {
        if v > o || v.is_nan() {
            v
        } else {
            o
        }
    })
}

/// [`max_pool_infer`] on `u8` values (an int8 network's stem output: the maximum commutes with the monotone
/// quantization, so pooling the quantized values is quantizing the pooled ones).
pub fn max_pool_infer_u8(g: &PoolGeom, n: usize, x: &[u8], y: &mut [u8]) {
    max_pool_windows(g, n, x, y, 0, u8::max)
}

/// The window loop of [`max_pool_infer`]: each output the `max` of `lowest` and its window's inputs (the
/// padding left out).
#[inline(always)]
fn max_pool_windows<T: Copy + Send + Sync>(
    g: &PoolGeom,
    n: usize,
    x: &[T],
    y: &mut [T],
    lowest: T,
    max: impl Fn(T, T) -> T + Sync,
) {
    let plane_in = g.h * g.w * g.c;
    let row_out = g.ow * g.c;
    y[..n * g.oh * row_out]
        .par_chunks_mut(row_out)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (img, oy) = (row / g.oh, row % g.oh);
            let x = &x[img * plane_in..][..plane_in];
            let y0 = (oy * g.stride) as isize - g.pad as isize;
            let ys = y0.max(0) as usize..((y0 + g.k as isize).min(g.h as isize)) as usize;
            for ox in 0..g.ow {
                let x0 = (ox * g.stride) as isize - g.pad as isize;
                let xs = x0.max(0) as usize..((x0 + g.k as isize).min(g.w as isize)) as usize;
                let out = &mut out_row[ox * g.c..][..g.c];
                out.fill(lowest);
                for iy in ys.clone() {
                    for ix in xs.clone() {
                        let src = &x[(iy * g.w + ix) * g.c..][..g.c];
                        for (o, &v) in out.iter_mut().zip(src) {
                            *o = max(*o, v);
                        }
                    }
                }
            }
        });
}

/// `dx [n, h, w, c] = Σ dy` routed to each window's winning input (overwrites `dx`).
pub fn max_pool_backward(g: &PoolGeom, n: usize, dy: &[f32], argmax: &[u32], dx: &mut [f32]) {
    let plane_in = g.h * g.w * g.c;
    let plane_out = g.oh * g.ow * g.c;
    dx[..n * plane_in]
        .par_chunks_mut(plane_in)
        .enumerate()
        .for_each(|(img, dx)| {
            dx.fill(0.0);
            let dy = &dy[img * plane_out..][..plane_out];
            let am = &argmax[img * plane_out..][..plane_out];
            for (&g, &i) in dy.iter().zip(am) {
                dx[i as usize] += g;
            }
        });
}

/// Global average pool: `y [n, c] = mean over h·w of x [n, h·w, c]`.
pub fn global_avg_pool_forward(n: usize, hw: usize, c: usize, x: &[f32], y: &mut [f32]) {
    let inv = 1.0 / hw as f32;
    y[..n * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(img, y)| {
            y.fill(0.0);
            for row in x[img * hw * c..][..hw * c].chunks_exact(c) {
                for (a, &v) in y.iter_mut().zip(row) {
                    *a += v;
                }
            }
            y.iter_mut().for_each(|a| *a *= inv);
        });
}

/// Backward of [`global_avg_pool_forward`]: `dx [n, hw, c] = dy [n, c] / hw` broadcast over the plane.
pub fn global_avg_pool_backward(n: usize, hw: usize, c: usize, dy: &[f32], dx: &mut [f32]) {
    let inv = 1.0 / hw as f32;
    dx[..n * hw * c]
        .par_chunks_mut(hw * c)
        .enumerate()
        .for_each(|(img, dx)| {
            let g = &dy[img * c..][..c];
            for row in dx.chunks_exact_mut(c) {
                for (d, &v) in row.iter_mut().zip(g) {
                    *d = v * inv;
                }
            }
        });
}
