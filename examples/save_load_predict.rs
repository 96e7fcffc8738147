//! Save a model, load it back and predict an image made in memory: the same logits before and after, as
//! `torch.save(model.state_dict(), path)` then `model.load_state_dict(torch.load(path))` gives in PyTorch.
//! `cargo run --release --example save_load_predict`
use resnet::checkpoint::{save_model, META_INPUT_SIZE};
use resnet::data::Image;
use resnet::infer::{ranked, softmax, Model};
use resnet::nn::{ArchName, Buffers, ResNet, ResNetConfig, Stem};
use std::collections::BTreeMap;
use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    // A small network for Fashion-MNIST-sized images (1×28×28, 10 classes), so that it builds and runs at once.
    let config = ResNetConfig {
        widths: vec![16, 32, 64, 128],
        stem: Stem::Small,
        ..ResNetConfig::named(ArchName::Resnet18, 1, 10)
    };
    let mut net = ResNet::new(config, 0)?;
    net.set_train(false);

    // The file is safetensors with PyTorch's keys (it loads with `load_state_dict(..., strict=True)`) and records
    // the architecture, so loading needs no config. A one-channel model must also say the size images are resized
    // to before a prediction (`resnet train` stores it; `resnet predict --resize` overrides it).
    let path =
        std::env::temp_dir().join(format!("resnet-example-{}.safetensors", std::process::id()));
    let meta = BTreeMap::from([(META_INPUT_SIZE.to_string(), "28".to_string())]);
    save_model(&path, &net, &meta)?;

    // Loaded as `resnet predict` loads it: the network in eval mode, its preprocessing and its class names.
    let mut model = Model::load(&path, None, None)?;
    std::fs::remove_file(&path)?;

    // A decoded image is `[h, w, c]` u8 pixels, what a PNG or JPEG file becomes: here a diagonal gradient.
    let pixels = (0..28 * 28).map(|i| ((i / 28 + i % 28) * 255 / 54) as u8);
    let img = Image::new(pixels.collect(), 28, 28, 1).expect("28·28·1 pixels");
    let (x, xs) = model.input(img, "the gradient image")?;

    let loaded = model.logits(&x, xs, false)?;
    let original = net.forward(&x, xs, Buffers::Own)?;
    assert_eq!(
        loaded, original,
        "the loaded model computes what the saved one did"
    );
    println!("logits: {loaded:.3?}");

    let probs = softmax(&loaded);
    for &k in ranked(&probs).iter().take(3) {
        println!("  {:.4}  {}", probs[k], model.names[k]);
    }
    Ok(())
}
