//! Image files for `resnet predict`: PNG or JPEG of any size, to 8-bit grayscale as PIL's `convert('L')`,
//! resized like training (`Resize(size)` on the shorter side, Pillow-exact bilinear).

use super::transforms::{resize_like_pil, resize_shorter_side};
use crate::{Error, Result};
use std::path::Path;

/// Largest accepted width or height: a file declaring more is refused before decoding allocates (a PNG header
/// can claim 100000×100000 pixels in a few bytes).
pub const MAX_SIDE: u32 = 16_384;
/// Largest image file read (64 MiB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Decoder memory budget (512 MiB): an image whose decoding would allocate more is refused.
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

/// A decoded grayscale image: `pixels [h, w]` row-major.
pub struct GrayImage {
    /// Luma values, `[h, w]` row-major, 0 (black) to 255 (white).
    pub pixels: Vec<u8>,
    /// Height, pixels.
    pub h: usize,
    /// Width, pixels.
    pub w: usize,
}

/// Reads a PNG or JPEG and converts it to grayscale with PIL's ITU-R 601-2 luma
/// (`L = (19595 R + 38470 G + 7471 B + 2^15) >> 16`; alpha ignored, as `Image.convert('L')` does).
pub fn read_gray(path: &Path) -> Result<GrayImage> {
    let err = |e: &dyn std::fmt::Display| {
        Error::new(format!("{}: cannot read image: {e}", path.display()))
    };
    let len = std::fs::metadata(path).map_err(|e| err(&e))?.len();
    if len > MAX_FILE_BYTES {
        return Err(err(&format_args!(
            "{len} bytes is more than the {MAX_FILE_BYTES}-byte limit for an image file"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(&e))?;
    decode_gray(&bytes, path)
}

/// Decodes the bytes of a PNG or JPEG file (named `origin` in errors) to grayscale, as [`read_gray`].
pub fn decode_gray(bytes: &[u8], origin: &Path) -> Result<GrayImage> {
    let err = |e: &dyn std::fmt::Display| {
        Error::new(format!("{}: cannot read image: {e}", origin.display()))
    };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(&e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| err(&e))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(err(&"image has no pixels"));
    }
    let pixels = match img {
        image::DynamicImage::ImageLuma8(g) => g.into_raw(),
        other => {
            let rgb = other.to_rgb8();
            rgb.pixels()
                .map(|p| {
                    let [r, g, b] = p.0;
                    ((19595 * r as u32 + 38470 * g as u32 + 7471 * b as u32 + 0x8000) >> 16) as u8
                })
                .collect()
        }
    };
    Ok(GrayImage { pixels, h, w })
}

/// `read_gray`, then `Resize(size)` (shorter side to `size`) and `ToTensor` (÷255): returns `(values, h, w)`.
pub fn load_for_model(path: &Path, size: usize) -> Result<(Vec<f32>, usize, usize)> {
    Ok(for_model(read_gray(path)?, size))
}

/// `Resize(size)` (shorter side to `size`) and `ToTensor` (÷255) of a decoded image: returns `(values, h, w)`.
pub fn for_model(img: GrayImage, size: usize) -> (Vec<f32>, usize, usize) {
    let (oh, ow) = resize_shorter_side(img.h, img.w, size);
    let resized = if (oh, ow) == (img.h, img.w) {
        img.pixels
    } else {
        resize_like_pil(&img.pixels, img.h, img.w, oh, ow)
    };
    (super::transforms::to_tensor(&resized), oh, ow)
}
