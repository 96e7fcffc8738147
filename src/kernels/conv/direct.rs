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
//!
//! The weight gradient without a column matrix is [`super::channel_major`]'s.

use super::geom::ConvGeom;
use super::tile::{
    cpu_supported, rows_tile_64, tile_6x16, wide, Columns, Epilogue, SendPtr, MAX_CIN, MIN_CIN, MR,
    NR, ZEROS,
};
use crate::kernels::TaskGrid;
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
/// `cout` columns read per weight row, rows 512 bytes or more apart spread a pass over too many pages
/// (measured at 96×96: the 512-channel stage ran at 62–72 GFLOP/s in place, 118–141 packed; on a Zen 3 in
/// training, the 128-channel strided convolutions' forward went 50–80 → 34–39 ms (the chapter's, batch 256)
/// and 71–117 → 46–84 ms (resnet50's `layer2.0.conv2`, batch 32) once packed. Packing every layer once cost a
/// copy of every weight per call, a fifth of the batch-1 latency at 224×224; an inference network now packs
/// once, when compiled).
const PACK_MIN_COUT: usize = 128;

/// True when the direct kernels should read this geometry's weights packed ([`pack_weights`]), not in place
/// (from 128 output channels, see `PACK_MIN_COUT`).
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
    epilogue.check_residual(y.len());
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
    // Enough tasks to balance the threads; with few rows (batch 1, or the last stages) the column panels are
    // shared among tasks as well, so that the weights are read about once in all (see `TaskGrid`). Panels
    // are walked in groups: four 16-column panels per AVX-512 tile, one per AVX2 tile.
    let group = panel_group(g);
    let grid = TaskGrid::new(
        rows.div_ceil(MR),
        TILES_PER_TASK,
        g.cout / (NR * group),
        rayon::current_num_threads(),
    );
    let panels = g.cout / NR;
    let y_ptr = SendPtr(y.as_mut_ptr());
    (0..grid.tasks()).into_par_iter().for_each(|task| {
        let task_rows = grid.rows(task, rows, MR);
        let (first_row, task_rows) = (task_rows.start, task_rows.len());
        let task_panels = grid.panels(task, panels, group);
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
                    .columns(panel * NR, y_ptr.get())
                    .filter(|_| first_tap + pass_taps == taps);
                for tile in 0..tiles {
                    let tile_rows = (task_rows - tile * MR).min(MR);
                    let tile_ptrs = &ptrs[(tile * MAX_TAPS + first_tap) * MR..][..pass_taps * MR];
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
pub(super) unsafe fn pass_tile(
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
                let store = epilogue.columns(panel * NR, y_ptr.get()).filter(|_| last);
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
