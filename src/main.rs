//! The `resnet` command line: train, eval, predict, summary, bench, serve, export. Each subcommand is a function of the
//! library ([`resnet::commands`]); this binary parses the arguments and reports the error.

// Standard output goes through `resnet::outln!`, which ends quietly when the reader has gone (see resnet::out).
#![deny(clippy::print_stdout)]

use clap::Parser;
use resnet::cli::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match resnet::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
