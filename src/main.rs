//! The `resnet` command line: train, eval, predict, summary, bench, serve. Training runs here; the other
//! subcommands are the library's [`resnet::commands`].

use clap::Parser;
use resnet::cli::{Cli, Command, TrainArgs};
use resnet::commands::{self, thread_pool};
use resnet::data::{channel_mean_std, find_data_dir, Format};
use resnet::dist::{agree, Collective};
use resnet::train::{check_identity, Data, ProgressMode, Run, TrainConfig};
use resnet::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

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

/// `resnet train`: a single process (`comm` `None`), or one rank of a data-parallel job.
fn train(a: TrainArgs, comm: Option<Arc<dyn Collective>>) -> Result<()> {
    let lead = comm.as_ref().is_none_or(|c| c.rank() == 0);
    if let Some(c) = &comm {
        println!(
            "rank {} of {} on {} (pid {})",
            c.rank(),
            c.size(),
            c.host(),
            std::process::id()
        );
    }
    let data_dir = agreed(&comm, data_dir(a.data.as_deref()))?;
    let verify = verify_bundled(a.data.as_deref());
    let (mut run, data) = match &a.resume {
        Some(dir) => {
            let run = match &comm {
                Some(c) => Run::resume_distributed(dir, a.settings.epochs, c.clone())?,
                None => Run::resume(dir, a.settings.epochs)?,
            };
            if lead {
                println!(
                    "resuming {} after epoch {} of {}",
                    dir.display(),
                    run.progress.epochs_done,
                    run.config.epochs
                );
            }
            // Run::train checks that the data fits the run (channels, classes).
            let data = agreed(
                &comm,
                Data::load(&data_dir, verify, &run.config, a.cache_mb),
            )?;
            if let Some(c) = &comm {
                check_identity(&**c, &run.config, &data)?;
            }
            (run, data)
        }
        None => {
            // Load (and check) the data before the run directory is created, so bad data leaves nothing behind.
            let (config, data) = agreed(&comm, fresh_config(&a, &data_dir, verify))?;
            let out = a.out.clone().unwrap_or_else(default_run_dir);
            let run = match &comm {
                Some(c) => {
                    check_identity(&**c, &config, &data)?;
                    Run::create_distributed(&out, config, c.clone())?
                }
                None => Run::create(&out, config)?,
            };
            (run, data)
        }
    };
    if lead {
        for note in &data.notes {
            println!("{note}");
        }
        let ranks = match &comm {
            Some(c) => format!(
                "{} ranks × {} threads",
                c.size(),
                rayon::current_num_threads()
            ),
            None => format!("{} threads", rayon::current_num_threads()),
        };
        println!(
            "training on cpu ({ranks}), {} training and {} {} images ({} channels, {} classes) from {}, run directory {}",
            data.train.len(),
            data.test.len(),
            if run.config.val_split.is_some() { "validation" } else { "test" },
            run.config.in_channels,
            run.config.num_classes(),
            data_dir.display(),
            run.dir.display()
        );
        println!(
            "recipe {}: {}",
            run.config.recipe,
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
        if let Some(target) = run.config.target_acc {
            match run.target_reached() {
                Some(m) => println!(
                    "reached --target-acc {target} at epoch {}: accuracy {:.4} after {:.1} s of training and evaluation",
                    m.epoch, m.test_acc, m.elapsed_sec
                ),
                None => println!(
                    "--target-acc {target} not reached in {} epochs",
                    run.config.epochs
                ),
            }
        }
        println!("saved {}", run.dir.join("model.safetensors").display());
    }
    Ok(())
}

/// `local` of a single process as it is; in a job, a step that failed on one rank fails every rank (rank 0
/// reports it).
fn agreed<T>(comm: &Option<Arc<dyn Collective>>, local: Result<T>) -> Result<T> {
    match comm {
        Some(c) => agree(&**c, local),
        None => local,
    }
}

/// A fresh run's configuration from the flags and the data it trains on (opened and checked here).
fn fresh_config(a: &TrainArgs, data_dir: &Path, verify: bool) -> Result<(TrainConfig, Data)> {
    let mut config = a.config()?;
    let data = Data::load(data_dir, verify, &config, a.cache_mb)?;
    // The network follows the data: its channels and its classes.
    config.in_channels = data.train.channels();
    config.classes = data.train.classes().to_vec();
    if let Some((m, _)) = config.channel_norm.as_ref().filter(|(m, _)| m.len() != 1) {
        if m.len() != config.in_channels {
            bail!(
                "--mean / --std: {} values, but the images have {} channels",
                m.len(),
                config.in_channels
            );
        }
    }
    let fashion_like = data.format == Format::Idx && config.in_channels == 1;
    if config.normalize.is_some() && !fashion_like {
        config.normalize = None;
        config.channel_norm = Some(channel_mean_std(&*data.train)?);
    }
    config.validate()?;
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
        return train(a, None);
    };
    let mpi = Arc::new(mpi);
    let result = agree(&*mpi, check.and_then(|()| thread_pool(threads)))
        .and_then(|()| train(a, Some(mpi.clone())));
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
        Command::Train(a) => train(*a, None),
        Command::Eval(a) => commands::eval::run(&a),
        Command::Predict(a) => commands::predict::run(&a),
        Command::Summary(a) => commands::summary::run(&a),
        Command::Bench(a) => commands::bench::run(&a),
        Command::Serve(a) => commands::serve::run(&a),
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
