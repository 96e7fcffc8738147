//! Winograd F(2×2, 3×3) convolution for 3×3, stride-1, padding-1 convolutions on x86-64 CPUs with AVX2 and FMA.
//!
//! Each 2×2 block of output positions ("tile") is computed from the 4×4 input patch around it as
//! `Y = Aᵀ [ Σ_cin (G g Gᵀ) ⊙ (Bᵀ d B) ] A` (Lavin & Gray, 2015): the 16 element-wise products become 16
//! independent GEMMs `M_ξ [tiles, cout] = V_ξ [tiles, cin] × U_ξ [cin, cout]`, 16 multiply-adds per tile and
//! channel pair instead of the direct convolution's 36 (2.25× fewer). The transforms are additions only, done
//! on 8 channels at a time.
//!
//! Shapes: input `x [n, h, w, cin]`, output `y [n, h, w, cout]` (NHWC, same plane), weights HWIO
//! `[3·3·cin, cout]`, transformed to `u [cout / 16, 16 ξ, cin, 16]` (a column panel of every ξ together).
//!
//! Structure: a rayon worker owns a slot of scratch and takes chunks of tiles in turn. For a chunk it writes
//! the transformed input `V [16 ξ, tiles, cin]`, runs the 16 GEMMs on the direct convolution's 6×16 register
//! tile into `M [16 ξ, tiles, cout]`, then transforms `M` back into the output tile by tile, applying the
//! epilogue (bias, or an eval-mode batch norm's affine map and ReLU) as it stores. Chunks are sized so that
//! `V` and `M` stay in the caches between being written and read.
//!
//! Rounding: sums are formed in a different order than the direct convolution's, and the transforms add a few
//! roundings (the weight transform halves, exactly); outputs agree with it to about 1e-6 relative.

use super::conv::ConvGeom;
use super::conv_direct::{self, SendPtr, MAX_CIN, MIN_CIN, MR, NR};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Transform positions of a tile (4 × 4).
const XI: usize = 16;
/// Floats of `V` and `M` per chunk aimed at (1 MiB): small channel counts keep a chunk in L2; large ones
/// reach `MIN_CHUNK_TILES` first.
const CHUNK_FLOATS: usize = 256 * 1024;
/// Fewest tiles per chunk (8 register tiles): each 16-column slice of `U_ξ` is reused this often while it sits in L1.
const MIN_CHUNK_TILES: usize = 48;
/// Most tiles per chunk.
const MAX_CHUNK_TILES: usize = 240;

/// True unless `RESNET_WINOGRAD=0` is set (checked once): a switch for comparing against the direct kernels.
fn enabled() -> bool {
    use std::sync::OnceLock;
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        conv_direct::cpu_supported() && std::env::var_os("RESNET_WINOGRAD").is_none_or(|v| v != "0")
    })
}

/// Fewest tiles in a batch for the Winograd path: each chunk reads all transformed weights (16/9 of the
/// kernel), so a handful of tiles per chunk makes it a stream of weights (at 224×224, batch 1, the 14×14 and
/// 7×7 stages have 49 and 16 tiles; the direct kernels split their weights among tasks instead).
const MIN_TILES: usize = 64;

/// True when [`conv_winograd`] computes this geometry for a batch of `n` on this CPU, and does so with clearly
/// fewer multiply-adds than the direct kernels.
pub fn handles(g: &ConvGeom, n: usize) -> bool {
    enabled() && fits(g) && saves_work(g) && n * g.oh.div_ceil(2) * g.ow.div_ceil(2) >= MIN_TILES
}

/// The shapes [`conv_winograd`] can compute at all.
fn fits(g: &ConvGeom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pad == 1
        && g.cin.is_multiple_of(8)
        && (MIN_CIN..=MAX_CIN).contains(&g.cin)
        && g.cout.is_multiple_of(NR)
        && g.cout > 0
}

/// Output positions and kernel taps along one axis of a 3×3, padding-1 convolution where the tap reads the
/// input: the direct kernels skip the rest at best.
fn live_pairs(size: usize) -> usize {
    3 * size - 2.min(2 * size)
}

/// True when the tiles' 16 products per tile cost at most 4/5 of the direct kernels' live taps. Planes of odd
/// size pay for a row and a column of tiles half outside; at 3×3 (stage 4 at 96×96) and 2×2 (stage 3 at
/// 28×28) the direct kernels, which skip the taps in the padding, do fewer multiply-adds.
fn saves_work(g: &ConvGeom) -> bool {
    let direct = live_pairs(g.oh) * live_pairs(g.ow);
    let winograd = XI * g.oh.div_ceil(2) * g.ow.div_ceil(2);
    5 * winograd <= 4 * direct
}

/// Floats of the transformed weights: `16·cin·cout`.
pub fn weights_len(g: &ConvGeom) -> usize {
    XI * g.cin * g.cout
}

/// Tiles per chunk for a batch of `n`: a multiple of 6, `V` and `M` near `CHUNK_FLOATS`, and at least four
/// chunks per thread where the batch has that many tiles.
fn chunk_tiles(g: &ConvGeom, n: usize) -> usize {
    let tiles = n * g.oh.div_ceil(2) * g.ow.div_ceil(2);
    let threads = rayon::current_num_threads().max(1);
    let by_cache = (CHUNK_FLOATS / (XI * (g.cin + g.cout))).clamp(MIN_CHUNK_TILES, MAX_CHUNK_TILES);
    let by_balance = tiles.div_ceil(4 * threads).max(1);
    by_cache.min(by_balance).next_multiple_of(MR)
}

/// Floats of one worker's scratch: `V` and `M` of a chunk.
fn slot_len(g: &ConvGeom, n: usize) -> usize {
    XI * chunk_tiles(g, n) * (g.cin + g.cout)
}

/// Floats of scratch [`conv_winograd`] needs for a batch of `n` (a slot per rayon thread).
pub fn scratch_len(g: &ConvGeom, n: usize) -> usize {
    rayon::current_num_threads().max(1) * slot_len(g, n)
}

/// `u [cout / 16, 16, cin, 16] = G g Gᵀ` for every `(ci, co)` filter `g` of `w [3·3·cin, cout]` (HWIO), with
/// `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
pub fn transform_weights(g: &ConvGeom, w: &[f32], u: &mut [f32]) {
    let (cin, cout) = (g.cin, g.cout);
    assert!(w.len() >= 9 * cin * cout, "conv_winograd: w too short");
    u[..XI * cin * cout]
        .par_chunks_mut(XI * cin * NR)
        .enumerate()
        .for_each(|(panel, out)| {
            for ci in 0..cin {
                for lane in 0..NR {
                    let co = panel * NR + lane;
                    let tap = |ky: usize, kx: usize| w[((ky * 3 + kx) * cin + ci) * cout + co];
                    // t = G g: 4 rows × 3 columns.
                    let mut t = [[0.0f32; 3]; 4];
                    for (kx, col) in (0..3).map(|kx| (kx, [tap(0, kx), tap(1, kx), tap(2, kx)])) {
                        let [g0, g1, g2] = col;
                        t[0][kx] = g0;
                        t[1][kx] = 0.5 * (g0 + g1 + g2);
                        t[2][kx] = 0.5 * (g0 - g1 + g2);
                        t[3][kx] = g2;
                    }
                    for (i, [t0, t1, t2]) in t.into_iter().enumerate() {
                        let row = [t0, 0.5 * (t0 + t1 + t2), 0.5 * (t0 - t1 + t2), t2];
                        for (j, v) in row.into_iter().enumerate() {
                            out[((i * 4 + j) * cin + ci) * NR + lane] = v;
                        }
                    }
                }
            }
        });
}

/// What [`conv_winograd`] applies to each output before storing it: `relu?(v·scale + shift)`, each part
/// optional (`shift` alone is a bias).
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// `[cout]`
    pub scale: Option<&'a [f32]>,
    /// `[cout]`
    pub shift: Option<&'a [f32]>,
    /// Clamp at zero last.
    pub relu: bool,
}

/// `y [n, h, w, cout] = epilogue(conv3×3(x [n, h, w, cin]))` (stride 1, padding 1; `y` overwritten), with the
/// weights as [`transform_weights`] wrote them into `u`. `scratch` holds at least [`scratch_len`] floats.
///
/// Panics unless [`handles`]`(g, n)` holds (or the shape [`fits`], for tests) and the slices fit their shapes.
pub fn conv_winograd(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    u: &[f32],
    y: &mut [f32],
    epilogue: Epilogue<'_>,
    scratch: &mut [f32],
) {
    assert!(enabled() && fits(g), "conv_winograd: unsupported");
    let (cin, cout) = (g.cin, g.cout);
    assert!(x.len() >= n * g.h * g.w * cin, "conv_winograd: x too short");
    assert!(u.len() >= weights_len(g), "conv_winograd: u too short");
    let y = &mut y[..n * g.oh * g.ow * cout];
    for part in [epilogue.scale, epilogue.shift].into_iter().flatten() {
        assert!(part.len() >= cout, "conv_winograd: epilogue too short");
    }
    let chunk = chunk_tiles(g, n);
    let slot = slot_len(g, n);
    assert!(scratch.len() >= slot, "conv_winograd: scratch too short");
    let tiles = n * g.oh.div_ceil(2) * g.ow.div_ceil(2);
    let chunks = tiles.div_ceil(chunk);
    let next_chunk = AtomicUsize::new(0);
    let y_ptr = SendPtr(y.as_mut_ptr());
    let slots = (scratch.len() / slot).min(chunks);
    scratch[..slots * slot]
        .par_chunks_mut(slot)
        .for_each(|scratch| {
            let (v, m) = scratch.split_at_mut(XI * chunk * cin);
            loop {
                let c = next_chunk.fetch_add(1, Ordering::Relaxed);
                if c >= chunks {
                    break;
                }
                let first = c * chunk;
                let count = chunk.min(tiles - first);
                // SAFETY: enabled() checked AVX2+FMA; x, u, y and the epilogue were checked against the shapes
                // above and v, m hold a chunk; chunks write disjoint tiles of y.
                unsafe {
                    input_transform(g, x, first, count, chunk, v);
                    products(g, u, v, m, count, chunk);
                    output_transform(g, m, first, count, chunk, y_ptr, epilogue);
                }
            }
        });
}

/// Floats of one worker's scratch for [`conv_winograd_weight_grad`]: its sums `dU [16 ξ, cin, cout]`, then `V`
/// and `W` of a chunk.
fn weight_grad_slot_len(g: &ConvGeom, n: usize) -> usize {
    XI * g.cin * g.cout + slot_len(g, n)
}

/// Floats of scratch [`conv_winograd_weight_grad`] needs for a batch of `n` (a slot per rayon thread).
pub fn weight_grad_scratch_len(g: &ConvGeom, n: usize) -> usize {
    rayon::current_num_threads().max(1) * weight_grad_slot_len(g, n)
}

/// Weight gradient `dw [3·3·cin, cout] = Σ x-patches ⊗ dy` (HWIO, overwritten) of the convolution
/// [`conv_winograd`] computes, by the transposed transforms: for each tile, `V = Bᵀ d B` of its input patch
/// and `W = A dy Aᵀ` of its 2×2 output gradient (`A` 4×2); `dU_ξ [cin, cout] = Σ_tiles V_ξᵀ W_ξ`; then
/// `dw = Gᵀ dU G` per channel pair. Since `y = Aᵀ (U ⊙ V) A` is linear in `U = G g Gᵀ`, this is its exact
/// gradient, with 16 instead of 36 multiply-adds per tile and channel pair.
///
/// Each worker sums a fixed set of chunks (chunk `c` goes to slot `c mod slots`) and the slots are added in
/// order, so the result is the same from run to run for a given thread count. `scratch` holds at least
/// [`weight_grad_scratch_len`] floats.
///
/// Panics unless [`handles`]`(g, n)` holds (or the shape [`fits`], for tests) and the slices fit their shapes.
pub fn conv_winograd_weight_grad(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    scratch: &mut [f32],
) {
    assert!(enabled() && fits(g), "conv_winograd: unsupported");
    let (cin, cout) = (g.cin, g.cout);
    assert!(x.len() >= n * g.h * g.w * cin, "conv_winograd: x too short");
    assert!(
        dy.len() >= n * g.oh * g.ow * cout,
        "conv_winograd: dy too short"
    );
    let dw = &mut dw[..9 * cin * cout];
    let chunk = chunk_tiles(g, n);
    let slot = weight_grad_slot_len(g, n);
    assert!(scratch.len() >= slot, "conv_winograd: scratch too short");
    let tiles = n * g.oh.div_ceil(2) * g.ow.div_ceil(2);
    let chunks = tiles.div_ceil(chunk);
    let slots = (scratch.len() / slot).min(chunks).max(1);
    let sums_len = XI * cin * cout;
    let scratch = &mut scratch[..slots * slot];
    scratch
        .par_chunks_mut(slot)
        .enumerate()
        .for_each(|(k, scratch)| {
            let (sums, rest) = scratch.split_at_mut(sums_len);
            let (v, w) = rest.split_at_mut(XI * chunk * cin);
            for (nth, c) in (k..chunks).step_by(slots).enumerate() {
                let first = c * chunk;
                let count = chunk.min(tiles - first);
                // SAFETY: enabled() checked AVX2+FMA; x and dy were checked against the shapes above; v, w and
                // sums are this worker's own.
                unsafe {
                    input_transform(g, x, first, count, chunk, v);
                    output_grad_transform(g, dy, first, count, chunk, w);
                    weight_products(g, v, w, sums, count, chunk, nth == 0);
                }
            }
        });
    // dw[tap] = Σ_ξ Gᵀ[ky][i] · Gᵀ[kx][j] · Σ_slots dU_ξ (ξ = 4i + j), slots added in order.
    const GT: [[f32; 4]; 3] = [
        [1.0, 0.5, 0.5, 0.0],
        [0.0, 0.5, -0.5, 0.0],
        [0.0, 0.5, 0.5, 1.0],
    ];
    let scratch: &[f32] = scratch;
    dw.par_chunks_mut(cin * cout)
        .enumerate()
        .for_each(|(tap, out)| {
            let (ky, kx) = (tap / 3, tap % 3);
            out.fill(0.0);
            for xi in 0..XI {
                let coef = GT[ky][xi / 4] * GT[kx][xi % 4];
                if coef == 0.0 {
                    continue;
                }
                for k in 0..slots {
                    let sums = &scratch[k * slot + xi * cin * cout..][..cin * cout];
                    for (o, s) in out.iter_mut().zip(sums) {
                        *o += coef * s;
                    }
                }
            }
        });
}

/// `w [16 ξ, chunk, cout]` rows `0..count` = `A dy Aᵀ` of tiles `first..first + count`, with
/// `A = [[1, 0], [1, 1], [1, −1], [0, −1]]` and `dy` the tile's 2×2 output gradient (zeros outside the plane).
///
/// # Safety
/// AVX2 and FMA must be available; `dy` must hold the batch's output gradient and `w` `16·chunk·cout` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_grad_transform(
    g: &ConvGeom,
    dy: &[f32],
    first: usize,
    count: usize,
    chunk: usize,
    w: &mut [f32],
) {
    use core::arch::x86_64::*;
    let cout = g.cout;
    let zeros = conv_direct::ZEROS.as_ptr();
    for i in 0..count {
        let (img, ty, tx) = tile_coords(g, first + i);
        let mut d_ptr = [zeros; 4];
        for r in 0..2 {
            for s in 0..2 {
                let (oy, ox) = (2 * ty + r, 2 * tx + s);
                if oy < g.oh && ox < g.ow {
                    d_ptr[r * 2 + s] =
                        dy[((img * g.oh + oy) * g.ow + ox) * cout..][..cout].as_ptr();
                }
            }
        }
        let out = w.as_mut_ptr().add(i * cout);
        for c in (0..cout).step_by(8) {
            let d = |k: usize| _mm256_loadu_ps(d_ptr[k].add(c));
            let (d00, d01, d10, d11) = (d(0), d(1), d(2), d(3));
            // Rows: A dy (4 × 2).
            let zero = _mm256_setzero_ps();
            let rows = [
                (d00, d01),
                (_mm256_add_ps(d00, d10), _mm256_add_ps(d01, d11)),
                (_mm256_sub_ps(d00, d10), _mm256_sub_ps(d01, d11)),
                (_mm256_sub_ps(zero, d10), _mm256_sub_ps(zero, d11)),
            ];
            // Columns: (A dy) Aᵀ.
            for (r, (a0, a1)) in rows.into_iter().enumerate() {
                let row = [
                    a0,
                    _mm256_add_ps(a0, a1),
                    _mm256_sub_ps(a0, a1),
                    _mm256_sub_ps(zero, a1),
                ];
                for (s, val) in row.into_iter().enumerate() {
                    _mm256_storeu_ps(out.add((r * 4 + s) * chunk * cout + c), val);
                }
            }
        }
    }
}

/// `sums_ξ [cin, cout] (+)= v_ξ [count, cin]ᵀ × w_ξ [count, cout]` for the 16 ξ; overwrites when `overwrite`.
///
/// # Safety
/// AVX2 and FMA must be available; `v` and `w` hold a chunk each, `sums` `16·cin·cout` floats.
unsafe fn weight_products(
    g: &ConvGeom,
    v: &[f32],
    w: &[f32],
    sums: &mut [f32],
    count: usize,
    chunk: usize,
    overwrite: bool,
) {
    let (cin, cout) = (g.cin, g.cout);
    for xi in 0..XI {
        let v_xi = v[xi * chunk * cin..][..count * cin].as_ptr();
        let w_xi = w[xi * chunk * cout..][..count * cout].as_ptr();
        let sums_xi = sums[xi * cin * cout..][..cin * cout].as_mut_ptr();
        for c0 in (0..cin).step_by(MR) {
            let m = (cin - c0).min(MR);
            let mut dst = [0usize; MR];
            for (i, d) in dst.iter_mut().enumerate().take(m) {
                *d = (c0 + i) * cout;
            }
            for panel in 0..cout / NR {
                conv_direct::cm_tile_rows_of(
                    m,
                    v_xi.add(c0),
                    cin,
                    w_xi.add(panel * NR),
                    cout,
                    count,
                    sums_xi.add(panel * NR),
                    &dst,
                    overwrite,
                );
            }
        }
    }
}

/// Image, tile row and tile column of tile `t` (tiles numbered image by image, row-major within an image).
fn tile_coords(g: &ConvGeom, t: usize) -> (usize, usize, usize) {
    let (tiles_y, tiles_x) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
    (
        t / (tiles_y * tiles_x),
        (t / tiles_x) % tiles_y,
        t % tiles_x,
    )
}

/// `v [16 ξ, chunk, cin]` rows `0..count` = `Bᵀ d B` of tiles `first..first + count`, with
/// `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`, `d` the 4×4 input patch whose
/// corner is one row and column above and left of the tile (zeros outside the image).
///
/// # Safety
/// AVX2 and FMA must be available; `x` must hold the batch and `v` `16·chunk·cin` floats; `cin` is a
/// multiple of 8 and at most `MAX_CIN`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_transform(
    g: &ConvGeom,
    x: &[f32],
    first: usize,
    count: usize,
    chunk: usize,
    v: &mut [f32],
) {
    use core::arch::x86_64::*;
    let cin = g.cin;
    let zeros = conv_direct::ZEROS.as_ptr();
    for i in 0..count {
        let (img, ty, tx) = tile_coords(g, first + i);
        let mut d_ptr = [zeros; XI];
        for r in 0..4 {
            let Some(iy) = (2 * ty + r).checked_sub(1).filter(|&iy| iy < g.h) else {
                continue;
            };
            for s in 0..4 {
                if let Some(ix) = (2 * tx + s).checked_sub(1).filter(|&ix| ix < g.w) {
                    d_ptr[r * 4 + s] = x[((img * g.h + iy) * g.w + ix) * cin..][..cin].as_ptr();
                }
            }
        }
        let out = v.as_mut_ptr().add(i * cin);
        for c in (0..cin).step_by(8) {
            let d = |k: usize| _mm256_loadu_ps(d_ptr[k].add(c));
            // Columns first: t = Bᵀ d.
            let mut t = [_mm256_setzero_ps(); XI];
            for s in 0..4 {
                let (d0, d1, d2, d3) = (d(s), d(4 + s), d(8 + s), d(12 + s));
                t[s] = _mm256_sub_ps(d0, d2);
                t[4 + s] = _mm256_add_ps(d1, d2);
                t[8 + s] = _mm256_sub_ps(d2, d1);
                t[12 + s] = _mm256_sub_ps(d1, d3);
            }
            // Then rows: t B.
            for r in 0..4 {
                let (t0, t1, t2, t3) = (t[4 * r], t[4 * r + 1], t[4 * r + 2], t[4 * r + 3]);
                let row = [
                    _mm256_sub_ps(t0, t2),
                    _mm256_add_ps(t1, t2),
                    _mm256_sub_ps(t2, t1),
                    _mm256_sub_ps(t1, t3),
                ];
                for (s, val) in row.into_iter().enumerate() {
                    _mm256_storeu_ps(out.add((r * 4 + s) * chunk * cin + c), val);
                }
            }
        }
    }
}

/// `m_ξ [count, cout] = v_ξ [count, cin] × u_ξ [cin, cout]` for the 16 ξ (`m [16 ξ, chunk, cout]`).
///
/// # Safety
/// AVX2 and FMA must be available; `u` holds [`weights_len`] floats, `v` and `m` a chunk each.
unsafe fn products(g: &ConvGeom, u: &[f32], v: &[f32], m: &mut [f32], count: usize, chunk: usize) {
    let (cin, cout) = (g.cin, g.cout);
    let register_tiles = count.div_ceil(MR);
    for xi in 0..XI {
        let v_xi = &v[xi * chunk * cin..][..count * cin];
        let m_xi = m[xi * chunk * cout..].as_mut_ptr();
        for panel in 0..cout / NR {
            let u_slice = [u[(panel * XI + xi) * cin * NR..][..cin * NR].as_ptr()];
            for tile in 0..register_tiles {
                let rows = (count - tile * MR).min(MR);
                // Rows past `count` repeat the tile's first row; they are computed and never stored.
                let mut ptrs = [v_xi[tile * MR * cin..].as_ptr(); MR];
                for (r, p) in ptrs.iter_mut().enumerate().take(rows) {
                    *p = v_xi[(tile * MR + r) * cin..][..cin].as_ptr();
                }
                conv_direct::tile_6x16(
                    &ptrs,
                    cin,
                    &u_slice,
                    NR,
                    m_xi.add(tile * MR * cout + panel * NR),
                    cout,
                    rows,
                    false,
                    None,
                );
            }
        }
    }
}

/// Stores `epilogue(Aᵀ m A)` of tiles `first..first + count` into `y`, with `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`;
/// the parts of a tile outside the plane (odd sizes) are dropped.
///
/// # Safety
/// AVX2 and FMA must be available; `m` holds a chunk, `y` the batch's output, the epilogue `cout` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_transform(
    g: &ConvGeom,
    m: &[f32],
    first: usize,
    count: usize,
    chunk: usize,
    y: SendPtr,
    epilogue: Epilogue<'_>,
) {
    use core::arch::x86_64::*;
    let cout = g.cout;
    let y = y.get();
    for i in 0..count {
        let (img, ty, tx) = tile_coords(g, first + i);
        let src = m.as_ptr().add(i * cout);
        for c in (0..cout).step_by(8) {
            let m = |k: usize| _mm256_loadu_ps(src.add(k * chunk * cout + c));
            // Rows first: a = Aᵀ m (2 × 4).
            let mut a = [_mm256_setzero_ps(); 8];
            for s in 0..4 {
                let (m0, m1, m2, m3) = (m(s), m(4 + s), m(8 + s), m(12 + s));
                a[s] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
                a[4 + s] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
            }
            for r in 0..2 {
                let oy = 2 * ty + r;
                if oy >= g.oh {
                    break;
                }
                let (a0, a1, a2, a3) = (a[4 * r], a[4 * r + 1], a[4 * r + 2], a[4 * r + 3]);
                let row = [
                    _mm256_add_ps(_mm256_add_ps(a0, a1), a2),
                    _mm256_sub_ps(_mm256_sub_ps(a1, a2), a3),
                ];
                for (s, mut val) in row.into_iter().enumerate() {
                    let ox = 2 * tx + s;
                    if ox >= g.ow {
                        break;
                    }
                    if let Some(scale) = epilogue.scale {
                        val = _mm256_mul_ps(val, _mm256_loadu_ps(scale.as_ptr().add(c)));
                    }
                    if let Some(shift) = epilogue.shift {
                        val = _mm256_add_ps(val, _mm256_loadu_ps(shift.as_ptr().add(c)));
                    }
                    if epilogue.relu {
                        val = _mm256_max_ps(val, _mm256_setzero_ps());
                    }
                    _mm256_storeu_ps(y.add(((img * g.oh + oy) * g.ow + ox) * cout + c), val);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn input_transform(_: &ConvGeom, _: &[f32], _: usize, _: usize, _: usize, _: &mut [f32]) {
    unreachable!("cpu_supported() is false off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn output_grad_transform(
    _: &ConvGeom,
    _: &[f32],
    _: usize,
    _: usize,
    _: usize,
    _: &mut [f32],
) {
    unreachable!("cpu_supported() is false off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn output_transform(
    _: &ConvGeom,
    _: &[f32],
    _: usize,
    _: usize,
    _: usize,
    _: SendPtr,
    _: Epilogue<'_>,
) {
    unreachable!("cpu_supported() is false off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: `y[img, oy, ox, co] = Σ x[img, oy + ky − 1, ox + kx − 1, ci] · w[ky, kx, ci, co]`.
    fn naive(g: &ConvGeom, n: usize, x: &[f32], w: &[f32]) -> Vec<f64> {
        let mut y = vec![0.0f64; n * g.oh * g.ow * g.cout];
        for img in 0..n {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let Some(p) = g.input_pixel(oy, ox, ky, kx) else {
                                continue;
                            };
                            for ci in 0..g.cin {
                                let xv = x[(img * g.h * g.w + p) * g.cin + ci] as f64;
                                for co in 0..g.cout {
                                    y[((img * g.oh + oy) * g.ow + ox) * g.cout + co] +=
                                        xv * w[((ky * 3 + kx) * g.cin + ci) * g.cout + co] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        y
    }

    #[test]
    fn tiles_match_the_definition_with_every_epilogue() {
        if !enabled() {
            return;
        }
        // (cin, cout, side, batch): even and odd planes (tiles half outside), several chunks, one partial
        // register tile, a plane smaller than a tile.
        for (cin, cout, side, n) in [
            (16, 16, 4, 3),
            (24, 32, 7, 5),
            (64, 48, 12, 2),
            (16, 16, 1, 7),
        ] {
            let g = ConvGeom::new(cin, cout, 3, 1, 1, side, side).unwrap();
            assert!(fits(&g));
            let x: Vec<f32> = (0..n * side * side * cin)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..9 * cin * cout)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 200.0)
                .collect();
            let scale: Vec<f32> = (0..cout).map(|c| 0.5 + c as f32 / 64.0).collect();
            let shift: Vec<f32> = (0..cout).map(|c| c as f32 / 32.0 - 0.4).collect();
            let mut u = vec![0.0; weights_len(&g)];
            transform_weights(&g, &w, &mut u);
            let mut scratch = vec![f32::NAN; scratch_len(&g, n)];
            let expected = naive(&g, n, &x, &w);
            for (with_scale, with_shift, relu) in [
                (false, false, false),
                (false, true, false),
                (true, true, true),
            ] {
                let epilogue = Epilogue {
                    scale: with_scale.then_some(&scale[..]),
                    shift: with_shift.then_some(&shift[..]),
                    relu,
                };
                let mut y = vec![f32::NAN; expected.len()];
                conv_winograd(&g, n, &x, &u, &mut y, epilogue, &mut scratch);
                for (i, (&got, &sum)) in y.iter().zip(&expected).enumerate() {
                    let co = i % cout;
                    let mut want = sum;
                    if with_scale {
                        want *= scale[co] as f64;
                    }
                    if with_shift {
                        want += shift[co] as f64;
                    }
                    if relu {
                        want = want.max(0.0);
                    }
                    assert!(
                        (got as f64 - want).abs()
                            <= 1e-5 * (1.0 + want.abs()) * (cin as f64).sqrt(),
                        "{g:?} n={n} {with_scale}/{with_shift}/{relu}: y[{i}] = {got}, want {want}"
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
        // (cin, cout, side, batch): an even and an odd plane (tiles half outside), several chunks per
        // worker, channel counts that leave a partial 6-channel block.
        for (cin, cout, side, n) in [(16, 32, 4, 9), (40, 16, 7, 5), (64, 48, 12, 3)] {
            let g = ConvGeom::new(cin, cout, 3, 1, 1, side, side).unwrap();
            let x: Vec<f32> = (0..n * side * side * cin)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let dy: Vec<f32> = (0..n * side * side * cout)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 60.0)
                .collect();
            let mut want = vec![0.0f64; 9 * cin * cout];
            for img in 0..n {
                for oy in 0..side {
                    for ox in 0..side {
                        for tap in 0..9 {
                            let Some(p) = g.input_pixel(oy, ox, tap / 3, tap % 3) else {
                                continue;
                            };
                            let d = &dy[((img * side + oy) * side + ox) * cout..][..cout];
                            for ci in 0..cin {
                                let xv = x[(img * side * side + p) * cin + ci] as f64;
                                for (co, &dv) in d.iter().enumerate() {
                                    want[(tap * cin + ci) * cout + co] += xv * dv as f64;
                                }
                            }
                        }
                    }
                }
            }
            let mut scratch = vec![f32::NAN; weight_grad_scratch_len(&g, n)];
            let mut dw = vec![f32::NAN; want.len()];
            for _ in 0..2 {
                conv_winograd_weight_grad(&g, n, &x, &dy, &mut dw, &mut scratch);
                for (i, (&got, &w)) in dw.iter().zip(&want).enumerate() {
                    assert!(
                        (got as f64 - w).abs()
                            <= 1e-5 * (1.0 + w.abs()) * ((n * side * side) as f64).sqrt(),
                        "{g:?} n={n}: dw[{i}] = {got}, want {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn used_where_it_saves_multiply_adds() {
        let plane = |side| ConvGeom::new(64, 64, 3, 1, 1, side, side).unwrap();
        // 96×96 input: stages at 24, 12, 6 (yes) and 3 (no); 28×28: 7, 4 (yes), 2 and 1 (no).
        for (side, wanted) in [
            (24, true),
            (12, true),
            (6, true),
            (3, false),
            (7, true),
            (4, true),
            (2, false),
            (1, false),
        ] {
            assert_eq!(saves_work(&plane(side)), wanted, "{side}×{side}");
        }
        assert!(!fits(&ConvGeom::new(64, 64, 3, 2, 1, 12, 12).unwrap()));
        assert!(!fits(&ConvGeom::new(64, 64, 1, 1, 0, 12, 12).unwrap()));
    }
}
