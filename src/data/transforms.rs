//! Image transforms, bit-exact with what the chapter ran: torchvision's `Resize(size)` on a PIL image (Pillow's
//! bilinear resampling, result rounded to u8), `ToTensor` (÷255), optional `Normalize`, and optional augmentation
//! (random crop with zero padding, random horizontal flip).
//!
//! All images here are one channel, `h×w` u8 or f32, row-major.

use crate::{bail, Result};
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

/// A precomputed bilinear resize from `in_h×in_w` to `out_h×out_w` u8 pixels, bit-exact with Pillow's
/// `Image.resize((out_w, out_h), Image.BILINEAR)` on a mode-`L` image: a horizontal pass (skipped when the width
/// is unchanged) into a u8 intermediate, then a vertical pass (skipped when the height is unchanged), each in
/// 22-bit fixed point starting from ½ (rounding). Build once, apply to every image of that size.
#[derive(Clone, Debug)]
pub struct PilResize {
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    horizontal: Option<Coeffs>,
    vertical: Option<Coeffs>,
}

impl PilResize {
    /// Plans the resize. Panics if any size is 0 (Pillow refuses those too).
    pub fn new(in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> PilResize {
        assert!(
            in_h > 0 && in_w > 0 && out_h > 0 && out_w > 0,
            "resize {in_h}×{in_w} → {out_h}×{out_w}: sizes must be positive"
        );
        PilResize {
            in_h,
            in_w,
            out_h,
            out_w,
            horizontal: (in_w != out_w).then(|| Coeffs::bilinear(in_w, out_w)),
            vertical: (in_h != out_h).then(|| Coeffs::bilinear(in_h, out_h)),
        }
    }

    /// Output size `(out_h, out_w)`.
    pub fn out_size(&self) -> (usize, usize) {
        (self.out_h, self.out_w)
    }

    /// Resizes `src` (`in_h×in_w` u8) into `dst` (`out_h×out_w` u8). Panics if the lengths differ from the plan.
    pub fn apply(&self, src: &[u8], dst: &mut [u8]) {
        assert_eq!(src.len(), self.in_h * self.in_w, "resize: source length");
        assert_eq!(
            dst.len(),
            self.out_h * self.out_w,
            "resize: destination length"
        );
        match (&self.horizontal, &self.vertical) {
            (None, None) => dst.copy_from_slice(src),
            (Some(hc), None) => horizontal_pass(hc, src, self.in_w, dst, self.out_w),
            (None, Some(vc)) => vertical_pass(vc, src, dst, self.out_w),
            (Some(hc), Some(vc)) => {
                let mut tmp = vec![0u8; self.in_h * self.out_w];
                horizontal_pass(hc, src, self.in_w, &mut tmp, self.out_w);
                vertical_pass(vc, &tmp, dst, self.out_w);
            }
        }
    }
}

/// Pillow's `ImagingResampleHorizontal_8bpc`: every row of `src` (width `in_w`) to a row of `dst` (width `out_w`).
fn horizontal_pass(c: &Coeffs, src: &[u8], in_w: usize, dst: &mut [u8], out_w: usize) {
    let half = 1i32 << (PRECISION_BITS - 1);
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

/// Pillow's `ImagingResampleVertical_8bpc`: columns of `src` to columns of `dst`, both of width `w`
/// (accumulated a row at a time; the sums, and so the result, are the same as column by column).
fn vertical_pass(c: &Coeffs, src: &[u8], dst: &mut [u8], w: usize) {
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

/// Resizes an `h×w` u8 image to `out_h×out_w` exactly as Pillow's `img.resize((out_w, out_h), Image.BILINEAR)`
/// does for a mode-`L` image (antialiased when shrinking). Returns `out_h×out_w` u8. Panics if `src.len() != h·w`
/// or a size is 0.
pub fn resize_like_pil(src: &[u8], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<u8> {
    let mut dst = vec![0u8; out_h * out_w];
    PilResize::new(h, w, out_h, out_w).apply(src, &mut dst);
    dst
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

/// torchvision's `ToTensor` on u8 pixels: each value as f32 divided by 255 (same layout and length).
pub fn to_tensor(src: &[u8]) -> Vec<f32> {
    src.iter().map(|&v| v as f32 / 255.0).collect()
}

/// torchvision's `Normalize` for one channel: `x ↦ (x − mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    /// Subtracted from every value.
    pub mean: f32,
    /// Divides every value after the subtraction (positive).
    pub std: f32,
}

impl Normalize {
    /// Normalizes `x` in place.
    pub fn apply(&self, x: &mut [f32]) {
        for v in x {
            *v = (*v - self.mean) / self.std;
        }
    }
}

/// `ToTensor` (÷255) then, if given, `Normalize`, from `src` u8 into `dst` f32 of the same length.
pub fn to_tensor_into(src: &[u8], dst: &mut [f32], normalize: Option<Normalize>) {
    assert_eq!(src.len(), dst.len(), "to_tensor_into: lengths differ");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s as f32 / 255.0;
    }
    if let Some(n) = normalize {
        n.apply(dst);
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

/// torchvision's `RandomCrop((h, w), padding=pad)`: pads the `h×w` image with `pad` zeros on every side and cuts
/// an `h×w` window at a uniformly random offset in `0..=2·pad` on each axis. Returns `h×w` u8.
pub fn random_crop<R: Rng + ?Sized>(
    src: &[u8],
    h: usize,
    w: usize,
    pad: usize,
    rng: &mut R,
) -> Vec<u8> {
    assert_eq!(src.len(), h * w, "random_crop: source length");
    let top = rng.random_range(0..=2 * pad);
    let left = rng.random_range(0..=2 * pad);
    let mut out = vec![0u8; h * w];
    for (y, out_row) in out.chunks_exact_mut(w).enumerate() {
        let sy = (y + top) as isize - pad as isize;
        if sy < 0 || sy >= h as isize {
            continue;
        }
        let src_row = &src[sy as usize * w..][..w];
        for (x, px) in out_row.iter_mut().enumerate() {
            let sx = (x + left) as isize - pad as isize;
            if sx >= 0 && sx < w as isize {
                *px = src_row[sx as usize];
            }
        }
    }
    out
}

/// Mirrors an `h×w` image left to right, in place.
pub fn hflip(img: &mut [u8], w: usize) {
    for row in img.chunks_exact_mut(w) {
        row.reverse();
    }
}

/// The loader's augmentation of an `h×w` u8 image: [`random_crop`] with padding `pad`, then a horizontal flip
/// with probability ½. Returns `h×w` u8.
pub fn augment<R: Rng + ?Sized>(
    src: &[u8],
    h: usize,
    w: usize,
    pad: usize,
    rng: &mut R,
) -> Vec<u8> {
    let mut out = random_crop(src, h, w, pad, rng);
    if rng.random_bool(0.5) {
        hflip(&mut out, w);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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
        assert_eq!(resize_like_pil(&src, 28, 28, 28, 28), src);
        let white = vec![255u8; 9 * 11];
        assert!(resize_like_pil(&white, 9, 11, 30, 36)
            .iter()
            .all(|&v| v == 255));
        assert!(resize_like_pil(&white, 9, 11, 4, 5)
            .iter()
            .all(|&v| v == 255));
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
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert_eq!(random_crop(&src, 3, 4, 0, &mut rng), src);
        let mut f = src.clone();
        hflip(&mut f, 4);
        assert_eq!(&f[..4], &[3, 2, 1, 0]);
        // With padding, every output pixel is either 0 or a source pixel.
        let c = random_crop(&src, 3, 4, 2, &mut rng);
        assert!(c.iter().all(|v| *v == 0 || src.contains(v)));
    }

    #[test]
    fn to_tensor_divides_by_255() {
        let t = to_tensor(&[0, 51, 255]);
        assert_eq!(t, vec![0.0, 51.0f32 / 255.0, 1.0]);
        let mut d = [0.0f32; 2];
        to_tensor_into(
            &[255, 0],
            &mut d,
            Some(Normalize {
                mean: 0.5,
                std: 0.5,
            }),
        );
        assert_eq!(d, [1.0, -1.0]);
    }
}
