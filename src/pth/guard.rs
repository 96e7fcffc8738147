//! The cost guard of the symbolic evaluation: `repugnant_pickle::evaluate` builds whatever tree the opcodes
//! describe, so the opcodes are simulated first, in node counts and nesting depths only, and a pickle that would
//! build too much or nest too deep is refused before anything is built.

use super::{MAX_DEPTH, MAX_HOPS};
use crate::{bail, Error, Result};
use repugnant_pickle::ops::PickleOp;
use std::collections::HashMap;

/// What the symbolic evaluation would build, in nodes and nesting depth, without building it, and whether it
/// would reach one of `repugnant_pickle::evaluate`'s unchecked indexings (OBJ without a class): a crafted pickle
/// can double an object with two opcodes (DUP, TUPLE2), so the evaluation is simulated first and refused when
/// it would create more than 4 nodes per opcode (torch's state dicts need about 3) or nest deeper than
/// [`MAX_DEPTH`] (dropping a deeper tree could overflow the stack).
pub(super) fn check_evaluation_cost(ops: &[PickleOp<'_>]) -> Result<()> {
    #[derive(Clone, Copy)]
    enum Sim {
        Mark,
        Ref(u32),
        Val { nodes: u64, depth: u32 },
    }
    let budget = 4 * ops.len() as u64 + 65_536;
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
