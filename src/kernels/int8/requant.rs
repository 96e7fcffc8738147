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
