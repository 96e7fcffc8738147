//! Pillow's bilinear resampling, bit-exact on u8 images ([`PilResize`]), and torchvision's `Resize(size)` with it
//! ([`resize`]: the shorter side to `size`, [`resize_shorter_side`]).

use super::Image;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
