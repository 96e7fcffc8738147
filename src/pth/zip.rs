//! The zip archive `torch.save` writes: `ARCHIVE/data.pkl` found and read within [`MAX_PICKLE_BYTES`], the byte
//! order checked, and the storages `ARCHIVE/data/KEY` read in place from the file's bytes.
//!
//! `::zip` is the zip crate; this module is named after the format it reads.

use super::MAX_PICKLE_BYTES;
use crate::error::Context;
use crate::{bail, Error, Result};
use std::collections::HashMap;
use std::io::{Cursor, Read};

/// An open `.pth` archive: where its pickle is, and the storages read so far.
pub(super) struct Archive<'b> {
    zip: ::zip::ZipArchive<Cursor<&'b [u8]>>,
    /// The whole file, which the stored storages are slices of.
    bytes: &'b [u8],
    /// `ARCHIVE/data.pkl`.
    pkl_name: String,
    /// `ARCHIVE/`, the folder of every entry.
    prefix: String,
    /// Storages by key, each checked against its CRC-32 the first time it is read.
    cache: HashMap<String, &'b [u8]>,
}

impl<'b> Archive<'b> {
    /// Opens the zip archive `bytes` and finds its pickle; refuses an archive without one and a big-endian file.
    /// `origin` names the file in errors.
    pub(super) fn open(bytes: &'b [u8], origin: &str) -> Result<Archive<'b>> {
        let mut zip = ::zip::ZipArchive::new(Cursor::new(bytes))
            .with_context(|| format!("{origin}: not a valid .pth zip archive"))?;
        let pkl_name = zip
            .file_names()
            .filter_map(|n| n.ok())
            .find(|n| {
                n.strip_suffix("/data.pkl")
                    .is_some_and(|dir| !dir.is_empty() && !dir.contains('/'))
            })
            .map(|n| n.to_string())
            .ok_or_else(|| {
                Error::new(format!(
                    "{origin}: a zip archive without ARCHIVE/data.pkl: not a file written by torch.save"
                ))
            })?;
        let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();
        if let Ok(mut f) = zip.by_name(&format!("{prefix}byteorder")) {
            let mut order = Vec::new();
            f.by_ref()
                .take(16)
                .read_to_end(&mut order)
                .with_context(|| format!("{origin}: {prefix}byteorder"))?;
            if order != b"little" {
                bail!(
                    "{origin}: byte order `{}`: only little-endian files are supported",
                    String::from_utf8_lossy(&order)
                );
            }
        }
        Ok(Archive {
            zip,
            bytes,
            pkl_name,
            prefix,
            cache: HashMap::new(),
        })
    }

    /// The pickle's name in the archive, `ARCHIVE/data.pkl`.
    pub(super) fn pkl_name(&self) -> &str {
        &self.pkl_name
    }

    /// The whole file's length in bytes.
    pub(super) fn file_len(&self) -> usize {
        self.bytes.len()
    }

    /// Reads the pickle, refusing one larger than [`MAX_PICKLE_BYTES`] whatever its header says.
    pub(super) fn read_pickle(&mut self, origin: &str) -> Result<Vec<u8>> {
        let pkl_name = &self.pkl_name;
        let mut f = self
            .zip
            .by_name(pkl_name)
            .with_context(|| format!("{origin}: {pkl_name}"))?;
        if f.size() > MAX_PICKLE_BYTES {
            bail!(
                "{origin}: {pkl_name} is {} bytes, more than the {MAX_PICKLE_BYTES} byte limit",
                f.size()
            );
        }
        let mut pkl = Vec::with_capacity(f.size() as usize);
        f.by_ref()
            .take(MAX_PICKLE_BYTES + 1)
            .read_to_end(&mut pkl)
            .with_context(|| format!("{origin}: {pkl_name}"))?;
        if pkl.len() as u64 > MAX_PICKLE_BYTES {
            bail!("{origin}: {pkl_name} is more than the {MAX_PICKLE_BYTES} byte limit");
        }
        Ok(pkl)
    }

    /// The bytes of storage `key` (`ARCHIVE/data/KEY`), straight from the file (torch stores storages
    /// uncompressed), checked against their CRC-32 once.
    pub(super) fn storage(&mut self, key: &str) -> Result<&'b [u8]> {
        if let Some(s) = self.cache.get(key) {
            return Ok(s);
        }
        let name = format!("{}data/{key}", self.prefix);
        let f = self
            .zip
            .by_name(&name)
            .with_context(|| format!("storage `{name}`"))?;
        if f.compression() != ::zip::CompressionMethod::Stored {
            bail!(
                "storage `{name}` is compressed ({}); torch.save stores storages uncompressed",
                f.compression()
            );
        }
        let start = f
            .data_start()
            .ok_or_else(|| Error::new(format!("storage `{name}`: no data offset")))?;
        let (size, crc) = (f.size(), f.crc32());
        let data = usize::try_from(start)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(s, n)| self.bytes.get(s..s.checked_add(n)?))
            .ok_or_else(|| Error::new(format!("storage `{name}`: truncated")))?;
        if crc32fast::hash(data) != crc {
            bail!("storage `{name}`: CRC-32 mismatch (the file is corrupted)");
        }
        self.cache.insert(key.to_string(), data);
        Ok(data)
    }
}
