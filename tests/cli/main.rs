//! The `resnet` command line as a user sees it: the chapter's shape walk, eval and predict output, and a table
//! of bad invocations, each of which must fail with one clear `error: ` line, a non-zero exit and no panic,
//! leaving every existing file as it was.

#[path = "../common/mod.rs"]
mod common;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use resnet::checkpoint::{self, META_ARCH, META_INPUT_SIZE};
use resnet::data::{Dataset, Split, CLASS_NAMES};
use resnet::nn::{ResNet, ResNetConfig, StateTensor};

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

/// Every file under `dir` (recursively) with its bytes; a symbolic link with its target.
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
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
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

/// The chapter's summary, exactly (the d2l book's shape walk for `torch.rand(1, 1, 224, 244)`).
const CHAPTER_SUMMARY: &str = "\
0  output shape:\t torch.Size([1, 64, 112, 122])
1  output shape:\t torch.Size([1, 64, 112, 122])
2  output shape:\t torch.Size([1, 64, 112, 122])
3  output shape:\t torch.Size([1, 64, 56, 61])
resnet_block1  output shape:\t torch.Size([1, 64, 56, 61])
resnet_block2  output shape:\t torch.Size([1, 128, 28, 31])
resnet_block3  output shape:\t torch.Size([1, 256, 14, 16])
resnet_block4  output shape:\t torch.Size([1, 512, 7, 8])
global_avg_pool  output shape:\t torch.Size([1, 512, 1, 1])
fc  output shape:\t torch.Size([1, 10])
parameters: 11,178,378
";

/// torchvision's resnet50 at 1×3×224×224: its top-level children and its parameter count.
const RESNET50_SUMMARY: &str = "\
conv1  output shape:\t torch.Size([1, 64, 112, 112])
bn1  output shape:\t torch.Size([1, 64, 112, 112])
relu  output shape:\t torch.Size([1, 64, 112, 112])
maxpool  output shape:\t torch.Size([1, 64, 56, 56])
layer1  output shape:\t torch.Size([1, 256, 56, 56])
layer2  output shape:\t torch.Size([1, 512, 28, 28])
layer3  output shape:\t torch.Size([1, 1024, 14, 14])
layer4  output shape:\t torch.Size([1, 2048, 7, 7])
avgpool  output shape:\t torch.Size([1, 2048, 1, 1])
fc  output shape:\t torch.Size([1, 1000])
parameters: 25,557,032
";

#[test]
fn summary_prints_the_torchvision_family() {
    let cwd = scratch("summary-family");
    let out = expect_success(
        &resnet(
            &["summary", "--arch", "resnet50", "--input", "1x3x224x224"],
            &cwd,
        ),
        "summary resnet50",
    );
    assert_eq!(out, RESNET50_SUMMARY);
    // --plan adds one line per convolution, named as in the state dict, with its geometry and its three
    // algorithms (which ones depends on the CPU).
    let out = expect_success(
        &resnet(
            &[
                "summary",
                "--arch",
                "resnet50",
                "--input",
                "1x3x224x224",
                "--plan",
            ],
            &cwd,
        ),
        "summary --plan",
    );
    assert!(
        out.starts_with(RESNET50_SUMMARY.split("parameters").next().unwrap()),
        "{out}"
    );
    assert!(out.contains("convolution plans at batch 1"), "{out}");
    let plans: Vec<&str> = out.lines().filter(|l| l.contains(" fwd: ")).collect();
    assert_eq!(plans.len(), 53, "{out}");
    for (name, geometry) in [
        ("conv1 ", "7x7 /2    3->64   224x224"),
        ("layer1.0.downsample.0 ", "1x1 /1   64->256   56x56"),
        ("layer2.0.conv2 ", "3x3 /2  128->128   56x56"),
        ("layer4.2.conv3 ", "1x1 /1  512->2048   7x7"),
    ] {
        let line = plans.iter().find(|l| l.trim_start().starts_with(name));
        assert!(
            line.is_some_and(|l| l.contains(geometry)
                && l.contains(" dW: ")
                && l.contains(" dX: ")),
            "{name}: {line:?}"
        );
    }
    // torchvision's published parameter counts, at 3 channels and 1000 classes (the defaults).
    for (arch, count) in [
        ("resnet18", "11,689,512"),
        ("resnet34", "21,797,672"),
        ("resnet101", "44,549,160"),
        ("resnet152", "60,192,808"),
    ] {
        let out = expect_success(&resnet(&["summary", "--arch", arch], &cwd), arch);
        assert!(
            out.ends_with(&format!("parameters: {count}\n")),
            "{arch}:\n{out}"
        );
    }
    // The small stem keeps 32×32 at full size into layer1; another class count changes only fc.
    let out = expect_success(
        &resnet(
            &[
                "summary",
                "--arch",
                "resnet18",
                "--stem",
                "small",
                "--input",
                "2x3x32x32",
                "--classes",
                "10",
            ],
            &cwd,
        ),
        "small stem",
    );
    assert!(
        out.contains("layer1  output shape:\t torch.Size([2, 64, 32, 32])"),
        "{out}"
    );
    assert!(!out.contains("maxpool"), "{out}");
    assert!(
        out.contains("fc  output shape:\t torch.Size([2, 10])"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&cwd);
}

#[test]
fn summary_prints_the_chapters_shapes() {
    let cwd = scratch("summary");
    let out = expect_success(
        &resnet(&["summary", "--input", "1x1x224x244"], &cwd),
        "summary",
    );
    assert_eq!(out, CHAPTER_SUMMARY);
    // The default input is the chapter's.
    assert_eq!(
        expect_success(&resnet(&["summary"], &cwd), "summary"),
        CHAPTER_SUMMARY
    );

    // The chapter's network accepts any positive size: PyTorch's eval-mode walk of a 1×1×3×3 (or 1×1×1×1) input
    // also ends in [1, 10] (a 7×7/2 conv with padding 3 maps sizes 1..3 to 1..2, later stages keep 1×1).
    for tiny in ["1x1x3x3", "1x1x1x1"] {
        let out = expect_success(&resnet(&["summary", "--input", tiny], &cwd), tiny);
        assert!(
            out.contains("fc  output shape:\t torch.Size([1, 10])"),
            "{out}"
        );
    }

    for (bad, want) in [
        ("1x1x224", "four dimensions"),
        ("1x1x224x244x1", "four dimensions"),
        ("", "four dimensions"),
        ("axbxcxd", "not a positive integer"),
        ("-1x1x2x2", "not a positive integer"),
        ("1x1x2.5x2", "not a positive integer"),
        ("1x1x99999999999999999999x1", "not a positive integer"),
        ("0x1x2x2", "positive"),
        ("1x1x0x2", "positive"),
        ("100000x100000x100000x100000", "2^22"),
        ("4294967296x4294967296x4294967296x4294967296", "2^22"),
        ("1x1x20000x20000", "2^22"),
    ] {
        let err = expect_failure(&resnet(&["summary", "--input", bad], &cwd), bad);
        assert!(
            err.contains("--input") && err.contains(want),
            "--input {bad:?}: want `{want}` in:\n{err}"
        );
    }
    assert!(std::fs::read_dir(&cwd).unwrap().next().is_none());
    let _ = std::fs::remove_dir_all(&cwd);
}

struct Row {
    args: Vec<String>,
    want: Vec<String>,
    env: Vec<(String, String)>,
}

fn row(args: &[&str], want: &[&str]) -> Row {
    Row {
        args: args.iter().map(|a| a.to_string()).collect(),
        want: want.iter().map(|w| w.to_string()).collect(),
        env: Vec::new(),
    }
}

/// At least 25 bad invocations, each: non-zero exit, one `error: ` line containing what names the problem,
/// no panic; no file that existed before changes, and nothing is created in the working directory.
#[test]
fn bad_invocations_fail_cleanly() {
    let m = model();
    let fx = scratch("fixtures");

    // Data directories: each damage applied to both splits' files (train reads train-*, eval reads t10k-*).
    let images = idx(&[10, 28, 28], &[7; 10 * 28 * 28]);
    let both = |train: &'static str, test: &'static str, bytes: Vec<u8>| -> Damage {
        vec![(train, bytes.clone()), (test, bytes)]
    };
    let gz = gzip(&images);
    let variants: Vec<(&str, Damage)> = vec![
        (
            "truncated-gz",
            both(TRAIN_IMAGES, TEST_IMAGES, gz[..gz.len() / 2].to_vec()),
        ),
        (
            "wrong-magic",
            both(
                TRAIN_IMAGES,
                TEST_IMAGES,
                gzip(&[&[0xde, 0xad, 0xbe, 0xef], &images[4..]].concat()),
            ),
        ),
        (
            "labels-as-images",
            both(TRAIN_IMAGES, TEST_IMAGES, gzip(&idx(&[10], &[1; 10]))),
        ),
        (
            "count-mismatch",
            both(TRAIN_LABELS, TEST_LABELS, gzip(&idx(&[9], &[1; 9]))),
        ),
        (
            "lying-header",
            both(
                TRAIN_IMAGES,
                TEST_IMAGES,
                gzip(&idx(&[60000, 28, 28], &[7; 10 * 28 * 28])),
            ),
        ),
        (
            "bad-label",
            both(
                TRAIN_LABELS,
                TEST_LABELS,
                gzip(&idx(&[10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 10])),
            ),
        ),
    ];
    let mut dirs = BTreeMap::new();
    for (name, damage) in &variants {
        dirs.insert(*name, data_dir(&fx, name, damage));
    }
    // An uncompressed images file whose header claims 2^32-1 × 28 × 28 bytes (~3 TB), with no .gz beside it.
    let raw = fx.join("lying-raw");
    std::fs::create_dir_all(&raw).unwrap();
    std::fs::write(
        raw.join("train-images-idx3-ubyte"),
        idx(&[u32::MAX, 28, 28], &[0; 64]),
    )
    .unwrap();
    std::fs::write(raw.join(TRAIN_LABELS), gzip(&idx(&[10], &[0; 10]))).unwrap();
    let empty_dir = fx.join("no-data");
    std::fs::create_dir_all(&empty_dir).unwrap();
    // Image folders: a class without images; an undecodable image; a symbolic link loop; a CIFAR file of the wrong
    // length.
    let png = {
        let mut bytes = Vec::new();
        image::GrayImage::from_raw(2, 2, vec![0, 64, 128, 255])
            .unwrap()
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        bytes
    };
    let folder = |name: &str, files: &[(&str, &[u8])], dirs: &[&str]| -> PathBuf {
        let root = fx.join(name);
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (f, bytes) in files {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        root
    };
    let empty_class = folder("empty-class", &[("cat/1.png", &png)], &["dog"]);
    let bad_image = folder(
        "bad-image",
        &[
            ("cat/1.png", &png),
            ("cat/2.png", b"not a png at all"),
            ("dog/3.png", &png),
        ],
        &[],
    );
    let link_loop = folder(
        "link-loop",
        &[("cat/1.png", &png), ("dog/2.png", &png)],
        &[],
    );
    std::os::unix::fs::symlink(&link_loop, link_loop.join("cat/again")).unwrap();
    let cifar_short = folder(
        "cifar-short",
        &[
            ("data_batch_1.bin", &[0u8; 3073 + 7]),
            ("test_batch.bin", &[0u8; 3073]),
        ],
        &[],
    );

    // Weights.
    let model_bytes = std::fs::read(&m.weights).unwrap();
    let (model_sd, model_meta) = checkpoint::deserialize(&model_bytes, "model").unwrap();
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let p = fx.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let not_st = write("notes.safetensors", b"these are my notes, not a model\n");
    let empty_st = write("empty.safetensors", b"");
    let truncated = write(
        "truncated.safetensors",
        &model_bytes[..model_bytes.len() / 2],
    );
    let huge_header = write(
        "huge-header.safetensors",
        &[&(1u64 << 40).to_le_bytes()[..], b"{}"].concat(),
    );
    let foo = vec![(
        "foo.weight".to_string(),
        StateTensor::F32 {
            shape: vec![2],
            data: vec![1.0, 2.0],
        },
    )];
    let wrong_keys = write(
        "wrong-keys.safetensors",
        &checkpoint::serialize(&foo, &BTreeMap::new()).unwrap(),
    );
    let chapter_arch = checkpoint::arch_string(&ResNetConfig::chapter(1, 10));
    let mut meta = BTreeMap::from([(META_ARCH.to_string(), chapter_arch.clone())]);
    let wrong_keys_arch = write(
        "wrong-keys-arch.safetensors",
        &checkpoint::serialize(&foo, &meta).unwrap(),
    );
    // The narrow model's tensors under metadata claiming the chapter's widths.
    meta.insert(META_INPUT_SIZE.to_string(), "28".to_string());
    let mislabeled = write(
        "mislabeled.safetensors",
        &checkpoint::serialize(&model_sd, &meta).unwrap(),
    );
    let other_net = |name: &str, in_channels: usize, num_classes: usize| -> PathBuf {
        let config = ResNetConfig {
            widths: vec![4, 4, 4, 4],
            ..ResNetConfig::chapter(in_channels, num_classes)
        };
        let net = ResNet::new(config, 0).unwrap();
        let p = fx.join(name);
        let meta = BTreeMap::from([(META_INPUT_SIZE.to_string(), "28".to_string())]);
        checkpoint::save_model(&p, &net, &meta).unwrap();
        p
    };
    let rgb_net = other_net("rgb.safetensors", 3, 10);
    let five_classes = other_net("five-classes.safetensors", 1, 5);
    let two_channels = other_net("two-channels.safetensors", 2, 10);
    let mut bad_meta = model_meta.clone();
    bad_meta.insert(META_INPUT_SIZE.to_string(), "large".to_string());
    let bad_size = write(
        "bad-size.safetensors",
        &checkpoint::serialize(&model_sd, &bad_meta).unwrap(),
    );
    bad_meta.insert(META_INPUT_SIZE.to_string(), "100000".to_string());
    let huge_size = write(
        "huge-size.safetensors",
        &checkpoint::serialize(&model_sd, &bad_meta).unwrap(),
    );
    // A run directory whose checkpoint is a plain model file (no training state).
    let not_a_run = fx.join("not-a-run");
    std::fs::create_dir_all(&not_a_run).unwrap();
    std::fs::write(not_a_run.join("checkpoint.safetensors"), &model_bytes).unwrap();

    // Images.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let x_png = write("x.png", &noise);
    let y_jpg = write("y.jpg", b"not a jpeg at all");
    let empty_png = write("empty.png", b"");
    let huge_png = write("huge.png", &png_header_only(100_000, 100_000));
    let missing_png = fx.join("missing.png");

    let w = s(&m.weights);
    let run_dir = s(&m.run_dir);
    // A port something already listens on (held until the table has run).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let d = |name: &str| s(&dirs[name]).to_string();
    let small = [
        "--resize",
        "28",
        "--epochs",
        "1",
        "--widths",
        "16,32,64,128",
        "--quiet",
    ];
    let train_data = |name: &str| -> Vec<String> {
        let mut v = vec!["train".to_string(), "--data".into(), d(name)];
        v.extend(small.iter().map(|x| x.to_string()));
        v.extend(["--out".into(), "run".into()]);
        v
    };
    let mut rows = vec![
        // The CLI's grammar.
        row(&["frobnicate"], &["frobnicate"]),
        row(&["train", "--frob"], &["--frob"]),
        row(&["train", "--epochs", "abc"], &["--epochs", "abc"]),
        row(&["eval"], &["--weights"]),
        row(&["predict", "--weights", w], &["IMAGES"]),
        // Values out of range.
        row(
            &["summary", "--arch", "resnet51"],
            &["--arch", "resnet51", "resnet50"],
        ),
        row(&["bench", "--arch", "vgg16"], &["--arch", "vgg16"]),
        row(
            &["bench", "--loader", "/nonexistent/photos"],
            &["/nonexistent/photos"],
        ),
        row(
            &["bench", "--loader", "/tmp", "--transforms", "foo"],
            &["transforms", "foo"],
        ),
        row(
            &["bench", "--loader", "/tmp", "--workers", "0"],
            &["--workers"],
        ),
        row(&["summary", "--classes", "0"], &["--classes"]),
        row(
            &["eval", "--weights", w, "--arch", "resnet50"],
            &["holds", "not resnet50 (--arch)"],
        ),
        row(
            &["predict", "--topk", "0", "--weights", w, "x.png"],
            &["--topk"],
        ),
        row(
            &["train", "--arch", "resnet50", "--widths", "8,16"],
            &["--widths", "resnet50", "4 stages"],
        ),
        row(
            &["train", "--optimizer", "foo"],
            &["optimizer", "foo", "adam"],
        ),
        row(
            &["train", "--schedule", "foo"],
            &["schedule", "foo", "cosine"],
        ),
        row(&["train", "--lr", "-1"], &["--lr", "-1"]),
        row(&["train", "--lr", "nan"], &["--lr", "NaN"]),
        row(&["train", "--lr", "inf"], &["--lr"]),
        row(&["train", "--lr", "0"], &["--lr"]),
        row(&["train", "--lr", "abc"], &["--lr", "abc"]),
        row(&["train", "--epochs", "0"], &["--epochs"]),
        row(&["train", "--batch-size", "0"], &["--batch-size"]),
        row(&["train", "--batch-size", "1"], &["--batch-size"]),
        row(&["train", "--resize", "0"], &["--resize", "0"]),
        row(&["train", "--resize", "100000"], &["--resize", "100000"]),
        row(&["--threads", "0", "summary"], &["--threads"]),
        row(&["summary", "--threads", "0"], &["--threads"]),
        row(&["summary", "--classes", "0"], &["--classes"]),
        row(
            &["eval", "--weights", w, "--arch", "resnet50"],
            &["holds", "not resnet50 (--arch)"],
        ),
        row(
            &["train", "--recipe", "quick"],
            &["quick", "chapter, fast, best"],
        ),
        row(
            &["train", "--label-smoothing", "1"],
            &["--label-smoothing", "1"],
        ),
        row(
            &["train", "--random-erasing", "1.5"],
            &["--random-erasing", "1.5"],
        ),
        row(&["train", "--ema", "1"], &["--ema", "1"]),
        row(&["train", "--warmup-epochs", "-1"], &["--warmup-epochs"]),
        row(&["train", "--target-acc", "0"], &["--target-acc", "0"]),
        row(&["train", "--target-acc", "1.5"], &["--target-acc", "1.5"]),
        row(&["train", "--augment=maybe"], &["--augment", "maybe"]),
        row(&["train", "--limit-train", "0"], &["--limit-train"]),
        row(&["train", "--limit-test", "0"], &["--limit-test"]),
        row(&["train", "--widths", "16,abc"], &["--widths", "abc"]),
        row(
            &["train", "--widths", "16,0,64,128"],
            &["widths", "positive"],
        ),
        row(
            &["train", "--optimizer", "adam", "--momentum", "0.9"],
            &["momentum", "sgd"],
        ),
        row(
            &["train", "--optimizer", "sgd", "--momentum", "-0.5"],
            &["momentum", "-0.5"],
        ),
        row(
            &["train", "--optimizer", "sgd", "--weight-decay", "-1"],
            &["weight decay", "-1"],
        ),
        row(&["bench", "--only", "nope"], &["--only", "nope", "train28"]),
        row(&["bench", "--batch", "0"], &["batch"]),
        row(&["bench", "--plan", "--json"], &["--plan", "--json"]),
        row(
            &["bench", "--arch", "resnet50", "--only", "train512"],
            &["--only", "train512", "train224"],
        ),
        // Data.
        row(
            &["train", "--data", "/nonexistent/fashion"],
            &["--data /nonexistent/fashion", "no such directory"],
        ),
        row(
            &["train", "--data", s(&empty_dir)],
            &["no-data", "no class folders"],
        ),
        row(
            &["eval", "--weights", w, "--data", "/nonexistent/fashion"],
            &["--data", "no such directory"],
        ),
        row(
            &["train", "--data", s(&empty_class)],
            &["empty-class", "found no valid file for the classes dog"],
        ),
        row(
            &["train", "--data", s(&bad_image)],
            &["2.png", "cannot read image"],
        ),
        row(
            &["train", "--data", s(&link_loop)],
            &["link-loop", "symbolic link loop"],
        ),
        row(
            &["train", "--data", s(&cifar_short)],
            &["data_batch_1.bin", "3080 bytes", "3073"],
        ),
        row(
            &["train", "--data", s(&bad_image), "--val-split", "1.5"],
            &["--val-split", "1.5"],
        ),
        row(
            &["train", "--data", s(&bad_image), "--channels", "2"],
            &["--channels", "2"],
        ),
        row(
            &["train", "--mean", "0.5,0.5", "--std", "0.2,0.2"],
            &["--mean", "1 or 3"],
        ),
        row(
            &[
                "train",
                "--mean",
                "0.5,0.5,0.5",
                "--std",
                "0.2,0.2,0.2",
                "--resize",
                "28",
            ],
            &["--mean", "3 values", "1 channels"],
        ),
        row(&["train", "--mean", "0.5"], &["--std"]),
        // Run directories.
        row(
            &["train", "--out", run_dir, "--resize", "28", "--epochs", "1"],
            &["already holds", "--resume"],
        ),
        row(
            &["train", "--resume", "/nonexistent/run"],
            &["/nonexistent/run/checkpoint.safetensors"],
        ),
        row(
            &["train", "--resume", s(&not_a_run)],
            &["checkpoint.safetensors", "not a resnet training checkpoint"],
        ),
        row(
            &["train", "--resume", run_dir, "--epochs", "0"],
            &["--epochs"],
        ),
        // Weights.
        row(
            &["eval", "--weights", s(&fx.join("missing.safetensors"))],
            &["missing.safetensors"],
        ),
        row(
            &["eval", "--weights", s(&not_st)],
            &["notes.safetensors", "not a valid safetensors"],
        ),
        row(
            &["eval", "--weights", s(&empty_st)],
            &["empty.safetensors", "not a valid safetensors"],
        ),
        row(
            &["eval", "--weights", s(&truncated)],
            &["truncated.safetensors", "not a valid safetensors"],
        ),
        row(
            &["eval", "--weights", s(&huge_header)],
            &["huge-header.safetensors", "not a valid safetensors"],
        ),
        row(
            &["eval", "--weights", s(&wrong_keys)],
            &["wrong-keys.safetensors", "0.weight"],
        ),
        row(
            &["eval", "--weights", s(&wrong_keys_arch)],
            &["wrong-keys-arch.safetensors", "foo.weight"],
        ),
        row(
            &["eval", "--weights", s(&mislabeled)],
            &[
                "mislabeled.safetensors",
                "architecture it declares",
                "hold only",
            ],
        ),
        row(
            &["eval", "--weights", s(&rgb_net)],
            &["rgb.safetensors", "3 channels"],
        ),
        row(
            &["eval", "--weights", s(&five_classes)],
            &["five-classes.safetensors", "5 classes"],
        ),
        row(
            &["predict", "--weights", s(&two_channels), s(&x_png)],
            &["two-channels.safetensors", "2 channels"],
        ),
        row(
            &["eval", "--weights", s(&bad_size)],
            &["bad-size.safetensors", "resnet.input_size", "large"],
        ),
        row(
            &["eval", "--weights", s(&huge_size)],
            &["huge-size.safetensors", "resnet.input_size", "100000"],
        ),
        row(&["eval", "--weights", w, "--limit", "0"], &["--limit"]),
        row(
            &["eval", "--weights", w, "--batch-size", "0"],
            &["--batch-size"],
        ),
        row(
            &["eval", "--weights", w, "--resize", "3"],
            &["--resize", "3"],
        ),
        // PyTorch weights carry no input size.
        row(
            &["eval", "--weights", s(&pytorch_weights())],
            &["small_net_state_pytorch.safetensors", "--resize"],
        ),
        row(
            &["predict", "--weights", s(&pytorch_weights()), s(&x_png)],
            &["small_net_state_pytorch.safetensors", "--resize"],
        ),
        // Images.
        row(
            &["predict", "--weights", w, s(&x_png)],
            &["x.png", "cannot read image"],
        ),
        row(
            &["predict", "--weights", w, s(&y_jpg)],
            &["y.jpg", "cannot read image"],
        ),
        row(
            &["predict", "--weights", w, s(&empty_png)],
            &["empty.png", "cannot read image"],
        ),
        row(
            &["predict", "--weights", w, s(&huge_png)],
            &["huge.png", "cannot read image"],
        ),
        row(
            &["predict", "--weights", w, s(&missing_png)],
            &["missing.png", "cannot read image"],
        ),
        // `serve`: its limits, its address, its model file.
        row(
            &["serve", "--weights", w, "--max-batch", "0"],
            &["--max-batch"],
        ),
        row(
            &["serve", "--weights", w, "--queue", "100000"],
            &["--queue", "100000"],
        ),
        row(&["serve", "--weights", w, "--timeout", "0"], &["--timeout"]),
        row(
            &["serve", "--weights", w, "--max-body-mb", "0"],
            &["--max-body-mb"],
        ),
        row(&["serve", "--weights", w, "--topk", "0"], &["--topk"]),
        row(
            &["serve", "--weights", w, "--addr", "localhost"],
            &["--addr", "localhost"],
        ),
        row(&["serve", "--weights", s(&x_png)], &["x.png"]),
        row(
            &["serve", "--weights", w, "--addr", &taken_addr],
            &["cannot listen on", &taken_addr],
        ),
    ];
    let mut env_row = row(
        &["train", "--epochs", "1"],
        &["$RESNET_DATA=/nonexistent/env", "no such directory"],
    );
    env_row
        .env
        .push(("RESNET_DATA".into(), "/nonexistent/env".into()));
    rows.push(env_row);
    // Damaged data: every message names the damaged file.
    for (name, want) in [
        ("truncated-gz", "truncated"),
        ("wrong-magic", "wrong magic"),
        ("labels-as-images", "3-d"),
        (
            "lying-header",
            "truncated: header declares 60000×28×28 bytes",
        ),
        ("bad-label", "label 10"),
    ] {
        let file = if name == "bad-label" {
            TRAIN_LABELS
        } else {
            TRAIN_IMAGES
        };
        rows.push(Row {
            args: train_data(name),
            want: vec![file.to_string(), want.to_string()],
            env: Vec::new(),
        });
    }
    rows.push(Row {
        args: train_data("count-mismatch"),
        want: vec![TRAIN_LABELS.into(), "9 labels".into(), "10 images".into()],
        env: Vec::new(),
    });
    for (name, want) in [
        ("truncated-gz", "truncated"),
        ("lying-header", "60000"),
        ("count-mismatch", "9 labels"),
    ] {
        let file = if name == "count-mismatch" {
            TEST_LABELS
        } else {
            TEST_IMAGES
        };
        rows.push(row(
            &["eval", "--weights", w, "--data", &d(name)],
            &[file, want],
        ));
    }
    let mut raw_args = vec!["train", "--data", s(&raw)];
    raw_args.extend(small);
    rows.push(row(&raw_args, &["train-images-idx3-ubyte", "limit"]));
    assert!(rows.len() >= 25);
    eprintln!("{} bad invocations", rows.len());

    let before = snapshot(&fx);
    let model_before = snapshot(&m.run_dir);
    let cwd = scratch("bad-cwd");
    for r in &rows {
        let args: Vec<&str> = r.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = r
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let out = resnet_env(&args, &cwd, &env, Duration::from_secs(60));
        let what = format!("resnet {}", r.args.join(" "));
        let err = expect_failure(&out, &what);
        let line = err.lines().find(|l| l.starts_with("error: ")).unwrap();
        eprintln!("{what}\n    {line}");
        for want in &r.want {
            assert!(
                err.contains(want.as_str()),
                "{what}: want `{want}` in:\n{err}"
            );
        }
        let left: Vec<_> = std::fs::read_dir(&cwd)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(
            left.is_empty(),
            "{what}: left {left:?} in the working directory"
        );
    }
    assert!(
        snapshot(&fx) == before,
        "a failed command changed a fixture file"
    );
    assert!(
        snapshot(&m.run_dir) == model_before,
        "a failed command changed the run directory"
    );
    for dir in [fx, cwd] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

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
    let test = Dataset::load(&bundled(), Split::Test, false).unwrap();
    let a = dir.join("a.png");
    image::GrayImage::from_raw(28, 28, test.image(0).to_vec())
        .unwrap()
        .save(&a)
        .unwrap();
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
    let label = test.label(0);
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

/// `eval --tta` and `predict --tta` on a flip-invariant model (small stem, mirror-symmetric kernels, 33×33
/// inputs: see `common::make_flip_symmetric`) print what they print without it (logits within 1e-5); on an
/// ordinary model `predict --tta` changes the logits.
#[test]
fn tta_leaves_a_flip_invariant_model_unchanged() {
    let dir = scratch("tta");
    let side = 33usize;
    let config = ResNetConfig {
        widths: vec![8, 16, 32, 64],
        stem: resnet::nn::Stem::Small,
        ..ResNetConfig::chapter(1, 10)
    };
    let meta = BTreeMap::from([(META_INPUT_SIZE.to_string(), side.to_string())]);
    let ordinary = ResNet::new(config, 7).unwrap();
    let ordinary_path = dir.join("ordinary.safetensors");
    checkpoint::save_model(&ordinary_path, &ordinary, &meta).unwrap();
    let mut symmetric = ordinary;
    common::make_flip_symmetric(&mut symmetric);
    let symmetric_path = dir.join("symmetric.safetensors");
    checkpoint::save_model(&symmetric_path, &symmetric, &meta).unwrap();

    // 20 noise images of 33×33 in IDX files, and one as a PNG.
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let n = 20;
    let pixels: Vec<u8> = (0..(n * side * side) as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let labels: Vec<u8> = (0..n as u8).map(|i| i % 10).collect();
    let dims = [n as u32, side as u32, side as u32];
    for f in [TRAIN_IMAGES, TEST_IMAGES] {
        std::fs::write(data.join(f), gzip(&idx(&dims, &pixels))).unwrap();
    }
    for f in [TRAIN_LABELS, TEST_LABELS] {
        std::fs::write(data.join(f), gzip(&idx(&[n as u32], &labels))).unwrap();
    }
    let png = dir.join("x.png");
    image::GrayImage::from_raw(side as u32, side as u32, pixels[..side * side].to_vec())
        .unwrap()
        .save(&png)
        .unwrap();

    let eval = |tta: bool| {
        let mut args = vec!["eval", "--weights", s(&symmetric_path), "--data", s(&data)];
        if tta {
            args.push("--tta");
        }
        expect_success(&resnet(&args, &dir), "eval")
    };
    let plain = eval(false);
    assert!(
        plain.contains("test acc ") && plain.contains("(20 images, input 33×33)"),
        "{plain}"
    );
    let with_tta = eval(true);
    assert!(with_tta.contains("input 33×33, flip TTA)"), "{with_tta}");
    assert_eq!(with_tta.replacen(", flip TTA", "", 1), plain);

    let logits = |weights: &Path, tta: bool| -> (Vec<f64>, u64) {
        let mut args = vec!["predict", "--json", "--weights", s(weights), s(&png)];
        if tta {
            args.push("--tta");
        }
        let out = expect_success(&resnet(&args, &dir), "predict --json");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let l = v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        (l, v["predicted"].as_u64().unwrap())
    };
    let max_diff = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    let (a, pa) = logits(&symmetric_path, false);
    let (b, pb) = logits(&symmetric_path, true);
    assert_eq!(pa, pb);
    assert!(max_diff(&a, &b) <= 1e-5, "{a:?} {b:?}");
    let (a, _) = logits(&ordinary_path, false);
    let (b, _) = logits(&ordinary_path, true);
    assert!(max_diff(&a, &b) > 1e-4, "{a:?} {b:?}");
}
