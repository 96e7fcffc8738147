//! The portable convolution, and the one for shapes no register-tile kernel takes: the column matrix of the
//! live taps (im2col) times the weights, one GEMM per chunk of images, on the 1×1 kernels' register tiles
//! ([`pointwise::matmul`]) or on the `gemm` crate; the weight gradient `im2col(x)ᵀ · dy` and the input gradient
//! `col2im(dy · wᵀ)` the same way.
//!
//! Shapes: input `x [n, h, w, cin]`, weight `w [kh, kw, cin, cout]` (HWIO, i.e. a row-major
//! `[kh·kw·cin, cout]` matrix), output `y [n, oh, ow, cout]`, column matrix `[n·oh·ow, live_taps·cin]`.
//!
//! Two things keep the GEMMs large and the memory traffic small:
//! - a 1×1 stride-1 unpadded convolution needs no im2col: `x` already is the `[n·h·w, cin]` column matrix;
//! - kernel taps that fall in the padding for *every* output position are left out of the column matrix and
//!   of the weight (at a 1×1 plane, a 3×3 padded conv has 8 of 9 taps dead: the GEMM shrinks ninefold).

use super::geom::{bits, ConvGeom};
use super::pointwise;
use super::tile::Epilogue;
use crate::kernels::gemm::{matmul, MatRef};
use crate::kernels::{par_pieces, piece_len};
use rayon::prelude::*;

/// The im2col matrix of a chunk of images is kept under this many floats (8 MiB), so it stays in the last-level
/// cache between being written and being read by the GEMM, and the workspace stays small for any batch.
const MAX_CHUNK_FLOATS: usize = 2 << 20;

impl ConvGeom {
    /// Images per im2col chunk for a batch of `n`.
    pub fn chunk_images(&self, n: usize) -> usize {
        let per_image = self.oh * self.ow * self.live_patch_len();
        (MAX_CHUNK_FLOATS / per_image.max(1)).clamp(1, n.max(1))
    }
    /// Floats of one chunk's column matrix (none for a 1×1 stride-1 unpadded conv: `x` is its own).
    pub(super) fn cols_len(&self, n: usize) -> usize {
        if self.is_pointwise() {
            0
        } else {
            self.chunk_images(n) * self.oh * self.ow * self.live_patch_len()
        }
    }
}

/// Writes the column matrix of `images` consecutive images starting at `x` (`[images, h, w, cin]`) into
/// `cols [images·oh·ow, live_taps·cin]` (taps in row-major order, dead taps left out); positions that fall in
/// the padding are zero.
pub fn im2col(g: &ConvGeom, images: usize, x: &[f32], cols: &mut [f32]) {
    let k = g.live_patch_len();
    let rows = images * g.oh * g.ow;
    let cols = &mut cols[..rows * k];
    let live_cols = g.live_cols.count_ones() as usize;
    let first_live_col = g.live_cols.trailing_zeros() as usize;
    debug_assert_eq!(
        g.live_cols >> first_live_col,
        (1 << live_cols) - 1,
        "live columns are a range"
    );
    let rows_per_task = (4096 / k).max(1).min(rows.max(1));
    cols.par_chunks_mut(rows_per_task * k)
        .enumerate()
        .for_each(|(task, block)| {
            let first_row = task * rows_per_task;
            for (r, col) in block.chunks_exact_mut(k).enumerate() {
                let row = first_row + r;
                let img = row / (g.oh * g.ow);
                let oy = (row / g.ow) % g.oh;
                let ox = row % g.ow;
                let image = &x[img * g.h * g.w * g.cin..][..g.h * g.w * g.cin];
                // The live kernel columns are one contiguous range, and so are the input pixels they read on
                // a line: each tap row is a zero run, one copy, and a zero run (not one copy per tap).
                let ix0 = (ox * g.stride + first_live_col) as isize - g.pad as isize;
                let lo = (-ix0).clamp(0, live_cols as isize) as usize;
                let hi = (g.w as isize - ix0).clamp(lo as isize, live_cols as isize) as usize;
                for (ti, ky) in bits(g.live_rows).enumerate() {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    let tap_row = &mut col[ti * live_cols * g.cin..][..live_cols * g.cin];
                    if iy < 0 || iy >= g.h as isize || lo == hi {
                        tap_row.fill(0.0);
                        continue;
                    }
                    let line = &image[iy as usize * g.w * g.cin..][..g.w * g.cin];
                    let first_ix = (ix0 + lo as isize) as usize;
                    tap_row[..lo * g.cin].fill(0.0);
                    tap_row[lo * g.cin..hi * g.cin]
                        .copy_from_slice(&line[first_ix * g.cin..][..(hi - lo) * g.cin]);
                    tap_row[hi * g.cin..].fill(0.0);
                }
            }
        });
}

/// Adds the column-matrix gradient `dcols [images·oh·ow, live_taps·cin]` back onto the input positions it was
/// gathered from: `dx [images, h, w, cin] += col2im(dcols)`. The inverse of [`im2col`]'s gather.
pub fn col2im_add(g: &ConvGeom, images: usize, dcols: &[f32], dx: &mut [f32]) {
    let k = g.live_patch_len();
    let plane_in = g.h * g.w * g.cin;
    let rows_per_image = g.oh * g.ow;
    let live_cols = g.live_cols.count_ones() as usize;
    // One task per image: the images' input regions are disjoint, so the scatter needs no synchronization.
    dx[..images * plane_in]
        .par_chunks_mut(plane_in)
        .enumerate()
        .for_each(|(img, image)| {
            let dcols = &dcols[img * rows_per_image * k..][..rows_per_image * k];
            for (r, col) in dcols.chunks_exact(k).enumerate() {
                let oy = r / g.ow;
                let ox = r % g.ow;
                for (ti, ky) in bits(g.live_rows).enumerate() {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    for (tj, kx) in bits(g.live_cols).enumerate() {
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        if ix < 0 || ix >= g.w as isize {
                            continue;
                        }
                        let src = &col[(ti * live_cols + tj) * g.cin..][..g.cin];
                        let dst = &mut image[(iy as usize * g.w + ix as usize) * g.cin..][..g.cin];
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d += s;
                        }
                    }
                }
            }
        });
}

/// Copies the weight rows of the live taps, `[live_taps·cin, cout]`, into `out`.
pub(super) fn gather_live_weights(g: &ConvGeom, w: &[f32], out: &mut [f32]) {
    let row = g.cin * g.cout;
    let mut t = 0;
    for ky in bits(g.live_rows) {
        for kx in bits(g.live_cols) {
            out[t * row..][..row].copy_from_slice(&w[(ky * g.kw + kx) * row..][..row]);
            t += 1;
        }
    }
}

/// Writes `compact [live_taps·cin, cout]` into the live rows of `dw [kh·kw·cin, cout]`, zeros elsewhere.
fn scatter_live_weights(g: &ConvGeom, compact: &[f32], dw: &mut [f32]) {
    let row = g.cin * g.cout;
    dw[..g.patch_len() * g.cout].fill(0.0);
    let mut t = 0;
    for ky in bits(g.live_rows) {
        for kx in bits(g.live_cols) {
            dw[(ky * g.kw + kx) * row..][..row].copy_from_slice(&compact[t * row..][..row]);
            t += 1;
        }
    }
}

/// Calls `product(rows, cols, y_chunk)` for each chunk of images: `cols [rows, live_taps·cin]` is the chunk's
/// column matrix (written into `cols`), `y_chunk [rows, cout]` its part of `y`.
fn for_each_chunk(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    y: &mut [f32],
    cols: &mut [f32],
    mut product: impl FnMut(usize, &[f32], &mut [f32]),
) {
    let k = g.live_patch_len();
    let rows_per_image = g.oh * g.ow;
    let plane_in = g.h * g.w * g.cin;
    let chunk = g.chunk_images(n);
    let mut first = 0;
    while first < n {
        let images = chunk.min(n - first);
        let rows = images * rows_per_image;
        im2col(g, images, &x[first * plane_in..], cols);
        let y_chunk = &mut y[first * rows_per_image * g.cout..][..rows * g.cout];
        product(rows, &cols[..rows * k], y_chunk);
        first += images;
    }
}

/// `y [rows, cout] (+)= im2col(x) × w` over chunks of images on the `gemm` crate (the portable path). `w` is
/// the live-tap weight matrix.
pub(super) fn conv_gemm(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    accumulate: bool,
    cols: &mut [f32],
) {
    let k = g.live_patch_len();
    let wmat = MatRef::row_major(w, g.cout);
    if g.is_pointwise() {
        let x = MatRef::row_major(x, k);
        matmul(n * g.h * g.w, g.cout, k, y, accumulate, x, wmat);
        return;
    }
    for_each_chunk(g, n, x, y, cols, |rows, cols, y_chunk| {
        let cols = MatRef::row_major(cols, k);
        matmul(rows, g.cout, k, y_chunk, accumulate, cols, wmat);
    });
}

/// `y = epilogue(im2col(x) × w)` over chunks of images on the register tiles of [`pointwise::matmul`]
/// (`w [live_taps·cin, cout]` packed into `packed` first), the epilogue applied as the tiles are stored.
#[allow(clippy::too_many_arguments)]
fn conv_gemm_tiles(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    epilogue: Epilogue<'_>,
    packed: &mut [f32],
    cols: &mut [f32],
) {
    let k = g.live_patch_len();
    pointwise::pack(k, g.cout, w, false, packed);
    let packed = &*packed;
    let y0 = y.as_ptr() as usize;
    for_each_chunk(g, n, x, y, cols, |rows, cols, y_chunk| {
        // The residual from the chunk's first output on.
        let first = (y_chunk.as_ptr() as usize - y0) / size_of::<f32>();
        let epilogue = Epilogue {
            residual: epilogue.residual.map(|r| &r[first..]),
            ..epilogue
        };
        pointwise::matmul(rows, k, g.cout, cols, packed, y_chunk, epilogue);
    });
}

/// `y [n, oh, ow, cout] = epilogue(im2col(x) × w)` with `w` HWIO `[kh·kw·cin, cout]`: on the register tiles of
/// [`pointwise::matmul`] when `tiles` (the epilogue applied as they are stored), else on the `gemm` crate (a bias
/// alone as the sums' starting value, an affine map as a second pass). `workspace` holds
/// [`workspace_len`]`(g, n, tiles)` floats.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    epilogue: Epilogue<'_>,
    tiles: bool,
    y: &mut [f32],
    workspace: &mut [f32],
) {
    let out_rows = n * g.oh * g.ow;
    let y = &mut y[..out_rows * g.cout];
    if tiles {
        let (wl, rest) = workspace.split_at_mut(if g.all_taps_live() {
            0
        } else {
            g.live_patch_len() * g.cout
        });
        let w = if g.all_taps_live() {
            w
        } else {
            gather_live_weights(g, w, wl);
            &*wl
        };
        let (packed, cols) = rest.split_at_mut(g.live_patch_len() * g.cout);
        conv_gemm_tiles(g, n, x, w, y, epilogue, packed, cols);
    } else {
        // A bias alone is the GEMM's starting value; an affine map is a second pass over the sums.
        let affine = !epilogue.is_bias_only();
        let accumulate = !affine && epilogue.shift.is_some();
        if accumulate {
            super::fill_rows(y, g.cout, epilogue.shift.unwrap_or_default());
        }
        if g.all_taps_live() {
            conv_gemm(g, n, x, w, y, accumulate, workspace);
        } else {
            let (wl, cols) = workspace.split_at_mut(g.live_patch_len() * g.cout);
            gather_live_weights(g, w, wl);
            conv_gemm(g, n, x, wl, y, accumulate, cols);
        }
        if affine {
            let Epilogue {
                scale,
                shift,
                residual,
                residual_in_place,
                relu,
            } = epilogue;
            assert!(!residual_in_place, "conv_im2col: no residual in place");
            let piece = piece_len(out_rows, 64) * g.cout;
            par_pieces(y, piece, |i, rows| {
                for (r, row) in rows.chunks_exact_mut(g.cout).enumerate() {
                    let at = i * piece + r * g.cout;
                    for (co, v) in row.iter_mut().enumerate() {
                        let mut a =
                            v.mul_add(scale.map_or(1.0, |s| s[co]), shift.map_or(0.0, |s| s[co]));
                        if let Some(res) = residual {
                            a += res[at + co];
                        }
                        // A NaN passes the ReLU, as through PyTorch's (f32::max would drop it).
                        *v = if relu && a < 0.0 { 0.0 } else { a };
                    }
                }
            });
        }
    }
}

/// Floats of workspace [`forward`] needs for a batch of `n`.
pub(super) fn workspace_len(g: &ConvGeom, n: usize, tiles: bool) -> usize {
    let live_weights = if g.all_taps_live() {
        0
    } else {
        g.live_patch_len() * g.cout
    };
    let packed = if tiles {
        g.live_patch_len() * g.cout
    } else {
        0
    };
    g.cols_len(n) + live_weights + packed
}

/// Floats of workspace [`weight_grad`] needs for a batch of `n`.
pub(super) fn weight_grad_workspace_len(g: &ConvGeom, n: usize) -> usize {
    let compact = if g.all_taps_live() {
        0
    } else {
        2 * g.live_patch_len() * g.cout
    };
    compact + g.cols_len(n)
}

/// Floats of workspace [`input_grad`] needs for a batch of `n`.
pub(super) fn input_grad_workspace_len(g: &ConvGeom, n: usize, tiles: bool) -> usize {
    let k = g.live_patch_len();
    let live_weights = if g.all_taps_live() { 0 } else { k * g.cout };
    let packed_wt = if tiles { k * g.cout } else { 0 };
    live_weights + packed_wt + g.cols_len(n)
}

/// `dw = Σ_chunks im2col(x)ᵀ · dy` on the `gemm` crate, over the live taps (dead taps' rows zero).
pub(super) fn weight_grad(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    workspace: &mut [f32],
) {
    let k = g.live_patch_len();
    let out_rows = n * g.oh * g.ow;
    if g.is_pointwise() {
        let dyt = MatRef::row_major(dy, g.cout);
        matmul(
            k,
            g.cout,
            out_rows,
            dw,
            false,
            MatRef::transposed(x, k),
            dyt,
        );
        return;
    }
    let compact = !g.all_taps_live();
    let (dw_live, cols) = workspace.split_at_mut(if compact { k * g.cout } else { 0 });
    let rows_per_image = g.oh * g.ow;
    let chunk = g.chunk_images(n);
    let plane_in = g.h * g.w * g.cin;
    let mut first = 0;
    while first < n {
        let images = chunk.min(n - first);
        let rows = images * rows_per_image;
        let dy_chunk = &dy[first * rows_per_image * g.cout..][..rows * g.cout];
        im2col(g, images, &x[first * plane_in..], cols);
        let dw_target: &mut [f32] = if compact { dw_live } else { dw };
        matmul(
            k,
            g.cout,
            rows,
            dw_target,
            first > 0,
            MatRef::transposed(&cols[..rows * k], k),
            MatRef::row_major(dy_chunk, g.cout),
        );
        first += images;
    }
    if compact {
        scatter_live_weights(g, dw_live, dw);
    }
}

/// The input gradient of a conv whose transpose is not a stride-1 conv (stride 2, dead taps; never a 1×1
/// stride-1 conv, whose transpose is one):
/// `dcols = dy · wᵀ` per chunk, scattered back with col2im. `tiles`: the product on the 1×1 GEMM tiles
/// ([`pointwise::matmul`]), else the `gemm` crate.
pub(super) fn input_grad(
    g: &ConvGeom,
    n: usize,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    tiles: bool,
    workspace: &mut [f32],
) {
    let k = g.live_patch_len();
    let rows_per_image = g.oh * g.ow;
    let plane_in = g.h * g.w * g.cin;
    let compact = !g.all_taps_live();
    let (w_live, rest) = workspace.split_at_mut(if compact { k * g.cout } else { 0 });
    if compact {
        gather_live_weights(g, w, w_live);
    }
    let w_live: &[f32] = if compact { w_live } else { w };
    dx[..n * plane_in].fill(0.0);
    let (packed_wt, cols) = rest.split_at_mut(if tiles { k * g.cout } else { 0 });
    if tiles {
        // dcols = dy · w_liveᵀ: the right-hand matrix is w_live [k, cout] read transposed.
        pointwise::pack(g.cout, k, w_live, true, packed_wt);
    }
    let chunk = g.chunk_images(n);
    let mut first = 0;
    while first < n {
        let images = chunk.min(n - first);
        let rows = images * rows_per_image;
        let dy_chunk = &dy[first * rows_per_image * g.cout..][..rows * g.cout];
        let dcols = &mut cols[..rows * k];
        if tiles {
            let none = Epilogue::default();
            pointwise::matmul(rows, g.cout, k, dy_chunk, packed_wt, dcols, none);
        } else {
            matmul(
                rows,
                k,
                g.cout,
                dcols,
                false,
                MatRef::row_major(dy_chunk, g.cout),
                MatRef::transposed(w_live, g.cout),
            );
        }
        col2im_add(g, images, dcols, &mut dx[first * plane_in..]);
        first += images;
    }
}
