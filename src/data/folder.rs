//! torchvision's `ImageFolder`: `root/<class>/**/<file>`, one folder per class.
//!
//! The rules, as torchvision 0.29 applies them (`find_classes` + `make_dataset`):
//! - classes are the subfolders of `root` (symbolic links to folders count; files in `root` are ignored), sorted
//!   by name (code-point order, as Python's `sorted` on `str`); class `i` is the `i`-th name;
//! - a class holds every file under its folder, at any depth (`os.walk(followlinks=True)`), whose name ends, in any
//!   case, with `.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp`; hidden files and folders are not skipped;
//! - samples are ordered by class, then by the folder path (as a string), then by file name;
//! - a class folder without a valid file is an error ("found no valid file for the classes …"), and so is a root
//!   without class folders.
//!
//! Beyond torchvision: a symbolic link leading back to a folder above it is an error naming it (os.walk would loop
//! until the path is too long); every file's header is read when the folder is opened (size, gray or colour; a
//! file that is not an image fails here); the pixels are decoded on access, or once at open when their total fits
//! the cache budget. With `skip_bad`, files that cannot be read are left out and counted instead of failing — and
//! every file is then fully decoded once at open, so that a truncated file cannot fail later in training.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::image_file::{probe, read_image, Header};
use super::source::{ImageDataset, Subset};
use super::transforms::Image;
use crate::error::{few, Context};
use crate::{bail, Result};

/// File name endings torchvision's `ImageFolder` accepts (`IMG_EXTENSIONS`), compared in lower case.
pub const EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];

/// Default decoded-image cache budget, MiB.
pub const DEFAULT_CACHE_MB: usize = 1024;

/// How to open an image folder.
#[derive(Clone, Debug, PartialEq)]
pub struct FolderOptions {
    /// Channels of the images handed out (1 or 3); `None`: 1 if every image is gray, else 3.
    pub channels: Option<usize>,
    /// Decode every image once at open and keep the pixels when they fit this many MiB (0: never).
    pub cache_mb: usize,
    /// Leave out (and count) files that cannot be read instead of failing.
    pub skip_bad: bool,
    /// Threads for reading headers and filling the cache.
    pub threads: usize,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions {
            channels: None,
            cache_mb: DEFAULT_CACHE_MB,
            skip_bad: false,
            threads: 2,
        }
    }
}

/// Whether torchvision would take `name` as an image file (`has_file_allowed_extension`).
pub fn is_image_name(name: &std::ffi::OsStr) -> bool {
    let lower = name.to_string_lossy().to_lowercase();
    EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// The class folders of `root`, sorted: torchvision's `find_classes`.
pub fn find_classes(root: &Path) -> Result<Vec<String>> {
    let r = root.display();
    let entries = std::fs::read_dir(root).with_context(|| format!("{r}: cannot read folder"))?;
    let mut classes = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("{r}: cannot read folder"))?;
        let path = e.path();
        if std::fs::metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            let Some(name) = e.file_name().to_str().map(String::from) else {
                bail!("{}: class folder name is not UTF-8", path.display());
            };
            classes.push(name);
        }
    }
    if classes.is_empty() {
        bail!("{r}: no class folders (an image folder holds one subfolder per class: {r}/<class>/<image>)");
    }
    classes.sort();
    Ok(classes)
}

/// Every image file under `dir` in torchvision's order (`sorted(os.walk(dir, followlinks=True))`, then the sorted
/// file names of each folder). A symbolic link back to a folder above is an error naming it.
fn walk_class(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut folders: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    let mut stack: Vec<(PathBuf, Vec<PathBuf>)> = vec![(dir.to_path_buf(), Vec::new())];
    while let Some((folder, ancestors)) = stack.pop() {
        let canon = std::fs::canonicalize(&folder)
            .with_context(|| format!("{}: cannot read folder", folder.display()))?;
        if let Some(a) = ancestors.iter().find(|a| **a == canon) {
            bail!(
                "{}: symbolic link loop (leads back to {})",
                folder.display(),
                a.display()
            );
        }
        let entries = std::fs::read_dir(&folder)
            .with_context(|| format!("{}: cannot read folder", folder.display()))?;
        let mut files = Vec::new();
        let mut chain = ancestors.clone();
        chain.push(canon);
        for e in entries {
            let e = e.with_context(|| format!("{}: cannot read folder", folder.display()))?;
            let path = e.path();
            // Like os.scandir's is_dir(): follows links; a broken link is a file.
            if std::fs::metadata(&path)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                stack.push((path, chain.clone()));
            } else if is_image_name(&e.file_name()) {
                files.push(path);
            }
        }
        files.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
        folders.push((folder, files));
    }
    folders.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    Ok(folders.into_iter().flat_map(|(_, f)| f).collect())
}

/// Runs `f` on every item of `items` with `threads` threads; results in item order.
fn parallel_map<T: Sync, U: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> U + Sync,
) -> Vec<U> {
    let threads = threads.clamp(1, items.len().max(1));
    let mut out: Vec<Option<U>> = (0..items.len()).map(|_| None).collect();
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (src, dst) in items.chunks(chunk).zip(out.chunks_mut(chunk)) {
            let f = &f;
            s.spawn(move || {
                for (x, y) in src.iter().zip(dst) {
                    *y = Some(f(x));
                }
            });
        }
    });
    out.into_iter()
        .map(|x| x.expect("every item mapped"))
        .collect()
}

/// A folder of images on disk, torchvision's `ImageFolder` (see the module documentation for the rules).
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    files: Vec<PathBuf>,
    labels: Vec<u32>,
    headers: Vec<Header>,
    c: usize,
    cache: Option<Vec<Image>>,
    skipped: Vec<String>,
}

/// A scanned folder before the channel count is fixed (so that two splits can agree on it).
struct Scan {
    root: PathBuf,
    classes: Vec<String>,
    files: Vec<PathBuf>,
    labels: Vec<u32>,
    headers: Vec<Header>,
    skipped: Vec<String>,
}

impl Scan {
    fn new(root: &Path, opts: &FolderOptions) -> Result<Scan> {
        let classes = find_classes(root)?;
        let (mut files, mut labels) = (Vec::new(), Vec::new());
        for (k, class) in classes.iter().enumerate() {
            for f in walk_class(&root.join(class))? {
                files.push(f);
                labels.push(k as u32);
            }
        }
        let probed = parallel_map(&files, opts.threads, |p| probe(p));
        let mut scan = Scan {
            root: root.to_path_buf(),
            classes,
            files: Vec::new(),
            labels: Vec::new(),
            headers: Vec::new(),
            skipped: Vec::new(),
        };
        for ((f, l), h) in files.into_iter().zip(labels).zip(probed) {
            match h {
                Ok(h) => {
                    scan.files.push(f);
                    scan.labels.push(l);
                    scan.headers.push(h);
                }
                Err(e) if opts.skip_bad => scan.skipped.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        scan.check_classes()?;
        Ok(scan)
    }

    fn check_classes(&self) -> Result<()> {
        let present: HashSet<u32> = self.labels.iter().copied().collect();
        let empty: Vec<&str> = (0..self.classes.len())
            .filter(|k| !present.contains(&(*k as u32)))
            .map(|k| self.classes[k].as_str())
            .collect();
        if !empty.is_empty() {
            bail!(
                "{}: found no valid file for the classes {} (supported extensions: {})",
                self.root.display(),
                few(&empty),
                EXTENSIONS.join(" ")
            );
        }
        Ok(())
    }

    fn all_gray(&self) -> bool {
        self.headers.iter().all(|h| h.gray)
    }

    fn decoded_bytes(&self, c: usize) -> u64 {
        self.headers.iter().map(|h| (h.h * h.w * c) as u64).sum()
    }

    /// Fixes the channels; decodes everything when `cache` (keeping the pixels) or `skip_bad` (checking them).
    fn build(mut self, c: usize, cache: bool, opts: &FolderOptions) -> Result<ImageFolder> {
        let mut images = None;
        if cache || opts.skip_bad {
            let decoded = parallel_map(&self.files, opts.threads, |p| read_image(p, c));
            let mut keep = Vec::with_capacity(decoded.len());
            let (mut files, mut labels, mut headers) = (Vec::new(), Vec::new(), Vec::new());
            for (((f, l), h), d) in self
                .files
                .into_iter()
                .zip(self.labels)
                .zip(self.headers)
                .zip(decoded)
            {
                match d {
                    Ok(img) => {
                        files.push(f);
                        labels.push(l);
                        headers.push(Header {
                            h: img.h,
                            w: img.w,
                            gray: h.gray,
                        });
                        if cache {
                            keep.push(img);
                        }
                    }
                    Err(e) if opts.skip_bad => self.skipped.push(e.to_string()),
                    Err(e) => return Err(e),
                }
            }
            (self.files, self.labels, self.headers) = (files, labels, headers);
            self.check_classes()?;
            images = cache.then_some(keep);
        }
        Ok(ImageFolder {
            root: self.root,
            classes: self.classes,
            files: self.files,
            labels: self.labels,
            headers: self.headers,
            c,
            cache: images,
            skipped: self.skipped,
        })
    }
}

fn check_channels(c: Option<usize>) -> Result<()> {
    match c {
        None | Some(1) | Some(3) => Ok(()),
        Some(c) => bail!("channels must be 1 or 3, got {c}"),
    }
}

impl ImageFolder {
    /// Opens `root` as one image folder (see the module documentation).
    pub fn open(root: &Path, opts: &FolderOptions) -> Result<ImageFolder> {
        check_channels(opts.channels)?;
        let scan = Scan::new(root, opts)?;
        let c = opts.channels.unwrap_or(if scan.all_gray() { 1 } else { 3 });
        let cache = scan.decoded_bytes(c) <= (opts.cache_mb as u64) << 20 && opts.cache_mb > 0;
        scan.build(c, cache, opts)
    }

    /// The folder it was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image files, in sample order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Whether the decoded pixels are kept in memory.
    pub fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// The files left out by `skip_bad`, each with its error (file name first).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }
}

impl std::fmt::Debug for ImageFolder {
    /// A summary: the pixels of a cached folder are far too many to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFolder")
            .field("root", &self.root)
            .field("images", &self.files.len())
            .field("classes", &self.classes.len())
            .field("channels", &self.c)
            .field("cached", &self.cache.is_some())
            .field("skipped", &self.skipped.len())
            .finish()
    }
}

impl ImageDataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn channels(&self) -> usize {
        self.c
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, i: usize) -> usize {
        self.labels[i] as usize
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        let first = self.headers.first().map(|h| (h.h, h.w))?;
        self.headers
            .iter()
            .all(|h| (h.h, h.w) == first)
            .then_some(first)
    }
    fn image(&self, i: usize) -> Result<Image> {
        match &self.cache {
            Some(images) => Ok(images[i].clone()),
            None => read_image(&self.files[i], self.c),
        }
    }
    fn describe(&self, i: usize) -> String {
        self.files[i].display().to_string()
    }
}

/// The training and validation halves of a folder dataset.
#[derive(Debug)]
pub struct FolderSplits {
    /// Training images.
    pub train: Arc<dyn ImageDataset>,
    /// Validation (or test) images, same classes as `train`.
    pub val: Arc<dyn ImageDataset>,
    /// Where the validation images came from: `DIR/val`, `DIR/test`, or `val_split 0.1 of DIR` (say).
    pub val_source: String,
    /// Files left out by `skip_bad` (each message names the file).
    pub skipped: Vec<String>,
    /// Whether the decoded pixels are cached in memory.
    pub cached: bool,
}

/// Checks a validation fraction: strictly between 0 and 1.
pub fn check_val_split(f: f64) -> Result<()> {
    if !(f > 0.0 && f < 1.0) {
        bail!("val_split must be a fraction strictly between 0 and 1, got {f}");
    }
    Ok(())
}

/// Splits `0..labels.len()` per class: of each class's `n` images, `round(n·fraction)` (at most `n − 1`) go to
/// validation, chosen by a shuffle seeded by `(seed, class)`. Returns `(train, val)`, each in dataset order.
pub fn stratified_split(
    labels: &[usize],
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    check_val_split(fraction)?;
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut val = vec![false; labels.len()];
    for k in 0..classes {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == k).collect();
        let take =
            ((idx.len() as f64 * fraction).round() as usize).min(idx.len().saturating_sub(1));
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&(k as u64).to_le_bytes());
        key[16..24].copy_from_slice(b"valsplit");
        idx.shuffle(&mut ChaCha8Rng::from_seed(key));
        for &i in &idx[..take] {
            val[i] = true;
        }
    }
    let (v, t): (Vec<usize>, Vec<usize>) = (0..labels.len()).partition(|&i| val[i]);
    Ok((t, v))
}

/// `base` split by [`stratified_split`] into `(train, val)` subsets of it.
pub fn split_dataset(
    base: Arc<dyn ImageDataset>,
    fraction: f64,
    seed: u64,
) -> Result<(Arc<dyn ImageDataset>, Arc<dyn ImageDataset>)> {
    let labels: Vec<usize> = (0..base.len()).map(|i| base.label(i)).collect();
    let (t, v) = stratified_split(&labels, fraction, seed)?;
    let part = |indices| -> Arc<dyn ImageDataset> {
        Arc::new(Subset {
            base: base.clone(),
            indices,
        })
    };
    Ok((part(t), part(v)))
}

/// Opens a folder dataset: `dir/train` and `dir/val` (or `dir/test`) when `dir/train` exists, else `dir` itself
/// split by [`stratified_split`] with `val_split` (default 0.1) and `seed`. With `dir/train` but neither `val` nor
/// `test`, `val_split` of `dir/train` is held out. Both halves get the same channel count (1 only if every image of
/// both is gray, unless `opts.channels` says) and must have the same classes. The cache budget covers both.
pub fn open_splits(
    dir: &Path,
    opts: &FolderOptions,
    val_split: Option<f64>,
    seed: u64,
) -> Result<FolderSplits> {
    check_channels(opts.channels)?;
    if let Some(f) = val_split {
        check_val_split(f)?;
    }
    if !dir.is_dir() {
        bail!("{}: no such folder", dir.display());
    }
    let train_dir = dir.join("train");
    let val_dir = ["val", "test"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_dir());
    let budget = if opts.cache_mb == 0 {
        0
    } else {
        (opts.cache_mb as u64) << 20
    };
    if let (true, Some(val_dir), None) = (train_dir.is_dir(), &val_dir, val_split) {
        let train = Scan::new(&train_dir, opts)?;
        let val = Scan::new(val_dir, opts)?;
        if train.classes != val.classes {
            bail!(
                "{} and {}: the class folders differ ({} vs {} classes; they must be the same names)",
                train_dir.display(),
                val_dir.display(),
                train.classes.len(),
                val.classes.len()
            );
        }
        let c = opts
            .channels
            .unwrap_or(if train.all_gray() && val.all_gray() {
                1
            } else {
                3
            });
        let cache = budget > 0 && train.decoded_bytes(c) + val.decoded_bytes(c) <= budget;
        let (train, val) = (train.build(c, cache, opts)?, val.build(c, cache, opts)?);
        let mut skipped = train.skipped.clone();
        skipped.extend(val.skipped.iter().cloned());
        return Ok(FolderSplits {
            train: Arc::new(train),
            val: Arc::new(val),
            val_source: val_dir.display().to_string(),
            skipped,
            cached: cache,
        });
    }
    let root = if train_dir.is_dir() {
        train_dir
    } else {
        dir.to_path_buf()
    };
    let fraction = val_split.unwrap_or(0.1);
    let all = ImageFolder::open(&root, opts)?;
    let (skipped, cached) = (all.skipped.clone(), all.is_cached());
    let (train, val) = split_dataset(Arc::new(all), fraction, seed)?;
    Ok(FolderSplits {
        train,
        val,
        val_source: format!("val_split {fraction} of {} (seed {seed})", root.display()),
        skipped,
        cached,
    })
}
