//! The quantized convolution by its definition: plain loops over every output position, kernel tap and channel
//! pair, the sums in `i32`, then the shared epilogue (`requant::one`). Every path's tests compare
//! against it bit for bit; nothing on an inference path calls it.
//!
//! Shapes, as the kernels': input `x [n, h, w, cin]` (NHWC, `u8`), weights `w [kh, kw, cin, cout]` (HWIO, `i8`),
//! output `[n, oh, ow, cout]`, with the stride and zero padding of the [`ConvGeom`] (a padded `u8` is 0, the
//! zero point of every quantized activation).

use super::requant::{self, Output, Requant};
use crate::kernels::conv::ConvGeom;

/// `out = requant(conv(x, w))` over `n` images. Panics on slices shorter than the shapes.
pub fn conv(g: &ConvGeom, n: usize, x: &[u8], w: &[i8], rq: &Requant, mut out: Output) {
    let (cin, cout) = (g.cin, g.cout);
    let mut sums = vec![0i32; cout];
    for img in 0..n {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                sums.fill(0);
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        // The input row and column under the tap, negative above and left of the image.
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        let pixel = (img * g.h + iy as usize) * g.w + ix as usize;
                        let tap = ky * g.kw + kx;
                        for ci in 0..cin {
                            let a = x[pixel * cin + ci] as i32;
                            let wrow = &w[(tap * cin + ci) * cout..][..cout];
                            for (s, &wv) in sums.iter_mut().zip(wrow) {
                                *s += a * wv as i32;
                            }
                        }
                    }
                }
                let position = (img * g.oh + oy) * g.ow + ox;
                for (c, &s) in sums.iter().enumerate() {
                    requant::one(s, position * cout + c, c, rq, &mut out);
                }
            }
        }
    }
}
