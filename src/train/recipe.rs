//! Training recipes: named bundles of the flags that decide how well and how fast a run trains. `--recipe`
//! fills in every setting the command line leaves out; a flag given on the command line wins over the recipe.
//! `chapter` sets nothing, so a plain `resnet train` is the chapter's run.

use crate::nn::Stem;
use crate::optim::{OptimizerKind, Schedule};
use crate::{bail, Error, Result};
use clap::Args;
use std::fmt;
use std::str::FromStr;

/// A named recipe (`--recipe`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recipe {
    /// The chapter's run: 96×96, Adam 1e-3 at a constant rate, 5 epochs, no augmentation.
    #[default]
    Chapter,
    /// Above the chapter's accuracy in a quarter of its time: the small stem at 28×28 on a network of a quarter
    /// of the chapter's widths, one-cycle SGD, label smoothing, 6 epochs, no augmentation and so no flip TTA
    /// (a network that never saw a mirrored image is hurt by one; see the README's recipes).
    Fast,
    /// For the highest accuracy in at most 3 hours on 2 cores: the fast recipe's network at half the chapter's
    /// widths, with random erasing, 24 epochs of batch 128 (0.9498 ± 0.0010 over 3 seeds in about 2 h 15 min;
    /// see the README).
    Best,
}

impl Recipe {
    /// The command-line names, in order.
    pub const NAMES: [&'static str; 3] = ["chapter", "fast", "best"];

    /// The settings the recipe fills in where the command line gives none.
    pub fn settings(self) -> Settings {
        match self {
            Recipe::Chapter => Settings::default(),
            Recipe::Fast => Settings {
                epochs: Some(6),
                batch_size: Some(256),
                lr: Some(0.1),
                optimizer: Some(OptimizerKind::Sgd),
                momentum: Some(0.9),
                nesterov: Some(true),
                weight_decay: Some(5e-4),
                wd_skip_norm: Some(true),
                schedule: Some(Schedule::onecycle_default()),
                warmup_epochs: Some(0.0),
                resize: Some(28),
                augment: Some(false),
                normalize: Some(true),
                stem: Some(Stem::Small),
                widths: Some(vec![16, 32, 64, 128]),
                label_smoothing: Some(0.1),
                random_erasing: Some(0.0),
                ema: None,
                tta: Some(false),
            },
            // `fast` scaled up: twice the widths, four times the epochs, with the augmentation they leave room for.
            Recipe::Best => Settings {
                epochs: Some(24),
                batch_size: Some(128),
                widths: Some(vec![32, 64, 128, 256]),
                augment: Some(true),
                random_erasing: Some(0.5),
                tta: Some(true),
                ..Recipe::Fast.settings()
            },
        }
    }
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Recipe::NAMES[*self as usize])
    }
}

impl FromStr for Recipe {
    type Err = Error;
    fn from_str(s: &str) -> Result<Recipe> {
        Ok(match s {
            "chapter" => Recipe::Chapter,
            "fast" => Recipe::Fast,
            "best" => Recipe::Best,
            _ => bail!("unknown recipe `{s}`: expected one of chapter, fast, best"),
        })
    }
}

/// The settings a recipe decides, as `resnet train` flags; `None` leaves a setting to the recipe (and, last,
/// to the chapter's default). A switch given without a value (`--augment`) means `true`; `--augment=false`
/// turns off what a recipe turns on.
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct Settings {
    /// Epochs to train [chapter: 5]; with --resume, the total the run is extended to.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per batch, training and evaluation [chapter: 256].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base learning rate [chapter: 0.001].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// adam, adamw or sgd [chapter: adam].
    #[arg(long)]
    pub optimizer: Option<OptimizerKind>,
    /// SGD momentum.
    #[arg(long, allow_negative_numbers = true)]
    pub momentum: Option<f64>,
    /// SGD Nesterov momentum.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub nesterov: Option<bool>,
    /// Weight decay (L2 for adam and sgd, decoupled for adamw).
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f64>,
    /// No weight decay on the batch norms' weights and biases and on every bias (timm's rule: tensors of one
    /// dimension).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub wd_skip_norm: Option<bool>,
    /// constant, step, cosine or onecycle [chapter: constant].
    #[arg(long)]
    pub schedule: Option<Schedule>,
    /// Linear warm-up of the learning rate over this many epochs (fractions allowed), multiplying any schedule.
    #[arg(long, allow_negative_numbers = true)]
    pub warmup_epochs: Option<f64>,
    /// Resize images (shorter side) to N with the chapter's transforms [chapter: 96; 28 keeps Fashion-MNIST's
    /// size]; the crop size with `--transforms imagenet` (default 224).
    #[arg(long)]
    pub resize: Option<usize>,
    /// Random crop with padding and horizontal flip (the chapter's transforms; cifar and imagenet always augment).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub augment: Option<bool>,
    /// Normalize after ToTensor: with Fashion-MNIST's mean and std (0.2860, 0.3530) for one-channel IDX data,
    /// else with each channel's mean and std over the training images (computed once, stored in the run).
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        conflicts_with = "mean"
    )]
    pub normalize: Option<bool>,
    /// The stem: `imagenet` (7×7 stride 2 + max pool, the chapter's) or `small` (3×3 stride 1, no pool).
    #[arg(long, value_enum)]
    pub stem: Option<Stem>,
    /// Stage widths, for narrower networks than the named one's 64,128,256,512 (e.g. 16,32,64,128; the
    /// chapter's network takes any number of stages of 2 blocks).
    #[arg(long, value_delimiter = ',')]
    pub widths: Option<Vec<usize>>,
    /// Label smoothing of the loss, as `CrossEntropyLoss(label_smoothing=…)` [chapter: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub label_smoothing: Option<f32>,
    /// Erase a random rectangle of each training image with this probability (torchvision's RandomErasing,
    /// scale 0.02–0.33, ratio 0.3–3.3, value 0, after Normalize) [chapter: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub random_erasing: Option<f64>,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999), evaluated and saved in
    /// place of the raw weights.
    #[arg(long, allow_negative_numbers = true)]
    pub ema: Option<f64>,
    /// Evaluate with flip test-time augmentation (the mean of the logits of each image and of its mirror).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tta: Option<bool>,
}

impl Settings {
    /// These settings, with `fallback`'s wherever these have none.
    pub fn or(self, fallback: Settings) -> Settings {
        Settings {
            epochs: self.epochs.or(fallback.epochs),
            batch_size: self.batch_size.or(fallback.batch_size),
            lr: self.lr.or(fallback.lr),
            optimizer: self.optimizer.or(fallback.optimizer),
            momentum: self.momentum.or(fallback.momentum),
            nesterov: self.nesterov.or(fallback.nesterov),
            weight_decay: self.weight_decay.or(fallback.weight_decay),
            wd_skip_norm: self.wd_skip_norm.or(fallback.wd_skip_norm),
            schedule: self.schedule.or(fallback.schedule),
            warmup_epochs: self.warmup_epochs.or(fallback.warmup_epochs),
            resize: self.resize.or(fallback.resize),
            augment: self.augment.or(fallback.augment),
            normalize: self.normalize.or(fallback.normalize),
            stem: self.stem.or(fallback.stem),
            widths: self.widths.or(fallback.widths),
            label_smoothing: self.label_smoothing.or(fallback.label_smoothing),
            random_erasing: self.random_erasing.or(fallback.random_erasing),
            ema: self.ema.or(fallback.ema),
            tta: self.tta.or(fallback.tta),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in Recipe::NAMES {
            assert_eq!(name.parse::<Recipe>().unwrap().to_string(), name);
        }
        let err = "quick".parse::<Recipe>().unwrap_err().to_string();
        assert!(
            err.contains("`quick`") && err.contains("chapter, fast, best"),
            "{err}"
        );
    }

    #[test]
    fn flags_win_over_the_recipe() {
        let given = Settings {
            epochs: Some(2),
            augment: Some(false),
            ..Settings::default()
        };
        let s = given.or(Recipe::Fast.settings());
        assert_eq!(s.epochs, Some(2));
        assert_eq!(s.augment, Some(false));
        assert_eq!(s.lr, Recipe::Fast.settings().lr);
        assert_eq!(Recipe::Chapter.settings(), Settings::default());
    }
}
