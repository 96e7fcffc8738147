//! ONNX files written by PyTorch's `torch.onnx.export` (tests/fixtures/onnx/, by tools/make_onnx_fixtures.py):
//! the chapter's net and torchvision's BasicBlock and Bottleneck layouts, narrow, through the TorchScript
//! exporter (opsets 17 and 21, batch norms folded or kept), the dynamo exporter (opsets 18 and 21) and ONNX
//! Runtime's offline optimizer, load as the network they hold and give the logits ONNX Runtime gave
//! (goldens.json) to float rounding.

use resnet::model_file::ModelFile;
use resnet::nn::{BlockKind, Buffers, Naming, Stem};
use resnet::Shape4;
use std::collections::BTreeMap;
use std::path::Path;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx")
}

/// The golden input: a batch of two `c`×32×32 images, `x[i] = ((i · 7919) mod 1000) / 500 − 1`.
fn input(c: usize) -> (Vec<f32>, Shape4) {
    let xs = Shape4::new(2, c, 32, 32);
    let x = (0..xs.len())
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    (x, xs)
}

#[test]
fn pytorch_exports_load_and_match_onnx_runtime() {
    let goldens: BTreeMap<String, Vec<f32>> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("goldens.json")).unwrap())
            .unwrap();
    assert_eq!(goldens.len(), 18);
    for (name, want) in &goldens {
        let file = ModelFile::load(&fixtures().join(name)).unwrap_or_else(|e| panic!("{e}"));
        let config = &file.config;
        let (naming, block, c) = match name.split('_').next().unwrap() {
            "chapter" => (Naming::Chapter, BlockKind::Basic, 1),
            "basic" => (Naming::Torchvision, BlockKind::Basic, 3),
            _ => (Naming::Torchvision, BlockKind::Bottleneck, 3),
        };
        assert_eq!(
            (config.naming, config.block, config.in_channels, config.stem),
            (naming, block, c, Stem::Imagenet),
            "{name}"
        );
        assert_eq!(config.widths, [4, 8, 8, 16], "{name}");
        let mut net = file.network().unwrap();
        net.set_train(false);
        let (x, xs) = input(c);
        let got = net.forward(&x, xs, Buffers::Own).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        eprintln!("{name}: max |ours - ORT| {err:e} (scale {scale})");
        assert!(err <= 1e-5 * scale, "{name}: {err} (scale {scale})");
    }
}
