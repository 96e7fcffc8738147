//! The `resnet` command line: summary (the chapter's shape walk), and more as the library grows.

use clap::{Parser, Subcommand};
use resnet::nn::{resnet18, ResNet, ResNetConfig};
use resnet::{bail, Error, Result, Shape4};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "resnet",
    version,
    about = "ResNet-18 from the d2l chapter, in Rust: summary, training, evaluation, prediction"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the chapter's layer-by-layer shape walk and the parameter count.
    Summary {
        /// Input shape as NxCxHxW (the chapter uses 1x1x224x244).
        #[arg(long, default_value = "1x1x224x244")]
        input: String,
        /// Number of classes.
        #[arg(long, default_value_t = 10)]
        classes: usize,
    },
}

/// Parses `NxCxHxW` (e.g. `1x1x224x244`) into a shape; every dimension positive and the total bounded.
pub fn parse_shape(s: &str) -> Result<Shape4> {
    let parts: Vec<&str> = s.split(['x', 'X', '×']).collect();
    if parts.len() != 4 {
        bail!("--input `{s}`: expected four dimensions NxCxHxW, e.g. 1x1x224x244");
    }
    let mut d = [0usize; 4];
    for (slot, p) in d.iter_mut().zip(&parts) {
        *slot = p
            .trim()
            .parse()
            .map_err(|_| Error::new(format!("--input `{s}`: `{p}` is not a positive integer")))?;
        if *slot == 0 {
            bail!("--input `{s}`: dimensions must be positive");
        }
    }
    let total = d.iter().try_fold(1usize, |acc, &x| acc.checked_mul(x));
    match total {
        Some(t) if t <= 1 << 30 => Ok(Shape4::new(d[0], d[1], d[2], d[3])),
        _ => bail!(
            "--input `{s}`: {} values is more than the 2^30 this command allows",
            parts.join("×")
        ),
    }
}

fn summary(input: &str, classes: usize) -> Result<()> {
    let xs = parse_shape(input)?;
    let mut net = ResNet::new(ResNetConfig::chapter(xs.c, classes), 0)?;
    let walk = net.shape_walk(xs)?;
    // Run the network for real (eval mode, like printing shapes in the chapter without training) so the walk
    // is what the engine computes, not only what the formulas say.
    net.set_train(false);
    let x: Vec<f32> = (0..xs.len())
        .map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0)
        .collect();
    let x = resnet::tensor::nchw_to_nhwc(&x, xs);
    let logits = net.forward(&x, xs)?;
    assert_eq!(logits.len(), xs.n * classes);
    for (name, dims) in &walk {
        let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        println!("{name}  output shape:\t torch.Size([{}])", dims.join(", "));
    }
    println!("parameters: {}", group_thousands(net.num_params()));
    let _ = resnet18; // the chapter's builder, same network for 1 channel and 10 classes
    Ok(())
}

fn group_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Summary { input, classes } => summary(&input, classes),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
