//! Softmax cross-entropy, PyTorch's `CrossEntropyLoss` with mean reduction.

/// For `logits [n, k]` and `labels [n]` (each `< k`): returns the mean over the batch of `−log softmax(logits)[label]`
/// and the number of rows whose arg-max equals the label; writes `dlogits [n, k] = (softmax − onehot) / n`.
pub fn softmax_cross_entropy(
    n: usize,
    k: usize,
    logits: &[f32],
    labels: &[usize],
    dlogits: &mut [f32],
) -> (f32, usize) {
    let mut total = 0.0f64;
    let mut correct = 0;
    let inv_n = 1.0 / n as f32;
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
        total += log_sum - (z[labels[i]] - best) as f64;
        for (j, (dj, &v)) in d.iter_mut().zip(z).enumerate() {
            let p = (((v - best) as f64).exp() / sum) as f32;
            *dj = (p - if j == labels[i] { 1.0 } else { 0.0 }) * inv_n;
        }
    }
    ((total / n as f64) as f32, correct)
}
