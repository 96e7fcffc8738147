//! Softmax cross-entropy, PyTorch's `CrossEntropyLoss(label_smoothing=eps)` with mean reduction.

/// For `logits [n, k]` and `labels [n]` (each `< k`) and `label_smoothing = eps` in `[0, 1)`: returns the mean over
/// the batch of `(1 − eps)·(−log softmax(logits)[label]) + eps·mean_j(−log softmax(logits)[j])` and the number of
/// rows whose arg-max equals the label; writes `dlogits [n, k] = (softmax − ((1 − eps)·onehot + eps/k)) / n`.
///
/// With `eps = 0` this is the plain cross-entropy, computed by exactly the operations it always was (the smoothing
/// term is skipped, and the target `1 − 0 + 0/k` is exactly 1), so the chapter's results stay bit-identical.
pub fn softmax_cross_entropy(
    n: usize,
    k: usize,
    logits: &[f32],
    labels: &[usize],
    label_smoothing: f32,
    dlogits: &mut [f32],
) -> (f32, usize) {
    let eps = label_smoothing;
    let mut total = 0.0f64;
    let mut correct = 0;
    let inv_n = 1.0 / n as f32;
    // The smoothed target: `off` on every class, `on = 1 − eps + eps/k` on the label.
    let off = eps / k as f32;
    let on = 1.0 - eps + off;
    for i in 0..n {
        let z = &logits[i * k..][..k];
        let d = &mut dlogits[i * k..][..k];
        let (mut best, mut arg) = (f32::NEG_INFINITY, 0);
        for (j, &v) in z.iter().enumerate() {
            if v > best {
                best = v;
                arg = j;
            }
        }
        if arg == labels[i] {
            correct += 1;
        }
        let sum: f64 = z.iter().map(|&v| ((v - best) as f64).exp()).sum();
        let log_sum = sum.ln();
        let nll = log_sum - (z[labels[i]] - best) as f64;
        if eps == 0.0 {
            total += nll;
        } else {
            // mean_j(−log softmax_j) = log_sum − mean_j(z_j − best).
            let mean_shifted = z.iter().map(|&v| (v - best) as f64).sum::<f64>() / k as f64;
            let eps = eps as f64;
            total += (1.0 - eps) * nll + eps * (log_sum - mean_shifted);
        }
        for (j, (dj, &v)) in d.iter_mut().zip(z).enumerate() {
            let p = (((v - best) as f64).exp() / sum) as f32;
            *dj = (p - if j == labels[i] { on } else { off }) * inv_n;
        }
    }
    ((total / n as f64) as f32, correct)
}
