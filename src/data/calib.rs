//! The calibration images of `resnet quantize --calib DIR --images N`: a data set `--data` reads (IDX, CIFAR: its
//! training images) or any folder of image files, flat or in class folders. From a folder, every image file under
//! it (recursively, the endings torchvision's `ImageFolder` takes), sorted by path as text, then `N` evenly spaced
//! over that list, the `i`-th at `i · len / N` (all of them when there are at most `N`): the selection
//! `tools/calib_images.py` makes for the ONNX Runtime and OpenVINO anchors. From a data set, the same spacing over
//! its training images.

use super::folder::is_image_name;
use super::open::{detect_format, open_data, DataOptions, Format};
use super::source::ImageDataset;
use super::{image_file, Image};
use crate::{bail, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Most entries (files and folders) a calibration folder's walk visits before it gives up.
pub const MAX_ENTRIES: usize = 1 << 22;

/// Where the calibration images come from.
enum Source {
    Files(Vec<PathBuf>),
    Dataset(Arc<dyn ImageDataset>, Vec<usize>),
}

/// The selected calibration images, decoded one at a time ([`CalibImages::image`]).
pub struct CalibImages {
    source: Source,
    channels: usize,
}

/// The indices of `count` items evenly spaced over `len` (all of them when `len <= count`).
pub fn evenly_spaced(len: usize, count: usize) -> Vec<usize> {
    if len <= count {
        return (0..len).collect();
    }
    (0..count).map(|i| i * len / count).collect()
}

/// Every image file under `dir`, sorted by path as text; symbolic links to folders are not followed.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = todo.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| crate::Error::new(format!("--calib {}: {e}", d.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| crate::Error::new(format!("--calib {}: {e}", d.display())))?;
            seen += 1;
            if seen > MAX_ENTRIES {
                bail!(
                    "--calib {}: more than {MAX_ENTRIES} files and folders",
                    dir.display()
                );
            }
            let kind = entry.file_type().map_err(|e| {
                crate::Error::new(format!("--calib {}: {e}", entry.path().display()))
            })?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if is_image_name(&entry.file_name()) {
                files.push(entry.path());
            }
        }
    }
    files.sort_by_cached_key(|p| p.to_string_lossy().into_owned());
    Ok(files)
}

impl CalibImages {
    /// Selects `count` images of `dir` (see the module documentation), decoded to `channels` channels.
    pub fn select(dir: &Path, count: usize, channels: usize) -> Result<CalibImages> {
        if !dir.is_dir() {
            bail!("--calib {}: no such folder", dir.display());
        }
        let source = match detect_format(dir)? {
            Format::Folder => {
                let files = image_files(dir)?;
                if files.is_empty() {
                    bail!(
                        "--calib {}: no images (looked for {} files, in it and its folders)",
                        dir.display(),
                        super::folder::EXTENSIONS.join(" ")
                    );
                }
                let pick = evenly_spaced(files.len(), count);
                Source::Files(pick.into_iter().map(|i| files[i].clone()).collect())
            }
            _ => {
                let opts = DataOptions {
                    channels: Some(channels),
                    ..DataOptions::default()
                };
                let train = open_data(dir, &opts)?.train;
                if train.is_empty() {
                    bail!("--calib {}: no training images", dir.display());
                }
                let pick = evenly_spaced(train.len(), count);
                Source::Dataset(train, pick)
            }
        };
        Ok(CalibImages { source, channels })
    }

    /// How many images were selected.
    pub fn len(&self) -> usize {
        match &self.source {
            Source::Files(f) => f.len(),
            Source::Dataset(_, pick) => pick.len(),
        }
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image `i` of the selection, decoded, and its name for errors. `max_side`: an image file whose
    /// preprocessing (`prepared`, its size after) would exceed it is refused from its header.
    pub fn image(
        &self,
        i: usize,
        prepared: impl Fn(usize, usize) -> (usize, usize),
        max_side: usize,
    ) -> Result<(Image, String)> {
        match &self.source {
            Source::Files(files) => {
                let path = &files[i];
                let origin = path.display().to_string();
                let bytes = image_file::read_file(path)?;
                let header = image_file::probe_bytes(&bytes, path)?;
                let (ph, pw) = prepared(header.h, header.w);
                if ph.max(pw) > max_side {
                    bail!(
                        "{origin}: {}×{} pixels would be {pw}×{ph} after preprocessing; the model takes at most {max_side} pixels a side",
                        header.w,
                        header.h
                    );
                }
                Ok((
                    image_file::decode_image(&bytes, path, self.channels)?,
                    origin,
                ))
            }
            Source::Dataset(d, pick) => {
                Ok((d.image(pick[i])?, format!("training image {}", pick[i])))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::evenly_spaced;

    #[test]
    fn spacing_matches_calib_images_py() {
        // tools/calib_images.py: [paths[i * len(paths) // count] for i in range(count)]
        assert_eq!(evenly_spaced(10, 4), [0, 2, 5, 7]);
        assert_eq!(evenly_spaced(3, 5), [0, 1, 2]);
        assert_eq!(evenly_spaced(60000, 3), [0, 20000, 40000]);
    }
}
