//! `resnet train`: its flags ([`TrainArgs`], which become a [`TrainConfig`]) and the run, as a single process
//! or as one rank of an MPI job.

use super::{data_dir, verify_bundled};
use crate::data::{Format, Preset, NUM_CLASSES};
use crate::dist::{agree, Collective};
use crate::nn::{ArchName, ResNetConfig};
use crate::train::{
    check_identity, Data, DataSettings, OptimSettings, ProgressMode, Recipe, Run, RunSettings,
    Settings, TrainConfig,
};
use crate::{bail, outln, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `resnet train` arguments.
#[derive(Args)]
pub struct TrainArgs {
    /// A named bundle of settings: chapter (the chapter's run), fast or best (see the README); each flag given
    /// overrides the recipe's value. The settings in effect are printed at the start and stored in the run.
    #[arg(long, default_value_t = RunSettings::default().recipe)]
    pub recipe: Recipe,
    /// The settings a recipe decides.
    #[command(flatten)]
    pub settings: Settings,
    /// Stop after the first evaluation at or above this accuracy (e.g. 0.93) and report the time to reach it.
    #[arg(long, value_name = "ACC", allow_negative_numbers = true)]
    pub target_acc: Option<f64>,
    /// Normalize after ToTensor with these per-channel means (one value, or one per channel), e.g.
    /// 0.485,0.456,0.406; needs --std.
    #[arg(
        long,
        value_delimiter = ',',
        requires = "std",
        allow_negative_numbers = true
    )]
    pub mean: Option<Vec<f32>>,
    /// The per-channel standard deviations that go with --mean, e.g. 0.229,0.224,0.225.
    #[arg(long, value_delimiter = ',', requires = "mean")]
    pub std: Option<Vec<f32>>,
    /// Dataset format: auto (from what --data holds), idx, cifar10, cifar100, cifar100-coarse, folder.
    #[arg(long, default_value_t = DataSettings::default().format)]
    pub format: Format,
    /// Convert images to 1 (PIL's convert('L')) or 3 (convert('RGB')) channels [default: the data's own].
    #[arg(long)]
    pub channels: Option<usize>,
    /// Transform preset: chapter (resize, optional augment), cifar (pad 4 + crop 32 + flip), imagenet
    /// (random-resized-crop 224 + flip; eval resize 256 + center crop 224).
    #[arg(long, default_value_t = DataSettings::default().transforms)]
    pub transforms: Preset,
    /// Hold out this fraction of each class of the training images for validation (stratified, drawn with
    /// --seed) and evaluate on it instead of the test images, to choose settings honestly [image folders without
    /// val/ or test/: default 0.1].
    #[arg(long)]
    pub val_split: Option<f64>,
    /// Image folders: keep decoded images in memory up to this many MiB (beyond it they are decoded every epoch).
    #[arg(long, default_value_t = crate::data::folder::DEFAULT_CACHE_MB)]
    pub cache_mb: usize,
    /// Image folders: leave out files that cannot be decoded (and say how many) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Fine-tune: start from these weights (ours, or PyTorch's safetensors or .pth) instead of a fresh
    /// initialization; the architecture flags must describe the same network.
    #[arg(long, value_name = "WEIGHTS")]
    pub init: Option<PathBuf>,
    /// With --init: start the classifier afresh (for a new class count) instead of loading it.
    #[arg(long, requires = "init")]
    pub reset_head: bool,
    /// Train only the classifier: the stem and every stage stay fixed (their batch norms in eval mode, no
    /// gradients computed for them).
    #[arg(long, conflicts_with = "freeze_until")]
    pub freeze_backbone: bool,
    /// Hold the stem and stages 1..=STAGE fixed (0: the stem only) and train what follows.
    #[arg(long, value_name = "STAGE")]
    pub freeze_until: Option<usize>,
    /// Seed of the initialization, the shuffling and the augmentation.
    #[arg(long, default_value_t = RunSettings::default().seed)]
    pub seed: u64,
    /// Run directory for checkpoints, metrics and the training curve (default: runs/run-N, N the Unix time).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Dataset directory (default: $RESNET_DATA, the bundled data/fashion-mnist, /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Train on the first N training images only.
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// Continue the run in RUN_DIR from its last checkpoint (its stored settings are used; --epochs may extend it).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// The network: the chapter's ResNet-18, or torchvision's resnet18/34/50/101/152.
    #[arg(long, value_enum, default_value = "chapter")]
    pub arch: ArchName,
    /// Start every residual block as the identity (its last batch-norm weight zero), as torchvision's option.
    #[arg(long)]
    pub zero_init_residual: bool,
    /// No progress output (the per-epoch lines are still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Data-parallel runs (`mpirun -np N resnet train`, feature `mpi`): batch norm uses the statistics of the
    /// whole global batch, summed over the ranks in forward and backward (PyTorch's SyncBatchNorm), instead of
    /// each rank's own share's.
    #[arg(long)]
    pub sync_bn: bool,
    /// Data-parallel runs: sum gradients in buckets of about this many MiB, each started as soon as the backward
    /// pass has produced it, instead of one allreduce of all gradients after the backward pass (not with
    /// --sync-bn).
    #[arg(long, value_name = "MIB", conflicts_with = "sync_bn")]
    pub bucket_mb: Option<f64>,
    /// Data-parallel runs: end the job when a collective (a gradient sum, a broadcast) makes no progress for
    /// this many seconds, with one line naming the ranks and hosts that went silent (cut off, frozen); also the
    /// longest wait for every rank to join at start. Must exceed the longest pause of one rank between two
    /// collectives (a step, an evaluation, a checkpoint write).
    #[arg(long, value_name = "SECONDS", default_value_t = crate::dist::DEFAULT_COLLECTIVE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub collective_timeout: u64,
}

impl TrainArgs {
    /// The run's configuration (for a fresh run; `--resume` reads it from the checkpoint), validated: the
    /// chapter's defaults, then the recipe's settings, then the flags given.
    pub fn config(&self) -> Result<TrainConfig> {
        let mut config = TrainConfig {
            model: ResNetConfig {
                zero_init_residual: self.zero_init_residual,
                ..ResNetConfig::named(self.arch, self.channels.unwrap_or(1), NUM_CLASSES)
            },
            data: DataSettings {
                format: self.format,
                channels: self.channels,
                transforms: self.transforms,
                channel_norm: self.mean.clone().zip(self.std.clone()),
                limit_train: self.limit_train,
                limit_test: self.limit_test,
                val_split: self.val_split,
                skip_bad: self.skip_bad,
                ..DataSettings::default()
            },
            optim: OptimSettings::default(),
            run: RunSettings {
                recipe: self.recipe,
                seed: self.seed,
                init: self.init.clone(),
                reset_head: self.reset_head,
                sync_bn: self.sync_bn,
                target_acc: self.target_acc,
                ..RunSettings::default()
            },
        };
        let settings = self.settings.clone().or(self.recipe.settings());
        settings.apply(self.arch, &mut config)?;
        let stages = config.model.layers.len();
        config.run.freeze = match (self.freeze_backbone, self.freeze_until) {
            (true, _) => 1 + stages,
            (false, Some(k)) => k.saturating_add(1),
            (false, None) => 0,
        };
        config.validate()?;
        Ok(config)
    }
    /// Checks the flags without touching a file: a fresh run's whole configuration, a resumed run's overrides.
    pub fn check(&self) -> Result<()> {
        if let Some(mb) = self.bucket_mb.filter(|mb| !(mb.is_finite() && *mb > 0.0)) {
            bail!("--bucket-mb must be a positive number of MiB, got {mb}");
        }
        if self.resume.is_none() {
            self.config()?;
        } else if self.settings.epochs == Some(0) {
            bail!("--epochs must be at least 1");
        }
        Ok(())
    }
}

/// `resnet train`: one rank of a data-parallel job, or a single process (`comm` [`Local`](crate::dist::Local)).
pub fn run(a: &TrainArgs, comm: Arc<dyn Collective>) -> Result<()> {
    let lead = comm.rank() == 0;
    if comm.size() > 1 {
        outln!(
            "rank {} of {} on {} (pid {})",
            comm.rank(),
            comm.size(),
            comm.host(),
            std::process::id()
        );
    }
    let data_dir = agree(&*comm, data_dir(a.data.as_deref()))?;
    let verify = verify_bundled(a.data.as_deref());
    let (mut run, data) = match &a.resume {
        Some(dir) => {
            let run = Run::resume(dir, a.settings.epochs, comm.clone())?;
            if lead {
                outln!(
                    "resuming {} after epoch {} of {}",
                    dir.display(),
                    run.progress.epochs_done,
                    run.config.run.epochs
                );
            }
            // Run::train checks that the data fits the run (channels, classes).
            let data = agree(
                &*comm,
                Data::load(&data_dir, verify, &run.config, a.cache_mb),
            )?;
            check_identity(&*comm, &run.config, &data)?;
            (run, data)
        }
        None => {
            // Load (and check) the data before the run directory is created, so bad data leaves nothing behind.
            let (config, data) = agree(&*comm, fresh_config(a, &data_dir, verify))?;
            let out = a.out.clone().unwrap_or_else(default_run_dir);
            check_identity(&*comm, &config, &data)?;
            (Run::create(&out, config, comm.clone())?, data)
        }
    };
    if lead {
        for note in &data.notes {
            outln!("{note}");
        }
        let threads = rayon::current_num_threads();
        let ranks = match comm.size() {
            1 => format!("{threads} threads"),
            n => format!("{n} ranks × {threads} threads"),
        };
        outln!(
            "training on cpu ({ranks}), {} training and {} {} images ({} channels, {} classes) from {}, run directory {}",
            data.train.len(),
            data.test.len(),
            if run.config.data.val_split.is_some() { "validation" } else { "test" },
            run.config.model.in_channels,
            run.config.num_classes(),
            data_dir.display(),
            run.dir.display()
        );
        outln!(
            "recipe {}: {}",
            run.config.run.recipe,
            run.config.settings_flags()
        );
    }
    run.set_bucket_mb(a.bucket_mb)?;
    let mode = if a.quiet {
        ProgressMode::Quiet
    } else {
        ProgressMode::Auto
    };
    run.train(&data, mode, |m| {
        if lead {
            outln!("{}", m.line());
            if let Some(d) = &m.dist {
                outln!("  {}", d.line());
            }
        }
    })?;
    if lead {
        if let Some(target) = run.config.run.target_acc {
            match run.target_reached() {
                Some(m) => outln!(
                    "reached --target-acc {target} at epoch {}: accuracy {:.4} after {:.1} s of training and evaluation",
                    m.epoch, m.test_acc, m.elapsed_sec
                ),
                None => outln!(
                    "--target-acc {target} not reached in {} epochs",
                    run.config.run.epochs
                ),
            }
        }
        outln!("saved {}", run.dir.join("model.safetensors").display());
    }
    Ok(())
}

/// A fresh run's configuration from the flags and the data it trains on (opened and checked here).
fn fresh_config(a: &TrainArgs, data_dir: &Path, verify: bool) -> Result<(TrainConfig, Data)> {
    let mut config = a.config()?;
    let data = Data::load(data_dir, verify, &config, a.cache_mb)?;
    config.fit_to(&data)?;
    Ok((config, data))
}

fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("runs").join(format!("run-{secs}"))
}

/// `resnet train` as one rank of an MPI job (`mpirun -np N resnet train …`), or as a single process when
/// started alone; `check` is the flags' check ([`crate::cli::Cli::check`]), `threads` the `--threads` flag. Errors that all
/// ranks agreed on are printed once, by rank 0, and every rank exits with status 1; an error only this rank knows
/// of is printed with its rank and host and ends the whole job (`MPI_Abort`), since the others would wait for it
/// forever.
#[cfg(feature = "mpi")]
pub fn run_mpi(check: Result<()>, threads: Option<usize>, a: &TrainArgs) -> Result<()> {
    use super::thread_pool;
    use crate::dist::{mpi::Mpi, Local};
    let timeout = std::time::Duration::from_secs(a.collective_timeout);
    let Some(mpi) = Mpi::init(timeout)? else {
        check?;
        thread_pool(threads)?;
        return run(a, Arc::new(Local::default()));
    };
    let mpi = Arc::new(mpi);
    let result =
        agree(&*mpi, check.and_then(|()| thread_pool(threads))).and_then(|()| run(a, mpi.clone()));
    let Err(e) = result else {
        return Ok(());
    };
    if !mpi.failed_together() {
        eprintln!("error: rank {} on {}: {e}", mpi.rank(), mpi.host());
        mpi.abort(1);
    }
    if mpi.rank() == 0 {
        eprintln!("error: {e}");
    }
    // Finalize MPI (the last reference) before leaving with the failure status.
    drop(mpi);
    std::process::exit(1)
}
