//! IDX files (the format of MNIST and Fashion-MNIST), raw or gzip-compressed, unsigned-byte data only.
//!
//! Layout: a 4-byte magic `00 00 08 ndim` (0x08 = unsigned byte), then `ndim` big-endian u32 dimensions, then
//! exactly `product(dims)` bytes in row-major order. Gzip is detected by its `1f 8b` magic, not by the file name.
//!
//! Every failure is one [`Error`] naming the file and the problem. A header that claims more data than the file
//! holds is refused before the data is allocated: raw files are checked against their length, gzip streams are
//! read only up to the declared size + 1 byte (into a buffer that grows with what actually arrives), and no header
//! may declare more than [`MAX_DATA_BYTES`].

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::error::Context;
use crate::{bail, Error, Result};

/// Largest data size (product of the dimensions, in bytes) a header may declare: 2³¹ bytes.
pub const MAX_DATA_BYTES: usize = 1 << 31;

/// An IDX array of unsigned bytes: `dims` outermost first (e.g. `[60000, 28, 28]`) and `data` in row-major
/// order, with `data.len() == dims.iter().product()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The header's dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The payload, row-major over `dims`.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes, raw or gzip-compressed; returns its dims and its
/// `product(dims)` bytes of data.
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let p = path.display();
    let (file, file_len) =
        crate::files::open_regular(path).with_context(|| format!("{p}: cannot open"))?;
    parse_stream(BufReader::new(file), file_len, path)
}

/// Parses the bytes of an IDX file, raw or gzip-compressed (as [`read_idx`] reads a file); `origin` names it
/// in errors.
pub fn parse_idx(bytes: &[u8], origin: &Path) -> Result<IdxArray> {
    parse_stream(bytes, bytes.len() as u64, origin)
}

/// The IDX file of `len` bytes that `reader` yields, raw or gzip-compressed (told apart by gzip's magic).
fn parse_stream(mut reader: impl BufRead, len: u64, path: &Path) -> Result<IdxArray> {
    let p = path.display();
    if len == 0 {
        bail!("{p}: empty file (expected an IDX file, raw or gzip-compressed)");
    }
    let head = reader
        .fill_buf()
        .with_context(|| format!("{p}: read error"))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        parse(&mut flate2::bufread::GzDecoder::new(reader), path, None)
    } else {
        parse(&mut reader, path, Some(len))
    }
}

/// Reads a 3-d IDX file of images; returns `(pixels, n, h, w)` with `pixels.len() == n·h·w`, image `i`
/// at `pixels[i·h·w..][..h·w]`, rows top to bottom.
pub fn read_images(path: impl AsRef<Path>) -> Result<(Vec<u8>, usize, usize, usize)> {
    let path = path.as_ref();
    images_of(read_idx(path)?, path)
}

/// Checks that `a` (read from `path`) is a 3-d array of images; returns `(pixels, n, h, w)` as [`read_images`].
pub fn images_of(a: IdxArray, path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    match a.dims[..] {
        [n, h, w] if h > 0 && w > 0 => Ok((a.data, n, h, w)),
        [n, h, w] => bail!(
            "{}: images of size {h}×{w} in an array of {n}: height and width must be positive",
            path.display()
        ),
        _ => bail!(
            "{}: expected a 3-d IDX array of images (n×h×w), found {}-d ({})",
            path.display(),
            a.dims.len(),
            dims_str(&a.dims)
        ),
    }
}

/// Reads a 1-d IDX file of labels; returns the `n` label bytes.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    labels_of(read_idx(path)?, path)
}

/// Checks that `a` (read from `path`) is a 1-d array of labels; returns them.
pub fn labels_of(a: IdxArray, path: &Path) -> Result<Vec<u8>> {
    if a.dims.len() != 1 {
        bail!(
            "{}: expected a 1-d IDX array of labels, found {}-d ({})",
            path.display(),
            a.dims.len(),
            dims_str(&a.dims)
        );
    }
    Ok(a.data)
}

/// `[60000, 28, 28]` → `60000×28×28`.
fn dims_str(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×")
}

/// Reads until `buf` is full or the stream ends; returns how many bytes arrived.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Parses the IDX stream `r`. `raw_len` is the file length for an uncompressed file, `None` for a gzip stream.
fn parse(r: &mut dyn Read, path: &Path, raw_len: Option<u64>) -> Result<IdxArray> {
    let p = path.display();
    let (what, io_err) = match raw_len {
        Some(_) => ("file", "read error"),
        None => ("decompressed data", "corrupt or truncated gzip stream"),
    };
    let io = || format!("{p}: {io_err}");

    let mut magic = [0u8; 4];
    let got = read_full(r, &mut magic).with_context(io)?;
    if got < 4 {
        bail!("{p}: too short for an IDX header: {what} holds {got} bytes");
    }
    if magic[0] != 0 || magic[1] != 0 {
        bail!(
            "{p}: not an IDX file: wrong magic {:02x} {:02x} {:02x} {:02x} (expected 00 00 08 <ndim>)",
            magic[0],
            magic[1],
            magic[2],
            magic[3]
        );
    }
    if magic[2] != 0x08 {
        bail!(
            "{p}: unsupported IDX data type {:#04x} (only unsigned bytes, 0x08, are supported)",
            magic[2]
        );
    }
    let ndim = magic[3] as usize;
    if ndim == 0 {
        bail!("{p}: IDX header declares 0 dimensions");
    }
    let header_len = 4 + 4 * ndim;
    let mut dim_bytes = vec![0u8; 4 * ndim];
    let got = read_full(r, &mut dim_bytes).with_context(io)?;
    if got < dim_bytes.len() {
        bail!(
            "{p}: too short for an IDX header: {ndim} dimensions need {header_len} bytes, {what} holds {}",
            4 + got
        );
    }
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let dims_s = dims_str(&dims);
    let declared = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_DATA_BYTES)
        .ok_or_else(|| {
            Error::new(format!(
                "{p}: header declares {dims_s} bytes, more than the {MAX_DATA_BYTES}-byte limit"
            ))
        })?;

    let data = match raw_len {
        Some(file_len) => {
            let held = file_len.saturating_sub(header_len as u64);
            if held < declared as u64 {
                bail!("{p}: truncated: header declares {dims_s} bytes, file holds {held}");
            }
            if held > declared as u64 {
                bail!(
                    "{p}: header declares {dims_s} bytes, file holds {held}: {} trailing bytes",
                    held - declared as u64
                );
            }
            let mut data = vec![0u8; declared];
            let got = read_full(r, &mut data).with_context(io)?;
            if got < declared {
                bail!("{p}: truncated: header declares {dims_s} bytes, file holds {got}");
            }
            data
        }
        None => {
            // Grows with the data that actually arrives; a lying header costs nothing.
            let mut data = Vec::with_capacity(declared.min(1 << 26));
            r.take(declared as u64 + 1)
                .read_to_end(&mut data)
                .with_context(io)?;
            if data.len() < declared {
                bail!(
                    "{p}: truncated: header declares {dims_s} bytes, {what} holds {}",
                    data.len()
                );
            }
            if data.len() > declared {
                bail!("{p}: header declares {dims_s} bytes, {what} holds more (trailing bytes)");
            }
            // Reaching the end of the stream made the decoder check the gzip trailer (CRC-32 and length).
            data
        }
    };
    Ok(IdxArray { dims, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_bytes(bytes: &[u8]) -> Result<IdxArray> {
        parse(
            &mut &bytes[..],
            Path::new("mem.idx"),
            Some(bytes.len() as u64),
        )
    }

    #[test]
    fn parses_a_small_array() {
        let bytes = [0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6];
        let a = parse_bytes(&bytes).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn refuses_oversized_headers_without_allocating() {
        // 2^32-1 × 2^32-1 overflows or exceeds the limit.
        let bytes = [0, 0, 8, 2, 255, 255, 255, 255, 255, 255, 255, 255];
        let e = parse_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
        let bytes = [0, 0, 8, 1, 0x7f, 0xff, 0xff, 0xff, 1, 2];
        let e = parse_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn zero_dims_is_an_error() {
        let e = parse_bytes(&[0, 0, 8, 0]).unwrap_err().to_string();
        assert!(e.contains("0 dimensions"), "{e}");
    }
}
