//! The int8 network against the f32 one it was quantized from: a narrow ResNet-50-kind (Bottleneck) network
//! with batch norms that do something, calibrated on some random images and run on others, on every int8 path
//! this CPU has.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resnet::compiled::int8::{Calibration, Method, QuantNet};
use resnet::compiled::CompiledNet;
use resnet::kernels::int8::Path;
use resnet::nn::{ArchName, LayerMut, ResNet, ResNetConfig};
use resnet::Shape4;

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
/// top-1 on at least 14 of 16 images; with both clip methods. The paths with 8-bit activations give the same
/// logits bit for bit.
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
    let paths = [Path::detect(), Path::Avx2, Path::Portable];
    // Per method, the logits of the paths with 8-bit activations: the same, bit for bit.
    let mut full_range: Vec<Vec<f32>> = Vec::new();
    for path in paths.into_iter().filter(|p| p.available()) {
        for method in [Method::MinMax, Method::Percentile(99.99)] {
            let clips = calibration.clips(method);
            let mut q = QuantNet::new(CompiledNet::new(&net, None).unwrap(), &clips, path).unwrap();
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
                "{path:?} {method}: max error {:.4} of {scale:.3}, top-1 {agree}/16",
                err / scale
            );
            assert!(
                err <= 0.05 * scale,
                "{path:?} {method}: logits off by {err} (largest {scale})"
            );
            assert!(
                agree >= 14,
                "{path:?} {method}: top-1 agrees on {agree} of 16 images"
            );
            if path.qmax() == 255 {
                let m = usize::from(method != Method::MinMax);
                match full_range.get(m) {
                    Some(first) => assert!(
                        first == got,
                        "{path:?} {method}: logits differ across paths"
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
/// the shortcut convolutions and the last one write f32.
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
        let writes_f32 = line.ends_with("-> f32");
        assert_eq!(
            writes_f32,
            line.contains("downsample") || line.contains("layer4.0.conv3"),
            "{line}"
        );
    }
}
