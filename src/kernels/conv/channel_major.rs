//! The weight gradient `dw [kh·kw·cin, cout] = im2col(x)ᵀ · dy` on register tiles, for x86-64 CPUs with AVX2
//! and FMA, without writing the column matrix: the plan's [`super::WeightGradAlgo::ChannelMajor`], for any 3×3,
//! 7×7 or strided layer whose output channels are a multiple of 16.
//!
//! Shapes: input `x [n, h, w, cin]`, output gradient `dy [n, oh, ow, cout]`, `dw` HWIO `[kh·kw·cin, cout]`.
//!
//! Structure: a 6×16 tile of `dw` (six patch rows, i.e. (tap, channel) pairs, × sixteen output channels) lives
//! in twelve AVX registers while it sums over the output positions. Wide planes read the patch rows from a
//! channel-major copy of each chunk of images ([`conv_weight_grad_cm`]); narrow ones (the late stages) from
//! patch rows packed tile by tile (`weight_grad_by_columns`). Rayon tasks own disjoint sets of patch rows, so
//! the sums' order does not depend on the thread count.

use super::direct::MAX_TAPS;
use super::geom::ConvGeom;
use super::tile::{cols_tile_16, cpu_supported, store_dw_tile, SendPtr, MR, NR};
use rayon::prelude::*;

/// Floats of channel-major, padded input one weight-gradient chunk holds (8 MiB, as the im2col chunks).
const DW_CHUNK_FLOATS: usize = 2 << 20;
/// Floats of `dy` one group of images holds (128 KiB): every tile of a task sweeps the group's `dy` rows,
/// all column panels in turn, while they sit in L2; a tile's 6×16 sums are read and written once per panel
/// and group (whole images, at least one).
const DW_GROUP_DY_FLOATS: usize = 32 * 1024;

/// True when [`conv_weight_grad_cm`] computes this geometry's weight gradient: output channels a multiple of
/// 16, at most [`MAX_TAPS`] live taps, on a CPU where [`cpu_supported`] holds. Any stride, plane or channel
/// count (the single-channel stem included).
pub fn weight_grad_handles(g: &ConvGeom) -> bool {
    g.cout.is_multiple_of(NR)
        && g.cout > 0
        && g.cin > 0
        && g.live_taps() <= MAX_TAPS
        && cpu_supported()
}

/// Output planes narrower than this many columns take [`weight_grad_by_columns`]: with a few positions per
/// output row, [`cm_tile`]'s per-row setup would cost as much as its multiply-adds.
const DW_COLUMNS_MAX_OW: usize = 8;

/// Whether [`conv_weight_grad_cm`] sums over the chunk's im2col matrix rather than a channel-major copy.
pub fn dw_by_columns(g: &ConvGeom) -> bool {
    g.ow < DW_COLUMNS_MAX_OW
}

/// Images per chunk of [`conv_weight_grad_cm`], and the workspace floats it needs for a batch of `n`.
pub fn weight_grad_chunk(g: &ConvGeom, n: usize) -> (usize, usize) {
    if dw_by_columns(g) {
        // Tile-packed patch rows of the chunk, then one packed run of dy.
        let per_image = g.oh * g.ow * cm_tiles(g.live_taps(), g.cin) * MR;
        let images = (DW_CHUNK_FLOATS / per_image.max(1)).clamp(1, n.max(1));
        return (images, images * per_image + dw_run(g) * g.cout);
    }
    let per_image = g.cin * (g.h + 2 * g.pad) * (g.w + 2 * g.pad);
    let images = (DW_CHUNK_FLOATS / per_image.max(1)).clamp(1, n.max(1));
    (images, images * per_image)
}

/// The patch rows `(live tap index, channel)` of weight-gradient tile `tile`, and how many there are: six
/// channels of one tap when the layer has six channels or more (tiles ordered channel block by channel
/// block, every tap of a block in turn, so the block's planes are re-read from cache), else up to six taps of
/// one channel (the single-channel stem).
fn cm_tile_rows(tile: usize, live: usize, cin: usize) -> ([(usize, usize); MR], usize) {
    let mut rows = [(0, 0); MR];
    let m = if cin >= MR {
        let (block, t) = (tile / live, tile % live);
        let m = (cin - block * MR).min(MR);
        for (i, r) in rows[..m].iter_mut().enumerate() {
            *r = (t, block * MR + i);
        }
        m
    } else {
        let per_channel = live.div_ceil(MR);
        let (c, t0) = (tile / per_channel, tile % per_channel * MR);
        let m = (live - t0).min(MR);
        for (i, r) in rows[..m].iter_mut().enumerate() {
            *r = (t0 + i, c);
        }
        m
    };
    (rows, m)
}

/// Tiles [`cm_tile_rows`] enumerates.
fn cm_tiles(live: usize, cin: usize) -> usize {
    if cin >= MR {
        cin.div_ceil(MR) * live
    } else {
        cin * live.div_ceil(MR)
    }
}

/// How both weight-gradient paths split `dw` among tiles and tasks: the live taps in visiting order, the tiles
/// of [`cm_tile_rows`], and contiguous ranges of tiles per rayon task (each task writes only its tiles' patch
/// rows, over every column panel).
struct DwTiling {
    taps: [(usize, usize); MAX_TAPS],
    live: usize,
    tiles: usize,
    block_tiles: usize,
    tile_blocks: usize,
}

impl DwTiling {
    /// The tiling of `g`; zeroes `dw [patch_len, cout]` when some taps are dead, since their rows are never
    /// visited.
    fn new(g: &ConvGeom, dw: &mut [f32]) -> Self {
        let mut taps = [(0usize, 0usize); MAX_TAPS];
        let mut live = 0;
        for (ky, kx) in g.live_taps_iter() {
            taps[live] = (ky, kx);
            live += 1;
        }
        if live < g.kh * g.kw {
            dw.fill(0.0);
        }
        let tiles = cm_tiles(live, g.cin);
        let tile_blocks = (4 * rayon::current_num_threads()).min(tiles).max(1);
        DwTiling {
            taps,
            live,
            tiles,
            block_tiles: tiles.div_ceil(tile_blocks),
            tile_blocks,
        }
    }

    /// The tiles task `block` owns.
    fn block(&self, block: usize) -> std::ops::Range<usize> {
        block * self.block_tiles..((block + 1) * self.block_tiles).min(self.tiles)
    }

    /// Tile `tile`'s patch rows `(live tap index, channel)`, how many there are, and where each row starts in
    /// `dw` (panel 0).
    fn rows(&self, g: &ConvGeom, tile: usize) -> ([(usize, usize); MR], usize, [usize; MR]) {
        let (rows, m) = cm_tile_rows(tile, self.live, g.cin);
        let mut dst = [0usize; MR];
        for (d, &(t, c)) in dst.iter_mut().zip(&rows[..m]) {
            let (ky, kx) = self.taps[t];
            *d = ((ky * g.kw + kx) * g.cin + c) * g.cout;
        }
        (rows, m, dst)
    }
}

/// Weight gradient of a convolution, `dw [kh·kw·cin, cout] = im2col(x)ᵀ · dy` (overwritten), with
/// `x [n, h, w, cin]` and `dy [n, oh, ow, cout]`. `workspace` holds `weight_grad_chunk(g, n).1` floats.
///
/// Each chunk of images is first copied channel-major with zero borders, `[cin, images, h + 2·pad,
/// w + 2·pad]`: then one patch row (tap, channel) over a run of images is one strided stream, and a 6×16
/// register tile (six patch rows × sixteen output channels) accumulates over a group of images with six
/// broadcasts and one 16-wide `dy` row per output position. Rows of dead taps (wholly in the padding) are
/// zero and skipped. Rayon tasks own disjoint ranges of patch rows of `dw`; images and positions
/// are summed in a fixed order, so the result does not depend on the thread count.
pub fn conv_weight_grad_cm(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    workspace: &mut [f32],
) {
    assert!(weight_grad_handles(g), "conv_weight_grad_cm: unsupported");
    if dw_by_columns(g) {
        return weight_grad_by_columns(g, n, x, dy, dw, workspace);
    }
    let (chunk, _) = weight_grad_chunk(g, n);
    // A 1×1 unpadded kernel reads only the pixels on the stride grid: copy just those (a quarter of the input
    // at stride 2) and sum over them with stride 1. Otherwise copy every pixel with its zero border.
    let subsample = g.kh == 1 && g.kw == 1 && g.pad == 0;
    let (hp, wp, step) = if subsample {
        (g.oh, g.ow, 1)
    } else {
        (g.h + 2 * g.pad, g.w + 2 * g.pad, g.stride)
    };
    let (copy_h, copy_w, copy_step, border) = if subsample {
        (g.oh, g.ow, g.stride, 0)
    } else {
        (g.h, g.w, 1, g.pad)
    };
    let plane = hp * wp;
    let plane_in = g.h * g.w * g.cin;
    let plane_out = g.oh * g.ow * g.cout;
    assert!(
        x.len() >= n * plane_in && dy.len() >= n * plane_out,
        "conv_weight_grad_cm: short input"
    );
    let dw = &mut dw[..g.patch_len() * g.cout];
    // Tasks own ranges of tiles (patch rows) over every column panel, so each input plane is read from memory
    // once per call and reused from L1 by the panels.
    let tiling = DwTiling::new(g, dw);
    let panels = g.cout / NR;
    let group_rows = (DW_GROUP_DY_FLOATS / (g.ow * g.cout).max(1)).max(1);
    let mut first = 0;
    while first < n {
        let images = chunk.min(n - first);
        let xp = &mut workspace[..g.cin * images * plane];
        // Channel-major copy with zero borders: channel c of image i at (c·images + i)·plane. One task per 16
        // channels, so each input pixel's cache line is read once.
        xp.par_chunks_mut(NR * images * plane)
            .enumerate()
            .for_each(|(block, planes)| {
                planes.fill(0.0);
                let c0 = block * NR;
                let channels = planes.len() / (images * plane);
                for i in 0..images {
                    let image = &x[(first + i) * plane_in..][..plane_in];
                    for y in 0..copy_h {
                        // One input row's 16-channel strip (in L1 after the first channel) to 16 plane rows.
                        let src = &image[y * copy_step * g.w * g.cin + c0..];
                        let at = i * plane + (y + border) * wp + border;
                        for j in 0..channels {
                            let row = &mut planes[j * images * plane + at..][..copy_w];
                            for (xx, v) in row.iter_mut().enumerate() {
                                *v = src[xx * copy_step * g.cin + j];
                            }
                        }
                    }
                }
            });
        let xp: &[f32] = xp;
        let dy_chunk = &dy[first * plane_out..][..images * plane_out];
        let dw_ptr = SendPtr(dw.as_mut_ptr());
        (0..tiling.tile_blocks).into_par_iter().for_each(|block| {
            let out_rows = images * g.oh;
            let mut row0 = 0;
            while row0 < out_rows {
                let args = CmArgs {
                    g,
                    wp,
                    step,
                    plane,
                    row0,
                    rows: group_rows.min(out_rows - row0),
                    overwrite: first == 0 && row0 == 0,
                };
                let x_chunk = xp.as_ptr();
                for tile in tiling.block(block) {
                    let (rows, m, dst) = tiling.rows(g, tile);
                    // Where each of the tile's patch rows reads, relative to the chunk's first plane.
                    let mut src = [0usize; MR];
                    for (s, &(t, c)) in src.iter_mut().zip(&rows[..m]) {
                        let (ky, kx) = tiling.taps[t];
                        *s = c * images * plane + ky * wp + kx;
                    }
                    for panel in 0..panels {
                        let dy_panel = dy_chunk[panel * NR..].as_ptr();
                        // SAFETY: AVX2+FMA checked; for every output row of the group and every position the
                        // reads stay inside its image's copied channel plane (row oy·step + ky ≤ hp − 1,
                        // column ox·step + kx ≤ wp − 1) and its dy row; this task alone writes the tile's
                        // patch rows of dw (tiles are disjoint sets of rows).
                        unsafe {
                            let dw = dw_ptr.get().add(panel * NR);
                            match m {
                                6 => cm_tile::<6>(&args, x_chunk, &src, dy_panel, dw, &dst),
                                5 => cm_tile::<5>(&args, x_chunk, &src, dy_panel, dw, &dst),
                                4 => cm_tile::<4>(&args, x_chunk, &src, dy_panel, dw, &dst),
                                3 => cm_tile::<3>(&args, x_chunk, &src, dy_panel, dw, &dst),
                                2 => cm_tile::<2>(&args, x_chunk, &src, dy_panel, dw, &dst),
                                _ => cm_tile::<1>(&args, x_chunk, &src, dy_panel, dw, &dst),
                            }
                        }
                    }
                }
                row0 += args.rows;
            }
        });
        first += images;
    }
}

/// Positions per run of [`weight_grad_by_columns`]: its packed `dy` (128 KiB) stays in L2 while every tile of a
/// task sweeps it.
fn dw_run(g: &ConvGeom) -> usize {
    (2 * DW_GROUP_DY_FLOATS / g.cout).max(1)
}

/// [`conv_weight_grad_cm`] for narrow output planes (the late stages: 6×6 and 3×3 at 96×96), where an output row
/// has too few positions to amortize [`cm_tile`]'s setup. Both operands are packed into the order the 6×16 tile
/// reads them, so its inner loop runs over a long run of positions (across rows and images) on two
/// sequential streams: each chunk's patch rows tile by tile, `xp [tile, position, 6]`, and each run of `dy`
/// panel by panel, `dyp [panel, position, 16]`.
fn weight_grad_by_columns(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    workspace: &mut [f32],
) {
    let (chunk, _) = weight_grad_chunk(g, n);
    let plane = g.oh * g.ow;
    let plane_in = g.h * g.w * g.cin;
    assert!(
        x.len() >= n * plane_in && dy.len() >= n * plane * g.cout,
        "conv_weight_grad_cm: short input"
    );
    let dw = &mut dw[..g.patch_len() * g.cout];
    let tiling = DwTiling::new(g, dw);
    let (tiles, panels) = (tiling.tiles, g.cout / NR);
    let run = dw_run(g);
    let mut first = 0;
    while first < n {
        let images = chunk.min(n - first);
        let positions = images * plane;
        let (xp, rest) = workspace.split_at_mut(tiles * positions * MR);
        let dyp = &mut rest[..run * g.cout];
        let x_chunk = &x[first * plane_in..][..images * plane_in];
        xp.par_chunks_mut(positions * MR)
            .enumerate()
            .for_each(|(tile, stream)| pack_tile_rows(g, &tiling, tile, x_chunk, stream));
        let xp: &[f32] = xp;
        let dy_chunk = &dy[first * plane * g.cout..][..positions * g.cout];
        let mut p0 = 0;
        while p0 < positions {
            let len = run.min(positions - p0);
            dyp[..len * g.cout]
                .par_chunks_mut(len * NR)
                .enumerate()
                .for_each(|(panel, out)| {
                    for (q, o) in out.chunks_exact_mut(NR).enumerate() {
                        o.copy_from_slice(&dy_chunk[(p0 + q) * g.cout + panel * NR..][..NR]);
                    }
                });
            let dyp: &[f32] = dyp;
            let overwrite = first == 0 && p0 == 0;
            let dw_ptr = SendPtr(dw.as_mut_ptr());
            (0..tiling.tile_blocks).into_par_iter().for_each(|block| {
                for tile in tiling.block(block) {
                    let (_, m, dst) = tiling.rows(g, tile);
                    let a = xp[(tile * positions + p0) * MR..][..len * MR].as_ptr();
                    for panel in 0..panels {
                        let b = dyp[panel * len * NR..][..len * NR].as_ptr();
                        // SAFETY: AVX2+FMA checked; `a` and `b` hold `len` packed positions (6 and 16 floats
                        // each); this task alone writes the tile's patch rows of dw (tiles are disjoint).
                        unsafe {
                            let dw = dw_ptr.get().add(panel * NR);
                            let d = core::array::from_fn(|i| dw.add(dst[i.min(m - 1)]));
                            let runs = [(0, 0, len)];
                            cols_tile_16(a, MR, b, NR, &runs, m, &d, !overwrite, m);
                        }
                    }
                }
            });
            p0 += len;
        }
        first += images;
    }
}

/// Writes tile `tile`'s patch rows ([`cm_tile_rows`]) for every position of the chunk `x [images, h, w, cin]`:
/// `stream [position, 6]`, zero where a tap falls in the padding and in the rows past the tile's own.
fn pack_tile_rows(g: &ConvGeom, tiling: &DwTiling, tile: usize, x: &[f32], stream: &mut [f32]) {
    let (rows, m, _) = tiling.rows(g, tile);
    let taps = &tiling.taps;
    let plane_in = g.h * g.w * g.cin;
    let mut p = 0;
    for image in x.chunks_exact(plane_in) {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let out = &mut stream[p * MR..][..MR];
                out.fill(0.0);
                if g.cin >= MR {
                    // Six channels of one tap: one pixel, one contiguous read.
                    let (t, c0) = rows[0];
                    let (ky, kx) = taps[t];
                    if let Some(pixel) = g.input_pixel(oy, ox, ky, kx) {
                        out[..m].copy_from_slice(&image[pixel * g.cin + c0..][..m]);
                    }
                } else {
                    for (o, &(t, c)) in out.iter_mut().zip(&rows[..m]) {
                        let (ky, kx) = taps[t];
                        if let Some(pixel) = g.input_pixel(oy, ox, ky, kx) {
                            *o = image[pixel * g.cin + c];
                        }
                    }
                }
                p += 1;
            }
        }
    }
}

/// Shape arguments shared by the [`cm_tile`] calls of one group of output rows.
struct CmArgs<'a> {
    g: &'a ConvGeom,
    /// Width of the copied channel planes.
    wp: usize,
    /// Distance between the pixels two neighbouring output positions read, in the copied plane.
    step: usize,
    /// Floats of one copied channel plane, `hp·wp` (the distance between an image's plane and the next's).
    plane: usize,
    /// First output row `image·oh + oy` of the group, counted from the chunk's first image.
    row0: usize,
    /// Output rows in the group.
    rows: usize,
    /// Store the sums instead of adding them to `dw`.
    overwrite: bool,
}

/// One `M × 16` tile of the weight gradient over a group of output rows `r = image·oh + oy`:
/// `dw[dst[i] + 0..16] (+)= Σ_r Σ_ox x[image·plane + src[i] + oy·step·wp + ox·step] ·
/// dy[(r·ow + ox)·cout + 0..16]`; overwrites when `args.overwrite`.
///
/// # Safety
/// AVX2 and FMA must be available; `x` must point at the chunk's first plane in the channel-major copy and
/// `dy` at the panel's first column of the chunk's `dy`, both valid for the group's rows, with every `src[i]`
/// a channel plane plus a tap offset (see [`conv_weight_grad_cm`]); `dw` writable at `dst[i] + 0..16` for
/// `i < M`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn cm_tile<const M: usize>(
    args: &CmArgs<'_>,
    x: *const f32,
    src: &[usize; MR],
    dy: *const f32,
    dw: *mut f32,
    dst: &[usize; MR],
) {
    use core::arch::x86_64::*;
    let g = args.g;
    let (row_step, col_step) = (args.step * args.wp, args.step);
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    let (mut img, mut oy) = (args.row0 / g.oh, args.row0 % g.oh);
    for r in args.row0..args.row0 + args.rows {
        let x_row = x.add(img * args.plane + oy * row_step);
        let ptrs: [*const f32; M] = core::array::from_fn(|i| x_row.add(src[i]));
        let dy_row = dy.add(r * g.ow * g.cout);
        for ox in 0..g.ow {
            let d = dy_row.add(ox * g.cout);
            let b0 = _mm256_loadu_ps(d);
            let b1 = _mm256_loadu_ps(d.add(8));
            let at = ox * col_step;
            for (p, acc_row) in ptrs.iter().zip(acc.iter_mut()) {
                let v = _mm256_broadcast_ss(&*p.add(at));
                acc_row[0] = _mm256_fmadd_ps(v, b0, acc_row[0]);
                acc_row[1] = _mm256_fmadd_ps(v, b1, acc_row[1]);
            }
        }
        oy += 1;
        if oy == g.oh {
            oy = 0;
            img += 1;
        }
    }
    store_dw_tile(&acc, dw, dst, args.overwrite);
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn cm_tile<const M: usize>(
    _args: &CmArgs<'_>,
    _x: *const f32,
    _src: &[usize; MR],
    _dy: *const f32,
    _dw: *mut f32,
    _dst: &[usize; MR],
) {
    unreachable!("cpu_supported() is false off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::{im2col::im2col, reference};
    use crate::kernels::gemm::{matmul, MatRef};

    #[test]
    fn narrow_plane_weight_gradient_matches_the_definition() {
        // (cin, cout, k, stride, pad, side, n): several chunks and position runs at 3×3; stride 2 into 3×3; a
        // 1×1 shortcut; a 1×1 plane where 8 of 9 taps are dead; the single-channel stem's tile shape.
        for (cin, cout, k, stride, pad, side, n) in [
            (256, 256, 3, 1, 1, 3, 110),
            (64, 128, 3, 2, 1, 6, 21),
            (64, 128, 1, 2, 0, 6, 13),
            (32, 64, 3, 1, 1, 1, 17),
            (1, 32, 7, 2, 3, 8, 11),
        ] {
            let g = ConvGeom::new(cin, cout, k, stride, pad, side, side).unwrap();
            if !weight_grad_handles(&g) {
                return;
            }
            assert!(g.ow < 8, "the narrow-plane path");
            let x: Vec<f32> = (0..n * side * side * cin)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 97.0)
                .collect();
            let dy: Vec<f32> = (0..n * g.oh * g.ow * cout)
                .map(|i| ((i * 104729 % 197) as f32 - 98.0) / 491.0)
                .collect();
            let want = reference::weight_grad(&g, n, &x, &dy);
            let mut ws = vec![0.0f32; weight_grad_chunk(&g, n).1];
            let mut dw = vec![f32::NAN; want.len()];
            conv_weight_grad_cm(&g, n, &x, &dy, &mut dw, &mut ws);
            for (i, (a, b)) in dw.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                    "{cin}→{cout} {k}×{k}/{stride} on {side}×{side}: dw[{i}] = {a}, want {b}"
                );
            }
        }
    }

    #[test]
    fn channel_major_weight_gradient_matches_im2col_over_several_chunks() {
        // 64 channels on a 64×64 plane: 7 images per chunk, so 9 images take two chunks.
        let (n, cin, cout, side) = (9, 64, 16, 64);
        let g = ConvGeom::new(cin, cout, 3, 1, 1, side, side).unwrap();
        if !weight_grad_handles(&g) {
            return;
        }
        assert!(weight_grad_chunk(&g, n).0 < n);
        let x: Vec<f32> = (0..n * side * side * cin)
            .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 97.0)
            .collect();
        let dy: Vec<f32> = (0..n * side * side * cout)
            .map(|i| ((i * 104729 % 197) as f32 - 98.0) / 491.0)
            .collect();
        let k = g.patch_len();
        let mut want = vec![0.0f32; k * cout];
        let mut cols = vec![0.0f32; side * side * k];
        for img in 0..n {
            im2col(&g, 1, &x[img * side * side * cin..], &mut cols);
            matmul(
                k,
                cout,
                side * side,
                &mut want,
                img > 0,
                MatRef::transposed(&cols, k),
                MatRef::row_major(&dy[img * side * side * cout..][..side * side * cout], cout),
            );
        }
        let mut ws = vec![0.0f32; weight_grad_chunk(&g, n).1];
        let mut dw = vec![f32::NAN; k * cout];
        conv_weight_grad_cm(&g, n, &x, &dy, &mut dw, &mut ws);
        for (i, (a, b)) in dw.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                "dw[{i}] = {a}, want {b}"
            );
        }
    }
}
