//! Image files for image folders and `resnet predict`: [`probe`] (header only) and [`read_image`] /
//! [`decode_image`] (any supported format to 1 or 3 channels as PIL's `convert('L')` / `convert('RGB')`), within
//! size and decoder limits; the transforms that follow are [`super::transforms::Pipeline`]'s.

use super::transforms::Image;
use crate::{Error, Result};
use std::path::Path;

/// Largest accepted width or height: a file declaring more is refused before decoding allocates (a PNG header
/// can claim 100000×100000 pixels in a few bytes).
pub const MAX_SIDE: u32 = 16_384;
/// Largest image file read (64 MiB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Decoder memory budget (512 MiB): an image whose decoding would allocate more is refused.
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

/// `path: cannot read image: {e}`, the one form of every error here.
fn image_error(path: &Path, e: &dyn std::fmt::Display) -> Error {
    Error::new(format!("{}: cannot read image: {e}", path.display()))
}

/// Opens an image file: a regular file (a FIFO named `x.png` would block, a device never end) of at most
/// [`MAX_FILE_BYTES`], refused before anything reads it.
fn open_image(path: &Path) -> Result<std::fs::File> {
    let (file, len) = crate::files::open_regular(path).map_err(|e| image_error(path, &e))?;
    if len > MAX_FILE_BYTES {
        return Err(image_error(
            path,
            &format_args!(
                "{len} bytes is more than the {MAX_FILE_BYTES}-byte limit for an image file"
            ),
        ));
    }
    Ok(file)
}

/// Reads a whole image file, refusing anything but a regular file of at most [`MAX_FILE_BYTES`].
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    crate::files::read_limited(open_image(path)?, MAX_FILE_BYTES).map_err(|e| image_error(path, &e))
}

/// Decodes image bytes (named `origin` in errors) within the side and memory limits.
fn decode(bytes: &[u8], origin: &Path, max_alloc: u64) -> Result<image::DynamicImage> {
    let reader = reader_with_limits(
        image::ImageReader::new(std::io::Cursor::new(bytes)),
        origin,
        max_alloc,
    )?;
    // The JPEG decoder fills what a truncated file lacks and succeeds; Pillow (and so torchvision) refuses it.
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err(image_error(
            origin,
            &"truncated JPEG (the data ends before its end-of-image marker)",
        ));
    }
    let img = reader.decode().map_err(|e| image_error(origin, &e))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(image_error(origin, &"image has no pixels"));
    }
    Ok(img)
}

/// Whether a JPEG's bytes reach its end-of-image marker (`FF D9`), found by walking its segments and, after each
/// start of scan, its entropy-coded data (where a `FF` byte is followed by `00` or a restart marker, `D0`–`D7`).
/// Bytes after the marker are allowed (some cameras pad their files).
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xff, 0xd8]) {
        return false;
    }
    let mut pos = 2;
    loop {
        // A marker: `FF`, any number of fill `FF`s, then its code.
        if bytes.get(pos) != Some(&0xff) {
            return false;
        }
        while bytes.get(pos + 1) == Some(&0xff) {
            pos += 1;
        }
        let Some(&code) = bytes.get(pos + 1) else {
            return false;
        };
        pos += 2;
        match code {
            0xd9 => return true,
            // Markers without a segment: restarts, TEM.
            0xd0..=0xd7 | 0x01 => continue,
            _ => {}
        }
        let Some(len) = bytes
            .get(pos..pos + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        else {
            return false;
        };
        if len < 2 || pos + len > bytes.len() {
            return false;
        }
        pos += len;
        if code == 0xda {
            // Entropy-coded data, up to the next marker that is not a stuffed byte or a restart.
            loop {
                let Some(i) = bytes[pos..].iter().position(|&b| b == 0xff) else {
                    return false;
                };
                pos += i;
                match bytes.get(pos + 1) {
                    None => return false,
                    Some(0x00 | 0xd0..=0xd7) => pos += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

/// What [`probe`] reads from a file's header without decoding the pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Height, pixels.
    pub h: usize,
    /// Width, pixels.
    pub w: usize,
    /// Whether the pixels are gray (PIL modes `L`, `LA`, `I;16`): no colour to lose in `convert('L')`.
    pub gray: bool,
}

fn reader_with_limits<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
    origin: &Path,
    max_alloc: u64,
) -> Result<image::ImageReader<R>> {
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| image_error(origin, &e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits);
    Ok(reader)
}

/// Reads the header of an image file (format from its first bytes, not its name): size and whether it is gray.
/// Cheap (no pixel data is decoded), so a damaged pixel stream passes and is found by [`decode_image`].
pub fn probe(path: &Path) -> Result<Header> {
    let file = std::io::BufReader::new(open_image(path)?);
    probe_reader(image::ImageReader::new(file), path)
}

/// [`probe`] on an image file's bytes (named `origin` in errors).
pub fn probe_bytes(bytes: &[u8], origin: &Path) -> Result<Header> {
    probe_reader(image::ImageReader::new(std::io::Cursor::new(bytes)), origin)
}

fn probe_reader<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
    path: &Path,
) -> Result<Header> {
    use image::ImageDecoder;
    let err = |e: &dyn std::fmt::Display| image_error(path, e);
    let decoder = reader_with_limits(reader, path, MAX_DECODE_BYTES)?
        .into_decoder()
        .map_err(|e| err(&e))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(err(&"image has no pixels"));
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(err(&format_args!(
            "{w}×{h} pixels is more than the {MAX_SIDE}-pixel limit on a side"
        )));
    }
    use image::ColorType as C;
    let gray = matches!(decoder.color_type(), C::L8 | C::La8 | C::L16 | C::La16);
    Ok(Header {
        h: h as usize,
        w: w as usize,
        gray,
    })
}

/// Reads an image file ([`MAX_FILE_BYTES`] at most) and decodes it to `c` channels, as [`decode_image`].
pub fn read_image(path: &Path, c: usize) -> Result<Image> {
    decode_image(&read_file(path)?, path, c)
}

/// Decodes an image (PNG, JPEG, BMP, PPM/PGM, TIFF, WebP; named `origin` in errors) to `c` channels (1 or 3) the
/// way PIL's `Image.open(f).convert('L')` / `.convert('RGB')` does: gray replicated to RGB, palette expanded,
/// alpha dropped (no compositing), RGB to L with [`luma`](super::transforms::luma); 16-bit gray clipped to 255
/// (PIL's `I;16` → `L`), 16-bit colour to its high byte (PIL reads such PNGs as 8-bit `RGB`). Lossless formats
/// decode to PIL's pixels exactly; JPEG decoders differ from libjpeg by a level or two on some pixels.
pub fn decode_image(bytes: &[u8], origin: &Path, c: usize) -> Result<Image> {
    decode_image_within(bytes, origin, c, MAX_DECODE_BYTES)
}

/// [`decode_image`] with a decoder memory budget of `max_alloc` bytes instead of [`MAX_DECODE_BYTES`] (`serve`
/// decodes uploads within a smaller one).
pub fn decode_image_within(bytes: &[u8], origin: &Path, c: usize, max_alloc: u64) -> Result<Image> {
    use image::DynamicImage as D;
    assert!(c == 1 || c == 3, "decode_image: 1 or 3 channels, not {c}");
    let img = decode(bytes, origin, max_alloc)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    // (values, channels): gray or RGB, 8 bits, alpha dropped.
    let (pixels, from) = match img {
        D::ImageLuma8(g) => (g.into_raw(), 1),
        D::ImageLumaA8(g) => (g.into_raw().chunks_exact(2).map(|p| p[0]).collect(), 1),
        D::ImageLuma16(g) => (g.into_raw().iter().map(|&v| v.min(255) as u8).collect(), 1),
        D::ImageLumaA16(g) => (
            g.into_raw()
                .chunks_exact(2)
                .map(|p| p[0].min(255) as u8)
                .collect(),
            1,
        ),
        D::ImageRgb8(g) => (g.into_raw(), 3),
        D::ImageRgba8(g) => (
            g.into_raw()
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
            3,
        ),
        D::ImageRgb16(g) => (g.into_raw().iter().map(|&v| (v >> 8) as u8).collect(), 3),
        D::ImageRgba16(g) => (
            g.into_raw()
                .chunks_exact(4)
                .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
                .collect(),
            3,
        ),
        other => (other.to_rgb8().into_raw(), 3),
    };
    Ok(Image {
        pixels,
        h,
        w,
        c: from,
    }
    .with_channels(c))
}
