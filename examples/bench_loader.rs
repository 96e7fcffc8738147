//! Times the data loader alone on an image folder (what `resnet bench --loader DIR` will report):
//!
//!     cargo run --release --example bench_loader -- DIR [--transforms imagenet|cifar|chapter] [--batch 64]
//!         [--workers 2] [--cache-mb 1024] [--limit N]
//!
//! One shuffled epoch of the training transforms (normalized), images per second printed.

use std::path::PathBuf;

use resnet::data::{bench_loader, FolderOptions, Preset};

fn main() -> resnet::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut dir, mut preset, mut batch, mut workers, mut limit) =
        (None, Preset::Imagenet, 64, 2, None);
    let mut opts = FolderOptions::default();
    let bad = |a: &str| resnet::Error::new(format!("bad or missing value for {a}"));
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| bad(&a));
        match a.as_str() {
            "--transforms" => preset = value()?.parse()?,
            "--batch" => batch = value()?.parse().map_err(|_| bad("--batch"))?,
            "--workers" => workers = value()?.parse().map_err(|_| bad("--workers"))?,
            "--cache-mb" => opts.cache_mb = value()?.parse().map_err(|_| bad("--cache-mb"))?,
            "--limit" => limit = Some(value()?.parse().map_err(|_| bad("--limit"))?),
            _ if dir.is_none() => dir = Some(PathBuf::from(&a)),
            _ => return Err(resnet::Error::new(format!("unexpected argument {a:?}"))),
        }
    }
    let dir = dir.ok_or_else(|| resnet::Error::new("usage: bench_loader DIR [options]"))?;
    opts.threads = workers.max(1);
    let r = bench_loader(&dir, &opts, preset, batch, workers, limit)?;
    println!(
        "{} images in {:.2} s: {:.0} images/s ({} workers, batch {batch}, {preset:?}; opening took {:.2} s)",
        r.images, r.seconds, r.images_per_s, workers, r.open_seconds
    );
    Ok(())
}
