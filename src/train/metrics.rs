//! What a run records: each epoch's metrics and the progress stored in the checkpoint.

use serde::{Deserialize, Serialize};

/// One epoch's results, as printed and logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's batches.
    pub loss: f64,
    /// Fraction of training images classified correctly during the epoch (training mode, as the weights moved).
    pub train_acc: f64,
    /// Fraction of test images classified correctly after the epoch (eval mode, BN running statistics).
    pub test_acc: f64,
    /// Seconds for the epoch's training and its test evaluation.
    pub time_sec: f64,
    /// Training throughput: training images over the training time (evaluation excluded).
    pub images_per_sec: f64,
    /// Learning rate of the epoch's last step (after the schedule).
    pub lr: f64,
}

impl EpochMetrics {
    /// The chapter's line: `epoch 1, loss 0.3812, train acc 0.853, test acc 0.885, time 310.0 sec`.
    pub fn line(&self) -> String {
        format!(
            "epoch {}, loss {:.4}, train acc {:.3}, test acc {:.3}, time {:.1} sec",
            self.epoch, self.loss, self.train_acc, self.test_acc, self.time_sec
        )
    }
}

/// Progress stored in the checkpoint: finished epochs and their metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs finished and checkpointed; a resumed run starts at this epoch (0-based).
    pub epochs_done: usize,
    /// Metrics of each finished epoch, in order.
    pub history: Vec<EpochMetrics>,
}
