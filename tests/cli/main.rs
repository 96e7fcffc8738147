//! The `resnet` command line as a user sees it, one test binary (`cargo test --test cli`) whose topic modules
//! are: `summary` (the chapter's shape walk and the torchvision family), `bad_invocations` (a table of bad
//! invocations, each of which must fail with one clear `error: ` line, a non-zero exit and no panic, leaving
//! every existing file as it was), `eval_predict` (eval and predict output), `tta` (flip test-time
//! augmentation through eval and predict) and `pipes` (stdout whose reader goes away: every command ends
//! quietly, `serve` keeps serving).
//!
//! This file holds what they share: scratch directories, running the binary and judging its exit
//! (`expect_success`, `expect_failure`), snapshots of directories, the tiny model trained once per binary,
//! and builders of IDX data directories and images.

#[path = "../common/mod.rs"]
mod common;

mod bad_invocations;
mod eval_predict;
mod inputs;
mod pipes;
mod summary;
mod tta;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_resnet");

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bundled() -> PathBuf {
    manifest().join("data/fashion-mnist")
}

fn pytorch_weights() -> PathBuf {
    manifest().join("tests/golden/small_net_state_pytorch.safetensors")
}

/// A fresh, empty directory for one test (unique per process and call).
fn scratch(name: &str) -> PathBuf {
    common::scratch_dir("resnet-cli-test-", name)
}

struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the binary in `cwd` with `env` set (no backtraces, no $RESNET_DATA unless given), killing it after
/// `limit`: a bad invocation that were accepted by mistake must not start an hour of training.
fn resnet_env(args: &[&str], cwd: &Path, env: &[(&str, &str)], limit: Duration) -> Out {
    let io = scratch("io");
    let (o, e) = (io.join("stdout"), io.join("stderr"));
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RESNET_DATA")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start the resnet binary");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "resnet {args:?} still running after {limit:?}\nstderr:\n{}",
                std::fs::read_to_string(&e).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Out {
        status,
        stdout: String::from_utf8_lossy(&std::fs::read(&o).unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&std::fs::read(&e).unwrap()).into_owned(),
    };
    let _ = std::fs::remove_dir_all(&io);
    out
}

fn resnet(args: &[&str], cwd: &Path) -> Out {
    resnet_env(args, cwd, &[], Duration::from_secs(120))
}

fn expect_success(out: &Out, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout.clone()
}

/// A failure as the user must see it: non-zero exit, exactly one `error: ` line, no panic or backtrace.
fn expect_failure(out: &Out, what: &str) -> String {
    let err = &out.stderr;
    assert!(
        !out.status.success(),
        "{what}: expected failure, got success\nstdout:\n{}\nstderr:\n{err}",
        out.stdout
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE") && !err.contains("backtrace"),
        "{what}: panicked:\n{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error: ")).count(),
        1,
        "{what}: expected one `error: ` line:\n{err}"
    );
    err.clone()
}

/// Every file under `dir` (recursively) with its bytes; a symbolic link with its target; a FIFO by its name.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let (p, kind) = (e.path(), e.file_type().unwrap());
            if kind.is_symlink() {
                // A link (a loop among the fixtures) is recorded by where it points, not followed.
                let target = std::fs::read_link(&p).unwrap();
                out.insert(p, target.into_os_string().into_encoded_bytes());
            } else if kind.is_dir() {
                stack.push(p);
            } else if kind.is_file() {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            } else {
                // A FIFO among the fixtures: reading it would wait for a writer.
                out.insert(p, b"(not a regular file)".to_vec());
            }
        }
    }
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small model trained once per test binary through the CLI (narrow network, 28×28, 1,000 images, 1 epoch of
/// 63 steps: about 2 s; measured test acc 0.68), shared by the tests that need weights.
struct Model {
    run_dir: PathBuf,
    weights: PathBuf,
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let root = scratch("model");
        let run_dir = root.join("run");
        let out = resnet(
            &[
                "train",
                "--resize",
                "28",
                "--widths",
                "16,32,64,128",
                "--limit-train",
                "1000",
                "--limit-test",
                "128",
                "--batch-size",
                "16",
                "--schedule",
                "cosine",
                "--epochs",
                "1",
                "--quiet",
                "--out",
                s(&run_dir),
            ],
            &root,
        );
        expect_success(&out, "training the shared tiny model");
        Model {
            weights: run_dir.join("model.safetensors"),
            run_dir,
        }
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// An IDX u8 file: magic `00 00 08 ndim`, big-endian u32 dims, then the data.
fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte.gz";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte.gz";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte.gz";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte.gz";

/// Files replaced in a data directory: `(file name, bytes)`.
type Damage = Vec<(&'static str, Vec<u8>)>;

/// A data directory of 10 training and 10 test images in which `damage` replaced some files.
fn data_dir(root: &Path, name: &str, damage: &Damage) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let images = gzip(&idx(&[10, 28, 28], &[7; 10 * 28 * 28]));
    let labels = gzip(&idx(&[10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
    for f in [TRAIN_IMAGES, TEST_IMAGES] {
        std::fs::write(dir.join(f), &images).unwrap();
    }
    for f in [TRAIN_LABELS, TEST_LABELS] {
        std::fs::write(dir.join(f), &labels).unwrap();
    }
    for (f, bytes) in damage {
        std::fs::write(dir.join(f), bytes).unwrap();
    }
    dir
}

/// Makes a FIFO at `path` (`mkfifo`).
fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
}

/// A PNG that declares `w`×`h` pixels in its header and holds no image data.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grayscale
    let mut crc = flate2::Crc::new();
    crc.update(&ihdr);
    v.extend_from_slice(&13u32.to_be_bytes());
    v.extend_from_slice(&ihdr);
    v.extend_from_slice(&crc.sum().to_be_bytes());
    v
}
