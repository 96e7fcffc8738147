//! The training loop: epochs over a seeded loader, the chapter's per-epoch line, evaluation with BN running
//! statistics, metrics, a training-curve plot, and atomic checkpoints that a run resumes from exactly.
//!
//! A run directory holds:
//! - `model.safetensors`: the model alone, PyTorch's keys and layouts (loads with `load_state_dict(strict=True)`);
//! - `checkpoint.safetensors`: model + optimizer state + progress, the one file `--resume` reads (written
//!   atomically, so a crash leaves the previous epoch's checkpoint);
//! - `metrics.jsonl` (one JSON object per epoch) and `curve.svg` (loss, train and test accuracy per epoch).
//!
//! One file, one job: `config` (what determines a run), `recipe` (named bundles of its settings), `data` (what
//! it trains on), `run` (create, resume, the epoch loop, checkpoints), `distributed` (a rank's part in a
//! data-parallel job), `ema` (the weight average), `evaluate` (and `tta`, its flip test-time augmentation),
//! `metrics`, `progress` (the bar), `plot` (the curve) and `lock` (the run directory's lock).

mod config;
mod data;
mod distributed;
mod ema;
mod evaluate;
mod lock;
mod metrics;
mod plot;
mod progress;
mod recipe;
mod run;
mod tta;

pub use config::{
    DataSettings, OptimSettings, RunSettings, TrainConfig, CHAPTER_RESIZE, FASHION_MNIST_MEAN_STD,
    MAX_BATCH, MAX_BATCH_VALUES, NATIVE_SIZE,
};
pub use data::Data;
pub use distributed::{check_identity, run_identity, Distributed};
pub use ema::{average_into, Ema};
pub use evaluate::{argmax, evaluate, evaluate_on, Evaluation};
pub use metrics::{DistStats, EpochMetrics, Progress};
pub use plot::curve_svg;
pub use progress::ProgressMode;
pub use recipe::{Recipe, Settings};
pub use run::{Restored, Run, Step};
pub use tta::forward_flip_tta;
