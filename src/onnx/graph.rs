//! An ONNX graph read for recognition ([`super::import`]): its constants decoded (initializers, `Constant`
//! nodes, and the small integer computations exporters write for shapes; data kept in another file read only
//! from the model's own folder), `Identity` nodes seen through, and
//! every other node checked to be in topological order with each input defined, indexed by what it produces
//! and who consumes it.

use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_proto::DataType,
    AttributeProto, GraphProto, NodeProto, TensorProto,
};
use crate::error::Context;
use crate::files::open_regular;
use crate::nn::arch::MAX_PARAMS;
use crate::{bail, Result};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

/// The most nodes a graph may have (ResNet-152 exported with every batch norm kept has about 500).
pub const MAX_NODES: usize = 100_000;

/// A constant's values.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// FLOAT.
    F32(Vec<f32>),
    /// INT64 (and INT32, widened): shapes and axes.
    I64(Vec<i64>),
}

/// A constant tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Const {
    /// Its dimensions.
    pub dims: Vec<usize>,
    /// Its values, `dims.iter().product()` of them.
    pub values: Values,
}

impl Const {
    /// The f32 values, or `None` for an integer tensor.
    pub fn f32(&self) -> Option<&[f32]> {
        match &self.values {
            Values::F32(v) => Some(v),
            Values::I64(_) => None,
        }
    }
    /// The integer values, or `None` for a float tensor.
    pub fn i64(&self) -> Option<&[i64]> {
        match &self.values {
            Values::I64(v) => Some(v),
            Values::F32(_) => None,
        }
    }
}

/// One computing node: its operator, its inputs with `Identity` seen through (an absent optional input is
/// `""`), its first output.
pub struct Node<'a> {
    /// The node as stored.
    pub proto: &'a NodeProto,
    /// Its operator type.
    pub op: &'a str,
    /// Its inputs, each renamed to the value an `Identity` chain starts from.
    pub inputs: Vec<&'a str>,
    /// Its first output.
    pub output: &'a str,
}

impl Node<'_> {
    /// The node as errors name it: its name, else its output, and its operator.
    pub fn label(&self) -> String {
        match self.proto.name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) => format!("node `{name}` ({})", self.op),
            None => format!("the {} node making `{}`", self.op, self.output),
        }
    }

    /// Attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.proto
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
    }
    /// Integer attribute `name`, else `default`.
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(|a| a.i).unwrap_or(default)
    }
    /// Float attribute `name`, else `default`.
    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).and_then(|a| a.f).unwrap_or(default)
    }
    /// Integer-list attribute `name` (`None` when absent).
    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        self.attr(name).map(|a| a.ints.as_slice())
    }
    /// String attribute `name` (`None` when absent).
    pub fn string(&self, name: &str) -> Option<&[u8]> {
        self.attr(name).and_then(|a| a.s.as_deref())
    }
}

/// The graph: constants by name, computing nodes in order, who makes and who uses each value.
pub struct Graph<'a> {
    /// Initializers and constant-folded values.
    pub consts: HashMap<&'a str, Const>,
    /// The computing nodes, in the file's (topological) order.
    pub nodes: Vec<Node<'a>>,
    /// The node (index into `nodes`) producing each value.
    pub producer: HashMap<&'a str, usize>,
    /// The nodes consuming each value, in order.
    pub consumers: HashMap<&'a str, Vec<usize>>,
    /// The one graph input that is not a constant.
    pub input: &'a str,
    /// The graph's one output, `Identity` seen through.
    pub output: &'a str,
}

/// `proto`'s values, checked against its dimensions before anything is allocated; `what` names it in errors.
/// Data kept in another file is read from `dir` (the model's folder; `None`: refused).
pub fn decode_tensor(proto: &TensorProto, what: &str, dir: Option<&Path>) -> Result<Const> {
    let mut count: usize = 1;
    let mut dims = Vec::with_capacity(proto.dims.len().min(8));
    for &d in &proto.dims {
        let d = usize::try_from(d)
            .map_err(|_| crate::Error::new(format!("{what} has a negative dimension {d}")))?;
        count = count
            .checked_mul(d)
            .filter(|&n| n <= MAX_PARAMS)
            .ok_or_else(|| {
                crate::Error::new(format!(
                    "{what} declares dimensions {:?}, more than {MAX_PARAMS} values",
                    proto.dims
                ))
            })?;
        dims.push(d);
    }
    let data_type = proto.data_type.unwrap_or(0);
    let width = match data_type {
        t if t == DataType::Float as i32 => 4,
        t if t == DataType::Int64 as i32 => 8,
        _ => 0,
    };
    let external;
    let raw = if proto.data_location == Some(DataLocation::External as i32) {
        external = external_data(proto, what, dir, count * width)?;
        Some(external.as_slice())
    } else {
        proto.raw_data.as_deref()
    };
    let values = if data_type == DataType::Float as i32 {
        match raw {
            Some(raw) => {
                check_len(what, &dims, raw.len(), count * 4)?;
                Values::F32(
                    raw.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                )
            }
            None => {
                check_len(what, &dims, proto.float_data.len(), count)?;
                Values::F32(proto.float_data.clone())
            }
        }
    } else if data_type == DataType::Int64 as i32 {
        match raw {
            Some(raw) => {
                check_len(what, &dims, raw.len(), count * 8)?;
                Values::I64(
                    raw.chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                        .collect(),
                )
            }
            None => {
                check_len(what, &dims, proto.int64_data.len(), count)?;
                Values::I64(proto.int64_data.clone())
            }
        }
    } else if data_type == DataType::Int32 as i32 && raw.is_none() {
        check_len(what, &dims, proto.int32_data.len(), count)?;
        Values::I64(proto.int32_data.iter().map(|&v| v.into()).collect())
    } else {
        let name = DataType::try_from(data_type).map_or("an unknown type", |t| t.as_str_name());
        bail!("{what} holds {name}; only FLOAT weights (and INT64 shapes) are read");
    };
    Ok(Const { dims, values })
}

/// The `bytes` bytes a tensor keeps in another file (`location`, `offset`, `length` in its `external_data`):
/// a file in `dir` itself or below it, named without `..` or an absolute path, that holds them.
fn external_data(
    proto: &TensorProto,
    what: &str,
    dir: Option<&Path>,
    bytes: usize,
) -> Result<Vec<u8>> {
    let entry = |key: &str| {
        proto
            .external_data
            .iter()
            .find(|e| e.key.as_deref() == Some(key))
            .and_then(|e| e.value.as_deref())
    };
    let location = entry("location").unwrap_or("");
    let Some(dir) = dir else {
        bail!("{what} keeps its data in another file (`{location}`), which is not read here");
    };
    let relative = Path::new(location);
    if location.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        bail!("{what} keeps its data in `{location}`, outside the model's folder (an absolute path or `..`): only files beside the model are read");
    }
    let number = |key: &str| -> Result<Option<u64>> {
        entry(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    crate::Error::new(format!(
                        "{what}: external data `{key}` `{v}` is not a count"
                    ))
                })
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    if let Some(length) = number("length")? {
        if length != bytes as u64 {
            bail!("{what} declares {length} bytes of external data; its dimensions need {bytes}");
        }
    }
    let path = dir.join(relative);
    let inside = match (dir.canonicalize(), path.canonicalize()) {
        (Ok(d), Ok(p)) => p.starts_with(d),
        _ => false,
    };
    if !inside {
        bail!(
            "{what} keeps its data in `{}`, which is not a file in the model's folder",
            path.display()
        );
    }
    let (mut file, len) = open_regular(&path).context(path.display())?;
    if offset.checked_add(bytes as u64).is_none_or(|end| end > len) {
        bail!(
            "{what}: `{}` holds {len} bytes, too few for {bytes} bytes at offset {offset}",
            path.display()
        );
    }
    let mut data = vec![0; bytes];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut data))
        .context(path.display())?;
    Ok(data)
}

fn check_len(what: &str, dims: &[usize], got: usize, want: usize) -> Result<()> {
    if got != want {
        bail!("{what} declares dimensions {dims:?} but holds {got} of the {want} values (or bytes) they need");
    }
    Ok(())
}

/// A `Constant` node's value.
fn constant_value(node: &NodeProto, what: &str, dir: Option<&Path>) -> Result<Const> {
    let Some(a) = node.attribute.first() else {
        bail!("{what} has no value");
    };
    let t = a.r#type.unwrap_or(0);
    let scalar = |values| Const {
        dims: vec![],
        values,
    };
    let list = |n: usize, values| Const {
        dims: vec![n],
        values,
    };
    Ok(match a.name.as_deref() {
        Some("value") if t == AttributeType::Tensor as i32 => match &a.t {
            Some(tensor) => decode_tensor(tensor, what, dir)?,
            None => bail!("{what} has no value"),
        },
        Some("value_float") => scalar(Values::F32(vec![a.f.unwrap_or(0.0)])),
        Some("value_int") => scalar(Values::I64(vec![a.i.unwrap_or(0)])),
        Some("value_floats") => list(a.floats.len(), Values::F32(a.floats.clone())),
        Some("value_ints") => list(a.ints.len(), Values::I64(a.ints.clone())),
        other => bail!(
            "{what}: a Constant's `{}` is not read",
            other.unwrap_or("?")
        ),
    })
}

/// `Unsqueeze` and `Concat` on small integer constants, as the TorchScript exporter builds a `Reshape`'s target
/// shape: the folded value, or `None` when the node is not such a computation.
fn fold_shape_op(node: &Node<'_>, consts: &HashMap<&str, Const>) -> Option<Const> {
    let ints = |name: &str| consts.get(name).and_then(Const::i64);
    match node.op {
        "Unsqueeze" => {
            let v = ints(node.inputs.first()?)?;
            (v.len() == 1).then(|| Const {
                dims: vec![1],
                values: Values::I64(v.to_vec()),
            })
        }
        "Concat" => {
            let mut out = Vec::new();
            for i in &node.inputs {
                out.extend_from_slice(ints(i)?);
                if out.len() > 8 {
                    return None;
                }
            }
            Some(Const {
                dims: vec![out.len()],
                values: Values::I64(out),
            })
        }
        _ => None,
    }
}

impl<'a> Graph<'a> {
    /// Reads `g`: constants decoded (external data from `dir`, the model's folder; `None`: refused),
    /// `Identity` seen through, each node's inputs defined before it.
    pub fn new(g: &'a GraphProto, dir: Option<&Path>) -> Result<Graph<'a>> {
        if g.node.len() > MAX_NODES {
            bail!(
                "{} nodes; a ResNet has far fewer than {MAX_NODES}",
                g.node.len()
            );
        }
        let mut consts: HashMap<&str, Const> = HashMap::new();
        for t in &g.initializer {
            let name = t.name.as_deref().unwrap_or("");
            let c = decode_tensor(t, &format!("initializer `{name}`"), dir)?;
            consts.insert(name, c);
        }
        let inputs: Vec<&str> = g
            .input
            .iter()
            .filter_map(|v| v.name.as_deref())
            .filter(|n| !consts.contains_key(n))
            .collect();
        let [input] = inputs[..] else {
            bail!(
                "the graph has {} inputs besides its weights ({}); a ResNet takes one image batch",
                inputs.len(),
                inputs.join(", ")
            );
        };

        let mut defined: HashSet<&str> = consts.keys().copied().collect();
        defined.insert(input);
        let made_later: HashSet<&str> = g
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(String::as_str))
            .collect();
        let mut alias: HashMap<&str, &str> = HashMap::new();
        let mut graph = Graph {
            consts,
            nodes: Vec::new(),
            producer: HashMap::new(),
            consumers: HashMap::new(),
            input,
            output: "",
        };
        for proto in &g.node {
            let op = proto.op_type.as_deref().unwrap_or("");
            let resolve = |name: &'a str| *alias.get(name).unwrap_or(&name);
            let node = Node {
                proto,
                op,
                inputs: proto.input.iter().map(|i| resolve(i.as_str())).collect(),
                output: proto.output.first().map_or("", String::as_str),
            };
            for (i, raw) in node.inputs.iter().zip(&proto.input) {
                if !i.is_empty() && !defined.contains(i) {
                    if made_later.contains(raw.as_str()) {
                        bail!("{} uses `{raw}` before it is made: the graph has a cycle or is not in topological order", node.label());
                    }
                    bail!("{} uses `{raw}`, which nothing makes", node.label());
                }
            }
            for o in &proto.output {
                if !o.is_empty() && !defined.insert(o.as_str()) {
                    bail!("{} makes `{o}`, which is already defined", node.label());
                }
            }
            if node.output.is_empty() {
                bail!("{} has no output", node.label());
            }
            let folded = match op {
                "Identity" => {
                    let Some(&from) = node.inputs.first() else {
                        bail!("{} has no input", node.label());
                    };
                    alias.insert(node.output, from);
                    continue;
                }
                "Constant" => Some(constant_value(proto, &node.label(), dir)?),
                _ => fold_shape_op(&node, &graph.consts),
            };
            if let Some(c) = folded {
                graph.consts.insert(node.output, c);
                continue;
            }
            let index = graph.nodes.len();
            for &i in &node.inputs {
                if !i.is_empty() && !graph.consts.contains_key(i) {
                    graph.consumers.entry(i).or_default().push(index);
                }
            }
            graph.producer.insert(node.output, index);
            graph.nodes.push(node);
        }
        let outputs: Vec<&str> = g.output.iter().filter_map(|v| v.name.as_deref()).collect();
        let [output] = outputs[..] else {
            bail!(
                "the graph has {} outputs; a ResNet has one (the logits)",
                outputs.len()
            );
        };
        graph.output = *alias.get(output).unwrap_or(&output);
        Ok(graph)
    }

    /// The computing nodes that use `value`.
    pub fn users(&self, value: &str) -> &[usize] {
        self.consumers.get(value).map_or(&[], Vec::as_slice)
    }

    /// The one node using `value`, when exactly one does and `value` is not the graph's output.
    pub fn only_user(&self, value: &str) -> Option<&Node<'a>> {
        match self.users(value) {
            [i] if value != self.output => Some(&self.nodes[*i]),
            _ => None,
        }
    }

    /// The constant named `name`.
    pub fn constant(&self, name: &str) -> Option<&Const> {
        self.consts.get(name)
    }
}
