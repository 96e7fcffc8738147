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
//! `row` inside the paths' `target_feature` wrappers is bit for bit the scalar `one` the reference calls.

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
    /// The `u8` values the output holds when the convolution starts (`[rows, cout]`, a `u8` output only), each
    /// read just before its output element overwrites it, added as `value · scale`: a block's last convolution
    /// written over its shortcut.
    InOutput {
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
        Residual::InOutput { scale } => match out {
            Output::U8(y) => y[i] as f32 * scale,
            Output::F32(_) => panic!("int8: a shortcut in the output needs a u8 output"),
        },
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
        Residual::InOutput { scale: s } => match out {
            RowOut::U8(y) => {
                for j in 0..n {
                    let r = y[j] as f32 * s;
                    y[j] = to_u8(value(acc[j], bias[j], scale[j], r, relu), q);
                }
            }
            RowOut::F32(_) => panic!("int8: a shortcut in the output needs a u8 output"),
        },
    }
}

/// Where one register tile's sums go: the tile's `rows` rows of `cols` channels, starting at the panel's first
/// channel; row `i`'s output (and shortcut) piece `i · stride` elements after row 0's. Raw pointers: the tasks of
/// a convolution write disjoint pieces of one output.
#[derive(Clone, Copy)]
pub(crate) struct TileStore {
    /// Live rows (at most the tile's).
    pub rows: usize,
    /// Live channels (at most the tile's width).
    pub cols: usize,
    /// Elements between one row's piece and the next (the output's channels).
    pub stride: usize,
    /// The same for the shortcut (its channels; a block's width where it was computed alongside).
    pub residual_stride: usize,
    /// The panel's `[cols]` biases and scales.
    pub bias: *const i32,
    pub scale: *const f32,
    /// Row 0's piece of the shortcut.
    pub residual: RawResidual,
    /// Row 0's piece of the output.
    pub out: RawOut,
    pub relu: bool,
    pub qmax: u8,
}

/// [`Residual`] at row 0 of a tile.
#[derive(Clone, Copy)]
pub(crate) enum RawResidual {
    None,
    U8(*const u8, f32),
    F32(*const f32, f32),
}

/// [`Output`] at row 0 of a tile.
#[derive(Clone, Copy)]
pub(crate) enum RawOut {
    U8(*mut u8),
    F32(*mut f32),
}

/// [`row`] over each row of a tile: `acc [rows][width]` through the epilogue into `s`'s pieces.
///
/// # Safety
/// `acc` holds `s.rows · width` sums, `width ≥ s.cols`; `s`'s pointers are valid for its rows and columns (for
/// writing, the output), and nothing else accesses those pieces meanwhile.
pub(crate) unsafe fn tile_rows(acc: &[i32], width: usize, s: &TileStore) {
    use std::slice::{from_raw_parts, from_raw_parts_mut};
    let n = s.cols;
    for i in 0..s.rows {
        let (at, rat) = (i * s.stride, i * s.residual_stride);
        let residual = match s.residual {
            RawResidual::None => Residual::None,
            // The output's own piece (the shortcut written over, see `Residual::InOutput`): read as the
            // output, not as a second slice over the same bytes.
            RawResidual::U8(p, scale) if matches!(s.out, RawOut::U8(o) if o.add(at) == p.add(rat).cast_mut()) => {
                Residual::InOutput { scale }
            }
            RawResidual::U8(p, scale) => Residual::U8 {
                values: from_raw_parts(p.add(rat), n),
                scale,
            },
            RawResidual::F32(p, scale) => Residual::F32 {
                values: from_raw_parts(p.add(rat), n),
                scale,
            },
        };
        let out = match s.out {
            RawOut::U8(p) => RowOut::U8(from_raw_parts_mut(p.add(at), n)),
            RawOut::F32(p) => RowOut::F32(from_raw_parts_mut(p.add(at), n)),
        };
        let (bias, scale) = (from_raw_parts(s.bias, n), from_raw_parts(s.scale, n));
        row(
            &acc[i * width..][..n],
            bias,
            scale,
            residual,
            s.relu,
            s.qmax,
            out,
        );
    }
}

/// [`tile_rows`] written with AVX-512 intrinsics, 16 channels a step ([`store16_avx512`]) and a masked last
/// step: the same f32 operations in the same order (each rounded once; none fused), so bit for bit the same
/// outputs. One call per tile: LLVM's vectorization of [`row`], called per row, kept scalar remainders and
/// per-call set-up that cost a third of the tiles' time on resnet50.
///
/// # Safety
/// As [`tile_rows`]'; the CPU has AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn tile_avx512(acc: &[i32], width: usize, s: &TileStore) {
    use core::arch::x86_64::*;
    assert!(acc.len() >= s.rows * width && width >= s.cols);
    let k = Avx512Consts::new(s.qmax);
    for i in 0..s.rows {
        let sums = acc.as_ptr().add(i * width);
        let mut j = 0;
        while j < s.cols {
            let m = mask16(s.cols - j);
            let a = _mm512_loadu_si512(sums.add(j) as *const _);
            let b = _mm512_maskz_loadu_epi32(m, s.bias.add(j));
            let scale = _mm512_maskz_loadu_ps(m, s.scale.add(j));
            store16_avx512(a, b, scale, m, s, i, j, &k);
            j += 16;
        }
    }
}

/// The lanes of a 16-lane step with `left` channels still to store.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn mask16(left: usize) -> u16 {
    match left >= 16 {
        true => 0xffff,
        false => (1u16 << left) - 1,
    }
}

/// The constants of [`store16_avx512`], set once per tile.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx512Consts {
    zero: core::arch::x86_64::__m512,
    qmax: core::arch::x86_64::__m512,
    rounder: core::arch::x86_64::__m512,
}

#[cfg(target_arch = "x86_64")]
impl Avx512Consts {
    /// # Safety
    /// The CPU has AVX-512 F.
    #[inline(always)]
    pub(crate) unsafe fn new(qmax: u8) -> Avx512Consts {
        use core::arch::x86_64::*;
        Avx512Consts {
            zero: _mm512_setzero_ps(),
            qmax: _mm512_set1_ps(qmax as f32),
            rounder: _mm512_set1_ps(12_582_912.0),
        }
    }
}

/// The epilogue of 16 sums `a` of row `i`, channels `j..j + 16` of the tile `s` (their biases `b` and scales
/// `scale`), the lanes of `m` only: [`value`] then [`to_u8`] or the f32 store, as [`row`] computes them. Inlined
/// into [`tile_avx512`] and into the tiles that keep their sums in registers.
///
/// # Safety
/// As [`tile_rows`]' for those elements; the CPU has AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn store16_avx512(
    a: core::arch::x86_64::__m512i,
    b: core::arch::x86_64::__m512i,
    scale: core::arch::x86_64::__m512,
    m: u16,
    s: &TileStore,
    i: usize,
    j: usize,
    k: &Avx512Consts,
) {
    use core::arch::x86_64::*;
    let (at, rat) = (i * s.stride + j, i * s.residual_stride + j);
    let r = match s.residual {
        RawResidual::None => k.zero,
        RawResidual::U8(p, rs) => {
            let bytes = _mm512_maskz_loadu_epi8(m as __mmask64, p.add(rat) as *const i8);
            let v = _mm512_cvtepu8_epi32(_mm512_castsi512_si128(bytes));
            _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(rs))
        }
        RawResidual::F32(p, rs) => {
            _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p.add(rat)), _mm512_set1_ps(rs))
        }
    };
    let mut v = _mm512_add_ps(
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a, b)), scale),
        r,
    );
    if s.relu {
        v = _mm512_max_ps(v, k.zero);
    }
    match s.out {
        RawOut::U8(p) => {
            let u = _mm512_add_ps(_mm512_min_ps(_mm512_max_ps(v, k.zero), k.qmax), k.rounder);
            _mm512_mask_cvtepi32_storeu_epi8(p.add(at) as *mut i8, m, _mm512_castps_si512(u));
        }
        RawOut::F32(p) => _mm512_mask_storeu_ps(p.add(at), m, v),
    }
}

/// [`tile_rows`] written with AVX2 intrinsics, 8 channels a step and [`row`] for the last few of a row: the same
/// f32 operations in the same order, so bit for bit the same outputs (see [`tile_avx512`]).
///
/// # Safety
/// As [`tile_rows`]'; the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn tile_avx2(acc: &[i32], width: usize, s: &TileStore) {
    use core::arch::x86_64::*;
    assert!(acc.len() >= s.rows * width && width >= s.cols);
    let full = s.cols / 8 * 8;
    let k = Avx2Consts::new(s.qmax);
    for i in 0..s.rows {
        let sums = acc.as_ptr().add(i * width);
        for j in (0..full).step_by(8) {
            let a = _mm256_loadu_si256(sums.add(j) as *const __m256i);
            let b = _mm256_loadu_si256(s.bias.add(j) as *const __m256i);
            let scale = _mm256_loadu_ps(s.scale.add(j));
            store8_avx2(a, b, scale, s, i, j, &k);
        }
    }
    if full < s.cols {
        let shift = |r: RawResidual| match r {
            RawResidual::None => RawResidual::None,
            RawResidual::U8(p, rs) => RawResidual::U8(p.add(full), rs),
            RawResidual::F32(p, rs) => RawResidual::F32(p.add(full), rs),
        };
        let rest = TileStore {
            cols: s.cols - full,
            bias: s.bias.add(full),
            scale: s.scale.add(full),
            residual: shift(s.residual),
            out: match s.out {
                RawOut::U8(p) => RawOut::U8(p.add(full)),
                RawOut::F32(p) => RawOut::F32(p.add(full)),
            },
            ..*s
        };
        tile_rows(&acc[full..], width, &rest);
    }
}

/// The constants of [`store8_avx2`], set once per tile.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2Consts {
    zero: core::arch::x86_64::__m256,
    qmax: core::arch::x86_64::__m256,
    rounder: core::arch::x86_64::__m256,
    low_byte: core::arch::x86_64::__m256i,
}

#[cfg(target_arch = "x86_64")]
impl Avx2Consts {
    #[inline(always)]
    pub(crate) unsafe fn new(qmax: u8) -> Avx2Consts {
        use core::arch::x86_64::*;
        Avx2Consts {
            zero: _mm256_setzero_ps(),
            qmax: _mm256_set1_ps(qmax as f32),
            rounder: _mm256_set1_ps(12_582_912.0),
            low_byte: _mm256_set1_epi32(0xff),
        }
    }
}

/// The epilogue of 8 sums `a` of row `i`, channels `j..j + 8` of the tile `s` (their biases `b` and scales
/// `scale`): [`value`] then [`to_u8`] or the f32 store, as [`row`] computes them. Inlined into the tiles that
/// keep their sums in registers.
///
/// # Safety
/// As [`tile_rows`]' for those 8 elements; the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn store8_avx2(
    a: core::arch::x86_64::__m256i,
    b: core::arch::x86_64::__m256i,
    scale: core::arch::x86_64::__m256,
    s: &TileStore,
    i: usize,
    j: usize,
    k: &Avx2Consts,
) {
    use core::arch::x86_64::*;
    let (at, rat) = (i * s.stride + j, i * s.residual_stride + j);
    let r = match s.residual {
        RawResidual::None => k.zero,
        RawResidual::U8(p, rs) => {
            let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(rat) as *const __m128i));
            _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(rs))
        }
        RawResidual::F32(p, rs) => _mm256_mul_ps(_mm256_loadu_ps(p.add(rat)), _mm256_set1_ps(rs)),
    };
    let mut v = _mm256_add_ps(
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(a, b)), scale),
        r,
    );
    match s.out {
        RawOut::U8(p) => {
            // The clamp at zero is the ReLU's too.
            let u = _mm256_add_ps(_mm256_min_ps(_mm256_max_ps(v, k.zero), k.qmax), k.rounder);
            // The low byte of each lane, 0..=255: packed to 16 bits, then to 8, each 128-bit half keeping its
            // four bytes in its low word.
            let w = _mm256_and_si256(_mm256_castps_si256(u), k.low_byte);
            let w = _mm256_packus_epi32(w, w);
            let w = _mm256_packus_epi16(w, w);
            let bytes =
                _mm_unpacklo_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
            _mm_storel_epi64(p.add(at) as *mut __m128i, bytes);
        }
        RawOut::F32(p) => {
            if s.relu {
                v = _mm256_max_ps(v, k.zero);
            }
            _mm256_storeu_ps(p.add(at), v)
        }
    }
}
