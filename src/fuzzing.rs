//! The bodies of the fuzz targets (`fuzz/fuzz_targets/`), here so that `cargo test` runs the same checks on
//! the committed seeds and on every input a fuzzer ever crashed (tests/fuzz_regressions.rs). Each takes
//! arbitrary bytes and panics only when an invariant is broken: errors are the expected answer to bad input.

use crate::cli::Cli;
use crate::commands::summary::{parse_shape, MAX_INPUT_VALUES};
use crate::data::cifar::{self, Kind, Label};
use crate::data::idx::{images_of, labels_of, parse_idx};
use crate::data::image_file::decode_image;
use crate::data::transforms::{to_tensor_chw, Pipeline, Step};
use crate::data::ImageDataset;
use crate::model_file::ModelFile;
use crate::nn::{Buffers, SeedableRng, StateTensor};
use crate::pth::read_state_dict;
use crate::train::Restored;
use crate::Shape4;
use clap::Parser;
use std::path::Path;

/// IDX parsing (raw and gzip): an array whose data matches its header, or an error.
pub fn idx(data: &[u8]) {
    let origin = Path::new("fuzz.idx");
    if let Ok(a) = parse_idx(data, origin) {
        assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
        if let Ok((pixels, n, h, w)) = images_of(a.clone(), origin) {
            assert_eq!(pixels.len(), n * h * w);
        }
        if let Ok(labels) = labels_of(a.clone(), origin) {
            assert_eq!(labels.len(), a.dims[0]);
        }
    }
}

/// Checkpoint loading: as a model file (`--weights`; what loads must run) and as a training checkpoint with
/// metadata and optimizer state (`--resume`).
pub fn checkpoint(data: &[u8]) {
    let origin = Path::new("fuzz-model.safetensors");
    if let Ok(mut net) = ModelFile::from_bytes(data, origin).and_then(|f| f.network()) {
        net.set_train(false);
        let c = net.config.in_channels;
        let x = vec![0.5f32; c * 16 * 16];
        let logits = net
            .forward(&x, Shape4::new(1, c, 16, 16), Buffers::Own)
            .expect("a loaded model runs");
        assert_eq!(logits.len(), net.config.num_classes);
    }
    if let Ok(r) = Restored::from_bytes(data, "fuzz-checkpoint.safetensors", None) {
        assert_eq!(r.progress.history.len(), r.progress.epochs_done);
    }
}

/// Image decoding for `predict` (grayscale pixels, then `Resize(28)` and `ToTensor` values in `[0, 1]`) and for
/// image folders (1 and 3 channels, the sizes agreeing with the gray decoding).
pub fn image(data: &[u8]) {
    for c in [1, 3] {
        if let Ok(img) = decode_image(data, Path::new("fuzz-image"), c) {
            assert_eq!((img.c, img.pixels.len()), (c, img.h * img.w * c));
        }
    }
    // What `predict` does for a one-channel model: gray, `Resize(28)`, `ToTensor` to values in [0, 1].
    if let Ok(img) = decode_image(data, Path::new("fuzz-image"), 1) {
        let resize = Pipeline {
            steps: vec![Step::Resize(28)],
            normalize: None,
            erasing: None,
        };
        if let Ok(img) = resize.apply(img, &mut crate::nn::InitRng::seed_from_u64(0)) {
            assert_eq!(img.h.min(img.w), 28);
            let mut x = vec![0.0; img.pixels.len()];
            to_tensor_chw(&img, &mut x, None);
            assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }
}

/// Command-line parsing: `--input` shapes straight into [`parse_shape`], and NUL-separated argument lists
/// through clap and [`Cli::check`], as `resnet` runs them before touching a file.
pub fn cli(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(shape) = parse_shape(text) {
        assert!(!shape.is_empty() && shape.len() <= MAX_INPUT_VALUES);
    }
    let args = std::iter::once("resnet").chain(text.split('\0'));
    if let Ok(cli) = Cli::try_parse_from(args) {
        let _ = cli.check();
    }
}

/// PyTorch `.pth` state dicts: every tensor read holds exactly the values its shape declares, and no more
/// than the file's bytes. Inputs that are not zip archives are also tried as the pickle (`data.pkl`) of an
/// archive built around them, next to a 64-byte storage `data/0`: the archive's CRC-32s would otherwise keep
/// almost every mutated pickle from reaching the pickle reader.
pub fn pth(data: &[u8]) {
    check_pth(data);
    if !crate::pth::is_pth(data) {
        check_pth(&archive_around(data));
    }
}

fn check_pth(data: &[u8]) {
    if let Ok(sd) = read_state_dict(data, "fuzz.pth") {
        let mut total = 0;
        for (_, t) in &sd {
            let n: usize = t.shape().iter().product();
            let len = match t {
                StateTensor::F32 { data, .. } => data.len(),
                StateTensor::I64 { data, .. } => data.len(),
            };
            assert_eq!(len, n);
            total += n;
        }
        assert!(total <= data.len());
    }
}

/// A `.pth` archive with `pickle` as `archive/data.pkl` and 64 bytes of storage `archive/data/0`.
pub fn archive_around(pickle: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let storage: Vec<u8> = (0..16u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let written = (|| -> zip::result::ZipResult<Vec<u8>> {
        w.start_file("archive/data.pkl", opts)?;
        w.write_all(pickle)?;
        w.start_file("archive/data/0", opts)?;
        w.write_all(&storage)?;
        Ok(w.finish()?.into_inner())
    })();
    written.expect("writing a zip archive to memory")
}
/// CIFAR binary parsing (the three record layouts): whole records with labels in range, or an error; what parses
/// makes a dataset whose images are `32×32×3`.
pub fn cifar(data: &[u8]) {
    let origin = Path::new("fuzz.bin");
    for kind in [
        Kind::Cifar10,
        Kind::Cifar100(Label::Fine),
        Kind::Cifar100(Label::Coarse),
    ] {
        if let Ok((images, labels)) = cifar::parse(data, kind, origin) {
            let n = labels.len();
            assert_eq!(n * kind.record_size(), data.len());
            assert_eq!(images.len(), labels.len() * cifar::PIXELS);
            assert!(labels.iter().all(|&l| (l as usize) < kind.num_classes()));
            let classes = (0..kind.num_classes()).map(|i| i.to_string()).collect();
            let ds = crate::data::ArrayDataset::new(images, labels, (32, 32, 3), classes, "fuzz")
                .expect("parsed records make a dataset");
            let last = ds.image(ds.len() - 1).expect("in memory");
            assert_eq!((last.h, last.w, last.c), (32, 32, 3));
            assert_eq!(ds.with_channels(1).images.len(), n * 1024);
        }
    }
}

/// `resnet serve`'s request parsing (`POST /v1/predict`): the input is `query\ncontent-type\nbody`. Whatever the
/// bytes, the answer is prepared inputs of the model's shape within the size limit, or a 4xx error, never a 5xx
/// one (and never a panic).
pub fn request(data: &[u8]) {
    use crate::serve::{parse_predict, BatchOptions, ServeOptions};
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let content_type = parts
        .next()
        .map(|ct| String::from_utf8_lossy(ct).into_owned());
    let body = parts.next().unwrap_or_default().to_vec();
    let opts = ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        batch: BatchOptions {
            max_batch: 4,
            max_batch_pixels: 1 << 20,
            max_wait: std::time::Duration::ZERO,
            queue: 4,
            tta: false,
        },
        max_body: 1 << 20,
        max_images: 4,
        timeout: std::time::Duration::from_secs(10),
        max_decode_bytes: 16 << 20,
        max_input_side: 256,
        topk: 5,
        limits: crate::serve::ConnLimits {
            header_timeout: std::time::Duration::from_secs(10),
            max_connections: 16,
        },
        explain_queue: 4,
    };
    for (preprocess, channels) in [
        (
            Pipeline {
                steps: vec![Step::Resize(32)],
                ..Pipeline::default()
            },
            1,
        ),
        (Pipeline::default(), 3),
    ] {
        match parse_predict(
            &query,
            content_type.as_deref(),
            body.clone(),
            &preprocess,
            channels,
            &opts,
        ) {
            Ok(inputs) => {
                assert!(!inputs.is_empty() && inputs.len() <= opts.max_images);
                for (x, xs) in inputs {
                    assert_eq!((xs.n, xs.c, x.len()), (1, channels, xs.len()));
                    assert!(xs.h <= opts.max_input_side && xs.w <= opts.max_input_side);
                    assert!(x.iter().all(|v| v.is_finite()));
                }
            }
            Err((status, message)) => {
                assert!((400..500).contains(&status), "{status}: {message}");
            }
        }
    }
}

/// ONNX models (`--weights model.onnx`): the graph read into a description and a state dict that load into a
/// network that runs, or an error. Data kept in other files is never read here.
pub fn onnx(data: &[u8]) {
    let origin = "fuzz.onnx";
    let Ok((sd, meta)) = crate::onnx::import::read(data, origin, None) else {
        return;
    };
    let arch = meta
        .get(crate::checkpoint::META_ARCH)
        .expect("the reader describes the network");
    let config = crate::checkpoint::parse_arch(arch).expect("the reader's description parses");
    let mut net =
        crate::checkpoint::build_for(config, &sd, origin).expect("the weights fill the network");
    net.load_state_dict(&sd)
        .expect("the reader's keys and shapes are the network's");
    net.set_train(false);
    let c = net.config.in_channels;
    let logits = net
        .forward(
            &vec![0.5f32; c * 16 * 16],
            Shape4::new(1, c, 16, 16),
            Buffers::Own,
        )
        .expect("a loaded model runs");
    assert_eq!(logits.len(), net.config.num_classes);
}

/// `--layer` / `?layer=` and `--class` / `?class=` names (`resnet::explain`): any text either names a layer or a
/// class that exists, or is refused with one short line, for the chapter's naming and torchvision's.
pub fn explain_names(data: &[u8]) {
    use crate::explain::{CamLayer, Explainer};
    use crate::nn::{ArchName, ResNet, ResNetConfig, Stem};
    let text = String::from_utf8_lossy(data);
    for arch in [ArchName::Chapter, ArchName::Resnet18] {
        let config = ResNetConfig {
            widths: vec![4, 4, 4, 4],
            stem: Stem::Small,
            ..ResNetConfig::named(arch, 1, 3)
        };
        let net = ResNet::new(config, 0).expect("a valid configuration");
        match CamLayer::find(&net, &text) {
            Ok(layer) => assert!(
                layer.stage < net.stages.len() && layer.block < net.stages[layer.stage].len()
            ),
            Err(e) => assert!(e.to_string().len() <= 400, "{e}"),
        }
        let names = vec![
            "cat".to_string(),
            "dog".to_string(),
            "fish & chips".to_string(),
        ];
        let explainer = Explainer::new(net, Pipeline::default(), names, "fuzz".into());
        match explainer.class(&text) {
            Ok(k) => assert!(k < 3),
            Err(e) => assert!(e.to_string().len() <= 400, "{e}"),
        }
    }
}

/// Quantized model files (`resnet quantize`'s, read wherever weights load): a file that reads builds an int8
/// network that runs, or an error, with its stem in f32 and on int8.
pub fn quantized(data: &[u8]) {
    let origin = "fuzz-int8.safetensors";
    let Ok((q, _)) = crate::compiled::quant_file::Quantized::read(data, origin) else {
        return;
    };
    let mut net = q
        .network(crate::kernels::int8::Path::detect())
        .expect("a quantized file that reads builds its network");
    let c = net.config().in_channels;
    let classes = net.config().num_classes;
    let x = vec![0.5f32; c * 32 * 32];
    if let Ok(logits) = net.forward(&x, Shape4::new(1, c, 32, 32)) {
        assert_eq!(logits.len(), classes);
    }
    // As a file loads: the stem on int8 too (its f32 weights, whatever they hold, quantized).
    if net.quantize_stem(&vec![(-2.0, 2.0); c]).is_ok() {
        if let Ok(logits) = net.forward(&x, Shape4::new(1, c, 32, 32)) {
            assert_eq!(logits.len(), classes);
        }
    }
}
