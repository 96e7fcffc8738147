//! `resnet train/eval/predict` on your own images, end to end through the binary: an image folder of RGB PNGs
//! (the bundled Fashion-MNIST exported), and CIFAR-10 binaries written in the published record layout.
//! The network follows the data (3 channels, its class count), the class names and the evaluation transforms
//! travel in `model.safetensors`, and `eval`/`predict` need only `--weights` and the images.

mod common;
use resnet::data::{export_image_folder, Dataset, ImageDataset, Split, Subset};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_resnet");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["--threads", "2"])
        .args(args)
        .output()
        .expect("run resnet");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (success, stdout, stderr) = run(args);
    assert!(success, "{args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The first `n` images of a bundled Fashion-MNIST split, exported as RGB PNGs into `dir`.
fn export(split: Split, n: usize, dir: &Path) {
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    let ds: Arc<dyn ImageDataset> = Arc::new(Dataset::load(&bundled, split, false).unwrap());
    export_image_folder(&Subset::first(ds, n), dir, true).unwrap();
}

#[test]
fn train_eval_predict_on_an_rgb_image_folder() {
    let root = common::scratch_dir("own-images", "folder");
    let data = root.join("photos");
    export(Split::Train, 160, &data.join("train"));
    export(Split::Test, 60, &data.join("val"));
    let out = root.join("run");
    // A small torchvision-layout network on the folder: one epoch, then `extra` flags.
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            s(&data),
            "--arch",
            "resnet18",
            "--stem",
            "small",
            "--widths",
            "4,4,4,4",
            "--resize",
            "28",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        ok(&args)
    };
    let stdout = train(&["--out", s(&out)]);
    assert!(stdout.contains("(3 channels, 10 classes)"), "{stdout}");
    let model = out.join("model.safetensors");

    // eval reads the classes and the transforms from the file: per-class lines carry the folder names.
    let report = ok(&["eval", "--weights", s(&model), "--data", s(&data)]);
    assert!(report.contains("60 images, input 28×28"), "{report}");
    assert!(
        report.contains("ankle boot") && report.contains("t-shirt"),
        "{report}"
    );

    // predict: only the weights and an image.
    let bag: PathBuf = std::fs::read_dir(data.join("val/bag"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let line = ok(&[
        "predict",
        "--weights",
        s(&model),
        s(&bag),
        "--json",
        "--topk",
        "4",
    ]);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["logits"].as_array().unwrap().len(), 10);
    assert_eq!(v["top"].as_array().unwrap().len(), 4);
    let names = [
        "ankle boot",
        "bag",
        "coat",
        "dress",
        "pullover",
        "sandal",
        "shirt",
        "sneaker",
        "t-shirt",
        "trouser",
    ];
    assert!(names.contains(&v["class"].as_str().unwrap()), "{v}");

    // Fine-tuning the classifier alone: every other tensor (running statistics included) stays as loaded.
    let tuned = root.join("tuned");
    train(&["--init", s(&model), "--freeze-backbone", "--out", s(&tuned)]);
    let read = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        resnet::checkpoint::deserialize(&bytes, "model").unwrap().0
    };
    let (start, end) = (read(&model), read(&tuned.join("model.safetensors")));
    for ((k, a), (_, b)) in start.iter().zip(&end) {
        if k.starts_with("fc.") {
            assert_ne!(a, b, "{k}: the classifier trains");
        } else {
            assert_eq!(a, b, "{k}: a frozen tensor changed");
        }
    }

    // The same labels in a different order are refused, not silently scored.
    let (success, _, err) = run(&["eval", "--weights", s(&model)]);
    assert!(
        !success && err.contains("would not mean the same classes"),
        "{err}"
    );
    // Resuming on data with other channels (the grayscale IDX files) is refused.
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    let (success, _, err) = run(&[
        "train",
        "--resume",
        s(&out),
        "--epochs",
        "2",
        "--quiet",
        "--data",
        s(&bundled),
    ]);
    assert!(
        !success && err.contains("the data has 1 channels, the run was started on 3"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// `n` CIFAR-10 records: label byte, then 1,024 R, G, B bytes each.
fn cifar_records(n: usize, seed: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let label = ((i + seed) % 10) as u8;
        out.push(label);
        out.extend(
            (0..3072).map(|p| ((p * 7 + i * 13 + seed * 31 + label as usize * 40) % 256) as u8),
        );
    }
    out
}

#[test]
fn train_on_cifar10_binaries_with_the_cifar_transforms() {
    let root = common::scratch_dir("own-images", "cifar");
    let data = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&data).unwrap();
    for b in 1..=5 {
        std::fs::write(
            data.join(format!("data_batch_{b}.bin")),
            cifar_records(12, b),
        )
        .unwrap();
    }
    std::fs::write(data.join("test_batch.bin"), cifar_records(20, 9)).unwrap();
    let out = root.join("run");
    let stdout = ok(&[
        "train",
        "--data",
        s(&root),
        "--transforms",
        "cifar",
        "--normalize",
        "--arch",
        "resnet18",
        "--stem",
        "small",
        "--widths",
        "4,4,4,4",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--quiet",
        "--out",
        s(&out),
    ]);
    assert!(
        stdout.contains("60 training and 20 test images (3 channels, 10 classes)"),
        "{stdout}"
    );
    let report = ok(&[
        "eval",
        "--weights",
        s(&out.join("model.safetensors")),
        "--data",
        s(&root),
    ]);
    // CIFAR-10's names when batches.meta.txt is missing.
    assert!(
        report.contains("airplane") && report.contains("truck"),
        "{report}"
    );

    // A file of the wrong length is one clear line naming it.
    std::fs::write(data.join("data_batch_3.bin"), vec![0u8; 3073 * 2 + 5]).unwrap();
    let (success, _, err) = run(&[
        "train",
        "--data",
        s(&root),
        "--epochs",
        "1",
        "--out",
        s(&root.join("r2")),
    ]);
    assert!(
        !success && err.contains("data_batch_3.bin") && err.lines().count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Writes an IDX file (raw, big-endian header) of u8 data.
fn write_idx(path: &Path, dims: &[u32], data: &[u8]) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// Same data, same run: Fashion-MNIST images as IDX files and as an image folder of grayscale PNGs hold the same
/// pixels and labels in the same order (the IDX files class-major, as ImageFolder lists a folder; class folders
/// named so that their sorted order is the label order), so training on either with the same seed and flags —
/// augmentation included — ends with bit-identical parameters.
#[test]
fn an_image_folder_trains_exactly_like_the_same_idx_files() {
    let root = common::scratch_dir("own-images", "same-run");
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    let (idx_dir, folder) = (root.join("idx"), root.join("folder"));
    std::fs::create_dir_all(&idx_dir).unwrap();
    for (split, n, images_file, labels_file, sub) in [
        (
            Split::Train,
            96,
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "train",
        ),
        (
            Split::Test,
            40,
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
            "val",
        ),
    ] {
        let ds = Dataset::load(&bundled, split, false).unwrap();
        // ImageFolder's order: by class, then by file name (the original index, zero-padded).
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| ds.label(i));
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for &i in &order {
            let (img, label) = (ds.image(i), ds.label(i));
            pixels.extend_from_slice(img);
            labels.push(label as u8);
            let dir = folder
                .join(sub)
                .join(format!("{label}-{}", resnet::data::CLASS_NAMES[label]));
            std::fs::create_dir_all(&dir).unwrap();
            image::GrayImage::from_raw(28, 28, img.to_vec())
                .unwrap()
                .save(dir.join(format!("{i:05}.png")))
                .unwrap();
        }
        write_idx(&idx_dir.join(images_file), &[n as u32, 28, 28], &pixels);
        write_idx(&idx_dir.join(labels_file), &[n as u32], &labels);
    }
    let train = |data: &Path, out: &Path| {
        ok(&[
            "train",
            "--data",
            s(data),
            "--widths",
            "4,4,4,4",
            "--resize",
            "32",
            "--augment",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--seed",
            "3",
            "--quiet",
            "--out",
            s(out),
        ])
    };
    let from_idx = train(&idx_dir, &root.join("run-idx"));
    let from_folder = train(&folder, &root.join("run-folder"));
    assert!(
        from_idx.contains("96 training and 40 test images"),
        "{from_idx}"
    );
    assert!(
        from_folder.contains("96 training and 40 test images"),
        "{from_folder}"
    );
    let weights = |run: &str| {
        let bytes = std::fs::read(root.join(run).join("model.safetensors")).unwrap();
        resnet::checkpoint::deserialize(&bytes, run).unwrap().0
    };
    let (a, b) = (weights("run-idx"), weights("run-folder"));
    assert_eq!(a.len(), b.len());
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(
            ta == tb,
            "{ka} differs between the IDX run and the folder run"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// `--skip-bad` trains on what can be read and says how many files it left out.
#[test]
fn skip_bad_leaves_out_unreadable_files_and_counts_them() {
    let root = common::scratch_dir("own-images", "skip-bad");
    for (i, class) in ["cat", "cat", "cat", "dog", "dog", "dog"]
        .iter()
        .enumerate()
    {
        let dir = root.join("photos").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        let pixels: Vec<u8> = (0..16 * 16)
            .map(|p| ((p * 7 + i * 40) % 256) as u8)
            .collect();
        image::GrayImage::from_raw(16, 16, pixels)
            .unwrap()
            .save(dir.join(format!("{i}.png")))
            .unwrap();
    }
    std::fs::write(
        root.join("photos/dog/broken.png"),
        b"\x89PNG\r\n\x1a\n truncated",
    )
    .unwrap();
    let photos = root.join("photos");
    let (success, _, err) = run(&["train", "--data", s(&photos), "--out", s(&root.join("r1"))]);
    assert!(!success && err.contains("broken.png"), "{err}");
    let stdout = ok(&[
        "train",
        "--data",
        s(&photos),
        "--skip-bad",
        "--val-split",
        "0.34",
        "--widths",
        "4,4",
        "--resize",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--quiet",
        "--out",
        s(&root.join("r2")),
    ]);
    assert!(stdout.contains("skipped 1 unreadable files"), "{stdout}");
    let _ = std::fs::remove_dir_all(&root);
}
