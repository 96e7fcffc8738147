//! Training on your own tensors: a small ResNet learns a toy task from f32 images held in memory, with the loop
//! a PyTorch user writes by hand (forward, loss, backward, optimizer step) and the loss going down.
//! `cargo run --release --example train_tensors`
use rand::Rng;
use resnet::nn::{ArchName, Buffers, InitRng, ResNet, ResNetConfig, SeedableRng, Stem};
use resnet::optim::{Adam, AdamConfig, Optimizer};
use resnet::Shape4;

const SIDE: usize = 28;
const CLASSES: usize = 4;

/// `n` noisy 1×28×28 images, NCHW, and their labels: class `k` is brighter in quadrant `k`.
fn toy_data(n: usize, rng: &mut InitRng) -> (Vec<f32>, Vec<usize>) {
    let labels: Vec<usize> = (0..n).map(|i| i % CLASSES).collect();
    let mut images = Vec::with_capacity(n * SIDE * SIDE);
    for &k in &labels {
        for y in 0..SIDE {
            for x in 0..SIDE {
                let quadrant = 2 * (y * 2 / SIDE) + x * 2 / SIDE;
                let signal = if quadrant == k { 0.5 } else { 0.0 };
                images.push(signal + rng.random_range(0.0..0.5));
            }
        }
    }
    (images, labels)
}

fn main() -> resnet::Result<()> {
    // torchvision's resnet18 shrunk for speed: a quarter of the widths, one block per stage, and the small stem
    // (3×3 stride 1, no max pool) that CIFAR-sized inputs use.
    let config = ResNetConfig {
        widths: vec![16, 32, 64, 128],
        layers: vec![1, 1, 1, 1],
        stem: Stem::Small,
        ..ResNetConfig::named(ArchName::Resnet18, 1, CLASSES)
    };
    let mut net = ResNet::new(config, 0)?;
    // torch.optim.Adam(model.parameters()): its state is sized by the parameters, in named_parameters() order.
    let mut opt = Adam::new(AdamConfig::adam(), &net.param_lens())?;
    let lr = 1e-3;

    let mut rng = InitRng::seed_from_u64(0);
    let (train_x, train_y) = toy_data(256, &mut rng);
    let (test_x, test_y) = toy_data(64, &mut rng);

    let batch = 32;
    let xs = Shape4::new(batch, 1, SIDE, SIDE);
    for epoch in 1..=4 {
        let (mut loss_sum, mut correct) = (0.0, 0);
        for (x, y) in train_x.chunks(xs.len()).zip(train_y.chunks(batch)) {
            net.forward(x, xs, Buffers::Own)?;
            let (loss, right) = net.loss(y)?;
            // Gradients are overwritten, not accumulated, so there is no zero_grad().
            net.backward(x, false, None);
            opt.step_net(&mut net, lr);
            loss_sum += loss;
            correct += right;
        }
        let steps = train_y.len() / batch;
        println!(
            "epoch {epoch}: loss {:.4}, train acc {:.3}",
            loss_sum / steps as f32,
            correct as f32 / train_y.len() as f32
        );
    }

    // model.eval(): the running statistics gathered in training normalize the test batch.
    net.set_train(false);
    net.forward(
        &test_x,
        Shape4::new(test_y.len(), 1, SIDE, SIDE),
        Buffers::Own,
    )?;
    let (loss, correct) = net.loss(&test_y)?;
    println!(
        "test: loss {loss:.4}, acc {:.3}",
        correct as f32 / test_y.len() as f32
    );
    Ok(())
}
