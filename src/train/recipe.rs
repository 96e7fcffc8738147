//! Training recipes: named bundles of the flags that decide how well and how fast a run trains. `--recipe`
//! fills in every setting the command line leaves out; a flag given on the command line wins over the recipe.
//! `chapter` sets nothing, so a plain `resnet train` is the chapter's run.

use super::config::{TrainConfig, CHAPTER_RESIZE, FASHION_MNIST_MEAN_STD};
use crate::data::Preset;
use crate::nn::{ArchName, Stem};
use crate::optim::{OptimizerKind, Schedule};
use crate::{bail, Error, Result};
use clap::{Args, ValueEnum};
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

/// Declares [`Settings`] from one list, in the order the run prints them: each setting's flag (doc comment and
/// clap attributes) once, and from it the merge with a recipe ([`Settings::or`]) and the printed flags. A new
/// setting is an entry here and its place in the configuration ([`Settings::apply`], [`Settings::of`]).
macro_rules! settings {
    ($(#[$meta:meta])* pub struct Settings { $($(#[$attr:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Args, Clone, Debug, Default, PartialEq)]
        pub struct Settings {
            $($(#[$attr])* pub $field: Option<$ty>,)*
        }

        impl Settings {
            /// These settings, with `fallback`'s wherever these have none.
            pub fn or(self, fallback: Settings) -> Settings {
                Settings { $($field: self.$field.or(fallback.$field),)* }
            }

            /// The settings given, as `resnet train` flags, in their declared order.
            fn flags(&self) -> Vec<String> {
                let mut flags = Vec::new();
                $(if let Some(v) = &self.$field {
                    flags.push(format!("--{}{}", stringify!($field).replace('_', "-"), v.flag_value()));
                })*
                flags
            }
        }
    };
}

settings! {
/// The settings a recipe decides, as `resnet train` flags; `None` leaves a setting to the recipe (and, last,
/// to the chapter's default). A switch given without a value (`--augment`) means `true`; `--augment=false`
/// turns off what a recipe turns on.
pub struct Settings {
    /// Epochs to train [chapter: 5]; with --resume, the total the run is extended to.
    #[arg(long)]
    epochs: usize,
    /// Images per batch, training and evaluation [chapter: 256].
    #[arg(long)]
    batch_size: usize,
    /// adam, adamw or sgd [chapter: adam].
    #[arg(long)]
    optimizer: OptimizerKind,
    /// Base learning rate [chapter: 0.001].
    #[arg(long, allow_negative_numbers = true)]
    lr: f32,
    /// SGD momentum.
    #[arg(long, allow_negative_numbers = true)]
    momentum: f64,
    /// SGD Nesterov momentum.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    nesterov: bool,
    /// Weight decay (L2 for adam and sgd, decoupled for adamw).
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: f64,
    /// No weight decay on the batch norms' weights and biases and on every bias (timm's rule: tensors of one
    /// dimension).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    wd_skip_norm: bool,
    /// constant, step, cosine or onecycle [chapter: constant].
    #[arg(long)]
    schedule: Schedule,
    /// Linear warm-up of the learning rate over this many epochs (fractions allowed), multiplying any schedule.
    #[arg(long, allow_negative_numbers = true)]
    warmup_epochs: f64,
    /// Resize images (shorter side) to N with the chapter's transforms [chapter: 96; 28 keeps Fashion-MNIST's
    /// size]; the crop size with `--transforms imagenet` (default 224).
    #[arg(long)]
    resize: usize,
    /// Random crop with padding and horizontal flip (the chapter's transforms; cifar and imagenet always augment).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    augment: bool,
    /// Normalize after ToTensor: with Fashion-MNIST's mean and std (0.2860, 0.3530) for one-channel IDX data,
    /// else with each channel's mean and std over the training images (computed once, stored in the run).
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        conflicts_with = "mean"
    )]
    normalize: bool,
    /// The stem: `imagenet` (7×7 stride 2 + max pool, the chapter's) or `small` (3×3 stride 1, no pool).
    #[arg(long, value_enum)]
    stem: Stem,
    /// Stage widths, for narrower networks than the named one's 64,128,256,512 (e.g. 16,32,64,128; the
    /// chapter's network takes any number of stages of 2 blocks).
    #[arg(long, value_delimiter = ',')]
    widths: Vec<usize>,
    /// Label smoothing of the loss, as `CrossEntropyLoss(label_smoothing=…)` [chapter: 0].
    #[arg(long, allow_negative_numbers = true)]
    label_smoothing: f32,
    /// Erase a random rectangle of each training image with this probability (torchvision's RandomErasing,
    /// scale 0.02–0.33, ratio 0.3–3.3, value 0, after Normalize) [chapter: 0].
    #[arg(long, allow_negative_numbers = true)]
    random_erasing: f64,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999), evaluated and saved in
    /// place of the raw weights.
    #[arg(long, allow_negative_numbers = true)]
    ema: f64,
    /// Evaluate with flip test-time augmentation (the mean of the logits of each image and of its mirror).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    tta: bool,
}
}

/// Sets `slot` to the value given, if one is.
fn set<T>(slot: &mut T, given: &Option<T>)
where
    T: Clone,
{
    if let Some(v) = given {
        *slot = v.clone();
    }
}

impl Settings {
    /// Writes the settings given into `config`, for a network named `arch` (the chapter's takes any number of
    /// stages of 2 blocks; a torchvision network its own number). The settings left out keep `config`'s values,
    /// except `--resize`, whose default depends on the transform preset: [`CHAPTER_RESIZE`] for the chapter's
    /// (every value a resize, 28 on 28×28 images too), none for the others.
    pub fn apply(&self, arch: ArchName, config: &mut TrainConfig) -> Result<()> {
        let (d, o, r, m) = (
            &mut config.data,
            &mut config.optim,
            &mut config.run,
            &mut config.model,
        );
        set(&mut r.epochs, &self.epochs);
        set(&mut r.batch_size, &self.batch_size);
        set(&mut o.lr, &self.lr);
        set(&mut o.optimizer, &self.optimizer);
        o.momentum = self.momentum.or(o.momentum);
        set(&mut o.nesterov, &self.nesterov);
        o.weight_decay = self.weight_decay.or(o.weight_decay);
        set(&mut o.wd_skip_norm, &self.wd_skip_norm);
        set(&mut o.schedule, &self.schedule);
        set(&mut o.warmup_epochs, &self.warmup_epochs);
        d.resize = match d.transforms {
            // Every size is a resize, the data's own size too (a no-op on 28×28 Fashion-MNIST, 28 on 32×32
            // CIFAR): 28 once meant "no resize" here, and 32-px data trained at 32 under a `"resize": null`.
            Preset::Chapter => Some(self.resize.unwrap_or(CHAPTER_RESIZE)),
            _ => self.resize,
        };
        set(&mut d.augment, &self.augment);
        if let Some(n) = self.normalize {
            d.normalize = n.then_some(FASHION_MNIST_MEAN_STD);
        }
        set(&mut m.stem, &self.stem);
        if let Some(w) = &self.widths {
            if arch == ArchName::Chapter {
                m.layers = vec![2; w.len()];
            } else if w.len() != m.layers.len() {
                bail!(
                    "--widths: {} has {} stages, so it takes {} widths, got {}",
                    arch.as_str(),
                    m.layers.len(),
                    m.layers.len(),
                    w.len()
                );
            }
            m.widths = w.clone();
        }
        set(&mut o.label_smoothing, &self.label_smoothing);
        set(&mut d.random_erasing, &self.random_erasing);
        o.ema = self.ema.or(o.ema);
        set(&mut r.tta, &self.tta);
        Ok(())
    }

    /// The settings of `config` as the flags that give them ([`Settings::apply`] undone): every one a recipe
    /// decides, except the optional values the run does not have (momentum, weight decay, EMA) and a resize
    /// that other presets than the chapter's leave out.
    pub fn of(config: &TrainConfig) -> Settings {
        let (d, o, r, m) = (&config.data, &config.optim, &config.run, &config.model);
        Settings {
            epochs: Some(r.epochs),
            batch_size: Some(r.batch_size),
            lr: Some(o.lr),
            optimizer: Some(o.optimizer),
            momentum: o.momentum,
            nesterov: Some(o.nesterov),
            weight_decay: o.weight_decay,
            wd_skip_norm: Some(o.wd_skip_norm),
            schedule: Some(o.schedule.clone()),
            warmup_epochs: Some(o.warmup_epochs),
            resize: (d.transforms == Preset::Chapter || d.resize.is_some()).then(|| d.input_size()),
            augment: Some(d.augment),
            normalize: Some(d.normalize.is_some() || d.channel_norm.is_some()),
            stem: Some(m.stem),
            widths: Some(m.widths.clone()),
            label_smoothing: Some(o.label_smoothing),
            random_erasing: Some(d.random_erasing),
            ema: o.ema,
            tta: Some(r.tta),
        }
    }
}

impl fmt::Display for Settings {
    /// The settings given, as `resnet train` flags (switches as `--name=value`), in the order the run prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.flags().join(" "))
    }
}

/// How a setting's value follows its flag: after a space, a switch's after `=`.
trait FlagValue {
    fn flag_value(&self) -> String;
}

macro_rules! flag_value_displayed {
    ($($ty:ty),*) => {$(
        impl FlagValue for $ty {
            fn flag_value(&self) -> String {
                format!(" {self}")
            }
        }
    )*};
}
flag_value_displayed!(usize, f32, f64, OptimizerKind, Schedule);

impl FlagValue for bool {
    fn flag_value(&self) -> String {
        format!("={self}")
    }
}

impl FlagValue for Stem {
    fn flag_value(&self) -> String {
        let name = self.to_possible_value().map(|v| v.get_name().to_string());
        format!(" {}", name.unwrap_or_default())
    }
}

impl FlagValue for Vec<usize> {
    fn flag_value(&self) -> String {
        let widths: Vec<String> = self.iter().map(|w| w.to_string()).collect();
        format!(" {}", widths.join(","))
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

    /// What a run prints as its settings gives back the configuration it runs: each recipe's values come back
    /// from the configuration they were applied to.
    #[test]
    fn the_printed_settings_are_the_recipes() {
        for recipe in [Recipe::Chapter, Recipe::Fast, Recipe::Best] {
            let mut config = TrainConfig::default();
            recipe
                .settings()
                .apply(ArchName::Chapter, &mut config)
                .unwrap();
            let back = Settings::of(&config);
            let given = recipe.settings();
            assert_eq!(given.clone().or(back.clone()), back, "{recipe}");
            let mut again = TrainConfig::default();
            back.apply(ArchName::Chapter, &mut again).unwrap();
            assert_eq!(again, config, "{recipe}");
        }
        let chapter = Settings::of(&TrainConfig::default()).to_string();
        assert_eq!(
            chapter,
            "--epochs 5 --batch-size 256 --optimizer adam --lr 0.001 --nesterov=false --wd-skip-norm=false \
             --schedule constant --warmup-epochs 0 --resize 96 --augment=false --normalize=false --stem imagenet \
             --widths 64,128,256,512 --label-smoothing 0 --random-erasing 0 --tta=false"
        );
    }
}
