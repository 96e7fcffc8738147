//! `resnet bench`: the chapter's ResNet-18 (or, with `--arch`, torchvision's models) timed the way `tools/bench_pytorch.py` times PyTorch — training step
//! (forward, loss, backward, Adam) and eval-mode inference in images/s, batch-1 latency, peak memory.

use crate::kernels::conv::ConvGeom;
use crate::nn::{ArchName, Buffers, ResNet, ResNetConfig};
use crate::optim::{Optimizer, OptimizerKind, OptimizerOptions};
use crate::{bail, Result, Shape4};
use serde::Serialize;
use std::time::Instant;

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
    /// alone: milliseconds and GFLOP/s per layer and per algorithm, instead of the whole-network timings.
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
        println!("{v}");
    } else {
        println!(
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

/// The network `bench --arch` times: the chapter's for one channel and 10 classes, torchvision's for RGB
/// images and ImageNet's 1000 classes.
pub fn bench_config(arch: ArchName) -> ResNetConfig {
    match arch {
        ArchName::Chapter => ResNetConfig::chapter(1, 10),
        _ => ResNetConfig::named(arch, 3, 1000),
    }
}

/// One measured configuration.
#[derive(Serialize, Debug, Clone)]
pub struct BenchResult {
    /// Configuration name, e.g. `train96` or `latency224`.
    pub name: String,
    /// Images per iteration.
    pub batch: usize,
    /// The network (`chapter`, `resnet50`, …).
    pub arch: String,
    /// Channels of the input images.
    pub channels: usize,
    /// Side of the square input images, pixels (input `[batch, channels, size, size]`).
    pub size: usize,
    /// Timed iterations.
    pub iters: usize,
    /// Median time of one iteration, seconds.
    pub median_s: f64,
    /// Fastest iteration, seconds.
    pub min_s: f64,
    /// Slowest iteration, seconds.
    pub max_s: f64,
    /// Throughput at the median: `batch / median_s`.
    pub images_per_s: f64,
    /// Multiply-accumulates of one forward pass over the batch.
    pub forward_macs: u64,
    /// Achieved: training counts 6 × forward MACs (forward 2, backward 4 FLOPs per MAC), inference 2 ×.
    pub gflops: f64,
    /// Peak resident memory of the process so far, MiB.
    pub peak_rss_mib: f64,
}

/// Multiply-accumulates of one forward pass of `net` on input `xs` (convolutions and the final Linear).
pub fn forward_macs(net: &ResNet, xs: Shape4) -> Result<u64> {
    let convs: u64 = net
        .conv_plans(xs)?
        .iter()
        .map(|(_, p)| conv_macs(&p.geom, p.batch))
        .sum();
    Ok(convs + (xs.n * net.fc.in_features * net.fc.out_features) as u64)
}

/// Multiply-accumulates of one convolution's forward pass over `n` images.
fn conv_macs(g: &ConvGeom, n: usize) -> u64 {
    (n * g.oh * g.ow * g.cout * g.kh * g.kw * g.cin) as u64
}

/// `bench --plan`: every convolution of `config` at `batch`×`size`², its plan, and its forward (and, when
/// `train`, backward) pass timed alone: milliseconds and GFLOP/s per layer, then per forward algorithm.
fn plan_report(
    config: &ResNetConfig,
    name: &str,
    train: bool,
    batch: usize,
    size: usize,
    iters: usize,
) -> Result<()> {
    let net = ResNet::new(config.clone(), 0)?;
    let xs = Shape4::new(batch, config.in_channels, size, size);
    let plans = net.conv_plans(xs)?;
    println!(
        "{name}: {} convolutions at batch {batch}, {size}×{size}",
        plans.len()
    );
    let mut by_algo: Vec<(String, f64, f64)> = Vec::new();
    let (mut total_s, mut total_flop) = (0.0, 0.0);
    for (index, (layer, plan)) in plans.iter().enumerate() {
        let g = &plan.geom;
        let fill = |len: usize, k: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * k) % 255) as f32 / 255.0 - 0.5)
                .collect()
        };
        let x = fill(batch * g.h * g.w * g.cin, 7919);
        let w = fill(g.patch_len() * g.cout, 104729);
        let mut y = vec![0.0f32; batch * g.oh * g.ow * g.cout];
        let mut ws = vec![0.0f32; plan.workspace_len()];
        let macs = conv_macs(g, batch) as f64;
        let (fwd, _, _) = time_it(1, iters, || {
            plan.forward(&x, &w, &[], &mut y, &mut ws);
            Ok(())
        })?;
        let mut line = format!(
            "  {layer:<22} {plan}\n  {:<22} fwd {:8.2} ms {:6.1} GFLOP/s",
            "",
            fwd * 1e3,
            2.0 * macs / fwd / 1e9
        );
        let (mut seconds, mut flop) = (fwd, 2.0 * macs);
        if train {
            let mut dw = vec![0.0f32; w.len()];
            let mut dx = vec![0.0f32; x.len()];
            // The stem's input gradient is never computed in training (nothing upstream learns).
            let stem = index == 0;
            let (bwd, _, _) = time_it(1, iters, || {
                let dx = (!stem).then_some(&mut dx[..]);
                plan.backward(&x, &w, &y, &mut dw, &mut [], dx, &mut ws);
                Ok(())
            })?;
            line += &format!(
                "   bwd {:8.2} ms {:6.1} GFLOP/s",
                bwd * 1e3,
                4.0 * macs / bwd / 1e9
            );
            seconds += bwd;
            flop += 4.0 * macs;
        }
        println!("{line}");
        let kind = plan.forward.to_string();
        match by_algo.iter_mut().find(|k| k.0 == kind) {
            Some(k) => {
                k.1 += seconds;
                k.2 += flop;
            }
            None => by_algo.push((kind, seconds, flop)),
        }
        total_s += seconds;
        total_flop += flop;
    }
    println!(
        "  by forward algorithm ({}):",
        if train {
            "forward + backward"
        } else {
            "forward"
        }
    );
    for (kind, seconds, flop) in &by_algo {
        println!(
            "    {kind:<28} {:8.1} ms {:6.1} GFLOP/s  {:4.1} % of the convolutions' time",
            seconds * 1e3,
            flop / seconds / 1e9,
            100.0 * seconds / total_s
        );
    }
    println!(
        "  all convolutions: {:.1} ms, {:.1} GFLOP/s",
        total_s * 1e3,
        total_flop / total_s / 1e9
    );
    Ok(())
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`; 0 where unavailable).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn input(xs: Shape4) -> Vec<f32> {
    (0..xs.len())
        .map(|i| ((i * 7919) % 256) as f32 / 255.0)
        .collect()
}

/// Times `f` after `warmup` calls: `(median, min, max)` seconds over `iters` calls.
fn time_it(
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, f64, f64)> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok((t[t.len() / 2], t[0], t[t.len() - 1]))
}

/// Measures one configuration of the network `config` describes: `train` (forward, loss, backward, Adam step)
/// or inference, at `batch`×channels×`size`².
pub fn bench_one(
    config: &ResNetConfig,
    name: &str,
    train: bool,
    batch: usize,
    size: usize,
    warmup: usize,
    iters: usize,
) -> Result<BenchResult> {
    let mut net = ResNet::new(config.clone(), 0)?;
    let xs = Shape4::new(batch, config.in_channels, size, size);
    let x = input(xs);
    let labels: Vec<usize> = (0..batch).map(|i| i % config.num_classes).collect();
    let macs = forward_macs(&net, xs)?;
    let (median, min, max) = if train {
        let mut opt: Box<dyn Optimizer> =
            OptimizerKind::Adam.build(&OptimizerOptions::default(), &net.param_lens())?;
        net.set_train(true);
        time_it(warmup, iters, || {
            net.forward(&x, xs, Buffers::Own)?;
            net.loss(&labels)?;
            net.backward(&x, false, None);
            opt.step_net(&mut net, 1e-3);
            Ok(())
        })?
    } else {
        net.set_train(false);
        time_it(warmup, iters, || {
            net.forward(&x, xs, Buffers::Own).map(|_| ())
        })?
    };
    let flops_per_mac = if train { 6.0 } else { 2.0 };
    Ok(BenchResult {
        name: name.to_string(),
        arch: config.name(),
        channels: config.in_channels,
        batch,
        size,
        iters,
        median_s: median,
        min_s: min,
        max_s: max,
        images_per_s: batch as f64 / median,
        forward_macs: macs,
        gflops: flops_per_mac * macs as f64 / median / 1e9,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// Largest `--batch`.
pub const MAX_BATCH: usize = 4096;
/// Most `--iters` or `--warmup`.
pub const MAX_ITERS: usize = 100_000;

/// Every configuration: name, training (or inference), input side. Latency configurations run batch 1.
const CONFIGS: [(&str, bool, usize); 7] = [
    ("train28", true, 28),
    ("train96", true, 96),
    ("infer28", false, 28),
    ("infer96", false, 96),
    ("train224", true, 224),
    ("infer224", false, 224),
    ("latency224", false, 224),
];

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
        println!("convolutions: {engine}");
    }
    let config = bench_config(args.arch);
    if !args.json {
        println!(
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
        let batch = if name.starts_with("latency") {
            1
        } else {
            args.batch()
        };
        let (warmup, iters) = if batch == 1 {
            (args.warmup.max(3), args.iters.max(20))
        } else {
            (args.warmup, args.iters)
        };
        if args.plan {
            plan_report(&config, name, train, batch, size, iters)?;
            continue;
        }
        let r = bench_one(&config, name, train, batch, size, warmup, iters)?;
        if !args.json {
            println!(
                "{:<11} batch {:>3} {:>3}×{:<3} median {:>8.4} s (min {:.4}, max {:.4})  {:>8.1} images/s  {:>6.1} GFLOP/s  fwd MACs {:.3e}  peak RSS {:.0} MiB",
                r.name, r.batch, r.size, r.size, r.median_s, r.min_s, r.max_s, r.images_per_s, r.gflops, r.forward_macs as f64, r.peak_rss_mib
            );
        }
        results.push(r);
    }
    if args.json {
        let v = serde_json::json!({
            "threads": rayon::current_num_threads(),
            "engine": engine,
            "results": results,
        });
        println!("{v}");
    }
    Ok(())
}
