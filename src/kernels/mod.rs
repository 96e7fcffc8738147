//! Pure numeric kernels over slices: no model state, no allocation unless a doc comment says so.
//!
//! Layouts: activations are NHWC matrices `[rows = n·h·w, c]`; conv weights are HWIO `[kh, kw, cin, cout]`
//! so that a convolution is `im2col(x) [rows, kh·kw·cin] × w [kh·kw·cin, cout]`, which yields NHWC directly.

pub mod conv;
pub mod gemm;
pub mod int8;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pointwise;
pub mod pool;

use rayon::prelude::*;

/// Splits `len` items into about `2 × threads` contiguous pieces of at least `min_piece` items each,
/// so that elementwise kernels get balanced work without tiny tasks.
pub(crate) fn piece_len(len: usize, min_piece: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    len.div_ceil(2 * threads).max(min_piece).max(1)
}

/// Applies `f(chunk_index, out_chunk)` to `out` split in pieces of `piece` elements, in parallel.
pub(crate) fn par_pieces<F>(out: &mut [f32], piece: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    out.par_chunks_mut(piece.max(1))
        .enumerate()
        .for_each(|(i, c)| f(i, c));
}

/// Runs `op` on a worker thread of the current rayon pool (at once when already on one), so that the parallel
/// loops it starts fork from that worker, which works on them too. Started from outside the pool, each loop is
/// injected into it while the calling thread sleeps until the loop is done: a wake-up per loop, which over the
/// sixty loops of resnet50's forward pass cost about a tenth of its batch-1 latency on two cores (Zen 3).
/// `op` must not wait for other work of the pool.
pub fn on_pool<R: Send>(op: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        op()
    } else {
        rayon::scope(|_| op())
    }
}

/// How a product's work is cut into rayon tasks: `row_blocks` blocks of `tiles_per_block` register tiles, each
/// times `panel_groups` shares of `panels_per_task` column panels (the last block and share may be short).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TaskGrid {
    pub row_blocks: usize,
    pub tiles_per_block: usize,
    pub panel_groups: usize,
    pub panels_per_task: usize,
}

impl TaskGrid {
    /// The grid for `tiles` register tiles of rows, at most `max_tiles` per task, over `panels` column panels,
    /// on `threads` threads. Blocks of rows each walk every panel while there are four tasks per thread or
    /// more. Below that (the 14×14 and 7×7 stages at small batches) the fewest blocks that fit `max_tiles`,
    /// cut evenly, each times as many shares of the panels as make four tasks per thread: every block reads
    /// the weights (then larger than its rows) once, instead of every one of many small blocks reading all
    /// of them. Which task computes an element does not change its value: the sums' order is the tile's.
    pub fn new(tiles: usize, max_tiles: usize, panels: usize, threads: usize) -> Self {
        let enough = 4 * threads.max(1);
        let max_tiles = max_tiles.max(1);
        let panels = panels.max(1);
        let row_blocks = tiles.div_ceil(max_tiles).max(1);
        let (tiles_per_block, panels_per_task) = if row_blocks >= enough {
            (max_tiles, panels)
        } else {
            let shares = enough.div_ceil(row_blocks).min(panels);
            (tiles.div_ceil(row_blocks).max(1), panels.div_ceil(shares))
        };
        TaskGrid {
            row_blocks: tiles.div_ceil(tiles_per_block).max(1),
            tiles_per_block,
            panel_groups: panels.div_ceil(panels_per_task),
            panels_per_task,
        }
    }

    /// Tasks in all: `row_blocks × panel_groups`.
    pub fn tasks(&self) -> usize {
        self.row_blocks * self.panel_groups
    }

    /// The rows task `task` computes, of `rows` in tiles of `tile_rows`.
    pub fn rows(&self, task: usize, rows: usize, tile_rows: usize) -> std::ops::Range<usize> {
        let per_task = tile_rows * self.tiles_per_block;
        let first = ((task / self.panel_groups) * per_task).min(rows);
        first..(first + per_task).min(rows)
    }

    /// The panels task `task` computes, of `panels`, where the grid counts groups of `group` panels (a wide tile's).
    pub fn panels(&self, task: usize, panels: usize, group: usize) -> std::ops::Range<usize> {
        let per_task = self.panels_per_task * group;
        let first = (task % self.panel_groups) * per_task;
        first..(first + per_task).min(panels)
    }
}

#[cfg(test)]
mod task_grid_tests {
    use super::TaskGrid;

    /// The grid of `row_blocks` blocks of `tiles_per_block` tiles times `panel_groups` shares of `panels_per_task`.
    fn grid(
        row_blocks: usize,
        tiles_per_block: usize,
        panel_groups: usize,
        panels_per_task: usize,
    ) -> TaskGrid {
        TaskGrid {
            row_blocks,
            tiles_per_block,
            panel_groups,
            panels_per_task,
        }
    }

    #[test]
    fn many_rows_are_blocks_over_every_panel_and_few_rows_share_the_panels() {
        // Batch 32 at 56×56: 16,726 tiles of 6 rows, blocks of 16 over all 16 panels.
        assert_eq!(TaskGrid::new(16_726, 16, 16, 2), grid(1046, 16, 1, 16));
        // Batch 1 at 7×7: 9 tiles, one block, the 128 panels in 8 shares of 16: the weights read once.
        assert_eq!(TaskGrid::new(9, 16, 128, 2), grid(1, 9, 8, 16));
        // Batch 1 at 14×14: 33 tiles in three even blocks of 11, each times three shares of the 64 panels.
        assert_eq!(TaskGrid::new(33, 16, 64, 2), grid(3, 11, 3, 22));
        // Fewer panels than the shares wanted: one panel each.
        assert_eq!(TaskGrid::new(2, 16, 3, 2), grid(1, 2, 3, 1));
        // Every tile and panel is covered exactly once.
        for (tiles, panels) in [(1, 1), (7, 5), (100, 4), (129, 32), (1000, 128)] {
            let g = TaskGrid::new(tiles, 16, panels, 2);
            assert!(g.tiles_per_block <= 16);
            assert!(
                g.row_blocks * g.tiles_per_block >= tiles
                    && (g.row_blocks - 1) * g.tiles_per_block < tiles
            );
            assert!(g.panel_groups * g.panels_per_task >= panels);
            assert!((g.panel_groups - 1) * g.panels_per_task < panels);
            // The tasks' rows × panels cover each (row, panel) once, rows in tiles of 6 and panels in pairs.
            let rows = tiles * 6 - 1;
            let mut seen = vec![0u8; rows * panels * 2];
            let g = TaskGrid::new(tiles, 16, panels, 2);
            for task in 0..g.tasks() {
                for r in g.rows(task, rows, 6) {
                    for p in g.panels(task, panels * 2, 2) {
                        seen[r * panels * 2 + p] += 1;
                    }
                }
            }
            assert!(
                seen.iter().all(|&s| s == 1),
                "{tiles} tiles, {panels} panels"
            );
        }
    }
}
