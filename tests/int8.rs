//! The int8 network against the f32 one it was quantized from: a narrow ResNet-50-kind (Bottleneck) network
//! with batch norms that do something, calibrated on some random images and run on others, on every int8 path
//! this CPU has; and the quantized model file it is written to and read from (`resnet quantize`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resnet::checkpoint::{arch_string, META_ARCH};
use resnet::compiled::int8::{Calibration, Method, QuantNet};
use resnet::compiled::loaded::InferenceNet;
use resnet::compiled::quant_file::{self, Quantized, Record, META_QUANT as QUANT};
use resnet::compiled::CompiledNet;
use resnet::kernels::int8::Path;
use resnet::model_file::ModelFile;
use resnet::nn::{ArchName, LayerMut, ResNet, ResNetConfig};
use resnet::Shape4;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::BTreeMap;

/// ResNet-50's kind (Bottleneck blocks, torchvision's stem and shortcuts), widths 16–64, one block per stage.
fn narrow_bottleneck() -> ResNetConfig {
    ResNetConfig {
        widths: vec![16, 32, 32, 64],
        layers: vec![1, 1, 1, 1],
        ..ResNetConfig::named(ArchName::Resnet50, 3, 10)
    }
}

/// A network of `config` with its batch norms' statistics and affine drawn from `seed` (a fresh norm is the
/// identity).
fn network(config: ResNetConfig, seed: u64) -> ResNet {
    let mut net = ResNet::new(config, seed).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    net.for_each_layer_mut(&mut |_, layer| {
        if let LayerMut::Bn(bn) = layer {
            for i in 0..bn.num_features {
                bn.running_mean[i] = rng.random_range(-0.3..0.3);
                bn.running_var[i] = rng.random_range(0.5..1.5);
                bn.weight[i] = rng.random_range(0.5..1.5);
                bn.bias[i] = rng.random_range(-0.3..0.3);
            }
        }
    });
    net.set_train(false);
    net
}

/// `n` random images of `c` channels, 64×64, whose pixels vary smoothly (as a photograph's do), normalized to
/// about [-2, 2].
fn images(n: usize, c: usize, seed: u64) -> (Vec<f32>, Shape4) {
    let xs = Shape4::new(n, c, 64, 64);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Vec::with_capacity(xs.len());
    for _ in 0..n * c {
        let (fy, fx, phase): (f32, f32, f32) = (
            rng.random_range(0.05..0.3),
            rng.random_range(0.05..0.3),
            rng.random_range(0.0..6.0),
        );
        for y in 0..64 {
            for xx in 0..64 {
                let noise: f32 = rng.random_range(-0.3..0.3);
                x.push(1.5 * (fy * y as f32 + fx * xx as f32 + phase).sin() + noise);
            }
        }
    }
    (x, xs)
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

/// The quantized network's logits are the f32 network's within 5% of their largest magnitude (the rounding of
/// 8-bit weights and activations through 17 convolutions, measured at about 1–2%), and its top-1 is the f32
/// top-1 on at least 14 of 16 images; with both clip methods, the stem in f32 and on int8
/// ([`QuantNet::quantize_stem`]). The paths with 8-bit activations give the same logits bit for bit.
#[test]
fn quantized_bottleneck_net_agrees_with_f32() {
    agrees_with_f32(narrow_bottleneck());
}

/// The same of the chapter's network (BasicBlocks, conv biases, shortcuts without a norm, one input channel).
#[test]
fn quantized_chapter_net_agrees_with_f32() {
    agrees_with_f32(ResNetConfig::named(ArchName::Chapter, 1, 10));
}

fn agrees_with_f32(config: ResNetConfig) {
    let channels = config.in_channels;
    let net = network(config, 7);
    let mut f32net = CompiledNet::new(&net, None).unwrap();
    let mut calibration = Calibration::new(&f32net);
    for b in 0..2 {
        let (x, xs) = images(8, channels, 100 + b);
        calibration.observe(&mut f32net, &x, xs).unwrap();
    }
    assert_eq!(calibration.images, 16);
    let (x, xs) = images(16, channels, 1);
    let want = f32net.forward(&x, xs).unwrap().to_vec();
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // (On an AMX CPU, the detected path computes each block's shortcut inside its last convolution, and the
    // AVX-512 VNNI path does not: their logits are compared too.)
    let mut paths = vec![Path::detect(), Path::Vnni512, Path::Avx2, Path::Portable];
    paths.dedup();
    // Per method, the logits of the paths with 8-bit activations: the same, bit for bit.
    let mut full_range: Vec<Vec<f32>> = Vec::new();
    for path in paths.into_iter().filter(|p| p.available()) {
        let runs = [Method::MinMax, Method::Percentile(99.99)]
            .into_iter()
            .flat_map(|m| [(m, false), (m, true)]);
        for (k, (method, stem)) in runs.enumerate() {
            let clips = calibration.clips(method);
            let mut q = QuantNet::new(CompiledNet::new(&net, None).unwrap(), &clips, path).unwrap();
            if stem {
                // The images' range, a little wider.
                q.quantize_stem(&vec![(-2.0, 2.0); channels]).unwrap();
            }
            let got = q.forward(&x, xs).unwrap();
            let err = want
                .iter()
                .zip(got)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            let agree = want
                .chunks(10)
                .zip(got.chunks(10))
                .filter(|(a, b)| argmax(a) == argmax(b))
                .count();
            eprintln!(
                "{path:?} {method}, int8 stem {stem}: max error {:.4} of {scale:.3}, top-1 {agree}/16",
                err / scale
            );
            assert!(
                err <= 0.05 * scale,
                "{path:?} {method} (int8 stem {stem}): logits off by {err} (largest {scale})"
            );
            assert!(
                agree >= 14,
                "{path:?} {method} (int8 stem {stem}): top-1 agrees on {agree} of 16 images"
            );
            if path.qmax() == 255 {
                match full_range.get(k) {
                    Some(first) => assert!(
                        first == got,
                        "{path:?} {method} (int8 stem {stem}): logits differ across paths"
                    ),
                    None => full_range.push(got.to_vec()),
                }
            }
        }
    }
}

/// Clips that do not belong to the network are refused with an error, not a panic.
#[test]
fn clips_of_another_network_are_refused() {
    let net = network(narrow_bottleneck(), 3);
    let f32net = CompiledNet::new(&net, None).unwrap();
    let clips = Calibration::new(&f32net).clips(Method::MinMax);
    let short = &clips[..clips.len() - 1];
    let e = QuantNet::new(CompiledNet::new(&net, None).unwrap(), short, Path::Portable)
        .err()
        .unwrap();
    assert!(e.to_string().contains("do not match"), "{e}");
    let mut bad = clips.clone();
    let i = bad.iter().position(Option::is_some).unwrap();
    bad[i] = Some(f32::NAN);
    let e = QuantNet::new(CompiledNet::new(&net, None).unwrap(), &bad, Path::Portable)
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a positive number"), "{e}");
}

/// The plan names what runs each convolution: the stem in f32, every other on the int8 path, reading `u8`;
/// the shortcut convolutions write f32 inside their block's last convolution, the last one writes f32.
#[test]
fn the_plan_shows_which_convolutions_run_int8() {
    let net = network(narrow_bottleneck(), 5);
    let f32net = CompiledNet::new(&net, None).unwrap();
    let clips = Calibration::new(&f32net).clips(Method::MinMax);
    let mut q = QuantNet::new(f32net, &clips, Path::Portable).unwrap();
    let lines = q.plan_lines(Shape4::new(1, 3, 64, 64)).unwrap();
    // The stem, then per block three convolutions and a shortcut.
    assert_eq!(lines.len(), 1 + 4 * 4, "{lines:#?}");
    assert!(lines[0].contains("conv1") && lines[0].contains("f32 ") && !lines[0].contains("int8"));
    for line in &lines[1..] {
        assert!(
            line.contains("int8 portable") && line.contains("u8 ×"),
            "{line}"
        );
        let name = line.split_whitespace().next().unwrap();
        let block = name.split('.').take(2).collect::<Vec<_>>().join(".");
        let inside = format!("-> f32 inside {block}.conv3");
        assert_eq!(
            name.contains("downsample"),
            line.ends_with(&inside),
            "{line}"
        );
        assert_eq!(name == "layer4.0.conv3", line.ends_with("-> f32"), "{line}");
    }
}

/// The bytes of a quantized file of a narrow Bottleneck network calibrated on 16 images, and the network and
/// its clips.
fn quantized_file(method: Method) -> (Vec<u8>, ResNet, Vec<Option<f32>>) {
    let net = network(narrow_bottleneck(), 11);
    let mut f32net = CompiledNet::new(&net, None).unwrap();
    let mut calibration = Calibration::new(&f32net);
    let (x, xs) = images(16, 3, 200);
    calibration.observe(&mut f32net, &x, xs).unwrap();
    let clips = calibration.clips(method);
    let record = Record::new(method, 16, "ab".repeat(32));
    let mut meta = BTreeMap::new();
    meta.insert(META_ARCH.to_string(), arch_string(&net.config));
    let bytes = quant_file::to_bytes(&f32net, &clips, &record, &meta).unwrap();
    (bytes, net, clips)
}

/// A quantized file, read back wherever weights load, is the network it was made from (its stem on int8 for the
/// preprocessing's input ranges), bit for bit; equal inputs write equal bytes.
#[test]
fn a_quantized_file_runs_as_the_network_it_was_made_from() {
    for method in [Method::MinMax, Method::Percentile(99.99)] {
        let (bytes, net, clips) = quantized_file(method);
        assert_eq!(
            bytes,
            quantized_file(method).0,
            "{method}: not deterministic"
        );
        let (x, xs) = images(4, 3, 300);
        let file = ModelFile::from_bytes(&bytes, std::path::Path::new("q.safetensors")).unwrap();
        assert_eq!(file.config, net.config);
        let mut loaded = file.inference().unwrap();
        assert!(matches!(loaded, InferenceNet::Int8(_)));
        let path = Path::detect();
        let mut direct =
            QuantNet::new(CompiledNet::new(&net, None).unwrap(), &clips, path).unwrap();
        // Loading runs the stem on int8 too, for the preprocessing's input ranges (here ImageNet's).
        let ranges = file.input_ranges().unwrap();
        assert_eq!(ranges.len(), 3);
        assert!((ranges[0].0 - (-0.485 / 0.229)).abs() < 1e-6, "{ranges:?}");
        direct.quantize_stem(&ranges).unwrap();
        let want = direct.forward(&x, xs).unwrap().to_vec();
        assert_eq!(loaded.forward(&x, xs).unwrap(), want, "{method}");
        let (q, _) = Quantized::read(&bytes, "q").unwrap();
        assert_eq!(q.record.method().unwrap(), method);
        let mut portable = q.network(Path::Portable).unwrap();
        let mut direct = QuantNet::new(
            CompiledNet::new(&net, None).unwrap(),
            &clips,
            Path::Portable,
        )
        .unwrap();
        portable.quantize_stem(&ranges).unwrap();
        direct.quantize_stem(&ranges).unwrap();
        assert_eq!(
            portable.forward(&x, xs).unwrap(),
            direct.forward(&x, xs).unwrap()
        );
        // A quantized file is for inference: it does not become a trainable network.
        let e = file.network().err().unwrap().to_string();
        assert!(e.contains("runs inference only"), "{e}");
    }
}

/// A quantized file's tensors, to rewrite: (name, dtype, shape, bytes), and its metadata.
type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn tensors_of(bytes: &[u8]) -> (Tensors, BTreeMap<String, String>) {
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
    let meta = header.metadata().clone().unwrap().into_iter().collect();
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut t: Tensors = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    (t, meta)
}

fn bytes_of(t: &Tensors, meta: &BTreeMap<String, String>) -> Vec<u8> {
    let views: Vec<(&str, TensorView)> = t
        .iter()
        .map(|(k, d, s, b)| (k.as_str(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, Some(meta.clone().into_iter().collect())).unwrap()
}

/// Hostile or damaged quantized files are refused with one line naming the file and what is wrong.
#[test]
fn damaged_quantized_files_are_refused_with_one_line() {
    let (bytes, _, _) = quantized_file(Method::MinMax);
    let (tensors, meta) = tensors_of(&bytes);
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let with = |f: &dyn Fn(&mut Tensors, &mut BTreeMap<String, String>)| {
        let (mut t, mut m) = (tensors.clone(), meta.clone());
        f(&mut t, &mut m);
        bytes_of(&t, &m)
    };
    let find = |t: &mut Tensors, key: &str| t.iter().position(|e| e.0 == key).unwrap();
    let record = |m: &mut BTreeMap<String, String>, from: &str, to: &str| {
        let r = m.get_mut(QUANT).unwrap();
        assert!(r.contains(from));
        *r = r.replace(from, to);
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "lacks tensor `layer1.0.conv2.weight_scale`",
            with(&|t, _| {
                let i = find(t, "layer1.0.conv2.weight_scale");
                t.remove(i);
            }),
        ),
        (
            "tensor `layer1.0.conv2.weight_scale` is F32 [17]",
            with(&|t, _| {
                let i = find(t, "layer1.0.conv2.weight_scale");
                t[i].2 = vec![17];
                t[i].3 = f32s(&[1.0; 17]);
            }),
        ),
        (
            "tensor `layer2.0.conv1.weight` is F32",
            with(&|t, _| {
                let i = find(t, "layer2.0.conv1.weight");
                t[i].1 = Dtype::F32;
                t[i].3 = t[i]
                    .3
                    .iter()
                    .flat_map(|&b| (b as i8 as f32).to_le_bytes())
                    .collect();
            }),
        ),
        (
            "tensor `layer1.0.conv1.weight_scale` holds -1",
            with(&|t, _| {
                let i = find(t, "layer1.0.conv1.weight_scale");
                t[i].3[..4].copy_from_slice(&(-1.0f32).to_le_bytes());
            }),
        ),
        (
            "tensor `layer3.0.conv3.input_clip` holds NaN",
            with(&|t, _| {
                let i = find(t, "layer3.0.conv3.input_clip");
                t[i].3 = f32s(&[f32::NAN]);
            }),
        ),
        (
            "tensor `layer1.0.conv3.weight` holds -128",
            with(&|t, _| {
                let i = find(t, "layer1.0.conv3.weight");
                t[i].3[0] = 0x80;
            }),
        ),
        (
            "unexpected tensor `extra`",
            with(&|t, _| t.push(("extra".into(), Dtype::F32, vec![1], f32s(&[1.0])))),
        ),
        (
            "input_clip` differs from that of another convolution reading the same value",
            with(&|t, _| {
                let i = find(t, "layer1.0.downsample.0.input_clip");
                t[i].3 = f32s(&[1234.5]);
            }),
        ),
        (
            "quantized file format 2",
            with(&|_, m| record(m, "\"format\":1", "\"format\":2")),
        ),
        (
            "unknown calibration method `entropy`",
            with(&|_, m| record(m, "\"min-max\"", "\"entropy\"")),
        ),
        (
            "a digest that is not 64 hex digits",
            with(&|_, m| record(m, "abab", "xyxy")),
        ),
        (
            "bad `resnet.quantization` metadata",
            with(&|_, m| record(m, "\"format\"", "\"fromat\"")),
        ),
        (
            "quantized file lacks `resnet.arch` metadata",
            with(&|_, m| {
                m.remove(META_ARCH);
            }),
        ),
        (
            "parameters, but its tensors hold only",
            with(&|_, m| {
                let a = m.get_mut(META_ARCH).unwrap();
                *a = a.replace("[16,32,32,64]", "[16,32,32,512]");
            }),
        ),
    ];
    for (want, bytes) in cases {
        let e = match ModelFile::from_bytes(&bytes, std::path::Path::new("bad.safetensors")) {
            Ok(_) => panic!("{want}: read"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.starts_with("bad.safetensors: ") && e.contains(want),
            "{want}: {e}"
        );
        assert!(!e.contains('\n') && e.len() <= 600, "{e}");
        resnet::fuzzing::quantized(&bytes);
    }
}
