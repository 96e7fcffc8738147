//! Winograd convolution F(m×m, 3×3), m = 2, 3 or 4, for 3×3, stride-1, padding-1 convolutions on x86-64 CPUs
//! with AVX2 and FMA.
//!
//! Each `m × m` block of output positions ("tile") is computed from the `α × α` input patch around it
//! (`α = m + 2`) as `Y = Aᵀ [ Σ_cin (G g Gᵀ) ⊙ (Bᵀ d B) ] A` (Lavin & Gray, 2015): the α² element-wise
//! products become α² independent GEMMs `M_ξ [tiles, cout] = V_ξ [tiles, cin] × U_ξ [cin, cout]`. Per output
//! position and channel pair that is α²/m² multiply-adds (4, 2.8, 2.25) instead of the direct convolution's 9.
//! Each plane gets the tile size with the fewest products ([`tile_for`]); the transforms are a few additions
//! per value, done on 8 channels at a time.
//!
//! Shapes: input `x [n, h, w, cin]`, output `y [n, h, w, cout]` (NHWC, same plane), weights HWIO
//! `[3·3·cin, cout]`, transformed to `u [cout / 16, α² ξ, cin, 16]` (a column panel of every ξ together).
//!
//! Structure: a rayon worker owns a slot of scratch and takes chunks of tiles in turn. For a chunk it writes
//! the transformed input `V [α² ξ, tiles, cin]`, runs the α² GEMMs on the direct convolution's 6×16 register
//! tile into `M [α² ξ, tiles, cout]`, then transforms `M` back into the output tile by tile, applying the
//! epilogue (bias, or an eval-mode batch norm's affine map and ReLU) as it stores. Chunks are sized so that
//! `V` and `M` stay in the caches between being written and read.
//!
//! The transforms, one unrolled version per tile size, are in `transforms.rs`; this file chooses the tile
//! size and runs the chunks and their products.
//!
//! Rounding: the transforms scale values by up to 8 (F(4×4)) and sum in a different order than the direct
//! convolution; the largest error is about 1e-5 of the output's scale for F(4×4), 4e-6 for F(3×3) and 5e-7
//! for F(2×2) (the tests' measurements).

use super::geom::ConvGeom;
use super::tile::{
    cols_tile_16, cols_tile_64, cpu_supported, rows_tile_64, tile_6x16, wide, Epilogue, SendPtr,
    MAX_CIN, MIN_CIN, MR, NR,
};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
pub use transforms::transform_weights_for;

mod transforms;

/// Largest transform side α.
const MAX_ALPHA: usize = 6;
/// Floats of `V` and `M` per chunk aimed at (1 MiB): small channel counts keep a chunk in L2; large ones
/// reach `MIN_CHUNK_TILES` first.
const CHUNK_FLOATS: usize = 256 * 1024;
/// Fewest tiles per chunk (8 register tiles): each 16-column slice of `U_ξ` is reused this often while it sits in L1.
const MIN_CHUNK_TILES: usize = 48;
/// Most tiles per chunk.
const MAX_CHUNK_TILES: usize = 240;
/// Fewest tiles in a batch for the Winograd path: each chunk reads all transformed weights (α²/9 of the
/// kernel), so a handful of tiles per chunk makes it a stream of weights (at 224×224, batch 1, the 28×28, 14×14
/// and 7×7 stages have 49, 16 and 4 F(4×4) tiles; the direct kernels split their weights among tasks instead).
const MIN_TILES: usize = 64;

/// True on CPUs with AVX2 and FMA unless `RESNET_WINOGRAD=0` (or `RESNET_PORTABLE=1`) is set (checked once):
/// a switch for comparing against the direct kernels.
pub fn enabled() -> bool {
    use std::sync::OnceLock;
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        cpu_supported() && std::env::var_os("RESNET_WINOGRAD").is_none_or(|v| v != "0")
    })
}

/// A tile size F(m×m, 3×3) and its transform matrices `Bᵀ [α, α]`, `G [α, 3]`, `Aᵀ [m, α]`: Lavin & Gray's
/// F(2×2) and F(4×4), and F(3×3) from the interpolation points 0, 1, −1, 2 and ∞.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// 2×2 outputs from 4×4 inputs.
    F2,
    /// 3×3 outputs from 5×5 inputs.
    F3,
    /// 4×4 outputs from 6×6 inputs.
    F4,
}

impl std::fmt::Display for Tile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = match self {
            Tile::F2 => 2,
            Tile::F3 => 3,
            Tile::F4 => 4,
        };
        write!(f, "F({m}x{m})")
    }
}

impl Tile {
    /// Outputs per tile side.
    pub fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F3 => 3,
            Tile::F4 => 4,
        }
    }
    /// Inputs per tile side, `m + 2`.
    pub fn alpha(self) -> usize {
        self.m() + 2
    }
    /// Transform positions per tile, α².
    fn xi(self) -> usize {
        self.alpha() * self.alpha()
    }
    /// Tiles per image, row-major: `(rows, columns)`.
    fn grid(self, g: &ConvGeom) -> (usize, usize) {
        (g.oh.div_ceil(self.m()), g.ow.div_ceil(self.m()))
    }
    /// Tiles of a batch of `n`.
    fn tiles(self, g: &ConvGeom, n: usize) -> usize {
        let (rows, cols) = self.grid(g);
        n * rows * cols
    }
}

/// The shapes [`conv_winograd`] can compute at all (both channel counts at most `MAX_CIN`: out-of-plane pixels
/// of the input and of the output gradient read the shared zero block).
fn fits(g: &ConvGeom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pad == 1
        && g.cin.is_multiple_of(8)
        && (MIN_CIN..=MAX_CIN).contains(&g.cin)
        && g.cout.is_multiple_of(NR)
        && (NR..=MAX_CIN).contains(&g.cout)
}

/// Output positions and kernel taps along one axis of a 3×3, padding-1 convolution where the tap reads the
/// input: the direct kernels skip the rest at best.
fn live_pairs(size: usize) -> usize {
    3 * size - 2.min(2 * size)
}

/// The tile size with the fewest products per image for this plane (the smaller tile on ties: it rounds
/// less), if it needs at most 4/5 of the direct kernels' live taps. Planes that a tile size does not divide
/// pay for tiles partly outside: 96×96 inputs give F(4×4) at 24×24 and 12×12, F(3×3) at 6×6 and 3×3; 28×28
/// inputs give F(4×4) at 7×7 and 4×4 and nothing at 2×2 and 1×1.
fn best_tile(g: &ConvGeom) -> Option<Tile> {
    let products = |t: Tile| {
        let (rows, cols) = t.grid(g);
        t.xi() * rows * cols
    };
    let best = [Tile::F2, Tile::F3, Tile::F4]
        .into_iter()
        .min_by_key(|&t| products(t))?;
    let direct = live_pairs(g.oh) * live_pairs(g.ow);
    (5 * products(best) <= 4 * direct).then_some(best)
}

/// The tile size [`conv_winograd`] uses for this geometry and a batch of `n`, or `None` where the direct kernels
/// run (no AVX2, a shape it does not fit, too few tiles, or no saving).
pub fn tile_for(g: &ConvGeom, n: usize) -> Option<Tile> {
    if !enabled() || !fits(g) {
        return None;
    }
    best_tile(g).filter(|&t| t.tiles(g, n) >= MIN_TILES)
}

/// [`tile_for`] for an inference forward pass (the compiled network): also a batch with fewer than 64 tiles,
/// its output channels then split among the tasks, where the transformed weights are at most 16 MiB. Training
/// keeps [`tile_for`]: its plans, and so its trajectories (a data-parallel rank's share of a batch included),
/// stay as they were.
pub fn inference_tile_for(g: &ConvGeom, n: usize) -> Option<Tile> {
    if !enabled() || !fits(g) {
        return None;
    }
    best_tile(g).filter(|&t| t.tiles(g, n) >= MIN_TILES || weights_len(t, g) <= SPLIT_WEIGHTS)
}

/// Most transformed weights (floats) for which a batch with fewer than [`MIN_TILES`] tiles still runs the
/// Winograd path, its output channels split among the tasks ([`split_columns`]): 4 Mi floats (16 MiB) takes
/// the 28×28 and 14×14 stages of a ResNet-50 at 224×224, batch 1 (2.4 and 9.4 MB under F(4×4)), and leaves
/// the 7×7 stage's 38 MB to the direct kernels, whose weights are a quarter of that.
const SPLIT_WEIGHTS: usize = 4 << 20;

/// True when [`conv_winograd`] splits the output channels among tasks rather than the tiles: fewer than
/// [`MIN_TILES`], all in one chunk.
fn split_columns(tile: Tile, g: &ConvGeom, n: usize) -> bool {
    tile.tiles(g, n) < MIN_TILES
}

/// Floats of the weights transformed for `tile`: `α²·cin·cout`.
pub fn weights_len(tile: Tile, g: &ConvGeom) -> usize {
    tile.xi() * g.cin * g.cout
}

/// Transformed weights (floats) above which a chunk takes as many tiles as it may: every chunk reads all of
/// them, and beyond the last-level cache's share that read goes to memory (the 512-channel stage under
/// F(3×3): 26 MB; measured at 96×96, its forward took as long as the direct kernels' with 36-tile chunks).
const STREAMED_WEIGHTS: usize = 2 << 20;

/// Tiles per chunk: a multiple of 6, `V` and `M` near `CHUNK_FLOATS`, and at least four chunks per thread
/// where the batch has that many tiles; with streamed weights, one chunk per thread, up to `MAX_CHUNK_TILES`.
fn chunk_tiles(tile: Tile, g: &ConvGeom, n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let tiles = tile.tiles(g, n);
    let chunk = if split_columns(tile, g, n) {
        tiles
    } else if weights_len(tile, g) > STREAMED_WEIGHTS {
        tiles.div_ceil(threads).min(MAX_CHUNK_TILES)
    } else {
        let by_cache =
            (CHUNK_FLOATS / (tile.xi() * (g.cin + g.cout))).clamp(MIN_CHUNK_TILES, MAX_CHUNK_TILES);
        by_cache.min(tiles.div_ceil(4 * threads))
    };
    chunk.max(1).next_multiple_of(MR)
}

/// Floats of one worker's scratch: `V` and `M` of a chunk.
fn slot_len(tile: Tile, g: &ConvGeom, n: usize) -> usize {
    tile.xi() * chunk_tiles(tile, g, n) * (g.cin + g.cout)
}

/// Floats of scratch [`conv_winograd`] needs with `tile` for a batch of `n` (a slot per rayon thread).
pub fn scratch_len(tile: Tile, g: &ConvGeom, n: usize) -> usize {
    rayon::current_num_threads().max(1) * slot_len(tile, g, n)
}

/// `y [n, h, w, cout] = epilogue(conv3×3(x [n, h, w, cin]))` (stride 1, padding 1; `y` overwritten) with the
/// plan's tile size (from [`tile_for`] or [`inference_tile_for`]), the weights as [`transform_weights_for`] wrote
/// them into `u`; `scratch` holds at least [`scratch_len`] floats. Panics unless the tile fits the geometry and
/// the slices their shapes.
#[allow(clippy::too_many_arguments)]
pub fn conv_winograd(
    tile: Tile,
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    u: &[f32],
    y: &mut [f32],
    epilogue: Epilogue<'_>,
    scratch: &mut [f32],
) {
    assert!(enabled() && fits(g), "conv_winograd: unsupported");
    let (cin, cout, xi) = (g.cin, g.cout, tile.xi());
    assert!(x.len() >= n * g.h * g.w * cin, "conv_winograd: x too short");
    assert!(u.len() >= xi * cin * cout, "conv_winograd: u too short");
    let y = &mut y[..n * g.oh * g.ow * cout];
    epilogue.check(cout);
    epilogue.check_residual(y.len());
    let chunk = chunk_tiles(tile, g, n);
    let slot = slot_len(tile, g, n);
    assert!(scratch.len() >= slot, "conv_winograd: scratch too short");
    let tiles = tile.tiles(g, n);
    let chunks = tiles.div_ceil(chunk);
    // Few tiles (a batch of one on a small plane) make one chunk: its output channels are split among the tasks
    // instead, each transforming the chunk's input and reading its own columns of `U` once.
    let width = if wide(cout) { 64 } else { NR };
    let col_groups = if split_columns(tile, g, n) {
        rayon::current_num_threads().clamp(1, cout / width)
    } else {
        1
    };
    let group_cols = (cout / width).div_ceil(col_groups) * width;
    let col_groups = cout.div_ceil(group_cols);
    let tasks = chunks * col_groups;
    let next_task = AtomicUsize::new(0);
    let y_ptr = SendPtr(y.as_mut_ptr());
    let slots = (scratch.len() / slot).min(tasks);
    scratch[..slots * slot]
        .par_chunks_mut(slot)
        .for_each(|scratch| {
            let (v, m) = scratch.split_at_mut(xi * chunk * cin);
            loop {
                let t = next_task.fetch_add(1, Ordering::Relaxed);
                if t >= tasks {
                    break;
                }
                let (c, group) = (t / col_groups, t % col_groups);
                let span = Span {
                    first: c * chunk,
                    count: chunk.min(tiles - c * chunk),
                    chunk,
                    cols: (group * group_cols, ((group + 1) * group_cols).min(cout)),
                };
                // SAFETY: enabled() checked AVX2+FMA; x, u, y and the epilogue were checked against the shapes
                // above and v, m hold a chunk; tasks write disjoint (tiles × output channels) blocks of y.
                unsafe {
                    tile.transform_tiles(false, g, x, span, v);
                    products(g, xi, u, v, m, span);
                    tile.output_transform(g, m, span, y_ptr, epilogue);
                }
            }
        });
}

/// A chunk's tiles `first..first + count`, stored `chunk` rows apart per ξ in `V`, `M` and `W`.
#[derive(Clone, Copy)]
struct Span {
    first: usize,
    count: usize,
    chunk: usize,
    /// The output channels `cols.0..cols.1` the products and the output transform compute (all of them but
    /// where the output channels are split among tasks).
    cols: (usize, usize),
}

/// Floats of one worker's scratch for [`conv_winograd_weight_grad`]: its sums `dU [α² ξ, cin, cout]`, then `V`
/// and `W` of a chunk.
fn weight_grad_slot_len(tile: Tile, g: &ConvGeom, n: usize) -> usize {
    tile.xi() * g.cin * g.cout + slot_len(tile, g, n)
}

/// Floats of scratch [`conv_winograd_weight_grad`] needs for a batch of `n` (a slot per rayon thread; 0 where
/// not [`tile_for`]).
pub fn weight_grad_scratch_len(g: &ConvGeom, n: usize) -> usize {
    tile_for(g, n).map_or(0, |t| {
        rayon::current_num_threads().max(1) * weight_grad_slot_len(t, g, n)
    })
}

/// Weight gradient `dw [3·3·cin, cout] = Σ x-patches ⊗ dy` (HWIO, overwritten) of the convolution
/// [`conv_winograd`] computes, by the transposed transforms: for each tile, `V = Bᵀ d B` of its input patch
/// and `W = A dy Aᵀ` of its `m × m` output gradient; `dU_ξ [cin, cout] = Σ_tiles V_ξᵀ W_ξ`; then
/// `dw = Gᵀ dU G` per channel pair. Since `y = Aᵀ (U ⊙ V) A` is linear in `U = G g Gᵀ`, this is its exact
/// gradient, with α² instead of 9·m² multiply-adds per tile and channel pair.
///
/// Each worker sums a fixed set of chunks (chunk `c` goes to slot `c mod slots`) and the slots are added in
/// order, so the result is the same from run to run for a given thread count. `scratch` holds at least
/// [`weight_grad_scratch_len`] floats.
///
/// Panics unless [`tile_for`]`(g, n)` is a tile and the slices fit their shapes.
pub fn conv_winograd_weight_grad(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    scratch: &mut [f32],
) {
    let tile = tile_for(g, n).expect("conv_winograd: unsupported");
    weight_grad_for(tile, g, n, x, dy, dw, scratch);
}

fn weight_grad_for(
    tile: Tile,
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    scratch: &mut [f32],
) {
    assert!(enabled() && fits(g), "conv_winograd: unsupported");
    let (cin, cout, xi, alpha) = (g.cin, g.cout, tile.xi(), tile.alpha());
    assert!(x.len() >= n * g.h * g.w * cin, "conv_winograd: x too short");
    assert!(
        dy.len() >= n * g.oh * g.ow * cout,
        "conv_winograd: dy too short"
    );
    let dw = &mut dw[..9 * cin * cout];
    let chunk = chunk_tiles(tile, g, n);
    let slot = weight_grad_slot_len(tile, g, n);
    assert!(scratch.len() >= slot, "conv_winograd: scratch too short");
    let tiles = tile.tiles(g, n);
    let chunks = tiles.div_ceil(chunk);
    let slots = (scratch.len() / slot).min(chunks).max(1);
    let sums_len = xi * cin * cout;
    let scratch = &mut scratch[..slots * slot];
    scratch
        .par_chunks_mut(slot)
        .enumerate()
        .for_each(|(k, scratch)| {
            let (sums, rest) = scratch.split_at_mut(sums_len);
            let (v, w) = rest.split_at_mut(xi * chunk * cin);
            for (nth, c) in (k..chunks).step_by(slots).enumerate() {
                let span = Span {
                    first: c * chunk,
                    count: chunk.min(tiles - c * chunk),
                    chunk,
                    cols: (0, g.cout),
                };
                // SAFETY: enabled() checked AVX2+FMA; x and dy were checked against the shapes above; v, w and
                // sums are this worker's own.
                unsafe {
                    tile.transform_tiles(false, g, x, span, v);
                    tile.transform_tiles(true, g, dy, span, w);
                    weight_products(g, xi, v, w, sums, span, nth == 0);
                }
            }
        });
    // dw[tap] = Σ_ξ G[i][ky] · G[j][kx] · Σ_slots dU_ξ (ξ = α·i + j), slots added in order.
    let gm = tile.g();
    let scratch: &[f32] = scratch;
    dw.par_chunks_mut(cin * cout)
        .enumerate()
        .for_each(|(tap, out)| {
            let (ky, kx) = (tap / 3, tap % 3);
            out.fill(0.0);
            for x in 0..xi {
                let coef = gm[x / alpha][ky] * gm[x % alpha][kx];
                if coef == 0.0 {
                    continue;
                }
                for k in 0..slots {
                    let sums = &scratch[k * slot + x * cin * cout..][..cin * cout];
                    for (o, s) in out.iter_mut().zip(sums) {
                        *o += coef * s;
                    }
                }
            }
        });
}

/// `m_ξ [count, cout] = v_ξ [count, cin] × u_ξ [cin, cout]` for the `xi` positions (`m [xi, chunk, cout]`).
///
/// # Safety
/// AVX2 and FMA must be available; `u` holds `xi·cin·cout` floats, `v` and `m` a chunk each.
unsafe fn products(g: &ConvGeom, xi: usize, u: &[f32], v: &[f32], m: &mut [f32], span: Span) {
    let (cin, cout, count, chunk) = (g.cin, g.cout, span.count, span.chunk);
    let register_tiles = count.div_ceil(MR);
    // With AVX-512 a 6 × 64 tile reads four 16-column panels at once (one 16-float vector each).
    let wide = wide(cout);
    for x in 0..xi {
        let v_x = &v[x * chunk * cin..][..count * cin];
        let m_x = m[x * chunk * cout..].as_mut_ptr();
        let panel_of = |panel: usize| u[(panel * xi + x) * cin * NR..][..cin * NR].as_ptr();
        for tile in 0..register_tiles {
            let rows = (count - tile * MR).min(MR);
            // Rows past `count` repeat the tile's first row; they are computed and never stored.
            let mut ptrs = [v_x[tile * MR * cin..].as_ptr(); MR];
            for (r, p) in ptrs.iter_mut().enumerate().take(rows) {
                *p = v_x[(tile * MR + r) * cin..][..cin].as_ptr();
            }
            let m_rows: [*mut f32; MR] =
                core::array::from_fn(|r| m_x.add((tile * MR + r.min(rows - 1)) * cout));
            let panels = span.cols.0 / NR..span.cols.1 / NR;
            if wide {
                for panel in panels.step_by(4) {
                    let b = [0, 1, 2, 3].map(|j| panel_of(panel + j));
                    let c = m_rows.map(|p| p.add(panel * NR));
                    rows_tile_64(&ptrs, cin, &b, NR, &c, rows, false, None);
                }
                continue;
            }
            for panel in panels {
                tile_6x16(
                    &ptrs,
                    cin,
                    &[panel_of(panel)],
                    NR,
                    m_x.add(tile * MR * cout + panel * NR),
                    cout,
                    rows,
                    false,
                    None,
                );
            }
        }
    }
}

/// `sums_ξ [cin, cout] (+)= v_ξ [count, cin]ᵀ × w_ξ [count, cout]` for the `xi` positions; overwrites when
/// `overwrite`.
///
/// # Safety
/// AVX2 and FMA must be available; `v` and `w` hold a chunk each, `sums` `xi·cin·cout` floats.
unsafe fn weight_products(
    g: &ConvGeom,
    xi: usize,
    v: &[f32],
    w: &[f32],
    sums: &mut [f32],
    span: Span,
    overwrite: bool,
) {
    let (cin, cout, count, chunk) = (g.cin, g.cout, span.count, span.chunk);
    for x in 0..xi {
        let v_x = v[x * chunk * cin..][..count * cin].as_ptr();
        let w_x = w[x * chunk * cout..][..count * cout].as_ptr();
        let sums_x = sums[x * cin * cout..][..cin * cout].as_mut_ptr();
        for c0 in (0..cin).step_by(MR) {
            let rows = (cin - c0).min(MR);
            let dst: [*mut f32; MR] =
                core::array::from_fn(|i| sums_x.add((c0 + i.min(rows - 1)) * cout));
            let runs = [(0, 0, count)];
            let a = v_x.add(c0);
            if wide(cout) {
                for panel in 0..cout / 64 {
                    let d = dst.map(|p| p.add(panel * 64));
                    let b = w_x.add(panel * 64);
                    cols_tile_64(a, cin, b, cout, &runs, rows, &d, !overwrite, rows);
                }
            } else {
                for panel in 0..cout / NR {
                    let d = dst.map(|p| p.add(panel * NR));
                    let b = w_x.add(panel * NR);
                    cols_tile_16(a, cin, b, cout, &runs, rows, &d, !overwrite, rows);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::reference;

    const TILES: [Tile; 3] = [Tile::F2, Tile::F3, Tile::F4];

    /// Error bounds relative to the output's largest value: the larger tiles' transforms scale values by up to
    /// 4 (F(3×3)) and 8 (F(4×4)) before the sums, so they round more (measured here: at most 5.4e-7, 3.9e-6 and
    /// 1.2e-5 forward, 3.4e-7, 1.6e-6 and 3.2e-6 for the weight gradient).
    fn bound(tile: Tile) -> f64 {
        match tile {
            Tile::F2 => 2e-6,
            Tile::F3 => 1e-5,
            Tile::F4 => 3e-5,
        }
    }

    /// The reference's values in f64, as [`relative_error`] takes them.
    fn as_f64(values: Vec<f32>) -> Vec<f64> {
        values.into_iter().map(f64::from).collect()
    }

    /// Deterministic test values in [−1, 1): `((i·step mod modulus) − modulus/2) / (modulus/2)`.
    fn pattern(len: usize, step: usize, modulus: usize) -> Vec<f32> {
        let half = (modulus / 2) as f32;
        (0..len)
            .map(|i| ((i * step % modulus) as f32 - half) / half)
            .collect()
    }

    /// Largest `|got − want|` over the largest `|want|`.
    fn relative_error(got: &[f32], want: &[f64]) -> f64 {
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()));
        err / scale.max(1e-30)
    }

    #[test]
    fn every_tile_size_matches_the_definition_with_every_epilogue() {
        if !enabled() {
            return;
        }
        // (cin, cout, side, batch): planes each tile size divides and planes it does not (tiles partly
        // outside), several chunks, a partial register tile, a plane smaller than a tile; output channels in
        // multiples of 64 (the 6 × 64 tile with AVX-512).
        for (cin, cout, side, n) in [
            (16, 16, 4, 3),
            (40, 64, 7, 5),
            (16, 128, 4, 3),
            (24, 32, 7, 5),
            (64, 48, 12, 2),
            (16, 16, 1, 7),
            (32, 16, 6, 4),
            (32, 256, 14, 1),
        ] {
            let g = ConvGeom::new(cin, cout, 3, 1, 1, side, side).unwrap();
            assert!(fits(&g));
            let x = pattern(n * side * side * cin, 37, 101);
            let w: Vec<f32> = pattern(9 * cin * cout, 53, 97)
                .iter()
                .map(|v| v / 4.0)
                .collect();
            let scale: Vec<f32> = (0..cout).map(|c| 0.5 + c as f32 / 64.0).collect();
            let shift: Vec<f32> = (0..cout).map(|c| c as f32 / 32.0 - 0.4).collect();
            let expected = as_f64(reference::forward(&g, n, &x, &w, &[]));
            let residual = pattern(expected.len(), 29, 89);
            for tile in TILES {
                let mut u = vec![0.0; tile.xi() * cin * cout];
                transform_weights_for(tile, &g, &w, &mut u);
                let mut scratch =
                    vec![f32::NAN; rayon::current_num_threads() * slot_len(tile, &g, n)];
                for (with_scale, with_shift, with_residual, relu) in [
                    (false, false, false, false),
                    (false, true, false, false),
                    (true, true, false, true),
                    (false, true, true, true),
                ] {
                    let epilogue = Epilogue {
                        scale: with_scale.then_some(&scale[..]),
                        shift: with_shift.then_some(&shift[..]),
                        residual: with_residual.then_some(&residual[..]),
                        residual_in_place: false,
                        relu,
                    };
                    let mut want = expected.clone();
                    for (i, v) in want.iter_mut().enumerate() {
                        let co = i % cout;
                        if with_scale {
                            *v *= scale[co] as f64;
                        }
                        if with_shift {
                            *v += shift[co] as f64;
                        }
                        if with_residual {
                            *v += residual[i] as f64;
                        }
                        if relu {
                            *v = v.max(0.0);
                        }
                    }
                    let mut y = vec![f32::NAN; expected.len()];
                    conv_winograd(tile, &g, n, &x, &u, &mut y, epilogue, &mut scratch);
                    let err = relative_error(&y, &want);
                    assert!(
                        err <= bound(tile),
                        "{tile:?} {g:?} n={n} {with_scale}/{with_shift}/{with_residual}/{relu}: error {err:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn weight_gradient_matches_the_definition() {
        if !enabled() {
            return;
        }
        // (cin, cout, side, batch): planes each tile size divides and planes it does not, several chunks per
        // worker, channel counts that leave a partial 6-channel block, output channels in multiples of 64.
        for (cin, cout, side, n) in [
            (16, 32, 4, 9),
            (40, 64, 7, 5),
            (40, 128, 6, 4),
            (40, 16, 7, 5),
            (64, 48, 12, 3),
            (16, 16, 6, 8),
        ] {
            let g = ConvGeom::new(cin, cout, 3, 1, 1, side, side).unwrap();
            let x = pattern(n * side * side * cin, 37, 101);
            let dy = pattern(n * side * side * cout, 53, 97);
            let want = as_f64(reference::weight_grad(&g, n, &x, &dy));
            for tile in TILES {
                let slots = rayon::current_num_threads();
                let mut scratch = vec![f32::NAN; slots * weight_grad_slot_len(tile, &g, n)];
                let mut dw = vec![f32::NAN; want.len()];
                // Twice: the second run starts from the first's sums in the scratch.
                for _ in 0..2 {
                    weight_grad_for(tile, &g, n, &x, &dy, &mut dw, &mut scratch);
                    let err = relative_error(&dw, &want);
                    assert!(err <= bound(tile), "{tile:?} {g:?} n={n}: error {err:e}");
                }
            }
        }
    }

    #[test]
    fn each_plane_gets_the_tile_size_with_the_fewest_products() {
        let plane = |side| ConvGeom::new(64, 64, 3, 1, 1, side, side).unwrap();
        // 96×96 input: stages at 24, 12, 6 and 3; 28×28: 7, 4, 2 and 1.
        for (side, wanted) in [
            (24, Some(Tile::F4)),
            (12, Some(Tile::F4)),
            (6, Some(Tile::F3)),
            (3, Some(Tile::F3)),
            (7, Some(Tile::F4)),
            (4, Some(Tile::F4)),
            (2, None),
            (1, None),
        ] {
            assert_eq!(best_tile(&plane(side)), wanted, "{side}×{side}");
        }
        assert!(!fits(&ConvGeom::new(64, 64, 3, 2, 1, 12, 12).unwrap()));
        assert!(!fits(&ConvGeom::new(64, 64, 1, 1, 0, 12, 12).unwrap()));
    }
}
