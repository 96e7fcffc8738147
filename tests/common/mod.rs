//! Helpers shared by the integration tests: golden-file loading and closeness checks that report the
//! largest difference they saw.
#![allow(dead_code)]

use resnet::checkpoint::deserialize;
use resnet::nn::{StateDict, StateTensor};
use std::path::PathBuf;

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
