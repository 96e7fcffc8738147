//! The fuzz targets' checks (`resnet::fuzzing`) on the committed seed corpus (fuzz/seeds/TARGET) and on every
//! input a fuzzer crashed on (fuzz/regressions/TARGET): what `tools/fuzz.sh` found once must never come back.

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = format!("{dir}/{target}/{}", e.file_name().to_string_lossy());
            out.push((name, std::fs::read(e.path()).unwrap()));
        }
    }
    out.sort();
    out
}

fn check(target: &str, body: fn(&[u8]), min_seeds: usize) {
    let all = inputs(target);
    assert!(
        all.len() >= min_seeds,
        "{target}: only {} inputs",
        all.len()
    );
    for (name, bytes) in &all {
        eprintln!("{name} ({} bytes)", bytes.len());
        body(bytes);
        // Every prefix of a seed is a truncated file, the commonest damage: it must be refused, not crash.
        for cut in [0, 1, 4, 8, bytes.len() / 2, bytes.len().saturating_sub(1)] {
            body(&bytes[..cut.min(bytes.len())]);
        }
    }
}

#[test]
fn idx_inputs() {
    check("idx", resnet::fuzzing::idx, 9);
}

#[test]
fn checkpoint_inputs() {
    check("checkpoint", resnet::fuzzing::checkpoint, 3);
}

#[test]
fn image_inputs() {
    check("image", resnet::fuzzing::image, 12);
}

#[test]
fn cli_inputs() {
    check("cli", resnet::fuzzing::cli, 12);
}

#[test]
fn pth_inputs() {
    check("pth", resnet::fuzzing::pth, 9);
}

#[test]
fn cifar_inputs() {
    check("cifar", resnet::fuzzing::cifar, 4);
}

#[test]
fn request_inputs() {
    check("request", resnet::fuzzing::request, 8);
}

#[test]
fn onnx_inputs() {
    check("onnx", resnet::fuzzing::onnx, 6);
}

#[test]
fn explain_names_inputs() {
    check("explain_names", resnet::fuzzing::explain_names, 12);
}

#[test]
fn quantized_inputs() {
    check("quantized", resnet::fuzzing::quantized, 3);
}
