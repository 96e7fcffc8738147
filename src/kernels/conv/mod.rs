//! 2-d convolution over NHWC batches as im2col + one GEMM per chunk of images, and its backward pass.
//!
//! Shapes: input `x [n, h, w, cin]`, weight `w [kh, kw, cin, cout]` (HWIO, i.e. a row-major
//! `[kh·kw·cin, cout]` matrix), bias `[cout]`, output `y [n, oh, ow, cout]`.
//!
//! Three things keep the GEMMs large and the memory traffic small:
//! - a 1×1 stride-1 unpadded convolution needs no im2col: `x` already is the `[n·h·w, cin]` column matrix;
//! - kernel taps that fall in the padding for *every* output position are left out of the column matrix and
//!   of the weight (at a 1×1 plane, a 3×3 padded conv has 8 of 9 taps dead: the GEMM shrinks ninefold);
//! - the input gradient of a stride-1 conv is itself a stride-1 conv of `dy` with the kernel rotated by 180°
//!   and its channel axes swapped, so it runs as im2col + a GEMM with the full `k·k·cout` depth instead of a
//!   shallow GEMM into a huge column gradient followed by a scatter-add (col2im).

pub mod channel_major;
pub mod direct;
pub mod geom;
pub mod plan;
pub mod pointwise;
pub mod reference;
pub mod tile;
pub mod winograd;

use super::gemm::{matmul, MatRef};
use geom::bits;
pub use geom::{ConvGeom, MAX_KERNEL};
pub use plan::{Algo, ConvPlan, InputGradAlgo, WeightGradAlgo};
use rayon::prelude::*;
use tile::Epilogue;

/// Which convolution kernels run on this CPU and environment, in words (for benchmark reports).
pub fn engine() -> String {
    let tiles = if tile::avx512() {
        "AVX-512 6x64 tiles where output channels are a multiple of 64, AVX2 6x16 tiles elsewhere"
    } else {
        "AVX2 6x16 tiles"
    };
    if winograd::enabled() {
        format!("Winograd F(2x2)-F(4x4) for 3x3 stride-1 convs, 1x1 GEMM and direct kernels for the others; {tiles}")
    } else if tile::cpu_supported() {
        format!("1x1 GEMM and direct kernels (Winograd off: RESNET_WINOGRAD=0); {tiles}")
    } else {
        "portable im2col + gemm".to_string()
    }
}

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
    fn cols_len(&self, n: usize) -> usize {
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
fn gather_live_weights(g: &ConvGeom, w: &[f32], out: &mut [f32]) {
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
fn conv_gemm(
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
    for_each_chunk(g, n, x, y, cols, |rows, cols, y_chunk| {
        pointwise::matmul(rows, k, g.cout, cols, packed, y_chunk, epilogue);
    });
}

/// The direct kernels' view of `w`: packed into `workspace` when `packed`, in place otherwise.
fn direct_weights<'a>(
    g: &ConvGeom,
    packed: bool,
    w: &'a [f32],
    workspace: &'a mut [f32],
) -> direct::Weights<'a> {
    if packed {
        let out = &mut workspace[..direct::packed_len(g)];
        direct::pack_weights(g, w, out);
        direct::Weights::Packed(out)
    } else {
        direct::Weights::Hwio(w)
    }
}

/// Floats of workspace `algo` needs to compute `g`'s output for a batch of `n` (weights as they are).
fn algo_workspace(algo: Algo, g: &ConvGeom, n: usize) -> usize {
    match algo {
        Algo::Winograd(_) => winograd::weights_len(g, n) + winograd::scratch_len(g, n),
        Algo::Pointwise { .. } => pointwise::workspace_len(g),
        Algo::Direct { packed, .. } => {
            if packed {
                direct::packed_len(g)
            } else {
                0
            }
        }
        Algo::Im2col { tiles } => {
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
    }
}

/// `y [n, oh, ow, cout] = conv(x, w)` by `algo`, then the epilogue; the epilogue's `shift` alone (a bias)
/// is added by the GEMM paths as the sum's starting value. `prepared`: the weights as
/// [`ConvPlan::prepare_weights`] wrote them.
#[allow(clippy::too_many_arguments)]
fn run_algo(
    algo: Algo,
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    prepared: Option<&[f32]>,
    epilogue: Epilogue<'_>,
    y: &mut [f32],
    workspace: &mut [f32],
) {
    let out_rows = n * g.oh * g.ow;
    let y = &mut y[..out_rows * g.cout];
    match algo {
        Algo::Winograd(_) => {
            let (u, scratch) = workspace.split_at_mut(winograd::weights_len(g, n));
            let u = match prepared {
                Some(p) => p,
                None => {
                    winograd::transform_weights(g, n, w, u);
                    u
                }
            };
            winograd::conv_winograd(g, n, x, u, y, epilogue, scratch);
        }
        Algo::Pointwise { .. } => match prepared {
            Some(p) => pointwise::forward_packed(g, n, x, p, y, epilogue),
            None => pointwise::forward(g, n, x, w, y, epilogue, workspace),
        },
        Algo::Direct {
            packed,
            by_position,
        } => {
            // A bias alone: start from it and let the kernel accumulate (one write pass); an affine map goes
            // with the kernel's store.
            let bias_only = epilogue.scale.is_none() && !epilogue.relu;
            let accumulate = bias_only && epilogue.shift.is_some();
            if accumulate {
                fill_rows(y, g.cout, epilogue.shift.unwrap_or_default());
            }
            let weights = match prepared {
                Some(p) => direct::Weights::Packed(p),
                None => direct_weights(g, packed, w, workspace),
            };
            let epilogue = if bias_only {
                Epilogue::default()
            } else {
                epilogue
            };
            direct::conv_direct(g, n, x, weights, y, accumulate, epilogue, by_position);
        }
        Algo::Im2col { tiles: true } => {
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
        }
        Algo::Im2col { tiles: false } => {
            // A bias alone is the GEMM's starting value; an affine map is a second pass over the sums.
            let affine = epilogue.scale.is_some() || epilogue.relu;
            let accumulate = !affine && epilogue.shift.is_some();
            if accumulate {
                fill_rows(y, g.cout, epilogue.shift.unwrap_or_default());
            }
            if g.all_taps_live() {
                conv_gemm(g, n, x, w, y, accumulate, workspace);
            } else {
                let (wl, cols) = workspace.split_at_mut(g.live_patch_len() * g.cout);
                gather_live_weights(g, w, wl);
                conv_gemm(g, n, x, wl, y, accumulate, cols);
            }
            if affine {
                let Epilogue { scale, shift, relu } = epilogue;
                let piece = super::piece_len(out_rows, 64) * g.cout;
                super::par_pieces(y, piece, |_, rows| {
                    for row in rows.chunks_exact_mut(g.cout) {
                        for (co, v) in row.iter_mut().enumerate() {
                            let a = v.mul_add(
                                scale.map_or(1.0, |s| s[co]),
                                shift.map_or(0.0, |s| s[co]),
                            );
                            *v = if relu { a.max(0.0) } else { a };
                        }
                    }
                });
            }
        }
    }
}

/// Writes `row` into every `cout`-wide row of `y`.
fn fill_rows(y: &mut [f32], cout: usize, row: &[f32]) {
    let piece = super::piece_len(y.len() / cout, 256) * cout;
    super::par_pieces(y, piece, |_, rows| {
        for r in rows.chunks_exact_mut(cout) {
            r.copy_from_slice(&row[..cout]);
        }
    });
}

impl ConvPlan {
    /// Floats of workspace [`ConvPlan::forward`], [`ConvPlan::forward_affine`] and [`ConvPlan::backward`] need.
    pub fn workspace_len(&self) -> usize {
        let (g, n) = (&self.geom, self.batch);
        // The eval forward's folded shift comes first.
        let forward = g.cout + algo_workspace(self.forward, g, n);
        let weight_grad = match self.weight_grad {
            WeightGradAlgo::Winograd(_) => winograd::weight_grad_scratch_len(g, n),
            WeightGradAlgo::ChannelMajor { .. } => channel_major::weight_grad_chunk(g, n).1,
            WeightGradAlgo::Pointwise { .. } => pointwise::weight_grad_workspace_len(g, n),
            WeightGradAlgo::Im2col => {
                let compact = if g.all_taps_live() {
                    0
                } else {
                    2 * g.live_patch_len() * g.cout
                };
                compact + g.cols_len(n)
            }
        };
        let input_grad = match self.input_grad {
            InputGradAlgo::Transposed(algo) => {
                let t = g.transposed().expect("planned for a transposable conv");
                g.patch_len() * g.cout + algo_workspace(algo, &t, n)
            }
            InputGradAlgo::Pointwise { .. } => pointwise::workspace_len(g),
            InputGradAlgo::Col2im { tiles } => {
                let k = g.live_patch_len();
                let live_weights = if g.all_taps_live() { 0 } else { k * g.cout };
                let packed_wt = if tiles { k * g.cout } else { 0 };
                live_weights + packed_wt + g.cols_len(n)
            }
        };
        forward.max(weight_grad).max(input_grad)
    }

    /// Floats of the weights [`ConvPlan::prepare_weights`] writes, or `None` where the forward pass reads
    /// the weights as they are (so there is nothing to keep).
    pub fn prepared_len(&self) -> Option<usize> {
        match self.forward {
            Algo::Winograd(_) => Some(winograd::weights_len(&self.geom, self.batch)),
            Algo::Direct { packed: true, .. } => Some(direct::packed_len(&self.geom)),
            Algo::Pointwise { .. } => Some(pointwise::workspace_len(&self.geom)),
            _ => None,
        }
    }

    /// Writes `w` as the forward pass reads it (Winograd-transformed, or packed for the direct or 1×1 tiles) into
    /// `out` (at least [`ConvPlan::prepared_len`] floats), so that a caller can keep it.
    pub fn prepare_weights(&self, w: &[f32], out: &mut [f32]) {
        match self.forward {
            Algo::Winograd(_) => winograd::transform_weights(&self.geom, self.batch, w, out),
            Algo::Direct { packed: true, .. } => direct::pack_weights(&self.geom, w, out),
            Algo::Pointwise { .. } => pointwise::pack_weights(&self.geom, w, out),
            _ => {}
        }
    }

    /// Forward convolution: `y [n, oh, ow, cout] = conv(x [n, h, w, cin], w [kh·kw·cin, cout]) + bias [cout]`.
    /// An empty `bias` means a convolution without one (torchvision's): nothing is added.
    /// `workspace` holds at least [`ConvPlan::workspace_len`] floats.
    pub fn forward(
        &self,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        y: &mut [f32],
        workspace: &mut [f32],
    ) {
        let epilogue = Epilogue {
            shift: (!bias.is_empty()).then_some(bias),
            ..Epilogue::default()
        };
        let (g, n) = (&self.geom, self.batch);
        run_algo(self.forward, g, n, x, w, None, epilogue, y, workspace);
    }

    /// Eval-mode convolution followed by a per-channel affine map (a batch norm with running statistics) and an
    /// optional ReLU: `y = relu?((conv(x, w) + bias)·scale + shift)`, in one pass over `y` where the kernels
    /// apply the map as they store (the bias folded into the shift), in two otherwise. `prepared`: the weights as
    /// [`ConvPlan::prepare_weights`] wrote them, when the caller keeps them. `workspace` as for
    /// [`ConvPlan::forward`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward_affine(
        &self,
        x: &[f32],
        w: &[f32],
        prepared: Option<&[f32]>,
        bias: &[f32],
        scale: &[f32],
        shift: &[f32],
        relu: bool,
        y: &mut [f32],
        workspace: &mut [f32],
    ) {
        let (g, n) = (&self.geom, self.batch);
        let (folded_shift, workspace) = workspace.split_at_mut(g.cout);
        for (co, f) in folded_shift.iter_mut().enumerate() {
            *f = bias
                .get(co)
                .map_or(shift[co], |b| b * scale[co] + shift[co]);
        }
        let epilogue = Epilogue::affine(scale, folded_shift, relu);
        run_algo(self.forward, g, n, x, w, prepared, epilogue, y, workspace);
    }

    /// Backward convolution. Given `dy [n, oh, ow, cout]` and the forward input `x`, writes (overwrites)
    /// `dw [kh·kw·cin, cout]`, `dbias [cout]` (skipped when empty: a convolution without bias) and, when asked,
    /// `dx [n, h, w, cin]`. `workspace` holds at least [`ConvPlan::workspace_len`] floats.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        dbias: &mut [f32],
        dx: Option<&mut [f32]>,
        workspace: &mut [f32],
    ) {
        let (g, n) = (&self.geom, self.batch);
        let dy = &dy[..n * g.oh * g.ow * g.cout];
        if !dbias.is_empty() {
            super::pointwise::column_sums(dy, g.cout, dbias);
        }
        match self.weight_grad {
            WeightGradAlgo::Pointwise { .. } => pointwise::weight_grad(g, n, x, dy, dw, workspace),
            WeightGradAlgo::Winograd(_) => {
                winograd::conv_winograd_weight_grad(g, n, x, dy, dw, workspace)
            }
            WeightGradAlgo::ChannelMajor { .. } => {
                channel_major::conv_weight_grad_cm(g, n, x, dy, dw, workspace)
            }
            WeightGradAlgo::Im2col => im2col_weight_grad(g, n, x, dy, dw, workspace),
        }
        let Some(dx) = dx else { return };
        match self.input_grad {
            InputGradAlgo::Pointwise { .. } => pointwise::input_grad(g, n, dy, w, dx, workspace),
            InputGradAlgo::Transposed(algo) => {
                // dx = conv(dy, rot180(w) with in/out swapped), stride 1.
                let t = g.transposed().expect("planned for a transposable conv");
                let (flipped, rest) = workspace.split_at_mut(g.patch_len() * g.cout);
                let kk = g.kh * g.kw;
                for tap in 0..kk {
                    let src_tap = kk - 1 - tap;
                    for co in 0..g.cout {
                        for ci in 0..g.cin {
                            flipped[(tap * g.cout + co) * g.cin + ci] =
                                w[(src_tap * g.cin + ci) * g.cout + co];
                        }
                    }
                }
                run_algo(
                    algo,
                    &t,
                    n,
                    dy,
                    flipped,
                    None,
                    Epilogue::default(),
                    dx,
                    rest,
                );
            }
            InputGradAlgo::Col2im { tiles } => col2im_input_grad(g, n, w, dy, dx, tiles, workspace),
        }
    }
}

/// `dw = Σ_chunks im2col(x)ᵀ · dy` on the `gemm` crate, over the live taps (dead taps' rows zero).
fn im2col_weight_grad(
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
fn col2im_input_grad(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_and_im2col_paths_match_a_naive_convolution() {
        // (cin, cout, k, stride, pad, h, w, n): odd planes, stride 2, dead taps (1×1 plane), a 1×1 stride-2
        // shortcut, a 5×5 kernel, row counts that leave partial 6-row tiles, the single-channel stem, and 128
        // channels (the direct kernel splits its taps in two passes), and planes wide enough for the
        // channel-major weight gradient (with channel counts that leave partial 6-channel tiles); then small
        // planes with batches of 24 or more (position-major tiles): a partial last tile, stride 2, dead taps,
        // two tap passes, and border positions of a padded 1×1 conv that see no input at all. The 3×3 stride-1
        // convs over 8×8, 12×12 and 7×7 planes with 64 tiles or more run forward, both gradients and the eval
        // affine on the Winograd kernels (the 7×7 one with tiles partly outside the plane). Last, 64 and 128
        // output channels (the AVX-512 tile over four panels): position-major, a padded 1×1 whose border
        // positions see no input, stride 2.
        let cases = [
            (16, 16, 3, 1, 1, 5, 7, 3),
            (32, 48, 3, 2, 1, 9, 9, 2),
            (16, 32, 3, 1, 1, 1, 1, 7),
            (24, 16, 1, 2, 0, 6, 6, 2),
            (16, 16, 5, 1, 2, 4, 4, 3),
            (64, 64, 3, 1, 1, 8, 8, 4),
            (1, 16, 7, 2, 3, 12, 12, 2),
            (128, 32, 3, 1, 1, 3, 3, 3),
            (16, 16, 3, 1, 1, 12, 12, 5),
            (20, 32, 3, 1, 1, 9, 10, 2),
            (16, 32, 3, 1, 1, 3, 3, 25),
            (32, 16, 3, 2, 1, 6, 6, 24),
            (16, 16, 3, 1, 1, 1, 1, 30),
            (128, 32, 3, 1, 1, 3, 3, 26),
            (16, 16, 1, 1, 1, 2, 2, 24),
            (16, 32, 3, 1, 1, 7, 7, 6),
            (32, 64, 3, 1, 1, 3, 3, 25),
            (16, 64, 1, 1, 1, 2, 2, 24),
            (64, 128, 3, 2, 1, 9, 9, 2),
        ];
        for (cin, cout, k, s, p, h, w, n) in cases {
            let g = ConvGeom::new(cin, cout, k, s, p, h, w).unwrap();
            let x: Vec<f32> = (0..n * h * w * cin)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 97.0)
                .collect();
            let wt: Vec<f32> = (0..k * k * cin * cout)
                .map(|i| ((i * 104729 % 197) as f32 - 98.0) / 491.0)
                .collect();
            let want = reference::forward(&g, n, &x, &wt, &[]);
            let close = |got: &[f32], what: &str| {
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{what} {cin}->{cout} k{k} s{s} p{p} {h}x{w}: y[{i}] = {a}, want {b}"
                    );
                }
            };
            // Portable path: im2col + gemm over the live taps.
            let plan = ConvPlan::new(g, n);
            // Enough for the plan and for the im2col path tried first.
            let im2col_len = g.cols_len(n) + g.live_patch_len() * g.cout;
            let mut ws = vec![0.0f32; plan.workspace_len().max(im2col_len)];
            let mut y = vec![0.0f32; want.len()];
            if g.all_taps_live() {
                conv_gemm(&g, n, &x, &wt, &mut y, false, &mut ws);
            } else {
                let (wl, cols) = ws.split_at_mut(g.live_patch_len() * g.cout);
                gather_live_weights(&g, &wt, wl);
                conv_gemm(&g, n, &x, wl, &mut y, false, cols);
            }
            close(&y, "im2col");
            // The training forward (direct, Winograd or im2col, as dispatched), with a bias.
            let bias: Vec<f32> = (0..cout).map(|co| co as f32 / 7.0 - 1.0).collect();
            let mut yb = vec![f32::NAN; want.len()];
            plan.forward(&x, &wt, &bias, &mut yb, &mut ws);
            for (i, (a, b)) in yb.iter().zip(&want).enumerate() {
                let v = b + bias[i % cout];
                assert!(
                    (a - v).abs() <= 1e-4 * (1.0 + v.abs()),
                    "forward {cin}->{cout} k{k} s{s} p{p} {h}x{w}: y[{i}] = {a}, want {v}"
                );
            }
            // Weight and input gradients through the plan's backward (the channel-major kernel and the direct
            // GEMM where they apply), dy = y.
            let want_dw = reference::weight_grad(&g, n, &x, &want);
            let want_dx = reference::input_grad(&g, n, &want, &wt);
            let mut dw = vec![f32::NAN; want_dw.len()];
            let mut db = vec![0.0f32; cout];
            let mut dx = vec![f32::NAN; want_dx.len()];
            plan.backward(&x, &wt, &want, &mut dw, &mut db, Some(&mut dx), &mut ws);
            for (i, (a, b)) in dx.iter().zip(&want_dx).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                    "dx {cin}->{cout} k{k} s{s} p{p} {h}x{w}: dx[{i}] = {a}, want {b}"
                );
            }
            for (i, (a, b)) in dw.iter().zip(&want_dw).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                    "dw {cin}->{cout} k{k} s{s} p{p} {h}x{w}: dw[{i}] = {a}, want {b}"
                );
            }
            // Eval-mode conv + batch norm + ReLU in one call (direct or Winograd epilogue, or a second pass).
            let scale: Vec<f32> = (0..cout).map(|co| 0.5 + co as f32 / 9.0).collect();
            let shift: Vec<f32> = (0..cout).map(|co| 0.3 - co as f32 / 11.0).collect();
            for relu in [false, true] {
                let mut ya = vec![f32::NAN; want.len()];
                plan.forward_affine(&x, &wt, None, &bias, &scale, &shift, relu, &mut ya, &mut ws);
                for (i, (a, b)) in ya.iter().zip(&want).enumerate() {
                    let co = i % cout;
                    let v = (b + bias[co]) * scale[co] + shift[co];
                    let v = if relu { v.max(0.0) } else { v };
                    assert!(
                        (a - v).abs() <= 1e-4 * (1.0 + v.abs()),
                        "affine relu={relu} {cin}->{cout} k{k}: y[{i}] = {a}, want {v}"
                    );
                }
            }
            if !(direct::handles(&g) && tile::cpu_supported()) {
                continue;
            }
            let w_in_place = direct::Weights::Hwio(&wt);
            direct::conv_direct(
                &g,
                n,
                &x,
                w_in_place,
                &mut y,
                false,
                Epilogue::default(),
                direct::by_position(&g, n),
            );
            close(&y, "direct");
            // Accumulating onto a bias-filled output adds exactly the bias.
            let mut y2 = vec![0.5f32; want.len()];
            direct::conv_direct(
                &g,
                n,
                &x,
                w_in_place,
                &mut y2,
                true,
                Epilogue::default(),
                direct::by_position(&g, n),
            );
            // Packed weights give the same sums.
            let mut packed = vec![0.0f32; direct::packed_len(&g)];
            direct::pack_weights(&g, &wt, &mut packed);
            let mut y3 = vec![f32::NAN; want.len()];
            let w_packed = direct::Weights::Packed(&packed);
            direct::conv_direct(
                &g,
                n,
                &x,
                w_packed,
                &mut y3,
                false,
                Epilogue::default(),
                direct::by_position(&g, n),
            );
            close(&y3, "direct packed");
            for (a, b) in y2.iter().zip(&y) {
                assert!((a - (b + 0.5)).abs() <= 1e-5 * (1.0 + b.abs()));
            }
        }
    }
}
