//! Flip test-time augmentation through the command line: `eval --tta` and `predict --tta` on a mirror-symmetric
//! network and on an ordinary one.

use std::collections::BTreeMap;
use std::path::Path;

use resnet::checkpoint::{self, META_INPUT_SIZE};
use resnet::nn::{ResNet, ResNetConfig};

use crate::{
    common, expect_success, gzip, idx, resnet, s, scratch, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES,
    TRAIN_LABELS,
};

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
