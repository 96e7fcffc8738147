//! The chapter's cells, in Rust: the two `Residual` shape examples and the layer-by-layer shape walk.
//! `cargo run --release --example chapter`
use resnet::nn::{resnet18, Buffers, InitRng, Residual, SeedableRng, Workspace};
use resnet::Shape4;

fn main() -> resnet::Result<()> {
    let mut rng = InitRng::seed_from_u64(0);
    let mut ws = Workspace::default();
    // X = torch.rand((4, 3, 6, 6)); one channel-last buffer serves both blocks
    let xs = Shape4::new(4, 3, 6, 6);
    let x: Vec<f32> = (0..xs.len()).map(|i| (i % 17) as f32 / 17.0).collect();

    // blk = Residual(3, 3); blk(X).shape
    let mut blk = Residual::new(3, 3, false, 1, &mut rng);
    println!(
        "Residual(3, 3): {}",
        blk.forward(&x, xs, true, Buffers::Own, &mut ws)
    );

    // blk = Residual(3, 6, use_1x1conv=True, stride=2); blk(X).shape
    let mut blk = Residual::new(3, 6, true, 2, &mut rng);
    println!(
        "Residual(3, 6, use_1x1conv=True, stride=2): {}",
        blk.forward(&x, xs, true, Buffers::Own, &mut ws)
    );

    // X = torch.rand((1, 1, 224, 244)); for name, layer in net.named_children(): print(name, X.shape)
    let net = resnet18(1, 10, 0);
    for (name, dims) in net.shape_walk(Shape4::new(1, 1, 224, 244))? {
        println!("{name}  output shape:\t {dims:?}");
    }
    println!("parameters: {}", net.num_params());
    Ok(())
}
