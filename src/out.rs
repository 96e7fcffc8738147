//! Standard output, written in one place: [`outln!`](crate::outln) for what a command reports, [`status_line`]
//! for the status lines of a server.
//!
//! Rust ignores SIGPIPE, so a write to a pipe whose reader has gone fails with EPIPE, and `println!` panics on
//! it: `resnet summary | head -n 1` used to end with status 101 and a backtrace. There were two ways out.
//!
//! - Restore SIGPIPE's default action at the start of `main`, so that the process dies by the signal, as C tools
//!   do. But the signal would then apply to every descriptor, not only to standard output. `serve` answers
//!   through hyper, which writes to its sockets with vectored writes. Through mio and std these become `writev`,
//!   which has no `MSG_NOSIGNAL` flag (std passes that flag only to `send`). So a client that closed its
//!   connection in the middle of an answer would kill the server. A closed stderr would also kill a training
//!   run at its next progress line.
//! - Handle the error where standard output is written. This module does that: the failure is handled for
//!   standard output alone, on every platform, and `clippy::print_stdout` (denied in `lib.rs` and `main.rs`)
//!   keeps `println!` out of the crate.
//!
//! When the reader has gone, a command ends at once with status 0, printing nothing: the reader took what it
//! wanted, so a `set -o pipefail` script that reads only the first lines does not fail. That is ripgrep's
//! convention, and what clap already does for `resnet --help | head -n 1`. Ending there, without unwinding, is
//! as safe as Ctrl-C, which every command already survives: `train` renames its checkpoints into place
//! atomically, and the OS releases its lock, so the run continues with `--resume`. Any other failure, such as a
//! full disk behind `>`, is one `error:` line and status 1.
//!
//! `serve` is a daemon. A dead log reader must not take the service down with it, so the server's status lines
//! go through [`status_line`], which drops what cannot be written, and the server keeps answering.

use std::fmt;
use std::io::{self, Write};

/// Prints a line to standard output, as `println!` does. If the reader has gone (a closed pipe), the process
/// exits with status 0 and prints nothing; any other write error is an `error:` line on stderr and status 1.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}

/// What [`outln!`](crate::outln) runs: writes `args` and a newline to standard output, and ends the process
/// if the line cannot be written (see the [module](self)).
pub fn line(args: fmt::Arguments<'_>) {
    if let Err(e) = write_line(args) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // Not `eprintln!`, which panics when stderr cannot be written either.
        let _ = writeln!(io::stderr(), "error: standard output: {e}");
        std::process::exit(1);
    }
}

/// Writes a server's status line (`listening on …`) to standard output. A line that cannot be written is
/// dropped, whatever the reason, and the server keeps serving.
pub fn status_line(args: fmt::Arguments<'_>) {
    let _ = write_line(args);
}

fn write_line(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")?;
    // Standard output is line-buffered, so the newline already flushed it; flushing again surfaces any error
    // here, whatever the buffering.
    out.flush()
}
