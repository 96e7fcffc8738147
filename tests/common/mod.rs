//! Helpers shared by the integration tests: golden-file loading and closeness checks that report the
//! largest difference they saw.
#![allow(dead_code)]

pub mod server;
pub mod torchvision_weights;

use resnet::checkpoint::deserialize;
use resnet::nn::{StateDict, StateTensor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// A golden file as written by tools/make_golden.py.
pub struct Golden {
    pub file: String,
    pub sd: StateDict,
}

impl Golden {
    pub fn load(name: &str) -> Golden {
        let path = golden_path(name);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run tools/make_golden.py)", path.display()));
        let (sd, _) = deserialize(&bytes, name).unwrap();
        Golden {
            file: name.to_string(),
            sd,
        }
    }
    pub fn get(&self, key: &str) -> &StateTensor {
        &self
            .sd
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("{}: no key {key}", self.file))
            .1
    }
    pub fn f32(&self, key: &str) -> Vec<f32> {
        match self.get(key) {
            StateTensor::F32 { data, .. } => data.clone(),
            t => panic!("{key}: dtype {}", t.dtype_name()),
        }
    }
    pub fn i64(&self, key: &str) -> Vec<i64> {
        match self.get(key) {
            StateTensor::I64 { data, .. } => data.clone(),
            t => panic!("{key}: dtype {}", t.dtype_name()),
        }
    }
    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.get(key).shape().to_vec()
    }
    /// All entries whose key starts with `prefix`, with the prefix stripped.
    pub fn with_prefix(&self, prefix: &str) -> StateDict {
        self.sd
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(prefix).map(|s| (s.to_string(), t.clone())))
            .collect()
    }
}

/// Largest |got − want| divided by max(max |want|, floor): an error relative to the tensor's scale, so one
/// tolerance works for values of any magnitude and for entries that are near zero.
pub fn scaled_max_diff(got: &[f32], want: &[f32], floor: f32) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(floor);
    let abs = got.iter().zip(want).fold(0.0f32, |m, (a, b)| {
        let d = (a - b).abs();
        if d.is_nan() {
            f32::INFINITY
        } else {
            m.max(d)
        }
    });
    (abs / scale, abs)
}

/// Asserts `got ≈ want` within `tol` relative to the tensor's largest magnitude; prints the measured difference.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let (rel, abs) = scaled_max_diff(got, want, 1e-3);
    println!("golden {what:<48} max|Δ| {abs:.3e}  relative {rel:.3e}  (tol {tol:.0e})");
    assert!(
        rel <= tol,
        "{what}: max |Δ| {abs:e} = {rel:e} of the tensor's scale > {tol:e}"
    );
}

/// Asserts `max |got − want| ≤ tol` in absolute terms (for gradients that are zero up to rounding).
pub fn assert_abs(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let (_, abs) = scaled_max_diff(got, want, 1.0);
    println!("golden {what:<48} max|Δ| {abs:.3e}  (absolute tol {tol:.0e})");
    assert!(abs <= tol, "{what}: max |Δ| {abs:e} > {tol:e}");
}

/// Removes scratch directories named `<prefix><pid>-…` left by earlier runs whose process is gone (a failed
/// test leaves its directory for inspection).
fn sweep_stale(prefix: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A fresh, empty directory `<tmp>/<prefix><pid>-<n>-<name>` (unique per process and call); the first call
/// also sweeps stale ones of the same prefix.
pub fn scratch_dir(prefix: &str, name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| sweep_stale(prefix));
    let k = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}{}-{k}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Makes every convolution kernel of `net` mirror-symmetric along its width axis (`w[…, kx] = w[…, K−1−kx]`, the
/// left half copied onto the right) through the state dict. With the small stem and odd input sides that every
/// stride-2 layer keeps odd (33 → 17 → 9 → 5), the network is then exactly invariant under horizontal flips (up to
/// the rounding of the convolution algorithms).
pub fn make_flip_symmetric(net: &mut resnet::nn::ResNet) {
    let mut sd = net.state_dict();
    for (_, t) in sd.iter_mut() {
        if let StateTensor::F32 { shape, data } = t {
            if shape.len() != 4 {
                continue;
            }
            let k = shape[3];
            for row in data.chunks_exact_mut(k) {
                for kx in 0..k / 2 {
                    row[k - 1 - kx] = row[kx];
                }
            }
        }
    }
    net.load_state_dict(&sd).unwrap();
}

/// `net` as a model file read back from memory, with `meta` (plus the architecture) in its metadata.
pub fn model_file_of(
    net: &resnet::nn::ResNet,
    meta: &[(&str, &str)],
) -> resnet::model_file::ModelFile {
    use resnet::checkpoint::{arch_string, serialize, META_ARCH};
    let mut m: std::collections::BTreeMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.insert(META_ARCH.into(), arch_string(&net.config));
    let bytes = serialize(&net.state_dict(), &m).unwrap();
    resnet::model_file::ModelFile::from_bytes(&bytes, Path::new("m.safetensors")).unwrap()
}

/// Starts `cmd` (`what` names it in the panic if it cannot start) with stdout and stderr piped; its stdout lines
/// arrive on the channel as it prints them (read by a thread of their own).
pub fn spawn_with_lines(
    cmd: &mut std::process::Command,
    what: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Reads a two-rank training job's stdout lines until rank 1 has said its pid (`rank 1 of 2 on HOST (pid N)`)
/// and an epoch has ended, or `within` has passed: rank 1's pid if it came, and the epochs seen.
pub fn rank1_pid_and_epochs(
    lines: &std::sync::mpsc::Receiver<String>,
    within: std::time::Duration,
) -> (Option<u32>, usize) {
    use std::time::{Duration, Instant};
    let (mut pid, mut epochs) = (None, 0);
    let deadline = Instant::now() + within;
    while (pid.is_none() || epochs == 0) && Instant::now() < deadline {
        let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if let Some(rest) = line.strip_prefix("rank 1 of 2 on ") {
            let p = rest.rsplit("(pid ").next().unwrap().trim_end_matches(')');
            pid = Some(p.parse::<u32>().unwrap());
        }
        epochs += usize::from(line.starts_with("epoch "));
    }
    (pid, epochs)
}
