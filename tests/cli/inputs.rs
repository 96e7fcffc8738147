//! Hostile or unusual inputs to `train`, `eval` and `predict` (issue #30): every `--resize` honoured (and what
//! the model file then says it was trained at), class names escaped on the terminal.

use std::path::Path;

use resnet::checkpoint;

use crate::{expect_success, resnet, s, scratch};

/// A CIFAR-10 directory of 5 × `train` training and `test` test records of 32×32 RGB images (labels `i % 10`,
/// varied pixels).
fn cifar10_dir(root: &Path, train: usize, test: usize) -> std::path::PathBuf {
    let dir = root.join("cifar");
    std::fs::create_dir_all(&dir).unwrap();
    let records = |n: usize, seed: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let mut r = vec![(i % 10) as u8];
                r.extend((0..3 * 1024).map(|p| ((p * (i + 3) + seed * 17 + i * 29) % 251) as u8));
                r
            })
            .collect()
    };
    for b in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{b}.bin")), records(train, b)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), records(test, 2)).unwrap();
    dir
}

#[test]
fn train_resize_28_is_honoured_on_32_pixel_data() {
    // `--resize 28` once meant "no resize": 32×32 CIFAR images trained at 32 under `"resize": null`.
    let root = scratch("resize-28");
    let data = cifar10_dir(&root, 4, 10);
    let run = root.join("run");
    let out = resnet(
        &[
            "train",
            "--data",
            s(&data),
            "--resize",
            "28",
            "--epochs",
            "1",
            "--widths",
            "4,4,4,4",
            "--batch-size",
            "4",
            "--quiet",
            "--out",
            s(&run),
        ],
        &root,
    );
    expect_success(&out, "train --resize 28 on CIFAR-10");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["resize"], 28, "{config}");
    let (_, meta) = checkpoint::deserialize(
        &std::fs::read(run.join("model.safetensors")).unwrap(),
        "model",
    )
    .unwrap();
    assert_eq!(meta[checkpoint::META_INPUT_SIZE], "28");
    let eval: serde_json::Value =
        serde_json::from_str(&meta[checkpoint::META_EVAL_TRANSFORM]).unwrap();
    assert_eq!(
        eval["steps"],
        serde_json::json!([{ "resize": 28 }]),
        "{eval}"
    );
    // And eval runs the test images at 28×28.
    let out = expect_success(
        &resnet(
            &[
                "eval",
                "--weights",
                s(&run.join("model.safetensors")),
                "--data",
                s(&data),
            ],
            &root,
        ),
        "eval",
    );
    assert!(out.contains("(10 images, input 28×28)"), "{out}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn class_names_reach_the_terminal_escaped() {
    // Class names from a model file with an escape sequence (it would turn the terminal red) and a newline (it
    // would forge a line of output): escaped in predict's text output, as they are in --json's.
    let m = crate::model();
    let dir = scratch("evil-names");
    let bytes = std::fs::read(&m.weights).unwrap();
    let (sd, mut meta) = checkpoint::deserialize(&bytes, "model").unwrap();
    let names: Vec<String> = (0..10)
        .map(|i| format!("\x1b[31mc{i}\nforged.png: boot 1.000"))
        .collect();
    meta.insert(
        checkpoint::META_CLASSES.to_string(),
        serde_json::to_string(&names).unwrap(),
    );
    let weights = dir.join("evil.safetensors");
    std::fs::write(&weights, checkpoint::serialize(&sd, &meta).unwrap()).unwrap();
    let img = dir.join("a.png");
    image::GrayImage::from_fn(28, 28, |x, y| image::Luma([(x * 9 + y * 3) as u8]))
        .save(&img)
        .unwrap();
    let out = expect_success(
        &resnet(&["predict", "--weights", s(&weights), s(&img)], &dir),
        "predict",
    );
    assert_eq!(out.lines().count(), 1, "{out:?}");
    assert!(!out.contains('\x1b'), "{out:?}");
    assert!(
        out.contains("\\u{1b}[31mc") && out.contains("\\nforged.png: boot 1.000 "),
        "{out:?}"
    );
    let out = expect_success(
        &resnet(
            &["predict", "--weights", s(&weights), "--json", s(&img)],
            &dir,
        ),
        "predict --json",
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let class = v["class"].as_str().unwrap();
    assert!(names.iter().any(|n| n == class), "{class:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
