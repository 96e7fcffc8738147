//! The epilogue of the quantized convolution: an output channel's `i32` sum turned into the next layer's `u8`
//! (or the `f32` a float layer reads), written once as scalar Rust that every path shares.
//!
//! For output channel `c` of a row with sum `acc`:
//!
//! ```text
//! v = (acc + bias[c]) as f32 · scale[c]           scale[c] = w_scale[c] · x_scale / y_scale
//! v = v + residual · residual_scale               (a u8 shortcut: its scale / y_scale; an f32 one: 1 / y_scale)
//! v = max(v, 0)                                   (ReLU, when asked)
//! u8 output:  q = round_half_even(clamp(v, 0, qmax))
//! f32 output: v                                   (y_scale = 1)
//! ```
//!
//! Each `·` and `+` is one f32 operation rounded once (Rust never fuses them), so the vector code LLVM makes of
//! [`row`] inside the paths' `target_feature` wrappers is bit for bit the scalar [`one`] the reference calls.

/// The shortcut a convolution adds before its ReLU, laid out as its output `[rows, cout]`.
#[derive(Clone, Copy, Debug)]
pub enum Residual<'a> {
    /// Nothing added.
    None,
    /// `u8` values, added as `value · scale`.
    U8 {
        /// `[rows, cout]`
        values: &'a [u8],
        /// The shortcut's scale over the output's.
        scale: f32,
    },
    /// `f32` values, added as `value · scale`.
    F32 {
        /// `[rows, cout]`
        values: &'a [f32],
        /// One over the output's scale.
        scale: f32,
    },
}

/// What a quantized convolution applies to its sums as it stores them (see the module documentation).
#[derive(Clone, Copy, Debug)]
pub struct Requant<'a> {
    /// `[cout]`, in units of the sum (`bias / (w_scale[c] · x_scale)`, rounded).
    pub bias: &'a [i32],
    /// `[cout]`: `w_scale[c] · x_scale / y_scale` (`y_scale` 1 for an f32 output).
    pub scale: &'a [f32],
    /// The shortcut added before the ReLU.
    pub residual: Residual<'a>,
    /// Clamp at zero.
    pub relu: bool,
    /// Largest `u8` stored: 255, or 127 where the next convolution runs on the AVX2 path.
    pub qmax: u8,
}

/// Where a quantized convolution writes `[rows, cout]`.
pub enum Output<'a> {
    /// Quantized, for the next quantized convolution.
    U8(&'a mut [u8]),
    /// Dequantized, for a shortcut or a float layer.
    F32(&'a mut [f32]),
}

/// The epilogue of one sum before the store: `v` of the module documentation.
#[inline(always)]
pub(crate) fn value(acc: i32, bias: i32, scale: f32, residual: f32, relu: bool) -> f32 {
    let v = acc.wrapping_add(bias) as f32 * scale + residual;
    if relu {
        v.max(0.0)
    } else {
        v
    }
}

/// `v` stored as `u8`: clamped to `[0, qmax]`, rounded half to even. The rounding is the f32 addition of
/// 1.5·2²³, whose unit in the last place is 1 (so the sum is the nearest integer, ties to even, the default
/// rounding mode), read from the sum's low mantissa bits: plain arithmetic and bit operations that vectorize,
/// where a float-to-integer cast (saturating in Rust) does not.
#[inline(always)]
pub(crate) fn to_u8(v: f32, qmax: f32) -> u8 {
    const ROUNDER: f32 = 12_582_912.0;
    (v.max(0.0).min(qmax) + ROUNDER).to_bits() as u8
}

/// One output element, as the reference computes it: the sum `acc` of output element `i` (row-major
/// `[rows, cout]`, channel `c`), through the whole epilogue, into `out[i]`.
pub(crate) fn one(acc: i32, i: usize, c: usize, rq: &Requant, out: &mut Output) {
    let residual = match rq.residual {
        Residual::None => 0.0,
        Residual::U8 { values, scale } => values[i] as f32 * scale,
        Residual::F32 { values, scale } => values[i] * scale,
    };
    let v = value(acc, rq.bias[c], rq.scale[c], residual, rq.relu);
    match out {
        Output::U8(y) => y[i] = to_u8(v, rq.qmax as f32),
        Output::F32(y) => y[i] = v,
    }
}

/// Where one row's piece of output goes: `len` channels.
pub(crate) enum RowOut<'a> {
    U8(&'a mut [u8]),
    F32(&'a mut [f32]),
}

/// One row piece of `acc.len()` channels: `out[j] = epilogue(acc[j])` with `bias`, `scale` and the residual
/// row piece starting at the piece's first channel. Plain loops, one per residual and output kind, that LLVM
/// vectorizes with the features of the function it is inlined into.
#[inline(always)]
pub(crate) fn row(
    acc: &[i32],
    bias: &[i32],
    scale: &[f32],
    residual: Residual,
    relu: bool,
    qmax: u8,
    out: RowOut,
) {
    let n = acc.len();
    let (bias, scale) = (&bias[..n], &scale[..n]);
    let q = qmax as f32;
    macro_rules! store {
        ($res:expr) => {
            match out {
                RowOut::U8(y) => {
                    for j in 0..n {
                        y[j] = to_u8(value(acc[j], bias[j], scale[j], $res(j), relu), q);
                    }
                }
                RowOut::F32(y) => {
                    for j in 0..n {
                        y[j] = value(acc[j], bias[j], scale[j], $res(j), relu);
                    }
                }
            }
        };
    }
    match residual {
        Residual::None => store!(|_| 0.0),
        Residual::U8 { values, scale: s } => {
            let values = &values[..n];
            store!(|j: usize| values[j] as f32 * s)
        }
        Residual::F32 { values, scale: s } => {
            let values = &values[..n];
            store!(|j: usize| values[j] * s)
        }
    }
}

/// [`row`] written with AVX-512 intrinsics, 16 channels a step and a masked last step: the same f32 operations
/// in the same order (each rounded once; none fused), so bit for bit the same outputs. LLVM's vectorization of
/// [`row`] kept scalar remainders and per-call set-up that cost a third of the tiles' time on resnet50.
///
/// # Safety
/// The CPU has AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn row_avx512(
    acc: &[i32],
    bias: &[i32],
    scale: &[f32],
    residual: Residual,
    relu: bool,
    qmax: u8,
    out: RowOut,
) {
    use core::arch::x86_64::*;
    let n = acc.len();
    assert!(bias.len() >= n && scale.len() >= n);
    match (&residual, &out) {
        (Residual::U8 { values, .. }, _) => assert!(values.len() >= n),
        (Residual::F32 { values, .. }, _) => assert!(values.len() >= n),
        (Residual::None, _) => {}
    }
    match &out {
        RowOut::U8(y) => assert!(y.len() >= n),
        RowOut::F32(y) => assert!(y.len() >= n),
    }
    let mut out = out;
    let zero = _mm512_setzero_ps();
    let q = _mm512_set1_ps(qmax as f32);
    let rounder = _mm512_set1_ps(12_582_912.0);
    let mut j = 0;
    while j < n {
        let m: __mmask16 = if n - j >= 16 {
            0xffff
        } else {
            (1u16 << (n - j)) - 1
        };
        let a = _mm512_maskz_loadu_epi32(m, acc.as_ptr().add(j));
        let b = _mm512_maskz_loadu_epi32(m, bias.as_ptr().add(j));
        let s = _mm512_maskz_loadu_ps(m, scale.as_ptr().add(j));
        let r = match residual {
            Residual::None => zero,
            Residual::U8 { values, scale } => {
                let bytes =
                    _mm512_maskz_loadu_epi8(m as __mmask64, values.as_ptr().add(j) as *const i8);
                let v = _mm512_cvtepu8_epi32(_mm512_castsi512_si128(bytes));
                _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(scale))
            }
            Residual::F32 { values, scale } => _mm512_mul_ps(
                _mm512_maskz_loadu_ps(m, values.as_ptr().add(j)),
                _mm512_set1_ps(scale),
            ),
        };
        let mut v = _mm512_add_ps(
            _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a, b)), s),
            r,
        );
        if relu {
            v = _mm512_max_ps(v, zero);
        }
        match &mut out {
            RowOut::U8(y) => {
                let u = _mm512_add_ps(_mm512_min_ps(_mm512_max_ps(v, zero), q), rounder);
                _mm512_mask_cvtepi32_storeu_epi8(
                    y.as_mut_ptr().add(j) as *mut i8,
                    m,
                    _mm512_castps_si512(u),
                );
            }
            RowOut::F32(y) => _mm512_mask_storeu_ps(y.as_mut_ptr().add(j), m, v),
        }
        j += 16;
    }
}

/// [`row`] written with AVX2 intrinsics, 8 channels a step and the scalar epilogue for the last few: the same
/// f32 operations in the same order, so bit for bit the same outputs (see [`row_avx512`]).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn row_avx2(
    acc: &[i32],
    bias: &[i32],
    scale: &[f32],
    residual: Residual,
    relu: bool,
    qmax: u8,
    out: RowOut,
) {
    use core::arch::x86_64::*;
    let n = acc.len();
    let (bias, scale) = (&bias[..n], &scale[..n]);
    let full = n / 8 * 8;
    let zero = _mm256_setzero_ps();
    let q = _mm256_set1_ps(qmax as f32);
    let rounder = _mm256_set1_ps(12_582_912.0);
    let low_byte = _mm256_set1_epi32(0xff);
    let residual_at = |j: usize| match residual {
        Residual::None => zero,
        Residual::U8 { values, scale } => {
            let v =
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(values[j..j + 8].as_ptr() as *const __m128i));
            _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(scale))
        }
        Residual::F32 { values, scale } => _mm256_mul_ps(
            _mm256_loadu_ps(values[j..j + 8].as_ptr()),
            _mm256_set1_ps(scale),
        ),
    };
    let mut out = out;
    for j in (0..full).step_by(8) {
        let a = _mm256_loadu_si256(acc[j..j + 8].as_ptr() as *const __m256i);
        let b = _mm256_loadu_si256(bias[j..j + 8].as_ptr() as *const __m256i);
        let s = _mm256_loadu_ps(scale[j..j + 8].as_ptr());
        let mut v = _mm256_add_ps(
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(a, b)), s),
            residual_at(j),
        );
        if relu {
            v = _mm256_max_ps(v, zero);
        }
        match &mut out {
            RowOut::U8(y) => {
                let u = _mm256_add_ps(_mm256_min_ps(_mm256_max_ps(v, zero), q), rounder);
                // The low byte of each lane, 0..=255: packed to 16 bits, then to 8, each 128-bit half keeping
                // its four bytes in its low word.
                let w = _mm256_and_si256(_mm256_castps_si256(u), low_byte);
                let w = _mm256_packus_epi32(w, w);
                let w = _mm256_packus_epi16(w, w);
                let bytes =
                    _mm_unpacklo_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
                _mm_storel_epi64(y[j..j + 8].as_mut_ptr() as *mut __m128i, bytes);
            }
            RowOut::F32(y) => _mm256_storeu_ps(y[j..j + 8].as_mut_ptr(), v),
        }
    }
    if full < n {
        let residual = match residual {
            Residual::None => Residual::None,
            Residual::U8 { values, scale } => Residual::U8 {
                values: &values[full..],
                scale,
            },
            Residual::F32 { values, scale } => Residual::F32 {
                values: &values[full..],
                scale,
            },
        };
        let out = match out {
            RowOut::U8(y) => RowOut::U8(&mut y[full..]),
            RowOut::F32(y) => RowOut::F32(&mut y[full..]),
        };
        row(
            &acc[full..],
            &bias[full..],
            &scale[full..],
            residual,
            relu,
            qmax,
            out,
        );
    }
}
