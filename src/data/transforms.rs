//! Image transforms, bit-exact with what the chapter ran: torchvision's `Resize(size)` on a PIL image (Pillow's
//! bilinear resampling, result rounded to u8), `ToTensor` (÷255), optional `Normalize`, and optional augmentation
//! (random crop with zero padding, random horizontal flip).
//!
//! They take an [`Image`] of 1 (L) or 3 (RGB) channels, interleaved `h×w×c` as PIL stores it, and follow
//! torchvision's definitions on PIL images: [`resize`] (`Resize(size)`), [`center_crop`] (`CenterCrop`),
//! [`resized_crop`] + [`random_resized_crop_params`] (`RandomResizedCrop`), [`pad_crop`] + [`random_crop_params`]
//! (`RandomCrop(size, padding)`), [`hflip_image`] (`RandomHorizontalFlip`), [`to_tensor_chw`] (`ToTensor` +
//! `Normalize(mean[c], std[c])`), and on the tensor after them [`RandomErasing`] ([`random_erasing_params`] +
//! [`erase`]). A [`Pipeline`] chains them; the presets are [`Pipeline::cifar`], [`Pipeline::imagenet`] and
//! [`TransformConfig`](super::TransformConfig) (the chapter's).

use crate::{bail, Error, Result};
use rand::Rng;

/// Input sizes (the shorter side after resizing, `--resize`) every command accepts.
pub const INPUT_SIZES: std::ops::RangeInclusive<usize> = 8..=1024;

/// Refuses a `--resize` outside [`INPUT_SIZES`].
pub fn check_resize(size: usize) -> Result<()> {
    if !INPUT_SIZES.contains(&size) {
        bail!(
            "--resize must be between {} and {}, got {size}",
            INPUT_SIZES.start(),
            INPUT_SIZES.end()
        );
    }
    Ok(())
}

/// Fixed-point precision of Pillow's 8-bit resampling (`32 - 8 - 2`): coefficients are scaled by 2²².
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Filter weights of one resampling pass (one axis), as Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`
/// compute them: output pixel `o` reads input pixels `start[o]..start[o] + count[o]` with weights
/// `k[o·ksize..][..count[o]]` (fixed point, each row sums to ≈ 2²²).
#[derive(Clone, Debug)]
struct Coeffs {
    ksize: usize,
    start: Vec<usize>,
    count: Vec<usize>,
    k: Vec<i32>,
}

impl Coeffs {
    /// Bilinear (triangle, support 1) weights from `in_size` to `out_size` pixels. When shrinking, the support is
    /// widened by the scale factor (Pillow's antialiasing).
    fn bilinear(in_size: usize, out_size: usize) -> Coeffs {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // bilinear support 1.0 × filterscale
        let ksize = support.ceil() as usize * 2 + 1;
        let mut c = Coeffs {
            ksize,
            start: Vec::with_capacity(out_size),
            count: Vec::with_capacity(out_size),
            k: vec![0; out_size * ksize],
        };
        let ss = 1.0 / filterscale;
        let mut w = vec![0.0f64; ksize];
        for o in 0..out_size {
            let center = (o as f64 + 0.5) * scale;
            // C's `(int)` conversion truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let count = xmax.saturating_sub(xmin);
            let mut total = 0.0f64;
            for (x, wx) in w[..count].iter_mut().enumerate() {
                let t = ((x + xmin) as f64 - center + 0.5) * ss;
                *wx = bilinear_filter(t);
                total += *wx;
            }
            let row = &mut c.k[o * ksize..][..count];
            for (kx, &wx) in row.iter_mut().zip(&w[..count]) {
                let wx = if total != 0.0 { wx / total } else { wx };
                let scaled = wx * (1u32 << PRECISION_BITS) as f64;
                *kx = if wx < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            c.start.push(xmin);
            c.count.push(count);
        }
        c
    }

    /// Weights for output pixel `o` and the first input pixel they apply to.
    #[inline]
    fn row(&self, o: usize) -> (usize, &[i32]) {
        (self.start[o], &self.k[o * self.ksize..][..self.count[o]])
    }
}

#[inline]
fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's rounding of a fixed-point sum to u8 (`clip8`): shift out the precision, clamp to 0..=255.
#[inline]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A precomputed bilinear resize from `in_h×in_w` to `out_h×out_w` u8 pixels of `c` interleaved channels,
/// bit-exact with Pillow's `Image.resize((out_w, out_h), Image.BILINEAR)` on a mode-`L` (`c = 1`) or `RGB`
/// (`c = 3`) image: a horizontal pass (skipped when the width is unchanged) into a u8 intermediate, then a
/// vertical pass (skipped when the height is unchanged), each in 22-bit fixed point starting from ½ (rounding).
/// Pillow resamples every band with the same weights, so each channel is the one-channel resize of that channel.
/// Build once, apply to every image of that size.
#[derive(Clone, Debug)]
pub struct PilResize {
    c: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    horizontal: Option<Coeffs>,
    vertical: Option<Coeffs>,
}

impl PilResize {
    /// Plans the resize of `c`-channel images. Panics if any size or `c` is 0 (Pillow refuses empty images too).
    pub fn new(in_h: usize, in_w: usize, out_h: usize, out_w: usize, c: usize) -> PilResize {
        assert!(c > 0, "resize: no channels");
        assert!(
            in_h > 0 && in_w > 0 && out_h > 0 && out_w > 0,
            "resize {in_h}×{in_w} → {out_h}×{out_w}: sizes must be positive"
        );
        PilResize {
            c,
            in_h,
            in_w,
            out_h,
            out_w,
            horizontal: (in_w != out_w).then(|| Coeffs::bilinear(in_w, out_w)),
            vertical: (in_h != out_h).then(|| Coeffs::bilinear(in_h, out_h)),
        }
    }

    /// Resizes `src` (`in_h×in_w×c` u8) into `dst` (`out_h×out_w×c` u8). Panics if the lengths differ from the
    /// plan.
    pub fn apply(&self, src: &[u8], dst: &mut [u8]) {
        let c = self.c;
        assert_eq!(
            src.len(),
            self.in_h * self.in_w * c,
            "resize: source length"
        );
        assert_eq!(
            dst.len(),
            self.out_h * self.out_w * c,
            "resize: destination length"
        );
        match (&self.horizontal, &self.vertical) {
            (None, None) => dst.copy_from_slice(src),
            (Some(hc), None) => horizontal_pass(hc, src, self.in_w, dst, self.out_w, c),
            (None, Some(vc)) => vertical_pass(vc, src, dst, self.out_w * c),
            (Some(hc), Some(vc)) => {
                let mut tmp = vec![0u8; self.in_h * self.out_w * c];
                horizontal_pass(hc, src, self.in_w, &mut tmp, self.out_w, c);
                vertical_pass(vc, &tmp, dst, self.out_w * c);
            }
        }
    }
}

/// Pillow's `ImagingResampleHorizontal_8bpc`: every row of `src` (width `in_w`, `ch` interleaved channels) to a
/// row of `dst` (width `out_w`).
fn horizontal_pass(c: &Coeffs, src: &[u8], in_w: usize, dst: &mut [u8], out_w: usize, ch: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { horizontal_pass_avx2(c, src, in_w, dst, out_w, ch) };
    }
    horizontal_pass_portable(c, src, in_w, dst, out_w, ch)
}

/// [`horizontal_pass_portable`] compiled for AVX2; same integer arithmetic, same result.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_pass_avx2(
    c: &Coeffs,
    src: &[u8],
    in_w: usize,
    dst: &mut [u8],
    out_w: usize,
    ch: usize,
) {
    horizontal_pass_portable(c, src, in_w, dst, out_w, ch)
}

#[inline(always)]
fn horizontal_pass_portable(
    c: &Coeffs,
    src: &[u8],
    in_w: usize,
    dst: &mut [u8],
    out_w: usize,
    ch: usize,
) {
    let half = 1i32 << (PRECISION_BITS - 1);
    if ch == 3 {
        for (src_row, dst_row) in src
            .chunks_exact(in_w * 3)
            .zip(dst.chunks_exact_mut(out_w * 3))
        {
            for (o, px) in dst_row.chunks_exact_mut(3).enumerate() {
                let (start, k) = c.row(o);
                let (mut s0, mut s1, mut s2) = (half, half, half);
                for (p, &kx) in src_row[start * 3..(start + k.len()) * 3]
                    .chunks_exact(3)
                    .zip(k)
                {
                    s0 += p[0] as i32 * kx;
                    s1 += p[1] as i32 * kx;
                    s2 += p[2] as i32 * kx;
                }
                px.copy_from_slice(&[clip8(s0), clip8(s1), clip8(s2)]);
            }
        }
        return;
    }
    if ch != 1 {
        for (src_row, dst_row) in src
            .chunks_exact(in_w * ch)
            .zip(dst.chunks_exact_mut(out_w * ch))
        {
            for (o, px) in dst_row.chunks_exact_mut(ch).enumerate() {
                let (start, k) = c.row(o);
                for (b, v) in px.iter_mut().enumerate() {
                    let mut sum = half;
                    for (x, &kx) in k.iter().enumerate() {
                        sum += src_row[(start + x) * ch + b] as i32 * kx;
                    }
                    *v = clip8(sum);
                }
            }
        }
        return;
    }
    for (src_row, dst_row) in src.chunks_exact(in_w).zip(dst.chunks_exact_mut(out_w)) {
        for (o, px) in dst_row.iter_mut().enumerate() {
            let (start, k) = c.row(o);
            let mut sum = half;
            for (&s, &kx) in src_row[start..start + k.len()].iter().zip(k) {
                sum += s as i32 * kx;
            }
            *px = clip8(sum);
        }
    }
}

/// Pillow's `ImagingResampleVertical_8bpc`: columns of `src` to columns of `dst`, both of width `w` values (pixels
/// times channels; every channel of a column is resampled alike) (accumulated a row at a time; the sums, and so the result, are the same as column by column).
fn vertical_pass(c: &Coeffs, src: &[u8], dst: &mut [u8], w: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { vertical_pass_avx2(c, src, dst, w) };
    }
    vertical_pass_portable(c, src, dst, w)
}

/// [`vertical_pass_portable`] compiled for AVX2 (8 × i32 multiplies; SSE2 has no 32-bit multiply to vectorize
/// with). Same integer arithmetic, same result.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_pass_avx2(c: &Coeffs, src: &[u8], dst: &mut [u8], w: usize) {
    vertical_pass_portable(c, src, dst, w)
}

#[inline(always)]
fn vertical_pass_portable(c: &Coeffs, src: &[u8], dst: &mut [u8], w: usize) {
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut acc = vec![0i32; w];
    for (o, dst_row) in dst.chunks_exact_mut(w).enumerate() {
        let (start, k) = c.row(o);
        acc.fill(half);
        for (y, &ky) in k.iter().enumerate() {
            let row = &src[(start + y) * w..][..w];
            for (a, &s) in acc.iter_mut().zip(row) {
                *a += s as i32 * ky;
            }
        }
        for (px, &a) in dst_row.iter_mut().zip(&acc) {
            *px = clip8(a);
        }
    }
}

/// torchvision's `Resize(size)` output size for an `h×w` image (int `size`, no `max_size`): the shorter edge
/// becomes `size`, the longer `int(size · long / short)` (truncated, as Python's `int()`). Returns `(out_h, out_w)`.
/// Panics if `h` or `w` is 0.
pub fn resize_shorter_side(h: usize, w: usize, size: usize) -> (usize, usize) {
    assert!(h > 0 && w > 0, "resize_shorter_side: empty image {h}×{w}");
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if w <= h {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// Zero padding used by augmentation for images of side `size`: `max(1, size / 8)` (3 at 28, 12 at 96).
pub const fn augment_padding(size: usize) -> usize {
    if size / 8 > 1 {
        size / 8
    } else {
        1
    }
}

/// Mirrors an `h×w` image left to right, in place: every row of `w` values reversed, so also a flip along W of
/// an NCHW tensor (`torch.flip(x, [3])`).
pub fn hflip<T>(img: &mut [T], w: usize) {
    for row in img.chunks_exact_mut(w) {
        row.reverse();
    }
}

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

/// Python's `round()` of a float (ties to even, `round(2.5) == 2`), as torchvision's crops use it.
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// torchvision's `Resize(size)` on a PIL image: the shorter side to `size` ([`resize_shorter_side`]), Pillow
/// bilinear with antialiasing; the image itself when the size does not change.
pub fn resize(img: &Image, size: usize) -> Image {
    let (oh, ow) = resize_shorter_side(img.h, img.w, size);
    resize_to(img, oh, ow)
}

/// Pillow's `img.resize((out_w, out_h), Image.BILINEAR)` (a copy when the size is the same).
pub fn resize_to(img: &Image, out_h: usize, out_w: usize) -> Image {
    if (out_h, out_w) == (img.h, img.w) {
        return img.clone();
    }
    let mut pixels = vec![0u8; out_h * out_w * img.c];
    PilResize::new(img.h, img.w, out_h, out_w, img.c).apply(&img.pixels, &mut pixels);
    Image {
        pixels,
        h: out_h,
        w: out_w,
        c: img.c,
    }
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
fn center_offset(size: usize, crop: usize) -> isize {
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

/// torch's `uniform_(a, b)`: `a + (b − a)·u`, `u` uniform in `[0, 1)`.
fn uniform<R: Rng + ?Sized>(rng: &mut R, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.random::<f64>()
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

/// One step of a [`Pipeline`], on u8 images (before `ToTensor`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// `Resize(size)`: shorter side to `size`.
    Resize(usize),
    /// `CenterCrop((h, w))`.
    CenterCrop(usize, usize),
    /// `RandomResizedCrop((h, w), scale, ratio)`.
    RandomResizedCrop {
        /// Output `(h, w)`.
        size: (usize, usize),
        /// Range of the crop's area as a fraction of the image's (torchvision: `(0.08, 1.0)`).
        scale: (f64, f64),
        /// Range of the crop's aspect ratio width/height (torchvision: `(3/4, 4/3)`).
        ratio: (f64, f64),
    },
    /// `RandomCrop((h, w), padding)` with zero padding.
    RandomCrop {
        /// Output `(h, w)`.
        size: (usize, usize),
        /// Zeros added on every side first.
        padding: usize,
    },
    /// `RandomHorizontalFlip(0.5)`.
    HorizontalFlip,
}

impl Step {
    /// Whether the step draws random numbers.
    pub fn is_random(&self) -> bool {
        matches!(
            self,
            Step::RandomResizedCrop { .. } | Step::RandomCrop { .. } | Step::HorizontalFlip
        )
    }
}

/// Checks `Normalize`'s values wherever they come from (flags, a model file): one or three finite means and as
/// many positive, finite stds.
pub fn check_normalize_values(mean: &[f32], std: &[f32]) -> Result<()> {
    let ok = mean.len() == std.len()
        && (mean.len() == 1 || mean.len() == 3)
        && mean.iter().all(|v| v.is_finite())
        && std.iter().all(|v| v.is_finite() && *v > 0.0);
    if !ok {
        bail!("need 1 or 3 finite means and as many positive stds, got {mean:?} and {std:?}");
    }
    Ok(())
}

/// torchvision's `(0.02, 0.33)` area range of `RandomErasing`.
pub const ERASING_SCALE: (f64, f64) = (0.02, 0.33);
/// torchvision's `(0.3, 3.3)` aspect-ratio range (height/width) of `RandomErasing`.
pub const ERASING_RATIO: (f64, f64) = (0.3, 3.3);

/// `RandomErasing.get_params` of torchvision for a tensor of `h×w` pixels: up to 10 tries of an area
/// `h·w·U(scale)` and an aspect ratio (height/width) `exp(U(ln ratio.0, ln ratio.1))`, `eh = round(√(area·r))`,
/// `ew = round(√(area/r))` (Python's `round`, ties to even), accepted when `eh < h` and `ew < w`, then a uniform
/// offset `top` in `0..=h − eh`, `left` in `0..=w − ew`. Returns `Some((top, left, eh, ew))`, or `None` when no
/// try fits (torchvision then leaves the image as it is). A side may round to 0 on tiny images, as in torchvision
/// (the rectangle is then empty). The numbers come from `rng`, not torch's generator, and in f64 where torch
/// draws f32: the same rule and distribution, not the same rectangles as a PyTorch run.
pub fn random_erasing_params<R: Rng + ?Sized>(
    h: usize,
    w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut R,
) -> Option<(usize, usize, usize, usize)> {
    let area = (h * w) as f64;
    let (lo, hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let erase_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, lo, hi).exp();
        let eh = py_round((erase_area * aspect).sqrt());
        let ew = py_round((erase_area / aspect).sqrt());
        if !(eh < h as i64 && ew < w as i64) {
            continue;
        }
        let (eh, ew) = (eh as usize, ew as usize);
        // torch.randint(0, h − eh + 1): the upper bound is exclusive.
        let top = rng.random_range(0..h - eh + 1);
        let left = rng.random_range(0..w - ew + 1);
        return Some((top, left, eh, ew));
    }
    None
}

/// torchvision's `F.erase` with a constant: sets the `eh×ew` rectangle at `(top, left)` of every channel of the
/// `[c, h, w]` tensor `x` to `value`. Panics if `x.len() != c·h·w` or the rectangle reaches outside.
pub fn erase(
    x: &mut [f32],
    c: usize,
    h: usize,
    w: usize,
    (top, left, eh, ew): (usize, usize, usize, usize),
    value: f32,
) {
    assert_eq!(x.len(), c * h * w, "erase: the tensor is not {c}×{h}×{w}");
    assert!(
        top + eh <= h && left + ew <= w,
        "erase: {eh}×{ew} at ({top}, {left}) is outside {h}×{w}"
    );
    for plane in x.chunks_exact_mut(h * w) {
        for row in plane.chunks_exact_mut(w).skip(top).take(eh) {
            row[left..left + ew].fill(value);
        }
    }
}

/// torchvision's `RandomErasing(p, scale, ratio, value=0)`: on the normalized tensor (after `ToTensor` and
/// `Normalize`, where torchvision's training pipelines put it), with probability `p` erase one random rectangle
/// of every channel to 0.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RandomErasing {
    /// Probability that an image is erased at all.
    pub p: f64,
    /// Range of the rectangle's area as a fraction of the image's.
    pub scale: (f64, f64),
    /// Range of the rectangle's aspect ratio height/width.
    pub ratio: (f64, f64),
}

impl RandomErasing {
    /// torchvision's defaults (`scale = (0.02, 0.33)`, `ratio = (0.3, 3.3)`) with probability `p`; an error
    /// unless `0 ≤ p ≤ 1`.
    pub fn new(p: f64) -> Result<RandomErasing> {
        let e = RandomErasing {
            p,
            scale: ERASING_SCALE,
            ratio: ERASING_RATIO,
        };
        e.check()?;
        Ok(e)
    }

    /// Refuses what torchvision refuses (`p` outside 0–1, `scale` outside 0–1), and also reversed or
    /// non-finite ranges and non-positive ratios (torchvision only warns about those; here they are mistakes).
    pub fn check(&self) -> Result<()> {
        let RandomErasing { p, scale, ratio } = *self;
        if !(0.0..=1.0).contains(&p) {
            bail!("random erasing: the probability must be between 0 and 1, got {p}");
        }
        if !(0.0 <= scale.0 && scale.0 <= scale.1 && scale.1 <= 1.0) {
            bail!(
                "random erasing: the scale must be a range (min, max) within 0–1, got ({}, {})",
                scale.0,
                scale.1
            );
        }
        if !(0.0 < ratio.0 && ratio.0 <= ratio.1 && ratio.1.is_finite()) {
            bail!(
                "random erasing: the ratio must be a positive, finite range (min, max), got ({}, {})",
                ratio.0,
                ratio.1
            );
        }
        Ok(())
    }

    /// Applies the transform to the `[c, h, w]` tensor `x`: draws `U[0, 1) < p` (torchvision's
    /// `torch.rand(1) < p`), and if so [`random_erasing_params`] and [`erase`] with 0. Returns the rectangle
    /// erased, `None` when the image was left as it is.
    pub fn apply<R: Rng + ?Sized>(
        &self,
        x: &mut [f32],
        c: usize,
        h: usize,
        w: usize,
        rng: &mut R,
    ) -> Option<(usize, usize, usize, usize)> {
        if rng.random::<f64>() >= self.p {
            return None;
        }
        let rect = random_erasing_params(h, w, self.scale, self.ratio, rng)?;
        erase(x, c, h, w, rect, 0.0);
        Some(rect)
    }
}

/// Longest side a `Resize` may produce (as decoders accept at most 16,384 pixels a side).
pub const MAX_RESIZED_SIDE: usize = 16_384;

/// Largest resize or crop side a pipeline stored in a model file may ask for.
pub const MAX_STORED_SIZE: usize = 4096;

/// torchvision's `(0.08, 1.0)` area range of `RandomResizedCrop`.
pub const RRC_SCALE: (f64, f64) = (0.08, 1.0);
/// torchvision's `(3/4, 4/3)` aspect-ratio range of `RandomResizedCrop`.
pub const RRC_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// A `transforms.Compose`: u8 [`Step`]s, then `ToTensor` and an optional per-channel `Normalize(mean, std)`.
/// A model file stores its evaluation pipeline as JSON, so `predict` and `eval` preprocess as training did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pipeline {
    /// The u8 steps, in order.
    pub steps: Vec<Step>,
    /// `(mean, std)`, one value per channel (or one value for every channel).
    pub normalize: Option<(Vec<f32>, Vec<f32>)>,
    /// `RandomErasing` on the tensor after `Normalize` (training only; the loader applies it). Absent from the
    /// JSON when `None`, so that pipelines stored before it existed read and write the same bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasing: Option<RandomErasing>,
}

impl Pipeline {
    /// The `cifar` preset: training `RandomCrop(32, padding=4)` + `RandomHorizontalFlip()`; evaluation nothing.
    pub fn cifar(train: bool) -> Pipeline {
        let steps = if train {
            vec![
                Step::RandomCrop {
                    size: (32, 32),
                    padding: 4,
                },
                Step::HorizontalFlip,
            ]
        } else {
            Vec::new()
        };
        Pipeline {
            steps,
            normalize: None,
            erasing: None,
        }
    }

    /// The `imagenet` preset: training `RandomResizedCrop(size)` + `RandomHorizontalFlip()`; evaluation
    /// `Resize(size·256/224)` + `CenterCrop(size)` (`Resize(256)` + `CenterCrop(224)` for `size = 224`).
    pub fn imagenet(train: bool, size: usize) -> Pipeline {
        let steps = if train {
            vec![
                Step::RandomResizedCrop {
                    size: (size, size),
                    scale: RRC_SCALE,
                    ratio: RRC_RATIO,
                },
                Step::HorizontalFlip,
            ]
        } else {
            vec![Step::Resize(size * 256 / 224), Step::CenterCrop(size, size)]
        };
        Pipeline {
            steps,
            normalize: None,
            erasing: None,
        }
    }

    /// This pipeline with `Normalize(mean, std)`.
    pub fn with_normalize(mut self, mean: Vec<f32>, std: Vec<f32>) -> Pipeline {
        self.normalize = Some((mean, std));
        self
    }

    /// This pipeline with `RandomErasing` after `Normalize`.
    pub fn with_erasing(mut self, erasing: RandomErasing) -> Pipeline {
        self.erasing = Some(erasing);
        self
    }

    /// Whether any step draws random numbers.
    pub fn is_random(&self) -> bool {
        self.steps.iter().any(Step::is_random) || self.erasing.is_some()
    }

    /// Size `(h, w)` of the output for inputs of size `input` (`None`: sizes vary). An error when the output size
    /// would vary (no crop after the last size-changing step on variable inputs) or a size is 0.
    pub fn output_size(&self, input: Option<(usize, usize)>) -> Result<(usize, usize)> {
        let mut size = input;
        for s in &self.steps {
            size = match *s {
                Step::Resize(n) => {
                    if n == 0 {
                        bail!("Resize: the size must be at least 1");
                    }
                    size.map(|(h, w)| resize_shorter_side(h, w, n))
                }
                Step::CenterCrop(h, w)
                | Step::RandomResizedCrop { size: (h, w), .. }
                | Step::RandomCrop { size: (h, w), .. } => {
                    if h == 0 || w == 0 {
                        bail!("crop to {h}×{w}: sizes must be at least 1");
                    }
                    Some((h, w))
                }
                Step::HorizontalFlip => size,
            };
        }
        match size {
            Some((h, w)) if h > 0 && w > 0 => Ok((h, w)),
            Some((h, w)) => bail!("the transforms would make {h}×{w} images"),
            None => bail!(
                "the images have different sizes and the transforms do not crop them to one size (use a preset with \
                 a crop, e.g. imagenet)"
            ),
        }
    }

    /// Checks the normalization against `c` channels: one value, or `c` values, finite means, positive stds.
    /// Returns `(mean, std)` with `c` values each.
    pub fn normalize_for(&self, c: usize) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        let Some((mean, std)) = &self.normalize else {
            return Ok(None);
        };
        let widen = |v: &Vec<f32>, what: &str| -> Result<Vec<f32>> {
            match v.len() {
                1 => Ok(vec![v[0]; c]),
                n if n == c => Ok(v.clone()),
                n => bail!("normalize: {n} {what} values for {c}-channel images (give 1 or {c})"),
            }
        };
        let (mean, std) = (widen(mean, "mean")?, widen(std, "std")?);
        if let Some((m, s)) = mean
            .iter()
            .zip(&std)
            .find(|(m, s)| !(m.is_finite() && s.is_finite() && **s > 0.0))
        {
            bail!("normalize: need a finite mean and a positive std, got mean {m}, std {s}");
        }
        Ok(Some((mean, std)))
    }

    /// Checks a pipeline read from a model file before it runs on anything: evaluation steps only (no
    /// randomness), every size between 1 and [`MAX_STORED_SIZE`], one or three normalization values per side
    /// with finite means and positive finite stds.
    pub fn check_stored(&self) -> Result<()> {
        for s in &self.steps {
            let sizes: &[usize] = match s {
                Step::Resize(n) => &[*n],
                Step::CenterCrop(h, w) => &[*h, *w],
                _ => bail!("{s:?} is a training step; a stored evaluation pipeline has none"),
            };
            if let Some(bad) = sizes.iter().find(|&&n| n == 0 || n > MAX_STORED_SIZE) {
                bail!("{s:?}: size {bad} is outside 1–{MAX_STORED_SIZE}");
            }
        }
        if let Some(e) = &self.erasing {
            bail!("{e:?} is a training step; a stored evaluation pipeline has none");
        }
        if let Some((m, sd)) = &self.normalize {
            check_normalize_values(m, sd).map_err(|e| Error::new(format!("normalize: {e}")))?;
        }
        Ok(())
    }

    /// Applies the u8 steps to `img`, drawing from `rng` in step order; `ToTensor` and `Normalize` are the
    /// caller's ([`to_tensor_chw`]). An error (naming nothing: the caller adds the image)
    /// when a `RandomCrop` is larger than the padded image, or a `Resize` would make a side longer than
    /// [`MAX_RESIZED_SIDE`].
    pub fn apply<R: Rng + ?Sized>(&self, mut img: Image, rng: &mut R) -> Result<Image> {
        for s in &self.steps {
            img = match *s {
                Step::Resize(n) => {
                    // A very elongated image would grow its longer side far past any real image.
                    let (oh, ow) = resize_shorter_side(img.h, img.w, n);
                    if oh.max(ow) > MAX_RESIZED_SIDE {
                        bail!(
                            "a {}×{} image resized to {n} on its shorter side would be {oh}×{ow}, beyond the \
                             {MAX_RESIZED_SIDE}-pixel limit",
                            img.w,
                            img.h
                        );
                    }
                    resize(&img, n)
                }
                Step::CenterCrop(h, w) => center_crop(&img, h, w),
                Step::RandomResizedCrop {
                    size: (oh, ow),
                    scale,
                    ratio,
                } => {
                    let (t, l, h, w) = random_resized_crop_params(img.h, img.w, scale, ratio, rng);
                    resized_crop(&img, t, l, h, w, oh, ow)
                }
                Step::RandomCrop {
                    size: (th, tw),
                    padding,
                } => {
                    let Some((t, l)) = random_crop_params(img.h, img.w, th, tw, padding, rng)
                    else {
                        bail!(
                            "RandomCrop({th}×{tw}, padding={padding}): the image is only {}×{}",
                            img.h,
                            img.w
                        );
                    };
                    pad_crop(&img, padding, t, l, th, tw)
                }
                Step::HorizontalFlip => {
                    if rng.random_bool(0.5) {
                        hflip_image(&mut img);
                    }
                    img
                }
            };
        }
        Ok(img)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Pillow's resize of the one-channel `h×w` image `src` to `out_h×out_w`.
    fn resize_l(src: &[u8], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<u8> {
        let mut dst = vec![0u8; out_h * out_w];
        PilResize::new(h, w, out_h, out_w, 1).apply(src, &mut dst);
        dst
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(28, 96), (96, 28), (200, 128), (7, 5), (1, 3)] {
            let c = Coeffs::bilinear(i, o);
            for r in 0..o {
                let s: i32 = c.row(r).1.iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= c.ksize as i32,
                    "{i}->{o} row {r}: {s}"
                );
            }
        }
    }

    #[test]
    fn same_size_is_a_copy_and_constant_stays_constant() {
        let src: Vec<u8> = (0..=255).cycle().take(28 * 28).collect();
        assert_eq!(resize_l(&src, 28, 28, 28, 28), src);
        let white = vec![255u8; 9 * 11];
        assert!(resize_l(&white, 9, 11, 30, 36).iter().all(|&v| v == 255));
        assert!(resize_l(&white, 9, 11, 4, 5).iter().all(|&v| v == 255));
    }

    #[test]
    fn shorter_side_rule() {
        assert_eq!(resize_shorter_side(28, 28, 96), (96, 96));
        assert_eq!(resize_shorter_side(37, 23, 96), (154, 96));
        assert_eq!(resize_shorter_side(150, 200, 96), (96, 128));
        assert_eq!(resize_shorter_side(3, 10, 1), (1, 3));
    }

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

    #[test]
    fn erase_sets_the_rectangle_of_every_channel() {
        let (c, h, w) = (2, 4, 5);
        let mut x: Vec<f32> = (1..=(c * h * w) as i32).map(|v| v as f32).collect();
        let before = x.clone();
        erase(&mut x, c, h, w, (1, 2, 2, 3), -0.5);
        for b in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let i = (b * h + y) * w + xx;
                    let inside = (1..3).contains(&y) && (2..5).contains(&xx);
                    assert_eq!(x[i], if inside { -0.5 } else { before[i] }, "{b} {y} {xx}");
                }
            }
        }
        // An empty rectangle (a side rounded to 0 on a tiny image) changes nothing.
        let mut y = before.clone();
        erase(&mut y, c, h, w, (4, 0, 0, 5), 0.0);
        assert_eq!(y, before);
    }

    #[test]
    fn random_erasing_params_bounds_and_offsets() {
        let (s, r) = (ERASING_SCALE, ERASING_RATIO);
        for (h, w) in [
            (28, 28),
            (32, 32),
            (200, 300),
            (3, 64),
            (64, 3),
            (1, 1),
            (2, 2),
        ] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((h * 1000 + w) as u64);
            let (mut top_max, mut left_max, mut top_min) = (false, false, false);
            for _ in 0..4000 {
                let Some((t, l, eh, ew)) = random_erasing_params(h, w, s, r, &mut rng) else {
                    continue;
                };
                assert!(
                    eh < h && ew < w && t + eh <= h && l + ew <= w,
                    "{h}×{w}: {t} {l} {eh} {ew}"
                );
                top_max |= t == h - eh;
                left_max |= l == w - ew;
                top_min |= t == 0;
                // Some real rectangle within ½ pixel of each side has an area fraction in `scale` and an
                // aspect ratio (height/width) in `ratio`: the draw before Python's round.
                let (a, fh, fw) = ((h * w) as f64, eh as f64, ew as f64);
                assert!(
                    (fh + 0.5) * (fw + 0.5) >= s.0 * a,
                    "{h}×{w}: {eh}×{ew} too small"
                );
                assert!(
                    (fh - 0.5) * (fw - 0.5) <= s.1 * a,
                    "{h}×{w}: {eh}×{ew} too large"
                );
                assert!(
                    (fh + 0.5) >= r.0 * (fw - 0.5),
                    "{h}×{w}: {eh}×{ew} too flat"
                );
                assert!(
                    (fh - 0.5) <= r.1 * (fw + 0.5),
                    "{h}×{w}: {eh}×{ew} too tall"
                );
            }
            // The offsets' exclusive bounds `H − h + 1` reach the last row and column.
            if h >= 28 {
                assert!(top_max && left_max && top_min, "{h}×{w}");
            }
        }
        // On 28×28 every call fits (the tiny images above only must not panic).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let fits = (0..1000)
            .filter(|_| random_erasing_params(28, 28, s, r, &mut rng).is_some())
            .count();
        assert_eq!(fits, 1000);
        // An impossible scale never fits, and draws its 10 attempts only.
        assert_eq!(random_erasing_params(28, 28, (1.0, 1.0), r, &mut rng), None);
    }

    #[test]
    fn random_erasing_probability_and_checks() {
        let (c, h, w) = (3, 28, 28);
        let x0 = vec![1.0f32; c * h * w];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for p in [0.0, 0.3, 0.5, 1.0] {
            let e = RandomErasing::new(p).unwrap();
            let n = 20_000;
            let mut erased = 0;
            for _ in 0..n {
                let mut x = x0.clone();
                match e.apply(&mut x, c, h, w, &mut rng) {
                    Some((t, l, eh, ew)) => {
                        erased += 1;
                        let zeros = x.iter().filter(|&&v| v == 0.0).count();
                        assert_eq!(zeros, c * eh * ew, "{t} {l} {eh} {ew}");
                    }
                    None => assert_eq!(x, x0),
                }
            }
            let f = erased as f64 / n as f64;
            // Four standard errors of a proportion of 20,000 (0 and 1 exactly).
            let tol = 4.0 * (p * (1.0 - p) / n as f64).sqrt();
            assert!((f - p).abs() <= tol, "p {p}: erased {f}");
        }
        for bad in [-0.1, 1.1, f64::NAN] {
            let err = RandomErasing::new(bad).unwrap_err().to_string();
            assert!(err.contains("probability must be between 0 and 1"), "{err}");
        }
        let ok = RandomErasing::new(0.5).unwrap();
        for e in [
            RandomErasing {
                scale: (0.3, 0.1),
                ..ok
            },
            RandomErasing {
                scale: (-0.1, 0.3),
                ..ok
            },
            RandomErasing {
                scale: (0.1, 1.5),
                ..ok
            },
        ] {
            assert!(
                e.check().unwrap_err().to_string().contains("scale"),
                "{e:?}"
            );
        }
        for e in [
            RandomErasing {
                ratio: (0.0, 3.3),
                ..ok
            },
            RandomErasing {
                ratio: (3.3, 0.3),
                ..ok
            },
            RandomErasing {
                ratio: (0.3, f64::INFINITY),
                ..ok
            },
        ] {
            assert!(
                e.check().unwrap_err().to_string().contains("ratio"),
                "{e:?}"
            );
        }
    }

    #[test]
    fn erasing_is_a_training_step_stored_pipelines_keep_their_json() {
        // A pipeline without erasing writes the JSON it always wrote, and old JSON reads back without erasing.
        let p = Pipeline::imagenet(false, 224).with_normalize(vec![0.5], vec![0.25]);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"steps":[{"resize":256},{"center_crop":[224,224]}],"normalize":[[0.5],[0.25]]}"#
        );
        let back: Pipeline = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert!(!p.is_random());
        p.check_stored().unwrap();
        let e = p.clone().with_erasing(RandomErasing::new(0.25).unwrap());
        assert!(e.is_random());
        let err = e.check_stored().unwrap_err().to_string();
        assert!(
            err.contains("RandomErasing") && err.contains("training step"),
            "{err}"
        );
        let back: Pipeline = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn pipeline_sizes() {
        let p = Pipeline::imagenet(false, 224);
        assert_eq!(p.steps[0], Step::Resize(256));
        assert_eq!(p.output_size(None).unwrap(), (224, 224));
        assert_eq!(
            Pipeline::cifar(false).output_size(Some((32, 32))).unwrap(),
            (32, 32)
        );
        assert!(Pipeline::cifar(false).output_size(None).is_err());
        let n = Pipeline::default().with_normalize(vec![0.5], vec![0.0]);
        assert!(n.normalize_for(1).is_err());
        let n = Pipeline::default().with_normalize(vec![0.5, 0.5], vec![1.0, 1.0]);
        assert!(n.normalize_for(3).is_err());
        assert_eq!(n.normalize_for(2).unwrap().unwrap().0.len(), 2);
    }
}
