//! 2-d convolution over NHWC batches: the plan that chooses an algorithm for each pass of a layer, once per
//! (geometry, batch) on this CPU, and the dispatch that runs it. A layer needs only [`ConvPlan`] (its forward,
//! eval-mode forward with a fused batch norm, backward and workspace sizing); `resnet summary --plan` and
//! `resnet bench --plan` print the plans.
//!
//! Shapes: input `x [n, h, w, cin]`, weight `w [kh, kw, cin, cout]` (HWIO, i.e. a row-major `[kh·kw·cin, cout]`
//! matrix), bias `[cout]`, output `y [n, oh, ow, cout]`; the geometry, with the kernel taps that only ever read
//! the padding (left out by every algorithm), is a [`ConvGeom`] ([`geom`]).
//!
//! Which algorithm runs when, first match wins ([`ConvPlan::new`]), and where it lives:
//!
//! - forward ([`Algo`]):
//!   1. [`winograd`]: Winograd F(m×m, 3×3) for 3×3, stride 1, padding 1, channels that fit, at least 64 tiles
//!      in the batch, and at most 4/5 of the direct kernels' products (AVX2; off with `RESNET_WINOGRAD=0`);
//!   2. [`pointwise`]: a 1×1 unpadded convolution, any stride, as a matrix product on register tiles (channels
//!      multiples of 16, AVX2);
//!   3. [`direct`]: "implicit GEMM" register tiles reading the patches in place (16 to 2048 input channels,
//!      output channels a multiple of 16, at most 49 live taps, AVX2), the weights packed into column panels
//!      from 128 output channels, and always in an inference network (packed once, when it is compiled);
//!   4. [`kernel_rows`]: direct register tiles whose taps are whole kernel rows, for fewer input channels
//!      (torchvision's three-channel stem; kernel rows of 16 to 64 floats, every tap live, AVX2);
//!   5. [`im2col`]: the column matrix times the weights, on the 1×1 register tiles or on the `gemm` crate (the
//!      portable path, and the single-channel stem);
//! - weight gradient ([`WeightGradAlgo`]): [`pointwise`] or [`winograd`] where they take the forward pass, then
//!   [`channel_major`]'s register tiles (output channels a multiple of 16, at most 49 live taps, AVX2), else
//!   [`im2col`];
//! - input gradient ([`InputGradAlgo`]): [`pointwise`] where it takes the forward pass; for a stride-1
//!   convolution whose taps are all live, the forward pass of the transposed convolution (`dy` convolved with the kernel
//!   rotated by 180° and its channel axes swapped), by whichever forward algorithm above takes that geometry,
//!   with the full `k·k·cout` depth instead of a shallow product into a huge column gradient; else [`im2col`]'s
//!   `col2im(dy · wᵀ)`.
//!
//! The register-tile micro-kernels and what they share (tile sizes, the CPU checks with `RESNET_PORTABLE=1` to
//! force the portable path and `RESNET_AVX512=0` to keep to AVX2, the epilogue applied as a tile is stored) are
//! in [`tile`]. [`reference`](mod@reference) is the convolution by its definition, in plain loops, that every
//! kernel's tests compare against; nothing here calls it.

pub mod channel_major;
pub mod direct;
pub mod geom;
pub mod im2col;
pub mod kernel_rows;
pub mod pointwise;
pub mod reference;
pub mod tile;
pub mod winograd;

#[cfg(test)]
mod tests;

pub use geom::{ConvGeom, MAX_KERNEL};
use std::fmt;
pub use tile::Epilogue;
use winograd::Tile;

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

/// An algorithm that computes a convolution's output (the forward pass, or the input gradient as the
/// forward pass of the transposed convolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    /// Winograd F(m×m, 3×3) ([`winograd`]): 3×3, stride 1, padding 1, enough tiles.
    Winograd(Tile),
    /// Direct ("implicit GEMM") register tiles reading patches in place ([`direct`]); `packed`: the
    /// weights packed into column panels first (wide layers); `by_position`: tiles of six images at one
    /// position, skipping the taps in the padding (small planes, large batches).
    Direct {
        /// Weights packed into column panels before the product.
        packed: bool,
        /// Position-major tiles.
        by_position: bool,
    },
    /// Direct register tiles whose taps are whole kernel rows ([`kernel_rows`]): narrow inputs (the stem),
    /// the weights packed into column panels.
    KernelRows,
    /// A 1×1 convolution as a matrix product on register tiles ([`pointwise`]), `width` columns per tile.
    Pointwise {
        /// Output columns per register tile (64 with AVX-512, 16 with AVX2).
        width: usize,
    },
    /// The column matrix of the live taps times the weights ([`im2col`]); `tiles`: the product on the
    /// register tiles of [`pointwise::matmul`] (no allocation, the epilogue fused), else the `gemm` crate
    /// (the portable path).
    Im2col {
        /// The product runs on the 1×1 GEMM tiles.
        tiles: bool,
    },
}

/// An algorithm for the weight gradient `dw = im2col(x)ᵀ · dy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightGradAlgo {
    /// Winograd's transformed products ([`winograd::conv_winograd_weight_grad`]).
    Winograd(Tile),
    /// Register tiles over a channel-major copy of the input, or over packed patch rows when the output plane
    /// is narrow (`by_columns`) ([`channel_major::conv_weight_grad_cm`]).
    ChannelMajor {
        /// Narrow output plane: packed patch rows.
        by_columns: bool,
    },
    /// `x_sᵀ · dy` on register tiles ([`pointwise::weight_grad`]).
    Pointwise {
        /// Output columns per register tile.
        width: usize,
    },
    /// im2col per chunk of images, then the `gemm` crate ([`im2col`]).
    Im2col,
}

/// An algorithm for the input gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputGradAlgo {
    /// A stride-1 convolution of `dy` with the rotated, channel-swapped kernel, run by this algorithm.
    Transposed(Algo),
    /// `dy · wᵀ` on register tiles, scattered onto the stride grid ([`pointwise::input_grad`]).
    Pointwise {
        /// Output columns per register tile.
        width: usize,
    },
    /// `dcols = dy · wᵀ` per chunk, added back with col2im ([`im2col`]); `tiles` as for [`Algo::Im2col`].
    Col2im {
        /// The product runs on the 1×1 GEMM tiles.
        tiles: bool,
    },
}

/// The plan of one convolution for a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvPlan {
    /// The convolution.
    pub geom: ConvGeom,
    /// Images per call.
    pub batch: usize,
    /// Forward pass (training and eval).
    pub forward: Algo,
    /// Weight gradient.
    pub weight_grad: WeightGradAlgo,
    /// Input gradient.
    pub input_grad: InputGradAlgo,
}

/// The forward algorithm for `g` at batch `n`; `inference`: for the compiled network, where Winograd also takes
/// batches with few tiles ([`winograd::inference_tile_for`]).
fn forward_algo(g: &ConvGeom, n: usize, inference: bool) -> Algo {
    let tile = if inference {
        winograd::inference_tile_for(g, n)
    } else {
        winograd::tile_for(g, n)
    };
    if let Some(tile) = tile {
        Algo::Winograd(tile)
    } else if pointwise::handles(g) {
        Algo::Pointwise {
            width: pointwise::tile_width(g.cout),
        }
    } else if !g.is_pointwise() && tile::cpu_supported() && direct::handles(g) {
        Algo::Direct {
            // An inference network packs its weights once, when it is compiled: the packed panels are then
            // free, and read front to back.
            packed: inference || direct::packs_weights(g),
            by_position: direct::by_position(g, n),
        }
    } else if kernel_rows::handles(g) {
        Algo::KernelRows
    } else {
        Algo::Im2col {
            tiles: !g.is_pointwise() && pointwise::matmul_handles(g.cout),
        }
    }
}

impl ConvPlan {
    /// The plan for `g` at batch `n` whose forward algorithm is the one a batch of one gets: each image is then
    /// computed by the same algorithm, in the same order, whatever the batch, so its output does not depend on
    /// what it was batched with (`resnet serve`). Large batches may lose the algorithms that only pay with many
    /// images (Winograd on small planes, position-major direct tiles).
    pub fn batch_independent(g: ConvGeom, n: usize) -> ConvPlan {
        ConvPlan {
            forward: forward_algo(&g, 1, false),
            ..ConvPlan::new(g, n)
        }
    }

    /// The forward-only plan of an inference network (the compiled network's) for `g` at batch `n`: as
    /// [`ConvPlan::new`], but Winograd also takes batches with few tiles, their output channels split among the
    /// tasks (a batch of one on small planes); `batch_independent`: the algorithm a batch of one gets. Its
    /// gradient algorithms are [`ConvPlan::new`]'s, never run.
    pub fn inference(g: ConvGeom, n: usize, batch_independent: bool) -> ConvPlan {
        let batch = if batch_independent { 1 } else { n };
        ConvPlan {
            forward: forward_algo(&g, batch, true),
            ..ConvPlan::new(g, n)
        }
    }

    /// The plan for `g` at batch `n` on this CPU.
    pub fn new(g: ConvGeom, n: usize) -> ConvPlan {
        let forward = forward_algo(&g, n, false);
        let weight_grad = if pointwise::handles(&g) {
            WeightGradAlgo::Pointwise {
                width: pointwise::tile_width(g.cout),
            }
        } else if let Some(tile) = winograd::tile_for(&g, n) {
            WeightGradAlgo::Winograd(tile)
        } else if channel_major::weight_grad_handles(&g) {
            WeightGradAlgo::ChannelMajor {
                by_columns: channel_major::dw_by_columns(&g),
            }
        } else {
            WeightGradAlgo::Im2col
        };
        let input_grad = if pointwise::handles(&g) {
            InputGradAlgo::Pointwise {
                width: pointwise::tile_width(g.cin),
            }
        } else if let Some(t) = g.transposed() {
            InputGradAlgo::Transposed(forward_algo(&t, n, false))
        } else {
            InputGradAlgo::Col2im {
                tiles: pointwise::matmul_handles(g.live_patch_len()),
            }
        };
        ConvPlan {
            geom: g,
            batch: n,
            forward,
            weight_grad,
            input_grad,
        }
    }
}

impl fmt::Display for Algo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Algo::Winograd(t) => write!(f, "winograd {t}"),
            Algo::Direct {
                packed,
                by_position,
            } => write!(
                f,
                "direct{}{}",
                if *by_position { " position-major" } else { "" },
                if *packed { " packed" } else { "" }
            ),
            Algo::KernelRows => write!(f, "direct, kernel rows"),
            Algo::Pointwise { width } => write!(f, "1x1 gemm {}x{width}", tile::MR),
            Algo::Im2col { tiles: true } => write!(f, "im2col + gemm tiles"),
            Algo::Im2col { tiles: false } => write!(f, "im2col + gemm crate"),
        }
    }
}

impl fmt::Display for WeightGradAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightGradAlgo::Winograd(t) => write!(f, "winograd {t}"),
            WeightGradAlgo::ChannelMajor { by_columns: false } => write!(f, "channel-major"),
            WeightGradAlgo::ChannelMajor { by_columns: true } => write!(f, "packed columns"),
            WeightGradAlgo::Pointwise { width } => write!(f, "1x1 gemm {}x{width}", tile::MR),
            WeightGradAlgo::Im2col => write!(f, "im2col + gemm crate"),
        }
    }
}

impl fmt::Display for InputGradAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputGradAlgo::Transposed(a) => write!(f, "transposed conv, {a}"),
            InputGradAlgo::Pointwise { width } => write!(f, "1x1 gemm {}x{width}", tile::MR),
            InputGradAlgo::Col2im { tiles: true } => write!(f, "gemm tiles + col2im"),
            InputGradAlgo::Col2im { tiles: false } => write!(f, "gemm crate + col2im"),
        }
    }
}

impl fmt::Display for ConvPlan {
    /// One line: the geometry, then the three algorithms.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} fwd: {:<26} dW: {:<22} dX: {}",
            self.geom,
            self.forward.to_string(),
            self.weight_grad.to_string(),
            self.input_grad
        )
    }
}

/// The direct kernels' view of `w`: packed into `workspace` when `packed`, in place otherwise.
fn direct_weights<'a>(
    g: &ConvGeom,
    packed: bool,
    w: &'a [f32],
    workspace: &'a mut [f32],
) -> direct::Weights<'a> {
    if packed {
        direct::Weights::Packed(pack_direct(g, w, workspace))
    } else {
        direct::Weights::Hwio(w)
    }
}

/// `w` packed into column panels ([`direct::pack_weights`]) at the start of `workspace`.
fn pack_direct<'a>(g: &ConvGeom, w: &[f32], workspace: &'a mut [f32]) -> &'a [f32] {
    let out = &mut workspace[..direct::packed_len(g)];
    direct::pack_weights(g, w, out);
    out
}

/// Floats of workspace `algo` needs to compute `g`'s output for a batch of `n` (weights as they are).
fn algo_workspace(algo: Algo, g: &ConvGeom, n: usize) -> usize {
    match algo {
        Algo::Winograd(tile) => winograd::weights_len(tile, g) + winograd::scratch_len(tile, g, n),
        Algo::Pointwise { .. } => pointwise::workspace_len(g),
        Algo::Direct { packed, .. } => {
            if packed {
                direct::packed_len(g)
            } else {
                0
            }
        }
        Algo::KernelRows => direct::packed_len(g),
        Algo::Im2col { tiles } => im2col::workspace_len(g, n, tiles),
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
        Algo::Winograd(tile) => {
            let (u, scratch) = match prepared {
                Some(p) => (p, workspace),
                None => {
                    let (u, scratch) = workspace.split_at_mut(winograd::weights_len(tile, g));
                    winograd::transform_weights_for(tile, g, w, u);
                    (&*u, scratch)
                }
            };
            winograd::conv_winograd(tile, g, n, x, u, y, epilogue, scratch);
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
            let bias_only = epilogue.is_bias_only();
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
        Algo::KernelRows => {
            let packed = match prepared {
                Some(p) => p,
                None => pack_direct(g, w, workspace),
            };
            kernel_rows::forward(g, n, x, packed, y, epilogue);
        }
        Algo::Im2col { tiles } => im2col::forward(g, n, x, w, epilogue, tiles, y, workspace),
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
            WeightGradAlgo::Im2col => im2col::weight_grad_workspace_len(g, n),
        };
        let input_grad = match self.input_grad {
            InputGradAlgo::Transposed(algo) => {
                let t = g.transposed().expect("planned for a transposable conv");
                g.patch_len() * g.cout + algo_workspace(algo, &t, n)
            }
            InputGradAlgo::Pointwise { .. } => pointwise::workspace_len(g),
            InputGradAlgo::Col2im { tiles } => im2col::input_grad_workspace_len(g, n, tiles),
        };
        forward.max(weight_grad).max(input_grad)
    }

    /// Floats of the weights [`ConvPlan::prepare_weights`] writes, or `None` where the forward pass reads
    /// the weights as they are (so there is nothing to keep).
    pub fn prepared_len(&self) -> Option<usize> {
        match self.forward {
            Algo::Winograd(tile) => Some(winograd::weights_len(tile, &self.geom)),
            Algo::Direct { packed: true, .. } | Algo::KernelRows => {
                Some(direct::packed_len(&self.geom))
            }
            Algo::Pointwise { .. } => Some(pointwise::workspace_len(&self.geom)),
            _ => None,
        }
    }

    /// Writes `w` as the forward pass reads it (Winograd-transformed, or packed for the direct or 1×1 tiles) into
    /// `out` (at least [`ConvPlan::prepared_len`] floats), so that a caller can keep it.
    pub fn prepare_weights(&self, w: &[f32], out: &mut [f32]) {
        match self.forward {
            Algo::Winograd(tile) => winograd::transform_weights_for(tile, &self.geom, w, out),
            Algo::Direct { packed: true, .. } | Algo::KernelRows => {
                direct::pack_weights(&self.geom, w, out)
            }
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

    /// True when the forward algorithm stores each output element once, reading its residual just before: the
    /// output may then hold the residual on entry ([`Epilogue::bias_onto_output`]), so that a block's last
    /// convolution writes over its shortcut instead of into a buffer of its own (a stream of memory traffic
    /// less). Kernels that store partial sums first (reductions in several slices or tap passes) may not.
    pub fn adds_residual_in_place(&self) -> bool {
        match self.forward {
            Algo::Winograd(_) => true,
            Algo::Pointwise { .. } => pointwise::stores_once(&self.geom),
            Algo::Direct { .. } | Algo::KernelRows | Algo::Im2col { .. } => false,
        }
    }

    /// Floats of workspace [`ConvPlan::forward_with`] needs: the forward pass alone, the weights prepared.
    pub fn forward_workspace_len(&self) -> usize {
        let (g, n) = (&self.geom, self.batch);
        match self.forward {
            Algo::Winograd(tile) => winograd::scratch_len(tile, g, n),
            Algo::Pointwise { .. } | Algo::Direct { .. } | Algo::KernelRows => 0,
            Algo::Im2col { .. } => algo_workspace(self.forward, g, n),
        }
    }

    /// Forward convolution with any epilogue (an inference model's: bias, residual, ReLU):
    /// `y [n, oh, ow, cout] = epilogue(conv(x, w))`, the weights `prepared` by [`ConvPlan::prepare_weights`] where
    /// [`ConvPlan::prepared_len`] is `Some`, `w` (HWIO) otherwise. `workspace` holds at least
    /// [`ConvPlan::forward_workspace_len`] floats.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with(
        &self,
        x: &[f32],
        w: &[f32],
        prepared: Option<&[f32]>,
        epilogue: Epilogue<'_>,
        y: &mut [f32],
        workspace: &mut [f32],
    ) {
        assert_eq!(
            prepared.is_some(),
            self.prepared_len().is_some(),
            "forward_with: prepared weights as prepared_len says"
        );
        assert!(
            !epilogue.residual_in_place || self.adds_residual_in_place(),
            "forward_with: {} cannot add a residual in place",
            self.forward
        );
        let (g, n) = (&self.geom, self.batch);
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
            WeightGradAlgo::Im2col => im2col::weight_grad(g, n, x, dy, dw, workspace),
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
            InputGradAlgo::Col2im { tiles } => {
                im2col::input_grad(g, n, w, dy, dx, tiles, workspace)
            }
        }
    }
}
