//! `resnet export --onnx` files in a third runtime, tract (`tract-onnx`): their logits against ours, and timings.
//!
//! ```text
//! tract-check --input NxCxHxW INPUT.bin                # writes the deterministic input
//! tract-check MODEL.onnx INPUT.bin NxCxHxW OURS.json   # max |tract − ours| / max |ours|
//! tract-check --bench MODEL.onnx NxCxHxW ITERS         # ms per batch, after one warm-up run
//! ```
//!
//! `INPUT.bin` holds N·C·H·W little-endian f32 values (NCHW); `OURS.json` our logits as a JSON list of rows, as
//! `cargo run --release --example onnx_logits -- MODEL INPUT.bin NxCxHxW` prints them. `tools/tract_check/run.sh`
//! runs both for fresh networks. A crate of its own (its own workspace and lock) so that the project never
//! builds tract.

use std::error::Error;
use std::time::Instant;
use tract_onnx::prelude::*;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, model, shape, iters] if flag == "--bench" => bench(model, shape, iters.parse()?),
        [flag, shape, out] if flag == "--input" => {
            let bytes: Vec<u8> = input(dims(shape)?).iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok(std::fs::write(out, bytes)?)
        }
        [model, input, shape, ours] => compare(model, input, shape, ours),
        _ => Err("usage: tract-check --input NxCxHxW INPUT.bin | MODEL.onnx INPUT.bin NxCxHxW OURS.json | --bench MODEL.onnx NxCxHxW ITERS".into()),
    }
}

fn dims(shape: &str) -> Result<[usize; 4]> {
    let d: Vec<usize> = shape.split('x').map(str::parse).collect::<std::result::Result<_, _>>()?;
    d.try_into().map_err(|_| format!("shape {shape}: expected NxCxHxW").into())
}

/// The deterministic input: `x[i] = ((i · 7919) mod 1013) / 1013 − 0.5`.
fn input(shape: [usize; 4]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    (0..n).map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5).collect()
}

/// The model optimized for one input shape.
fn load(model: &str, shape: [usize; 4]) -> Result<TypedRunnableModel<TypedModel>> {
    Ok(tract_onnx::onnx()
        .model_for_path(model)?
        .with_input_fact(0, f32::fact(shape).into())?
        .into_optimized()?
        .into_runnable()?)
}

fn run(model: &TypedRunnableModel<TypedModel>, shape: [usize; 4], x: Vec<f32>) -> Result<Vec<f32>> {
    let input: Tensor = tract_ndarray::Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), x)?.into();
    let out = model.run(tvec!(input.into()))?;
    Ok(out[0].to_array_view::<f32>()?.iter().copied().collect())
}

fn compare(model: &str, input: &str, shape: &str, ours: &str) -> Result<()> {
    let shape = dims(shape)?;
    let x: Vec<f32> = std::fs::read(input)?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let got = run(&load(model, shape)?, shape, x)?;
    let rows: Vec<Vec<f32>> = serde_json::from_str(&std::fs::read_to_string(ours)?)?;
    let want: Vec<f32> = rows.into_iter().flatten().collect();
    if got.len() != want.len() {
        return Err(format!("tract gave {} logits, ours {}", got.len(), want.len()).into());
    }
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    println!("tract vs ours: max|diff| {diff:.3e}  max|logit| {scale:.3e}  ratio {:.2e}", diff / scale);
    Ok(())
}

fn bench(model: &str, shape: &str, iters: usize) -> Result<()> {
    let shape = dims(shape)?;
    let model = load(model, shape)?;
    let x = input(shape);
    run(&model, shape, x.clone())?;
    let start = Instant::now();
    for _ in 0..iters {
        run(&model, shape, x.clone())?;
    }
    let ms = start.elapsed().as_secs_f64() * 1e3 / iters as f64;
    println!("tract {shape:?}: {ms:.1} ms per batch, {:.1} images/s ({iters} runs)", shape[0] as f64 * 1e3 / ms);
    Ok(())
}
