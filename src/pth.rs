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

use crate::checkpoint::MAX_FILE_BYTES;
use crate::nn::{StateDict, StateTensor};
use crate::{bail, Error, Result};
use repugnant_pickle::ops::PickleOp;
use repugnant_pickle::{SequenceType, Value};
use std::collections::HashMap;
use std::io::{Cursor, Read};

/// The pickle entry (`data.pkl`) may be at most this large: a state dict of 100,000 tensors pickles to
/// about 15 MB.
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// At most this many tensors in one state dict.
pub const MAX_TENSORS: usize = 100_000;
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
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| Error::new(format!("{origin}: not a valid .pth zip archive: {e}")))?;
    let pkl_name = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| {
            n.strip_suffix("/data.pkl")
                .is_some_and(|dir| !dir.is_empty() && !dir.contains('/'))
        })
        .map(|n| n.to_string())
        .ok_or_else(|| {
            Error::new(format!(
                "{origin}: a zip archive without ARCHIVE/data.pkl: not a file written by torch.save"
            ))
        })?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    if let Ok(mut f) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut order = Vec::new();
        f.by_ref()
            .take(16)
            .read_to_end(&mut order)
            .map_err(|e| Error::new(format!("{origin}: {prefix}byteorder: {e}")))?;
        if order != b"little" {
            bail!(
                "{origin}: byte order `{}`: only little-endian files are supported",
                String::from_utf8_lossy(&order)
            );
        }
    }
    let pkl = {
        let mut f = zip
            .by_name(&pkl_name)
            .map_err(|e| Error::new(format!("{origin}: {pkl_name}: {e}")))?;
        if f.size() > MAX_PICKLE_BYTES {
            bail!(
                "{origin}: {pkl_name} is {} bytes, more than the {MAX_PICKLE_BYTES} byte limit",
                f.size()
            );
        }
        let mut pkl = Vec::with_capacity(f.size() as usize);
        f.by_ref()
            .take(MAX_PICKLE_BYTES + 1)
            .read_to_end(&mut pkl)
            .map_err(|e| Error::new(format!("{origin}: {pkl_name}: {e}")))?;
        if pkl.len() as u64 > MAX_PICKLE_BYTES {
            bail!("{origin}: {pkl_name} is more than the {MAX_PICKLE_BYTES} byte limit");
        }
        pkl
    };
    let ops = parse_pickle(&pkl).map_err(|e| Error::new(format!("{origin}: {pkl_name}: {e}")))?;
    check_evaluation_cost(&ops).map_err(|e| Error::new(format!("{origin}: {pkl_name}: {e}")))?;
    let (stack, memo) = repugnant_pickle::evaluate(&ops, false).map_err(|e| {
        Error::new(format!(
            "{origin}: {pkl_name}: not a pickle torch.save writes: {e}"
        ))
    })?;
    let top = stack
        .last()
        .ok_or_else(|| Error::new(format!("{origin}: {pkl_name}: the pickle leaves no object")))?;
    let specs = Walker { memo: &memo.0 }
        .state_dict(top)
        .map_err(|e| Error::new(format!("{origin}: {e}")))?;
    Storages {
        zip,
        bytes,
        prefix,
        cache: HashMap::new(),
    }
    .gather(specs, origin)
}

/// Tokenizes a whole pickle, which must end with STOP.
fn parse_pickle(pkl: &[u8]) -> Result<Vec<PickleOp<'_>>> {
    match repugnant_pickle::parse_ops::<nom::error::Error<&[u8]>>(pkl) {
        Ok((rest, ops)) => {
            let stop = ops.iter().position(|op| *op == PickleOp::STOP);
            match stop {
                Some(i) => Ok(ops.into_iter().take(i + 1).collect()),
                None => bail!(
                    "truncated pickle: no STOP opcode (unreadable from byte {})",
                    pkl.len() - rest.len()
                ),
            }
        }
        Err(nom::Err::Error(e)) | Err(nom::Err::Failure(e)) => bail!(
            "not a valid pickle: bad or truncated opcode at byte {}",
            pkl.len() - e.input.len()
        ),
        Err(nom::Err::Incomplete(_)) => bail!("truncated pickle"),
    }
}

/// What the symbolic evaluation would build, in nodes and nesting depth, without building it, and whether it
/// would reach one of `repugnant_pickle::evaluate`'s unchecked indexings (OBJ without a class): a crafted pickle
/// can double an object with two opcodes (DUP, TUPLE2), so the evaluation is simulated first and refused when
/// it would create more than 8 nodes per opcode (torch's state dicts need about 3) or nest deeper than
/// [`MAX_DEPTH`] (dropping a deeper tree could overflow the stack).
fn check_evaluation_cost(ops: &[PickleOp<'_>]) -> Result<()> {
    #[derive(Clone, Copy)]
    enum Sim {
        Mark,
        Ref(u32),
        Val { nodes: u64, depth: u32 },
    }
    let budget = 8 * ops.len() as u64 + 65_536;
    let mut created: u64 = 0;
    let mut stack: Vec<Sim> = Vec::new();
    let mut memo: HashMap<u32, Sim> = HashMap::new();
    let bad = || Error::new("not a pickle torch.save writes: malformed opcode sequence");
    // Follows a Ref chain to the memo value (what `evaluate` clones or mutates); `None` when dangling.
    let resolve = |memo: &HashMap<u32, Sim>, s: Sim| -> (Sim, Option<u32>) {
        let mut cur = s;
        let mut last = None;
        for _ in 0..MAX_HOPS {
            match cur {
                Sim::Ref(id) => match memo.get(&id) {
                    Some(v) => {
                        last = Some(id);
                        cur = *v;
                    }
                    None => return (Sim::Val { nodes: 1, depth: 1 }, None),
                },
                _ => break,
            }
        }
        (cur, last)
    };
    let size = |s: Sim| match s {
        Sim::Mark | Sim::Ref(_) => (1, 1),
        Sim::Val { nodes, depth } => (nodes, depth),
    };
    fn pop_mark(stack: &mut Vec<Sim>) -> Option<Vec<Sim>> {
        let i = stack.iter().rposition(|s| matches!(s, Sim::Mark))?;
        let items = stack.split_off(i + 1);
        stack.pop();
        Some(items)
    }
    let combine = |items: &[Sim], extra_nodes: u64, extra_depth: u32| {
        let (mut n, mut d) = (extra_nodes, 0u32);
        for s in items {
            let (sn, sd) = size(*s);
            n = n.saturating_add(sn);
            d = d.max(sd);
        }
        Sim::Val {
            nodes: n,
            depth: d.saturating_add(extra_depth),
        }
    };
    for op in ops {
        let mut push = None;
        match op {
            PickleOp::MARK => push = Some(Sim::Mark),
            PickleOp::STOP => break,
            PickleOp::PROTO(_) => {}
            PickleOp::POP => {
                stack.pop().ok_or_else(bad)?;
            }
            PickleOp::POP_MARK => {
                pop_mark(&mut stack).ok_or_else(bad)?;
            }
            PickleOp::DUP => {
                let top = *stack.last().ok_or_else(bad)?;
                created = created.saturating_add(size(top).0);
                push = Some(top);
            }
            PickleOp::BINPERSID => {
                let x = stack.pop().ok_or_else(bad)?;
                push = Some(combine(&[x], 1, 1));
            }
            PickleOp::REDUCE | PickleOp::BUILD | PickleOp::STACK_GLOBAL | PickleOp::NEWOBJ => {
                let a = stack.pop().ok_or_else(bad)?;
                let b = stack.pop().ok_or_else(bad)?;
                let (ra, rb) = (resolve(&memo, a).0, resolve(&memo, b).0);
                if matches!(a, Sim::Ref(_)) {
                    created = created.saturating_add(size(ra).0);
                }
                if matches!(b, Sim::Ref(_)) {
                    created = created.saturating_add(size(rb).0);
                }
                push = Some(combine(&[ra, rb], 2, 2));
            }
            PickleOp::NEWOBJ_EX => {
                let mut items = Vec::new();
                for _ in 0..3 {
                    items.push(stack.pop().ok_or_else(bad)?);
                }
                push = Some(combine(&items, 3, 2));
            }
            PickleOp::GET(_) | PickleOp::BINGET(_) | PickleOp::LONG_BINGET(_) => {
                let id = match op {
                    PickleOp::BINGET(i) => *i as u32,
                    PickleOp::LONG_BINGET(i) => *i,
                    PickleOp::GET(s) => s.parse().map_err(|_| bad())?,
                    _ => unreachable!("matched above"),
                };
                push = Some(Sim::Ref(id));
            }
            PickleOp::PUT(_) | PickleOp::BINPUT(_) | PickleOp::LONG_BINPUT(_) => {
                let id = match op {
                    PickleOp::BINPUT(i) => *i as u32,
                    PickleOp::LONG_BINPUT(i) => *i,
                    PickleOp::PUT(s) => s.parse().map_err(|_| bad())?,
                    _ => unreachable!("matched above"),
                };
                let x = stack.pop().ok_or_else(bad)?;
                memo.insert(id, x);
                push = Some(Sim::Ref(id));
            }
            PickleOp::MEMOIZE => {
                let top = *stack.last().ok_or_else(bad)?;
                created = created.saturating_add(size(top).0);
                memo.insert(memo.len() as u32, top);
            }
            PickleOp::TUPLE | PickleOp::LIST | PickleOp::FROZENSET | PickleOp::INST(..) => {
                let items = pop_mark(&mut stack).ok_or_else(bad)?;
                push = Some(combine(&items, 4, 2));
            }
            PickleOp::OBJ => {
                let items = pop_mark(&mut stack).ok_or_else(bad)?;
                // repugnant-pickle indexes the class after the mark without checking it is there.
                if items.is_empty() {
                    return Err(bad());
                }
                let v = combine(&items, 2, 1);
                created = created.saturating_add(size(v).0);
                push = Some(v);
            }
            PickleOp::DICT => {
                let items = pop_mark(&mut stack).ok_or_else(bad)?;
                push = Some(combine(&items, items.len() as u64 + 1, 2));
            }
            PickleOp::TUPLE1 | PickleOp::TUPLE2 | PickleOp::TUPLE3 => {
                let n = match op {
                    PickleOp::TUPLE1 => 1,
                    PickleOp::TUPLE2 => 2,
                    _ => 3,
                };
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(stack.pop().ok_or_else(bad)?);
                }
                push = Some(combine(&items, 1, 1));
            }
            PickleOp::SETITEM
            | PickleOp::SETITEMS
            | PickleOp::APPEND
            | PickleOp::APPENDS
            | PickleOp::ADDITEMS => {
                let items = match op {
                    PickleOp::SETITEM => {
                        let v = stack.pop().ok_or_else(bad)?;
                        let k = stack.pop().ok_or_else(bad)?;
                        vec![k, v]
                    }
                    PickleOp::APPEND => vec![stack.pop().ok_or_else(bad)?],
                    _ => pop_mark(&mut stack).ok_or_else(bad)?,
                };
                let add = combine(&items, items.len() as u64 + 1, 2);
                let top = *stack.last().ok_or_else(bad)?;
                let (target, id) = resolve(&memo, top);
                let (tn, td) = size(target);
                let (an, ad) = size(add);
                let grown = Sim::Val {
                    nodes: tn.saturating_add(an),
                    depth: td.max(ad.saturating_add(1)),
                };
                match id {
                    Some(id) => {
                        memo.insert(id, grown);
                    }
                    None => {
                        if let Some(last) = stack.last_mut() {
                            *last = grown;
                        }
                    }
                }
                created = created.saturating_add(an);
            }
            _ => push = Some(Sim::Val { nodes: 1, depth: 1 }),
        }
        if let Some(p) = push {
            let (n, d) = size(p);
            if !matches!(p, Sim::Ref(_)) && !matches!(op, PickleOp::DUP) {
                created = created.saturating_add(n);
            }
            if d > MAX_DEPTH {
                bail!("not a pickle torch.save writes: objects nested more than {MAX_DEPTH} deep");
            }
            stack.push(p);
        }
        if created > budget {
            bail!(
                "not a pickle torch.save writes: it would build more than {budget} objects from {} opcodes",
                ops.len()
            );
        }
    }
    for s in stack.iter().chain(memo.values()) {
        if size(*s).1 > MAX_DEPTH {
            bail!("not a pickle torch.save writes: objects nested more than {MAX_DEPTH} deep");
        }
    }
    Ok(())
}

/// The storage element types torch.save names in its persistent ids.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    F32,
    I64,
    F16,
    BF16,
    F64,
}

impl Kind {
    fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "FloatStorage" => Kind::F32,
            "LongStorage" => Kind::I64,
            "HalfStorage" => Kind::F16,
            "BFloat16Storage" => Kind::BF16,
            "DoubleStorage" => Kind::F64,
            _ => return None,
        })
    }
    fn bytes(self) -> usize {
        match self {
            Kind::F32 => 4,
            Kind::I64 | Kind::F64 => 8,
            Kind::F16 | Kind::BF16 => 2,
        }
    }
}

/// One tensor as the pickle describes it: where its elements are, not yet read.
struct Spec {
    key: String,
    kind: Kind,
    storage: String,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// Interprets the evaluated pickle, following memo references (`Value::Ref`).
struct Walker<'m, 'a> {
    memo: &'m std::collections::BTreeMap<u32, Value<'a>>,
}

fn describe(v: &Value<'_>) -> String {
    match v {
        Value::Seq(SequenceType::List, _) => "a list".into(),
        Value::Seq(SequenceType::Tuple, _) => "a tuple".into(),
        Value::Seq(SequenceType::Dict, _) => "a dict".into(),
        Value::Seq(SequenceType::Set | SequenceType::FrozenSet, _) => "a set".into(),
        Value::String(_) => "a string".into(),
        Value::Bytes(_) => "bytes".into(),
        Value::Int(_) | Value::BigInt(_) => "an int".into(),
        Value::Float(_) => "a float".into(),
        Value::Bool(_) => "a bool".into(),
        Value::None => "None".into(),
        Value::Raw(op) => match op.as_ref() {
            PickleOp::BININT(_)
            | PickleOp::BININT1(_)
            | PickleOp::BININT2(_)
            | PickleOp::INT(_)
            | PickleOp::LONG(_)
            | PickleOp::LONG1(_)
            | PickleOp::LONG4(_) => "an int".into(),
            PickleOp::BINFLOAT(_) | PickleOp::FLOAT(_) => "a float".into(),
            PickleOp::NONE => "None".into(),
            PickleOp::NEWTRUE | PickleOp::NEWFALSE => "a bool".into(),
            PickleOp::BINUNICODE(_)
            | PickleOp::BINUNICODE8(_)
            | PickleOp::SHORT_BINUNICODE(_)
            | PickleOp::UNICODE(_)
            | PickleOp::STRING(_)
            | PickleOp::BINSTRING(_)
            | PickleOp::SHORT_BINSTRING(_) => "a string".into(),
            PickleOp::GLOBAL(m, n) => format!("the class `{m}.{n}`"),
            _ => "an unsupported pickle value".into(),
        },
        _ => "an object".into(),
    }
}

impl<'a> Walker<'_, 'a> {
    /// Follows references to the value they stand for.
    fn res<'v>(&'v self, mut v: &'v Value<'a>) -> Result<&'v Value<'a>> {
        for _ in 0..MAX_HOPS {
            match v {
                Value::Ref(id) => {
                    v = self
                        .memo
                        .get(id)
                        .ok_or_else(|| Error::new("pickle refers to a missing memo entry"))?
                }
                _ => return Ok(v),
            }
        }
        bail!("pickle memo references loop")
    }

    /// `module.name` of a GLOBAL (class or function reference), or of a STACK_GLOBAL (protocol 4 and up,
    /// `torch.save(..., pickle_protocol=4)`), which repugnant-pickle gives as `Global((name, module), [])`.
    fn global(&self, v: &Value<'a>) -> Result<Option<(&'a str, &'a str)>> {
        Ok(match self.res(v)? {
            Value::Raw(op) => match op.as_ref() {
                PickleOp::GLOBAL(m, n) => Some((m, n)),
                _ => None,
            },
            Value::Global(names, args) if args.is_empty() => match self.seq(names)? {
                Some([name, module]) => self.string(module)?.zip(self.string(name)?),
                _ => None,
            },
            _ => None,
        })
    }

    fn string(&self, v: &Value<'a>) -> Result<Option<&'a str>> {
        Ok(match self.res(v)? {
            Value::String(s) => Some(s),
            Value::Raw(op) => match op.as_ref() {
                PickleOp::BINUNICODE(s)
                | PickleOp::BINUNICODE8(s)
                | PickleOp::SHORT_BINUNICODE(s) => Some(s),
                PickleOp::BINSTRING(b) | PickleOp::SHORT_BINSTRING(b) => {
                    std::str::from_utf8(b).ok()
                }
                _ => None,
            },
            _ => None,
        })
    }

    fn int(&self, v: &Value<'a>) -> Result<Option<i64>> {
        Ok(match self.res(v)? {
            Value::Int(i) => Some(*i),
            Value::Raw(op) => match op.as_ref() {
                PickleOp::BININT(i) => Some(*i as i64),
                PickleOp::BININT1(i) => Some(*i as i64),
                PickleOp::BININT2(i) => Some(*i as i64),
                PickleOp::LONG1(b) if !b.is_empty() && b.len() <= 8 => {
                    let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
                    let mut le = [fill; 8];
                    le[..b.len()].copy_from_slice(b);
                    Some(i64::from_le_bytes(le))
                }
                PickleOp::LONG1([]) => Some(0),
                _ => None,
            },
            _ => None,
        })
    }

    /// The items of a tuple (or list).
    fn seq<'v>(&'v self, v: &'v Value<'a>) -> Result<Option<&'v [Value<'a>]>> {
        Ok(match self.res(v)? {
            Value::Seq(SequenceType::Tuple | SequenceType::List, items) => Some(items),
            _ => None,
        })
    }

    fn usizes(&self, v: &Value<'a>, key: &str, what: &str) -> Result<Vec<usize>> {
        let items = self
            .seq(v)?
            .ok_or_else(|| Error::new(format!("tensor `{key}`: its {what} is not a tuple")))?;
        if items.len() > MAX_DIMS {
            bail!(
                "tensor `{key}`: {} dimensions, more than {MAX_DIMS}",
                items.len()
            );
        }
        items
            .iter()
            .map(|i| {
                self.int(i)?
                    .and_then(|i| usize::try_from(i).ok())
                    .ok_or_else(|| Error::new(format!("tensor `{key}`: bad {what}")))
            })
            .collect()
    }

    /// The (key, value) pairs of a dict as repugnant-pickle builds it: pairs from DICT and SETITEM, groups
    /// of pairs from SETITEMS.
    fn dict_items<'v>(
        &'v self,
        entries: &'v [Value<'a>],
        out: &mut Vec<(&'v Value<'a>, &'v Value<'a>)>,
    ) -> Result<()> {
        for e in entries {
            let Some(items) = self.seq(e)? else {
                bail!("not a pickle torch.save writes: a malformed dict entry");
            };
            let is_group = items.iter().all(
                |i| matches!(self.res(i), Ok(Value::Seq(SequenceType::Tuple, p)) if p.len() == 2),
            );
            let is_pair = items.len() == 2 && self.string(&items[0])?.is_some();
            if is_pair || !is_group {
                if items.len() != 2 {
                    bail!("not a pickle torch.save writes: a malformed dict entry");
                }
                out.push((&items[0], &items[1]));
            } else {
                for p in items {
                    if let Some([k, v]) = self.seq(p)? {
                        out.push((k, v));
                    }
                }
            }
            if out.len() > MAX_TENSORS {
                bail!("more than {MAX_TENSORS} entries");
            }
        }
        Ok(())
    }

    fn state_dict(&self, top: &Value<'a>) -> Result<Vec<Spec>> {
        let mut top = self.res(top)?;
        // BUILD sets an OrderedDict's attributes (state_dict's `_metadata`), which are ignored.
        if let Value::Build(target, _) = top {
            top = self.res(target)?;
        }
        let entries: &[Value<'a>] = match top {
            Value::Seq(SequenceType::Dict, items) => items,
            Value::Global(callable, args)
                if self.global(callable)? == Some(("collections", "OrderedDict")) =>
            {
                // args[0] is the constructor's (empty) argument tuple, the rest is what SETITEM(S) added.
                args.get(1..).unwrap_or(&[])
            }
            _ => return Err(self.not_a_state_dict(top)),
        };
        let mut pairs = Vec::new();
        self.dict_items(entries, &mut pairs)?;
        let mut specs = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let key = self.string(k)?.ok_or_else(|| {
                Error::new(format!(
                    "not a state dict: a key is {}, not a string",
                    describe(self.res(k).unwrap_or(k))
                ))
            })?;
            specs.push(self.tensor(key, v)?);
        }
        Ok(specs)
    }

    fn not_a_state_dict(&self, top: &Value<'a>) -> Error {
        let class = match top {
            Value::Object(cls, _) | Value::Global(cls, _) => self.global(cls).ok().flatten(),
            Value::Build(inner, _) => match self.res(inner) {
                Ok(Value::Object(cls, _) | Value::Global(cls, _)) => {
                    self.global(cls).ok().flatten()
                }
                _ => None,
            },
            _ => None,
        };
        match class {
            Some(("torch._utils", "_rebuild_tensor_v2" | "_rebuild_parameter")) => Error::new(
                "not a state dict: the file holds a single tensor (`torch.save(tensor)`); save `model.state_dict()`",
            ),
            Some((m, n)) if m.starts_with("torch.nn") || self.looks_like_module(top) => Error::new(format!(
                "not a state dict: the file holds a whole pickled model (`{m}.{n}`), written by `torch.save(model)`; save `model.state_dict()` instead: `torch.save(model.state_dict(), path)`"
            )),
            Some((m, n)) => Error::new(format!(
                "not a state dict: the pickle's top-level object is a `{m}.{n}`; save `model.state_dict()`: `torch.save(model.state_dict(), path)`"
            )),
            None => Error::new(format!(
                "not a state dict: the pickle's top-level object is {}",
                describe(top)
            )),
        }
    }

    /// Whether a pickled object's state (what BUILD sets) has the attributes of an `nn.Module`.
    fn looks_like_module(&self, top: &Value<'a>) -> bool {
        let Value::Build(_, state) = top else {
            return false;
        };
        let Ok(Value::Seq(SequenceType::Dict, entries)) = self.res(state) else {
            return false;
        };
        let mut pairs = Vec::new();
        if self.dict_items(entries, &mut pairs).is_err() {
            return false;
        }
        pairs
            .iter()
            .any(|(k, _)| matches!(self.string(k), Ok(Some("_modules" | "_parameters"))))
    }

    fn tensor(&self, key: &str, v: &Value<'a>) -> Result<Spec> {
        let not_tensor = |what: String| {
            Error::new(format!(
                "not a state dict: key `{key}` holds {what}, not a tensor"
            ))
        };
        let Value::Global(callable, args) = self.res(v)? else {
            return Err(not_tensor(describe(self.res(v)?)));
        };
        let args = match args.as_slice() {
            [a] => self.seq(a)?.unwrap_or(&[]),
            _ => &[],
        };
        match self.global(callable)? {
            Some(("torch._utils", "_rebuild_tensor_v2")) => {}
            Some(("torch._utils", "_rebuild_parameter")) if !args.is_empty() => {
                return self.tensor(key, &args[0]);
            }
            Some((m, n)) => return Err(not_tensor(format!("a `{m}.{n}` object"))),
            None => return Err(not_tensor("an object".into())),
        }
        let bad = |what: &str| Error::new(format!("tensor `{key}`: {what}"));
        if args.len() < 4 {
            return Err(bad("malformed _rebuild_tensor_v2 arguments"));
        }
        let Value::PersId(pid) = self.res(&args[0])? else {
            return Err(bad("no storage reference"));
        };
        let pid = self
            .seq(pid)?
            .filter(|p| p.len() >= 3)
            .ok_or_else(|| bad("malformed storage reference"))?;
        let (module, name) = self
            .global(&pid[1])?
            .ok_or_else(|| bad("malformed storage type"))?;
        let kind = Kind::from_name(name).filter(|_| module == "torch").ok_or_else(|| {
            bad(&format!(
                "storage type `{module}.{name}` is not supported (FloatStorage, LongStorage; HalfStorage, BFloat16Storage, DoubleStorage are converted to f32)"
            ))
        })?;
        let storage = self
            .string(&pid[2])?
            .ok_or_else(|| bad("malformed storage key"))?
            .to_string();
        if storage.is_empty()
            || !storage
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(bad("malformed storage key"));
        }
        let offset = self
            .int(&args[1])?
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| bad("bad storage offset"))?;
        let shape = self.usizes(&args[2], key, "size")?;
        let strides = self.usizes(&args[3], key, "stride")?;
        if strides.len() != shape.len() {
            return Err(bad(&format!(
                "size {shape:?} and stride {strides:?} differ in length"
            )));
        }
        Ok(Spec {
            key: key.to_string(),
            kind,
            storage,
            offset,
            shape,
            strides,
        })
    }
}

/// The storages of the archive, read on demand straight from the file's bytes (torch stores them
/// uncompressed) and checked against their CRC-32 once.
struct Storages<'b> {
    zip: zip::ZipArchive<Cursor<&'b [u8]>>,
    bytes: &'b [u8],
    prefix: &'b str,
    cache: HashMap<String, &'b [u8]>,
}

impl<'b> Storages<'b> {
    fn get(&mut self, key: &str) -> Result<&'b [u8]> {
        if let Some(s) = self.cache.get(key) {
            return Ok(s);
        }
        let name = format!("{}data/{key}", self.prefix);
        let f = self
            .zip
            .by_name(&name)
            .map_err(|e| Error::new(format!("storage `{name}`: {e}")))?;
        if f.compression() != zip::CompressionMethod::Stored {
            bail!(
                "storage `{name}` is compressed ({}); torch.save stores storages uncompressed",
                f.compression()
            );
        }
        let start = f
            .data_start()
            .ok_or_else(|| Error::new(format!("storage `{name}`: no data offset")))?;
        let (size, crc) = (f.size(), f.crc32());
        let data = usize::try_from(start)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(s, n)| self.bytes.get(s..s.checked_add(n)?))
            .ok_or_else(|| Error::new(format!("storage `{name}`: truncated")))?;
        if crc32fast::hash(data) != crc {
            bail!("storage `{name}`: CRC-32 mismatch (the file is corrupted)");
        }
        self.cache.insert(key.to_string(), data);
        Ok(data)
    }

    fn gather(mut self, specs: Vec<Spec>, origin: &str) -> Result<StateDict> {
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
        if total > self.bytes.len() {
            bail!(
                "{origin}: its tensors declare {total} elements in all, more than the file's {} bytes could hold",
                self.bytes.len()
            );
        }
        let mut sd = StateDict::with_capacity(specs.len());
        for (s, n) in specs.into_iter().zip(counts) {
            let data = self
                .get(&s.storage)
                .map_err(|e| Error::new(format!("{origin}: tensor `{}`: {e}", s.key)))?;
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
