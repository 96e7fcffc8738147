//! torchvision's `resnet18()` from Rust: build it, walk its shapes, count its parameters and classify a random
//! image, as `model = models.resnet18(); model.eval(); model(torch.rand(1, 3, 224, 224)).topk(5)` does.
//! `cargo run --release --example torchvision_resnet18`
use rand::Rng;
use resnet::infer::{ranked, softmax};
use resnet::model_file::default_class_names;
use resnet::nn::{ArchName, Buffers, InitRng, ResNet, ResNetConfig, SeedableRng};
use resnet::Shape4;

fn main() -> resnet::Result<()> {
    // The description comes first: torchvision's BasicBlock layers 2-2-2-2, its init and its state-dict keys, so
    // that `resnet18-f37072fd.pth` loads into it (`resnet::model_file::ModelFile::load` reads it).
    let config = ResNetConfig::named(ArchName::Resnet18, 3, 1000);
    let mut net = ResNet::new(config, 0)?;
    // model.eval(): batch norms normalize with their running statistics instead of the batch's.
    net.set_train(false);

    // Inputs are NCHW, as in PyTorch; the walk checks the shape without running the network.
    let xs = Shape4::new(1, 3, 224, 224);
    for (name, dims) in net.shape_walk(xs)? {
        println!("{name:<8} {dims:?}");
    }
    println!("parameters: {}", net.num_params());

    let mut rng = InitRng::seed_from_u64(0);
    let x: Vec<f32> = (0..xs.len()).map(|_| rng.random()).collect();
    let probs = softmax(net.forward(&x, xs, Buffers::Own)?);
    // Untrained weights rank the classes arbitrarily; the names are ImageNet's, as for any 1000-class model.
    let names = default_class_names(&net.config);
    println!("top 5:");
    for &k in ranked(&probs).iter().take(5) {
        println!("  {:.4}  {k:>3} {}", probs[k], names[k]);
    }
    Ok(())
}
