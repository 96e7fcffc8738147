//! `resnet eval` and `resnet predict` on the shared tiny model: the eval report (accuracy, per-class accuracy,
//! confusion matrix), predict's text and JSON output for PNG and JPEG, the portable kernels' logits, and
//! predict agreeing with eval on the same image.

use std::path::Path;
use std::time::Duration;

use resnet::data::{Dataset, Split, CLASS_NAMES};

use crate::{bundled, expect_success, model, pytorch_weights, resnet, resnet_env, s, scratch};

/// One `predict` line: `PATH: class p, class p, class p`; returns the (class, probability) pairs.
fn parse_top3(line: &str, path: &Path) -> Vec<(String, f64)> {
    let rest = line
        .strip_prefix(&format!("{}: ", path.display()))
        .unwrap_or_else(|| panic!("line does not start with the path: {line}"));
    let pairs: Vec<(String, f64)> = rest
        .split(", ")
        .map(|p| {
            let (name, prob) = p
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("`{p}` in {line}"));
            (
                name.to_string(),
                prob.parse()
                    .unwrap_or_else(|_| panic!("`{prob}` in {line}")),
            )
        })
        .collect();
    assert_eq!(pairs.len(), 3, "{line}");
    for (name, p) in &pairs {
        assert!(
            CLASS_NAMES.contains(&name.as_str()),
            "unknown class `{name}` in {line}"
        );
        assert!((0.0..=1.0).contains(p), "{line}");
    }
    assert!(
        pairs.windows(2).all(|w| w[0].1 >= w[1].1),
        "not sorted: {line}"
    );
    assert!(pairs[0].0 != pairs[1].0 && pairs[1].0 != pairs[2].0 && pairs[0].0 != pairs[2].0);
    pairs
}

/// The eval report: accuracy, count, per-class accuracies and the confusion matrix.
struct Report {
    acc: f64,
    per_class: Vec<(String, f64)>,
    confusion: Vec<Vec<usize>>,
}

fn parse_eval(out: &str) -> Report {
    let acc_line = out
        .lines()
        .find(|l| l.starts_with("test acc "))
        .unwrap_or_else(|| panic!("{out}"));
    let acc: f64 = acc_line.split_whitespace().nth(2).unwrap().parse().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let pc = lines
        .iter()
        .position(|l| l.starts_with("per-class accuracy"))
        .expect("per-class");
    let per_class = lines[pc + 1..pc + 11]
        .iter()
        .map(|l| {
            let (name, a) = l.trim().rsplit_once(' ').unwrap();
            (name.trim().to_string(), a.parse().unwrap())
        })
        .collect();
    let cm = lines
        .iter()
        .position(|l| l.starts_with("confusion matrix"))
        .expect("confusion");
    let header: Vec<usize> = lines[cm + 1]
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(header, (0..10).collect::<Vec<_>>(), "{out}");
    let confusion = lines[cm + 2..cm + 12]
        .iter()
        .enumerate()
        .map(|(i, l)| {
            assert!(
                l.starts_with(&format!("{i} {}", CLASS_NAMES[i])),
                "row {i}: {l}"
            );
            let t: Vec<&str> = l.split_whitespace().collect();
            t[t.len() - 10..]
                .iter()
                .map(|x| x.parse().unwrap())
                .collect()
        })
        .collect();
    Report {
        acc,
        per_class,
        confusion,
    }
}

#[test]
fn eval_prints_accuracy_per_class_and_confusion_matrix() {
    let m = model();
    let cwd = scratch("eval");
    let out = expect_success(
        &resnet(
            &[
                "eval",
                "--weights",
                s(&m.weights),
                "--limit",
                "300",
                "--batch-size",
                "64",
            ],
            &cwd,
        ),
        "eval",
    );
    assert!(out.contains("(300 images, input 28×28)"), "{out}");
    let r = parse_eval(&out);
    let names: Vec<&str> = r.per_class.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, CLASS_NAMES, "{out}");
    let total: usize = r.confusion.iter().flatten().sum();
    assert_eq!(total, 300, "{out}");
    let correct: usize = (0..10).map(|i| r.confusion[i][i]).sum();
    assert!((r.acc - correct as f64 / 300.0).abs() < 1e-4, "{out}");
    // Rows hold the true classes: their sums are the class counts of the first 300 test images.
    let test = Dataset::load(&bundled(), Split::Test, false)
        .unwrap()
        .take(300);
    let counts = test.class_counts();
    for (i, row) in r.confusion.iter().enumerate() {
        assert_eq!(row.iter().sum::<usize>(), counts[i], "row {i}\n{out}");
        let acc = row[i] as f64 / counts[i].max(1) as f64;
        assert!((acc - r.per_class[i].1).abs() < 1e-3, "class {i}\n{out}");
    }
    // The tiny model learned something (chance is 0.1; measured 0.68 on the first 300 test images).
    assert!(r.acc > 0.4, "{out}");

    // PyTorch weights evaluate with an explicit --resize.
    let out = expect_success(
        &resnet(
            &[
                "eval",
                "--weights",
                s(&pytorch_weights()),
                "--resize",
                "28",
                "--limit",
                "50",
            ],
            &cwd,
        ),
        "eval of PyTorch weights",
    );
    let r = parse_eval(&out);
    assert_eq!(r.confusion.iter().flatten().sum::<usize>(), 50);
    let _ = std::fs::remove_dir_all(&cwd);
}

#[test]
fn predict_png_and_jpeg() {
    let m = model();
    let dir = scratch("predict");
    let a = first_test_image(&dir);
    let rgb = image::RgbImage::from_fn(50, 40, |x, y| {
        let on = (10..40).contains(&x) && (8..32).contains(&y);
        image::Rgb(if on {
            [200, 180, (x * 5) as u8]
        } else {
            [5, 10, (y * 3) as u8]
        })
    });
    let b = dir.join("b.png");
    rgb.save(&b).unwrap();
    let c = dir.join("c.jpg");
    rgb.save(&c).unwrap();
    assert!(
        std::fs::read(&c).unwrap().starts_with(&[0xff, 0xd8]),
        "a JPEG"
    );
    let images = [&a, &b, &c];

    let mut args = vec!["predict", "--weights", s(&m.weights)];
    args.extend(images.iter().map(|p| s(p)));
    let out = expect_success(&resnet(&args, &dir), "predict");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let mut top = Vec::new();
    for (line, path) in lines.iter().zip(images) {
        top.push(parse_top3(line, path)[0].0.clone());
    }

    args.push("--json");
    let out = expect_success(&resnet(&args, &dir), "predict --json");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for ((line, path), top1) in lines.iter().zip(images).zip(&top) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["image"].as_str(), Some(s(path)), "{line}");
        let nums = |k: &str| -> Vec<f64> {
            v[k].as_array()
                .unwrap_or_else(|| panic!("no `{k}` array: {line}"))
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        let (logits, probs) = (nums("logits"), nums("probabilities"));
        assert_eq!((logits.len(), probs.len()), (10, 10), "{line}");
        assert!(logits.iter().all(|x| x.is_finite()), "{line}");
        let sum: f64 = probs.iter().sum();
        assert!(
            (sum - 1.0).abs() <= 1e-5,
            "probabilities sum to {sum}: {line}"
        );
        let pred = v["predicted"].as_u64().unwrap() as usize;
        assert!(pred < 10);
        let argmax = (0..10).fold(0, |b, i| if probs[i] > probs[b] { i } else { b });
        assert_eq!(pred, argmax, "{line}");
        let by_logit = (0..10).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        assert_eq!(pred, by_logit, "{line}");
        assert_eq!(v["class"].as_str(), Some(CLASS_NAMES[pred]), "{line}");
        assert_eq!(CLASS_NAMES[pred], top1, "text and JSON disagree: {line}");
    }

    // The portable kernels (what a CPU without AVX2 runs; RESNET_PORTABLE=1 forces them) give the same
    // logits as the direct AVX2 convolutions, to float rounding.
    let portable = expect_success(
        &resnet_env(
            &args,
            &dir,
            &[("RESNET_PORTABLE", "1")],
            Duration::from_secs(120),
        ),
        "predict --json with RESNET_PORTABLE=1",
    );
    let logits_of = |text: &str| -> Vec<f64> {
        text.lines()
            .flat_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                v["logits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (fast, slow) = (logits_of(&out), logits_of(&portable));
    assert_eq!(fast.len(), slow.len());
    for (a, b) in fast.iter().zip(&slow) {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "direct {a} vs portable {b}"
        );
    }

    // Consistency: the first test image as a 28×28 PNG at --resize 28 gets the class eval gives it.
    let out = expect_success(
        &resnet(
            &[
                "predict",
                "--weights",
                s(&m.weights),
                "--resize",
                "28",
                "--json",
                s(&a),
            ],
            &dir,
        ),
        "predict --resize 28",
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let pred = v["predicted"].as_u64().unwrap() as usize;
    let out = expect_success(
        &resnet(
            &[
                "eval",
                "--weights",
                s(&m.weights),
                "--limit",
                "1",
                "--batch-size",
                "1",
            ],
            &dir,
        ),
        "eval --limit 1",
    );
    let r = parse_eval(&out);
    let label = Dataset::load(&bundled(), Split::Test, false)
        .unwrap()
        .label(0);
    let eval_pred = r.confusion[label]
        .iter()
        .position(|&x| x == 1)
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        pred, eval_pred,
        "predict and eval disagree on the first test image\n{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shared model's file with its stored evaluation transforms replaced by `steps` (JSON), written to `path`.
pub(crate) fn with_steps(path: &Path, steps: &str) -> std::path::PathBuf {
    use resnet::checkpoint::{self, META_EVAL_TRANSFORM};
    let bytes = std::fs::read(&model().weights).unwrap();
    let (sd, mut meta) = checkpoint::deserialize(&bytes, "model").unwrap();
    meta.insert(
        META_EVAL_TRANSFORM.to_string(),
        format!(r#"{{"steps":{steps},"normalize":null}}"#),
    );
    std::fs::write(path, checkpoint::serialize(&sd, &meta).unwrap()).unwrap();
    path.to_path_buf()
}

#[test]
fn predict_brings_images_to_the_trained_size_when_the_file_stores_no_resize() {
    // A model trained at its data's own size (28×28, no resize step stored) sees a 1000×1000 image at 28×28,
    // as a file that stores `Resize(28)` does, not at 1000×1000 (at the wrong scale, and gigabytes at 4000).
    let dir = scratch("predict-no-resize");
    let no_resize = with_steps(&dir.join("no-resize.safetensors"), "[]");
    let resized = with_steps(&dir.join("resized.safetensors"), r#"[{"resize":28}]"#);
    let big = dir.join("big.png");
    image::GrayImage::from_fn(1000, 1000, |x, y| {
        image::Luma([if (x / 125 + y / 250) % 2 == 0 {
            220
        } else {
            10
        }])
    })
    .save(&big)
    .unwrap();
    let logits = |weights: &Path| -> serde_json::Value {
        let out = expect_success(
            &resnet(
                &["predict", "--weights", s(weights), "--json", s(&big)],
                &dir,
            ),
            "predict --json",
        );
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["logits"].clone()
    };
    assert_eq!(logits(&no_resize), logits(&resized));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn predict_explain_writes_a_heatmap_per_image_and_the_raw_map_in_json() {
    let m = model();
    let dir = scratch("predict-explain");
    let a = first_test_image(&dir);
    // An RGB image of another size: the heatmap comes back at the image's own size.
    let b = dir.join("b.png");
    image::RgbImage::from_fn(50, 40, |x, _| image::Rgb([(x * 5) as u8, 90, 30]))
        .save(&b)
        .unwrap();
    let cams = dir.join("cams");
    let args = ["predict", "--weights", s(&m.weights), "--explain", s(&cams)];
    let out = expect_success(
        &resnet(&[&args[..], &[s(&a), s(&b)]].concat(), &dir),
        "explain",
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains("a.cam.png") && out.contains("b.cam.png"),
        "{out}"
    );
    for (name, size) in [("a.cam.png", (28, 28)), ("b.cam.png", (50, 40))] {
        let img = image::open(cams.join(name)).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), size, "{name}");
    }

    // --json: the raw map at the last stage's resolution, its layer and the class asked for; predict's own
    // fields are still there.
    let json_args = [&args[..], &["--json", "--class", "bag", s(&a)]].concat();
    let out = expect_success(&resnet(&json_args, &dir), "explain --json");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let e = &v["explain"];
    assert_eq!(e["layer"], "resnet_block4", "{e}");
    assert_eq!(e["class"], "bag", "{e}");
    assert_eq!(e["index"], 8, "{e}");
    let grid = e["grid"].as_array().unwrap();
    assert!(!grid.is_empty() && grid.len() <= 28, "{e}");
    let values: Vec<f64> = grid
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect();
    assert!(values.iter().all(|&x| x >= 0.0 && x.is_finite()), "{e}");
    assert_eq!(values.len(), grid.len() * grid[0].as_array().unwrap().len());
    assert!(v["logits"].as_array().is_some_and(|l| l.len() == 10), "{v}");

    // Another layer: a finer grid.
    let layer_args = [&args[..], &["--json", "--layer", "resnet_block2", s(&a)]].concat();
    let out = expect_success(&resnet(&layer_args, &dir), "explain --layer");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["explain"]["layer"], "resnet_block2");
    assert!(
        v["explain"]["grid"].as_array().unwrap().len() > grid.len(),
        "{v}"
    );
}

/// `quantize` on the shared model, calibrated on the bundled data's training images: the file is the same for
/// the same inputs; `eval` on it runs int8 and scores within 3 points of f32 on the same 300 images; `predict`,
/// `summary --plan --weights` and `bench --plan --weights` (its steps timed, by kind) take it.
#[test]
fn quantize_then_eval_predict_and_summary() {
    let m = model();
    let dir = scratch("quantize");
    let q = dir.join("int8.safetensors");
    let data = bundled();
    let quantize = |out: &Path| {
        let args = [
            "quantize",
            "--weights",
            s(&m.weights),
            "--calib",
            s(&data),
            "--images",
            "64",
            "--out",
            s(out),
        ];
        expect_success(&resnet(&args, &dir), "quantize")
    };
    let said = quantize(&q);
    assert!(
        said.contains("calibrated on 64 images") && said.contains("percentile 99.99"),
        "{said}"
    );
    quantize(&dir.join("again.safetensors"));
    assert_eq!(
        std::fs::read(&q).unwrap(),
        std::fs::read(dir.join("again.safetensors")).unwrap(),
        "equal inputs write equal bytes"
    );
    let eval = |w: &Path| {
        let out = expect_success(
            &resnet(&["eval", "--weights", s(w), "--limit", "300"], &dir),
            "eval",
        );
        (parse_eval(&out).acc, out)
    };
    let (f32_acc, _) = eval(&m.weights);
    let (int8_acc, out) = eval(&q);
    assert!(out.contains("(300 images, input 28×28, int8 "), "{out}");
    assert!(
        (f32_acc - int8_acc).abs() <= 0.03,
        "f32 {f32_acc}, int8 {int8_acc}"
    );

    let a = first_test_image(&dir);
    let out = expect_success(
        &resnet(&["predict", "--weights", s(&q), s(&a)], &dir),
        "predict",
    );
    assert_eq!(parse_top3(out.trim(), &a).len(), 3, "{out}");
    let out = expect_success(
        &resnet(&["summary", "--weights", s(&q), "--plan"], &dir),
        "summary",
    );
    assert!(
        out.contains("quantized: every convolution on int8"),
        "{out}"
    );
    let args = ["bench", "--plan", "--weights", s(&q), "--only", "infer28"];
    let out = expect_success(
        &resnet(
            &[&args[..], &["--batch", "2", "--iters", "1"]].concat(),
            &dir,
        ),
        "bench --plan --weights",
    );
    let int8_kind = format!("    {} ", resnet::kernels::int8::Path::detect().name());
    assert!(
        out.contains("the file's network (int8 ")
            && out.contains(&int8_kind)
            && out.contains("the whole pass:"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A PyTorch file stores no input size: `quantize` asks for `--resize`, and with it calibrates at that size and
/// stores it, so `predict` on the quantized file needs no flag.
#[test]
fn quantize_takes_resize_for_a_file_that_stores_no_size() {
    let dir = scratch("quantize-resize");
    let (w, data) = (pytorch_weights(), bundled());
    let mut args = vec!["quantize", "--weights", s(&w), "--calib", s(&data)];
    args.extend(["--images", "16", "--out", "q.safetensors"]);
    let refused = resnet(&args, &dir);
    assert!(
        !refused.status.success() && refused.stderr.contains("--resize"),
        "{}",
        refused.stderr
    );
    args.extend(["--resize", "28"]);
    expect_success(&resnet(&args, &dir), "quantize --resize 28");
    let a = first_test_image(&dir);
    let q = dir.join("q.safetensors");
    let out = expect_success(
        &resnet(&["predict", "--weights", s(&q), s(&a)], &dir),
        "predict",
    );
    assert_eq!(parse_top3(out.trim(), &a).len(), 3, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The bundled test set's first image (an ankle boot, 28×28 grey) written as `dir/a.png`.
fn first_test_image(dir: &Path) -> std::path::PathBuf {
    let test = Dataset::load(&bundled(), Split::Test, false).unwrap();
    let a = dir.join("a.png");
    image::GrayImage::from_raw(28, 28, test.image(0).to_vec())
        .unwrap()
        .save(&a)
        .unwrap();
    a
}
