//! Fully connected layer `y = x·Wᵀ + b` with PyTorch's weight layout `W [out, in]`.

use super::gemm::{matmul, MatRef};

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
    matmul(
        out,
        inp,
        n,
        dw,
        false,
        MatRef::transposed(dy, out),
        MatRef::row_major(x, inp),
    );
    db[..out].fill(0.0);
    for row in dy[..n * out].chunks_exact(out) {
        for (d, &g) in db.iter_mut().zip(row) {
            *d += g;
        }
    }
    if let Some(dx) = dx {
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
