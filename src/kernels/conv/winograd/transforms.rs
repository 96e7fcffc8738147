//! The Winograd transforms of [`super`], fully unrolled for each tile size: the weights' `U = G g Gᵀ` (once per
//! call, as plain numbers), each chunk's input tiles `V = Bᵀ d B` and output-gradient tiles `W = A dy Aᵀ`, and
//! the output tiles `Y = Aᵀ M A` with the epilogue, all as two 1-D passes (columns, then rows) over 8 channels at
//! a time with AVX2.

use super::{Span, Tile, MAX_ALPHA};
use crate::kernels::conv::geom::ConvGeom;
use crate::kernels::conv::tile::{Epilogue, SendPtr, NR, ZEROS};
#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;
use rayon::prelude::*;

/// A tile size as compile-time constants, so that each size gets its own transforms (the 1-D transforms
/// below, fully unrolled).
trait Transform {
    /// Outputs per tile side.
    const M: usize;
    /// Inputs per tile side, `M + 2`.
    const A: usize = Self::M + 2;
}

struct F2;
impl Transform for F2 {
    const M: usize = 2;
}
struct F3;
impl Transform for F3 {
    const M: usize = 3;
}
struct F4;
impl Transform for F4 {
    const M: usize = 4;
}

/// `Bᵀ d` for one column or row `d` (α values) of an input tile with `m` outputs per side:
/// F(2): `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`;
/// F(3): `[[2, −1, −2, 1, 0], [0, −2, −1, 1, 0], [0, 2, −3, 1, 0], [0, −1, 0, 1, 0], [0, 2, −1, −2, 1]]`;
/// F(4): `[[4, 0, −5, 0, 1, 0], [0, −4, −4, 1, 1, 0], [0, 4, −4, −1, 1, 0], [0, −2, −1, 2, 1, 0],
/// [0, 2, −1, −2, 1, 0], [0, 4, 0, −5, 0, 1]]`, each factored into shared sums.
#[cfg(target_arch = "x86_64")]
macro_rules! bt_1d {
    ($m:expr, $d:expr) => {{
        let d: [__m256; MAX_ALPHA] = $d;
        let z = _mm256_setzero_ps();
        let two = _mm256_set1_ps(2.0);
        match $m {
            2 => [
                _mm256_sub_ps(d[0], d[2]),
                _mm256_add_ps(d[1], d[2]),
                _mm256_sub_ps(d[2], d[1]),
                _mm256_sub_ps(d[1], d[3]),
                z,
                z,
            ],
            3 => {
                let d3_d1 = _mm256_sub_ps(d[3], d[1]);
                [
                    _mm256_fmadd_ps(two, _mm256_sub_ps(d[0], d[2]), d3_d1),
                    _mm256_fnmadd_ps(two, d[1], _mm256_sub_ps(d[3], d[2])),
                    _mm256_fmadd_ps(two, d[1], _mm256_fnmadd_ps(_mm256_set1_ps(3.0), d[2], d[3])),
                    d3_d1,
                    _mm256_fmadd_ps(two, _mm256_sub_ps(d[1], d[3]), _mm256_sub_ps(d[4], d[2])),
                    z,
                ]
            }
            _ => {
                let (four, five) = (_mm256_set1_ps(4.0), _mm256_set1_ps(5.0));
                let t1 = _mm256_fnmadd_ps(four, d[2], d[4]);
                let t2 = _mm256_fnmadd_ps(four, d[1], d[3]);
                let t3 = _mm256_sub_ps(d[4], d[2]);
                let t4 = _mm256_mul_ps(two, _mm256_sub_ps(d[3], d[1]));
                [
                    _mm256_fmadd_ps(four, d[0], _mm256_fnmadd_ps(five, d[2], d[4])),
                    _mm256_add_ps(t1, t2),
                    _mm256_sub_ps(t1, t2),
                    _mm256_add_ps(t3, t4),
                    _mm256_sub_ps(t3, t4),
                    _mm256_fmadd_ps(four, d[1], _mm256_fnmadd_ps(five, d[3], d[5])),
                ]
            }
        }
    }};
}

/// `Aᵀ v` for one column or row `v` (α values) of a product tile, `m` outputs:
/// F(2): `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`; F(3): `[[1, 1, 1, 1, 0], [0, 1, −1, 2, 0], [0, 1, 1, 4, 1]]`;
/// F(4): `[[1, 1, 1, 1, 1, 0], [0, 1, −1, 2, −2, 0], [0, 1, 1, 4, 4, 0], [0, 1, −1, 8, −8, 1]]`.
#[cfg(target_arch = "x86_64")]
macro_rules! at_1d {
    ($m:expr, $v:expr) => {{
        let v: [__m256; MAX_ALPHA] = $v;
        let z = _mm256_setzero_ps();
        match $m {
            2 => [
                _mm256_add_ps(_mm256_add_ps(v[0], v[1]), v[2]),
                _mm256_sub_ps(_mm256_sub_ps(v[1], v[2]), v[3]),
                z,
                z,
            ],
            3 => {
                let (s12, d12) = (_mm256_add_ps(v[1], v[2]), _mm256_sub_ps(v[1], v[2]));
                [
                    _mm256_add_ps(_mm256_add_ps(v[0], s12), v[3]),
                    _mm256_fmadd_ps(_mm256_set1_ps(2.0), v[3], d12),
                    _mm256_fmadd_ps(_mm256_set1_ps(4.0), v[3], _mm256_add_ps(s12, v[4])),
                    z,
                ]
            }
            _ => {
                let (s12, d12) = (_mm256_add_ps(v[1], v[2]), _mm256_sub_ps(v[1], v[2]));
                let (s34, d34) = (_mm256_add_ps(v[3], v[4]), _mm256_sub_ps(v[3], v[4]));
                [
                    _mm256_add_ps(_mm256_add_ps(v[0], s12), s34),
                    _mm256_fmadd_ps(_mm256_set1_ps(2.0), d34, d12),
                    _mm256_fmadd_ps(_mm256_set1_ps(4.0), s34, s12),
                    _mm256_fmadd_ps(_mm256_set1_ps(8.0), d34, _mm256_add_ps(d12, v[5])),
                ]
            }
        }
    }};
}

/// `A d` for one column or row `d` (its first `m` values) of an output-gradient tile, α outputs (`A = (Aᵀ)ᵀ`).
#[cfg(target_arch = "x86_64")]
macro_rules! a_1d {
    ($m:expr, $d:expr) => {{
        let d: [__m256; MAX_ALPHA] = $d;
        let z = _mm256_setzero_ps();
        match $m {
            2 => [
                d[0],
                _mm256_add_ps(d[0], d[1]),
                _mm256_sub_ps(d[0], d[1]),
                _mm256_sub_ps(z, d[1]),
                z,
                z,
            ],
            3 => {
                let e = _mm256_add_ps(d[0], d[2]);
                [
                    d[0],
                    _mm256_add_ps(e, d[1]),
                    _mm256_sub_ps(e, d[1]),
                    _mm256_fmadd_ps(
                        _mm256_set1_ps(4.0),
                        d[2],
                        _mm256_fmadd_ps(_mm256_set1_ps(2.0), d[1], d[0]),
                    ),
                    d[2],
                    z,
                ]
            }
            _ => {
                let (e, o) = (_mm256_add_ps(d[0], d[2]), _mm256_add_ps(d[1], d[3]));
                let e4 = _mm256_fmadd_ps(_mm256_set1_ps(4.0), d[2], d[0]);
                let o4 = _mm256_mul_ps(
                    _mm256_set1_ps(2.0),
                    _mm256_fmadd_ps(_mm256_set1_ps(4.0), d[3], d[1]),
                );
                [
                    d[0],
                    _mm256_add_ps(e, o),
                    _mm256_sub_ps(e, o),
                    _mm256_add_ps(e4, o4),
                    _mm256_sub_ps(e4, o4),
                    d[3],
                ]
            }
        }
    }};
}

impl Tile {
    /// `G [α, 3]` (used once per weight, so as plain numbers).
    pub(super) fn g(self) -> &'static [[f32; 3]] {
        const G2: [[f32; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        const G3: [[f32; 3]; 5] = [
            [0.5, 0.0, 0.0],
            [-0.5, -0.5, -0.5],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 6.0, 1.0 / 3.0, 2.0 / 3.0],
            [0.0, 0.0, 1.0],
        ];
        const G4: [[f32; 3]; 6] = [
            [0.25, 0.0, 0.0],
            [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
            [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
            [0.0, 0.0, 1.0],
        ];
        match self {
            Tile::F2 => &G2,
            Tile::F3 => &G3,
            Tile::F4 => &G4,
        }
    }
}

impl Tile {
    /// [`transform_tiles`] for this tile size: `V = Bᵀ d B` of `src = x`, or with `output_grad`, `W = A dy Aᵀ` of
    /// `src = dy`.
    ///
    /// # Safety
    /// As for [`transform_tiles`].
    pub(super) unsafe fn transform_tiles(
        self,
        output_grad: bool,
        g: &ConvGeom,
        src: &[f32],
        span: Span,
        out: &mut [f32],
    ) {
        match (self, output_grad) {
            (Tile::F2, false) => transform_tiles::<F2, false>(g, src, span, out),
            (Tile::F2, true) => transform_tiles::<F2, true>(g, src, span, out),
            (Tile::F3, false) => transform_tiles::<F3, false>(g, src, span, out),
            (Tile::F3, true) => transform_tiles::<F3, true>(g, src, span, out),
            (Tile::F4, false) => transform_tiles::<F4, false>(g, src, span, out),
            (Tile::F4, true) => transform_tiles::<F4, true>(g, src, span, out),
        }
    }

    /// [`output_transform`] for this tile size.
    ///
    /// # Safety
    /// As for [`output_transform`].
    pub(super) unsafe fn output_transform(
        self,
        g: &ConvGeom,
        m: &[f32],
        span: Span,
        y: SendPtr,
        epilogue: Epilogue<'_>,
    ) {
        match self {
            Tile::F2 => output_transform::<F2>(g, m, span, y, epilogue),
            Tile::F3 => output_transform::<F3>(g, m, span, y, epilogue),
            Tile::F4 => output_transform::<F4>(g, m, span, y, epilogue),
        }
    }
}

/// `u [cout / 16, α², cin, 16] = G g Gᵀ` for every `(ci, co)` filter `g` of `w`, 16 output channels at a time
/// (the lanes of a panel, contiguous in HWIO).
pub fn transform_weights_for(tile: Tile, g: &ConvGeom, w: &[f32], u: &mut [f32]) {
    let (cin, cout, alpha) = (g.cin, g.cout, tile.alpha());
    let gm = tile.g();
    assert!(w.len() >= 9 * cin * cout, "conv_winograd: w too short");
    u[..tile.xi() * cin * cout]
        .par_chunks_mut(tile.xi() * cin * NR)
        .enumerate()
        .for_each(|(panel, out)| {
            for ci in 0..cin {
                let tap = |ky: usize, kx: usize| -> &[f32; NR] {
                    w[((ky * 3 + kx) * cin + ci) * cout + panel * NR..][..NR]
                        .try_into()
                        .expect("16 lanes")
                };
                // t = G g: α rows × 3 columns of 16 lanes.
                let mut t = [[[0.0f32; NR]; 3]; MAX_ALPHA];
                for (gi, row) in gm.iter().zip(&mut t) {
                    for (kx, acc) in row.iter_mut().enumerate() {
                        for (ky, &c) in gi.iter().enumerate() {
                            for (a, &v) in acc.iter_mut().zip(tap(ky, kx)) {
                                *a += c * v;
                            }
                        }
                    }
                }
                // u_ij = Σ_kx t[i][kx] · G[j][kx].
                for (i, row) in t.iter().enumerate().take(alpha) {
                    for (j, gj) in gm.iter().enumerate() {
                        let dst: &mut [f32; NR] = (&mut out[((i * alpha + j) * cin + ci) * NR..]
                            [..NR])
                            .try_into()
                            .expect("16 lanes");
                        *dst = [0.0; NR];
                        for (&c, part) in gj.iter().zip(row) {
                            for (d, &v) in dst.iter_mut().zip(part) {
                                *d += c * v;
                            }
                        }
                    }
                }
            }
        });
}

/// Image, tile row and tile column of tile `t` (tiles numbered image by image, row-major within an image).
fn tile_coords(g: &ConvGeom, m: usize, t: usize) -> (usize, usize, usize) {
    let (tiles_y, tiles_x) = (g.oh.div_ceil(m), g.ow.div_ceil(m));
    (
        t / (tiles_y * tiles_x),
        (t / tiles_x) % tiles_y,
        t % tiles_x,
    )
}

/// Writes the span's tiles, transformed to α × α, into `out [α² ξ, chunk, channels]` rows `0..count`:
/// - `OUTPUT_GRAD = false`: `V = Bᵀ d B` of `src = x [n, h, w, cin]`, `d` the `α × α` input patch whose corner is
///   one row and column above and left of the tile;
/// - `OUTPUT_GRAD = true`: `W = A dy Aᵀ` of `src = dy [n, oh, ow, cout]`, `dy` the tile's `m × m` output gradient.
///
/// Values outside the plane are zeros. Both run as two 1-D passes (columns, then rows) over 8 channels at a time.
///
/// # Safety
/// AVX2 and FMA must be available; `src` must hold the batch and `out` `α²·chunk·channels` floats; the
/// channels are a multiple of 8 and at most `MAX_CIN`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_tiles<T: Transform, const OUTPUT_GRAD: bool>(
    g: &ConvGeom,
    src: &[f32],
    span: Span,
    out: &mut [f32],
) {
    let (a, m) = (T::A, T::M);
    // The patch read per tile: its side, the plane it lies in, and its offset from the tile's corner.
    let (side, channels, (height, width), back) = if OUTPUT_GRAD {
        (m, g.cout, (g.oh, g.ow), 0)
    } else {
        (a, g.cin, (g.h, g.w), 1)
    };
    let zeros = ZEROS.as_ptr();
    for i in 0..span.count {
        let (img, ty, tx) = tile_coords(g, m, span.first + i);
        let mut patch = [zeros; MAX_ALPHA * MAX_ALPHA];
        for r in 0..side {
            let Some(py) = (m * ty + r).checked_sub(back).filter(|&py| py < height) else {
                continue;
            };
            for s in 0..side {
                if let Some(px) = (m * tx + s).checked_sub(back).filter(|&px| px < width) {
                    let pixel = (img * height + py) * width + px;
                    patch[r * side + s] = src[pixel * channels..][..channels].as_ptr();
                }
            }
        }
        let dst = out.as_mut_ptr().add(i * channels);
        for c in (0..channels).step_by(8) {
            // Columns first (α × side), then rows (α × α).
            let mut t = [[_mm256_setzero_ps(); MAX_ALPHA]; MAX_ALPHA];
            for s in 0..side {
                let mut col = [_mm256_setzero_ps(); MAX_ALPHA];
                for (r, v) in col.iter_mut().enumerate().take(side) {
                    *v = _mm256_loadu_ps(patch[r * side + s].add(c));
                }
                let tc = if OUTPUT_GRAD {
                    a_1d!(m, col)
                } else {
                    bt_1d!(m, col)
                };
                for (row, &v) in t.iter_mut().zip(&tc).take(a) {
                    row[s] = v;
                }
            }
            for (r, row) in t.iter().enumerate().take(a) {
                let tr = if OUTPUT_GRAD {
                    a_1d!(m, *row)
                } else {
                    bt_1d!(m, *row)
                };
                for (s, v) in tr.iter().enumerate().take(a) {
                    _mm256_storeu_ps(dst.add((r * a + s) * span.chunk * channels + c), *v);
                }
            }
        }
    }
}

/// Stores `epilogue(Aᵀ m A)` of the span's tiles into `y`; the parts of a tile outside the plane are dropped.
///
/// # Safety
/// AVX2 and FMA must be available; `m` holds a chunk, `y` the batch's output, the epilogue `cout` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_transform<T: Transform>(
    g: &ConvGeom,
    m: &[f32],
    span: Span,
    y: SendPtr,
    epilogue: Epilogue<'_>,
) {
    let (cout, a, mo) = (g.cout, T::A, T::M);
    let y = y.get();
    // The shortcut, given or in `y` itself (each element is read just before it is stored: one tile owns it).
    let residual = epilogue.residual_ptr(y);
    for i in 0..span.count {
        let (img, ty, tx) = tile_coords(g, mo, span.first + i);
        let src = m.as_ptr().add(i * cout);
        for c in (span.cols.0..span.cols.1).step_by(8) {
            // Columns first: t = Aᵀ m (m × α).
            let mut t = [[_mm256_setzero_ps(); MAX_ALPHA]; 4];
            for s in 0..a {
                let mut col = [_mm256_setzero_ps(); MAX_ALPHA];
                for (r, cv) in col.iter_mut().enumerate().take(a) {
                    *cv = _mm256_loadu_ps(src.add((r * a + s) * span.chunk * cout + c));
                }
                let tc = at_1d!(T::M, col);
                for (row, &v) in t.iter_mut().zip(&tc).take(mo) {
                    row[s] = v;
                }
            }
            for (r, row) in t.iter().enumerate().take(mo) {
                let oy = mo * ty + r;
                if oy >= g.oh {
                    break;
                }
                let yr = at_1d!(T::M, *row);
                for (s, &val) in yr.iter().enumerate().take(mo) {
                    let ox = mo * tx + s;
                    if ox >= g.ow {
                        break;
                    }
                    let mut val = val;
                    if let Some(scale) = epilogue.scale {
                        val = _mm256_mul_ps(val, _mm256_loadu_ps(scale.as_ptr().add(c)));
                    }
                    if let Some(shift) = epilogue.shift {
                        val = _mm256_add_ps(val, _mm256_loadu_ps(shift.as_ptr().add(c)));
                    }
                    let at = ((img * g.oh + oy) * g.ow + ox) * cout + c;
                    if !residual.is_null() {
                        val = _mm256_add_ps(val, _mm256_loadu_ps(residual.add(at)));
                    }
                    if epilogue.relu {
                        // max(0, v): a NaN passes, as through PyTorch's ReLU.
                        val = _mm256_max_ps(_mm256_setzero_ps(), val);
                    }
                    _mm256_storeu_ps(y.add(at), val);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_tiles<T: Transform, const OUTPUT_GRAD: bool>(
    _: &ConvGeom,
    _: &[f32],
    _: Span,
    _: &mut [f32],
) {
    unreachable!("cpu_supported() is false off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn output_transform<T: Transform>(
    _: &ConvGeom,
    _: &[f32],
    _: Span,
    _: SendPtr,
    _: Epilogue<'_>,
) {
    unreachable!("cpu_supported() is false off x86-64")
}
