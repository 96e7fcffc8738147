//! Label smoothing against PyTorch: `tests/golden/label_smoothing.safetensors`, written by
//! `tools/make_loss_golden.py` (torch 2.15.0, CPU): `nn.CrossEntropyLoss(label_smoothing=eps)` with mean
//! reduction and `logits.grad` of that mean, for eps 0, 0.1 and 0.3 on three batches, computed by torch in float32
//! and in float64 (rounded to float32: the `_exact` tensors).
//!
//! Tolerances: the loss within 1e-6 relative of both (measured ≤ 8e-8: ours accumulates in f64). The gradient
//! within 3e-8 absolute of torch's float64 values (measured ≤ 1.5e-8, about an ulp of the largest entries) and
//! within 5e-7 of torch's float32 ones: with k = 1000 classes, torch's float32 autograd of the smoothing term
//! (`k·softmax − 1`) is itself 2.1e-7 from its float64 result, and ours 1e-8. The measured differences are
//! printed (`cargo test --test golden_loss -- --nocapture`).

mod common;
use common::Golden;
use resnet::kernels::loss::softmax_cross_entropy;
use resnet::nn::{Buffers, ResNet, ResNetConfig, Stem};
use resnet::Shape4;

const CASES: [&str; 3] = ["small", "wide", "binary"];

#[test]
fn label_smoothing_matches_pytorch() {
    let g = Golden::load("label_smoothing.safetensors");
    let eps = g.f32("eps");
    assert_eq!(eps.len(), 3);
    let (mut worst_loss, mut worst_grad, mut worst_exact) = (0.0f64, 0.0f32, 0.0f32);
    for case in CASES {
        let logits = g.f32(&format!("{case}.logits"));
        let labels: Vec<usize> = g
            .i64(&format!("{case}.labels"))
            .iter()
            .map(|&l| l as usize)
            .collect();
        let (n, k) = (labels.len(), logits.len() / labels.len());
        for (e, &eps) in eps.iter().enumerate() {
            let want_loss = g.f32(&format!("{case}.eps{e}.loss"))[0];
            let exact_loss = g.f32(&format!("{case}.eps{e}.loss_exact"))[0];
            let want_grad = g.f32(&format!("{case}.eps{e}.dlogits"));
            let exact_grad = g.f32(&format!("{case}.eps{e}.dlogits_exact"));
            let mut grad = vec![f32::NAN; n * k];
            let (loss, _) = softmax_cross_entropy(n, k, &logits, &labels, eps, &mut grad);
            let rel = |want: f32| ((loss as f64 - want as f64) / want as f64).abs();
            let (rel_f32, rel_f64) = (rel(want_loss), rel(exact_loss));
            let abs = |want: &[f32]| {
                grad.iter()
                    .zip(want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max)
            };
            let (abs_f32, abs_f64) = (abs(&want_grad), abs(&exact_grad));
            println!(
                "{case:7} eps {eps:<10} loss {loss:.9} rel Δ {rel_f32:.2e} (f64: {rel_f64:.2e})  \
                 grad max|Δ| {abs_f32:.2e} (f64: {abs_f64:.2e})"
            );
            assert!(
                rel_f32 <= 1e-6 && rel_f64 <= 1e-6,
                "{case} eps {eps}: loss {loss} vs torch {want_loss} (f64 {exact_loss})"
            );
            assert!(
                abs_f64 <= 3e-8,
                "{case} eps {eps}: gradient max |Δ| {abs_f64:e} from f64"
            );
            assert!(
                abs_f32 <= 5e-7,
                "{case} eps {eps}: gradient max |Δ| {abs_f32:e}"
            );
            worst_loss = worst_loss.max(rel_f32).max(rel_f64);
            worst_grad = worst_grad.max(abs_f32);
            worst_exact = worst_exact.max(abs_f64);
        }
    }
    println!(
        "worst: loss relative {worst_loss:.2e}, gradient absolute {worst_grad:.2e} (from f64: {worst_exact:.2e})"
    );
}

/// Without smoothing the loss and gradient are those of the plain cross-entropy; the correct count never depends
/// on the smoothing.
#[test]
fn zero_smoothing_is_plain_cross_entropy() {
    let g = Golden::load("label_smoothing.safetensors");
    let logits = g.f32("small.logits");
    let labels: Vec<usize> = g.i64("small.labels").iter().map(|&l| l as usize).collect();
    let (n, k) = (labels.len(), logits.len() / labels.len());
    let mut plain = vec![0.0; n * k];
    let (l0, c0) = softmax_cross_entropy(n, k, &logits, &labels, 0.0, &mut plain);
    // The plain formula, written out: −log softmax[label] and softmax − onehot.
    let mut want = 0.0f64;
    for i in 0..n {
        let z = &logits[i * k..][..k];
        let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let s: f64 = z.iter().map(|&v| ((v - m) as f64).exp()).sum();
        want += s.ln() - (z[labels[i]] - m) as f64;
    }
    assert_eq!(l0, (want / n as f64) as f32);
    let mut smoothed = vec![0.0; n * k];
    let (_, c1) = softmax_cross_entropy(n, k, &logits, &labels, 0.3, &mut smoothed);
    assert_eq!(c0, c1);
    // Each gradient row sums to 0 (softmax and the target both sum to 1).
    for row in smoothed.chunks_exact(k) {
        assert!(row.iter().sum::<f32>().abs() < 1e-6);
    }
}

#[test]
fn resnet_refuses_bad_smoothing() {
    let config = ResNetConfig {
        widths: vec![4, 4, 4, 4],
        stem: Stem::Small,
        ..ResNetConfig::chapter(1, 3)
    };
    let mut net = ResNet::new(config, 0).unwrap();
    let x = vec![0.5f32; 2 * 8 * 8];
    net.forward(&x, Shape4::new(2, 1, 8, 8), Buffers::Own)
        .unwrap();
    let (plain, _) = net.loss(&[0, 2]).unwrap();
    let (zero, _) = net.loss_smoothed(&[0, 2], 0.0).unwrap();
    assert_eq!(plain, zero);
    net.loss_smoothed(&[0, 2], 0.5).unwrap();
    for bad in [-0.1, 1.0, 1.5, f32::NAN] {
        let err = net.loss_smoothed(&[0, 2], bad).unwrap_err().to_string();
        assert!(
            err.starts_with("label smoothing must be at least 0 and less than 1"),
            "{bad}: {err}"
        );
    }
}
