//! 1×1 convolutions without padding (ResNet's bottleneck reductions and expansions, stride 1, and its
//! downsampling shortcuts, stride 2) as matrix products on register tiles, forward and both gradients, with
//! nothing allocated per call:
//!
//! - forward:         `y [rows, cout] = x_s [rows, cin] · w [cin, cout]`, then the epilogue;
//! - input gradient:  `dx_s [rows, cin] = dy [rows, cout] · wᵀ` (and `dx` zero off the stride grid);
//! - weight gradient: `dw [cin, cout] = x_sᵀ · dy`,
//!
//! where `rows = n·oh·ow` and `x_s` is `x` on the stride grid (row `r` of it is a pixel of `x`, read in place).
//!
//! The right-hand matrix (`w` or `wᵀ`, at most a few MiB) is packed once per call into column panels
//! `[n / W, k, W]` in the caller's workspace; the left one is read in place through six row pointers. A rayon
//! task owns a block of rows (and, when rows are few, a share of the panels) and walks the reduction in slices
//! whose panel stays in L1 while every tile of the block uses it. The weight gradient sums down the rows with
//! its `6 × W` tile of `dw` in registers, reading six channels of an `x` row and `W` channels of a `dy` row
//! per step; a task owns a range of `dw` tiles and all tasks walk the rows in the same blocks, so the blocks
//! are shared in the caches, and the sum's order does not depend on the thread count.
//!
//! Tile width `W`: 64 output columns (four 16-float vectors) on CPUs with AVX-512, 16 (two 8-float vectors)
//! with AVX2 (the micro-kernels are in [`super::tile`]).

use super::geom::ConvGeom;
use super::tile::{
    cols_tile_16, cols_tile_64, cpu_supported, rows_tile_16, rows_tile_64, wide, Epilogue, SendPtr,
    MR, NR,
};
use crate::kernels::TaskGrid;
use rayon::prelude::*;

/// Floats of a panel slice `[kc, W]` one pass of a task's tiles reuses (32 KiB: L1 holds it with the rows).
const PANEL_SLICE_FLOATS: usize = 8 * 1024;
/// Most register tiles per task (the block of rows a task multiplies with every panel slice).
const TILES_PER_TASK: usize = 16;
/// Floats of `x_s` and `dy` one block of the weight gradient packs (1 MiB: the block stays in L2 while the
/// tiles read it).
const DW_BLOCK_FLOATS: usize = 256 * 1024;

/// True when this module computes the convolution: a 1×1 kernel without padding, any stride, both channel
/// counts multiples of 16 (each is the output width of one of the products), on a CPU with AVX2.
pub fn handles(g: &ConvGeom) -> bool {
    g.kh == 1
        && g.kw == 1
        && g.pad == 0
        && g.cin.is_multiple_of(NR)
        && g.cout.is_multiple_of(NR)
        && g.cin > 0
        && g.cout > 0
        && cpu_supported()
}

/// Columns per register tile for a product with `n` output columns: 64 with AVX-512 where `n` allows, else 16.
pub fn tile_width(n: usize) -> usize {
    if wide(n) {
        64
    } else {
        NR
    }
}

/// True when [`forward`] stores each output element once, with the epilogue (the reduction fits one panel
/// slice), never a partial sum first: then the output may hold the residual on entry
/// ([`Epilogue::bias_onto_output`]).
pub fn stores_once(g: &ConvGeom) -> bool {
    g.cin <= PANEL_SLICE_FLOATS / tile_width(g.cout)
}

/// Floats of workspace [`forward`] and [`input_grad`] need (the packed weights).
pub fn workspace_len(g: &ConvGeom) -> usize {
    g.cin * g.cout
}

/// True when [`matmul`] can compute a product with `n` output columns on this CPU.
pub fn matmul_handles(n: usize) -> bool {
    cpu_supported() && n > 0 && n.is_multiple_of(NR)
}

/// `c [rows, n] = epilogue(a [rows, k] · b)` (overwritten), both row-major, `b` as [`pack`] wrote it: the
/// products of the im2col paths (the stem's column matrix, the column gradient of strided convs) on the same
/// register tiles. Needs [`matmul_handles`]`(n)`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    rows: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b_packed: &[f32],
    c: &mut [f32],
    epilogue: Epilogue<'_>,
) {
    assert!(matmul_handles(n), "conv_pointwise::matmul: unsupported");
    if rows == 0 {
        return;
    }
    epilogue.check(n);
    epilogue.check_residual(rows * n);
    let (a_row, c_row) = (|r: usize| r * k, |r: usize| r * n);
    gemm(
        rows,
        k,
        n,
        a,
        &a_row,
        &b_packed[..k * n],
        c,
        &c_row,
        epilogue,
    );
}

/// Packs `b` into panels `[n / W, k, W]` (W = [`tile_width`]`(n)`) for [`matmul`]: `b [k, n]` row-major, or,
/// when `transposed`, `b [n, k]` row-major read as its transpose. `packed` holds `k·n` floats.
pub fn pack(k: usize, n: usize, b: &[f32], transposed: bool, packed: &mut [f32]) {
    let width = tile_width(n);
    packed[..k * n]
        .par_chunks_mut(k * width)
        .enumerate()
        .for_each(|(panel, out)| {
            let col0 = panel * width;
            for (q, row) in out.chunks_exact_mut(width).enumerate() {
                if transposed {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = b[(col0 + j) * k + q];
                    }
                } else {
                    row.copy_from_slice(&b[q * n + col0..][..width]);
                }
            }
        });
}

/// `dst[..N] = src[..N]`, `N` known when compiled: a few vector moves, where a copy of a length known only at run
/// time calls `memmove` (per row of six or sixteen floats, that call cost more than the copy).
#[inline(always)]
fn copy_row<const N: usize>(dst: &mut [f32], src: &[f32]) {
    let dst: &mut [f32; N] = (&mut dst[..N]).try_into().expect("N floats");
    *dst = src[..N].try_into().expect("N floats");
}

/// Where row `r` of `x_s` (output position `r`) is in `x`: the first channel of its pixel.
fn grid_pixel(g: &ConvGeom, r: usize) -> usize {
    if g.stride == 1 {
        return r * g.cin;
    }
    let (img, pos) = (r / (g.oh * g.ow), r % (g.oh * g.ow));
    let (oy, ox) = (pos / g.ow, pos % g.ow);
    ((img * g.h + oy * g.stride) * g.w + ox * g.stride) * g.cin
}

/// `y [n·oh·ow, cout] = epilogue(x_s · w)` (overwritten) for `x [n, h, w, cin]` and `w [cin, cout]`;
/// `workspace` holds [`workspace_len`] floats. Panics unless [`handles`]`(g)`.
pub fn forward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    epilogue: Epilogue<'_>,
    workspace: &mut [f32],
) {
    let packed = &mut workspace[..g.cin * g.cout];
    pack_weights(g, w, packed);
    forward_packed(g, n, x, packed, y, epilogue);
}

/// Packs `w [cin, cout]` as [`forward_packed`] reads it into `packed` ([`workspace_len`] floats), so that a
/// caller can keep it (eval mode).
pub fn pack_weights(g: &ConvGeom, w: &[f32], packed: &mut [f32]) {
    assert!(w.len() >= g.cin * g.cout);
    pack(g.cin, g.cout, w, false, packed);
}

/// [`forward`] with the weights as [`pack_weights`] wrote them.
pub fn forward_packed(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    packed: &[f32],
    y: &mut [f32],
    epilogue: Epilogue<'_>,
) {
    assert!(handles(g), "conv_pointwise: unsupported");
    let rows = n * g.oh * g.ow;
    assert!(x.len() >= n * g.h * g.w * g.cin && packed.len() >= g.cin * g.cout);
    let y = &mut y[..rows * g.cout];
    epilogue.check(g.cout);
    epilogue.check_residual(y.len());
    let a_row = |r: usize| grid_pixel(g, r);
    let c_row = |r: usize| r * g.cout;
    gemm(rows, g.cin, g.cout, x, &a_row, packed, y, &c_row, epilogue);
}

/// `dx [n, h, w, cin] = (dy · wᵀ)` on the stride grid, zero elsewhere (overwritten), for `dy [n·oh·ow, cout]`;
/// `workspace` holds [`workspace_len`] floats.
pub fn input_grad(
    g: &ConvGeom,
    n: usize,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    workspace: &mut [f32],
) {
    assert!(handles(g), "conv_pointwise: unsupported");
    let rows = n * g.oh * g.ow;
    assert!(dy.len() >= rows * g.cout && w.len() >= g.cin * g.cout);
    let dx = &mut dx[..n * g.h * g.w * g.cin];
    if g.stride > 1 {
        // Pixels off the stride grid get no gradient (and, with an odd plane, neither do the last row and column).
        let piece = crate::kernels::piece_len(dx.len(), 1 << 14);
        crate::kernels::par_pieces(dx, piece, |_, d| d.fill(0.0));
    }
    let packed = &mut workspace[..g.cin * g.cout];
    pack(g.cout, g.cin, w, true, packed);
    let a_row = |r: usize| r * g.cout;
    let c_row = |r: usize| grid_pixel(g, r);
    gemm(
        rows,
        g.cout,
        g.cin,
        dy,
        &a_row,
        packed,
        dx,
        &c_row,
        Epilogue::default(),
    );
}

/// `c[c_row(r) + 0..n] = epilogue(Σ_q a[a_row(r) + q] · b[q, 0..n])` for `r < rows`, `b` packed by [`pack`].
#[allow(clippy::too_many_arguments)]
fn gemm(
    rows: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_row: &(dyn Fn(usize) -> usize + Sync),
    b: &[f32],
    c: &mut [f32],
    c_row: &(dyn Fn(usize) -> usize + Sync),
    epilogue: Epilogue<'_>,
) {
    assert!(rows > 0 && a_row(rows - 1) + k <= a.len() && c_row(rows - 1) + n <= c.len());
    let width = tile_width(n);
    let panels = n / width;
    // Few rows (batch 1, the last stages): the panels are shared among tasks too, so that the weights are
    // read about once in all (see `TaskGrid`).
    let grid = TaskGrid::new(
        rows.div_ceil(MR),
        TILES_PER_TASK,
        panels,
        rayon::current_num_threads(),
    );
    let kc = (PANEL_SLICE_FLOATS / width).clamp(1, k);
    let c_ptr = SendPtr(c.as_mut_ptr());
    let a_ptr = a.as_ptr() as usize;
    (0..grid.tasks()).into_par_iter().for_each(|task| {
        let task_rows = grid.rows(task, rows, MR);
        let (first_row, task_rows) = (task_rows.start, task_rows.len());
        let task_panels = grid.panels(task, panels, 1);
        let tiles = task_rows.div_ceil(MR);
        // The task's row pointers, once; rows past the end repeat the tile's first row (computed, never
        // stored).
        let mut a_rows = [[core::ptr::null::<f32>(); MR]; TILES_PER_TASK];
        let mut c_rows = [[core::ptr::null_mut::<f32>(); MR]; TILES_PER_TASK];
        for tile in 0..tiles {
            for i in 0..MR {
                let r = first_row + tile * MR + if tile * MR + i < task_rows { i } else { 0 };
                a_rows[tile][i] = (a_ptr as *const f32).wrapping_add(a_row(r));
                c_rows[tile][i] = c_ptr.get().wrapping_add(c_row(r));
            }
        }
        let mut k0 = 0;
        while k0 < k {
            let len = kc.min(k - k0);
            let last = k0 + len == k;
            for panel in task_panels.clone() {
                let col0 = panel * width;
                let store = epilogue.columns(col0, c_ptr.get()).filter(|_| last);
                let b_slice = b[panel * k * width + k0 * width..][..len * width].as_ptr();
                for tile in 0..tiles {
                    let a_rows = a_rows[tile].map(|p| p.wrapping_add(k0));
                    let c_rows = c_rows[tile].map(|p| p.wrapping_add(col0));
                    let tile_rows = (task_rows - tile * MR).min(MR);
                    // SAFETY: AVX2 (and AVX-512 for width 64) checked; each a row has k floats from a_row
                    // (asserted for the last row, rows increase), the slice reads len·width floats of the
                    // packed panel, and each c row has n floats from c_row; tasks write disjoint
                    // (rows × panels) blocks.
                    unsafe {
                        if width == 64 {
                            let b = [0, 1, 2, 3].map(|v| b_slice.add(v * 16));
                            rows_tile_64(&a_rows, len, &b, 64, &c_rows, tile_rows, k0 > 0, store);
                        } else {
                            let b = [b_slice, b_slice.add(8)];
                            rows_tile_16(&a_rows, len, &b, 16, &c_rows, tile_rows, k0 > 0, store);
                        }
                    }
                }
            }
            k0 += len;
        }
    });
}

/// Rows of `x_s` and `dy` a block of the weight gradient packs, for `cin + cout` floats per row.
fn dw_block_rows(g: &ConvGeom, rows: usize) -> usize {
    (DW_BLOCK_FLOATS / (g.cin.next_multiple_of(MR) + g.cout)).clamp(1, rows.max(1))
}

/// Floats of workspace [`weight_grad`] needs for a batch of `n`: one packed block of rows.
pub fn weight_grad_workspace_len(g: &ConvGeom, n: usize) -> usize {
    let rows = n * g.oh * g.ow;
    dw_block_rows(g, rows) * (g.cin.next_multiple_of(MR) + g.cout)
}

/// `dw [cin, cout] = x_sᵀ · dy` (overwritten) for `x [n, h, w, cin]` and `dy [n·oh·ow, cout]`; `workspace`
/// holds [`weight_grad_workspace_len`] floats. Panics unless [`handles`]`(g)`.
///
/// Block by block of rows, `x_s` is packed six channels at a time, `[cin / 6, rows, 6]` (zeros past `cin`),
/// and `dy` panel by panel, `[cout / W, rows, W]`, so that every tile then reads both operands as two
/// sequential streams; tiles sum the blocks in order, so the result does not depend on the thread count.
pub fn weight_grad(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    workspace: &mut [f32],
) {
    assert!(handles(g), "conv_pointwise: unsupported");
    let rows = n * g.oh * g.ow;
    assert!(x.len() >= n * g.h * g.w * g.cin && dy.len() >= rows * g.cout);
    let dw = &mut dw[..g.cin * g.cout];
    let width = tile_width(g.cout);
    let panels = g.cout / width;
    let channel_blocks = g.cin.div_ceil(MR);
    let tiles = channel_blocks * panels;
    let block_rows = dw_block_rows(g, rows);
    let (xp, dyp) = workspace[..block_rows * (channel_blocks * MR + g.cout)]
        .split_at_mut(block_rows * channel_blocks * MR);
    let dw_ptr = SendPtr(dw.as_mut_ptr());
    let mut r0 = 0;
    while r0 < rows {
        let len = block_rows.min(rows - r0);
        xp.par_chunks_mut(block_rows * MR)
            .enumerate()
            .for_each(|(block, out)| {
                let c0 = block * MR;
                let m = (g.cin - c0).min(MR);
                for (q, o) in out[..len * MR].chunks_exact_mut(MR).enumerate() {
                    let p = grid_pixel(g, r0 + q) + c0;
                    if m == MR {
                        copy_row::<MR>(o, &x[p..]);
                    } else {
                        o[..m].copy_from_slice(&x[p..][..m]);
                        o[m..].fill(0.0);
                    }
                }
            });
        dyp.par_chunks_mut(block_rows * width)
            .enumerate()
            .for_each(|(panel, out)| {
                for (q, o) in out[..len * width].chunks_exact_mut(width).enumerate() {
                    let row = &dy[(r0 + q) * g.cout + panel * width..];
                    if width == 64 {
                        copy_row::<64>(o, row);
                    } else {
                        copy_row::<NR>(o, row);
                    }
                }
            });
        let (xp, dyp) = (&*xp, &*dyp);
        (0..tiles).into_par_iter().for_each(|tile| {
            let (block, panel) = (tile / panels, tile % panels);
            let c0 = block * MR;
            let m = (g.cin - c0).min(MR);
            let dst: [*mut f32; MR] = core::array::from_fn(|i| {
                dw_ptr
                    .get()
                    .wrapping_add((c0 + i.min(m - 1)) * g.cout + panel * width)
            });
            let a = xp[block * block_rows * MR..][..len * MR].as_ptr();
            let b = dyp[panel * block_rows * width..][..len * width].as_ptr();
            // SAFETY: AVX2 (AVX-512 for width 64) checked; the packed blocks hold len rows of 6 and of
            // width floats (sliced above); dw rows c0..c0 + m of the panel belong to this tile alone.
            unsafe {
                if width == 64 {
                    cols_tile_64(a, MR, b, width, &[(0, 0, len)], MR, &dst, r0 > 0, m);
                } else {
                    cols_tile_16(a, MR, b, width, &[(0, 0, len)], MR, &dst, r0 > 0, m);
                }
            }
        });
        r0 += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::reference;

    #[test]
    fn products_match_the_definition() {
        if !cpu_supported() {
            return;
        }
        // (cin, cout, stride, side, n): tiles that are partial in rows and channels (the weight gradient's
        // six-channel blocks), a reduction longer than one panel slice (cin 1024 at width 16 and 64), stride 2
        // on even and odd planes, and widths that take the 16- and 64-column tiles.
        for (cin, cout, stride, side, n) in [
            (16, 16, 1, 3, 1),
            (64, 256, 1, 5, 3),
            (256, 64, 2, 6, 2),
            (32, 64, 2, 7, 3),
            (1024, 128, 1, 2, 2),
            (144, 48, 1, 3, 5),
        ] {
            let g = ConvGeom::new(cin, cout, 1, stride, 0, side, side).unwrap();
            // A reduction in several panel slices stores partial sums first: no residual in the output then.
            assert_eq!(stores_once(&g), cin <= 128 || (cin <= 512 && !wide(cout)));
            let x: Vec<f32> = (0..n * side * side * cin)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 97.0)
                .collect();
            let w: Vec<f32> = (0..cin * cout)
                .map(|i| ((i * 104729 % 197) as f32 - 98.0) / 491.0)
                .collect();
            let rows = n * g.oh * g.ow;
            let dy: Vec<f32> = (0..rows * cout)
                .map(|i| ((i * 613 % 101) as f32 - 50.0) / 77.0)
                .collect();
            let want_y = reference::forward(&g, n, &x, &w, &[]);
            let want_dx = reference::input_grad(&g, n, &dy, &w);
            let want_dw = reference::weight_grad(&g, n, &x, &dy);
            let close = |got: &[f32], want: &[f32], what: &str| {
                assert_eq!(got.len(), want.len());
                for (i, (a, b)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{what} {cin}->{cout} /{stride} {side}²×{n}: [{i}] = {a}, want {b}"
                    );
                }
            };
            let mut ws = vec![0.0f32; workspace_len(&g)];
            let mut y = vec![f32::NAN; want_y.len()];
            forward(&g, n, &x, &w, &mut y, Epilogue::default(), &mut ws);
            close(&y, &want_y, "y");
            let scale: Vec<f32> = (0..cout).map(|c| 0.5 + c as f32 / 9.0).collect();
            let shift: Vec<f32> = (0..cout).map(|c| 0.3 - c as f32 / 11.0).collect();
            forward(
                &g,
                n,
                &x,
                &w,
                &mut y,
                Epilogue::affine(&scale, &shift, true),
                &mut ws,
            );
            let want_affine: Vec<f32> = want_y
                .iter()
                .enumerate()
                .map(|(i, v)| (v * scale[i % cout] + shift[i % cout]).max(0.0))
                .collect();
            close(&y, &want_affine, "affine");
            let mut dx = vec![f32::NAN; want_dx.len()];
            input_grad(&g, n, &dy, &w, &mut dx, &mut ws);
            close(&dx, &want_dx, "dx");
            let mut dw = vec![f32::NAN; want_dw.len()];
            let mut dw_ws = vec![0.0f32; weight_grad_workspace_len(&g, n)];
            weight_grad(&g, n, &x, &dy, &mut dw, &mut dw_ws);
            close(&dw, &want_dw, "dw");
        }
    }
}
