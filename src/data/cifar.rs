//! CIFAR-10 and CIFAR-100, the binary versions (`cifar-10-batches-bin/`, `cifar-100-binary/`).
//!
//! CIFAR-10: `data_batch_1.bin` … `data_batch_5.bin` (training, 50,000 images) and `test_batch.bin` (10,000), each
//! a sequence of 3,073-byte records: 1 label byte, then 3,072 pixel bytes, the 32×32 red plane, then green, then
//! blue. Class names from `batches.meta.txt` (one a line), else the standard ten.
//!
//! CIFAR-100: `train.bin` (50,000) and `test.bin` (10,000), 3,074-byte records: the coarse label (20 superclasses),
//! the fine label (100 classes), 3,072 pixel bytes. Names from `fine_label_names.txt` / `coarse_label_names.txt`
//! if present, else `fine_0` … / `coarse_0` ….
//!
//! Images become interleaved `32×32×3` ([`ArrayDataset`]), what PIL's `Image.fromarray(x.transpose(1, 2, 0))`
//! holds (torchvision's `CIFAR10` does the same with the Python pickles).

use std::path::{Path, PathBuf};

use super::source::ArrayDataset;
use crate::error::Context;
use crate::{bail, Result};

/// Pixel bytes of one record (3 planes of 32×32).
pub const PIXELS: usize = 3 * 32 * 32;
/// Largest CIFAR file read (1 GiB, more than 5× the largest official file): checked before reading.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Which label of CIFAR-100 is the class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Label {
    /// The 100 fine classes (the usual one).
    #[default]
    Fine,
    /// The 20 coarse superclasses.
    Coarse,
}

/// The two record layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// CIFAR-10: 1 label byte + 3,072 pixels.
    Cifar10,
    /// CIFAR-100: coarse byte, fine byte, 3,072 pixels; the class is the given label.
    Cifar100(Label),
}

impl Kind {
    /// Bytes of one record: 3,073 or 3,074.
    pub fn record_size(self) -> usize {
        match self {
            Kind::Cifar10 => 1 + PIXELS,
            Kind::Cifar100(_) => 2 + PIXELS,
        }
    }

    /// Number of classes: 10, 100 (fine) or 20 (coarse).
    pub fn num_classes(self) -> usize {
        match self {
            Kind::Cifar10 => 10,
            Kind::Cifar100(Label::Fine) => 100,
            Kind::Cifar100(Label::Coarse) => 20,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Cifar10 => "CIFAR-10",
            Kind::Cifar100(_) => "CIFAR-100",
        }
    }
}

/// CIFAR-10's class names in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Parses the bytes of one CIFAR file (named `origin` in errors) into interleaved `32×32×3` pixels and labels.
/// The length must be a positive multiple of the record size; every label must be a class of `kind`.
pub fn parse(bytes: &[u8], kind: Kind, origin: &Path) -> Result<(Vec<u8>, Vec<u32>)> {
    let rec = kind.record_size();
    let o = origin.display();
    if bytes.is_empty() {
        bail!(
            "{o}: empty file (a {} file holds {rec}-byte records)",
            kind.name()
        );
    }
    if !bytes.len().is_multiple_of(rec) {
        bail!(
            "{o}: {} bytes is not a multiple of the {rec}-byte {} record (the file is truncated or not {})",
            bytes.len(),
            kind.name(),
            kind.name()
        );
    }
    let n = bytes.len() / rec;
    let mut images = vec![0u8; n * PIXELS];
    let mut labels = Vec::with_capacity(n);
    for (i, (r, dst)) in bytes
        .chunks_exact(rec)
        .zip(images.chunks_exact_mut(PIXELS))
        .enumerate()
    {
        let (label, pixels) = match kind {
            Kind::Cifar10 => (r[0], &r[1..]),
            Kind::Cifar100(Label::Coarse) => (r[0], &r[2..]),
            Kind::Cifar100(Label::Fine) => (r[1], &r[2..]),
        };
        if label as usize >= kind.num_classes() {
            bail!(
                "{o}: record {i} has label {label}, but {} has {} classes",
                kind.name(),
                kind.num_classes()
            );
        }
        labels.push(label as u32);
        let (red, rest) = pixels.split_at(1024);
        let (green, blue) = rest.split_at(1024);
        for (p, px) in dst.chunks_exact_mut(3).enumerate() {
            px.copy_from_slice(&[red[p], green[p], blue[p]]);
        }
    }
    Ok((images, labels))
}

/// Reads one file, refusing files over [`MAX_FILE_BYTES`] before reading and a length that is not a multiple of
/// the record size before allocating the images.
pub fn read_file(path: &Path, kind: Kind) -> Result<(Vec<u8>, Vec<u32>)> {
    let p = path.display();
    let (file, len) =
        crate::files::open_regular(path).with_context(|| format!("{p}: cannot open"))?;
    if len > MAX_FILE_BYTES {
        bail!("{p}: {len} bytes is more than the {MAX_FILE_BYTES}-byte limit for a CIFAR file");
    }
    let rec = kind.record_size() as u64;
    if len == 0 {
        bail!(
            "{p}: empty file (a {} file holds {rec}-byte records)",
            kind.name()
        );
    }
    if !len.is_multiple_of(rec) {
        bail!(
            "{p}: {len} bytes is not a multiple of the {rec}-byte {} record (the file is truncated or not {})",
            kind.name(),
            kind.name()
        );
    }
    let bytes =
        crate::files::read_limited(file, len).with_context(|| format!("{p}: cannot read"))?;
    parse(&bytes, kind, path)
}

/// The directory holding the files: `dir` itself, or its `cifar-10-batches-bin` / `cifar-100-binary` subfolder.
pub fn find_dir(dir: &Path, kind: Kind) -> Option<PathBuf> {
    let (marker, sub) = match kind {
        Kind::Cifar10 => ("data_batch_1.bin", "cifar-10-batches-bin"),
        Kind::Cifar100(_) => ("train.bin", "cifar-100-binary"),
    };
    [dir.to_path_buf(), dir.join(sub)]
        .into_iter()
        .find(|d| d.join(marker).exists())
}

/// Longest class-name file read (1 MiB: CIFAR-100's fine names take under 1 KiB).
const MAX_NAMES_BYTES: u64 = 1 << 20;

/// Class names from `file` in `dir` (non-empty lines, trimmed) if it holds exactly `n`, else `fallback(i)`
/// (also when there is no such file). A name file that is not a regular file (a link to `/dev/zero`, a FIFO) or
/// over [`MAX_NAMES_BYTES`] is an error naming it.
fn names(
    dir: &Path,
    file: &str,
    n: usize,
    fallback: impl Fn(usize) -> String,
) -> Result<Vec<String>> {
    let path = dir.join(file);
    let p = path.display();
    let text = match crate::files::open_regular(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        opened => {
            let (f, len) = opened.with_context(|| format!("{p}: cannot open"))?;
            if len > MAX_NAMES_BYTES {
                bail!("{p}: {len} bytes is more than the {MAX_NAMES_BYTES}-byte limit for a class-name file");
            }
            let bytes = crate::files::read_limited(f, MAX_NAMES_BYTES)
                .with_context(|| format!("{p}: cannot read"))?;
            // Not UTF-8: not a name file (as before, the default names).
            String::from_utf8(bytes).ok()
        }
    };
    let from_file = text.map(|t| {
        t.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect::<Vec<_>>()
    });
    Ok(match from_file {
        Some(v) if v.len() == n => v,
        _ => (0..n).map(fallback).collect(),
    })
}

/// Loads the training (`train = true`) or test split of CIFAR-10 or CIFAR-100 from `dir` (or its
/// `cifar-10-batches-bin` / `cifar-100-binary` subfolder).
pub fn load(dir: &Path, kind: Kind, train: bool) -> Result<ArrayDataset> {
    let Some(root) = find_dir(dir, kind) else {
        let want = match kind {
            Kind::Cifar10 => "data_batch_1.bin",
            Kind::Cifar100(_) => "train.bin",
        };
        bail!(
            "{}: no {} files ({want} not found here or in the usual subfolder)",
            dir.display(),
            kind.name()
        );
    };
    let files: Vec<String> = match (kind, train) {
        (Kind::Cifar10, true) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        (Kind::Cifar10, false) => vec!["test_batch.bin".into()],
        (Kind::Cifar100(_), true) => vec!["train.bin".into()],
        (Kind::Cifar100(_), false) => vec!["test.bin".into()],
    };
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for f in &files {
        let (i, l) = read_file(&root.join(f), kind)?;
        images.extend_from_slice(&i);
        labels.extend_from_slice(&l);
    }
    let classes = match kind {
        Kind::Cifar10 => names(&root, "batches.meta.txt", 10, |i| {
            CIFAR10_CLASSES[i].to_string()
        }),
        Kind::Cifar100(Label::Fine) => {
            names(&root, "fine_label_names.txt", 100, |i| format!("fine_{i}"))
        }
        Kind::Cifar100(Label::Coarse) => names(&root, "coarse_label_names.txt", 20, |i| {
            format!("coarse_{i}")
        }),
    }?;
    ArrayDataset::new(
        images,
        labels,
        (32, 32, 3),
        classes,
        root.join(&files[0]).display().to_string(),
    )
}
