//! The table of bad invocations: each must fail with a non-zero exit, exactly one `error: ` line that names the
//! problem and no panic; no fixture or run-directory file changes and nothing is created in the working
//! directory. The fixtures (damaged data directories, image folders, weights and images) are built here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use resnet::checkpoint::{self, META_ARCH, META_CLASSES, META_EVAL_TRANSFORM, META_INPUT_SIZE};
use resnet::nn::{ResNet, ResNetConfig, StateTensor};

use crate::{
    data_dir, expect_failure, gzip, idx, model, png_header_only, pytorch_weights, resnet_env, s,
    scratch, snapshot, Damage, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS,
};

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

    // Files that are not regular files (their length, 0, passed every size check): a FIFO named like an image
    // in a folder, a CIFAR name file and an IDX file linked to /dev/zero.
    let fifo_folder = folder(
        "fifo-folder",
        &[("cat/1.png", &png), ("dog/2.png", &png)],
        &[],
    );
    crate::mkfifo(&fifo_folder.join("dog/x.png"));
    let record = [0u8; 3073];
    let mut cifar_files: Vec<(String, &[u8])> = (1..=5)
        .map(|b| (format!("data_batch_{b}.bin"), &record[..]))
        .collect();
    cifar_files.push(("test_batch.bin".into(), &record[..]));
    let cifar_files: Vec<(&str, &[u8])> =
        cifar_files.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    let cifar_zero_meta = folder("cifar-zero-meta", &cifar_files, &[]);
    std::os::unix::fs::symlink("/dev/zero", cifar_zero_meta.join("batches.meta.txt")).unwrap();
    let idx_zero = data_dir(&fx, "idx-zero", &Vec::new());
    std::fs::remove_file(idx_zero.join(TRAIN_IMAGES)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", idx_zero.join(TRAIN_IMAGES)).unwrap();
    let fifo_weights = fx.join("fifo.safetensors");
    crate::mkfifo(&fifo_weights);
    let fifo_png = fx.join("fifo.png");
    crate::mkfifo(&fifo_png);
    let fifo_run = fx.join("fifo-run");
    std::fs::create_dir_all(&fifo_run).unwrap();
    crate::mkfifo(&fifo_run.join("checkpoint.safetensors"));

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
    // The shared model trained at 28 with stored transforms of `steps` (JSON): none (it is brought to 28), or one
    // that would make inputs larger than the network's input limit.
    let with_steps = |name: &str, steps: &str| -> PathBuf {
        let mut meta = model_meta.clone();
        meta.insert(
            META_EVAL_TRANSFORM.to_string(),
            format!(r#"{{"steps":{steps},"normalize":null}}"#),
        );
        write(name, &checkpoint::serialize(&model_sd, &meta).unwrap())
    };
    let no_resize = with_steps("no-resize.safetensors", "[]");
    let resize_4096 = with_steps("resize-4096.safetensors", r#"[{"resize":4096}]"#);
    // A network that does not say what size it was trained at, without a resize step, and a folder of images
    // larger than the network's input limit to evaluate it on.
    let unsized_net = {
        let config = ResNetConfig {
            widths: vec![4, 4, 4, 4],
            ..ResNetConfig::chapter(1, 2)
        };
        let net = ResNet::new(config, 0).unwrap();
        let p = fx.join("unsized.safetensors");
        let meta = BTreeMap::from([(
            META_EVAL_TRANSFORM.to_string(),
            r#"{"steps":[],"normalize":null}"#.to_string(),
        )]);
        checkpoint::save_model(&p, &net, &meta).unwrap();
        p
    };
    // ONNX files: not ONNX, truncated, a graph with a cycle, shapes that lie, a 10⁹-element initializer in 20 bytes.
    let onnx = {
        use prost::Message;
        let file = resnet::model_file::ModelFile::load(&m.weights).unwrap();
        let model = resnet::onnx::export(&file, &Default::default()).unwrap();
        let edited = |edit: &dyn Fn(&mut resnet::onnx::proto::GraphProto)| {
            let mut model = model.clone();
            edit(model.graph.as_mut().unwrap());
            model.encode_to_vec()
        };
        let whole = model.encode_to_vec();
        [
            write("not-onnx.onnx", b"not an ONNX model at all"),
            write("truncated.onnx", &whole[..whole.len() / 2]),
            write(
                "cycle.onnx",
                &edited(&|g| g.node[0].input[0] = g.node[5].output[0].clone()),
            ),
            write(
                "lying-shape.onnx",
                &edited(&|g| g.initializer[0].dims[0] += 1),
            ),
            write(
                "huge-initializer.onnx",
                &edited(&|g| {
                    g.initializer[0].dims = vec![1_000, 1_000_000];
                    g.initializer[0].raw_data = Some(vec![0; 20]);
                }),
            ),
        ]
    };
    // Quantized files (`resnet quantize`'s): one as written, one lacking a weight scale, one whose scale has a
    // shape the network does not have.
    let quantized = {
        use resnet::compiled::int8::{Calibration, Method};
        use resnet::compiled::quant_file::{to_bytes, Record};
        use safetensors::tensor::{SafeTensors, TensorView};
        let file = resnet::model_file::ModelFile::load(&m.weights).unwrap();
        let mut net = resnet::compiled::CompiledNet::new(&file.network().unwrap(), None).unwrap();
        let mut calibration = Calibration::new(&net);
        let x: Vec<f32> = (0..28 * 28).map(|i| (i % 29) as f32 / 29.0).collect();
        calibration
            .observe(&mut net, &x, resnet::Shape4::new(1, 1, 28, 28))
            .unwrap();
        let record = Record::new(Method::MinMax, 1, "0".repeat(64));
        let meta = BTreeMap::from([(META_ARCH.to_string(), checkpoint::arch_string(&file.config))]);
        let whole = to_bytes(&net, &calibration.clips(Method::MinMax), &record, &meta).unwrap();
        let st = SafeTensors::deserialize(&whole).unwrap();
        let (_, header) = SafeTensors::read_metadata(&whole).unwrap();
        let meta: std::collections::HashMap<String, String> = header.metadata().clone().unwrap();
        let scale = st
            .names()
            .into_iter()
            .find(|k| k.ends_with(".weight_scale"))
            .unwrap();
        let edited = |drop: bool| {
            let longer = vec![0u8; st.tensor(scale).unwrap().data().len() + 4];
            let views: Vec<(String, TensorView)> = st
                .tensors()
                .into_iter()
                .filter(|(k, _)| !(drop && *k == scale))
                .map(|(k, v)| match k == scale {
                    true => {
                        let n = v.shape()[0] + 1;
                        (k, TensorView::new(v.dtype(), vec![n], &longer).unwrap())
                    }
                    false => (k, v),
                })
                .collect();
            safetensors::serialize(views, Some(meta.clone())).unwrap()
        };
        [
            write("int8.safetensors", &whole),
            write("int8-no-scale.safetensors", &edited(true)),
            write("int8-wrong-shape.safetensors", &edited(false)),
        ]
    };
    // A legacy (pre-1.6) torch.save file, copied into the fixtures (named as the .pth reader names it, not as
    // "not a valid safetensors file").
    let legacy_pth = fx.join("legacy.pth");
    std::fs::copy(crate::common::golden_path("pth_legacy.pth"), &legacy_pth).unwrap();
    let big_png = {
        let mut bytes = Vec::new();
        image::GrayImage::new(1100, 1100)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        bytes
    };
    let big_names: Vec<String> = (0..20)
        .map(|i| format!("{}/{i}.png", ["a", "b"][i % 2]))
        .collect();
    let big_files: Vec<(&str, &[u8])> = big_names
        .iter()
        .map(|n| (n.as_str(), big_png.as_slice()))
        .collect();
    let big_folder = folder("big-images", &big_files, &[]);
    // Class names with an escape sequence and a newline that would forge a second error line.
    let evil_names = {
        let mut meta = model_meta.clone();
        let names: Vec<String> = (0..10)
            .map(|i| format!("\x1b[31mc{i}\nerror: forged"))
            .collect();
        meta.insert(
            META_CLASSES.to_string(),
            serde_json::to_string(&names).unwrap(),
        );
        write(
            "evil-names.safetensors",
            &checkpoint::serialize(&model_sd, &meta).unwrap(),
        )
    };
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
    // Within the decoder's limits, but 5600×28 once brought to the trained size: refused from its header.
    let long_png = {
        let mut bytes = Vec::new();
        image::GrayImage::new(4000, 20)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        write("long.png", &bytes)
    };
    let missing_png = fx.join("missing.png");
    // A JPEG cut in half, in its scan (its decoder would fill in the rest and succeed).
    let cut_jpg = {
        let img = image::GrayImage::from_fn(96, 96, |x, y| {
            image::Luma([((x * 7919 + y * 104_729) % 251) as u8])
        });
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        write("cut.jpg", &bytes[..bytes.len() / 2])
    };

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
        row(
            &["train", "--collective-timeout", "0"],
            &["--collective-timeout", "0"],
        ),
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
        // `predict --explain`: the layer and the class are checked before anything is written.
        row(
            &[
                "predict",
                "--weights",
                w,
                "--explain",
                "cams",
                "--layer",
                "layer9",
                "x.png",
            ],
            &["--layer", "layer9", "not a layer", "resnet_block4"],
        ),
        row(
            &[
                "predict",
                "--weights",
                w,
                "--explain",
                "cams",
                "--layer",
                "layer2.7",
                "x.png",
            ],
            &["--layer", "layer2.7", "not a layer"],
        ),
        row(
            &[
                "predict",
                "--weights",
                w,
                "--explain",
                "cams",
                "--class",
                "zebra",
                "x.png",
            ],
            &[
                "--class",
                "zebra",
                "not a class",
                "\"t-shirt\", \"trouser\"",
                "2 more",
            ],
        ),
        row(
            &[
                "predict",
                "--weights",
                w,
                "--explain",
                "cams",
                "--class",
                "10",
                "x.png",
            ],
            &["--class", "\"10\"", "below 10"],
        ),
        row(
            &["predict", "--weights", w, "--layer", "layer4", "x.png"],
            &["--explain"],
        ),
        row(
            &[
                "predict",
                "--weights",
                w,
                "--explain",
                "cams",
                "--class",
                "bag",
                "--target",
                "top1",
                "x.png",
            ],
            &["--class", "--target", "cannot be used with"],
        ),
        row(
            &[
                "predict",
                "--weights",
                w,
                "--explain",
                "cams",
                "--tta",
                "x.png",
            ],
            &["--explain", "--tta"],
        ),
        row(
            &["predict", "--weights", w, "--explain", w, "x.png"],
            &["--explain", "cannot create the directory"],
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
            &["eval", "--weights", s(&onnx[0])],
            &["not-onnx.onnx", "not a valid ONNX model"],
        ),
        row(
            &["predict", "--weights", s(&onnx[1]), "x.png"],
            &["truncated.onnx", "not a valid ONNX model"],
        ),
        row(
            &["eval", "--weights", s(&onnx[2])],
            &["cycle.onnx", "a cycle or is not in topological order"],
        ),
        row(
            &["eval", "--weights", s(&onnx[3])],
            &[
                "lying-shape.onnx",
                "declares dimensions",
                "values (or bytes) they need",
            ],
        ),
        row(
            &["eval", "--weights", s(&onnx[4])],
            &[
                "huge-initializer.onnx",
                "declares dimensions [1000, 1000000], more than",
            ],
        ),
        row(
            &["eval", "--weights", s(&legacy_pth)],
            &["legacy.pth", "legacy (pre-1.6", "re-save"],
        ),
        // clap's refusals as one line naming the flag: a negative number reads to clap as an unknown flag.
        row(
            &["train", "--epochs", "-1"],
            &["--epochs", "negative", "-1"],
        ),
        row(
            &["bench", "--iters", "18446744073709551616"],
            &["--iters", "too large"],
        ),
        row(&["summary", "--no-such-flag"], &["--no-such-flag"]),
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
        row(
            &["predict", "--weights", w, s(&cut_jpg)],
            &["cut.jpg", "cannot read image", "truncated JPEG"],
        ),
        // The network's input side: images and stored transforms that would make it larger than the limit.
        row(
            &["predict", "--weights", s(&no_resize), s(&long_png)],
            &[
                "long.png",
                "4000×20",
                "5600×28",
                "at most 1024 pixels a side",
            ],
        ),
        row(
            &["predict", "--weights", s(&resize_4096), s(&x_png)],
            &["resize-4096.safetensors", "4096×4096", "1024-pixel limit"],
        ),
        row(
            &[
                "eval",
                "--weights",
                s(&unsized_net),
                "--data",
                s(&big_folder),
            ],
            &[
                "unsized.safetensors",
                "1100×1100",
                "at most 1024 pixels a side",
            ],
        ),
        // Names from a model file, in an error line: escaped.
        row(
            &["eval", "--weights", s(&evil_names)],
            &[
                "class 0 is `\\u{1b}[31mc0\\nerror: forged`",
                "it is `t-shirt`",
            ],
        ),
        // Devices and FIFOs: only regular files are read.
        row(
            &["eval", "--weights", "/dev/zero"],
            &["/dev/zero", "is not a regular file (a character device)"],
        ),
        row(
            &["predict", "--weights", s(&fifo_weights), s(&x_png)],
            &["fifo.safetensors", "is not a regular file (a FIFO)"],
        ),
        row(
            &["predict", "--weights", w, "/dev/zero"],
            &["/dev/zero", "cannot read image", "is not a regular file"],
        ),
        row(
            &["predict", "--weights", w, s(&fifo_png)],
            &[
                "fifo.png",
                "cannot read image",
                "is not a regular file (a FIFO)",
            ],
        ),
        row(
            &[
                "train",
                "--init",
                "/dev/zero",
                "--resize",
                "28",
                "--epochs",
                "1",
            ],
            &["/dev/zero", "is not a regular file"],
        ),
        row(
            &["train", "--resume", s(&fifo_run)],
            &[
                "fifo-run/checkpoint.safetensors",
                "is not a regular file (a FIFO)",
            ],
        ),
        row(
            &[
                "train",
                "--data",
                s(&fifo_folder),
                "--resize",
                "28",
                "--epochs",
                "1",
            ],
            &["dog/x.png", "is not a regular file (a FIFO)"],
        ),
        row(
            &[
                "train",
                "--data",
                s(&cifar_zero_meta),
                "--resize",
                "28",
                "--epochs",
                "1",
            ],
            &[
                "batches.meta.txt",
                "is not a regular file (a character device)",
            ],
        ),
        row(
            &[
                "train",
                "--data",
                s(&idx_zero),
                "--resize",
                "28",
                "--epochs",
                "1",
            ],
            &[TRAIN_IMAGES, "is not a regular file (a character device)"],
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
            &["serve", "--weights", w, "--header-timeout", "0"],
            &["--header-timeout"],
        ),
        row(
            &["serve", "--weights", w, "--header-timeout", "inf"],
            &["--header-timeout"],
        ),
        row(
            &["serve", "--weights", w, "--max-connections", "0"],
            &["--max-connections"],
        ),
        row(
            &["serve", "--weights", w, "--max-connections", "100000"],
            &["--max-connections", "65536"],
        ),
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
        // `quantize`: its flags, its model file (not an f32 one), its calibration images; quantized files that
        // lack a tensor or hold one of the wrong shape, wherever weights load.
        row(
            &[
                "quantize",
                "--weights",
                w,
                "--calib",
                s(&empty_dir),
                "--out",
                "q.safetensors",
                "--images",
                "0",
            ],
            &["--images", "0"],
        ),
        row(
            &[
                "quantize",
                "--weights",
                w,
                "--calib",
                s(&empty_dir),
                "--out",
                "q.safetensors",
                "--method",
                "entropy",
            ],
            &["--method", "entropy"],
        ),
        row(
            &[
                "quantize",
                "--weights",
                w,
                "--calib",
                s(&empty_dir),
                "--out",
                "q.safetensors",
                "--resize",
                "0",
            ],
            &["--resize", "0"],
        ),
        row(
            &[
                "quantize",
                "--weights",
                w,
                "--calib",
                s(&empty_dir),
                "--out",
                "q.safetensors",
            ],
            &["--calib", "no-data", "no images"],
        ),
        row(
            &[
                "quantize",
                "--weights",
                w,
                "--calib",
                s(&fx.join("nowhere")),
                "--out",
                "q.safetensors",
            ],
            &["--calib", "nowhere", "no such folder"],
        ),
        row(
            &[
                "quantize",
                "--weights",
                s(&quantized[0]),
                "--calib",
                s(&empty_dir),
                "--out",
                "q.safetensors",
            ],
            &["int8.safetensors", "already a quantized model file"],
        ),
        row(
            &[
                "quantize",
                "--weights",
                s(&not_st),
                "--calib",
                s(&empty_dir),
                "--out",
                "q.safetensors",
            ],
            &["notes.safetensors", "not a valid safetensors"],
        ),
        row(
            &["eval", "--weights", s(&quantized[1])],
            &["int8-no-scale.safetensors", "lacks tensor", ".weight_scale"],
        ),
        row(
            &["predict", "--weights", s(&quantized[2]), "x.png"],
            &[
                "int8-wrong-shape.safetensors",
                ".weight_scale",
                "the network needs F32",
            ],
        ),
        row(
            &["export", "--weights", s(&quantized[0]), "--onnx", "m.onnx"],
            &["int8.safetensors", "runs inference only"],
        ),
        // `export`: its flags, its model file, where it writes.
        row(&["export", "--weights", w], &["--onnx"]),
        row(
            &[
                "export",
                "--weights",
                w,
                "--onnx",
                "m.onnx",
                "--opset",
                "16",
            ],
            &["--opset", "17", "21", "16"],
        ),
        row(
            &[
                "export",
                "--weights",
                w,
                "--onnx",
                "m.onnx",
                "--opset",
                "abc",
            ],
            &["--opset", "abc"],
        ),
        row(
            &["export", "--weights", w, "--onnx", "m.onnx", "--batch", "0"],
            &["--batch", "0"],
        ),
        row(
            &[
                "export",
                "--weights",
                s(&fx.join("missing.safetensors")),
                "--onnx",
                "m.onnx",
            ],
            &["missing.safetensors"],
        ),
        row(
            &["export", "--weights", s(&truncated), "--onnx", "m.onnx"],
            &["truncated.safetensors", "not a valid safetensors"],
        ),
        row(
            &[
                "export",
                "--weights",
                w,
                "--onnx",
                "/nonexistent/dir/m.onnx",
            ],
            &["/nonexistent/dir/m.onnx"],
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
    // Descriptions a file's metadata may hold that no network fits (#30, defect 10): each said as what it is, on
    // one short line (a million stages once made a line of 6 MB; 0 channels read "too many parameters").
    let declared = |name: &str, arch: String| -> PathBuf {
        let meta = BTreeMap::from([(META_ARCH.to_string(), arch)]);
        write(name, &checkpoint::serialize(&foo, &meta).unwrap())
    };
    let zero_channels = declared(
        "zero-channels.safetensors",
        "0,10;64,128,256,512;2,2,2,2".into(),
    );
    let zero_classes = declared(
        "zero-classes.safetensors",
        "1,0;64,128,256,512;2,2,2,2".into(),
    );
    let million = vec!["1"; 1_000_000].join(",");
    let million_stages = declared(
        "million-stages.safetensors",
        format!("1,10;{};{million}", vec!["8"; 1_000_000].join(",")),
    );
    let mismatched = declared("mismatched.safetensors", format!("1,10;8,8;{million}"));
    let bad_count = declared("bad-count.safetensors", format!("1,10;8,8;{million},x"));
    // 10,000 class folders, one of them with an image: an error naming all the others was 200 kB.
    let many_empty = folder("many-empty-classes", &[("c00000/1.png", &png)], &[]);
    for k in 1..10_000 {
        std::fs::create_dir(many_empty.join(format!("c{k:05}"))).unwrap();
    }
    rows.extend([
        row(
            &["eval", "--weights", s(&zero_channels)],
            &["zero-channels.safetensors", "0 input channels"],
        ),
        row(
            &["predict", "--weights", s(&zero_classes), "x.png"],
            &["zero-classes.safetensors", "0 classes"],
        ),
        row(
            &["eval", "--weights", s(&million_stages)],
            &["million-stages.safetensors", "1000000 stages", "more"],
        ),
        row(
            &["eval", "--weights", s(&mismatched)],
            &[
                "mismatched.safetensors",
                "2 widths",
                "1000000 block counts",
                "and 999992 more",
            ],
        ),
        row(
            &["eval", "--weights", s(&bad_count)],
            &["bad-count.safetensors", "`x` is not a count", "characters)"],
        ),
        row(
            &["train", "--data", s(&many_empty)],
            &["many-empty-classes", "c00001, c00002", "and 9991 more"],
        ),
    ]);
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
        // One line a person reads: a few hundred characters, whatever the input's size.
        assert!(
            line.chars().count() <= 600,
            "{what}: an error line of {} characters",
            line.chars().count()
        );
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
