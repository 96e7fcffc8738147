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
    /// Seconds of training and evaluation since the run started, up to the end of this epoch (summed over
    /// resumed sessions; the time to reach an accuracy, DAWNBench's measure).
    #[serde(default)]
    pub elapsed_sec: f64,
    /// A data-parallel run's communication, as rank 0 measured it (absent for a single process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dist: Option<DistStats>,
}

/// What a data-parallel epoch spent, measured on rank 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistStats {
    /// Ranks in the job.
    pub ranks: usize,
    /// Training steps in the epoch.
    pub steps: usize,
    /// Mean seconds per step of forward, backward and optimizer step (including the share of batch norm's
    /// synchronized sums with `--sync-bn`).
    pub compute_sec_per_step: f64,
    /// Mean seconds per step of the gradient allreduce that the step waited for: with one flat buffer the
    /// whole allreduce after the backward pass, with buckets what was left of it when the backward pass
    /// ended. Includes waiting for the slowest rank as well as the transfer.
    pub allreduce_sec_per_step: f64,
    /// Bytes each rank contributes to the gradient allreduce per step.
    pub allreduce_bytes_per_step: usize,
    /// Allreduces of gradients per step: 1 for the flat buffer, else the number of buckets.
    #[serde(default = "one")]
    pub allreduces_per_step: usize,
}

fn one() -> usize {
    1
}

impl DistStats {
    /// `2 ranks: compute 1.234 s/step, allreduce 0.045 s/step, 44.7 MB allreduced per step in 1 allreduce`.
    pub fn line(&self) -> String {
        format!(
            "{} ranks: compute {:.3} s/step, allreduce {:.3} s/step, {:.1} MB allreduced per step in {} allreduce{}",
            self.ranks,
            self.compute_sec_per_step,
            self.allreduce_sec_per_step,
            self.allreduce_bytes_per_step as f64 / 1e6,
            self.allreduces_per_step,
            if self.allreduces_per_step == 1 { "" } else { "s" }
        )
    }
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

impl Progress {
    /// The progress without what the clock measured (times, throughput, a data-parallel epoch's
    /// communication): what the checkpoint stores, so that equal runs write equal bytes. The measured
    /// figures live in `metrics.jsonl`.
    pub fn without_timings(&self) -> Progress {
        let history = self
            .history
            .iter()
            .map(|m| EpochMetrics {
                time_sec: 0.0,
                images_per_sec: 0.0,
                elapsed_sec: 0.0,
                dist: None,
                ..m.clone()
            })
            .collect();
        Progress {
            epochs_done: self.epochs_done,
            history,
        }
    }

    /// Takes each epoch's measured figures back from `logged` (a run's `metrics.jsonl`), where an entry of the
    /// same epoch has the same loss and accuracies (a log of another run is ignored).
    pub fn restore_timings(&mut self, logged: &[EpochMetrics]) {
        for m in &mut self.history {
            let same = |l: &&EpochMetrics| {
                l.epoch == m.epoch
                    && l.loss.to_bits() == m.loss.to_bits()
                    && l.train_acc.to_bits() == m.train_acc.to_bits()
                    && l.test_acc.to_bits() == m.test_acc.to_bits()
            };
            if let Some(l) = logged.iter().find(same) {
                m.time_sec = l.time_sec;
                m.images_per_sec = l.images_per_sec;
                m.elapsed_sec = l.elapsed_sec;
                m.dist = l.dist.clone();
            }
        }
    }
}
