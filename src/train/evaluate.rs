//! Accuracy and confusion matrix of a network on a loader's data.

use super::tta::forward_flip_tta;
use crate::compiled::Classifier;
use crate::data::Loader;
use crate::nn::ResNet;
use crate::Result;

/// Accuracy and confusion matrix of `net` (eval mode, BN running statistics) on a dataset.
pub struct Evaluation {
    /// Fraction of images whose arg-max prediction equals the label (0 on an empty dataset).
    pub accuracy: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    /// Number of images evaluated.
    pub count: usize,
}

impl Evaluation {
    /// Accuracy of each true class (NaN-free: classes with no examples get 0).
    pub fn per_class(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let n: usize = row.iter().sum();
                if n == 0 {
                    0.0
                } else {
                    row[c] as f64 / n as f64
                }
            })
            .collect()
    }
}

/// Evaluates `net` in eval mode on `loader`'s data (in order, epoch 0); with `tta`, on the mean of the logits of
/// each image and its mirror ([`forward_flip_tta`]). Restores the previous mode.
pub fn evaluate(net: &mut ResNet, loader: &Loader, tta: bool) -> Result<Evaluation> {
    let was_train = net.is_train();
    net.set_train(false);
    let evaluation = evaluate_on(net, loader, tta);
    net.set_train(was_train);
    evaluation
}

/// [`evaluate`] on any [`Classifier`] (`resnet eval`: the compiled network).
pub fn evaluate_on(net: &mut impl Classifier, loader: &Loader, tta: bool) -> Result<Evaluation> {
    let k = net.classes();
    let mut confusion = vec![vec![0usize; k]; k];
    let mut correct = 0usize;
    let mut count = 0usize;
    for batch in loader.epoch(0) {
        let batch = batch?;
        // A rank's share of a short last batch of a data-parallel evaluation may be empty.
        if batch.labels.is_empty() {
            continue;
        }
        let averaged;
        let logits = if tta {
            averaged = forward_flip_tta(net, &batch.images, batch.shape)?;
            &averaged[..]
        } else {
            net.logits(&batch.images, batch.shape)?
        };
        for (row, &label) in logits.chunks_exact(k).zip(&batch.labels) {
            let pred = argmax(row);
            confusion[label][pred] += 1;
            correct += (pred == label) as usize;
            count += 1;
        }
    }
    Ok(Evaluation {
        accuracy: correct as f64 / count.max(1) as f64,
        confusion,
        count,
    })
}

/// Index of the largest value (first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
