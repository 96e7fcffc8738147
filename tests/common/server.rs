//! A `resnet serve` process for the serving tests (started on a free loopback port, killed when dropped), and the
//! model file and pictures they serve.

use resnet::checkpoint::{self, META_CLASSES, META_EVAL_TRANSFORM, META_INPUT_SIZE};
use resnet::data::transforms::Step;
use resnet::data::Pipeline;
use resnet::nn::{ArchName, ResNet, ResNetConfig, Stem};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

pub const CLASSES: [&str; 4] = ["cat", "dog", "bird", "fish & chips"];

/// A narrow RGB network for 4 classes whose stored preprocessing is `Resize(32)` + normalize (random weights:
/// the tests compare the server with the library, not with the truth).
pub fn network(seed: u64) -> ResNet {
    let config = ResNetConfig {
        widths: vec![8, 16, 16, 32],
        stem: Stem::Small,
        ..ResNetConfig::named(ArchName::Resnet18, 3, CLASSES.len())
    };
    let mut net = ResNet::new(config, seed).unwrap();
    net.set_train(false);
    net
}

/// The stored preprocessing of [`model_file`]: an optional resize, then a per-channel normalization.
pub fn pipeline(resize: Option<usize>) -> Pipeline {
    Pipeline {
        steps: resize.map(Step::Resize).into_iter().collect(),
        normalize: Some((vec![0.5, 0.4, 0.3], vec![0.25, 0.2, 0.3])),
        erasing: None,
    }
}

/// Writes the network's model file, with class names and the pipeline (and the trained size 32 when it resizes),
/// and returns its path.
pub fn model_file(dir: &Path, resize: Option<usize>) -> PathBuf {
    let net = network(7);
    let mut meta = BTreeMap::new();
    meta.insert(
        META_CLASSES.to_string(),
        serde_json::to_string(&CLASSES).unwrap(),
    );
    meta.insert(
        META_EVAL_TRANSFORM.to_string(),
        serde_json::to_string(&pipeline(resize)).unwrap(),
    );
    // Without a resize step, no trained size either: a file that says its size is brought to it.
    if resize.is_some() {
        meta.insert(META_INPUT_SIZE.to_string(), "32".to_string());
    }
    let path = dir.join("model.safetensors");
    checkpoint::save_model(&path, &net, &meta).unwrap();
    path
}

/// A deterministic `w × h` RGB picture (a different one per `seed`).
pub fn picture(seed: u32, w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let v =
            |k: u32| ((x * (3 + seed + k) + y * (5 + 2 * seed) + k * 77 + seed * 31) % 256) as u8;
        image::Rgb([v(0), v(1), v(2)])
    })
}

/// `img` encoded as PNG.
pub fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}
