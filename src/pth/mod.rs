//! PyTorch `.pth` state dicts (`torch.save(model.state_dict(), path)`) read without executing pickle.
//!
//! The file is a zip archive: `ARCHIVE/data.pkl` is a pickle whose persistent ids name the storages
//! `ARCHIVE/data/KEY` (raw little-endian arrays, stored uncompressed). The pickle is tokenized and evaluated
//! symbolically by the `repugnant-pickle` crate — nothing in it is run or imported — and this module only
//! recognizes the shapes `torch.save` writes: a `dict` or `collections.OrderedDict` whose values are
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls. Storages `FloatStorage` and
//! `LongStorage` give F32 and I64 tensors; `HalfStorage`, `BFloat16Storage` and `DoubleStorage` are converted to
//! F32 (rounding to nearest, as `tensor.float()` does). Views (storage offsets, any non-negative strides,
//! storages shared between tensors) are gathered into contiguous row-major data.
//!
//! Every size is checked before anything is allocated (see the `MAX_*` constants and
//! [`crate::checkpoint::MAX_FILE_BYTES`]), the symbolic evaluation is bounded in work and nesting depth before it
//! runs, storages are checked against their zip CRC-32, and any input gives either a state dict or one error
//! line naming the file (and the key when known); nothing panics.
//!
//! The steps, a file each: the archive (`zip.rs`: the pickle and the storages), the cost of evaluating the
//! pickle bounded before it runs (`guard.rs`), the evaluated pickle walked to descriptions of its tensors
//! (`walker.rs`), and those gathered from the storages into tensors (`tensors.rs`).

mod guard;
mod tensors;
mod walker;
mod zip;

use crate::checkpoint::MAX_FILE_BYTES;
use crate::error::Context;
use crate::nn::StateDict;
use crate::{bail, Error, Result};
use repugnant_pickle::ops::PickleOp;

/// The pickle entry (`data.pkl`) may be at most this large: a state dict of 100,000 tensors pickles to
/// about 15 MB.
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// At most this many tensors in one state dict.
pub const MAX_TENSORS: usize = 100_000;
/// Most pickle opcodes a `.pth` may hold (torch.save writes about 34 per tensor: 60,000 tensors). With the
/// evaluation's budget of 4 values per opcode (`guard`), the pickle stage holds at most 80 MiB of opcodes and
/// 400 MiB of values, whatever the file.
pub const MAX_PICKLE_OPS: usize = 1 << 21;
/// At most this many dimensions per tensor.
pub const MAX_DIMS: usize = 16;
/// Nesting depth of the pickled object (torch's state dicts need about 10).
const MAX_DEPTH: u32 = 100;
/// Ref-to-ref hops followed when resolving the pickle memo.
const MAX_HOPS: usize = 64;

/// Whether `bytes` starts like a zip archive (`PK\x03\x04`), the format of every `torch.save` since 1.6.
pub fn is_pth(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// The first bytes of a `torch.save` file in the legacy (pre-1.6, non-zip) format: pickle protocol 2, then
/// torch's magic number 0x1950a86a20f9469cfc6c as a 10-byte LONG1.
const LEGACY_MAGIC: [u8; 14] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// Whether `bytes` starts like a legacy (pre-1.6) `torch.save` file, which [`read_state_dict`] names as such.
pub fn is_legacy_pth(bytes: &[u8]) -> bool {
    bytes.starts_with(&LEGACY_MAGIC)
}

/// Reads the state dict `torch.save(model.state_dict(), path)` wrote, in the file's order. `origin` names the
/// file in errors.
pub fn read_state_dict(bytes: &[u8], origin: &str) -> Result<StateDict> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        bail!(
            "{origin}: {} bytes is larger than the {MAX_FILE_BYTES} byte limit for a checkpoint",
            bytes.len()
        );
    }
    if !is_pth(bytes) {
        if bytes.first() == Some(&0x80) {
            bail!("{origin}: a PyTorch file in the legacy (pre-1.6, non-zip) format, which is not supported; re-save it with a current torch: `torch.save(torch.load(path), new_path)`");
        }
        bail!("{origin}: not a PyTorch .pth file (not a zip archive)");
    }
    let mut archive = self::zip::Archive::open(bytes, origin)?;
    let pkl = archive.read_pickle(origin)?;
    let pkl_name = archive.pkl_name();
    let ops = parse_pickle(&pkl).with_context(|| format!("{origin}: {pkl_name}"))?;
    guard::check_evaluation_cost(&ops).with_context(|| format!("{origin}: {pkl_name}"))?;
    let (stack, memo) = repugnant_pickle::evaluate(&ops, false)
        .with_context(|| format!("{origin}: {pkl_name}: not a pickle torch.save writes"))?;
    let top = stack
        .last()
        .ok_or_else(|| Error::new(format!("{origin}: {pkl_name}: the pickle leaves no object")))?;
    let specs = walker::Walker::new(&memo.0)
        .state_dict(top)
        .context(origin)?;
    tensors::gather_state_dict(&mut archive, specs, origin)
}

/// Tokenizes a whole pickle, which must end with STOP, one opcode at a time, refusing more than
/// [`MAX_PICKLE_OPS`] before they are all held (a pickle of one-byte opcodes within [`MAX_PICKLE_BYTES`] would
/// otherwise take 40 bytes per byte as tokens, and 48 more per value once evaluated).
fn parse_pickle(pkl: &[u8]) -> Result<Vec<PickleOp<'_>>> {
    let mut ops = Vec::new();
    let mut rest = pkl;
    loop {
        if ops.len() == MAX_PICKLE_OPS {
            bail!(
                "more than {MAX_PICKLE_OPS} pickle opcodes (torch.save writes about 34 per tensor)"
            );
        }
        match repugnant_pickle::parsers::parse_op::<nom::error::Error<&[u8]>>(rest) {
            Ok((tail, op)) => {
                rest = tail;
                let stop = op == PickleOp::STOP;
                ops.push(op);
                if stop {
                    return Ok(ops);
                }
                if rest.is_empty() {
                    bail!(
                        "truncated pickle: no STOP opcode (unreadable from byte {})",
                        pkl.len()
                    );
                }
            }
            Err(nom::Err::Error(e)) | Err(nom::Err::Failure(e)) => bail!(
                "not a valid pickle: bad or truncated opcode at byte {}",
                pkl.len() - e.input.len()
            ),
            Err(nom::Err::Incomplete(_)) => bail!("truncated pickle"),
        }
    }
}
