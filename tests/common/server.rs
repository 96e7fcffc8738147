//! A `resnet serve` process for the serving tests: started on a free loopback port, killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

/// A running `resnet serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The rest of its standard output, read after it stops.
    pub stdout: BufReader<ChildStdout>,
}

impl Server {
    /// `resnet --threads THREADS serve --addr 127.0.0.1:0 --weights WEIGHTS EXTRA…`, returned once it has said
    /// where it listens (its stderr goes to the test's).
    pub fn spawn(weights: &Path, threads: usize, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_resnet"))
            .args(["--threads", &threads.to_string()])
            .args(["serve", "--addr", "127.0.0.1:0", "--weights"])
            .arg(weights)
            .args(extra)
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start resnet serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                panic!("resnet serve exited before listening");
            }
            if let Some(a) = line.trim().strip_prefix("listening on http://") {
                break a.parse().unwrap();
            }
        };
        Server {
            child,
            addr,
            stdout,
        }
    }

    /// SIGTERM, as `kill`, systemd and Kubernetes send it.
    pub fn terminate(&self) {
        // The shell's builtin `kill`: a minimal system may have no kill executable.
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
