//! Direct ("implicit GEMM") convolution for x86-64 CPUs with AVX2 and FMA: the same product as
//! `im2col(x) × w`, but the micro-kernel reads each output row's patch straight from the NHWC input, so the
//! nine-times-larger column matrix is never written, and nothing is packed or allocated per call.
//!
//! Shapes: input `x [n, h, w, cin]`, output `y [n, oh, ow, cout]` seen as `[rows = n·oh·ow, cout]`, weights
//! HWIO `[kh·kw·cin, cout]`, read in place 16 columns at a time, or packed into column panels
//! `[cout / 16, live_taps·cin, 16]` for wide layers.
//!
//! Structure: a 6-row × 16-column tile of `y` lives in twelve AVX registers for the whole reduction over the
//! live taps and input channels; for each tap, each of the six rows points either into the input image or at a
//! block of zeros (the padding), so a channel step is six broadcasts, two loads of the weight panel and twelve
//! FMAs. Rayon tasks own groups of tiles; within a group one 16-column weight panel is reused by every tile
//! while it sits in L2.

use super::geom::ConvGeom;
use super::tile::{
    cols_tile_16, cpu_supported, rows_tile_64, store_dw_tile, tile_6x16, wide, Columns, Epilogue,
    SendPtr, MAX_CIN, MIN_CIN, MR, NR, ZEROS,
};
use rayon::prelude::*;

/// Most register tiles per rayon task (96 output rows): a pass's weights are reused by every tile of the task.
const TILES_PER_TASK: usize = 16;
/// Weight floats per pass over a task's tiles (64 KiB, measured best of 16–64 KiB with 8–32 tiles per task).
const TAP_PASS_FLOATS: usize = 16 * 1024;
/// Most live taps the direct path handles (a 7×7 kernel); beyond it the im2col path runs.
pub const MAX_TAPS: usize = 49;

/// True when [`conv_direct`] can compute this geometry (on a CPU where [`cpu_supported`] holds).
///
/// Narrow inputs (the stem's single channel) stay on im2col + GEMM: with a handful of channels per tap, setting up
/// the row pointers costs as much as the multiply-adds (measured: the stem's forward took twice as long).
pub fn handles(g: &ConvGeom) -> bool {
    g.cout.is_multiple_of(NR)
        && g.cout > 0
        && (MIN_CIN..=MAX_CIN).contains(&g.cin)
        && g.live_taps() <= MAX_TAPS
}

/// Output channels from which [`conv_direct`]'s callers pack the weights first ([`pack_weights`]): with 16 of
/// `cout` columns read per weight row, rows 1 KiB or more apart spread a pass over too many pages (measured at
/// 96×96: the 512-channel stage ran at 62–72 GFLOP/s in place, 118–141 packed; the 64–128-channel stages at
/// the same speed either way, and packing all layers cost a copy of every weight per call: a fifth of the
/// batch-1 latency at 224×224).
const PACK_MIN_COUT: usize = 256;

/// True when the direct kernels should read this geometry's weights packed ([`pack_weights`]), not in place
/// (from 256 output channels, see `PACK_MIN_COUT`).
pub fn packs_weights(g: &ConvGeom) -> bool {
    g.cout >= PACK_MIN_COUT
}

/// Floats [`pack_weights`] writes: `live_taps·cin·cout`.
pub fn packed_len(g: &ConvGeom) -> usize {
    g.live_patch_len() * g.cout
}

/// Packs the live-tap rows of `w [kh·kw·cin, cout]` (HWIO) into `packed [cout / 16, live_taps·cin, 16]`.
pub fn pack_weights(g: &ConvGeom, w: &[f32], packed: &mut [f32]) {
    let k = g.live_patch_len();
    let packed = &mut packed[..k * g.cout];
    packed
        .par_chunks_mut(k * NR)
        .enumerate()
        .for_each(|(panel, out)| {
            let mut row = 0;
            for (ky, kx) in g.live_taps_iter() {
                for ci in 0..g.cin {
                    let src = &w[((ky * g.kw + kx) * g.cin + ci) * g.cout + panel * NR..][..NR];
                    out[row * NR..][..NR].copy_from_slice(src);
                    row += 1;
                }
            }
        });
}

/// The weights [`conv_direct`] reads.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    /// HWIO `[kh·kw·cin, cout]`, read in place.
    Hwio(&'a [f32]),
    /// As written by [`pack_weights`].
    Packed(&'a [f32]),
}

/// `y [n·oh·ow, cout] (+)= conv(x [n, h, w, cin], w)`: adds onto `y` when `accumulate`, else overwrites;
/// the epilogue is applied to the (accumulated) sum before it is stored.
///
/// `by_position`: position-major tiles ([`by_position`] says when they pay).
///
/// Panics unless [`cpu_supported`] and [`handles`]`(g)` hold and the slices fit their shapes.
#[allow(clippy::too_many_arguments)]
pub fn conv_direct(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: Weights<'_>,
    y: &mut [f32],
    accumulate: bool,
    epilogue: Epilogue<'_>,
    by_position: bool,
) {
    assert!(cpu_supported() && handles(g), "conv_direct: unsupported");
    let rows = n * g.oh * g.ow;
    assert!(x.len() >= n * g.h * g.w * g.cin, "conv_direct: x too short");
    // Where each live tap's weight rows start (the panel's offset added later), and their distance.
    let k = g.live_patch_len();
    let mut tap_offsets = [0usize; MAX_TAPS];
    let (w, w_stride, panel_stride) = match w {
        Weights::Hwio(w) => {
            assert!(
                w.len() >= g.patch_len() * g.cout,
                "conv_direct: w too short"
            );
            for (t, (ky, kx)) in g.live_taps_iter().enumerate() {
                tap_offsets[t] = (ky * g.kw + kx) * g.cin * g.cout;
            }
            (w, g.cout, NR)
        }
        Weights::Packed(w) => {
            assert!(
                w.len() >= k * g.cout,
                "conv_direct: packed weights too short"
            );
            for (t, off) in tap_offsets[..g.live_taps()].iter_mut().enumerate() {
                *off = t * g.cin * NR;
            }
            (w, NR, k * NR)
        }
    };
    let y = &mut y[..rows * g.cout];
    epilogue.check(g.cout);
    if by_position {
        let weights = WeightView {
            w,
            w_stride,
            panel_stride,
            tap_offsets,
        };
        conv_by_position(g, n, x, &weights, y, accumulate, epilogue);
        return;
    }
    // Enough tasks to balance the threads (at 28×28 the last stage has only 256 output rows).
    let threads = rayon::current_num_threads().max(1);
    let tiles_total = rows.div_ceil(MR);
    let tiles_per_task = tiles_total.div_ceil(4 * threads).clamp(1, TILES_PER_TASK);
    let rows_per_task = MR * tiles_per_task;
    let row_tasks = rows.div_ceil(rows_per_task);
    // Few rows (batch 1, or the last stages): the column panels are split among tasks as well, so that each
    // task reads its share of the weights once instead of every task reading all of them.
    // Panels are walked in groups: four 16-column panels per AVX-512 tile, one per AVX2 tile.
    let group = panel_group(g);
    let groups = g.cout / (NR * group);
    let groups_per_task = groups.div_ceil((4 * threads).div_ceil(row_tasks).clamp(1, groups));
    let panels_per_task = groups_per_task * group;
    let panels = g.cout / NR;
    let panel_tasks = groups.div_ceil(groups_per_task);
    let y_ptr = SendPtr(y.as_mut_ptr());
    (0..row_tasks * panel_tasks)
        .into_par_iter()
        .for_each(|task| {
            let first_row = (task / panel_tasks) * rows_per_task;
            let task_rows = rows_per_task.min(rows - first_row);
            let first_panel = (task % panel_tasks) * panels_per_task;
            let task_panels = first_panel..(first_panel + panels_per_task).min(panels);
            // Row pointers of every tile in the task: [tile][tap][row].
            let mut ptrs = [core::ptr::null::<f32>(); TILES_PER_TASK * MAX_TAPS * MR];
            let tiles = task_rows.div_ceil(MR);
            let taps = g.live_taps();
            for tile in 0..tiles {
                for r in 0..MR {
                    // Rows past the end repeat the tile's first row; they are computed and never stored.
                    let row = if tile * MR + r < task_rows {
                        first_row + tile * MR + r
                    } else {
                        first_row + tile * MR
                    };
                    let img = row / (g.oh * g.ow);
                    let oy = (row / g.ow) % g.oh;
                    let ox = row % g.ow;
                    for (t, (ky, kx)) in g.live_taps_iter().enumerate() {
                        let p = match g.input_pixel(oy, ox, ky, kx) {
                            Some(pixel) => x[(img * g.h * g.w + pixel) * g.cin..][..g.cin].as_ptr(),
                            None => ZEROS.as_ptr(),
                        };
                        ptrs[(tile * MAX_TAPS + t) * MR + r] = p;
                    }
                }
            }
            // Taps per pass: a pass's slice of the weight panel (taps·cin·16 floats) stays within 64 KiB so
            // that it is reused from near caches by all the task's tiles; the tiles accumulate across passes.
            let taps_per_pass = (TAP_PASS_FLOATS / (g.cin * NR * group)).clamp(1, taps);
            for panel in task_panels.step_by(group) {
                let mut first_tap = 0;
                while first_tap < taps {
                    let pass_taps = taps_per_pass.min(taps - first_tap);
                    // The pass's weight rows, per tap: cin rows of 16 floats, w_stride apart.
                    let mut wtaps = [core::ptr::null::<f32>(); MAX_TAPS];
                    for (t, wt) in wtaps[..pass_taps].iter_mut().enumerate() {
                        *wt = w[tap_offsets[first_tap + t] + panel * panel_stride..].as_ptr();
                    }
                    // The epilogue goes with the last pass, once the sum is complete.
                    let store = epilogue
                        .columns(panel * NR)
                        .filter(|_| first_tap + pass_taps == taps);
                    for tile in 0..tiles {
                        let tile_rows = (task_rows - tile * MR).min(MR);
                        let tile_ptrs =
                            &ptrs[(tile * MAX_TAPS + first_tap) * MR..][..pass_taps * MR];
                        let dst = (first_row + tile * MR) * g.cout + panel * NR;
                        // SAFETY: cpu_supported() checked AVX2+FMA. Every row pointer points at `cin` readable
                        // floats (a slice of x bounds-checked above, or ZEROS with cin ≤ MAX_CIN); each tap's
                        // weight pointer reaches (cin − 1)·w_stride + 16 floats inside w (its tap block, panel
                        // columns; lengths asserted above); y holds rows·cout floats, so the tile's rows
                        // (< rows) have 16 columns from the panel on; tasks write disjoint blocks (their rows ×
                        // their panels).
                        unsafe {
                            pass_tile(
                                group,
                                tile_ptrs,
                                g.cin,
                                &wtaps[..pass_taps],
                                (w_stride, panel_stride),
                                y_ptr.get().add(dst),
                                g.cout,
                                tile_rows,
                                accumulate || first_tap > 0,
                                store,
                            );
                        }
                    }
                    first_tap += pass_taps;
                }
            }
        });
}

/// Share of (output position, live tap) pairs in the padding from which tiles are position-major (measured at
/// 96×96: the 12×12 stage, 11 %, forward 84–87 vs 92–102 ms; the 24×24 stage, 6 %, no gain; the stride-2 convs
/// into 12×12, under 6 %, slower).
const POSITION_MAJOR_MIN_PADDING: f64 = 0.10;
/// The share of (output position, live tap) pairs whose tap reads the padding.
fn padding_tap_share(g: &ConvGeom) -> f64 {
    let mut in_padding = 0usize;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            in_padding += g
                .live_taps_iter()
                .filter(|&(ky, kx)| g.input_pixel(oy, ox, ky, kx).is_none())
                .count();
        }
    }
    in_padding as f64 / (g.oh * g.ow * g.live_taps()).max(1) as f64
}

/// Smallest batch for position-major tiles (a tile holds six images at one position).
const POSITION_MAJOR_MIN_BATCH: usize = 24;

/// True when [`conv_direct`] should run position-major tiles for this geometry and batch: small planes with
/// many taps in the padding, and batches of at least 24.
pub fn by_position(g: &ConvGeom, n: usize) -> bool {
    n >= POSITION_MAJOR_MIN_BATCH && padding_tap_share(g) >= POSITION_MAJOR_MIN_PADDING
}

/// 16-column panels per register tile: four (one AVX-512 6 × 64 tile) where the CPU has AVX-512 and the output
/// channels are a multiple of 64, else one (the AVX2 6 × 16 tile).
fn panel_group(g: &ConvGeom) -> usize {
    if wide(g.cout) {
        4
    } else {
        1
    }
}

/// One register tile over a pass of taps: [`tile_6x16`] on `group = 1` panel, or, for `group = 4`, the AVX-512
/// `rows_tile_64` once per tap (the sums stay in `dst` between taps; the epilogue goes with the last tap).
/// `strides = (w_stride, panel_stride)`: the distance between a tap's weight rows and between its panels.
///
/// # Safety
/// As for [`tile_6x16`], with `group·16` columns of `dst` and of each weight row; AVX-512 for `group = 4`.
#[allow(clippy::too_many_arguments)]
unsafe fn pass_tile(
    group: usize,
    ptrs: &[*const f32],
    cin: usize,
    wtaps: &[*const f32],
    strides: (usize, usize),
    dst: *mut f32,
    dst_stride: usize,
    rows: usize,
    accumulate: bool,
    store: Option<Columns>,
) {
    let (w_stride, panel_stride) = strides;
    if group == 1 {
        return tile_6x16(
            ptrs, cin, wtaps, w_stride, dst, dst_stride, rows, accumulate, store,
        );
    }
    let c: [*mut f32; MR] = core::array::from_fn(|i| dst.add(i.min(rows - 1) * dst_stride));
    if wtaps.is_empty() {
        // No tap reads the input here: store zeros (and the epilogue).
        let a = [ZEROS.as_ptr(); MR];
        let b = [ZEROS.as_ptr(); 4];
        return rows_tile_64(&a, 0, &b, 0, &c, rows, accumulate, store);
    }
    let last = wtaps.len() - 1;
    for (t, &w) in wtaps.iter().enumerate() {
        let a: [*const f32; MR] = ptrs[t * MR..][..MR].try_into().expect("six rows");
        let b = [0, 1, 2, 3].map(|j| w.add(j * panel_stride));
        let store = store.filter(|_| t == last);
        rows_tile_64(&a, cin, &b, w_stride, &c, rows, accumulate || t > 0, store);
    }
}

/// Where [`conv_direct`]'s weights are: live tap `t`, panel `p`, channel `c` starts at
/// `w[tap_offsets[t] + p·panel_stride + c·w_stride]`.
struct WeightView<'a> {
    w: &'a [f32],
    w_stride: usize,
    panel_stride: usize,
    tap_offsets: [usize; MAX_TAPS],
}

/// [`conv_direct`] for planes with many padding taps: a tile is six *images* at one output position, so every row of it
/// sees the same taps in the padding, and those taps are skipped instead of multiplied by zeros (at 96×96 the
/// 3×3 plane of the last stage has 40 % of its taps in the padding, the 6×6 plane 21 %).
fn conv_by_position(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    wv: &WeightView<'_>,
    y: &mut [f32],
    accumulate: bool,
    epilogue: Epilogue<'_>,
) {
    let plane = g.oh * g.ow;
    let plane_in = g.h * g.w * g.cin;
    let panels = g.cout / NR;
    let image_tiles = n.div_ceil(MR);
    let tiles_per_task = TILES_PER_TASK.min(image_tiles);
    let tile_tasks = image_tiles.div_ceil(tiles_per_task);
    let group = panel_group(g);
    let taps_per_pass = (TAP_PASS_FLOATS / (g.cin * NR * group)).clamp(1, MAX_TAPS);
    let y_ptr = SendPtr(y.as_mut_ptr());
    (0..plane * tile_tasks).into_par_iter().for_each(|task| {
        let pos = task / tile_tasks;
        let (oy, ox) = (pos / g.ow, pos % g.ow);
        // The live taps that read the input at this position, and where (pixel offset in an image).
        let mut taps = [0usize; MAX_TAPS];
        let mut offsets = [0usize; MAX_TAPS];
        let mut valid = 0;
        for (t, (ky, kx)) in g.live_taps_iter().enumerate() {
            if let Some(pixel) = g.input_pixel(oy, ox, ky, kx) {
                taps[valid] = t;
                offsets[valid] = pixel * g.cin;
                valid += 1;
            }
        }
        let first_img = (task % tile_tasks) * tiles_per_task * MR;
        let task_imgs = (tiles_per_task * MR).min(n - first_img);
        let tiles = task_imgs.div_ceil(MR);
        // Row pointers [tile][valid tap][row]; rows past the batch repeat the tile's first image (not stored).
        let mut ptrs = [core::ptr::null::<f32>(); TILES_PER_TASK * MAX_TAPS * MR];
        for tile in 0..tiles {
            for r in 0..MR {
                let i = if tile * MR + r < task_imgs {
                    tile * MR + r
                } else {
                    tile * MR
                };
                let image = &x[(first_img + i) * plane_in..][..plane_in];
                for j in 0..valid {
                    ptrs[(tile * MAX_TAPS + j) * MR + r] = image[offsets[j]..][..g.cin].as_ptr();
                }
            }
        }
        for panel in (0..panels).step_by(group) {
            let mut first_tap = 0;
            // At least one pass, so that a position with no tap in the input still stores its zeros / epilogue.
            loop {
                let pass_taps = taps_per_pass.min(valid - first_tap);
                let mut wtaps = [core::ptr::null::<f32>(); MAX_TAPS];
                for (j, wt) in wtaps[..pass_taps].iter_mut().enumerate() {
                    *wt = wv.w[wv.tap_offsets[taps[first_tap + j]] + panel * wv.panel_stride..]
                        .as_ptr();
                }
                let last = first_tap + pass_taps == valid;
                let store = epilogue.columns(panel * NR).filter(|_| last);
                for tile in 0..tiles {
                    let tile_rows = (task_imgs - tile * MR).min(MR);
                    let tile_ptrs = &ptrs[(tile * MAX_TAPS + first_tap) * MR..][..pass_taps * MR];
                    let dst = ((first_img + tile * MR) * plane + pos) * g.cout + panel * NR;
                    // SAFETY: AVX2+FMA checked by conv_direct. Row pointers are slices of x of cin floats;
                    // weight pointers reach (cin − 1)·w_stride + 16 floats inside w (lengths asserted by
                    // conv_direct); the tile's rows are images < n at position `pos`, plane·cout apart, each
                    // with 16 columns from the panel inside y; tasks write disjoint (position, images) rows.
                    unsafe {
                        pass_tile(
                            group,
                            tile_ptrs,
                            g.cin,
                            &wtaps[..pass_taps],
                            (wv.w_stride, wv.panel_stride),
                            y_ptr.get().add(dst),
                            plane * g.cout,
                            tile_rows,
                            accumulate || first_tap > 0,
                            store,
                        );
                    }
                }
                first_tap += pass_taps;
                if last {
                    break;
                }
            }
        }
    });
}

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
