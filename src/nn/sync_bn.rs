//! Synchronized batch norm across the ranks of a data-parallel job (`--sync-bn`, PyTorch's `SyncBatchNorm`):
//! the batch statistics of the global batch, and the backward pass's two per-channel sums over it. Each rank
//! first runs the ordinary kernels on its own rows; these functions turn their per-rank results into the
//! global ones, so the kernels stay as they are.

use crate::dist::Collective;
use rayon::prelude::*;

/// Turns this rank's batch `mean` and biased `var` (`[c]` each, over `rows` rows) into the global batch's, in
/// place, and returns the global row count. Two sums over ranks, as `SyncBatchNorm` combines per-rank counts,
/// means and variances: first `Σ rows·mean` and `Σ rows`, then `Σ rows·(var + (mean − global mean)²)`, the
/// squared deviations from the global mean (both terms positive, so no cancellation: the one-pass
/// `E[x²] − mean²` loses nearly constant channels, see `kernels::norm::batch_stats`). `buf`: scratch.
pub fn global_stats(
    comm: &dyn Collective,
    rows: usize,
    mean: &mut [f32],
    var: &mut [f32],
    buf: &mut Vec<f64>,
) -> usize {
    let c = mean.len();
    let n = rows as f64;
    buf.resize(c + 1, 0.0);
    for (b, &m) in buf.iter_mut().zip(mean.iter()) {
        *b = n * m as f64;
    }
    buf[c] = n;
    comm.sum_f64(buf);
    let total = buf[c];
    let global_mean: Vec<f64> = buf[..c].iter().map(|s| s / total).collect();
    for ch in 0..c {
        let d = mean[ch] as f64 - global_mean[ch];
        buf[ch] = n * (var[ch] as f64 + d * d);
    }
    comm.sum_f64(&mut buf[..c]);
    for ch in 0..c {
        mean[ch] = global_mean[ch] as f32;
        var[ch] = (buf[ch] / total) as f32;
    }
    total as usize
}

/// Corrects an input gradient `dx [rows, c]` that the batch-norm backward kernel computed from this rank's
/// sums into the one of the global batch, and makes `dgamma` and `dbeta` this rank's equal part of the global
/// batch's. The kernel writes `dx = g·a + (x − mean)·b + k` per channel with `b = −γ·invstd³·s2/m` and
/// `k = −γ·invstd·s1/m` from this rank's `s1 = Σg`, `s2 = Σg(x−mean)` over its `m = rows` (`local`: `[s1, s2]`,
/// `[2, c]` in f64). Summed over ranks (`total` rows in all) they give the global `b` and `k`, and
/// `dx += (x − mean)·(b_global − b) + (k_global − k)`. The parameter gradients become `Σs1 / ranks` and
/// `invstd·Σs2 / ranks`, which the gradient allreduce sums back to the global batch's: summing the ranks' own
/// f32 gradients instead would lose a bias gradient whose ranks' sums nearly cancel. `buf`: scratch.
#[allow(clippy::too_many_arguments)]
pub fn correct_input_grad(
    comm: &dyn Collective,
    x: &[f32],
    dx: &mut [f32],
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    local: &[f64],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    total: usize,
    buf: &mut Vec<f64>,
) {
    let c = mean.len();
    let rows = x.len() / c;
    buf.resize(2 * c, 0.0);
    buf.copy_from_slice(&local[..2 * c]);
    comm.sum_f64(buf);
    let (m, total, ranks) = (rows as f64, total as f64, comm.size() as f64);
    let mut db = vec![0.0f32; c];
    let mut dk = vec![0.0f32; c];
    for ch in 0..c {
        let is = invstd[ch] as f64;
        let gi = gamma[ch] as f64 * is;
        let b = |s2: f64, m: f64| -gi * is * is * s2 / m;
        let k = |s1: f64, m: f64| -gi * s1 / m;
        let (s1, s2) = (buf[ch], buf[c + ch]);
        db[ch] = (b(s2, total) - b(local[c + ch], m)) as f32;
        dk[ch] = (k(s1, total) - k(local[ch], m)) as f32;
        dbeta[ch] = (s1 / ranks) as f32;
        dgamma[ch] = (s2 * is / ranks) as f32;
    }
    dx.par_chunks_mut(c * 64)
        .zip(x.par_chunks(c * 64))
        .for_each(|(d, xs)| {
            for (d_row, x_row) in d.chunks_exact_mut(c).zip(xs.chunks_exact(c)) {
                for ch in 0..c {
                    d_row[ch] += (x_row[ch] - mean[ch]) * db[ch] + dk[ch];
                }
            }
        });
}
