//! The subcommands, each an `Args` struct (its flags, parsed by clap and checked without
//! touching a file) and a `run` function: what `resnet COMMAND` does, reachable from the library's tests.
//!
//! | command | |
//! |---|---|
//! | [`train`] | a training run, fresh or resumed, in one process or as one rank of an MPI job |
//! | [`eval`] | accuracy, per-class accuracy and confusion matrix of a model file on a test set |
//! | [`predict`] | the top classes of image files |
//! | [`summary`] | a network's shape walk, parameter count and convolution plans |
//! | [`bench`](mod@bench) | training and inference throughput, latency, memory; or the data loader alone |
//! | [`serve`] | a model behind HTTP |
//! | [`export`] | a model file as ONNX |

pub mod bench;
pub mod eval;
pub mod export;
pub mod predict;
pub mod serve;
pub mod summary;
pub mod train;

pub use bench::BenchArgs;
pub use eval::EvalArgs;
pub use export::ExportArgs;
pub use predict::PredictArgs;
pub use serve::ServeArgs;
pub use summary::SummaryArgs;
pub use train::TrainArgs;

use crate::cli::{Cli, Command};
use crate::data::find_data_dir;
use crate::dist::Local;
use crate::error::Context;
use crate::{bail, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Runs what the command line asks for: the flags checked ([`Cli::check`]), the thread pool built, then the
/// subcommand.
pub fn run(cli: Cli) -> Result<()> {
    let check = cli.check();
    // Under mpirun the ranks check their flags together, so that a bad one is reported once.
    #[cfg(feature = "mpi")]
    let cli = match cli.command {
        Command::Train(a) => return train::run_mpi(check, cli.threads, &a),
        command => Cli { command, ..cli },
    };
    check?;
    thread_pool(cli.threads)?;
    match cli.command {
        Command::Train(a) => train::run(&a, Arc::new(Local::default())),
        Command::Eval(a) => eval::run(&a),
        Command::Predict(a) => predict::run(&a),
        Command::Summary(a) => summary::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Serve(a) => serve::run(&a),
        Command::Export(a) => export::run(&a),
    }
}

/// One pool for everything: our kernels and the GEMM crate both run on it, so nothing oversubscribes the cores.
/// `threads` is `--threads` (default: the physical cores).
pub fn thread_pool(threads: Option<usize>) -> Result<()> {
    let threads = threads.unwrap_or_else(|| num_cpus::get_physical().max(1));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("thread pool")
}

/// `--data DIR` as given (any format; checked when opened), else `$RESNET_DATA` or the bundled Fashion-MNIST.
pub fn data_dir(flag: Option<&Path>) -> Result<PathBuf> {
    match flag {
        Some(dir) if !dir.is_dir() => bail!("--data {}: no such directory", dir.display()),
        Some(dir) => Ok(dir.to_path_buf()),
        None => find_data_dir(None),
    }
}

/// Whether the data comes from the bundled or system Fashion-MNIST, whose checksums are known.
pub fn verify_bundled(flag: Option<&Path>) -> bool {
    flag.is_none() && std::env::var_os(crate::data::fashion_mnist::ENV_VAR).is_none()
}

/// `n` with its thousands separated by commas: 11,178,378.
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

#[cfg(test)]
mod tests {
    use super::group_thousands;

    #[test]
    fn thousands_are_grouped_from_the_right() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(11_178_378), "11,178,378");
    }
}
