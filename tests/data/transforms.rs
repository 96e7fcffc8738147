//! Transforms against golden output: the grayscale resize against Pillow
//! (`tests/golden/transforms.safetensors`) and the colour transforms against torchvision + Pillow
//! (`tests/golden/transforms_rgb.safetensors`), byte for byte.

use std::path::Path;

use resnet::data::image_file::decode_image;
use resnet::data::transforms::{
    center_crop, hflip_image, pad_crop, resize, resize_shorter_side, resize_to, resized_crop,
    to_tensor_chw, Image,
};

// ---------------------------------------------------------------------------------------------------------------
// Resize against Pillow

#[test]
fn resize_matches_pillow_exactly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/transforms.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut cases = 0;
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    for name in names.iter().filter_map(|n| n.strip_suffix(".input")) {
        let input = st.tensor(&format!("{name}.input")).unwrap();
        let output = st.tensor(&format!("{name}.output")).unwrap();
        assert_eq!(input.dtype(), safetensors::Dtype::U8);
        assert_eq!(output.dtype(), safetensors::Dtype::U8);
        let (h, w) = (input.shape()[0], input.shape()[1]);
        let (oh, ow) = (output.shape()[0], output.shape()[1]);
        if let Some(size) = meta.get(&format!("{name}.size")) {
            assert_eq!(
                resize_shorter_side(h, w, size.parse().unwrap()),
                (oh, ow),
                "{name}: size rule"
            );
        }
        let ours = resize_to(&Image::new(input.data().to_vec(), h, w, 1).unwrap(), oh, ow).pixels;
        if ours != output.data() {
            let diffs = ours
                .iter()
                .zip(output.data())
                .filter(|(a, b)| a != b)
                .count();
            panic!(
                "{name}: {h}×{w} → {oh}×{ow}: {diffs} of {} pixels differ from Pillow",
                ours.len()
            );
        }
        cases += 1;
    }
    assert!(cases >= 24, "only {cases} golden cases");
    assert!(bytes.len() < 300_000);
}

// ---------------------------------------------------------------------------------------------------------------
// Colour transforms against torchvision + Pillow (tests/golden/transforms_rgb.safetensors)

fn nums(s: &str) -> Vec<usize> {
    s.split(',').map(|v| v.parse().unwrap()).collect()
}

#[test]
fn colour_transforms_match_torchvision_exactly() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/transforms_rgb.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut cases = 0;
    for name in names.iter().filter_map(|n| n.strip_suffix(".input")) {
        let input = st.tensor(&format!("{name}.input")).unwrap();
        let output = st.tensor(&format!("{name}.output")).unwrap();
        let op = &meta[&format!("{name}.op")];
        let (kind, args) = op.split_once(':').unwrap_or((op.as_str(), ""));
        let img = || {
            let s = input.shape();
            Image::new(input.data().to_vec(), s[0], s[1], s[2]).unwrap()
        };
        let ours: Image = match kind {
            "resize" => resize(&img(), args.parse().unwrap()),
            "center_crop" => {
                let a = nums(args);
                center_crop(&img(), a[0], a[1])
            }
            "resized_crop" => {
                let a = nums(args);
                resized_crop(&img(), a[0], a[1], a[2], a[3], a[4], a[5])
            }
            "pad_crop" => {
                let a = nums(args);
                pad_crop(&img(), a[0], a[1], a[2], a[3], a[4])
            }
            "hflip" => {
                let mut i = img();
                hflip_image(&mut i);
                i
            }
            "normalize" => {
                let (m, s) = args.split_once(';').unwrap();
                let parse = |t: &str| {
                    t.split(',')
                        .map(|v| v.parse::<f32>().unwrap())
                        .collect::<Vec<_>>()
                };
                let (m, s) = (parse(m), parse(s));
                let i = img();
                let mut dst = vec![0f32; i.pixels.len()];
                to_tensor_chw(&i, &mut dst, Some((&m, &s)));
                let want: Vec<f32> = output
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                assert_eq!(output.shape(), &[i.c, i.h, i.w]);
                assert_eq!(dst, want, "{name}");
                cases += 1;
                continue;
            }
            "convert_L" | "convert_RGB" => {
                let c = if kind == "convert_L" { 1 } else { 3 };
                decode_image(input.data(), Path::new(name), c).unwrap()
            }
            _ => panic!("{name}: unknown op {op}"),
        };
        let s = output.shape();
        assert_eq!(
            (ours.h, ours.w, ours.c),
            (s[0], s[1], s[2]),
            "{name} ({op}): size"
        );
        if ours.pixels != output.data() {
            let diffs = ours
                .pixels
                .iter()
                .zip(output.data())
                .filter(|(a, b)| a != b)
                .count();
            panic!(
                "{name} ({op}): {diffs} of {} values differ from torchvision",
                ours.pixels.len()
            );
        }
        cases += 1;
    }
    assert!(cases >= 47, "only {cases} golden cases");
    assert!(bytes.len() < 200_000);
}
