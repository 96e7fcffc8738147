//! Tensors from their descriptions: the sizes the pickle declares checked against the file before anything is
//! allocated, each view checked against its storage, then gathered into contiguous row-major data, with half,
//! bfloat16 and double storages converted to f32.

use super::walker::{Kind, Spec};
use super::zip::Archive;
use super::MAX_TENSORS;
use crate::error::Context;
use crate::nn::{StateDict, StateTensor};
use crate::{bail, Error, Result};

/// The state dict of `specs`, in their order, read from the archive's storages. `origin` names the file in
/// errors.
pub(super) fn gather_state_dict(
    archive: &mut Archive<'_>,
    specs: Vec<Spec>,
    origin: &str,
) -> Result<StateDict> {
    if specs.len() > MAX_TENSORS {
        bail!("{origin}: {} tensors, more than {MAX_TENSORS}", specs.len());
    }
    // Sizes first, from the pickle alone, before any tensor is allocated.
    let mut total: usize = 0;
    let mut counts = Vec::with_capacity(specs.len());
    for s in &specs {
        let n = s
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                Error::new(format!(
                    "{origin}: tensor `{}`: size {:?} overflows",
                    s.key, s.shape
                ))
            })?;
        total = total.saturating_add(n);
        counts.push(n);
    }
    if total > archive.file_len() {
        bail!(
            "{origin}: its tensors declare {total} elements in all, more than the file's {} bytes could hold",
            archive.file_len()
        );
    }
    let mut sd = StateDict::with_capacity(specs.len());
    for (s, n) in specs.into_iter().zip(counts) {
        let data = archive
            .storage(&s.storage)
            .with_context(|| format!("{origin}: tensor `{}`", s.key))?;
        let width = s.kind.bytes();
        let available = data.len() / width;
        // The last element the view reaches: offset + Σ (size - 1) · stride, overflow-checked.
        let end = if n == 0 {
            Some(0)
        } else {
            s.shape
                .iter()
                .zip(&s.strides)
                .try_fold(s.offset, |a, (&d, &st)| {
                    a.checked_add((d - 1).checked_mul(st)?)
                })
                .and_then(|last| last.checked_add(1))
        };
        match end {
            Some(e) if e <= available => {}
            _ => bail!(
                "{origin}: tensor `{}`: size {:?}, stride {:?} at offset {} reach past its storage `{}` of {available} elements",
                s.key, s.shape, s.strides, s.offset, s.storage
            ),
        }
        let t = match s.kind {
            Kind::I64 => StateTensor::I64 {
                shape: s.shape.clone(),
                data: gather(&s, n, |i| {
                    i64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
                }),
            },
            kind => StateTensor::F32 {
                shape: s.shape.clone(),
                data: gather(&s, n, |i| decode_f32(kind, data, i)),
            },
        };
        sd.push((s.key, t));
    }
    Ok(sd)
}

/// Element `i` of a float storage as f32.
fn decode_f32(kind: Kind, data: &[u8], i: usize) -> f32 {
    match kind {
        Kind::F32 => f32::from_le_bytes([
            data[i * 4],
            data[i * 4 + 1],
            data[i * 4 + 2],
            data[i * 4 + 3],
        ]),
        Kind::F64 => f64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().expect("8 bytes")) as f32,
        Kind::BF16 => {
            f32::from_bits((u16::from_le_bytes([data[i * 2], data[i * 2 + 1]]) as u32) << 16)
        }
        Kind::F16 => f16_to_f32(u16::from_le_bytes([data[i * 2], data[i * 2 + 1]])),
        Kind::I64 => 0.0,
    }
}

/// IEEE half → single (exact: every half is a single).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: m · 2^-24
            let v = m as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// The view's elements in row-major order; `at` reads the storage element at an index already checked to be
/// in bounds.
fn gather<T>(s: &Spec, n: usize, at: impl Fn(usize) -> T) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let nd = s.shape.len();
    let mut idx = vec![0usize; nd];
    let mut pos = s.offset;
    for _ in 0..n {
        out.push(at(pos));
        // Odometer increment of the multi-index, moving `pos` by the strides.
        for d in (0..nd).rev() {
            // Wrapping: past the last element `pos` may leave the storage (never read), e.g. a
            // length-1 dimension with a huge stride.
            idx[d] += 1;
            pos = pos.wrapping_add(s.strides[d]);
            if idx[d] < s.shape[d] {
                break;
            }
            pos = pos.wrapping_sub(s.strides[d].wrapping_mul(s.shape[d]));
            idx[d] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
