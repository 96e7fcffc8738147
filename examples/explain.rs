//! Why did the model say that? Grad-CAM of one image: the map at the last stage's resolution, its class, and the
//! heatmap blended over the image written as a PNG (what `resnet predict --explain DIR` writes).
//! `cargo run --release --example explain`
use resnet::data::{Image, Pipeline, Step};
use resnet::explain::{Explainer, Target};
use resnet::nn::{ArchName, ResNet, ResNetConfig, Stem};
use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    // A small untrained network for 1×28×28 images; a model file would come from `Explainer::load(path, ..)`.
    let config = ResNetConfig {
        widths: vec![16, 32, 64, 128],
        stem: Stem::Small,
        ..ResNetConfig::named(ArchName::Resnet18, 1, 10)
    };
    let net = ResNet::new(config, 0)?;
    // Preprocessing as a model file stores it: here the image is resized to 56 on its shorter side.
    let preprocess = Pipeline {
        steps: vec![Step::Resize(56)],
        ..Pipeline::default()
    };
    let names = (0..10).map(|k| format!("class {k}")).collect();
    let mut explainer = Explainer::new(net, preprocess, names, "in memory".into());

    // A bright square on black, 28×28: the thing a map should point at.
    let pixels = (0..28 * 28).map(|i| {
        if (8..20).contains(&(i / 28)) && (4..16).contains(&(i % 28)) {
            230
        } else {
            0
        }
    });
    let img = Image::new(pixels.collect(), 28, 28, 1).expect("28·28 pixels");

    // The default layer is the last stage's output; `explainer.layer(Some("layer3"))` picks another.
    let layer = explainer.layer(None)?;
    let why = explainer.explain(img, "the square", Target::Top1, &layer)?;
    let cam = &why.cam;
    println!(
        "the square: class {} ({:.3}), map {}×{} at {}:",
        explainer.names[cam.class], why.probabilities[cam.class], cam.h, cam.w, cam.layer
    );
    for row in cam.map.chunks(cam.w) {
        println!("  {row:.3?}");
    }
    let path = std::env::temp_dir().join(format!("resnet-explain-{}.png", std::process::id()));
    std::fs::write(&path, why.overlay_png()?)?;
    println!("heatmap over the image: {}", path.display());
    std::fs::remove_file(&path)?;
    Ok(())
}
