//! Batch normalization over NHWC matrices `x [rows, c]` (statistics per channel over all `rows = n·h·w`),
//! with the following ReLU optionally fused into the same pass, forward and backward.

use super::piece_len;
use rayon::prelude::*;

/// Per-channel sums over rows: `f(row, a [c], b [c])` adds row `row`'s terms into the two accumulators;
/// reduced in f64, returns `[Σa (c), Σb (c)]`. `f` works on whole rows so its loop over channels vectorizes.
fn channel_sums2<F>(rows: usize, c: usize, f: F) -> Vec<f64>
where
    F: Fn(usize, &mut [f32], &mut [f32]) + Sync,
{
    let piece = piece_len(rows, 32);
    (0..rows.div_ceil(piece))
        .into_par_iter()
        .map(|p| {
            let mut acc = vec![0.0f64; 2 * c];
            let (s1, s2) = acc.split_at_mut(c);
            // Accumulate each row in f32 lanes in blocks, then fold into f64: vectorizes, keeps precision.
            let mut blk1 = vec![0.0f32; c];
            let mut blk2 = vec![0.0f32; c];
            let end = ((p + 1) * piece).min(rows);
            let mut r = p * piece;
            while r < end {
                let stop = (r + 16).min(end);
                blk1.fill(0.0);
                blk2.fill(0.0);
                for row in r..stop {
                    f(row, &mut blk1, &mut blk2);
                }
                for ch in 0..c {
                    s1[ch] += blk1[ch] as f64;
                    s2[ch] += blk2[ch] as f64;
                }
                r = stop;
            }
            acc
        })
        .collect::<Vec<_>>()
        // Summed in piece order, not as the threads finish: the result is the same bits on every run, which
        // is what lets a resumed training run end exactly where an uninterrupted one does.
        .into_iter()
        .fold(vec![0.0f64; 2 * c], |mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        })
}

/// Training-mode statistics of `x [rows, c]`: writes `mean [c]` and the biased variance `var [c]`
/// (the one PyTorch normalizes with). Two passes (mean, then squared deviations): a one-pass `E[x²] − mean²`
/// loses the variance of nearly constant channels (measured: the reduced-width golden network's last stage,
/// whose batch variance is 4.8e-8, drifts past its tolerance).
pub fn batch_stats(x: &[f32], c: usize, mean: &mut [f32], var: &mut [f32]) {
    let rows = x.len() / c;
    let sums = channel_sums2(rows, c, |r, s1, _| {
        for (a, &v) in s1.iter_mut().zip(&x[r * c..][..c]) {
            *a += v;
        }
    });
    for ch in 0..c {
        mean[ch] = (sums[ch] / rows as f64) as f32;
    }
    let sq = channel_sums2(rows, c, |r, s1, _| {
        for ((a, &v), &m) in s1.iter_mut().zip(&x[r * c..][..c]).zip(&mean[..c]) {
            *a += (v - m) * (v - m);
        }
    });
    for ch in 0..c {
        var[ch] = (sq[ch] / rows as f64) as f32;
    }
}

/// `y = gamma·(x − mean)·invstd + beta` per channel, then `max(·, 0)` when `relu`.
/// `x`, `y`: `[rows, c]`; `mean`, `invstd`, `gamma`, `beta`: `[c]`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_apply(
    x: &[f32],
    c: usize,
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    relu: bool,
    y: &mut [f32],
) {
    let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * invstd[ch]).collect();
    let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - mean[ch] * scale[ch]).collect();
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
/// `out = max(gamma·(x − mean)·invstd + beta + shortcut, 0)`, rounded as [`batch_norm_apply`] followed by
/// [`super::pointwise::add_relu_forward`] would round it, without writing the normalized activation.
/// `x`, `shortcut`, `out`: `[rows, c]`; `mean`, `invstd`, `gamma`, `beta`: `[c]`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_add_relu(
    x: &[f32],
    c: usize,
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    shortcut: &[f32],
    out: &mut [f32],
) {
    let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * invstd[ch]).collect();
    let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - mean[ch] * scale[ch]).collect();
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

/// Backward of [`batch_norm_apply`] with training-mode statistics (the batch's own mean and invstd).
/// When `relu`, `y` is the forward output and the gradient is first masked by `y > 0`.
/// Writes `dx [rows, c]`, `dgamma [c]`, `dbeta [c]`.
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
) {
    let coeffs = backward_coefficients(x, y, dy, c, mean, invstd, gamma, relu, dgamma, dbeta);
    apply_backward(x, y, Some(dy), c, mean, relu, &coeffs, dx);
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
) {
    let coeffs = backward_coefficients(x, y, dy_dx, c, mean, invstd, gamma, relu, dgamma, dbeta);
    apply_backward(x, y, None, c, mean, relu, &coeffs, dy_dx);
}

/// Per-channel `(a, b, k)` of `dx = g·a + (x−mean)·b + k`; writes `dgamma` and `dbeta`.
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
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = x.len() / c;
    let sums = channel_sums2(rows, c, |r, s1, s2| {
        let (xr, yr, dyr) = (&x[r * c..][..c], &y[r * c..][..c], &dy[r * c..][..c]);
        for ch in 0..c {
            let g = if !relu || yr[ch] > 0.0 { dyr[ch] } else { 0.0 };
            s1[ch] += g;
            s2[ch] += g * (xr[ch] - mean[ch]);
        }
    });
    let m = rows as f64;
    // dx = gamma·invstd·(g − Σg/M − (x−mean)·invstd²·Σ(g·(x−mean))/M), as  g·a + (x−mean)·b + k  per channel.
    let mut a = vec![0.0f32; c];
    let mut b = vec![0.0f32; c];
    let mut k = vec![0.0f32; c];
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
    (a, b, k)
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
    (a, b, k): &(Vec<f32>, Vec<f32>, Vec<f32>),
    dx: &mut [f32],
) {
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

    #[test]
    fn fused_add_relu_matches_apply_then_join() {
        let (rows, c) = (200, 7);
        let x: Vec<f32> = (0..rows * c)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let shortcut: Vec<f32> = (0..rows * c)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 9.0)
            .collect();
        let mean: Vec<f32> = (0..c).map(|ch| ch as f32 * 0.3 - 0.5).collect();
        let invstd: Vec<f32> = (0..c).map(|ch| 0.2 + ch as f32 * 0.1).collect();
        let gamma: Vec<f32> = (0..c).map(|ch| 1.0 - ch as f32 * 0.15).collect();
        let beta: Vec<f32> = (0..c).map(|ch| ch as f32 * 0.05 - 0.1).collect();
        let mut normalized = vec![0.0; rows * c];
        batch_norm_apply(&x, c, &mean, &invstd, &gamma, &beta, false, &mut normalized);
        let mut want = vec![0.0; rows * c];
        crate::kernels::pointwise::add_relu_forward(&normalized, &shortcut, &mut want);
        let mut got = vec![f32::NAN; rows * c];
        batch_norm_add_relu(&x, c, &mean, &invstd, &gamma, &beta, &shortcut, &mut got);
        assert_eq!(got, want);
        assert!(want.iter().any(|v| *v > 0.0) && want.contains(&0.0));
    }

    #[test]
    fn in_place_backward_is_bit_identical() {
        let (rows, c) = (300, 5);
        let x: Vec<f32> = (0..rows * c)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let dy: Vec<f32> = (0..rows * c)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 11.0)
            .collect();
        let mean: Vec<f32> = (0..c).map(|ch| ch as f32 * 0.3 - 0.5).collect();
        let invstd: Vec<f32> = (0..c).map(|ch| 0.2 + ch as f32 * 0.1).collect();
        let gamma: Vec<f32> = (0..c).map(|ch| 1.0 - ch as f32 * 0.15).collect();
        for relu in [false, true] {
            let y: Vec<f32> = x
                .iter()
                .map(|v| if relu { v.max(0.0) } else { *v })
                .collect();
            let (mut dx, mut dg, mut db) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
            batch_norm_backward(
                &x, &y, &dy, c, &mean, &invstd, &gamma, relu, &mut dx, &mut dg, &mut db,
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
            );
            assert_eq!(dx, inplace);
            assert_eq!((dg, db), (dg2, db2));
            assert!(dx.iter().any(|v| *v != 0.0));
        }
    }
}
