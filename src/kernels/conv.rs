//! 2-d convolution over NHWC batches as im2col + one GEMM per chunk of images, and its backward pass.
//!
//! Shapes: input `x [n, h, w, cin]`, weight `w [kh, kw, cin, cout]` (HWIO, i.e. a row-major
//! `[kh·kw·cin, cout]` matrix), bias `[cout]`, output `y [n, oh, ow, cout]`.
//! A 1×1 stride-1 unpadded convolution needs no im2col: `x` already is the `[n·h·w, cin]` column matrix.

use super::gemm::{matmul, MatRef};
use rayon::prelude::*;

/// Geometry of one convolution: channels, kernel, stride, padding and the input/output plane sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub cin: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
}

/// The im2col matrix of a chunk of images is kept under this many floats (64 MiB), so a conv over a large batch
/// runs as a few large GEMMs instead of needing a workspace as big as the whole batch's columns.
const MAX_CHUNK_FLOATS: usize = 16 << 20;

impl ConvGeom {
    /// Output size `(h + 2·pad − k) / stride + 1`, as PyTorch computes it. Returns `None` when the kernel does
    /// not fit the padded input.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        h: usize,
        w: usize,
    ) -> Option<Self> {
        if stride == 0 || h + 2 * pad < k || w + 2 * pad < k {
            return None;
        }
        let oh = (h + 2 * pad - k) / stride + 1;
        let ow = (w + 2 * pad - k) / stride + 1;
        Some(ConvGeom {
            cin,
            cout,
            kh: k,
            kw: k,
            stride,
            pad,
            h,
            w,
            oh,
            ow,
        })
    }
    /// Rows of the column matrix: `k = kh·kw·cin`.
    pub fn patch_len(&self) -> usize {
        self.kh * self.kw * self.cin
    }
    /// True when `x` is its own column matrix (1×1 kernel, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// Images per GEMM chunk for a batch of `n`.
    pub fn chunk_images(&self, n: usize) -> usize {
        let per_image = self.oh * self.ow * self.patch_len();
        (MAX_CHUNK_FLOATS / per_image.max(1)).clamp(1, n.max(1))
    }
    /// Floats of workspace [`conv2d_forward`] and [`conv2d_backward`] need for a batch of `n`.
    pub fn workspace_len(&self, n: usize) -> usize {
        if self.is_pointwise() {
            0
        } else {
            self.chunk_images(n) * self.oh * self.ow * self.patch_len()
        }
    }
}

/// Writes the column matrix of `images` consecutive images starting at `x` (`[images, h, w, cin]`) into
/// `cols [images·oh·ow, kh·kw·cin]`; taps that fall in the padding are zero.
pub fn im2col(g: &ConvGeom, images: usize, x: &[f32], cols: &mut [f32]) {
    let k = g.patch_len();
    let rows = images * g.oh * g.ow;
    let cols = &mut cols[..rows * k];
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
                for ky in 0..g.kh {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    let tap_row = &mut col[ky * g.kw * g.cin..][..g.kw * g.cin];
                    if iy < 0 || iy >= g.h as isize {
                        tap_row.fill(0.0);
                        continue;
                    }
                    let line = &image[iy as usize * g.w * g.cin..][..g.w * g.cin];
                    for kx in 0..g.kw {
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        let dst = &mut tap_row[kx * g.cin..][..g.cin];
                        if ix < 0 || ix >= g.w as isize {
                            dst.fill(0.0);
                        } else {
                            dst.copy_from_slice(&line[ix as usize * g.cin..][..g.cin]);
                        }
                    }
                }
            }
        });
}

/// Adds the column-matrix gradient `dcols [images·oh·ow, kh·kw·cin]` back onto the input positions it was
/// gathered from: `dx [images, h, w, cin] += col2im(dcols)`. The inverse of [`im2col`]'s gather.
pub fn col2im_add(g: &ConvGeom, images: usize, dcols: &[f32], dx: &mut [f32]) {
    let k = g.patch_len();
    let plane_in = g.h * g.w * g.cin;
    let rows_per_image = g.oh * g.ow;
    // One task per image: the images' input regions are disjoint, so the scatter needs no synchronization.
    dx[..images * plane_in]
        .par_chunks_mut(plane_in)
        .enumerate()
        .for_each(|(img, image)| {
            let dcols = &dcols[img * rows_per_image * k..][..rows_per_image * k];
            for (r, col) in dcols.chunks_exact(k).enumerate() {
                let oy = r / g.ow;
                let ox = r % g.ow;
                for ky in 0..g.kh {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    for kx in 0..g.kw {
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        if ix < 0 || ix >= g.w as isize {
                            continue;
                        }
                        let src = &col[(ky * g.kw + kx) * g.cin..][..g.cin];
                        let dst = &mut image[(iy as usize * g.w + ix as usize) * g.cin..][..g.cin];
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d += s;
                        }
                    }
                }
            }
        });
}

/// Forward convolution: `y [n, oh, ow, cout] = conv(x [n, h, w, cin], w [kh·kw·cin, cout]) + bias [cout]`.
/// `workspace` holds at least `g.workspace_len(n)` floats.
pub fn conv2d_forward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
    workspace: &mut [f32],
) {
    let k = g.patch_len();
    let out_rows = n * g.oh * g.ow;
    let y = &mut y[..out_rows * g.cout];
    // Start from the broadcast bias and let the GEMM accumulate onto it: one write pass instead of a second
    // read-modify-write pass after it.
    let piece = super::piece_len(out_rows, 256) * g.cout;
    super::par_pieces(y, piece, |_, rows| {
        for row in rows.chunks_exact_mut(g.cout) {
            row.copy_from_slice(bias);
        }
    });
    let wmat = MatRef::row_major(w, g.cout);
    if g.is_pointwise() {
        matmul(out_rows, g.cout, k, y, true, MatRef::row_major(x, k), wmat);
        return;
    }
    let chunk = g.chunk_images(n);
    let rows_per_image = g.oh * g.ow;
    let plane_in = g.h * g.w * g.cin;
    let mut first = 0;
    while first < n {
        let images = chunk.min(n - first);
        let rows = images * rows_per_image;
        im2col(g, images, &x[first * plane_in..], workspace);
        let y_chunk = &mut y[first * rows_per_image * g.cout..][..rows * g.cout];
        matmul(
            rows,
            g.cout,
            k,
            y_chunk,
            true,
            MatRef::row_major(&workspace[..rows * k], k),
            wmat,
        );
        first += images;
    }
}

/// Backward convolution. Given `dy [n, oh, ow, cout]` and the forward input `x`, writes (overwrites)
/// `dw [kh·kw·cin, cout]`, `dbias [cout]` and, when asked, `dx [n, h, w, cin]`.
/// `workspace` holds at least `g.workspace_len(n)` floats.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: &mut [f32],
    dx: Option<&mut [f32]>,
    workspace: &mut [f32],
) {
    let k = g.patch_len();
    let rows_per_image = g.oh * g.ow;
    let out_rows = n * rows_per_image;
    let dy = &dy[..out_rows * g.cout];
    super::pointwise::column_sums(dy, g.cout, dbias);
    let wt = MatRef::transposed(w, g.cout); // [cout, k]
    if g.is_pointwise() {
        matmul(
            k,
            g.cout,
            out_rows,
            dw,
            false,
            MatRef::transposed(x, k),
            MatRef::row_major(dy, g.cout),
        );
        if let Some(dx) = dx {
            matmul(
                out_rows,
                k,
                g.cout,
                dx,
                false,
                MatRef::row_major(dy, g.cout),
                wt,
            );
        }
        return;
    }
    let chunk = g.chunk_images(n);
    let plane_in = g.h * g.w * g.cin;
    let mut dx = dx;
    if let Some(dx) = dx.as_deref_mut() {
        dx[..n * plane_in].fill(0.0);
    }
    let mut first = 0;
    while first < n {
        let images = chunk.min(n - first);
        let rows = images * rows_per_image;
        let dy_chunk = &dy[first * rows_per_image * g.cout..][..rows * g.cout];
        im2col(g, images, &x[first * plane_in..], workspace);
        matmul(
            k,
            g.cout,
            rows,
            dw,
            first > 0,
            MatRef::transposed(&workspace[..rows * k], k),
            MatRef::row_major(dy_chunk, g.cout),
        );
        if let Some(dx) = dx.as_deref_mut() {
            let dcols = &mut workspace[..rows * k];
            matmul(
                rows,
                k,
                g.cout,
                dcols,
                false,
                MatRef::row_major(dy_chunk, g.cout),
                wt,
            );
            col2im_add(g, images, dcols, &mut dx[first * plane_in..]);
        }
        first += images;
    }
}
