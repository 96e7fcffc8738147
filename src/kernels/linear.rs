//! Fully connected layer `y = x·Wᵀ + b` with PyTorch's weight layout `W [out, in]`.
//!
//! Small layers (the chapter's 512 → 10 classifier) run as plain vectorized loops, which allocate nothing;
//! large ones go to the `gemm` crate.

use super::gemm::{matmul, MatRef};
use rayon::prelude::*;

/// Multiply-adds up to which the loops run instead of the `gemm` crate (the chapter's classifier at batch 256 is
/// 1.3 M).
const LOOP_MAX_MACS: usize = 1 << 24;

/// `Σ a[i]·b[i]` over eight lanes (so that it vectorizes), lanes summed in a fixed order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `acc += s·v`, elementwise.
fn axpy(acc: &mut [f32], s: f32, v: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(v) {
        *a += s * x;
    }
}

/// `y [n, out] = x [n, in] · w [out, in]ᵀ + b [out]`.
pub fn linear_forward(
    n: usize,
    inp: usize,
    out: usize,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
) {
    if n * inp * out <= LOOP_MAX_MACS {
        // Pieces of outputs, not rows: a batch of one (inference) still keeps every core busy.
        const PIECE: usize = 64;
        y[..n * out]
            .par_chunks_mut(PIECE)
            .enumerate()
            .for_each(|(piece, ys)| {
                for (i, v) in ys.iter_mut().enumerate() {
                    let (row, o) = ((piece * PIECE + i) / out, (piece * PIECE + i) % out);
                    *v = b[o] + dot(&x[row * inp..][..inp], &w[o * inp..][..inp]);
                }
            });
        return;
    }
    for row in y[..n * out].chunks_exact_mut(out) {
        row.copy_from_slice(&b[..out]);
    }
    matmul(
        n,
        out,
        inp,
        y,
        true,
        MatRef::row_major(x, inp),
        MatRef::transposed(w, inp),
    );
}

/// Backward: writes `dw [out, in] = dyᵀ·x`, `db [out] = Σ_n dy`, and `dx [n, in] = dy·w` when asked.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    n: usize,
    inp: usize,
    out: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    let small = n * inp * out <= LOOP_MAX_MACS;
    if small {
        // Row o of dw sums dy[r, o]·x[r, :] over the batch, in batch order.
        dw[..out * inp]
            .par_chunks_mut(inp)
            .enumerate()
            .for_each(|(o, dw_row)| {
                dw_row.fill(0.0);
                for (r, x_row) in x[..n * inp].chunks_exact(inp).enumerate() {
                    axpy(dw_row, dy[r * out + o], x_row);
                }
            });
    } else {
        matmul(
            out,
            inp,
            n,
            dw,
            false,
            MatRef::transposed(dy, out),
            MatRef::row_major(x, inp),
        );
    }
    db[..out].fill(0.0);
    for row in dy[..n * out].chunks_exact(out) {
        for (d, &g) in db.iter_mut().zip(row) {
            *d += g;
        }
    }
    if let Some(dx) = dx {
        if small {
            dx[..n * inp]
                .par_chunks_mut(inp)
                .zip(dy[..n * out].par_chunks(out))
                .for_each(|(dx_row, dy_row)| {
                    dx_row.fill(0.0);
                    for (o, &g) in dy_row.iter().enumerate() {
                        axpy(dx_row, g, &w[o * inp..][..inp]);
                    }
                });
            return;
        }
        matmul(
            n,
            inp,
            out,
            dx,
            false,
            MatRef::row_major(dy, out),
            MatRef::row_major(w, inp),
        );
    }
}
