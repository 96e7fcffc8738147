//! State dictionaries in PyTorch's layouts (NCHW / OIHW, f32; `num_batches_tracked` i64), the exchange format
//! between the model and checkpoint files.

use crate::{bail, Result};

/// One tensor of a state dict.
#[derive(Clone, Debug, PartialEq)]
pub enum StateTensor {
    /// An f32 tensor: parameters and running statistics.
    F32 {
        /// PyTorch's dims (OIHW for conv weights, `[out, in]` for Linear, `[c]` for vectors).
        shape: Vec<usize>,
        /// The values, row-major over `shape` (length = product of `shape`).
        data: Vec<f32>,
    },
    /// An i64 tensor: BatchNorm's `num_batches_tracked` counter.
    I64 {
        /// PyTorch's dims: `[]` for a scalar (some writers store `[1]`).
        shape: Vec<usize>,
        /// The values, row-major over `shape` (one for a scalar).
        data: Vec<i64>,
    },
}

impl StateTensor {
    /// The tensor's dims in PyTorch's order.
    pub fn shape(&self) -> &[usize] {
        match self {
            StateTensor::F32 { shape, .. } | StateTensor::I64 { shape, .. } => shape,
        }
    }
    /// The safetensors dtype name: `"F32"` or `"I64"`.
    pub fn dtype_name(&self) -> &'static str {
        match self {
            StateTensor::F32 { .. } => "F32",
            StateTensor::I64 { .. } => "I64",
        }
    }
}

/// An ordered list of `(PyTorch key, tensor)`, in the order `net.state_dict()` gives.
pub type StateDict = Vec<(String, StateTensor)>;

/// Looks up `key` and checks it is f32 with `shape`; returns its data.
pub fn take_f32<'a>(sd: &'a StateDict, key: &str, shape: &[usize]) -> Result<&'a [f32]> {
    match sd.iter().find(|(k, _)| k == key) {
        None => bail!("missing key `{key}`"),
        Some((_, StateTensor::F32 { shape: s, data })) => {
            if s != shape {
                bail!("key `{key}`: shape {s:?}, expected {shape:?}");
            }
            Ok(data)
        }
        Some((_, t)) => bail!("key `{key}`: dtype {}, expected F32", t.dtype_name()),
    }
}

/// Looks up a scalar i64 `key` (shape `[]`, or `[1]` as some writers store it).
pub fn take_i64_scalar(sd: &StateDict, key: &str) -> Result<i64> {
    match sd.iter().find(|(k, _)| k == key) {
        None => bail!("missing key `{key}`"),
        Some((_, StateTensor::I64 { data, .. })) if data.len() == 1 => Ok(data[0]),
        Some((_, t)) => bail!(
            "key `{key}`: {} of shape {:?}, expected an I64 scalar",
            t.dtype_name(),
            t.shape()
        ),
    }
}
