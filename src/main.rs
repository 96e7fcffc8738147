//! The `resnet` command line: train, eval, predict, summary, bench.

use clap::Parser;
use resnet::checkpoint::{self, META_INPUT_SIZE};
use resnet::cli::{default_classes, default_summary_input, parse_shape, Cli, Command, TrainArgs};
use resnet::data::transforms::INPUT_SIZES;
use resnet::data::{
    find_data_dir, image_file, Dataset, Loader, Split, TransformConfig, CLASS_NAMES,
};
use resnet::nn::{ArchName, ResNet, ResNetConfig, Stem};
use resnet::train::{evaluate, Data, ProgressMode, Run};
use resnet::{bail, Error, Result, Shape4};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

fn summary(arch: ArchName, input: Option<&str>, classes: Option<usize>, stem: Stem) -> Result<()> {
    let xs = parse_shape(input.unwrap_or(default_summary_input(arch)))?;
    let classes = classes.unwrap_or(default_classes(arch));
    let config = ResNetConfig {
        stem,
        ..ResNetConfig::named(arch, xs.c, classes)
    };
    let mut net = ResNet::new(config, 0)?;
    let walk = net.shape_walk(xs)?;
    // Run the network for real (eval mode) so the printed walk is what the engine computes.
    net.set_train(false);
    let x: Vec<f32> = (0..xs.len()).map(|i| (i % 251) as f32 / 251.0).collect();
    let logits_len = net.forward(&x, xs)?.len();
    debug_assert_eq!(logits_len, xs.n * classes);
    for (name, dims) in &walk {
        let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        println!("{name}  output shape:\t torch.Size([{}])", dims.join(", "));
    }
    println!("parameters: {}", group_thousands(net.num_params()));
    Ok(())
}

fn group_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("runs").join(format!("run-{secs}"))
}

fn train(a: TrainArgs) -> Result<()> {
    let data_dir = find_data_dir(a.data.as_deref())?;
    let verify =
        a.data.is_none() && std::env::var_os(resnet::data::fashion_mnist::ENV_VAR).is_none();
    let (mut run, data) = match &a.resume {
        Some(dir) => {
            let run = Run::resume(dir, a.epochs)?;
            println!(
                "resuming {} after epoch {} of {}",
                dir.display(),
                run.progress.epochs_done,
                run.config.epochs
            );
            let data = Data::load(&data_dir, verify, &run.config)?;
            (run, data)
        }
        None => {
            let config = a.config()?;
            // Load (and check) the data before the run directory is created, so bad data leaves nothing behind.
            let data = Data::load(&data_dir, verify, &config)?;
            let run = Run::create(&a.out.clone().unwrap_or_else(default_run_dir), config)?;
            (run, data)
        }
    };
    println!(
        "training on cpu ({} threads), {} training and {} test images from {}, run directory {}",
        rayon::current_num_threads(),
        data.train.len(),
        data.test.len(),
        data_dir.display(),
        run.dir.display()
    );
    let mode = if a.quiet {
        ProgressMode::Quiet
    } else {
        ProgressMode::Auto
    };
    run.train(&data, mode, |m| println!("{}", m.line()))?;
    println!("saved {}", run.dir.join("model.safetensors").display());
    Ok(())
}

/// How `predict` turns an image file into the network's input.
enum Preprocess {
    /// Grayscale (PIL's `convert('L')`), `Resize(size)` on the shorter side, `ToTensor`: the chapter's.
    Gray { size: usize },
    /// RGB, torchvision's ImageNet evaluation transform (resize 256, center crop 224, ImageNet mean and std).
    ImageNet,
}

/// The input size of a one-channel model: `--resize`, else the size stored in the file.
fn input_size(
    path: &Path,
    meta: &BTreeMap<String, String>,
    resize: Option<usize>,
) -> Result<usize> {
    Ok(match (resize, meta.get(META_INPUT_SIZE)) {
        // `--resize` was range-checked with the other arguments (`Cli::check`).
        (Some(r), _) => r,
        (None, Some(s)) => match s.parse() {
            Ok(r) if INPUT_SIZES.contains(&r) => r,
            _ => bail!(
                "{}: bad `{META_INPUT_SIZE}` metadata `{s}` (expected a size between {} and {}); pass --resize N to override it",
                path.display(),
                INPUT_SIZES.start(),
                INPUT_SIZES.end()
            ),
        },
        (None, None) => bail!("{}: the file does not say what input size it was trained at (PyTorch files don't): pass --resize N (the chapter trains at 96)", path.display()),
    })
}

/// The class names of a model's outputs: Fashion-MNIST's for one channel and 10 classes, ImageNet's for 1000
/// classes, `class K` otherwise.
fn class_names(config: &ResNetConfig) -> Vec<String> {
    match (config.in_channels, config.num_classes) {
        (1, 10) => CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        (_, 1000) => IMAGENET_CLASSES.lines().map(str::to_string).collect(),
        (_, k) => (0..k).map(|i| format!("class {i}")).collect(),
    }
}

/// Loads weights for `eval` on Fashion-MNIST: a one-channel, 10-class network and its input size.
fn load_for_fashion_mnist(path: &Path, resize: Option<usize>) -> Result<(ResNet, usize)> {
    let (net, meta) = checkpoint::load_model(path)?;
    if net.config.in_channels != 1 || net.config.num_classes != CLASS_NAMES.len() {
        bail!(
            "{}: a network for {} channels and {} classes, not Fashion-MNIST's 1 and 10",
            path.display(),
            net.config.in_channels,
            net.config.num_classes
        );
    }
    let size = input_size(path, &meta, resize)?;
    Ok((net, size))
}

fn eval(
    weights: &Path,
    data: Option<&Path>,
    resize: Option<usize>,
    limit: Option<usize>,
    batch_size: usize,
) -> Result<()> {
    let (mut net, size) = load_for_fashion_mnist(weights, resize)?;
    let dir = find_data_dir(data)?;
    let mut test = Dataset::load(&dir, Split::Test, data.is_none())?;
    if let Some(n) = limit {
        test = test.take(n);
    }
    let transform = TransformConfig {
        resize: (size != 28).then_some(size),
        normalize: None,
        augment: false,
    };
    let loader = Loader::new(Arc::new(test), batch_size, false, 0, transform)?;
    let ev = evaluate(&mut net, &loader)?;
    println!(
        "test acc {:.4} ({} images, input {size}×{size})",
        ev.accuracy, ev.count
    );
    println!("\nper-class accuracy:");
    for (name, acc) in CLASS_NAMES.iter().zip(ev.per_class()) {
        println!("  {name:<12} {acc:.3}");
    }
    println!("\nconfusion matrix (rows: true class, columns: predicted):");
    print!("{:<12}", "");
    for i in 0..CLASS_NAMES.len() {
        print!("{i:>6}");
    }
    println!();
    for (i, row) in ev.confusion.iter().enumerate() {
        print!("{:<12}", format!("{i} {}", CLASS_NAMES[i]));
        for v in row {
            print!("{v:>6}");
        }
        println!();
    }
    Ok(())
}

/// ImageNet's 1000 class names in label order (torchvision's `weights.meta["categories"]`).
const IMAGENET_CLASSES: &str = include_str!("data/imagenet_classes.txt");

fn softmax(logits: &[f32]) -> Vec<f64> {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn predict(
    weights: &Path,
    images: &[PathBuf],
    resize: Option<usize>,
    topk: usize,
    json: bool,
) -> Result<()> {
    let (mut net, meta) = checkpoint::load_model(weights)?;
    let preprocess = match net.config.in_channels {
        1 => Preprocess::Gray {
            size: input_size(weights, &meta, resize)?,
        },
        3 => Preprocess::ImageNet,
        c => bail!(
            "{}: a network for {c} channels; predict reads images as grayscale (1) or RGB (3)",
            weights.display()
        ),
    };
    let names = class_names(&net.config);
    net.set_train(false);
    for path in images {
        let (x, xs) = match preprocess {
            Preprocess::Gray { size } => {
                let (x, h, w) = image_file::load_for_model(path, size)?;
                (x, Shape4::new(1, 1, h, w))
            }
            Preprocess::ImageNet => {
                let x = image_file::imagenet_eval(&image_file::read_rgb(path)?, path)?;
                (x, Shape4::new(1, 3, 224, 224))
            }
        };
        let logits = net
            .forward(&x, xs)
            .map_err(|e| Error::new(format!("{}: {e}", path.display())))?
            .to_vec();
        let probs = softmax(&logits);
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let top = &order[..topk.min(order.len())];
        if json {
            let v = serde_json::json!({
                "image": path.display().to_string(),
                "logits": logits,
                "probabilities": probs,
                "predicted": order[0],
                "class": names[order[0]],
                "top": top.iter().map(|&c| serde_json::json!({
                    "index": c, "class": names[c], "probability": probs[c],
                })).collect::<Vec<_>>(),
            });
            println!("{v}");
        } else {
            let top: Vec<String> = top
                .iter()
                .map(|&c| format!("{} {:.3}", names[c], probs[c]))
                .collect();
            println!("{}: {}", path.display(), top.join(", "));
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    cli.check()?;
    let threads = cli
        .threads
        .unwrap_or_else(|| num_cpus::get_physical().max(1));
    // One pool for everything: our kernels and the GEMM crate both run on it, so nothing oversubscribes the cores.
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| Error::new(format!("thread pool: {e}")))?;
    match cli.command {
        Command::Train(a) => train(a),
        Command::Eval {
            weights,
            data,
            resize,
            limit,
            batch_size,
        } => eval(&weights, data.as_deref(), resize, limit, batch_size),
        Command::Predict {
            weights,
            images,
            resize,
            topk,
            json,
        } => predict(&weights, &images, resize, topk, json),
        Command::Summary {
            arch,
            input,
            classes,
            stem,
        } => summary(arch, input.as_deref(), classes, stem),
        Command::Bench(args) => resnet::bench::run(&args),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
