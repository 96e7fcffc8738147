//! Writing a dataset as an image folder of PNGs, e.g. the bundled Fashion-MNIST, to try the folder path on known
//! data or to compare with torchvision.
//!
//! Layout: `dir/<class name>/<index>.png`, `index` the image's position in the dataset, zero-padded to at least 5
//! digits (more for 100,000 images or more) so that file-name order is index order. Read back as an
//! [`ImageFolder`](super::folder::ImageFolder), the images come by class (classes sorted by name, so the label
//! numbers may differ: map them by name), then by index; sorting the samples by the number in their file name gives
//! the original order back.

use std::path::Path;

use super::source::ImageDataset;
use crate::error::Context;
use crate::{bail, Result};

/// A class name as a folder name: `/` and NUL become `_`, and `.` / `..` / an empty name get a leading `_`.
pub fn folder_name(class: &str) -> String {
    let s: String = class
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    if s.is_empty() || s == "." || s == ".." {
        format!("_{s}")
    } else {
        s
    }
}

/// Writes every image of `ds` as a PNG (8-bit gray, or RGB with `rgb` — gray images then replicated, RGB images
/// converted to gray with PIL's formula when not `rgb`) to `dir/<class>/<index>.png`, creating the folders.
/// Refuses a `dir` that already holds files, and two classes whose folder names coincide. Returns the number of
/// files written.
pub fn export_image_folder(ds: &dyn ImageDataset, dir: &Path, rgb: bool) -> Result<usize> {
    let d = dir.display();
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut e| e.next().is_some())
            .unwrap_or(true)
    {
        bail!("{d}: exists and is not empty (export writes into a new or empty folder)");
    }
    let names: Vec<String> = ds.classes().iter().map(|c| folder_name(c)).collect();
    let mut sorted = names.clone();
    sorted.sort();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        bail!("{d}: two classes would share the folder {:?}", w[0]);
    }
    for n in &names {
        let p = dir.join(n);
        std::fs::create_dir_all(&p).with_context(|| format!("{}: cannot create", p.display()))?;
    }
    let width = ds.len().saturating_sub(1).to_string().len().max(5);
    let c = if rgb { 3 } else { 1 };
    for i in 0..ds.len() {
        let img = ds.image(i)?.with_channels(c);
        let path = dir
            .join(&names[ds.label(i)])
            .join(format!("{i:0width$}.png"));
        let color = if rgb {
            image::ExtendedColorType::Rgb8
        } else {
            image::ExtendedColorType::L8
        };
        image::save_buffer_with_format(
            &path,
            &img.pixels,
            img.w as u32,
            img.h as u32,
            color,
            image::ImageFormat::Png,
        )
        .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(ds.len())
}
