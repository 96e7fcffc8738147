//! Fashion-MNIST: the four official files, their checksums, the class names, where to find them, and the
//! in-memory [`Dataset`]. MNIST's files have the same names and format and load the same way (with
//! `verify = false`, since the checksums are Fashion-MNIST's).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::idx::{read_images, read_labels};
use crate::error::Context;
use crate::{bail, Result};

/// Number of classes.
pub const NUM_CLASSES: usize = 10;

/// Class names in label order: label `i` is `CLASS_NAMES[i]`.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// The four official release files and their sha256 checksums (hex), as in `data/fashion-mnist/PROVENANCE.md`.
pub const FILES: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte.gz",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    ),
    (
        "train-labels-idx1-ubyte.gz",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    ),
];

/// Environment variable naming the data directory when no `--data DIR` flag is given.
pub const ENV_VAR: &str = "RESNET_DATA";
/// The bundled copy, relative to the current directory or to the crate root.
pub const BUNDLED_DIR: &str = "data/fashion-mnist";
/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The training (60,000 images) or test (10,000 images) half of the dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The 60,000 training images (`train-*` files).
    Train,
    /// The 10,000 test images (`t10k-*` files).
    Test,
}

impl Split {
    /// Official name of the images file, e.g. `train-images-idx3-ubyte.gz`.
    pub fn images_file(self) -> &'static str {
        match self {
            Split::Train => FILES[0].0,
            Split::Test => FILES[2].0,
        }
    }

    /// Official name of the labels file, e.g. `train-labels-idx1-ubyte.gz`.
    pub fn labels_file(self) -> &'static str {
        match self {
            Split::Train => FILES[1].0,
            Split::Test => FILES[3].0,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// The official sha256 (hex) of a file named `file_name` (e.g. `t10k-labels-idx1-ubyte.gz`), if it is one of
/// the four release files.
pub fn expected_sha256(file_name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == file_name).map(|(_, h)| *h)
}

/// The sha256 of a file's bytes, as 64 lowercase hex digits.
pub fn sha256_file(path: &Path) -> Result<String> {
    let p = path.display();
    let (mut f, _) =
        crate::files::open_regular(path).with_context(|| format!("{p}: cannot open"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let k = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("{p}: read error: {e}"),
        };
        hasher.update(&buf[..k]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Checks `path` against the official checksum for its file name. Files whose name is not one of the four
/// release `.gz` names (e.g. uncompressed copies) have no checksum and pass.
pub fn verify_checksum(path: &Path) -> Result<()> {
    let Some(expected) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(expected_sha256)
    else {
        return Ok(());
    };
    let found = sha256_file(path)?;
    if found != expected {
        bail!(
            "{}: sha256 mismatch: expected {expected}, found {found} (the file is damaged or not the official \
             Fashion-MNIST release)",
            path.display()
        );
    }
    Ok(())
}

/// The file for `gz_name` in `dir`: `dir/gz_name` if it exists, else the uncompressed `dir/<name without .gz>`
/// (whatever kind of file: one that is not a regular file is refused when it is read, by its name).
fn resolve_file(dir: &Path, gz_name: &str) -> Result<PathBuf> {
    let gz = dir.join(gz_name);
    if gz.exists() {
        return Ok(gz);
    }
    let raw = dir.join(gz_name.trim_end_matches(".gz"));
    if raw.exists() {
        return Ok(raw);
    }
    bail!(
        "{}: neither {} nor {} found",
        dir.display(),
        gz_name,
        gz_name.trim_end_matches(".gz")
    )
}

/// Whether `dir` holds at least one of the dataset files (compressed or not).
fn holds_dataset(dir: &Path) -> bool {
    FILES
        .iter()
        .any(|(name, _)| dir.join(name).exists() || dir.join(name.trim_end_matches(".gz")).exists())
}

/// Finds the data directory. In order: `flag` (the `--data DIR` option), `$RESNET_DATA`, `data/fashion-mnist`
/// under the current directory, `data/fashion-mnist` under the crate's source root, `/usr/share/datasets/fashion-mnist`.
/// A directory given by the flag or the variable is used as is: if it holds no dataset files, that is an error
/// (no silent fallback to another copy). Otherwise the first default directory holding a dataset file wins; the
/// error lists every place tried.
pub fn find_data_dir(flag: Option<&Path>) -> Result<PathBuf> {
    // `source` is how the user named the directory, e.g. `--data /x` or `$RESNET_DATA=/x`.
    let explicit = |dir: PathBuf, source: String| -> Result<PathBuf> {
        if !dir.is_dir() {
            bail!("{source}: no such directory");
        }
        if !holds_dataset(&dir) {
            bail!(
                "{source}: no dataset files in it (expected {} and the other official file names, .gz or \
                 uncompressed)",
                FILES[0].0
            );
        }
        Ok(dir)
    };
    if let Some(dir) = flag {
        return explicit(dir.to_path_buf(), format!("--data {}", dir.display()));
    }
    if let Some(dir) = std::env::var_os(ENV_VAR).filter(|v| !v.is_empty()) {
        let label = format!("${ENV_VAR}={}", dir.to_string_lossy());
        return explicit(PathBuf::from(dir), label);
    }
    let mut tried = Vec::new();
    let candidates = [
        std::env::current_dir().map(|d| d.join(BUNDLED_DIR)).ok(),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(BUNDLED_DIR)),
        Some(PathBuf::from(SYSTEM_DIR)),
    ];
    for dir in candidates.into_iter().flatten() {
        if holds_dataset(&dir) {
            return Ok(dir);
        }
        tried.push(dir.display().to_string());
    }
    bail!(
        "no Fashion-MNIST data found: no --data DIR flag, ${ENV_VAR} unset, and none of these directories holds \
         the files: {}",
        tried.join(", ")
    )
}

/// One split in memory: `n` grayscale images of `h`×`w` u8 pixels and their labels (`0..10`).
/// `images` is `n×h×w` row-major (image `i` at `images[i·h·w..][..h·w]`); `labels.len() == n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Pixels, `[n, h, w]` row-major, 0 (background) to 255.
    pub images: Vec<u8>,
    /// Class of each image, `[n]`, each `< NUM_CLASSES` (index into [`CLASS_NAMES`]).
    pub labels: Vec<u8>,
    /// Number of images.
    pub n: usize,
    /// Image height, pixels (28 for the official files).
    pub h: usize,
    /// Image width, pixels (28 for the official files).
    pub w: usize,
}

impl Dataset {
    /// Builds a dataset from `images` (`n×h×w` u8, `n = labels.len()`) and `labels` (each `< 10`), checking both.
    pub fn new(images: Vec<u8>, labels: Vec<u8>, h: usize, w: usize) -> Result<Dataset> {
        let n = labels.len();
        if h == 0 || w == 0 {
            bail!("dataset images must have a positive size, got {h}×{w}");
        }
        if n.checked_mul(h * w) != Some(images.len()) {
            bail!(
                "dataset: {} pixels do not make {n} images of {h}×{w}",
                images.len()
            );
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= NUM_CLASSES)
        {
            bail!("dataset: label {l} at index {i} is not a class (0–9)");
        }
        Ok(Dataset {
            images,
            labels,
            n,
            h,
            w,
        })
    }

    /// Loads `split` from `dir`, which holds the official files, gzip-compressed (`train-images-idx3-ubyte.gz`)
    /// or not (`train-images-idx3-ubyte`); the `.gz` name is preferred. With `verify`, `.gz` files must match the
    /// official sha256 (uncompressed files have no checksum to check). Checks that there is one label per image
    /// and that every label is below 10.
    pub fn load(dir: &Path, split: Split, verify: bool) -> Result<Dataset> {
        let images_path = resolve_file(dir, split.images_file())?;
        let labels_path = resolve_file(dir, split.labels_file())?;
        if verify {
            verify_checksum(&images_path)?;
            verify_checksum(&labels_path)?;
        }
        let (images, n, h, w) = read_images(&images_path)?;
        let labels = read_labels(&labels_path)?;
        if labels.len() != n {
            bail!(
                "{}: {} labels, but {} holds {n} images",
                labels_path.display(),
                labels.len(),
                images_path.display()
            );
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= NUM_CLASSES)
        {
            bail!(
                "{}: label {l} at index {i} is not a class (0–9)",
                labels_path.display()
            );
        }
        Ok(Dataset {
            images,
            labels,
            n,
            h,
            w,
        })
    }

    /// Number of images `n`.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Image `i`: `h×w` u8 pixels, row-major. Panics if `i >= n`.
    pub fn image(&self, i: usize) -> &[u8] {
        let plane = self.h * self.w;
        &self.images[i * plane..][..plane]
    }

    /// Label of image `i`, in `0..10`. Panics if `i >= n`.
    pub fn label(&self, i: usize) -> usize {
        self.labels[i] as usize
    }

    /// Keeps only the first `min(count, n)` images and labels (for `--limit-train` and quick runs).
    pub fn take(mut self, count: usize) -> Dataset {
        let n = count.min(self.n);
        self.images.truncate(n * self.h * self.w);
        self.labels.truncate(n);
        self.n = n;
        self
    }

    /// How many images each class has: `counts[label]`.
    pub fn class_counts(&self) -> [usize; NUM_CLASSES] {
        let mut counts = [0; NUM_CLASSES];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Mean and (population) standard deviation of all pixels on the 0–1 scale (pixel ÷ 255).
    pub fn pixel_mean_std(&self) -> (f64, f64) {
        let mut hist = [0u64; 256];
        for &p in &self.images {
            hist[p as usize] += 1;
        }
        let count = self.images.len().max(1) as f64;
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        for (v, &c) in hist.iter().enumerate() {
            let x = v as f64 / 255.0;
            s += c as f64 * x;
            s2 += c as f64 * x * x;
        }
        let mean = s / count;
        (mean, (s2 / count - mean * mean).max(0.0).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_file_names() {
        assert_eq!(Split::Train.images_file(), "train-images-idx3-ubyte.gz");
        assert_eq!(Split::Test.labels_file(), "t10k-labels-idx1-ubyte.gz");
        assert!(expected_sha256("t10k-labels-idx1-ubyte").is_none());
    }

    #[test]
    fn new_checks_sizes_and_labels() {
        assert!(Dataset::new(vec![0; 8], vec![1, 2], 2, 2).is_ok());
        assert!(Dataset::new(vec![0; 7], vec![1, 2], 2, 2).is_err());
        assert!(Dataset::new(vec![0; 8], vec![1, 10], 2, 2).is_err());
        let d = Dataset::new((0..12).collect(), vec![0, 1, 2], 2, 2)
            .unwrap()
            .take(2);
        assert_eq!((d.n, d.images.len(), d.labels.len()), (2, 8, 2));
        assert_eq!(d.image(1), &[4, 5, 6, 7]);
    }
}
