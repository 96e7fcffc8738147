//! Batch normalization over NHWC matrices `x [rows, c]` (statistics per channel over all `rows = n·h·w`),
//! with the following ReLU optionally fused into the same pass, forward and backward.

use super::piece_len;
use rayon::prelude::*;

/// Rows per piece of [`channel_sums2`]. Fixed, so the partial sums and the bits of their in-order total depend on
/// the data alone, never on the thread count (which is what lets a resumed training run end exactly where an
/// uninterrupted one does).
const SUM_PIECE_ROWS: usize = 1024;
/// Channels a piece accumulates at a time in f32 stack accumulators (all of them, for the chapter's widths).
const SUM_CHANNEL_BLOCK: usize = 512;

/// Length of the f64 scratch `sums` that [`batch_stats`], [`batch_norm_backward`] and
/// [`batch_norm_backward_in_place`] need for `x [rows, c]`: the totals `[2, c]`, then one `[2, c]` partial per
/// piece of rows.
pub fn sums_scratch_len(rows: usize, c: usize) -> usize {
    2 * c * (1 + rows.div_ceil(SUM_PIECE_ROWS))
}

/// Per-channel sums over rows, written to `sums[..c]` and `sums[c..2c]`: `f(row, c0, a, b)` adds row `row`'s terms
/// for channels `c0 .. c0 + a.len()` into the two accumulators. Pieces of [`SUM_PIECE_ROWS`] rows run in parallel,
/// each over whole rows (long, vectorizing channel loops) in f32 blocks of 16 rows folded into its f64 partial in
/// `sums` (length [`sums_scratch_len`]); the partials are then added in piece order. Nothing is allocated.
fn channel_sums2<F>(rows: usize, c: usize, sums: &mut [f64], f: F)
where
    F: Fn(usize, usize, &mut [f32], &mut [f32]) + Sync,
{
    let pieces = rows.div_ceil(SUM_PIECE_ROWS);
    let (totals, partials) = sums[..sums_scratch_len(rows, c)].split_at_mut(2 * c);
    partials
        .par_chunks_mut(2 * c)
        .enumerate()
        .for_each(|(p, part)| {
            let (p1, p2) = part.split_at_mut(c);
            p1.fill(0.0);
            p2.fill(0.0);
            let end = ((p + 1) * SUM_PIECE_ROWS).min(rows);
            let mut blk1 = [0.0f32; SUM_CHANNEL_BLOCK];
            let mut blk2 = [0.0f32; SUM_CHANNEL_BLOCK];
            for c0 in (0..c).step_by(SUM_CHANNEL_BLOCK) {
                let len = SUM_CHANNEL_BLOCK.min(c - c0);
                let mut r = p * SUM_PIECE_ROWS;
                while r < end {
                    let stop = (r + 16).min(end);
                    blk1[..len].fill(0.0);
                    blk2[..len].fill(0.0);
                    for row in r..stop {
                        f(row, c0, &mut blk1[..len], &mut blk2[..len]);
                    }
                    for ch in 0..len {
                        p1[c0 + ch] += blk1[ch] as f64;
                        p2[c0 + ch] += blk2[ch] as f64;
                    }
                    r = stop;
                }
            }
        });
    totals.fill(0.0);
    for part in partials[..pieces * 2 * c].chunks_exact(2 * c) {
        for (t, &v) in totals.iter_mut().zip(part) {
            *t += v;
        }
    }
}

/// Training-mode statistics of `x [rows, c]`: writes `mean [c]` and the biased variance `var [c]`
/// (the one PyTorch normalizes with). Two passes (mean, then squared deviations): a one-pass `E[x²] − mean²`
/// loses the variance of nearly constant channels (measured: the reduced-width golden network's last stage,
/// whose batch variance is 4.8e-8, drifts past its tolerance). `sums`: scratch of [`sums_scratch_len`].
pub fn batch_stats(x: &[f32], c: usize, mean: &mut [f32], var: &mut [f32], sums: &mut [f64]) {
    let rows = x.len() / c;
    channel_sums2(rows, c, sums, |r, c0, a, _| {
        for (a, &v) in a.iter_mut().zip(&x[r * c + c0..]) {
            *a += v;
        }
    });
    for ch in 0..c {
        mean[ch] = (sums[ch] / rows as f64) as f32;
    }
    channel_sums2(rows, c, sums, |r, c0, a, _| {
        for ((a, &v), &m) in a.iter_mut().zip(&x[r * c + c0..]).zip(&mean[c0..]) {
            *a += (v - m) * (v - m);
        }
    });
    for ch in 0..c {
        var[ch] = (sums[ch] / rows as f64) as f32;
    }
}

/// The per-channel affine map of a normalization, `scale = gamma·invstd` and `shift = beta − mean·scale`, each
/// `[c]` (what [`batch_norm_apply`] applies).
pub fn batch_norm_affine(
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    scale: &mut [f32],
    shift: &mut [f32],
) {
    for ch in 0..scale.len() {
        scale[ch] = gamma[ch] * invstd[ch];
        shift[ch] = beta[ch] - mean[ch] * scale[ch];
    }
}

/// `y = x·scale + shift` per channel (a normalization, see [`batch_norm_affine`]), then `max(·, 0)` when
/// `relu`. `x`, `y`: `[rows, c]`; `scale`, `shift`: `[c]`.
pub fn batch_norm_apply(
    x: &[f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    relu: bool,
    y: &mut [f32],
) {
    let rows = x.len() / c;
    let piece = piece_len(rows, 64) * c;
    super::par_pieces(y, piece, |i, out| {
        let xin = &x[i * piece..][..out.len()];
        for (o_row, x_row) in out.chunks_exact_mut(c).zip(xin.chunks_exact(c)) {
            for ch in 0..c {
                let v = x_row[ch] * scale[ch] + shift[ch];
                o_row[ch] = if relu { v.max(0.0) } else { v };
            }
        }
    });
}

/// The residual join fused into the block's second batch norm:
/// `out = max(x·scale + shift + shortcut, 0)` (see [`batch_norm_affine`]), rounded as [`batch_norm_apply`]
/// followed by [`super::pointwise::add_relu_forward`] would round it, without writing the normalized activation.
/// `x`, `shortcut`, `out`: `[rows, c]`; `scale`, `shift`: `[c]`.
pub fn batch_norm_add_relu(
    x: &[f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    shortcut: &[f32],
    out: &mut [f32],
) {
    let rows = x.len() / c;
    let piece = piece_len(rows, 64) * c;
    super::par_pieces(out, piece, |i, o| {
        let xin = &x[i * piece..][..o.len()];
        let sin = &shortcut[i * piece..][..o.len()];
        for ((o_row, x_row), s_row) in o
            .chunks_exact_mut(c)
            .zip(xin.chunks_exact(c))
            .zip(sin.chunks_exact(c))
        {
            for ch in 0..c {
                let v = x_row[ch] * scale[ch] + shift[ch];
                o_row[ch] = (v + s_row[ch]).max(0.0);
            }
        }
    });
}

/// Input gradient of [`batch_norm_apply`] in eval mode (running statistics: the map is a fixed affine one per
/// channel), in place: `grad = grad·scale` per channel, and 0 where `relu` and the forward output `y <= 0`.
/// No parameter gradient (an explanation needs none). `y`, `grad`: `[rows, c]`; `scale`: `[c]`.
pub fn batch_norm_eval_backward_in_place(y: &[f32], grad: &mut [f32], scale: &[f32], relu: bool) {
    let c = scale.len();
    let rows = grad.len() / c;
    let piece = piece_len(rows, 64) * c;
    super::par_pieces(grad, piece, |i, g| {
        let yin = &y[i * piece..][..g.len()];
        for (g_row, y_row) in g.chunks_exact_mut(c).zip(yin.chunks_exact(c)) {
            for ch in 0..c {
                g_row[ch] = if relu && y_row[ch] <= 0.0 {
                    0.0
                } else {
                    g_row[ch] * scale[ch]
                };
            }
        }
    });
}

/// Backward of [`batch_norm_apply`] with training-mode statistics (the batch's own mean and invstd).
/// When `relu`, `y` is the forward output and the gradient is first masked by `y > 0`.
/// Writes `dx [rows, c]`, `dgamma [c]`, `dbeta [c]`; `sums` is scratch of [`sums_scratch_len`], `coeffs` holds `3·c` f32.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    c: usize,
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    relu: bool,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    sums: &mut [f64],
    coeffs: &mut [f32],
) {
    backward_coefficients(
        x, y, dy, c, mean, invstd, gamma, relu, dgamma, dbeta, sums, coeffs,
    );
    apply_backward(x, y, Some(dy), c, mean, relu, coeffs, dx);
}

/// [`batch_norm_backward`] writing `dx` over `dy_dx` (which holds `dy` on entry): the same arithmetic, bit for
/// bit, without a second activation-sized buffer.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_in_place(
    x: &[f32],
    y: &[f32],
    dy_dx: &mut [f32],
    c: usize,
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    relu: bool,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    sums: &mut [f64],
    coeffs: &mut [f32],
) {
    backward_coefficients(
        x, y, dy_dx, c, mean, invstd, gamma, relu, dgamma, dbeta, sums, coeffs,
    );
    apply_backward(x, y, None, c, mean, relu, coeffs, dy_dx);
}

/// Per-channel `(a, b, k)` of `dx = g·a + (x−mean)·b + k`, written to `coeffs [3, c]`; writes `dgamma` and
/// `dbeta`. `sums`: scratch of [`sums_scratch_len`].
#[allow(clippy::too_many_arguments)]
fn backward_coefficients(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    c: usize,
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    relu: bool,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    sums: &mut [f64],
    coeffs: &mut [f32],
) {
    let rows = x.len() / c;
    channel_sums2(rows, c, sums, |r, c0, s1, s2| {
        let n = s1.len();
        let at = r * c + c0;
        let (xr, yr, dyr) = (&x[at..][..n], &y[at..][..n], &dy[at..][..n]);
        for ch in 0..n {
            let g = if !relu || yr[ch] > 0.0 { dyr[ch] } else { 0.0 };
            s1[ch] += g;
            s2[ch] += g * (xr[ch] - mean[c0 + ch]);
        }
    });
    let m = rows as f64;
    // dx = gamma·invstd·(g − Σg/M − (x−mean)·invstd²·Σ(g·(x−mean))/M), as  g·a + (x−mean)·b + k  per channel.
    let (a, rest) = coeffs[..3 * c].split_at_mut(c);
    let (b, k) = rest.split_at_mut(c);
    for ch in 0..c {
        let (s1, s2) = (sums[ch], sums[c + ch]);
        let is = invstd[ch] as f64;
        let gi = gamma[ch] as f64 * is;
        dbeta[ch] = s1 as f32;
        dgamma[ch] = (s2 * is) as f32;
        let bb = -gi * is * is * s2 / m;
        a[ch] = gi as f32;
        b[ch] = bb as f32;
        k[ch] = (-gi * s1 / m) as f32;
    }
}

/// `dx = g·a + (x−mean)·b + k`, `g` being `dy` masked by `y > 0` when `relu`. `dy` is read from `dy` when given,
/// else from `dx` itself (in place); each row of `dy` is first copied into `dx`, so both ways run the same arithmetic.
#[allow(clippy::too_many_arguments)]
fn apply_backward(
    x: &[f32],
    y: &[f32],
    dy: Option<&[f32]>,
    c: usize,
    mean: &[f32],
    relu: bool,
    coeffs: &[f32],
    dx: &mut [f32],
) {
    let (a, b, k) = (&coeffs[..c], &coeffs[c..2 * c], &coeffs[2 * c..3 * c]);
    let rows = x.len() / c;
    let piece = piece_len(rows, 64) * c;
    super::par_pieces(dx, piece, |i, out| {
        let base = i * piece;
        for (r, o_row) in out.chunks_exact_mut(c).enumerate() {
            let row = base + r * c;
            if let Some(dy) = dy {
                o_row.copy_from_slice(&dy[row..][..c]);
            }
            let (xr, yr) = (&x[row..][..c], &y[row..][..c]);
            for ch in 0..c {
                let g = if !relu || yr[ch] > 0.0 {
                    o_row[ch]
                } else {
                    0.0
                };
                o_row[ch] = g * a[ch] + (xr[ch] - mean[ch]) * b[ch] + k[ch];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic `x` and a second activation-sized input `[rows, c]`, and per-channel `mean`, `invstd`,
    /// `gamma` `[c]`.
    #[allow(clippy::type_complexity)]
    fn fixture(rows: usize, c: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = (0..rows * c)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let other = (0..rows * c)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 11.0)
            .collect();
        let mean = (0..c).map(|ch| ch as f32 * 0.3 - 0.5).collect();
        let invstd = (0..c).map(|ch| 0.2 + ch as f32 * 0.1).collect();
        let gamma = (0..c).map(|ch| 1.0 - ch as f32 * 0.15).collect();
        (x, other, mean, invstd, gamma)
    }

    #[test]
    fn fused_add_relu_matches_apply_then_join() {
        let (rows, c) = (200, 7);
        let (x, shortcut, mean, invstd, gamma) = fixture(rows, c);
        let beta: Vec<f32> = (0..c).map(|ch| ch as f32 * 0.05 - 0.1).collect();
        let (mut scale, mut shift) = (vec![0.0; c], vec![0.0; c]);
        batch_norm_affine(&mean, &invstd, &gamma, &beta, &mut scale, &mut shift);
        let mut normalized = vec![0.0; rows * c];
        batch_norm_apply(&x, c, &scale, &shift, false, &mut normalized);
        let mut want = vec![0.0; rows * c];
        crate::kernels::pointwise::add_relu_forward(&normalized, &shortcut, &mut want);
        let mut got = vec![f32::NAN; rows * c];
        batch_norm_add_relu(&x, c, &scale, &shift, &shortcut, &mut got);
        assert_eq!(got, want);
        assert!(want.iter().any(|v| *v > 0.0) && want.contains(&0.0));
    }

    #[test]
    fn in_place_backward_is_bit_identical() {
        let (rows, c) = (300, 5);
        let (x, dy, mean, invstd, gamma) = fixture(rows, c);
        for relu in [false, true] {
            let y: Vec<f32> = x
                .iter()
                .map(|v| if relu { v.max(0.0) } else { *v })
                .collect();
            let (mut dx, mut dg, mut db) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
            let (mut sums, mut coeffs) =
                (vec![0.0f64; sums_scratch_len(rows, c)], vec![0.0f32; 3 * c]);
            batch_norm_backward(
                &x,
                &y,
                &dy,
                c,
                &mean,
                &invstd,
                &gamma,
                relu,
                &mut dx,
                &mut dg,
                &mut db,
                &mut sums,
                &mut coeffs,
            );
            let (mut inplace, mut dg2, mut db2) = (dy.clone(), vec![0.0; c], vec![0.0; c]);
            batch_norm_backward_in_place(
                &x,
                &y,
                &mut inplace,
                c,
                &mean,
                &invstd,
                &gamma,
                relu,
                &mut dg2,
                &mut db2,
                &mut sums,
                &mut coeffs,
            );
            assert_eq!(dx, inplace);
            assert_eq!((dg, db), (dg2, db2));
            assert!(dx.iter().any(|v| *v != 0.0));
        }
    }
}
