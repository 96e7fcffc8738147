//! A training run in a run directory: create, resume, train epochs, checkpoint.

use super::distributed::Distributed;
use super::lock::RunLock;
use super::progress::Bar;
use super::{
    curve_svg, evaluate, Data, Ema, EpochMetrics, Evaluation, Progress, ProgressMode, TrainConfig,
};
use crate::checkpoint::{self, META_ARCH, META_CLASSES, META_EVAL_TRANSFORM, META_INPUT_SIZE};
use crate::data::transforms::INPUT_SIZES;
use crate::data::{Batch, Loader, Pipeline};
use crate::dist::Collective;
use crate::error::Context;
use crate::model_file::ModelFile;
use crate::nn::{Buffers, ResNet, StateDict, StateTensor};
use crate::optim::{warmup_factor, Optimizer, OptimizerState};
use crate::{bail, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
const META_CONFIG: &str = "resnet.train_config";
const META_PROGRESS: &str = "resnet.progress";
const META_OPTIMIZER: &str = "resnet.optimizer";
const OPT_PREFIX: &str = "optimizer.";
/// The weight average's values in a checkpoint (one flat tensor) and its update count.
const EMA_KEY: &str = "ema.values";
const META_EMA_UPDATES: &str = "resnet.ema_updates";

/// A training run in a run directory: the model, its optimizer, and what has been done so far.
pub struct Run {
    /// The run directory (checkpoint, model, metrics and curve live here).
    pub dir: PathBuf,
    /// The run's configuration, as stored in its checkpoint.
    pub config: TrainConfig,
    /// The model being trained.
    pub net: ResNet,
    /// The optimizer, with its per-parameter state.
    pub optimizer: Box<dyn Optimizer>,
    /// Epochs done so far and their metrics.
    pub progress: Progress,
    /// The moving average of the weights (`--ema`), evaluated and saved in place of the raw weights.
    pub ema: Option<Ema>,
    /// The evaluation transforms of the data being trained on (known once [`Run::train`] starts), stored in
    /// `model.safetensors` so that `predict` and `eval` preprocess as training did.
    eval_pipeline: Option<Pipeline>,
    /// The shorter side of the evaluation inputs (known once [`Run::train`] starts): the size the network is
    /// trained at, stored in `model.safetensors` as `resnet.input_size`.
    trained_size: Option<usize>,
    /// Held for the run's lifetime: a second `resnet train` on the same directory is refused. Only the process
    /// that writes the directory holds it (rank 0 of a data-parallel job).
    _lock: Option<RunLock>,
    /// This process's part in the job: one rank of a data-parallel job, or the one rank of a single process.
    dist: Distributed,
}

/// What one training step did.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The weights moved: the batch's mean loss and how many of its images were classified correctly.
    Done {
        /// Mean cross-entropy of the batch.
        loss: f32,
        /// Correct arg-max predictions in the batch.
        correct: usize,
    },
    /// The loss or a gradient was not finite; nothing was updated. Says which.
    Diverged(String),
}

/// What a training checkpoint holds, parsed and checked: the configuration, the model, the optimizer with its
/// state, and the progress.
pub struct Restored {
    /// The run's configuration (with `epochs` replaced when extending).
    pub config: TrainConfig,
    /// The model with the checkpoint's weights and running statistics.
    pub net: ResNet,
    /// The optimizer with its per-parameter state and step count.
    pub optimizer: Box<dyn Optimizer>,
    /// Epochs done and their metrics.
    pub progress: Progress,
    /// The weight average (`--ema`), as far as it got.
    pub ema: Option<Ema>,
}

impl Restored {
    /// The parts of a run that starts now: no epochs done.
    fn fresh(config: TrainConfig, net: ResNet, optimizer: Box<dyn Optimizer>) -> Result<Restored> {
        let ema = config.optim.ema.map(Ema::new).transpose()?;
        Ok(Restored {
            config,
            net,
            optimizer,
            progress: Progress::default(),
            ema,
        })
    }

    /// Parses the bytes of a `checkpoint.safetensors` (`origin` names it in errors); `epochs` replaces the stored
    /// total. Everything is checked — metadata, configuration, key set, shapes, optimizer state — and a file that
    /// describes a larger network than the values it holds is refused before that network is allocated.
    pub fn from_bytes(bytes: &[u8], origin: &str, epochs: Option<usize>) -> Result<Restored> {
        let (sd, meta) = checkpoint::deserialize(bytes, origin)?;
        let get = |k: &str| {
            meta.get(k).ok_or_else(|| {
                Error::new(format!(
                    "{origin}: no `{k}` metadata: not a resnet training checkpoint"
                ))
            })
        };
        let mut config: TrainConfig = serde_json::from_str(get(META_CONFIG)?)
            .with_context(|| format!("{origin}: bad `{META_CONFIG}`"))?;
        let progress: Progress = serde_json::from_str(get(META_PROGRESS)?)
            .with_context(|| format!("{origin}: bad `{META_PROGRESS}`"))?;
        if let Some(e) = epochs {
            config.run.epochs = e;
        }
        config.validate().context(origin)?;
        if progress.history.len() != progress.epochs_done {
            bail!(
                "{origin}: bad `{META_PROGRESS}`: {} epochs done but {} epochs of metrics",
                progress.epochs_done,
                progress.history.len()
            );
        }
        let (mut ema_sd, sd): (StateDict, StateDict) =
            sd.into_iter().partition(|(k, _)| k == EMA_KEY);
        let (model_sd, opt_sd): (StateDict, StateDict) = sd
            .into_iter()
            .partition(|(k, _)| !k.starts_with(OPT_PREFIX));
        let mut net = checkpoint::build_for(config.model.clone(), &model_sd, origin)?;
        net.load_state_dict(&model_sd).context(origin)?;
        net.set_frozen(config.run.freeze).context(origin)?;
        let mut optimizer = build_optimizer(&config, &mut net)?;
        let opt_meta: OptimizerMeta = serde_json::from_str(get(META_OPTIMIZER)?)
            .with_context(|| format!("{origin}: bad `{META_OPTIMIZER}`"))?;
        let tensors = opt_sd
            .into_iter()
            .map(|(k, t)| match t {
                StateTensor::F32 { data, .. } => Ok((k[OPT_PREFIX.len()..].to_string(), data)),
                _ => Err(Error::new(format!(
                    "{origin}: optimizer tensor `{k}` is not F32"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        optimizer
            .load_state(OptimizerState {
                kind: opt_meta.kind,
                step: opt_meta.step,
                tensors,
            })
            .context(origin)?;
        let ema = match config.optim.ema {
            None => None,
            Some(decay) => {
                let updates: u64 = meta
                    .get(META_EMA_UPDATES)
                    .and_then(|u| u.parse().ok())
                    .unwrap_or(0);
                let values = match ema_sd.pop() {
                    Some((_, StateTensor::F32 { data, .. })) => data,
                    Some(_) => bail!("{origin}: `{EMA_KEY}` is not F32"),
                    None => Vec::new(),
                };
                let ema = Ema::restore(decay, updates, values, &mut net).context(origin)?;
                Some(ema)
            }
        };
        Ok(Restored {
            config,
            net,
            optimizer,
            progress,
            ema,
        })
    }
}

impl Run {
    /// Starts a fresh run in `dir` on every rank of `comm` ([`crate::dist::Local`] for a single process): each
    /// builds the same network from the seed (and `--init`, which every rank reads); rank 0 alone creates `dir`
    /// if missing and locks it, refusing a directory that already holds a checkpoint, so a finished run is never
    /// overwritten by accident (use `--resume`). A failure on any rank fails all.
    pub fn create(dir: &Path, config: TrainConfig, comm: Arc<dyn Collective>) -> Result<Run> {
        let dist = Distributed::new(comm);
        // Build everything that can fail on a bad config before touching the file system.
        let (mut net, optimizer) = dist.agree(Self::build(&config))?;
        dist.attach_sync_bn(&mut net, config.run.sync_bn);
        let fresh = dist.agree(Restored::fresh(config, net, optimizer))?;
        let lock = dist.agree(match dist.leads() {
            true => Self::claim(dir).map(Some),
            false => Ok(None),
        })?;
        Ok(Self::from_parts(dir, fresh, lock, dist))
    }

    /// The network and optimizer a fresh run of `config` starts with.
    fn build(config: &TrainConfig) -> Result<(ResNet, Box<dyn Optimizer>)> {
        config.validate()?;
        let mut net = ResNet::new(config.model.clone(), config.run.seed)?;
        if let Some(path) = &config.run.init {
            load_init(&mut net, path, config.run.reset_head)?;
        }
        net.set_frozen(config.run.freeze)?;
        let optimizer = build_optimizer(config, &mut net)?;
        Ok((net, optimizer))
    }

    /// Creates `dir` if needed and locks it for a fresh run, refusing one that holds a checkpoint.
    fn claim(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create run directory", dir.display()))?;
        let refuse_existing = || -> Result<()> {
            if dir.join("checkpoint.safetensors").exists() {
                bail!("{}: already holds a training run (checkpoint.safetensors); resume it with --resume {} or choose another --out", dir.display(), dir.display());
            }
            Ok(())
        };
        refuse_existing()?;
        let lock = RunLock::acquire(dir)?;
        // Again under the lock: another run may have written its first checkpoint meanwhile.
        refuse_existing()?;
        Ok(lock)
    }

    /// Reopens the run in `dir` from its `checkpoint.safetensors` on every rank of `comm` ([`crate::dist::Local`]
    /// for a single process); `epochs` may extend the run. Rank 0 locks `dir` and reads the checkpoint, every
    /// rank receives its bytes (no shared file system needed) and restores from them. A checkpoint does not
    /// depend on the number of ranks that wrote it.
    pub fn resume(dir: &Path, epochs: Option<usize>, comm: Arc<dyn Collective>) -> Result<Run> {
        let dist = Distributed::new(comm);
        let (lock, mut bytes) = dist.agree(match dist.leads() {
            true => Self::open_checkpoint(dir).map(|(l, b)| (Some(l), b)),
            false => Ok((None, Vec::new())),
        })?;
        dist.comm.broadcast_bytes(0, &mut bytes);
        let origin = dir.join("checkpoint.safetensors").display().to_string();
        let mut restored = dist.agree(Restored::from_bytes(&bytes, &origin, epochs))?;
        if dist.leads() {
            // The measured figures of the epochs done, which the checkpoint leaves out, from the run's log.
            restored.progress.restore_timings(&logged_metrics(dir));
        }
        dist.attach_sync_bn(&mut restored.net, restored.config.run.sync_bn);
        Ok(Self::from_parts(dir, restored, lock, dist))
    }

    /// Locks `dir` and reads its checkpoint's bytes.
    fn open_checkpoint(dir: &Path) -> Result<(RunLock, Vec<u8>)> {
        let path = dir.join("checkpoint.safetensors");
        // Refuse a directory without a checkpoint before creating the lock file in it.
        std::fs::metadata(&path)
            .map_err(|e| Error::new(format!("{}: {e} (nothing to resume)", path.display())))?;
        let lock = RunLock::acquire(dir)?;
        let bytes = checkpoint::read_file_limited(&path)?;
        Ok((lock, bytes))
    }

    /// The run in `dir` from its parts: a fresh or restored model, optimizer and progress, the lock (rank 0
    /// holds it) and this process's part in the job.
    fn from_parts(dir: &Path, restored: Restored, lock: Option<RunLock>, dist: Distributed) -> Run {
        Run {
            dir: dir.to_path_buf(),
            config: restored.config,
            net: restored.net,
            optimizer: restored.optimizer,
            progress: restored.progress,
            ema: restored.ema,
            eval_pipeline: None,
            trained_size: None,
            _lock: lock,
            dist,
        }
    }

    /// Whether this process writes the run directory and reports progress: rank 0 (a single process is).
    pub fn leads(&self) -> bool {
        self.dist.leads()
    }

    /// A data-parallel job's gradient buckets (see [`Distributed::set_buckets`]; `None`: one flat allreduce
    /// after the backward pass).
    pub fn set_bucket_mb(&mut self, mb: Option<f64>) -> Result<()> {
        self.dist
            .set_buckets(&mut self.net, mb, self.config.run.sync_bn)
    }

    /// Fails every rank of the job with rank 0's error if any rank's `local` failed.
    fn agree<T>(&self, local: Result<T>) -> Result<T> {
        self.dist.agree(local)
    }

    /// One training step of a single process on `batch` at learning rate `lr` (`single_step`), the body of
    /// [`Run::train`]'s loop.
    pub fn train_step(&mut self, batch: &Batch, lr: f32) -> Result<Step> {
        let smoothing = self.config.optim.label_smoothing;
        single_step(&mut self.net, self.optimizer.as_mut(), batch, lr, smoothing)
    }

    /// Trains the remaining epochs, printing the chapter's line after each and checkpointing atomically.
    /// `on_epoch` sees each epoch's metrics (after its checkpoint is safely on disk).
    ///
    /// In a data-parallel job every rank calls this: each trains on its share of every batch and evaluates its
    /// share of the test set; rank 0 alone shows progress and writes the run directory; every rank's
    /// `on_epoch` sees the same metrics. The weights are compared across ranks at the start and after every
    /// epoch.
    pub fn train(
        &mut self,
        data: &Data,
        mode: ProgressMode,
        mut on_epoch: impl FnMut(&EpochMetrics),
    ) -> Result<()> {
        let (train_loader, test_loader) = self.prepare(data)?;
        let mode = if self.leads() {
            mode
        } else {
            ProgressMode::Quiet
        };
        for epoch in self.progress.epochs_done..self.config.run.epochs {
            let start = Instant::now();
            let trained = self.train_epoch(&train_loader, epoch, mode, start)?;
            let eval = self.evaluate_epoch(&test_loader)?;
            let metrics = EpochMetrics {
                epoch: epoch + 1,
                loss: trained.loss_sum / trained.steps as f64,
                train_acc: trained.correct as f64 / trained.seen as f64,
                test_acc: eval.accuracy,
                time_sec: start.elapsed().as_secs_f64(),
                images_per_sec: trained.seen as f64 / trained.secs,
                lr: trained.lr as f64,
                elapsed_sec: self.progress.history.last().map_or(0.0, |m| m.elapsed_sec)
                    + start.elapsed().as_secs_f64(),
                dist: self.dist.take_stats(),
            };
            self.checkpoint(&metrics, trained.steps)?;
            on_epoch(&metrics);
            // Every rank sees the same summed evaluation, so all stop together.
            if self
                .config
                .run
                .target_acc
                .is_some_and(|a| metrics.test_acc >= a)
            {
                break;
            }
        }
        Ok(())
    }

    /// The loaders of this rank's shares of `data`, after the checks every rank passes before the first step:
    /// the data fits the run, every share of a batch can be normalized, every rank reads its first shares, and
    /// the ranks hold the same weights.
    fn prepare(&mut self, data: &Data) -> Result<(Loader, Loader)> {
        let cfg = &self.config;
        let (rank, ranks) = (self.dist.comm.rank(), self.dist.comm.size());
        let (train_loader, test_loader, eval_pipeline) = self.agree((|| {
            data.check_fits(cfg)?;
            let (train_pipeline, eval_pipeline) = cfg.pipelines(&*data.train)?;
            let (batch, seed) = (cfg.run.batch_size, cfg.run.seed);
            let train_loader =
                Loader::with_pipeline(data.train.clone(), batch, true, seed, train_pipeline)?
                    .with_shard(rank, ranks)?;
            let test_loader = Loader::with_pipeline(
                data.test.clone(),
                batch,
                false,
                seed,
                eval_pipeline.clone(),
            )?
            .with_shard(rank, ranks)?;
            Ok((train_loader, test_loader, eval_pipeline))
        })())?;
        self.eval_pipeline = Some(eval_pipeline);
        let (h, w) = test_loader.image_size();
        self.trained_size = Some(h.min(w)).filter(|s| INPUT_SIZES.contains(s));
        self.dist
            .check_shares(self.config.run.batch_size, train_loader.len())?;
        self.dist
            .read_first_shares(&train_loader, &test_loader, self.progress.epochs_done)?;
        self.dist.check_weights(&self.net, "at the start")?;
        Ok((train_loader, test_loader))
    }

    /// What becomes of the run directory when epoch `epochs_done + 1` fails: its last checkpoint is kept.
    fn kept(&self) -> String {
        match self.progress.epochs_done {
            0 => format!(
                "no epoch finished, so {} holds no checkpoint",
                self.dir.display()
            ),
            n => format!(
                "the checkpoint of epoch {n} in {} is kept",
                self.dir.display()
            ),
        }
    }

    /// Epoch `epoch` (from 0) of training steps over this rank's shares in `train_loader`, with the progress bar
    /// (`mode`) and the weight average's updates; stops the run if a step diverges.
    fn train_epoch(
        &mut self,
        train_loader: &Loader,
        epoch: usize,
        mode: ProgressMode,
        start: Instant,
    ) -> Result<Trained> {
        let (base_lr, epochs) = (self.config.optim.lr, self.config.run.epochs);
        let (schedule, smoothing) = (
            &self.config.optim.schedule,
            self.config.optim.label_smoothing,
        );
        let steps = train_loader.num_batches();
        let warmup_steps = self.config.warmup_steps(steps);
        self.net.set_train(true);
        let bar = Bar::new(mode, steps, epoch + 1, epochs);
        let mut t = Trained {
            steps,
            lr: base_lr,
            ..Trained::default()
        };
        for (b, batch) in train_loader.epoch(epoch).enumerate() {
            // The warm-up's factor is 1 after it, and x·1 is x in f32: runs without one are unchanged.
            t.lr = schedule.lr(base_lr, epoch, b, steps, epochs)
                * warmup_factor(epoch * steps + b, warmup_steps);
            let global_n = train_loader.global_batch_len(b);
            let opt = self.optimizer.as_mut();
            let step = self
                .dist
                .step(&mut self.net, opt, batch, global_n, t.lr, smoothing)?;
            let (loss, ok) = match step {
                Step::Done { loss, correct } => (loss, correct),
                // Every rank of a job sees the same summed loss and gradients, so all stop here together.
                Step::Diverged(what) => {
                    return self.agree(Err(Error::new(format!("training diverged: {what} at epoch {}, batch {} of {steps}; lower the learning rate (--lr {base_lr}); {}", epoch + 1, b + 1, self.kept()))))
                }
            };
            if let Some(ema) = &mut self.ema {
                ema.update(&mut self.net);
            }
            t.loss_sum += loss as f64;
            t.correct += ok;
            t.seen += global_n;
            let mean_loss = t.loss_sum / (b + 1) as f64;
            bar.update(
                b + 1,
                mean_loss,
                t.correct as f64 / t.seen as f64,
                t.seen,
                start,
            );
        }
        bar.finish();
        t.secs = start.elapsed().as_secs_f64();
        Ok(t)
    }

    /// Evaluates on this rank's share of the test set, summed over the ranks: the weight average with `--ema`
    /// (the raw weights go on training), after the ranks' batch-norm statistics are averaged.
    fn evaluate_epoch(&mut self, test_loader: &Loader) -> Result<Evaluation> {
        self.dist
            .average_running_stats(&mut self.net, self.config.run.sync_bn);
        let tta = self.config.run.tta;
        let eval = Ema::applied(self.ema.as_mut(), &mut self.net, |net| {
            evaluate(net, test_loader, tta)
        });
        let eval = self.agree(eval)?;
        Ok(self.dist.sum_evaluation(eval))
    }

    /// Records the finished epoch of `metrics` and checkpoints it (rank 0 writes), unless its weights are no
    /// longer finite: a last step can overflow the weights (or BN statistics) without a non-finite loss or
    /// gradient, and such a model never replaces the last good checkpoint.
    fn checkpoint(&mut self, metrics: &EpochMetrics, steps: usize) -> Result<()> {
        let bad = self.net.state_dict().into_iter().find(|(_, t)| {
            matches!(t, StateTensor::F32 { data, .. } if data.iter().any(|v| !v.is_finite()))
        });
        if let Some((name, _)) = bad {
            let (epoch, lr) = (metrics.epoch, self.config.optim.lr);
            return self.agree(Err(Error::new(format!("training diverged: `{name}` is not finite after epoch {epoch}, batch {steps} of {steps}; lower the learning rate (--lr {lr}); {}", self.kept()))));
        }
        let when = format!("after epoch {}", metrics.epoch);
        self.dist.check_weights(&self.net, &when)?;
        self.progress.epochs_done = metrics.epoch;
        self.progress.history.push(metrics.clone());
        let saved = if self.leads() { self.save() } else { Ok(()) };
        self.agree(saved)
    }

    /// The first epoch whose evaluation reached `--target-acc`, if the run has one and reached it.
    pub fn target_reached(&self) -> Option<&EpochMetrics> {
        let target = self.config.run.target_acc?;
        self.progress.history.iter().find(|m| m.test_acc >= target)
    }

    /// Writes `model.safetensors`, then `checkpoint.safetensors`, `metrics.jsonl` and `curve.svg`, each atomically.
    pub fn save(&mut self) -> Result<()> {
        let mut meta = BTreeMap::new();
        meta.insert(
            META_INPUT_SIZE.to_string(),
            self.trained_size
                .unwrap_or(self.config.data.input_size())
                .to_string(),
        );
        meta.insert(META_CLASSES.to_string(), json(&self.config.class_names()));
        if let Some(p) = &self.eval_pipeline {
            meta.insert(META_EVAL_TRANSFORM.to_string(), json(p));
        }
        // model.safetensors holds what is evaluated: the weight average when there is one.
        let model_path = self.dir.join("model.safetensors");
        Ema::applied(self.ema.as_mut(), &mut self.net, |net| {
            checkpoint::save_model(&model_path, net, &meta)
        })?;

        // The checkpoint holds the raw weights, which training continues from, and the average apart.
        let mut sd = self.net.state_dict();
        if let Some(ema) = self.ema.as_ref().filter(|e| e.updates > 0) {
            let data = ema.values.clone();
            sd.push((
                EMA_KEY.to_string(),
                StateTensor::F32 {
                    shape: vec![data.len()],
                    data,
                },
            ));
            meta.insert(META_EMA_UPDATES.into(), ema.updates.to_string());
        }
        let state = self.optimizer.state();
        for (k, data) in state.tensors {
            let shape = vec![data.len()];
            sd.push((format!("{OPT_PREFIX}{k}"), StateTensor::F32 { shape, data }));
        }
        meta.insert("format".into(), "pt".into());
        meta.insert(META_ARCH.into(), checkpoint::arch_string(&self.net.config));
        meta.insert(META_CONFIG.into(), json(&self.config));
        // Without the clock's figures: equal runs write equal checkpoints (metrics.jsonl keeps the figures).
        meta.insert(META_PROGRESS.into(), json(&self.progress.without_timings()));
        meta.insert(
            META_OPTIMIZER.into(),
            json(&OptimizerMeta {
                kind: state.kind,
                step: state.step,
            }),
        );
        let bytes = checkpoint::serialize(&sd, &meta)?;
        checkpoint::write_atomic(&self.dir.join("checkpoint.safetensors"), &bytes)?;

        let config = serde_json::to_string_pretty(&self.config).expect("plain records serialize");
        checkpoint::write_atomic(&self.dir.join("config.json"), config.as_bytes())?;
        let lines: String = self
            .progress
            .history
            .iter()
            .map(|m| json(m) + "\n")
            .collect();
        checkpoint::write_atomic(&self.dir.join("metrics.jsonl"), lines.as_bytes())?;
        checkpoint::write_atomic(
            &self.dir.join("curve.svg"),
            curve_svg(&self.progress.history).as_bytes(),
        )?;
        Ok(())
    }
}

/// The epochs a run directory's `metrics.jsonl` logged; nothing where it is missing or unreadable (its figures
/// are informative: the run goes on without them), and lines that do not parse are skipped.
fn logged_metrics(dir: &Path) -> Vec<EpochMetrics> {
    let Ok(bytes) = checkpoint::read_file_limited(&dir.join("metrics.jsonl")) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[derive(Serialize, Deserialize)]
struct OptimizerMeta {
    kind: String,
    step: u64,
}

/// What an epoch's training steps came to, for its metrics.
#[derive(Default)]
struct Trained {
    /// Batches of the epoch.
    steps: usize,
    /// Sum of the batches' mean losses.
    loss_sum: f64,
    /// Images classified correctly, and images seen, over every rank.
    correct: usize,
    seen: usize,
    /// The learning rate of the last step.
    lr: f32,
    /// Seconds from the epoch's start to its last step's end.
    secs: f64,
}

/// One training step of a single process on `batch` at learning rate `lr`: forward, loss, backward, the finite
/// checks and the optimizer step. A steady-state step allocates nothing (`tests/alloc_free.rs`); the names of a
/// bad loss or gradient are formatted only when one is found.
pub(super) fn single_step(
    net: &mut ResNet,
    optimizer: &mut dyn Optimizer,
    batch: &Batch,
    lr: f32,
    label_smoothing: f32,
) -> Result<Step> {
    // On a pool worker, the step's parallel loops fork from it (see `on_pool`).
    crate::kernels::on_pool(|| step_on_worker(net, optimizer, batch, lr, label_smoothing))
}

/// [`single_step`]'s body.
fn step_on_worker(
    net: &mut ResNet,
    optimizer: &mut dyn Optimizer,
    batch: &Batch,
    lr: f32,
    label_smoothing: f32,
) -> Result<Step> {
    net.forward(&batch.images, batch.shape, Buffers::Own)?;
    let (loss, correct) = net.loss_smoothed(&batch.labels, label_smoothing)?;
    if !loss.is_finite() {
        return Ok(Step::Diverged(format!("loss is {loss}")));
    }
    net.backward(&batch.images, false, None);
    if let Some(name) = net.non_finite_grad() {
        return Ok(Step::Diverged(format!(
            "gradient of `{name}` is not finite"
        )));
    }
    optimizer.step_net(net, lr);
    Ok(Step::Done { loss, correct })
}

/// One of the run's records as a single JSON line.
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain records serialize")
}

fn build_optimizer(config: &TrainConfig, net: &mut ResNet) -> Result<Box<dyn Optimizer>> {
    let lens = net.param_lens();
    let mut options = config.optimizer_options();
    if config.optim.wd_skip_norm {
        options.no_decay = net.norm_and_bias_mask();
    }
    config.optim.optimizer.build(&options, &lens)
}

/// Loads a fine-tuning start into `net`: every tensor of the file at `path`, strictly, except the classifier's
/// when `reset_head` (which then keeps its fresh initialization).
fn load_init(net: &mut ResNet, path: &Path, reset_head: bool) -> Result<()> {
    ModelFile::load(path)
        .map_err(|e| Error::new(format!("--init {e}")))?
        .load_into(net, reset_head)
}
