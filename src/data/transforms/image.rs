//! The 8-bit image as PIL holds it ([`Image`]: 1 or 3 channels, interleaved), its colour conversions, and
//! torchvision's operations on one image: crops (and the random draws of their boxes), the horizontal flip, and
//! `ToTensor` + `Normalize` into a planar tensor.

use super::{py_round, resize_to, uniform};
use rand::Rng;

/// An 8-bit image as PIL holds it: `pixels` is `h×w×c` interleaved (row-major, the `c` channel values of a pixel
/// side by side), `c` = 1 (PIL mode `L`) or 3 (`RGB`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// `[h, w, c]` u8.
    pub pixels: Vec<u8>,
    /// Height, pixels.
    pub h: usize,
    /// Width, pixels.
    pub w: usize,
    /// Channels: 1 or 3.
    pub c: usize,
}

impl Image {
    /// An image from its pixels; `None` unless `pixels.len() == h·w·c` and `h, w, c > 0`.
    pub fn new(pixels: Vec<u8>, h: usize, w: usize, c: usize) -> Option<Image> {
        (h > 0 && w > 0 && c > 0 && h.checked_mul(w)?.checked_mul(c)? == pixels.len())
            .then_some(Image { pixels, h, w, c })
    }

    /// PIL's `convert('L')` of an RGB image (`L = (19595 R + 38470 G + 7471 B + 2^15) >> 16`); a copy if `c = 1`.
    pub fn to_gray(&self) -> Image {
        if self.c == 1 {
            return self.clone();
        }
        let pixels = self
            .pixels
            .chunks_exact(self.c)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect();
        Image {
            pixels,
            h: self.h,
            w: self.w,
            c: 1,
        }
    }

    /// PIL's `convert('RGB')` of an L image (the value replicated); a copy if `c = 3`.
    pub fn to_rgb(&self) -> Image {
        if self.c == 3 {
            return self.clone();
        }
        let pixels = self.pixels.iter().flat_map(|&v| [v, v, v]).collect();
        Image {
            pixels,
            h: self.h,
            w: self.w,
            c: 3,
        }
    }

    /// This image with `c` channels (1 or 3), converted as PIL's `convert` does; panics on another `c`.
    pub fn with_channels(self, c: usize) -> Image {
        match (self.c, c) {
            (a, b) if a == b => self,
            (_, 1) => self.to_gray(),
            (_, 3) => self.to_rgb(),
            _ => panic!("images have 1 or 3 channels, not {c}"),
        }
    }
}

/// PIL's ITU-R 601-2 luma of one RGB pixel (`L24(rgb) >> 16` in Pillow's Convert.c).
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((19595 * r as u32 + 38470 * g as u32 + 7471 * b as u32 + 0x8000) >> 16) as u8
}

/// PIL's `img.crop((left, top, left + w, top + h))`: the `h×w` window at `(top, left)`, which may reach outside
/// the image; pixels outside are 0.
pub fn crop(img: &Image, top: isize, left: isize, h: usize, w: usize) -> Image {
    let c = img.c;
    let mut pixels = vec![0u8; h * w * c];
    // Columns of the window that fall inside the image.
    let x0 = (-left).clamp(0, w as isize) as usize;
    let x1 = (img.w as isize - left).clamp(0, w as isize) as usize;
    for (y, row) in pixels.chunks_exact_mut(w * c).enumerate() {
        let sy = y as isize + top;
        if sy < 0 || sy >= img.h as isize || x0 >= x1 {
            continue;
        }
        let sx0 = (x0 as isize + left) as usize;
        let src = &img.pixels[(sy as usize * img.w + sx0) * c..][..(x1 - x0) * c];
        row[x0 * c..x1 * c].copy_from_slice(src);
    }
    Image { pixels, h, w, c }
}

/// Offset of a centered crop of `crop` pixels along an axis of `size`, as torchvision's `center_crop` computes it:
/// zero padding `(crop − size) // 2` before when the crop is larger, else `int(round((size − crop) / 2.0))`.
pub fn center_offset(size: usize, crop: usize) -> isize {
    if crop > size {
        -(((crop - size) / 2) as isize)
    } else {
        py_round((size - crop) as f64 / 2.0) as isize
    }
}

/// torchvision's `CenterCrop((h, w))`, zero-padding an image smaller than the crop.
pub fn center_crop(img: &Image, h: usize, w: usize) -> Image {
    crop(img, center_offset(img.h, h), center_offset(img.w, w), h, w)
}

/// torchvision's `F.resized_crop` on a PIL image: `crop(top, left, h, w)`, then Pillow's bilinear resize of the
/// crop to `out_h×out_w`.
pub fn resized_crop(
    img: &Image,
    top: usize,
    left: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> Image {
    let cut = crop(img, top as isize, left as isize, h, w);
    resize_to(&cut, out_h, out_w)
}

/// torchvision's `(0.08, 1.0)` area range of `RandomResizedCrop`.
pub const RRC_SCALE: (f64, f64) = (0.08, 1.0);
/// torchvision's `(3/4, 4/3)` aspect-ratio range of `RandomResizedCrop`.
pub const RRC_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// `RandomResizedCrop.get_params` of torchvision for an `h×w` image: up to 10 tries of an area fraction uniform in
/// `scale` and a log-uniform aspect ratio (width/height) in `ratio`, `w' = round(√(area·r))`,
/// `h' = round(√(area/r))`, accepted when `0 < w' ≤ w` and `0 < h' ≤ h` with a uniform offset; otherwise the
/// central crop of the whole image, clamped to the ratio range. Returns `(top, left, h', w')`. The numbers come from
/// `rng`, not torch's generator, so the boxes differ from a PyTorch run; the rule is the same.
pub fn random_resized_crop_params<R: Rng + ?Sized>(
    h: usize,
    w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut R,
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (lo, hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, lo, hi).exp();
        let cw = py_round((target_area * aspect).sqrt());
        let ch = py_round((target_area / aspect).sqrt());
        if 0 < cw && cw as usize <= w && 0 < ch && ch as usize <= h {
            let (cw, ch) = (cw as usize, ch as usize);
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (min_r, max_r) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (ch, cw) = if in_ratio < min_r {
        ((py_round(w as f64 / min_r) as usize).max(1), w)
    } else if in_ratio > max_r {
        (h, (py_round(h as f64 * max_r) as usize).max(1))
    } else {
        (h, w)
    };
    (
        (h - ch.min(h)) / 2,
        (w - cw.min(w)) / 2,
        ch.min(h),
        cw.min(w),
    )
}

/// `RandomCrop.get_params` after padding the `h×w` image by `padding` on every side: a uniform offset
/// `(top, left)` into the padded image for a `th×tw` crop (`(0, 0)` without drawing when the sizes are equal).
/// `None` when the padded image is smaller than the crop (torchvision raises `ValueError`).
pub fn random_crop_params<R: Rng + ?Sized>(
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
    padding: usize,
    rng: &mut R,
) -> Option<(usize, usize)> {
    let (ph, pw) = (h + 2 * padding, w + 2 * padding);
    if ph < th || pw < tw {
        return None;
    }
    if (ph, pw) == (th, tw) {
        return Some((0, 0));
    }
    let top = rng.random_range(0..=ph - th);
    let left = rng.random_range(0..=pw - tw);
    Some((top, left))
}

/// torchvision's `F.pad(img, padding)` (zeros) then `F.crop(top, left, th, tw)`, `(top, left)` counted in the
/// padded image.
pub fn pad_crop(
    img: &Image,
    padding: usize,
    top: usize,
    left: usize,
    th: usize,
    tw: usize,
) -> Image {
    let p = padding as isize;
    crop(img, top as isize - p, left as isize - p, th, tw)
}

/// Mirrors an `h×w` image left to right, in place: every row of `w` values reversed, so also a flip along W of
/// an NCHW tensor (`torch.flip(x, [3])`).
pub fn hflip<T>(img: &mut [T], w: usize) {
    for row in img.chunks_exact_mut(w) {
        row.reverse();
    }
}

/// Mirrors an image left to right (`F.hflip`, PIL's `FLIP_LEFT_RIGHT`), in place.
pub fn hflip_image(img: &mut Image) {
    let (w, c) = (img.w, img.c);
    if c == 1 {
        hflip(&mut img.pixels, w);
        return;
    }
    for row in img.pixels.chunks_exact_mut(w * c) {
        for x in 0..w / 2 {
            for b in 0..c {
                row.swap(x * c + b, (w - 1 - x) * c + b);
            }
        }
    }
}

/// `ToTensor` then `Normalize(mean, std)` (per channel, if given) of an interleaved image into `dst`, laid out
/// `[c, h, w]` (planar, as torchvision's tensors): `dst[ch·h·w + y·w + x] = (pixel/255 − mean[ch]) / std[ch]`.
pub fn to_tensor_chw(img: &Image, dst: &mut [f32], normalize: Option<(&[f32], &[f32])>) {
    let (plane, c) = (img.h * img.w, img.c);
    assert_eq!(dst.len(), plane * c, "to_tensor_chw: lengths differ");
    // u8 input has 256 values: each channel's results, computed with the same f32 operations, in a table.
    for (b, out) in dst.chunks_exact_mut(plane).enumerate() {
        let mut table = [0f32; 256];
        for (v, t) in table.iter_mut().enumerate() {
            *t = v as f32 / 255.0;
            if let Some((m, s)) = normalize {
                *t = (*t - m[b]) / s[b];
            }
        }
        if c == 1 {
            for (d, &p) in out.iter_mut().zip(&img.pixels) {
                *d = table[p as usize];
            }
        } else {
            for (d, px) in out.iter_mut().zip(img.pixels.chunks_exact(c)) {
                *d = table[px[b] as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crop_without_padding_is_identity_and_flip_reverses_rows() {
        let src: Vec<u8> = (0..12).collect();
        let img = Image::new(src.clone(), 3, 4, 1).unwrap();
        let random_crop = |pad, rng: &mut rand_chacha::ChaCha8Rng| {
            let (top, left) = random_crop_params(3, 4, 3, 4, pad, rng).unwrap();
            pad_crop(&img, pad, top, left, 3, 4).pixels
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert_eq!(random_crop(0, &mut rng), src);
        let mut f = src.clone();
        hflip(&mut f, 4);
        assert_eq!(&f[..4], &[3, 2, 1, 0]);
        // With padding, every output pixel is either 0 or a source pixel.
        let c = random_crop(2, &mut rng);
        assert!(c.iter().all(|v| *v == 0 || src.contains(v)));
    }

    /// [`to_tensor_chw`] of a one-channel image whose one row is `pixels`.
    fn to_tensor(pixels: &[u8], normalize: Option<(&[f32], &[f32])>) -> Vec<f32> {
        let img = Image::new(pixels.to_vec(), 1, pixels.len(), 1).unwrap();
        let mut t = vec![0.0f32; pixels.len()];
        to_tensor_chw(&img, &mut t, normalize);
        t
    }

    #[test]
    fn to_tensor_divides_by_255() {
        let t = to_tensor(&[0, 51, 255], None);
        assert_eq!(t, vec![0.0, 51.0f32 / 255.0, 1.0]);
        let d = to_tensor(&[255, 0], Some((&[0.5], &[0.5])));
        assert_eq!(d, [1.0, -1.0]);
    }

    #[test]
    fn python_rounding_ties_to_even() {
        assert_eq!(
            [0.5, 1.5, 2.5, 6.5, 5.5, 2.4999].map(py_round),
            [0, 2, 2, 6, 6, 2]
        );
        // CenterCrop offsets: int(round((size - crop) / 2.0)), or minus the padding before.
        assert_eq!(center_offset(19, 8), 6);
        assert_eq!(center_offset(20, 7), 6);
        assert_eq!(center_offset(5, 9), -2);
        assert_eq!(center_offset(6, 6), 0);
    }

    #[test]
    fn random_resized_crop_params_bounds_fallback_and_seeds() {
        for (h, w) in [(28, 28), (32, 32), (375, 500), (1, 1), (3, 200), (200, 3)] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(h as u64 * 1000 + w as u64);
            for _ in 0..500 {
                let (t, l, ch, cw) =
                    random_resized_crop_params(h, w, RRC_SCALE, RRC_RATIO, &mut rng);
                assert!(
                    ch >= 1 && cw >= 1 && t + ch <= h && l + cw <= w,
                    "{h}×{w}: {t} {l} {ch} {cw}"
                );
            }
        }
        // In range: area fraction within scale (up to rounding), ratio within range.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..500 {
            let (_, _, ch, cw) =
                random_resized_crop_params(500, 500, RRC_SCALE, RRC_RATIO, &mut rng);
            if (ch, cw) != (500, 500) {
                let r = cw as f64 / ch as f64;
                assert!((0.74..=1.35).contains(&r), "{ch}×{cw}");
                let a = (ch * cw) as f64 / 250_000.0;
                assert!((0.075..=1.0).contains(&a), "{ch}×{cw}");
            }
        }
        // Fallback: an impossible scale gives the central crop clamped to the ratio range.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        assert_eq!(
            random_resized_crop_params(10, 100, (2.0, 3.0), RRC_RATIO, &mut rng),
            (0, 43, 10, 13) // in_ratio 10 > 4/3: h = 10, w = round(10 · 4/3) = 13
        );
        assert_eq!(
            random_resized_crop_params(100, 10, (2.0, 3.0), RRC_RATIO, &mut rng),
            (43, 0, 13, 10) // in_ratio 0.1 < 3/4: w = 10, h = round(10 / 0.75) = 13
        );
        assert_eq!(
            random_resized_crop_params(30, 32, (2.0, 3.0), RRC_RATIO, &mut rng),
            (0, 0, 30, 32) // ratio in range: the whole image
        );
        // Determinism per seed.
        let draw = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            (0..20)
                .map(|_| random_resized_crop_params(64, 48, RRC_SCALE, RRC_RATIO, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    #[test]
    fn random_crop_params_bounds() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let (t, l) = random_crop_params(32, 32, 32, 32, 4, &mut rng).unwrap();
            assert!(t <= 8 && l <= 8);
            seen.insert((t, l));
        }
        assert_eq!(seen.len(), 81); // every offset of the padded 40×40 image
        assert_eq!(
            random_crop_params(32, 32, 40, 40, 4, &mut rng),
            Some((0, 0))
        );
        assert_eq!(random_crop_params(10, 32, 32, 32, 4, &mut rng), None);
    }
}
