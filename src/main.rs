//! The `resnet` command line: train, eval, predict, summary, bench, serve, export. Each subcommand is a function of
//! the library ([`resnet::commands`]); this binary parses the arguments and reports the error.

// Standard output goes through `resnet::outln!`, which ends quietly when the reader has gone (see resnet::out).
#![deny(clippy::print_stdout)]

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::Parser;
use resnet::cli::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match resnet::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command line clap refuses, as one `error: ` line that names the flag (status 2, clap's): clap's own
/// message is several lines, and a negative number after a flag (`--epochs -1`) reads to it as an unknown
/// flag `-1`. Help and version requests print as clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let invalid = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let args: Vec<String> = std::env::args().collect();
    let negative_value = invalid
        .as_ref()
        .filter(|a| a.parse::<f64>().is_ok_and(|v| v < 0.0));
    let line = match (e.kind(), negative_value) {
        (ErrorKind::UnknownArgument, Some(value)) => {
            let flag = args
                .iter()
                .position(|a| a == value)
                .and_then(|i| i.checked_sub(1))
                .map(|i| args[i].clone())
                .filter(|f| f.starts_with("--"));
            match flag {
                Some(flag) => format!("{flag}: negative values are not accepted, got {value}"),
                None => format!("unexpected argument '{value}'"),
            }
        }
        _ => {
            // clap's first paragraph (a missing argument's name is on the line after), on one line.
            let text = e.render().to_string();
            let paragraph: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let joined = paragraph.join(" ");
            joined
                .strip_prefix("error: ")
                .unwrap_or(&joined)
                .to_string()
        }
    };
    eprintln!("error: {line} (see --help)");
    ExitCode::from(2)
}
