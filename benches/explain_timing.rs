//! Times one explanation (`Explainer::explain`: eval forward, the backward to the layer, the map, its upsampling
//! and the overlay PNG) against the training path's eval forward alone, for the chapter's ResNet-18 (1×96×96,
//! its recipe's size) and torchvision's resnet50 (3×224×224), at the last stage and at the stage before it
//! (which adds the last stage's backward). Random weights: the time does not depend on them. Medians of ITERS
//! runs after one warm-up. `cargo bench --bench explain_timing [-- ITERS]`
use resnet::data::{Image, Pipeline};
use resnet::explain::{Explainer, Target};
use resnet::nn::{ArchName, Buffers, ResNet, ResNetConfig};
use resnet::Shape4;
use std::time::Instant;

fn median_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[iters / 2]
}

fn main() {
    let iters = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .map_or(7, |a| a.parse().expect("a number of runs"));
    println!(
        "threads: {}, medians of {iters} runs",
        rayon::current_num_threads()
    );
    for (arch, c, side, earlier) in [
        (ArchName::Chapter, 1, 96, "resnet_block3"),
        (ArchName::Resnet50, 3, 224, "layer3"),
    ] {
        let net = ResNet::new(ResNetConfig::named(arch, c, 10), 0).unwrap();
        let names = (0..10).map(|k| k.to_string()).collect();
        let mut ex = Explainer::new(net, Pipeline::default(), names, "random".into());
        let pixels = (0..side * side * c).map(|i| (i * 7 % 251) as u8).collect();
        let img = Image::new(pixels, side, side, c).unwrap();
        let (x, xs) = resnet::infer::prepare(&ex.preprocess, img.clone(), "x").unwrap();
        assert_eq!(xs, Shape4::new(1, c, side, side));
        let forward = median_ms(iters, || {
            ex.net.forward(&x, xs, Buffers::Own).unwrap();
        });
        let mut explain = |layer: Option<&str>| {
            let layer = ex.layer(layer).unwrap();
            median_ms(iters, || {
                let why = ex.explain(img.clone(), "x", Target::Top1, &layer).unwrap();
                why.overlay_png().unwrap();
            })
        };
        let last = explain(None);
        let before = explain(Some(earlier));
        println!(
            "{:9} {c}×{side}×{side}: eval forward {forward:7.1} ms, explain at the last stage {last:7.1} ms, \
             at {earlier} {before:7.1} ms",
            format!("{arch:?}")
        );
    }
}
