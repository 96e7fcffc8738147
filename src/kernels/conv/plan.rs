//! How one convolution runs: the algorithm of its forward pass, its weight gradient and its input gradient,
//! chosen once per (geometry, batch) on this CPU. The forward pass, the eval-mode forward with its fused batch
//! norm, the backward pass and the workspace sizing in [`super`] all follow the plan; `resnet summary
//! --plan` and `resnet bench --plan` print it.

use super::channel_major;
use super::direct;
use super::geom::ConvGeom;
use super::pointwise;
use super::tile;
use super::winograd::{self, Tile};
use std::fmt;

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
    /// A 1×1 convolution as a matrix product on register tiles ([`pointwise`]), `width` columns per tile.
    Pointwise {
        /// Output columns per register tile (64 with AVX-512, 16 with AVX2).
        width: usize,
    },
    /// The column matrix of the live taps (im2col) times the weights; `tiles`: the product on the
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
    /// im2col per chunk of images, then the `gemm` crate.
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
    /// `dcols = dy · wᵀ` per chunk, added back with col2im; `tiles` as for [`Algo::Im2col`].
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

/// The forward algorithm for `g` at batch `n`.
fn forward_algo(g: &ConvGeom, n: usize) -> Algo {
    if let Some(tile) = winograd::tile_for(g, n) {
        Algo::Winograd(tile)
    } else if pointwise::handles(g) {
        Algo::Pointwise {
            width: pointwise::tile_width(g.cout),
        }
    } else if !g.is_pointwise() && tile::cpu_supported() && direct::handles(g) {
        Algo::Direct {
            packed: direct::packs_weights(g),
            by_position: direct::by_position(g, n),
        }
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
            forward: forward_algo(&g, 1),
            ..ConvPlan::new(g, n)
        }
    }

    /// The plan for `g` at batch `n` on this CPU.
    pub fn new(g: ConvGeom, n: usize) -> ConvPlan {
        let forward = forward_algo(&g, n);
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
            InputGradAlgo::Transposed(forward_algo(&t, n))
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
        let g = &self.geom;
        write!(
            f,
            "{}x{} /{} {:>4}->{:<4} {:>3}x{:<3} fwd: {:<26} dW: {:<22} dX: {}",
            g.kh,
            g.kw,
            g.stride,
            g.cin,
            g.cout,
            g.h,
            g.w,
            self.forward.to_string(),
            self.weight_grad.to_string(),
            self.input_grad
        )
    }
}
