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
//! | [`quantize`] | a model file quantized to int8 after calibration |

pub mod bench;
pub mod eval;
pub mod export;
pub mod predict;
pub mod quantize;
pub mod serve;
pub mod summary;
pub mod train;

pub use bench::BenchArgs;
pub use eval::EvalArgs;
pub use export::ExportArgs;
pub use predict::PredictArgs;
pub use quantize::QuantizeArgs;
pub use serve::ServeArgs;
pub use summary::SummaryArgs;
pub use train::TrainArgs;

use crate::cli::{Cli, Command};
use crate::data::find_data_dir;
use crate::dist::Local;
use crate::error::Context;
use crate::{bail, Result};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `s` as text output may show it on a terminal: control characters (an escape sequence would run, a newline
/// would forge a line) and the bidirectional controls (which reorder what follows) escaped as Rust writes them,
/// `\n`, `\u{1b}`, `\u{202e}`; anything else as it is. Class names come from model files and folder names, image
/// names from the command line.
pub fn printable(s: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

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
        Command::Quantize(a) => quantize::run(&a),
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
    use super::{group_thousands, printable};

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert_eq!(printable("ankle boot"), "ankle boot");
        assert_eq!(printable("épée 靴"), "épée 靴");
        assert_eq!(
            printable("\x1b[31mred\nx.png: forged 1.000\t\r\u{202e}gnp"),
            "\\u{1b}[31mred\\nx.png: forged 1.000\\t\\r\\u{202e}gnp"
        );
    }

    #[test]
    fn thousands_are_grouped_from_the_right() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(11_178_378), "11,178,378");
    }
}
