//! torchvision's `RandomErasing` on the normalized `[c, h, w]` tensor: the random rectangle
//! ([`random_erasing_params`]), setting it ([`erase`]), and the transform with its probability ([`RandomErasing`]).

use super::{py_round, uniform};
use crate::{bail, Result};
use rand::Rng;

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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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
}
