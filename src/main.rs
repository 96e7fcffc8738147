//! The `resnet` command line: train, eval, predict, summary, bench.

use clap::Parser;
use resnet::checkpoint::META_CLASSES;
use resnet::cli::{default_classes, default_summary_input, parse_shape, Cli, Command, TrainArgs};
use resnet::data::{find_data_dir, image_file, open_data, DataOptions, Format, Loader, Subset};
use resnet::dist::{agree, Collective, Local};
use resnet::infer::{
    class_names, load_model, preprocess_for, ranked, softmax, stored_pipeline, Model,
};
use resnet::nn::{ArchName, ResNet, ResNetConfig, Stem};
use resnet::train::{check_identity, evaluate, Data, ProgressMode, Run, TrainConfig};
use resnet::{bail, Error, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

fn summary(
    arch: ArchName,
    input: Option<&str>,
    classes: Option<usize>,
    stem: Stem,
    plan: bool,
) -> Result<()> {
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
    if plan {
        println!(
            "convolution plans at batch {} ({}):",
            xs.n,
            resnet::kernels::conv::engine()
        );
        for (name, p) in net.conv_plans(xs)? {
            println!("  {name:<22} {p}");
        }
    }
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

/// `--data DIR` as given (any format; checked when opened), else `$RESNET_DATA` or the bundled Fashion-MNIST.
fn data_dir(flag: Option<&Path>) -> Result<PathBuf> {
    match flag {
        Some(dir) if !dir.is_dir() => bail!("--data {}: no such directory", dir.display()),
        Some(dir) => Ok(dir.to_path_buf()),
        None => find_data_dir(None),
    }
}

/// Whether the data comes from the bundled or system Fashion-MNIST, whose checksums are known.
fn verify_bundled(flag: Option<&Path>) -> bool {
    flag.is_none() && std::env::var_os(resnet::data::fashion_mnist::ENV_VAR).is_none()
}

/// `resnet train`: one rank of a data-parallel job, or a single process (`comm` [`Local`]).
fn train(a: TrainArgs, comm: Arc<dyn Collective>) -> Result<()> {
    let lead = comm.rank() == 0;
    if comm.size() > 1 {
        println!(
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
                println!(
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
            let (config, data) = agree(&*comm, fresh_config(&a, &data_dir, verify))?;
            let out = a.out.clone().unwrap_or_else(default_run_dir);
            check_identity(&*comm, &config, &data)?;
            (Run::create(&out, config, comm.clone())?, data)
        }
    };
    if lead {
        for note in &data.notes {
            println!("{note}");
        }
        let threads = rayon::current_num_threads();
        let ranks = match comm.size() {
            1 => format!("{threads} threads"),
            n => format!("{n} ranks × {threads} threads"),
        };
        println!(
            "training on cpu ({ranks}), {} training and {} {} images ({} channels, {} classes) from {}, run directory {}",
            data.train.len(),
            data.test.len(),
            if run.config.data.val_split.is_some() { "validation" } else { "test" },
            run.config.model.in_channels,
            run.config.num_classes(),
            data_dir.display(),
            run.dir.display()
        );
        println!(
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
            println!("{}", m.line());
            if let Some(d) = &m.dist {
                println!("  {}", d.line());
            }
        }
    })?;
    if lead {
        if let Some(target) = run.config.run.target_acc {
            match run.target_reached() {
                Some(m) => println!(
                    "reached --target-acc {target} at epoch {}: accuracy {:.4} after {:.1} s of training and evaluation",
                    m.epoch, m.test_acc, m.elapsed_sec
                ),
                None => println!(
                    "--target-acc {target} not reached in {} epochs",
                    run.config.run.epochs
                ),
            }
        }
        println!("saved {}", run.dir.join("model.safetensors").display());
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

/// `resnet train` as one rank of an MPI job (`mpirun -np N resnet train …`), or as a single process when
/// started alone; `check` is the flags' check ([`Cli::check`]), `threads` the `--threads` flag. Errors that all
/// ranks agreed on are printed once, by rank 0, and every rank exits with status 1; an error only this rank knows
/// of is printed with its rank and host and ends the whole job (`MPI_Abort`), since the others would wait for it
/// forever.
#[cfg(feature = "mpi")]
fn train_mpi(check: Result<()>, threads: Option<usize>, a: TrainArgs) -> Result<()> {
    use resnet::dist::mpi::Mpi;
    let Some(mpi) = Mpi::init()? else {
        check?;
        thread_pool(threads)?;
        return train(a, Arc::new(Local::default()));
    };
    let mpi = Arc::new(mpi);
    let result = agree(&*mpi, check.and_then(|()| thread_pool(threads)))
        .and_then(|()| train(a, mpi.clone()));
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

#[allow(clippy::too_many_arguments)]
fn eval(
    weights: &Path,
    arch: Option<ArchName>,
    data: Option<&Path>,
    format: Format,
    val_split: Option<f64>,
    seed: u64,
    resize: Option<usize>,
    limit: Option<usize>,
    batch_size: usize,
    tta: bool,
) -> Result<()> {
    let (mut net, meta) = load_model(weights, arch)?;
    let names = class_names(weights, &net.config, &meta)?;
    let stored = stored_pipeline(weights, &meta)?.filter(|_| resize.is_none());
    let dir = data_dir(data)?;
    let opts = DataOptions {
        format,
        // A model trained here says how its images were prepared: convert the data to its channels.
        channels: stored.as_ref().map(|_| net.config.in_channels),
        val_split,
        seed,
        verify: verify_bundled(data),
        test_only: true,
        ..DataOptions::default()
    };
    let splits = open_data(&dir, &opts)?;
    let mut test = splits.test;
    if let Some(n) = limit {
        test = Arc::new(Subset::first(test, n));
    }
    let (c, k) = (test.channels(), test.classes().len());
    if c != net.config.in_channels {
        bail!(
            "{}: a network for {} channels, but the images of {} have {c}",
            weights.display(),
            net.config.in_channels,
            dir.display()
        );
    }
    if k != net.config.num_classes {
        bail!(
            "{}: a network for {} classes, but {} holds {k}",
            weights.display(),
            net.config.num_classes,
            dir.display()
        );
    }
    if meta.contains_key(META_CLASSES) && test.classes() != names.as_slice() {
        let i = (0..k).find(|&i| test.classes()[i] != names[i]).unwrap_or(0);
        bail!(
            "{}: class {i} is `{}`, but in {} it is `{}`: the labels would not mean the same classes",
            weights.display(),
            names[i],
            dir.display(),
            test.classes()[i]
        );
    }
    let pipeline = preprocess_for(weights, &meta, resize, c)?;
    let loader = Loader::with_pipeline(test, batch_size, false, 0, pipeline)?;
    let ev = evaluate(&mut net, &loader, tta)?;
    let (h, w) = loader.image_size();
    println!(
        "{} acc {:.4} ({} images, input {h}×{w}{})",
        if val_split.is_some() {
            "validation"
        } else {
            "test"
        },
        ev.accuracy,
        ev.count,
        if tta { ", flip TTA" } else { "" }
    );
    let width = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(12, 32);
    println!("\nper-class accuracy:");
    for (name, acc) in names.iter().zip(ev.per_class()) {
        println!("  {name:<width$} {acc:.3}");
    }
    println!("\nconfusion matrix (rows: true class, columns: predicted):");
    print!("{:<width$}", "");
    for i in 0..names.len() {
        print!("{i:>6}");
    }
    println!();
    for (i, row) in ev.confusion.iter().enumerate() {
        let label: String = format!("{i} {}", names[i]).chars().take(width).collect();
        print!("{label:<width$}");
        for v in row {
            print!("{v:>6}");
        }
        println!();
    }
    Ok(())
}

fn predict(
    weights: &Path,
    arch: Option<ArchName>,
    images: &[PathBuf],
    resize: Option<usize>,
    topk: usize,
    json: bool,
    tta: bool,
) -> Result<()> {
    let mut model = Model::load(weights, arch, resize)?;
    for path in images {
        let origin = path.display().to_string();
        let img = image_file::read_image(path, model.channels())?;
        let (x, xs) = model.input(img, &origin)?;
        let logits = model
            .logits(&x, xs, tta)
            .map_err(|e| Error::new(format!("{origin}: {e}")))?;
        let probs = softmax(&logits);
        let order = ranked(&probs);
        let top = &order[..topk.min(order.len())];
        let names = &model.names;
        if json {
            let v = serde_json::json!({
                "image": origin,
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
            println!("{origin}: {}", top.join(", "));
        }
    }
    Ok(())
}

/// One pool for everything: our kernels and the GEMM crate both run on it, so nothing oversubscribes the cores.
fn thread_pool(threads: Option<usize>) -> Result<()> {
    let threads = threads.unwrap_or_else(|| num_cpus::get_physical().max(1));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| Error::new(format!("thread pool: {e}")))
}

fn run(cli: Cli) -> Result<()> {
    let check = cli.check();
    // Under mpirun the ranks check their flags together, so that a bad one is reported once.
    #[cfg(feature = "mpi")]
    let cli = match cli.command {
        Command::Train(a) => return train_mpi(check, cli.threads, *a),
        command => Cli { command, ..cli },
    };
    check?;
    thread_pool(cli.threads)?;
    match cli.command {
        Command::Train(a) => train(*a, Arc::new(Local::default())),
        Command::Eval {
            weights,
            data,
            format,
            arch,
            val_split,
            seed,
            resize,
            limit,
            batch_size,
            tta,
        } => eval(
            &weights,
            arch,
            data.as_deref(),
            format,
            val_split,
            seed,
            resize,
            limit,
            batch_size,
            tta,
        ),
        Command::Predict {
            weights,
            images,
            resize,
            topk,
            arch,
            json,
            tta,
        } => predict(&weights, arch, &images, resize, topk, json, tta),
        Command::Summary {
            arch,
            input,
            classes,
            stem,
            plan,
        } => summary(arch, input.as_deref(), classes, stem, plan),
        Command::Bench(args) => resnet::bench::run(&args),
        Command::Serve(args) => {
            let opts = args.options()?;
            let mut model = Model::load(&args.weights, args.arch, args.resize)?;
            model.net.set_batch_independent(args.batch_invariant);
            println!(
                "serving {} ({}, {} classes) from {}",
                model.net.config.name(),
                group_thousands(model.net.num_params()),
                model.names.len(),
                args.weights.display()
            );
            resnet::serve::serve(model, opts)
        }
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
