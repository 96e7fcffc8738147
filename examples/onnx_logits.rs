//! What `tools/check_onnx.py` compares ONNX Runtime's and OpenVINO's logits against: a model file's logits on a
//! raw input, computed by the library's compiled network; and fresh model files to export.
//!
//! ```text
//! cargo run --release --example onnx_logits -- MODEL INPUT.bin NxCxHxW     # logits as a JSON list of rows
//! cargo run --release --example onnx_logits -- --save NAME OUT.safetensors  # a fresh model file (below)
//! ```
//!
//! `INPUT.bin` holds N·C·H·W little-endian f32 values, NCHW. `--save` writes a randomly initialized network with
//! random batch-norm statistics and affine parameters (so that a wrong batch norm or fold shows in the logits):
//! `chapter` (1 channel, 10 classes, trained size 96), `resnet18` or `resnet50` (3 channels, 1000 classes,
//! ImageNet's evaluation transform, 224×224), or `bottleneck` (resnet50 with widths 16, 32, 32, 64 and one block
//! per stage, 3 channels, 5 named classes, small stem, trained size 32).

use resnet::checkpoint::{save_model, META_CLASSES, META_INPUT_SIZE};
use resnet::compiled::CompiledNet;
use resnet::model_file::ModelFile;
use resnet::nn::{ArchName, BatchNorm2d, ResNet, ResNetConfig, Stem};
use resnet::Shape4;
use std::collections::BTreeMap;
use std::error::Error;
use std::path::Path;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, name, out] if flag == "--save" => save(name, Path::new(out)),
        [model, input, shape] => logits(Path::new(model), Path::new(input), shape),
        _ => Err("usage: onnx_logits MODEL INPUT.bin NxCxHxW | onnx_logits --save NAME OUT".into()),
    }
}

fn logits(model: &Path, input: &Path, shape: &str) -> Result<(), Box<dyn Error>> {
    let dims: Vec<usize> = shape.split('x').map(str::parse).collect::<Result<_, _>>()?;
    let [n, c, h, w] = dims[..] else {
        return Err(format!("shape {shape}: expected NxCxHxW").into());
    };
    let xs = Shape4::new(n, c, h, w);
    let bytes = std::fs::read(input)?;
    let x: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let file = ModelFile::load(model)?;
    let mut net = CompiledNet::new(&file.network()?, Some(xs))?;
    let logits = net.forward(&x, xs)?;
    let rows: Vec<&[f32]> = logits.chunks(file.config.num_classes).collect();
    println!("{}", serde_json::to_string(&rows)?);
    Ok(())
}

fn save(name: &str, out: &Path) -> Result<(), Box<dyn Error>> {
    let mut meta = BTreeMap::new();
    let config = match name {
        "chapter" => {
            meta.insert(META_INPUT_SIZE.to_string(), "96".to_string());
            ResNetConfig::chapter(1, 10)
        }
        "resnet18" => ResNetConfig::named(ArchName::Resnet18, 3, 1000),
        "resnet50" => ResNetConfig::named(ArchName::Resnet50, 3, 1000),
        "bottleneck" => {
            meta.insert(META_INPUT_SIZE.to_string(), "32".to_string());
            let classes = ["ant", "bee", "cat", "dog", "eel"];
            meta.insert(META_CLASSES.to_string(), serde_json::to_string(&classes)?);
            ResNetConfig {
                widths: vec![16, 32, 32, 64],
                layers: vec![1, 1, 1, 1],
                stem: Stem::Small,
                ..ResNetConfig::named(ArchName::Resnet50, 3, 5)
            }
        }
        _ => {
            return Err(format!("--save {name}: chapter, resnet18, resnet50 or bottleneck").into())
        }
    };
    let mut net = ResNet::new(config, 7)?;
    randomize_batch_norms(&mut net, 1);
    save_model(out, &net, &meta)?;
    println!("{}: {}", out.display(), net.config.name());
    Ok(())
}

/// Gives every batch norm random running statistics and affine parameters (a fresh network's are 0, 1, 1, 0).
fn randomize_batch_norms(net: &mut ResNet, seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut bns: Vec<&mut BatchNorm2d> = vec![&mut net.stem_bn];
    for block in net.stages.iter_mut().flatten() {
        bns.extend(block.bns.iter_mut());
        bns.extend(block.shortcut_bn.as_mut());
    }
    for bn in bns {
        for i in 0..bn.num_features {
            bn.weight[i] = 0.5 + next();
            bn.bias[i] = next() - 0.5;
            bn.running_mean[i] = 0.2 * (next() - 0.5);
            bn.running_var[i] = 0.5 + next();
        }
    }
}
