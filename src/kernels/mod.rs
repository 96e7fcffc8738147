//! Pure numeric kernels over slices: no model state, no allocation unless a doc comment says so.
//!
//! Layouts: activations are NHWC matrices `[rows = n·h·w, c]`; conv weights are HWIO `[kh, kw, cin, cout]`
//! so that a convolution is `im2col(x) [rows, kh·kw·cin] × w [kh·kw·cin, cout]`, which yields NHWC directly.

pub mod conv;
pub mod gemm;
pub mod int8;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pointwise;
pub mod pool;

use rayon::prelude::*;

/// Splits `len` items into about `2 × threads` contiguous pieces of at least `min_piece` items each,
/// so that elementwise kernels get balanced work without tiny tasks.
pub(crate) fn piece_len(len: usize, min_piece: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    len.div_ceil(2 * threads).max(min_piece).max(1)
}

/// Applies `f(chunk_index, out_chunk)` to `out` split in pieces of `piece` elements, in parallel.
pub(crate) fn par_pieces<F>(out: &mut [f32], piece: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    out.par_chunks_mut(piece.max(1))
        .enumerate()
        .for_each(|(i, c)| f(i, c));
}
