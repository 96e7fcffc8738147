//! `resnet bench`: the chapter's ResNet-18 (or, with `--arch`, torchvision's models) timed the way
//! `tools/bench_pytorch.py` times PyTorch, or the data loader alone on an image folder.

use crate::bench::{
    bench_config, bench_loaded, bench_one, loaded_steps_report, plan_report, BenchResult, CONFIGS,
};
use crate::nn::ArchName;
use crate::{bail, outln, Result};

/// Options of `resnet bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Timed iterations per configuration (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Untimed warm-up iterations per configuration.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Batch size of the training and inference configurations (default: 256 for the chapter's network, 32
    /// for torchvision's).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Comma-separated subset of the configurations; `all` runs the network's default set: train28, train96,
    /// infer28, infer96, latency224 for the chapter's network, train224, infer224, latency224 for torchvision's.
    #[arg(long, default_value = "all")]
    pub only: String,
    /// Print each convolution's plan (the algorithm of its forward pass and gradients on this CPU) and time it
    /// alone: milliseconds and GFLOP/s per layer and per algorithm, instead of the whole-network timings (with
    /// --weights: each step of the file's network, f32 or int8, timed inside its forward pass).
    #[arg(long, conflicts_with_all = ["json", "loader"])]
    pub plan: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The network: the chapter's ResNet-18 (1 channel, 10 classes) or torchvision's resnet18…152 (3
    /// channels, 1000 classes).
    #[arg(long, value_enum, default_value = "chapter")]
    pub arch: ArchName,
    /// Time the data loader alone on this image folder (its `train/` if it has one) instead of the network:
    /// one shuffled epoch of the training transforms, images/s.
    #[arg(long, value_name = "DIR")]
    pub loader: Option<std::path::PathBuf>,
    /// With --loader: the transform preset (chapter, cifar, imagenet).
    #[arg(long, default_value = "imagenet")]
    pub transforms: crate::data::Preset,
    /// With --loader: worker threads decoding and transforming.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// With --loader: decoded-image cache in MiB (0: decode every image every epoch).
    #[arg(long, default_value_t = crate::data::folder::DEFAULT_CACHE_MB)]
    pub cache_mb: usize,
    /// Time this model file's network as predict, eval and serve load it (f32, or int8 from a quantized file)
    /// instead of `--arch`'s: its inference configurations (default: those at the size it was trained at,
    /// else infer224 and latency224).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["loader"])]
    pub weights: Option<std::path::PathBuf>,
}

/// Largest `--batch`.
pub const MAX_BATCH: usize = 4096;
/// Most `--iters` or `--warmup`.
pub const MAX_ITERS: usize = 100_000;

impl BenchArgs {
    /// The batch of the training and inference configurations.
    pub fn batch(&self) -> usize {
        self.batch.unwrap_or(if self.arch == ArchName::Chapter {
            256
        } else {
            32
        })
    }

    /// The configurations `--only all` runs for this network: the chapter's small images, or ImageNet's 224.
    fn default_set(&self) -> &'static [&'static str] {
        if self.arch == ArchName::Chapter {
            &["train28", "train96", "infer28", "infer96", "latency224"]
        } else {
            &["train224", "infer224", "latency224"]
        }
    }

    /// Checks the arguments; returns the selected configurations.
    pub fn check(&self) -> Result<Vec<&'static str>> {
        let mut selected = Vec::new();
        if self.only == "all" {
            selected = self.default_set().to_vec();
        } else {
            for s in self.only.split(',').map(str::trim) {
                match CONFIGS.iter().find(|c| c.0 == s) {
                    Some(c) => selected.push(c.0),
                    None => bail!(
                        "--only: unknown configuration `{s}`; choose from {}",
                        CONFIGS.map(|c| c.0).join(", ")
                    ),
                }
            }
        }
        if self.iters == 0 || self.iters > MAX_ITERS || self.warmup > MAX_ITERS {
            bail!("--iters must be between 1 and {MAX_ITERS} and --warmup at most {MAX_ITERS}");
        }
        if !(1..=64).contains(&self.workers) {
            bail!("--workers must be between 1 and 64, got {}", self.workers);
        }
        if !(2..=MAX_BATCH).contains(&self.batch()) {
            bail!(
                "--batch must be between 2 and {MAX_BATCH}, got {}",
                self.batch()
            );
        }
        Ok(selected)
    }
}

/// Runs the selected configurations and prints a table (or JSON).
pub fn run(args: &BenchArgs) -> Result<()> {
    let selected = args.check()?;
    if let Some(dir) = &args.loader {
        return run_loader(args, dir);
    }
    let engine = crate::kernels::conv::engine();
    if !args.json {
        outln!("convolutions: {engine}");
    }
    if let Some(path) = &args.weights {
        return run_weights(args, path, engine);
    }
    let config = bench_config(args.arch);
    if !args.json {
        outln!(
            "network: {} ({} input channels, {} classes, {} parameters)",
            config.name(),
            config.in_channels,
            config.num_classes,
            config.num_params().unwrap_or(0)
        );
    }
    let mut results = Vec::new();
    for name in selected {
        let &(_, train, size) = CONFIGS
            .iter()
            .find(|c| c.0 == name)
            .expect("check() selects from CONFIGS");
        let (batch, warmup, iters) = batch_and_iterations(args, name);
        if args.plan {
            plan_report(&config, name, train, batch, size, iters)?;
            continue;
        }
        let r = bench_one(&config, name, train, batch, size, warmup, iters)?;
        if !args.json {
            print_row(&r, "GFLOP/s");
        }
        results.push(r);
    }
    if args.json {
        let v = serde_json::json!({
            "threads": rayon::current_num_threads(),
            "engine": engine,
            "results": results,
        });
        outln!("{v}");
    }
    Ok(())
}

/// `bench --weights FILE`: the file's network, loaded as predict loads it, in the inference configurations
/// (`--only`, else those of its trained size, else infer224 and latency224).
fn run_weights(args: &BenchArgs, path: &std::path::Path, engine: String) -> Result<()> {
    let file = crate::model_file::ModelFile::load(path)?;
    let mut net = file.inference()?;
    let selected: Vec<&str> = if args.only == "all" {
        let size = file.trained_size.unwrap_or(224);
        let mut at: Vec<&str> = CONFIGS
            .iter()
            .filter(|c| !c.1 && c.2 == size)
            .map(|c| c.0)
            .collect();
        if at.is_empty() {
            at = vec!["infer224", "latency224"];
        }
        at
    } else {
        args.check()?
    };
    if !args.json {
        outln!(
            "network: {} from {} ({}, {} input channels, {} classes)",
            net.config().name(),
            path.display(),
            net.precision(),
            net.config().in_channels,
            net.config().num_classes
        );
    }
    let mut results = Vec::new();
    for name in selected {
        let &(_, train, size) = CONFIGS
            .iter()
            .find(|c| c.0 == name)
            .expect("selected from CONFIGS");
        if train {
            bail!("--weights {}: bench times a model file's inference only; `{name}` is a training configuration", path.display());
        }
        let (batch, warmup, iters) = batch_and_iterations(args, name);
        if args.plan {
            loaded_steps_report(&mut net, name, batch, size, iters)
                .map_err(|e| crate::Error::new(format!("--weights {}: {e}", path.display())))?;
            continue;
        }
        let r = bench_loaded(&mut net, name, batch, size, warmup, iters)
            .map_err(|e| crate::Error::new(format!("--weights {}: {e}", path.display())))?;
        if !args.json {
            print_row(&r, "GOP/s");
        }
        results.push(r);
    }
    if args.json {
        let v = serde_json::json!({
            "threads": rayon::current_num_threads(),
            "engine": engine,
            "precision": net.precision(),
            "results": results,
        });
        outln!("{v}");
    }
    Ok(())
}

/// `bench --loader DIR`: one epoch of the loader on an image folder, printed as a line (or JSON).
fn run_loader(args: &BenchArgs, dir: &std::path::Path) -> Result<()> {
    let preset = args.transforms;
    let opts = crate::data::FolderOptions {
        cache_mb: args.cache_mb,
        threads: args.workers.max(1),
        ..Default::default()
    };
    let batch = args.batch();
    let r = crate::data::bench_loader(dir, &opts, preset, batch, args.workers, None)?;
    if args.json {
        let v = serde_json::json!({
            "loader": dir.display().to_string(), "transforms": args.transforms.to_string(), "workers": args.workers,
            "batch": batch, "images": r.images, "seconds": r.seconds, "images_per_s": r.images_per_s,
            "open_seconds": r.open_seconds,
        });
        outln!("{v}");
    } else {
        outln!(
            "loader {}: {} images in {:.2} s: {:.0} images/s ({} workers, batch {}, {} transforms; opening took {:.2} s)",
            dir.display(),
            r.images,
            r.seconds,
            r.images_per_s,
            args.workers,
            batch,
            args.transforms,
            r.open_seconds
        );
    }
    Ok(())
}

/// One configuration's line of the table; `rate` names the rate's unit (GFLOP/s in f32, GOP/s in int8).
fn print_row(r: &BenchResult, rate: &str) {
    outln!(
        "{:<11} batch {:>3} {:>3}×{:<3} median {:>8.4} s (min {:.4}, max {:.4})  {:>8.1} images/s  {:>6.1} {rate}  fwd MACs {:.3e}  peak RSS {:.0} MiB",
        r.name, r.batch, r.size, r.size, r.median_s, r.min_s, r.max_s, r.images_per_s, r.gflops, r.forward_macs as f64, r.peak_rss_mib
    );
}

/// A configuration's batch (1 for the latency ones) and its warm-up and timed iterations (at least 3 and 20 at
/// batch 1, whose single passes are short and noisy).
fn batch_and_iterations(args: &BenchArgs, name: &str) -> (usize, usize, usize) {
    let batch = if name.starts_with("latency") {
        1
    } else {
        args.batch()
    };
    if batch == 1 {
        (batch, args.warmup.max(3), args.iters.max(20))
    } else {
        (batch, args.warmup, args.iters)
    }
}
