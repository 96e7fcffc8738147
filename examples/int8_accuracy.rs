//! A quantized model file against the f32 file it was made from, over a whole test set: each one's accuracy,
//! the drop, and the share of images where their top-1 classes agree (what docs/int8.md reports).
//!
//!     cargo run --release --example int8_accuracy -- F32_FILE INT8_FILE [DATA_DIR]
//!
//! DATA_DIR is any data set `eval --data` reads (default: the bundled Fashion-MNIST); its test images are
//! converted to the model's channels and prepared by the model's own evaluation transforms, as `eval` does.

use resnet::data::{open_data, DataOptions, Loader};
use resnet::model_file::ModelFile;
use std::path::{Path, PathBuf};

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

fn main() -> resnet::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 3 {
        eprintln!("usage: int8_accuracy F32_FILE INT8_FILE [DATA_DIR]");
        std::process::exit(2);
    }
    let f32_file = ModelFile::load(Path::new(&args[0]))?;
    let int8_file = ModelFile::load(Path::new(&args[1]))?;
    let dir = match args.get(2) {
        Some(d) => PathBuf::from(d),
        None => resnet::data::find_data_dir(None)?,
    };
    let opts = DataOptions {
        channels: Some(f32_file.config.in_channels),
        test_only: true,
        ..DataOptions::default()
    };
    let test = open_data(&dir, &opts)?.test;
    let loader = Loader::with_pipeline(test, 256, false, 0, f32_file.preprocess(None)?)?;
    let (mut a, mut b) = (f32_file.inference()?, int8_file.inference()?);
    let k = f32_file.config.num_classes;
    let (mut right_a, mut right_b, mut agree, mut count) = (0usize, 0usize, 0usize, 0usize);
    for batch in loader.epoch(0) {
        let batch = batch?;
        let la = a.forward(&batch.images, batch.shape)?.to_vec();
        let lb = b.forward(&batch.images, batch.shape)?;
        for ((ra, rb), &label) in la
            .chunks_exact(k)
            .zip(lb.chunks_exact(k))
            .zip(&batch.labels)
        {
            let (pa, pb) = (argmax(ra), argmax(rb));
            right_a += (pa == label) as usize;
            right_b += (pb == label) as usize;
            agree += (pa == pb) as usize;
            count += 1;
        }
    }
    let pct = |n: usize| 100.0 * n as f64 / count as f64;
    println!(
        "{count} test images of {}: f32 {:.2} %, {} {:.2} %, drop {:.2} points, top-1 agreement {:.2} %",
        dir.display(),
        pct(right_a),
        b.precision(),
        pct(right_b),
        pct(right_a) - pct(right_b),
        pct(agree)
    );
    Ok(())
}
