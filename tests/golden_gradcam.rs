//! Grad-CAM against PyTorch's (tests/golden/gradcam.safetensors, written by `tools/check_gradcam.py
//! --write-golden` with forward and tensor hooks on the model in `eval()`): the chapter's ResNet-18 and
//! torchvision's resnet18 and resnet50 (10 classes) on one 96×96 input each, with the formula weights both sides
//! compute (tests/common/torchvision_weights.rs), at the last stage, the stage before it and one block, for the
//! predicted class and for fixed ones. The maps at the layer's resolution, and the first case's map upsampled to
//! the input, agree within 1e-4 of the largest value of PyTorch's map; the classes are the same.

mod common;

use common::torchvision_weights::{formula_state_dict, SEED};
use common::{golden_path, scaled_max_diff, Golden};
use resnet::checkpoint::deserialize;
use resnet::explain::upsample::bilinear;
use resnet::explain::{grad_cam, CamLayer, Target};
use resnet::nn::{ArchName, ResNet, ResNetConfig};
use resnet::Shape4;

const FILE: &str = "gradcam.safetensors";
const TOLERANCE: f32 = 1e-4;

fn keys(v: &serde_json::Value) -> Vec<(String, Vec<usize>, bool)> {
    v.as_array()
        .expect("keys")
        .iter()
        .map(|e| {
            let shape = e[1].as_array().expect("shape");
            let shape = shape.iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (
                e[0].as_str().unwrap().to_string(),
                shape,
                e[2].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn grad_cam_matches_pytorch_hooks() {
    let g = Golden::load(FILE);
    let bytes = std::fs::read(golden_path(FILE)).unwrap();
    let (_, meta) = deserialize(&bytes, FILE).unwrap();
    let meta: serde_json::Value = serde_json::from_str(meta.get("golden").unwrap()).unwrap();
    let cases = meta["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9, "three networks, three cases each");
    let mut worst = 0f32;
    for (name, arch, c) in [
        ("chapter", ArchName::Chapter, 1),
        ("resnet18", ArchName::Resnet18, 3),
        ("resnet50", ArchName::Resnet50, 3),
    ] {
        let mut net = ResNet::new(ResNetConfig::named(arch, c, 10), 0).unwrap();
        let weights = formula_state_dict(&keys(&meta["keys"][name]), SEED);
        net.load_state_dict(&weights).unwrap();
        net.set_train(false);
        let x = g.f32(&format!("{name}.input"));
        let xs = Shape4::new(1, c, 96, 96);
        for case in cases.iter().filter(|c| c[0] == name) {
            let i = case[1].as_u64().unwrap();
            let layer = CamLayer::find(&net, case[2].as_str().unwrap()).unwrap();
            let target = case[3]
                .as_u64()
                .map_or(Target::Top1, |k| Target::Class(k as usize));
            let cam = grad_cam(&mut net, &x, xs, &layer, target).unwrap();
            let what = format!("{name}.{i} ({})", layer.name);
            assert_eq!(
                cam.class as i64,
                g.i64(&format!("{name}.{i}.class"))[0],
                "{what}: class"
            );
            let key = format!("{name}.{i}.map");
            assert_eq!([cam.h, cam.w], g.shape(&key)[..], "{what}: map shape");
            let want = g.f32(&key);
            assert!(
                want.iter().any(|&v| v > 0.0),
                "{what}: an all-zero map checks little"
            );
            let (rel, abs) = scaled_max_diff(&cam.map, &want, f32::MIN_POSITIVE);
            println!("{what}: max |Δ| {abs:.2e}, {rel:.2e} of scale");
            assert!(rel <= TOLERANCE, "{what}: {rel:.2e} of scale");
            worst = worst.max(rel);
            if i == 0 {
                let up = bilinear(&cam.map, cam.h, cam.w, 96, 96);
                let (rel, _) = scaled_max_diff(
                    &up,
                    &g.f32(&format!("{name}.0.upsampled")),
                    f32::MIN_POSITIVE,
                );
                println!("{what} upsampled to 96×96: {rel:.2e} of scale");
                assert!(rel <= TOLERANCE, "{what} upsampled: {rel:.2e} of scale");
            }
        }
    }
    println!("worst: {worst:.2e} of scale");
}
