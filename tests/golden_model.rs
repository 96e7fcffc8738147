//! The whole network and single residual blocks against PyTorch (tests/golden/*.safetensors, written by
//! tools/make_golden.py from the chapter's own code in tools/chapter_model.py).
//!
//! Tolerances, measured and explained:
//! - forward outputs, running statistics, eval logits and the full-width Residual(64,128): 1e-4 of each tensor's
//!   scale. Deeper chains of f32 sums with different orders drift to ~1e-6–1e-5 relative.
//! - gradients of the reduced-width network: 6e-3 of each tensor's scale. With a 2×1×29×31 input the last
//!   stage runs at 1×1, so its batch norms normalize over two values, and one pair differs by ~2e-4 on values
//!   of order 1 (batch variance 4.8e-8): `x − mean` keeps only ~3 significant digits in f32, so a rounding-level
//!   change anywhere upstream moves every gradient below that layer by 1e-3 of scale or more. Measured against
//!   an f64 rerun of PyTorch: PyTorch's own f32 gradients are 5e-4 of scale off; ours were 1.6e-3 off with
//!   batch-norm sums in 32-row pieces, 4.4e-3 with per-16-channel sums, and 6.1e-3 when those sums were made
//!   *more* exact (f64 per row): the error follows the rounding pattern, not the precision, so no f32
//!   implementation can be held much tighter. The allocation-free step's sums (fixed 1024-row pieces) are
//!   3.0e-3 (input) and 3.1e-3 (worst parameter) of scale from PyTorch's f32 values. The well-conditioned
//!   full-width Residual(64,128) below is held to 1e-4.
//! - biases of convs followed by batch norm: their true gradient is exactly 0 (BN removes any constant), both
//!   sides hold rounding noise, so they are compared in absolute terms (≤ 1e-3 against typical weight
//!   gradients of order 1).

mod common;
use common::{assert_abs, assert_close, golden_path, Golden};
use resnet::checkpoint::deserialize;
use resnet::model_file::ModelFile;
use resnet::nn::resnet::load_residual;
use resnet::nn::{Buffers, Grad, InitRng, ResNet, ResNetConfig, Residual, SeedableRng, Workspace};
use resnet::tensor::{nchw_to_nhwc, nhwc_to_nchw};
use resnet::Shape4;

fn shape4(v: &[usize]) -> Shape4 {
    Shape4::new(v[0], v[1], v[2], v[3])
}

fn hwio_to_oihw(hwio: &[f32], oihw_shape: &[usize]) -> Vec<f32> {
    let (o, i, kh, kw) = (oihw_shape[0], oihw_shape[1], oihw_shape[2], oihw_shape[3]);
    let mut out = vec![0.0; hwio.len()];
    for co in 0..o {
        for ci in 0..i {
            for y in 0..kh {
                for x in 0..kw {
                    out[((co * i + ci) * kh + y) * kw + x] = hwio[((y * kw + x) * i + ci) * o + co];
                }
            }
        }
    }
    out
}

fn small_config() -> ResNetConfig {
    ResNetConfig {
        widths: vec![4, 8, 8, 16],
        layers: vec![2, 2, 2, 2],
        ..ResNetConfig::chapter(1, 10)
    }
}

/// A conv bias that feeds a batch norm (its gradient is zero up to rounding).
fn bias_before_bn(name: &str) -> bool {
    name == "0.bias"
        || ((name.ends_with("conv1.bias") || name.ends_with("conv2.bias"))
            && name.contains("resnet_block"))
}

#[test]
fn small_network_train_step_matches_pytorch() {
    let g = Golden::load("small_net.safetensors");
    let mut net = ResNet::new(small_config(), 123).unwrap();
    net.load_state_dict(&g.with_prefix("param.")).unwrap();
    let xs = shape4(&g.shape("input"));
    let x = g.f32("input"); // one channel: NCHW is NHWC
    let labels: Vec<usize> = g.i64("labels").iter().map(|&l| l as usize).collect();
    let logits = net.forward(&x, xs, Buffers::Own).unwrap().to_vec();
    assert_close(
        "small_net.logits_train",
        &logits,
        &g.f32("logits_train"),
        1e-4,
    );
    let (loss, _) = net.loss(&labels).unwrap();
    assert_close("small_net.loss", &[loss], &g.f32("loss"), 1e-5);
    net.backward(&x, true, None);
    assert_close(
        "small_net.grad.input",
        net.grad_input(),
        &g.f32("grad.input"),
        6e-3,
    );
    let mut worst = (0.0f32, String::new());
    for p in net.params_mut() {
        let want = g.f32(&format!("grad.{}", p.name));
        let shape = g.shape(&format!("grad.{}", p.name));
        // Conv weights live HWIO inside the engine; PyTorch's gradient is OIHW.
        let got = if shape.len() == 4 {
            hwio_to_oihw(p.grad, &shape)
        } else {
            p.grad.to_vec()
        };
        let p = resnet::ParamMut {
            name: p.name,
            value: p.value,
            grad: &got,
        };
        if bias_before_bn(&p.name) {
            assert_abs(&format!("small_net.grad.{}", p.name), p.grad, &want, 1e-3);
        } else {
            let (rel, _) = common::scaled_max_diff(p.grad, &want, 1e-3);
            if rel > worst.0 {
                worst = (rel, p.name.clone());
            }
            assert_close(&format!("small_net.grad.{}", p.name), p.grad, &want, 6e-3);
        }
    }
    println!(
        "worst parameter gradient: {} at {:.3e} of scale",
        worst.1, worst.0
    );
    let after = g.with_prefix("after.");
    let sd = net.state_dict();
    for (k, want) in &after {
        let got = &sd.iter().find(|(key, _)| key == k).unwrap().1;
        match (got, want) {
            (
                resnet::nn::StateTensor::F32 { data: a, .. },
                resnet::nn::StateTensor::F32 { data: b, .. },
            ) => assert_close(&format!("small_net.after.{k}"), a, b, 1e-4),
            (a, b) => assert_eq!(a, b, "{k}"),
        }
    }
    net.set_train(false);
    let logits = net.forward(&x, xs, Buffers::Own).unwrap().to_vec();
    assert_close(
        "small_net.logits_eval",
        &logits,
        &g.f32("logits_eval"),
        1e-4,
    );
}

#[test]
fn small_network_layer_by_layer_activations_match_pytorch() {
    let g = Golden::load("small_net.safetensors");
    let mut net = ResNet::new(small_config(), 1).unwrap();
    net.load_state_dict(&g.with_prefix("param.")).unwrap();
    let xs = shape4(&g.shape("input"));
    let x = g.f32("input");
    net.forward(&x, xs, Buffers::Own).unwrap();
    let walk = net.shape_walk(xs).unwrap();
    for (name, dims) in &walk {
        assert_eq!(&g.shape(&format!("act.{name}")), dims, "shape of {name}");
    }
    // `2` is ReLU(BN) — fused in the engine, so compare the stem's output there.
    let s = shape4(&g.shape("act.2"));
    assert_close(
        "small_net.act.2",
        &nhwc_to_nchw(&net.stem_bn.out, s),
        &g.f32("act.2"),
        1e-4,
    );
    for (k, stage) in net.stages.iter().enumerate() {
        let name = format!("resnet_block{}", k + 1);
        let s = shape4(&g.shape(&format!("act.{name}")));
        let out = &stage.last().unwrap().out;
        assert_close(
            &format!("small_net.act.{name}"),
            &nhwc_to_nchw(out, s),
            &g.f32(&format!("act.{name}")),
            1e-4,
        );
    }
    assert_close("small_net.act.fc", net.logits(), &g.f32("act.fc"), 1e-4);

    let mut fresh = ResNet::new(small_config(), 2).unwrap();
    fresh.load_state_dict(&g.with_prefix("param.")).unwrap();
    let xs28 = shape4(&g.shape("input28"));
    let logits = fresh
        .forward(&g.f32("input28"), xs28, Buffers::Own)
        .unwrap()
        .to_vec();
    assert_close(
        "small_net.logits_train28",
        &logits,
        &g.f32("logits_train28"),
        1e-4,
    );
}

#[test]
fn full_width_residual_with_1x1_shortcut_matches_pytorch() {
    let g = Golden::load("residual_full.safetensors");
    let mut rng = InitRng::seed_from_u64(0);
    let mut blk = Residual::new(64, 128, true, 2, &mut rng);
    load_residual(&g.with_prefix("param."), &mut blk).unwrap();
    let xs = shape4(&g.shape("input"));
    let ys = shape4(&g.shape("output"));
    assert_eq!(blk.output_shape(xs), Some(ys));
    let x = nchw_to_nhwc(&g.f32("input"), xs);
    let mut ws = Workspace::default();
    blk.forward(&x, xs, true, Buffers::Own, &mut ws);
    assert_close(
        "residual_full.output",
        &nhwc_to_nchw(&blk.out, ys),
        &g.f32("output"),
        1e-4,
    );
    let dy = nchw_to_nhwc(&g.f32("dy"), ys);
    blk.backward(&x, Grad::Own(&dy), true, &mut ws);
    assert_close(
        "residual_full.grad.input",
        &nhwc_to_nchw(blk.grad_input(), xs),
        &g.f32("grad.input"),
        1e-4,
    );
    let convs = [
        ("conv1", &blk.convs[0]),
        ("conv2", &blk.convs[1]),
        ("conv3", blk.shortcut_conv.as_ref().unwrap()),
    ];
    for (name, c) in convs {
        assert_close(
            &format!("residual_full.grad.{name}.weight"),
            &c.hwio_to_oihw(&c.grad_weight),
            &g.f32(&format!("grad.{name}.weight")),
            1e-4,
        );
        let want = g.f32(&format!("grad.{name}.bias"));
        if name == "conv3" {
            assert_close("residual_full.grad.conv3.bias", &c.grad_bias, &want, 1e-4);
        } else {
            assert_abs(
                &format!("residual_full.grad.{name}.bias"),
                &c.grad_bias,
                &want,
                1e-3,
            );
        }
    }
    for (name, bn) in [("bn1", &blk.bns[0]), ("bn2", &blk.bns[1])] {
        assert_close(
            &format!("residual_full.grad.{name}.weight"),
            &bn.grad_weight,
            &g.f32(&format!("grad.{name}.weight")),
            1e-4,
        );
        assert_close(
            &format!("residual_full.grad.{name}.bias"),
            &bn.grad_bias,
            &g.f32(&format!("grad.{name}.bias")),
            1e-4,
        );
        assert_close(
            &format!("residual_full.after.{name}.running_mean"),
            &bn.running_mean,
            &g.f32(&format!("after.{name}.running_mean")),
            1e-4,
        );
        assert_close(
            &format!("residual_full.after.{name}.running_var"),
            &bn.running_var,
            &g.f32(&format!("after.{name}.running_var")),
            1e-4,
        );
        assert_eq!(
            bn.num_batches_tracked,
            g.i64(&format!("after.{name}.num_batches_tracked"))[0]
        );
    }
    blk.forward(&x, xs, false, Buffers::Own, &mut ws);
    assert_close(
        "residual_full.output_eval",
        &nhwc_to_nchw(&blk.out, ys),
        &g.f32("output_eval"),
        1e-4,
    );
}

#[test]
fn chapter_block_examples_have_the_chapters_shapes_and_values() {
    let g = Golden::load("blocks.safetensors");
    let xs = shape4(&g.shape("x"));
    assert_eq!(xs, Shape4::new(4, 3, 6, 6));
    let x = nchw_to_nhwc(&g.f32("x"), xs);
    let mut rng = InitRng::seed_from_u64(0);
    let mut ws = Workspace::default();
    // blk = Residual(3, 3); blk(X).shape == (4, 3, 6, 6)
    let mut a = Residual::new(3, 3, false, 1, &mut rng);
    load_residual(&g.with_prefix("a.param."), &mut a).unwrap();
    let s = a.forward(&x, xs, true, Buffers::Own, &mut ws);
    assert_eq!(s, Shape4::new(4, 3, 6, 6));
    assert_close("blocks.a.y", &nhwc_to_nchw(&a.out, s), &g.f32("a.y"), 1e-4);
    // blk = Residual(3, 6, use_1x1conv=True, stride=2); blk(X).shape == (4, 6, 3, 3)
    let mut b = Residual::new(3, 6, true, 2, &mut rng);
    load_residual(&g.with_prefix("b.param."), &mut b).unwrap();
    let s = b.forward(&x, xs, true, Buffers::Own, &mut ws);
    assert_eq!(s, Shape4::new(4, 6, 3, 3));
    assert_close("blocks.b.y", &nhwc_to_nchw(&b.out, s), &g.f32("b.y"), 1e-4);
}

#[test]
fn pytorch_saved_state_dict_loads_and_infers_the_architecture() {
    let path = golden_path("small_net_state_pytorch.safetensors");
    let mut net = ModelFile::load(&path).unwrap().network().unwrap();
    let (_, meta) = deserialize(&std::fs::read(&path).unwrap(), "pytorch file").unwrap();
    assert!(
        !meta.contains_key(resnet::checkpoint::META_ARCH),
        "a PyTorch file carries no arch metadata"
    );
    assert_eq!(net.config, small_config());
    let g = Golden::load("small_net.safetensors");
    let xs = shape4(&g.shape("input"));
    let logits = net
        .forward(&g.f32("input"), xs, Buffers::Own)
        .unwrap()
        .to_vec();
    assert_close(
        "pytorch_file.logits_train",
        &logits,
        &g.f32("logits_train"),
        1e-4,
    );
}
