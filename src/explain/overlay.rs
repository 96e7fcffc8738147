//! The picture of an explanation: a heatmap in [`viridis`] blended over the image, as 8-bit RGB and as PNG.

use super::colormap::viridis;
use crate::data::Image;
use crate::error::Context;
use crate::Result;

/// How much of the heatmap's colour a pixel takes (the rest is the image's).
pub const HEAT_ALPHA: f32 = 0.5;

/// How bright a pixel the network never saw (cropped away by the preprocessing) is drawn, against its own.
const UNSEEN_BRIGHTNESS: f32 = 0.35;

/// `map` scaled to `[0, 1]` by its maximum (all zeros when nothing is positive).
pub fn normalized(map: &[f32]) -> Vec<f32> {
    let max = map.iter().fold(0f32, |m, &v| m.max(v));
    map.iter()
        .map(|&v| if max > 0.0 { (v / max).max(0.0) } else { 0.0 })
        .collect()
}

/// `img` (1 or 3 channels) as RGB with `heat` (`[h·w]`, each in `[0, 1]`, `None` for pixels the network never
/// saw, drawn darkened) blended over it in viridis with weight [`HEAT_ALPHA`].
pub fn blend(img: &Image, heat: &[Option<f32>]) -> Image {
    assert_eq!(heat.len(), img.h * img.w, "one heat value per pixel");
    let mut pixels = Vec::with_capacity(img.h * img.w * 3);
    for (px, h) in img.pixels.chunks_exact(img.c).zip(heat) {
        let rgb = if img.c == 3 {
            [px[0], px[1], px[2]]
        } else {
            [px[0]; 3]
        };
        match h {
            Some(t) => {
                let color = viridis(*t);
                for (v, c) in rgb.iter().zip(color) {
                    pixels.push(
                        ((1.0 - HEAT_ALPHA) * *v as f32 + HEAT_ALPHA * c as f32).round() as u8,
                    );
                }
            }
            None => pixels.extend(rgb.map(|v| (v as f32 * UNSEEN_BRIGHTNESS) as u8)),
        }
    }
    Image::new(pixels, img.h, img.w, 3).expect("h·w·3 pixels")
}

/// An RGB or grey image encoded as PNG.
pub fn png(img: &Image) -> Result<Vec<u8>> {
    let color = if img.c == 3 {
        image::ExtendedColorType::Rgb8
    } else {
        image::ExtendedColorType::L8
    };
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::write_buffer_with_format(
        &mut bytes,
        &img.pixels,
        img.w as u32,
        img.h as u32,
        color,
        image::ImageFormat::Png,
    )
    .context("encoding the heatmap as PNG")?;
    Ok(bytes.into_inner())
}
