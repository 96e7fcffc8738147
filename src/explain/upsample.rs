//! A map brought from a layer's resolution to the image's: bilinear upsampling to the network's input
//! (`F.interpolate(mode="bilinear", align_corners=False)`), then through the preprocessing's resize and crop back
//! to the original image's pixels.

use crate::data::transforms::{center_offset, resize_shorter_side};
use crate::data::Step;
use crate::{bail, Result};

/// Source coordinate and the two taps of output index `d` along an axis of `src` → `dst` samples, as PyTorch's
/// `upsample_bilinear2d` with `align_corners=False` computes them: `(i0, i1, weight of i1)`.
fn taps(d: usize, src: usize, dst: usize) -> (usize, usize, f32) {
    let scale = src as f32 / dst as f32;
    let real = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
    let i0 = (real as usize).min(src - 1);
    let i1 = if i0 + 1 < src { i0 + 1 } else { i0 };
    (i0, i1, real - i0 as f32)
}

/// `src [sh, sw]` resized bilinearly to `[dh, dw]` (row-major), as `F.interpolate(x, (dh, dw), mode="bilinear",
/// align_corners=False)`. Every side must be at least 1.
pub fn bilinear(src: &[f32], sh: usize, sw: usize, dh: usize, dw: usize) -> Vec<f32> {
    assert_eq!(
        src.len(),
        sh * sw,
        "bilinear: {} values for {sh}×{sw}",
        src.len()
    );
    let cols: Vec<_> = (0..dw).map(|x| taps(x, sw, dw)).collect();
    let mut out = Vec::with_capacity(dh * dw);
    for y in 0..dh {
        let (y0, y1, ly) = taps(y, sh, dh);
        let (r0, r1) = (&src[y0 * sw..][..sw], &src[y1 * sw..][..sw]);
        for &(x0, x1, lx) in &cols {
            let top = (1.0 - lx) * r0[x0] + lx * r0[x1];
            let bottom = (1.0 - lx) * r1[x0] + lx * r1[x1];
            out.push((1.0 - ly) * top + ly * bottom);
        }
    }
    out
}

/// Along one axis, the affine map from an original pixel's centre to the network input's coordinates
/// (`input = original·scale + offset`), and the input's length.
#[derive(Clone, Copy, Debug)]
struct Axis {
    scale: f64,
    offset: f64,
    len: usize,
}

impl Axis {
    fn identity(len: usize) -> Axis {
        Axis {
            scale: 1.0,
            offset: 0.0,
            len,
        }
    }
    /// Then a resize of this axis to `len` samples (pixel centres stay at centres: `(u + ½)·k − ½`).
    fn resize(self, len: usize) -> Axis {
        let k = len as f64 / self.len as f64;
        Axis {
            scale: self.scale * k,
            offset: (self.offset + 0.5) * k - 0.5,
            len,
        }
    }
    /// Then a window of `len` samples starting at `start` (negative: padding before).
    fn crop(self, start: isize, len: usize) -> Axis {
        Axis {
            scale: self.scale,
            offset: self.offset - start as f64,
            len,
        }
    }
}

/// The map `input_map [ih, iw]` at the network input's resolution carried back through the evaluation
/// preprocessing `steps` (resizes and centre crops) to an `oh × ow` original image: one value per original
/// pixel, sampled bilinearly, `None` where the crop left the pixel out (the network never saw it).
pub fn to_original(
    input_map: &[f32],
    (ih, iw): (usize, usize),
    steps: &[Step],
    (oh, ow): (usize, usize),
) -> Result<Vec<Option<f32>>> {
    let (mut ay, mut ax) = (Axis::identity(oh), Axis::identity(ow));
    for step in steps {
        match *step {
            Step::Resize(n) => {
                let (h, w) = resize_shorter_side(ay.len, ax.len, n);
                (ay, ax) = (ay.resize(h), ax.resize(w));
            }
            Step::CenterCrop(h, w) => {
                ay = ay.crop(center_offset(ay.len, h), h);
                ax = ax.crop(center_offset(ax.len, w), w);
            }
            _ => bail!("{step:?}: only an evaluation pipeline (resize, centre crop) maps back to the image"),
        }
    }
    if (ay.len, ax.len) != (ih, iw) {
        bail!(
            "the preprocessing makes {}×{} of a {ow}×{oh} image, the map is {iw}×{ih}",
            ax.len,
            ay.len
        );
    }
    // Inside the input: its pixel centres span [0, len − 1]; half a pixel beyond each edge still belongs to it.
    let place = |a: Axis, u: usize| -> Option<f32> {
        let v = u as f64 * a.scale + a.offset;
        (v >= -0.5 && v <= a.len as f64 - 0.5).then_some(v.clamp(0.0, (a.len - 1) as f64) as f32)
    };
    let rows: Vec<_> = (0..oh).map(|y| place(ay, y)).collect();
    let cols: Vec<_> = (0..ow).map(|x| place(ax, x)).collect();
    let sample = |y: f32, x: f32| {
        let (y0, x0) = (y as usize, x as usize);
        let (y1, x1) = ((y0 + 1).min(ih - 1), (x0 + 1).min(iw - 1));
        let (ly, lx) = (y - y0 as f32, x - x0 as f32);
        let at = |r: usize, c: usize| input_map[r * iw + c];
        (1.0 - ly) * ((1.0 - lx) * at(y0, x0) + lx * at(y0, x1))
            + ly * ((1.0 - lx) * at(y1, x0) + lx * at(y1, x1))
    };
    Ok(rows
        .iter()
        .flat_map(|&y| cols.iter().map(move |&x| Some(sample(y?, x?))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_matches_pytorch_on_a_small_case() {
        // F.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), (4, 4), mode="bilinear", align_corners=False)
        let got = bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
        let want = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        assert_eq!(got, want);
        // The same size is a copy.
        assert_eq!(bilinear(&[1.0, 2.0, 3.0], 1, 3, 1, 3), [1.0, 2.0, 3.0]);
    }

    #[test]
    fn back_through_resize_and_crop() {
        // A 10×20 image resized to 5 on its shorter side (5×10), centre-cropped to 5×5 (columns 2…6 of the 10,
        // whose pixels cover original columns 4…13): the columns either side were never seen.
        let steps = [Step::Resize(5), Step::CenterCrop(5, 5)];
        let map: Vec<f32> = (0..25).map(|i| (i % 5) as f32).collect();
        let back = to_original(&map, (5, 5), &steps, (10, 20)).unwrap();
        let row: Vec<Option<f32>> = back[..20].to_vec();
        assert!(row[..4].iter().all(Option::is_none), "{row:?}");
        assert!(row[14..].iter().all(Option::is_none), "{row:?}");
        assert!(row[4..14].iter().all(Option::is_some), "{row:?}");
        // Increasing across the kept columns, from the map's first column to its last.
        let kept: Vec<f32> = row.iter().flatten().copied().collect();
        assert!(kept.windows(2).all(|w| w[0] <= w[1]), "{kept:?}");
        assert_eq!((kept[0], *kept.last().unwrap()), (0.0, 4.0));
        let err = to_original(&map, (4, 5), &steps, (10, 20)).unwrap_err();
        assert!(err.to_string().contains("the map is 5×4"), "{err}");
    }
}
