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
use std::sync::atomic::{AtomicBool, Ordering};

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
/// loops it starts fork from that worker, which works on them too, and keeps the pool's other workers awake,
/// looking for work, until `op` returns. `op` must not wait for other work of the pool.
///
/// Why: started from outside the pool, each loop is injected into it while the calling thread sleeps until the
/// loop is done, a wake-up per loop; and between loops an idle worker soon sleeps, so that every loop waits for
/// it to be woken again (on a virtual machine, tens of microseconds for a halted CPU). Over the sixty loops of
/// resnet50's forward pass on two cores (Zen 3), the first cost about a tenth of its batch-1 latency, the second
/// a seventh (57 → 49 ms). ONNX Runtime's pool spins between loops the same way (its `allow_spinning`). The
/// price: while `op` runs, every core of the pool is busy, also between its loops.
pub fn on_pool<R: Send>(op: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return op();
    }
    let helpers = rayon::current_num_threads().saturating_sub(1);
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| keep_awake(&done));
        }
        let _running = Running::start(&done);
        op()
    })
}

thread_local! {
    /// True on a worker while it runs an [`on_pool`] operation.
    static RUNS_OP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// An [`on_pool`] operation running on this worker: when it ends, however it ends, its helpers are told to
/// return and the worker no longer counts as running it.
struct Running<'a> {
    done: &'a AtomicBool,
    was_running: bool,
}

impl<'a> Running<'a> {
    fn start(done: &'a AtomicBool) -> Self {
        Running {
            done,
            was_running: RUNS_OP.replace(true),
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        RUNS_OP.set(self.was_running);
        self.done.store(true, Ordering::Release);
    }
}

/// An [`on_pool`] helper: runs the pool's pending work (the operation's loops) until `done`, spinning when there
/// is none. It returns at once on a worker that runs an operation (its own, which popped it while waiting for a
/// loop, or another's): there it would hold that operation's frame until this one ends, and two operations could
/// then each wait for the other.
fn keep_awake(done: &AtomicBool) {
    if RUNS_OP.get() {
        return;
    }
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::hint::spin_loop();
        }
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
    /// on `threads` threads: even blocks of rows, each walking every panel while there are four tasks per
    /// thread or more; below that (the 14×14 and 7×7 stages at small batches) each times as many shares of the
    /// panels as make four tasks per thread, so that every block reads the weights (then larger than its rows)
    /// once, instead of every one of many small blocks reading all of them. The count of blocks, between the
    /// fewest that fit `max_tiles` and twice as many, is the one that gives the busiest thread the least work
    /// (49 tiles in four blocks of 13 leave one thread 52 tiles' work and the other 46; in seven blocks of seven,
    /// 49 each). Which task computes an element does not change its value: the sums' order is the tile's.
    pub fn new(tiles: usize, max_tiles: usize, panels: usize, threads: usize) -> Self {
        let fewest = tiles.div_ceil(max_tiles.max(1)).max(1);
        // Many blocks: a block more or less moves the balance by a small share, and the search is not free.
        if fewest > 64 {
            return Self::with_blocks(tiles, fewest, panels, threads);
        }
        (fewest..=(2 * fewest).min(tiles.max(1)))
            .map(|blocks| Self::with_blocks(tiles, blocks, panels, threads))
            .min_by_key(|g| g.busiest_thread(threads))
            .expect("at least one block count")
    }

    /// The grid of about `blocks` even blocks of rows (see [`TaskGrid::new`]).
    fn with_blocks(tiles: usize, blocks: usize, panels: usize, threads: usize) -> Self {
        let enough = 4 * threads.max(1);
        let panels = panels.max(1);
        let tiles_per_block = tiles.div_ceil(blocks.max(1)).max(1);
        let row_blocks = tiles.div_ceil(tiles_per_block).max(1);
        let panels_per_task = if row_blocks >= enough {
            panels
        } else {
            // As many shares as make enough tasks, preferring a count that splits the panels evenly and gives
            // every thread as many tasks (three blocks times three shares on two threads leave one thread a
            // fifth task while the other waits).
            let least = enough.div_ceil(row_blocks).min(panels);
            let shares = (least..=panels)
                .find(|&s| {
                    panels.is_multiple_of(s) && (row_blocks * s).is_multiple_of(threads.max(1))
                })
                .unwrap_or(least);
            panels.div_ceil(shares)
        };
        TaskGrid {
            row_blocks,
            tiles_per_block,
            panel_groups: panels.div_ceil(panels_per_task),
            panels_per_task,
        }
    }

    /// The work of the busiest thread, in tiles times panels, were the tasks dealt out in turn as whole ones:
    /// what [`TaskGrid::new`] makes as small as it can.
    fn busiest_thread(&self, threads: usize) -> usize {
        self.tasks().div_ceil(threads.max(1)) * self.tiles_per_block * self.panels_per_task
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
        // Batch 1 at 14×14: 33 tiles in three even blocks of 11, each times four shares of the 64 panels (three
        // would make nine tasks, five for one thread and four for the other).
        assert_eq!(TaskGrid::new(33, 16, 64, 2), grid(3, 11, 4, 16));
        // Fewer panels than the shares wanted: one panel each, and a block per tile for an even number of tasks.
        assert_eq!(TaskGrid::new(2, 16, 3, 2), grid(2, 1, 3, 1));
        // Batch 1 at 14×14 on the int8 tiles of 4 rows: 49 tiles in seven blocks of seven (four blocks of 13
        // would leave one thread 52 tiles' work, the other 46), each times two shares of the 16 panels.
        assert_eq!(TaskGrid::new(49, 16, 16, 2), grid(7, 7, 2, 8));
        // Batch 1 at 56×56, int8: 784 tiles in 56 blocks of 14 rather than 49 of 16 (25 tasks for one thread).
        assert_eq!(TaskGrid::new(784, 16, 16, 2), grid(56, 14, 1, 16));
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

#[cfg(test)]
mod on_pool_tests {
    use super::on_pool;
    use rayon::prelude::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A pass's worth of parallel loops.
    fn loops() -> u64 {
        (0..20u64)
            .map(|k| (0..20_000u64).into_par_iter().map(|i| i ^ k).sum::<u64>())
            .sum()
    }

    /// Operations started at once from several threads, nested ones and ones that leave detached work on the
    /// pool all finish with their results (a helper never holds an operation's frame, so none waits for another), and
    /// the pool serves operations after one panicked (its helpers were released).
    #[test]
    fn concurrent_nested_and_panicking_operations_finish() {
        let want = loops();
        let (tx, rx) = mpsc::channel();
        for t in 0..4 {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let (detached_tx, detached) = mpsc::channel();
                    let got = on_pool(|| match (t + i) % 3 {
                        0 => loops(),
                        1 => on_pool(loops),
                        _ => {
                            rayon::spawn(move || detached_tx.send(loops()).unwrap());
                            loops()
                        }
                    });
                    if (t + i) % 3 == 2 {
                        assert_eq!(detached.recv().unwrap(), got);
                    }
                    tx.send(got).unwrap();
                }
            });
        }
        drop(tx);
        for _ in 0..100 {
            let got = rx
                .recv_timeout(Duration::from_secs(120))
                .expect("every operation finishes");
            assert_eq!(got, want);
        }
        // A helper that a running operation's worker picks up (waiting for one of its loops) returns at once,
        // though its own operation is not done.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            on_pool(|| super::keep_awake(&std::sync::atomic::AtomicBool::new(false)));
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("a helper leaves a worker that runs an operation");
        let panicked = std::panic::catch_unwind(|| on_pool(|| panic!("an operation fails")));
        assert!(panicked.is_err());
        assert_eq!(on_pool(loops), want);
    }
}
