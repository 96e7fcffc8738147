//! Faults a long training run must survive: SIGKILL at random moments and in the middle of a checkpoint write,
//! a second `resnet train` on the same run directory, a full disk and a read-only run directory. After each,
//! the run directory holds a loadable checkpoint and `--resume` ends with the parameters of an uninterrupted
//! run.

mod common;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use resnet::checkpoint;
use resnet::nn::StateDict;
use resnet::train::Restored;

const BIN: &str = env!("CARGO_BIN_EXE_resnet");

/// The chapter's full-width network on a small slice at 28×28: three epochs of three batches. Its checkpoint is
/// ~135 MB, so a write takes long enough to be caught in the middle.
const SLICE: &[&str] = &[
    "--resize",
    "28",
    "--limit-train",
    "96",
    "--limit-test",
    "32",
    "--batch-size",
    "32",
    "--epochs",
    "3",
    "--quiet",
];

fn scratch(name: &str) -> PathBuf {
    common::scratch_dir("resnet-faults-test-", name)
}

fn command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_BACKTRACE")
        .env_remove("RESNET_DATA")
        .stdin(Stdio::null());
    cmd
}

/// `train FIRST... EXTRA...`.
fn train_args(first: &[&str], extra: &[&str]) -> Vec<String> {
    std::iter::once(&"train")
        .chain(first)
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    command(args).output().expect("start the resnet binary")
}

fn expect_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One `error: ` line, non-zero exit, no panic; returns stderr.
fn expect_failure(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what}: expected failure\n{err}");
    assert!(!err.contains("panicked"), "{what}: panicked:\n{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error: ")).count(),
        1,
        "{what}: expected one `error: ` line:\n{err}"
    );
    err
}

/// The training checkpoint in `dir`, parsed and checked as `--resume` does.
fn load_checkpoint(dir: &Path) -> resnet::Result<Restored> {
    let path = dir.join("checkpoint.safetensors");
    let bytes = checkpoint::read_file_limited(&path)?;
    Restored::from_bytes(&bytes, &path.display().to_string(), None)
}

fn model_state(dir: &Path) -> StateDict {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    checkpoint::deserialize(&bytes, &path.display().to_string())
        .unwrap()
        .0
}

fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

/// Epochs whose checkpoint is on disk, as far as `metrics.jsonl` (written after the checkpoint) tells.
fn epochs_logged(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.jsonl")).map_or(0, |s| s.lines().count())
}

/// Starts training in `dir`: `--resume` when it holds a checkpoint, a fresh run otherwise (as a user would).
fn start(dir: &Path) -> Child {
    let d = dir.to_str().unwrap();
    let args = if dir.join("checkpoint.safetensors").exists() {
        train_args(&["--resume", d], &[])
    } else {
        train_args(SLICE, &["--out", d])
    };
    command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the resnet binary")
}

/// Polls `child` until it exits or `until` returns true; returns whether it is still running.
fn wait_until(child: &mut Child, limit: Duration, mut until: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if until() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    panic!("resnet train still running after {limit:?}");
}

/// What one kill found in the run directory.
#[derive(Debug)]
struct KillOutcome {
    at: String,
    epochs_in_checkpoint: Option<usize>,
    /// The killed process's own `.checkpoint.safetensors.tmpPID` was there: the kill hit a checkpoint write.
    in_checkpoint_write: bool,
}

/// The temporary file a process writes the checkpoint through (see `checkpoint::write_atomic`).
fn checkpoint_temporary(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!(".checkpoint.safetensors.tmp{pid}"))
}

/// Kills with SIGKILL at the moment `when(pid)` says, then checks the run directory: any checkpoint must load.
fn kill_and_check(dir: &Path, at: &str, mut when: impl FnMut(u32) -> bool) -> Option<KillOutcome> {
    let mut child = start(dir);
    let pid = child.id();
    let running = wait_until(&mut child, Duration::from_secs(300), || when(pid));
    if !running {
        let out = child.wait_with_output().unwrap();
        expect_success(&out, &format!("run that finished before the kill at {at}"));
        return None;
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let epochs = dir
        .join("checkpoint.safetensors")
        .exists()
        .then(|| match load_checkpoint(dir) {
            Ok(r) => r.progress.epochs_done,
            Err(e) => panic!("after a kill at {at} the checkpoint does not load: {e}"),
        });
    Some(KillOutcome {
        at: at.to_string(),
        epochs_in_checkpoint: epochs,
        in_checkpoint_write: checkpoint_temporary(dir, pid).exists(),
    })
}

/// Deterministic pseudo-random fractions (SplitMix64), so a failure can be replayed.
fn fractions(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

#[test]
fn sigkill_at_random_moments_and_during_checkpoint_writes_then_resume_matches() {
    // The uninterrupted run, timed.
    let reference = scratch("reference");
    let t0 = Instant::now();
    let out = run(&train_args(SLICE, &["--out", reference.to_str().unwrap()]));
    let full_secs = t0.elapsed().as_secs_f64();
    expect_success(&out, "uninterrupted run");
    let want = model_state(&reference);

    let mut outcomes = Vec::new();
    // 1. Kills at random moments: during the first epoch (or start-up), then at a random point of the epoch
    //    after the one last checkpointed (training, evaluation or saving), each followed by a restart (fresh or
    //    --resume, whichever the directory calls for).
    let epoch_secs = full_secs / 3.0;
    let dir = scratch("random-kills");
    for (i, f) in fractions(2026, 4).into_iter().enumerate() {
        let after_epochs = [0, 1, 2, 1][i];
        let delay = Duration::from_secs_f64(f * epoch_secs);
        let d = dir.clone();
        let mut since: Option<Instant> = None;
        let at = format!(
            "kill {} at {delay:.2?} past epoch {after_epochs}'s checkpoint",
            i + 1
        );
        let o = kill_and_check(&dir, &at, |_| {
            if since.is_none() && epochs_logged(&d) >= after_epochs {
                since = Some(Instant::now());
            }
            since.is_some_and(|t| t.elapsed() >= delay)
        });
        outcomes.extend(o);
    }
    // 2. Kills while a checkpoint is being written, as soon as the process's temporary file appears: inside the
    //    first write of a fresh run (nothing to keep yet), then inside a later write (epoch 1 or 2 to keep). A
    //    kill that lands just after the write's rename does not count, and that kind is tried again.
    let writing = scratch("kill-in-write");
    let mut landed = [false, false]; // [inside the first write, inside a later write]
    for attempt in 1..=8 {
        if landed == [true, true] {
            break;
        }
        let d = writing.clone();
        // For a later write, wait first for a finished checkpoint with no write under way.
        let mut armed = !landed[0];
        let o = kill_and_check(
            &writing,
            &format!("checkpoint write, try {attempt}"),
            move |pid| {
                let writing_now = checkpoint_temporary(&d, pid).exists();
                if !armed {
                    armed = !writing_now && d.join("checkpoint.safetensors").exists();
                    return false;
                }
                writing_now
            },
        )
        .expect("the run ended before its checkpoint write");
        if o.in_checkpoint_write {
            landed[o.epochs_in_checkpoint.is_some() as usize] = true;
        }
        outcomes.push(o);
    }
    for o in &outcomes {
        eprintln!(
            "{}: checkpoint of epoch {:?} left, killed inside a checkpoint write: {}",
            o.at, o.epochs_in_checkpoint, o.in_checkpoint_write
        );
    }
    assert_eq!(
        landed,
        [true, true],
        "kills inside checkpoint writes: {outcomes:?}"
    );

    // Each directory then finishes (resuming from whatever the kills left) with the uninterrupted parameters.
    for d in [&dir, &writing] {
        let mut child = start(d);
        assert!(!wait_until(&mut child, Duration::from_secs(300), || false));
        let out = child.wait_with_output().unwrap();
        expect_success(&out, &format!("finishing {}", d.display()));
        let r = load_checkpoint(d).unwrap();
        assert_eq!(r.progress.epochs_done, 3);
        assert!(
            model_state(d) == want,
            "{}: parameters differ from the uninterrupted run",
            d.display()
        );
        assert_eq!(
            temporaries(d),
            Vec::<String>::new(),
            "stale temporary files"
        );
    }
    for d in [reference, dir, writing] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_second_train_on_the_same_run_directory_is_refused() {
    let dir = scratch("locked");
    let d = dir.to_str().unwrap();
    // A small network over 15,000 training images: an epoch of several seconds to race against.
    let log = scratch("locked-log").join("stderr");
    let first_args = train_args(
        &[
            "--widths",
            "8,16",
            "--resize",
            "28",
            "--limit-train",
            "15000",
        ],
        &[
            "--limit-test",
            "32",
            "--batch-size",
            "64",
            "--epochs",
            "40",
            "--out",
            d,
        ],
    );
    let mut first = command(&first_args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let in_epoch_1 = || std::fs::read_to_string(&log).is_ok_and(|s| s.contains("epoch 1/40 batch"));
    assert!(
        wait_until(&mut first, Duration::from_secs(120), in_epoch_1),
        "the first run ended before it could be raced"
    );

    // A fresh run on the directory while the first is in its first epoch (no checkpoint yet).
    let fresh = run(&train_args(&["--out", d], SLICE));
    let err = expect_failure(&fresh, "second fresh run on the same directory");
    assert!(
        !dir.join("checkpoint.safetensors").exists(),
        "the first epoch ended before the race; make it longer"
    );
    assert!(
        err.contains("another `resnet train`") && err.contains(d),
        "{err}"
    );

    // --resume while the first run goes on after its first checkpoint.
    let metrics = dir.join("metrics.jsonl");
    assert!(wait_until(&mut first, Duration::from_secs(300), || metrics.exists()));
    let resumed = run(&["train", "--resume", d]);
    let err = expect_failure(&resumed, "--resume of a directory in use");
    assert!(err.contains("another `resnet train`"), "{err}");

    // Killing the first run releases its lock: the run resumes from its checkpoint.
    first.kill().unwrap();
    first.wait().unwrap();
    let done = load_checkpoint(&dir).unwrap().progress.epochs_done;
    assert!(done >= 1);
    let out = run(&[
        "train",
        "--resume",
        d,
        "--epochs",
        &(done + 1).to_string(),
        "--quiet",
    ]);
    expect_success(&out, "resume after the first run was killed");
    assert_eq!(
        load_checkpoint(&dir).unwrap().progress.epochs_done,
        done + 1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small tmpfs mounted on a fresh directory, unmounted when dropped; `None` where mounting is not
/// permitted (not root), in which case the caller reports the check as skipped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Option<Tmpfs> {
        let dir = scratch(name);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "skipped: cannot mount a tmpfs on {} (needs root)",
                dir.display()
            );
            return None;
        }
        Some(Tmpfs(dir))
    }
    fn remount(&self, opts: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small network's first epoch in `dir`, then the checkpoint's bytes.
fn first_epoch(dir: &Path) -> Vec<u8> {
    let args = train_args(
        &["--widths", "4,8", "--resize", "28", "--limit-train", "64"],
        &[
            "--limit-test",
            "32",
            "--batch-size",
            "32",
            "--epochs",
            "1",
            "--quiet",
            "--out",
            dir.to_str().unwrap(),
        ],
    );
    expect_success(&run(&args), "first epoch");
    std::fs::read(dir.join("checkpoint.safetensors")).unwrap()
}

#[test]
fn disk_full_fails_clearly_and_keeps_the_last_checkpoint() {
    let Some(fs) = Tmpfs::mount("disk-full", "2m") else {
        return;
    };
    let dir = fs.0.join("run");
    let before = first_epoch(&dir);
    let model_before = std::fs::read(dir.join("model.safetensors")).unwrap();
    // Fill the file system.
    let filler = fs.0.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 << 10];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    let _ = std::io::Write::write_all(&mut f, &[0u8; 1024]);
    drop(f);

    let d = dir.to_str().unwrap();
    let out = run(&["train", "--resume", d, "--epochs", "2"]);
    let err = expect_failure(&out, "resume on a full disk");
    assert!(
        err.contains("No space left on device") && err.contains(d),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.join("checkpoint.safetensors")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        model_before
    );
    assert_eq!(
        temporaries(&dir),
        Vec::<String>::new(),
        "temporary files left on a full disk"
    );
    assert_eq!(load_checkpoint(&dir).unwrap().progress.epochs_done, 1);

    // With space again, the same command finishes the run.
    std::fs::remove_file(&filler).unwrap();
    expect_success(
        &run(&["train", "--resume", d, "--epochs", "2"]),
        "resume with space",
    );
    assert_eq!(load_checkpoint(&dir).unwrap().progress.epochs_done, 2);
}

#[test]
fn read_only_run_directory_fails_clearly_and_keeps_the_last_checkpoint() {
    let Some(fs) = Tmpfs::mount("read-only", "4m") else {
        return;
    };
    let dir = fs.0.join("run");
    let before = first_epoch(&dir);
    fs.remount("ro");
    let d = dir.to_str().unwrap();
    let out = run(&["train", "--resume", d, "--epochs", "2"]);
    let err = expect_failure(&out, "resume in a read-only directory");
    assert!(
        err.contains("Read-only file system") && err.contains(d),
        "{err}"
    );
    let fresh_dir = fs.0.join("fresh");
    let out = run(&train_args(&["--out", fresh_dir.to_str().unwrap()], SLICE));
    let err = expect_failure(&out, "fresh run in a read-only file system");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(
        std::fs::read(dir.join("checkpoint.safetensors")).unwrap(),
        before
    );
    assert_eq!(load_checkpoint(&dir).unwrap().progress.epochs_done, 1);
    fs.remount("rw");
}
