//! Exports the bundled Fashion-MNIST as an image folder of PNGs (see `resnet::data::export`):
//!
//!     cargo run --release --example export_folder -- OUT_DIR [--rgb] [--limit N]
//!
//! writes `OUT_DIR/train/<class>/<index>.png` (60,000, or the first N) and `OUT_DIR/val/<class>/<index>.png` (the
//! 10,000 test images, or the first N), 8-bit gray or, with `--rgb`, RGB (gray replicated).

use std::path::PathBuf;

use resnet::data::{export_image_folder, find_data_dir, Dataset, Split};

fn main() -> resnet::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut out, mut rgb, mut limit) = (None, false, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rgb" => rgb = true,
            "--limit" => limit = args.next().and_then(|v| v.parse::<usize>().ok()),
            _ if out.is_none() => out = Some(PathBuf::from(a)),
            _ => return Err(resnet::Error::new(format!("unexpected argument {a:?}"))),
        }
    }
    let Some(out) = out else {
        return Err(resnet::Error::new(
            "usage: export_folder OUT_DIR [--rgb] [--limit N]",
        ));
    };
    let dir = find_data_dir(None)?;
    for (split, name) in [(Split::Train, "train"), (Split::Test, "val")] {
        let mut d = Dataset::load(&dir, split, false)?;
        if let Some(n) = limit {
            d = d.take(n);
        }
        let n = export_image_folder(&d, &out.join(name), rgb)?;
        println!("{}: {n} images", out.join(name).display());
    }
    Ok(())
}
