//! Direct register tiles for convolutions over a few input channels (torchvision's stem: 7×7, stride 2, three
//! channels), whose taps are whole kernel rows: in NHWC, the `kw` pixels under a kernel row are `kw·cin`
//! consecutive floats, so a tile reads each kernel row as one tap of `kw·cin` "channels" (21 for the stem)
//! instead of `kw` taps of `cin` (three), and the column matrix im2col would write (nine times the stem's
//! output, read once) never exists.
//!
//! Shapes: input `x [n, h, w, cin]`, output `y [n·oh·ow, cout]`, weights packed by
//! [`direct::pack_weights`](super::direct::pack_weights) (every tap live): `[cout / 16, kh·kw·cin, 16]`, so
//! that kernel row `ky` of a panel is its `kw·cin` rows from `ky·kw·cin` on. The sums run over `(ky, kx, c)` in
//! that order, as im2col's product does.
//!
//! A kernel row that falls in the padding vertically reads the zero block; one cut by the left or right edge
//! is copied with its zeros into the tile's scratch (the first and last output columns only).

use super::direct::pass_tile;
use super::geom::ConvGeom;
use super::tile::{cpu_supported, wide, Epilogue, SendPtr, MIN_CIN, MR, NR, ZEROS};
use crate::kernels::TaskGrid;
use rayon::prelude::*;

/// Most register tiles per rayon task.
const TILES_PER_TASK: usize = 16;
/// Fewest floats per kernel row: shorter rows (the chapter's single-channel stem: 7) leave too few
/// multiply-adds per row pointer, and stay on im2col.
const MIN_ROW_FLOATS: usize = 16;
/// Most floats per kernel row (the length of a tile's scratch rows).
const MAX_ROW_FLOATS: usize = 64;
/// Most kernel rows.
const MAX_KERNEL_ROWS: usize = 7;

/// True when [`forward`] computes this geometry: fewer input channels than the direct kernels take, kernel
/// rows of 16 to 64 floats, at most seven of them, every tap live, output channels a multiple of 16, AVX2.
pub fn handles(g: &ConvGeom) -> bool {
    let row = g.kw * g.cin;
    cpu_supported()
        && g.cin < MIN_CIN
        && (MIN_ROW_FLOATS..=MAX_ROW_FLOATS).contains(&row)
        && g.kh <= MAX_KERNEL_ROWS
        && g.all_taps_live()
        && g.cout.is_multiple_of(NR)
        && g.cout > 0
}

/// `y [n·oh·ow, cout] = epilogue(conv(x [n, h, w, cin], w))` (overwritten), `packed` as
/// [`direct::pack_weights`](super::direct::pack_weights) wrote it. Panics unless [`handles`]`(g)`.
pub fn forward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    packed: &[f32],
    y: &mut [f32],
    epilogue: Epilogue<'_>,
) {
    assert!(handles(g), "kernel_rows: unsupported");
    let rows = n * g.oh * g.ow;
    let row_len = g.kw * g.cin;
    let k = g.kh * row_len;
    assert!(x.len() >= n * g.h * g.w * g.cin, "kernel_rows: x too short");
    assert!(packed.len() >= k * g.cout, "kernel_rows: weights too short");
    let y = &mut y[..rows * g.cout];
    epilogue.check(g.cout);
    epilogue.check_residual(y.len());
    // Four 16-column panels per AVX-512 tile, one per AVX2 tile.
    let group = if wide(g.cout) { 4 } else { 1 };
    let panels = g.cout / NR;
    let grid = TaskGrid::new(
        rows.div_ceil(MR),
        TILES_PER_TASK,
        panels / group,
        rayon::current_num_threads(),
    );
    let y_ptr = SendPtr(y.as_mut_ptr());
    (0..grid.tasks()).into_par_iter().for_each(|task| {
        let task_rows = grid.rows(task, rows, MR);
        let (first_row, task_rows) = (task_rows.start, task_rows.len());
        let task_panels = grid.panels(task, panels, group);
        // Kernel rows cut by the left or right edge, copied with their zeros: [row][ky][float].
        let mut scratch = [0.0f32; MR * MAX_KERNEL_ROWS * MAX_ROW_FLOATS];
        let mut ptrs = [core::ptr::null::<f32>(); MAX_KERNEL_ROWS * MR];
        for tile in 0..task_rows.div_ceil(MR) {
            let tile_rows = (task_rows - tile * MR).min(MR);
            // The tile's first output position; the next rows step along the output row (one division per
            // tile, not three per row).
            let row0 = first_row + tile * MR;
            let (mut img, mut oy, mut ox) =
                (row0 / (g.oh * g.ow), (row0 / g.ow) % g.oh, row0 % g.ow);
            for r in 0..MR {
                if r > 0 && r < tile_rows {
                    ox += 1;
                    if ox == g.ow {
                        ox = 0;
                        oy += 1;
                        if oy == g.oh {
                            oy = 0;
                            img += 1;
                        }
                    }
                } else if r > 0 {
                    // Rows past the end repeat the tile's first row; they are computed and never stored.
                    for ky in 0..g.kh {
                        ptrs[ky * MR + r] = ptrs[ky * MR];
                    }
                    continue;
                }
                let image = &x[img * g.h * g.w * g.cin..][..g.h * g.w * g.cin];
                let ix0 = (ox * g.stride) as isize - g.pad as isize;
                for ky in 0..g.kh {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    ptrs[ky * MR + r] = if iy < 0 || iy >= g.h as isize {
                        ZEROS.as_ptr()
                    } else {
                        let line = &image[iy as usize * g.w * g.cin..][..g.w * g.cin];
                        if ix0 >= 0 && ix0 as usize + g.kw <= g.w {
                            line[ix0 as usize * g.cin..][..row_len].as_ptr()
                        } else {
                            let copy = &mut scratch[(r * MAX_KERNEL_ROWS + ky) * MAX_ROW_FLOATS..]
                                [..row_len];
                            for (kx, px) in copy.chunks_exact_mut(g.cin).enumerate() {
                                let ix = ix0 + kx as isize;
                                if ix < 0 || ix >= g.w as isize {
                                    px.fill(0.0);
                                } else {
                                    px.copy_from_slice(&line[ix as usize * g.cin..][..g.cin]);
                                }
                            }
                            copy.as_ptr()
                        }
                    };
                }
            }
            for panel in task_panels.clone().step_by(group) {
                let mut wrows = [core::ptr::null::<f32>(); MAX_KERNEL_ROWS];
                for (ky, wr) in wrows[..g.kh].iter_mut().enumerate() {
                    *wr = packed[panel * k * NR + ky * row_len * NR..].as_ptr();
                }
                let store = epilogue.columns(panel * NR, y_ptr.get());
                let dst = (first_row + tile * MR) * g.cout + panel * NR;
                // SAFETY: cpu_supported() checked AVX2+FMA (and pass_tile's group 4 only runs where `wide`
                // found AVX-512). Each row pointer reaches `row_len` floats: a kernel row inside x (bounds-checked
                // above), the zero block (MAX_CIN ≥ 64 floats) or the task's scratch, alive for the call. Each
                // kernel row's weights reach (row_len − 1)·16 + 16·group floats, with the group's panels k·16
                // apart, inside `packed` (asserted k·cout). y holds rows·cout floats; tasks write disjoint
                // blocks (their rows × their panels).
                unsafe {
                    pass_tile(
                        group,
                        &ptrs[..g.kh * MR],
                        row_len,
                        &wrows[..g.kh],
                        (NR, k * NR),
                        y_ptr.get().add(dst),
                        g.cout,
                        tile_rows,
                        false,
                        store,
                    );
                }
            }
        }
    });
}
