//! Memory-bound elementwise kernels and per-channel reductions over NHWC matrices `[rows, c]`.

use super::{par_pieces, piece_len};
use rayon::prelude::*;

/// `sums [c] = Σ_rows x [rows, c]`, accumulated in f64 so large batches lose no precision.
pub fn column_sums(x: &[f32], c: usize, sums: &mut [f32]) {
    const BLOCK: usize = 16;
    let rows = x.len() / c;
    // One task per 16 columns, each summing every row in order: the same bits for any thread count, and
    // nothing allocated.
    sums[..c]
        .par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(block, out)| {
            let c0 = block * BLOCK;
            let mut acc = [0.0f64; BLOCK];
            for r in 0..rows {
                for (a, &v) in acc.iter_mut().zip(&x[r * c + c0..][..out.len()]) {
                    *a += v as f64;
                }
            }
            for (s, a) in out.iter_mut().zip(&acc) {
                *s = *a as f32;
            }
        });
}

/// `y = max(x, 0)`, elementwise. `x` and `y` have the same length.
pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    let piece = piece_len(x.len(), 1 << 14);
    par_pieces(y, piece, |i, out| {
        for (o, &v) in out.iter_mut().zip(&x[i * piece..]) {
            *o = v.max(0.0);
        }
    });
}

/// `dx = dy` where the forward output `y > 0`, else 0 (PyTorch's threshold backward).
pub fn relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    let piece = piece_len(y.len(), 1 << 14);
    par_pieces(dx, piece, |i, out| {
        for ((o, &g), &v) in out.iter_mut().zip(&dy[i * piece..]).zip(&y[i * piece..]) {
            *o = if v > 0.0 { g } else { 0.0 };
        }
    });
}

/// [`relu_backward`] in place: `grad = grad` where the forward output `y > 0`, else 0.
pub fn relu_backward_in_place(y: &[f32], grad: &mut [f32]) {
    let piece = piece_len(y.len(), 1 << 14);
    par_pieces(grad, piece, |i, out| {
        for (o, &v) in out.iter_mut().zip(&y[i * piece..]) {
            if v <= 0.0 {
                *o = 0.0;
            }
        }
    });
}

/// The residual join: `out = max(a + b, 0)`, elementwise.
pub fn add_relu_forward(a: &[f32], b: &[f32], out: &mut [f32]) {
    let piece = piece_len(out.len(), 1 << 14);
    par_pieces(out, piece, |i, o| {
        for ((o, &x), &y) in o.iter_mut().zip(&a[i * piece..]).zip(&b[i * piece..]) {
            *o = (x + y).max(0.0);
        }
    });
}

/// `acc += x`, elementwise.
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    let piece = piece_len(acc.len(), 1 << 14);
    par_pieces(acc, piece, |i, o| {
        for (o, &v) in o.iter_mut().zip(&x[i * piece..]) {
            *o += v;
        }
    });
}
