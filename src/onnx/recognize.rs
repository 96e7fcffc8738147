//! The walk that recognizes a ResNet in an ONNX graph ([`super::import`]), from the input to the logits: the stem
//! (conv, batch norm, ReLU, max pool), each residual block (two or three convs on the main path, the shortcut a
//! 1×1 conv or the identity, the join `Add` and its ReLU), the global average pool (`GlobalAveragePool`,
//! `ReduceMean` over axes 2 and 3, or the chapter's `AveragePool` over the whole feature map), the flatten
//! (`Flatten`, `Reshape`, `Squeeze`) and the classifier (`Gemm`, or `MatMul` and `Add`). The first node that
//! does not fit is named in the error.

use super::graph::{Const, Graph, Node};
use crate::{bail, Error, Result};

/// The batch norm epsilon of the engine's `BatchNorm2d`: a graph's batch norm of another epsilon gets its
/// variance shifted by the difference.
pub(super) const ENGINE_EPS: f32 = 1e-5;

/// A batch norm's tensors, the variance adjusted to the engine's epsilon.
pub(super) struct Bn {
    pub(super) weight: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) mean: Vec<f32>,
    pub(super) var: Vec<f32>,
}

/// A convolution with what follows it: a batch norm, a ReLU.
pub(super) struct ConvUnit<'g> {
    pub(super) label: String,
    /// `[out, in, k, k]`.
    pub(super) weight: &'g Const,
    pub(super) bias: Option<&'g [f32]>,
    pub(super) bn: Option<Bn>,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) relu: bool,
    /// The value the unit ends in.
    pub(super) out: &'g str,
}

impl ConvUnit<'_> {
    pub(super) fn cout(&self) -> usize {
        self.weight.dims[0]
    }
    pub(super) fn cin(&self) -> usize {
        self.weight.dims[1]
    }
}

pub(super) struct Block<'g> {
    pub(super) main: Vec<ConvUnit<'g>>,
    pub(super) shortcut: Option<ConvUnit<'g>>,
}

/// What the walk found.
pub(super) struct Net<'g> {
    pub(super) stem: ConvUnit<'g>,
    pub(super) pool: bool,
    pub(super) blocks: Vec<Block<'g>>,
    pub(super) fc: Fc,
}

/// The classifier.
pub(super) struct Fc {
    /// `[out, in]`, PyTorch's Linear layout.
    pub(super) weight: Vec<f32>,
    pub(super) bias: Vec<f32>,
    /// `[out, in]`.
    pub(super) dims: [usize; 2],
    pub(super) label: String,
}

fn cannot_place(node: &Node<'_>, expected: &str) -> Error {
    Error::new(format!(
        "cannot place {} in a ResNet: expected {expected}",
        node.label()
    ))
}

/// The f32 constant `name` of dimensions `dims` (`None`: any), for `node`'s input `what`.
fn weight<'g>(
    g: &'g Graph<'_>,
    node: &Node<'_>,
    name: &str,
    what: &str,
    dims: Option<&[usize]>,
) -> Result<&'g Const> {
    match g.constant(name) {
        Some(c) if c.f32().is_some() && dims.is_none_or(|d| d == c.dims) => Ok(c),
        Some(c) => Err(cannot_place(
            node,
            &format!(
                "its {what} `{name}` as FLOAT of dimensions {dims:?}, not {:?}",
                c.dims
            ),
        )),
        None => Err(cannot_place(
            node,
            &format!("its {what} `{name}` to be a weight"),
        )),
    }
}

/// A square, symmetric, ungrouped 2-D `Conv` (or ONNX Runtime's `FusedConv` with a ReLU) at `node`, and the
/// batch norm and ReLU that follow it.
fn conv_unit<'g>(g: &'g Graph<'g>, node: &'g Node<'g>) -> Result<ConvUnit<'g>> {
    let fused_relu = match node.op {
        "Conv" => false,
        "FusedConv" if node.string("activation") == Some(b"Relu") && node.inputs.len() <= 3 => true,
        _ => return Err(cannot_place(node, "a convolution")),
    };
    let w = weight(g, node, node.inputs.get(1).unwrap_or(&""), "weight", None)?;
    let [o, _, kh, kw] = w.dims[..] else {
        return Err(cannot_place(node, "a 2-D convolution's 4-D weight"));
    };
    let side = |name: &str, len: usize| -> Option<usize> {
        match node.ints(name) {
            None => Some(0),
            Some(v) if v.len() == len && v.iter().all(|&x| x == v[0] && x >= 0) => {
                usize::try_from(v[0]).ok()
            }
            _ => None,
        }
    };
    let auto_pad = node.string("auto_pad").unwrap_or(b"NOTSET");
    let plain = kh == kw
        && node.int("group", 1) == 1
        && node
            .ints("dilations")
            .is_none_or(|v| v.iter().all(|&x| x == 1))
        && node
            .ints("kernel_shape")
            .is_none_or(|v| v == [kh as i64, kw as i64])
        && auto_pad == b"NOTSET";
    let (Some(stride), Some(pad)) = (side("strides", 2), side("pads", 4)) else {
        return Err(cannot_place(node, "equal strides and pads on every side"));
    };
    if !plain {
        return Err(cannot_place(
            node,
            "a square, ungrouped, undilated convolution with explicit pads",
        ));
    }
    let stride = stride.max(1);
    let bias = match node.inputs.get(2).filter(|b| !b.is_empty()) {
        Some(b) => weight(g, node, b, "bias", Some(&[o]))?.f32(),
        None => None,
    };
    let mut unit = ConvUnit {
        label: node.label(),
        weight: w,
        bias,
        bn: None,
        k: kh,
        stride,
        pad,
        relu: fused_relu,
        out: node.output,
    };
    if let Some(bn) = g
        .only_user(unit.out)
        .filter(|n| n.op == "BatchNormalization" && !fused_relu)
    {
        let t = |i: usize, what: &str| -> Result<Vec<f32>> {
            let name = bn.inputs.get(i).unwrap_or(&"");
            let c = weight(g, bn, name, what, Some(&[o]))?;
            Ok(c.f32().expect("checked FLOAT").to_vec())
        };
        if bn.int("training_mode", 0) != 0 {
            return Err(cannot_place(bn, "a batch norm in inference mode"));
        }
        let eps = bn.float("epsilon", ENGINE_EPS);
        let mut var = t(4, "variance")?;
        if eps != ENGINE_EPS {
            var.iter_mut().for_each(|v| *v += eps - ENGINE_EPS);
        }
        unit.bn = Some(Bn {
            weight: t(1, "scale")?,
            bias: t(2, "bias")?,
            mean: t(3, "mean")?,
            var,
        });
        unit.out = bn.output;
    }
    if !unit.relu {
        if let Some(relu) = g.only_user(unit.out).filter(|n| n.op == "Relu") {
            unit.relu = true;
            unit.out = relu.output;
        }
    }
    Ok(unit)
}

fn is_conv(n: &Node<'_>) -> bool {
    matches!(n.op, "Conv" | "FusedConv")
}

/// The residual block that starts at value `x`.
fn block<'g>(g: &'g Graph<'g>, x: &str) -> Result<(Block<'g>, &'g str)> {
    let users: Vec<&Node> = g.users(x).iter().map(|&i| &g.nodes[i]).collect();
    if let Some(n) = users.iter().find(|n| !is_conv(n) && n.op != "Add") {
        return Err(cannot_place(n, "a residual block's convolution"));
    }
    let convs: Vec<ConvUnit> = users
        .iter()
        .filter(|n| is_conv(n))
        .map(|n| conv_unit(g, n))
        .collect::<Result<_>>()?;
    let into_add = |u: &ConvUnit| !u.relu && g.only_user(u.out).is_some_and(|n| n.op == "Add");
    let (first, shortcut) = match <[ConvUnit; 2]>::try_from(convs) {
        Ok([a, b]) if into_add(&a) && !into_add(&b) => (b, Some(a)),
        Ok([a, b]) if into_add(&b) && !into_add(&a) => (a, Some(b)),
        Ok(_) => {
            return Err(cannot_place(
                users[0],
                "one main path and one shortcut convolution",
            ))
        }
        Err(convs) => match <[ConvUnit; 1]>::try_from(convs) {
            Ok([a]) => (a, None),
            Err(_) => {
                return Err(cannot_place(
                    users[0],
                    "one or two convolutions starting a block",
                ))
            }
        },
    };
    let mut main = vec![first];
    while let Some(last) = main.last().filter(|u| u.relu) {
        let next = match g.only_user(last.out) {
            Some(n) if is_conv(n) && main.len() < 3 => n,
            Some(n) => return Err(cannot_place(n, "the block's next convolution")),
            None => bail!("`{}` is used by several nodes or none, where a block's next convolution was expected", last.out),
        };
        main.push(conv_unit(g, next)?);
    }
    let last = main.last().expect("one or more");
    let add = match g.only_user(last.out) {
        Some(n) if n.op == "Add" && n.inputs.len() == 2 => n,
        Some(n) => return Err(cannot_place(n, "a ReLU, or the block's join (Add)")),
        None => bail!(
            "`{}` is used by several nodes or none, where a block's join (Add) was expected",
            last.out
        ),
    };
    if main.len() < 2 {
        return Err(cannot_place(
            add,
            "a block of two or three convolutions before the join",
        ));
    }
    let other = if add.inputs[0] == last.out {
        add.inputs[1]
    } else {
        add.inputs[0]
    };
    let want = shortcut.as_ref().map_or(x, |s| s.out);
    if other != want {
        return Err(cannot_place(
            add,
            &format!("it to add the block's shortcut `{want}`"),
        ));
    }
    let out = match g.only_user(add.output) {
        Some(n) if n.op == "Relu" => n.output,
        Some(n) => return Err(cannot_place(n, "the ReLU after the block's join")),
        None => bail!("`{}` is used by several nodes or none, where the ReLU after a block's join was expected", add.output),
    };
    Ok((Block { main, shortcut }, out))
}

/// The axes `node` (a `ReduceMean` or `Squeeze`) works on, from its attribute or (opset 13+) its second input.
fn axes(g: &Graph<'_>, node: &Node<'_>) -> Option<Vec<i64>> {
    let v = match node.ints("axes") {
        Some(v) => v.to_vec(),
        None => g.constant(node.inputs.get(1)?)?.i64()?.to_vec(),
    };
    let mut v: Vec<i64> = v.iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
    v.sort_unstable();
    Some(v)
}

/// The spatial size after the stem and the blocks, for an input of `hw`.
fn spatial(
    net_stem: &ConvUnit,
    pool: bool,
    blocks: &[Block],
    hw: (usize, usize),
) -> (usize, usize) {
    let conv = |n: usize, k: usize, s: usize, p: usize| (n + 2 * p).saturating_sub(k) / s + 1;
    let step = |(h, w): (usize, usize), k, s, p| (conv(h, k, s, p), conv(w, k, s, p));
    let mut hw = step(hw, net_stem.k, net_stem.stride, net_stem.pad);
    if pool {
        hw = step(hw, 3, 2, 1);
    }
    for b in blocks {
        for c in &b.main {
            hw = step(hw, c.k, c.stride, c.pad);
        }
    }
    hw
}

/// The walk from the input to the logits.
pub(super) fn recognize<'g>(g: &'g Graph<'g>, input_hw: Option<(usize, usize)>) -> Result<Net<'g>> {
    let stem = match g.only_user(g.input) {
        Some(n) if is_conv(n) => conv_unit(g, n)?,
        Some(n) => return Err(cannot_place(n, "the stem's convolution")),
        None => bail!(
            "the input `{}` is not used by one convolution (the stem)",
            g.input
        ),
    };
    if !stem.relu {
        bail!(
            "{}: the stem's convolution is not followed by a ReLU",
            stem.label
        );
    }
    let mut x = stem.out;
    let mut pool = false;
    if let Some(n) = g.only_user(x).filter(|n| n.op == "MaxPool") {
        let is = |name: &str, v: &[i64]| n.ints(name) == Some(v);
        if !(is("kernel_shape", &[3, 3])
            && is("strides", &[2, 2])
            && is("pads", &[1, 1, 1, 1])
            && n.int("ceil_mode", 0) == 0
            && n.ints("dilations")
                .is_none_or(|d| d.iter().all(|&v| v == 1)))
        {
            return Err(cannot_place(
                n,
                "the stem's 3×3 stride-2 max pool, padding 1",
            ));
        }
        pool = true;
        x = n.output;
    }
    let mut blocks = Vec::new();
    let head = loop {
        if let Some(n) = g
            .only_user(x)
            .filter(|n| matches!(n.op, "GlobalAveragePool" | "ReduceMean" | "AveragePool"))
        {
            break n;
        }
        let (b, out) = block(g, x)?;
        blocks.push(b);
        x = out;
    };
    let keep_dims = match head.op {
        "GlobalAveragePool" => true,
        "ReduceMean" if axes(g, head) == Some(vec![2, 3]) => head.int("keepdims", 1) != 0,
        "AveragePool" => {
            let hw = input_hw.map(|hw| spatial(&stem, pool, &blocks, hw));
            let zero_pads = head.ints("pads").is_none_or(|p| p.iter().all(|&v| v == 0));
            match hw {
                Some((h, w))
                    if zero_pads && head.ints("kernel_shape") == Some(&[h as i64, w as i64]) =>
                {
                    true
                }
                _ => {
                    return Err(cannot_place(
                        head,
                        "an average pool over the whole feature map (the graph's input size fixed)",
                    ))
                }
            }
        }
        _ => {
            return Err(cannot_place(
                head,
                "a global average pool over axes 2 and 3",
            ))
        }
    };
    x = head.output;
    let Some(mut fc) = g.only_user(x) else {
        bail!("`{x}` (the pooled features) is used by several nodes or none; the classifier was expected");
    };
    if keep_dims {
        let flat = match fc.op {
            "Flatten" => fc.int("axis", 1) == 1,
            "Squeeze" => axes(g, fc) == Some(vec![2, 3]),
            "Reshape" => g
                .constant(fc.inputs.get(1).unwrap_or(&""))
                .and_then(Const::i64)
                .is_some_and(|s| s.len() == 2 && s[0] >= -1 && s[1] >= -1 && s != [-1, -1]),
            _ => false,
        };
        if !flat {
            return Err(cannot_place(fc, "the pooled features flattened to [N, C]"));
        }
        x = fc.output;
        fc = match g.only_user(x) {
            Some(n) => n,
            None => bail!("`{x}` (the flattened features) is used by several nodes or none; the classifier was expected"),
        };
    }
    let (fc, out) = classifier(g, fc)?;
    if out != g.output {
        let next = g.users(out).first().map(|&i| &g.nodes[i]);
        return Err(match next {
            Some(n) => cannot_place(n, "nothing after the classifier (its output is the logits)"),
            None => Error::new(format!(
                "the classifier's output `{out}` is not the graph's output `{}`",
                g.output
            )),
        });
    }
    Ok(Net {
        stem,
        pool,
        blocks,
        fc,
    })
}

/// The classifier at `node`: `Gemm`, or `MatMul` and an optional `Add` of the bias; with the value it ends in.
fn classifier<'g>(g: &'g Graph<'g>, node: &'g Node<'g>) -> Result<(Fc, &'g str)> {
    let w_name = node.inputs.get(1).unwrap_or(&"");
    let (transposed, bias_name, out) = match node.op {
        "Gemm" => {
            if node.int("transA", 0) != 0
                || node.float("alpha", 1.0) != 1.0
                || node.float("beta", 1.0) != 1.0
            {
                return Err(cannot_place(
                    node,
                    "a plain Linear (alpha 1, beta 1, A not transposed)",
                ));
            }
            (
                node.int("transB", 0) != 0,
                node.inputs.get(2).copied(),
                node.output,
            )
        }
        "MatMul" => match g.only_user(node.output).filter(|n| n.op == "Add") {
            Some(add) => {
                let b = add.inputs.iter().find(|i| **i != node.output).copied();
                (false, b, add.output)
            }
            None => (false, None, node.output),
        },
        _ => {
            return Err(cannot_place(
                node,
                "the classifier (Gemm, or MatMul and Add)",
            ))
        }
    };
    let w = weight(g, node, w_name, "weight", None)?;
    let data = w.f32().expect("checked FLOAT");
    let [a, b] = w.dims[..] else {
        return Err(cannot_place(node, "a 2-D weight"));
    };
    let (o, i, weight_oi) = if transposed {
        (a, b, data.to_vec())
    } else {
        let mut t = vec![0.0; data.len()];
        for r in 0..a {
            for c in 0..b {
                t[c * a + r] = data[r * b + c];
            }
        }
        (b, a, t)
    };
    let bias = match bias_name.filter(|b| !b.is_empty()) {
        Some(name) => match g.constant(name).and_then(|c| Some((c.f32()?, &c.dims))) {
            Some((v, d)) if v.len() == o && d.iter().product::<usize>() == o => v.to_vec(),
            _ => {
                return Err(cannot_place(
                    node,
                    &format!("its bias `{name}` to be {o} FLOAT values"),
                ))
            }
        },
        None => vec![0.0; o],
    };
    let fc = Fc {
        weight: weight_oi,
        bias,
        dims: [o, i],
        label: node.label(),
    };
    Ok((fc, out))
}
