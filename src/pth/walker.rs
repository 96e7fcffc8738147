//! The walker over the evaluated pickle: from the tree of values `repugnant_pickle::evaluate` builds, following
//! memo references, the tensors of the state dict as [`Spec`]s (where each one's elements are), or an error
//! saying what the file holds instead (a single tensor, a whole pickled model, another object).

use super::{MAX_DIMS, MAX_HOPS, MAX_TENSORS};
use crate::{bail, Error, Result};
use repugnant_pickle::ops::PickleOp;
use repugnant_pickle::{SequenceType, Value};

/// The storage element types torch.save names in its persistent ids.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Kind {
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
    /// Bytes per element in the storage.
    pub(super) fn bytes(self) -> usize {
        match self {
            Kind::F32 => 4,
            Kind::I64 | Kind::F64 => 8,
            Kind::F16 | Kind::BF16 => 2,
        }
    }
}

/// One tensor as the pickle describes it: where its elements are, not yet read.
pub(super) struct Spec {
    /// The state dict's key.
    pub(super) key: String,
    /// Element type of the storage.
    pub(super) kind: Kind,
    /// The storage's key, `ARCHIVE/data/KEY`.
    pub(super) storage: String,
    /// First element of the view in the storage, in elements.
    pub(super) offset: usize,
    /// The tensor's size.
    pub(super) shape: Vec<usize>,
    /// The view's stride per dimension, in elements.
    pub(super) strides: Vec<usize>,
}

/// Interprets the evaluated pickle, following memo references (`Value::Ref`).
pub(super) struct Walker<'m, 'a> {
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

impl<'m, 'a> Walker<'m, 'a> {
    /// A walker of values whose references resolve in `memo`, the evaluation's memo.
    pub(super) fn new(memo: &'m std::collections::BTreeMap<u32, Value<'a>>) -> Walker<'m, 'a> {
        Walker { memo }
    }

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

    /// The tensors of the state dict `top`, in its order.
    pub(super) fn state_dict(&self, top: &Value<'a>) -> Result<Vec<Spec>> {
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
