use super::*;
use crate::nn::{ArchName, Buffers, LayerMut, Stem};

/// A network of `config` with batch norms that do something: running statistics, weights and biases drawn
/// from a fixed pattern (a fresh norm is the identity, and folding it would test nothing).
fn network(config: ResNetConfig, seed: u64) -> ResNet {
    let mut net = ResNet::new(config, seed).unwrap();
    let mut k = seed as usize;
    let mut next = move || {
        k = (k * 7919 + 13) % 10007;
        k as f32 / 10007.0
    };
    net.for_each_layer_mut(&mut |_, layer| {
        if let LayerMut::Bn(bn) = layer {
            for i in 0..bn.num_features {
                bn.running_mean[i] = next() - 0.5;
                bn.running_var[i] = 0.5 + next();
                bn.weight[i] = 0.5 + next();
                bn.bias[i] = next() - 0.5;
            }
        }
    });
    net.set_train(false);
    net
}

/// A deterministic NCHW input of shape `xs`.
fn input(xs: Shape4) -> Vec<f32> {
    (0..xs.len())
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn argmax(row: &[f32]) -> usize {
    crate::train::argmax(row)
}

/// The compiled network computes the training path's eval forward, to rounding, with the same top-1, on every
/// architecture: the chapter's (conv biases, no norm on the shortcut), torchvision's BasicBlock and Bottleneck
/// networks, the small stem.
#[test]
fn compiled_matches_the_eval_forward_on_every_architecture() {
    let mut configs: Vec<ResNetConfig> = [
        ArchName::Chapter,
        ArchName::Resnet18,
        ArchName::Resnet34,
        ArchName::Resnet50,
        ArchName::Resnet101,
        ArchName::Resnet152,
    ]
    .into_iter()
    .map(|a| {
        let channels = if a == ArchName::Chapter { 1 } else { 3 };
        ResNetConfig::named(a, channels, 10)
    })
    .collect();
    configs.push(ResNetConfig {
        widths: vec![16, 32, 32, 64],
        stem: Stem::Small,
        ..ResNetConfig::named(ArchName::Resnet18, 3, 5)
    });
    for (i, config) in configs.into_iter().enumerate() {
        let name = config.name();
        let mut net = network(config, i as u64 + 1);
        let mut compiled = CompiledNet::new(&net, None).unwrap();
        // The third shape runs Winograd on the first stage (64 tiles), on its prepared weights.
        for xs in [
            Shape4::new(2, net.config.in_channels, 40, 40),
            Shape4::new(1, net.config.in_channels, 33, 47),
            Shape4::new(4, net.config.in_channels, 64, 64),
        ] {
            let x = input(xs);
            let want = net.forward(&x, xs, Buffers::Own).unwrap().to_vec();
            let got = compiled.forward(&x, xs).unwrap().to_vec();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 2e-4 * scale,
                    "{name} at {xs}: {a} vs {b} (scale {scale})"
                );
            }
            let k = net.config.num_classes;
            for (g, w) in got.chunks_exact(k).zip(want.chunks_exact(k)) {
                assert_eq!(argmax(g), argmax(w), "{name} at {xs}: top-1");
            }
        }
    }
}

/// With batch invariance on, an image's logits are the same bits alone and in a batch (on our kernels: the
/// portable path's `gemm` crate blocks its products by their size); shapes met in any order give the same
/// logits each time (their plans, prepared weights and arena are kept apart).
#[test]
fn batch_invariant_logits_and_shapes_met_in_any_order() {
    let config = ResNetConfig {
        widths: vec![16, 32, 64, 64],
        ..ResNetConfig::named(ArchName::Resnet50, 3, 7)
    };
    let net = network(config, 5);
    let mut compiled = CompiledNet::new(&net, Some(Shape4::new(1, 3, 64, 64))).unwrap();
    compiled.set_batch_invariant(true);
    let batch = Shape4::new(5, 3, 64, 64);
    let x = input(batch);
    let together = compiled.forward(&x, batch).unwrap().to_vec();
    let one = Shape4::new(1, 3, 64, 64);
    for i in 0..batch.n {
        let alone = compiled
            .forward(&x[i * one.len()..][..one.len()], one)
            .unwrap()
            .to_vec();
        if crate::kernels::conv::tile::cpu_supported() {
            assert_eq!(alone, together[i * 7..][..7], "image {i}");
        }
    }
    let other = Shape4::new(3, 3, 48, 40);
    let y = input(other);
    let first = compiled.forward(&y, other).unwrap().to_vec();
    assert_eq!(compiled.forward(&x, batch).unwrap(), &together[..]);
    assert_eq!(compiled.forward(&y, other).unwrap(), &first[..]);
}

/// Inputs that do not fit are refused with a message, never a panic.
#[test]
fn inputs_that_do_not_fit_are_refused() {
    let net = network(ResNetConfig::named(ArchName::Resnet18, 3, 4), 2);
    let mut compiled = CompiledNet::new(&net, None).unwrap();
    let wrong_channels = Shape4::new(1, 1, 32, 32);
    let err = compiled.forward(&input(wrong_channels), wrong_channels);
    assert!(err.unwrap_err().to_string().contains("channels"));
    let empty = Shape4::new(0, 3, 32, 32);
    let err = compiled.forward(&[], empty);
    assert!(err.unwrap_err().to_string().contains("empty"));
    let xs = Shape4::new(1, 3, 32, 32);
    let err = compiled.forward(&[0.0; 5], xs);
    assert!(err.unwrap_err().to_string().contains("values"));
    assert!(compiled.forward(&input(xs), xs).is_ok());
}

/// A NaN inside the network reaches the logits, as in PyTorch (whose ReLU passes NaN): a batch norm with a
/// negative running variance makes every logit NaN instead of finite probabilities.
#[test]
fn a_negative_running_variance_gives_nan_logits_as_pytorch_does() {
    let mut net = network(ResNetConfig::named(ArchName::Resnet18, 3, 4), 3);
    net.stem_bn.running_var[5] = -2.0;
    let mut compiled = CompiledNet::new(&net, None).unwrap();
    let xs = Shape4::new(1, 3, 32, 32);
    let logits = compiled.forward(&input(xs), xs).unwrap();
    assert!(logits.iter().all(|v| v.is_nan()), "{logits:?}");
}
