//! ONNX export (`resnet export --onnx`): a model file's network as an ONNX graph of standard operators only
//! (Conv, BatchNormalization, Relu, Add, MaxPool, GlobalAveragePool, Flatten, Gemm), its weights as initializers
//! and its class names, preprocessing and architecture in the model's `metadata_props`.
//!
//! The graph follows the network's walk as [`crate::compiled::CompiledNet`] does: the stem (conv, batch norm,
//! ReLU, max pool for the ImageNet stem), each residual block (the shortcut's 1×1 conv and norm, the main path's
//! convs and norms with their ReLUs, the join `Add` and its ReLU), then the global average pool, `Flatten` and
//! the classifier as `Gemm` with `transB = 1` over PyTorch's `[out, in]` weight. With `fold_bn` each batch norm is
//! folded into its convolution (`compiled::fold_bn`, what the compiled network runs).

pub mod graph;
pub mod import;
mod recognize;
#[rustfmt::skip]
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto;

use crate::checkpoint::{arch_string, META_ARCH, META_CLASSES, META_INPUT_SIZE};
use crate::compiled::fold_bn;
use crate::data::transforms::Step;
use crate::model_file::ModelFile;
use crate::nn::arch::Role;
use crate::nn::{BatchNorm2d, Conv2d, ResNet};
use crate::{bail, Result};
use prost::Message;
use proto::tensor_shape_proto::{dimension::Value as Dim, Dimension};
use proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::HashSet;
use std::ops::RangeInclusive;

/// The opsets `--opset` accepts.
pub const OPSETS: RangeInclusive<i64> = 17..=21;
/// The default opset.
pub const DEFAULT_OPSET: i64 = 17;
/// The graph's input.
pub const INPUT: &str = "input";
/// The graph's output, `[N, classes]`.
pub const OUTPUT: &str = "logits";
/// `metadata_props` key of the evaluation preprocessing (JSON: the input channels, the u8 steps before
/// `ToTensor`, the normalization).
pub const META_PREPROCESSING: &str = "resnet.preprocessing";
/// The operator types an export uses.
pub const OPS: [&str; 8] = [
    "Conv",
    "BatchNormalization",
    "Relu",
    "Add",
    "MaxPool",
    "GlobalAveragePool",
    "Flatten",
    "Gemm",
];

/// How to export.
#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    /// The default-domain opset, in [`OPSETS`].
    pub opset: i64,
    /// A fixed batch size; `None`: a dynamic batch dimension `N`.
    pub batch: Option<usize>,
    /// Fold each batch norm into its convolution's weight and bias.
    pub fold_bn: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            opset: DEFAULT_OPSET,
            batch: None,
            fold_bn: false,
        }
    }
}

/// The IR version that goes with an opset (onnx's `VERSION_TABLE`: 17 and 18 → 8, 19 and 20 → 9, 21 → 10).
pub fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=18 => 8,
        19 | 20 => 9,
        _ => 10,
    }
}

/// The input's height and width when the file fixes them: the stored evaluation transform's last center crop,
/// else the size it was trained at (square); `None`: dynamic (`H`, `W`).
pub fn input_hw(file: &ModelFile) -> Option<(usize, usize)> {
    let crop = file.eval_transform.as_ref().and_then(|p| {
        p.steps.iter().rev().find_map(|s| match s {
            Step::CenterCrop(h, w) => Some((*h, *w)),
            _ => None,
        })
    });
    crop.or(file.trained_size.map(|s| (s, s)))
}

/// The model file's network as an ONNX model.
pub fn export(file: &ModelFile, opts: &ExportOptions) -> Result<ModelProto> {
    if !OPSETS.contains(&opts.opset) {
        bail!(
            "--opset must be between {} and {}, got {}",
            OPSETS.start(),
            OPSETS.end(),
            opts.opset
        );
    }
    if opts.batch == Some(0) {
        bail!("--batch must be at least 1");
    }
    let net = file.network()?;
    let mut g = Graph::new(opts.fold_bn);
    let logits = g.network(&net);
    debug_assert_eq!(logits, OUTPUT);

    let config = &net.config;
    let batch = match opts.batch {
        Some(n) => Dim::DimValue(n as i64),
        None => Dim::DimParam("N".into()),
    };
    let (h, w) = match input_hw(file) {
        Some((h, w)) => (Dim::DimValue(h as i64), Dim::DimValue(w as i64)),
        None => (Dim::DimParam("H".into()), Dim::DimParam("W".into())),
    };
    let input = value_info(
        INPUT,
        vec![
            batch.clone(),
            Dim::DimValue(config.in_channels as i64),
            h,
            w,
        ],
    );
    let output = value_info(
        OUTPUT,
        vec![batch, Dim::DimValue(config.num_classes as i64)],
    );

    let mut meta = vec![
        (
            META_CLASSES.to_string(),
            serde_json::to_string(&file.class_names()).expect("strings serialize"),
        ),
        (META_ARCH.to_string(), arch_string(config)),
    ];
    if let Some(p) = preprocessing(file) {
        meta.push((META_PREPROCESSING.to_string(), p));
    }
    if let Some(s) = file.trained_size {
        meta.push((META_INPUT_SIZE.to_string(), s.to_string()));
    }

    Ok(ModelProto {
        ir_version: Some(ir_version(opts.opset)),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opts.opset),
        }],
        producer_name: Some("resnet".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!(
            "{} ({} channels, {} classes), exported by resnet",
            config.name(),
            config.in_channels,
            config.num_classes
        )),
        graph: Some(GraphProto {
            name: Some(config.name()),
            node: g.nodes,
            initializer: g.inits,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        }),
        metadata_props: meta
            .into_iter()
            .map(|(key, value)| StringStringEntryProto {
                key: Some(key),
                value: Some(value),
            })
            .collect(),
        ..Default::default()
    })
}

/// [`export`] encoded: the `.onnx` file's bytes.
pub fn export_bytes(file: &ModelFile, opts: &ExportOptions) -> Result<Vec<u8>> {
    Ok(export(file, opts)?.encode_to_vec())
}

/// The evaluation preprocessing as JSON: `{"channels": C, "steps": [...], "normalize": [mean, std] | null}`, the
/// stored transform else what `predict` would use; `None` when neither is known (a one-channel PyTorch file).
fn preprocessing(file: &ModelFile) -> Option<String> {
    let pipeline = file.preprocess(None).ok()?;
    let mut value = serde_json::to_value(&pipeline).ok()?;
    let object = value.as_object_mut()?;
    object.insert("channels".into(), file.config.in_channels.into());
    object.remove("erasing");
    Some(value.to_string())
}

/// A value's type: f32 of the given dimensions.
fn value_info(name: &str, dims: Vec<Dim>) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|d| Dimension {
                            value: Some(d),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}

/// The nodes and initializers, built in topological order.
struct Graph {
    fold_bn: bool,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    names: HashSet<String>,
}

impl Graph {
    fn new(fold_bn: bool) -> Graph {
        Graph {
            fold_bn,
            nodes: Vec::new(),
            inits: Vec::new(),
            names: HashSet::from([INPUT.to_string()]),
        }
    }

    /// An f32 initializer (raw little-endian data); returns its name.
    fn init(&mut self, name: String, dims: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let fresh = self.names.insert(name.clone());
        debug_assert!(fresh, "{name} twice");
        self.inits.push(TensorProto {
            name: Some(name.clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    /// A node named `name` whose one output is named `output` (the node's name by default); returns the output.
    fn node(
        &mut self,
        op: &str,
        name: String,
        inputs: Vec<String>,
        attrs: Vec<AttributeProto>,
        output: Option<&str>,
    ) -> String {
        let output = output.map_or_else(|| name.clone(), str::to_string);
        let fresh = self.names.insert(output.clone());
        debug_assert!(fresh, "{output} twice");
        self.nodes.push(NodeProto {
            name: Some(name),
            op_type: Some(op.into()),
            input: inputs,
            output: vec![output.clone()],
            attribute: attrs,
            ..Default::default()
        });
        output
    }

    fn relu(&mut self, name: String, x: String) -> String {
        self.node("Relu", name, vec![x], vec![], None)
    }

    /// Convolution `conv` (key `conv_key`) of `x`, then batch norm `bn` (key `bn_key`), folded or as its own node.
    fn conv_bn(
        &mut self,
        x: String,
        conv_key: &str,
        conv: &Conv2d,
        bn: Option<(&str, &BatchNorm2d)>,
    ) -> String {
        let attrs = vec![
            ints("kernel_shape", &[conv.kernel, conv.kernel]),
            ints("strides", &[conv.stride, conv.stride]),
            ints("pads", &[conv.padding; 4]),
            ints("dilations", &[1, 1]),
            int("group", 1),
        ];
        let shape = conv.weight_shape_oihw();
        let cout = conv.out_channels;
        if self.fold_bn {
            let (weight, bias) = fold_bn(conv, bn.map(|(_, bn)| bn));
            let w = self.init(
                format!("{conv_key}.weight"),
                &shape,
                &conv.hwio_to_oihw(&weight),
            );
            let b = self.init(format!("{conv_key}.bias"), &[cout], &bias);
            return self.node("Conv", conv_key.into(), vec![x, w, b], attrs, None);
        }
        let w = self.init(format!("{conv_key}.weight"), &shape, &conv.weight_oihw());
        let mut inputs = vec![x, w];
        if conv.has_bias() {
            inputs.push(self.init(format!("{conv_key}.bias"), &[cout], &conv.bias));
        }
        let y = self.node("Conv", conv_key.into(), inputs, attrs, None);
        let Some((key, bn)) = bn else {
            return y;
        };
        let c = bn.num_features;
        let inputs = vec![
            y,
            self.init(format!("{key}.weight"), &[c], &bn.weight),
            self.init(format!("{key}.bias"), &[c], &bn.bias),
            self.init(format!("{key}.running_mean"), &[c], &bn.running_mean),
            self.init(format!("{key}.running_var"), &[c], &bn.running_var),
        ];
        let attrs = vec![
            float("epsilon", bn.eps),
            float("momentum", 1.0 - bn.momentum),
        ];
        self.node("BatchNormalization", key.into(), inputs, attrs, None)
    }

    /// The whole network from [`INPUT`]; returns the logits' name ([`OUTPUT`]).
    fn network(&mut self, net: &ResNet) -> String {
        let naming = net.config.naming;
        let [relu_name, pool_name, avg_name] = naming.stateless();
        let (stem_conv, stem_bn) = (naming.stem_conv(), naming.stem_bn());
        let mut x = self.conv_bn(
            INPUT.into(),
            stem_conv,
            &net.stem_conv,
            Some((stem_bn, &net.stem_bn)),
        );
        x = self.relu(relu_name.into(), x);
        if let Some(p) = &net.stem_pool {
            let attrs = vec![
                ints("kernel_shape", &[p.kernel, p.kernel]),
                ints("strides", &[p.stride, p.stride]),
                ints("pads", &[p.padding; 4]),
            ];
            x = self.node("MaxPool", pool_name.into(), vec![x], attrs, None);
        }
        for (k, stage) in net.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let prefix = format!("{}{}.{b}", naming.stage(), k + 1);
                let layers = naming.block_layers(block.convs.len());
                let key = |role: Role| {
                    let name = layers.iter().find(|(r, _)| *r == role).map_or("?", |l| l.1);
                    format!("{prefix}.{name}")
                };
                let shortcut = match &block.shortcut_conv {
                    Some(c) => {
                        let bn_key = key(Role::ShortcutBn);
                        let bn = block.shortcut_bn.as_ref().map(|bn| (bn_key.as_str(), bn));
                        self.conv_bn(x.clone(), &key(Role::ShortcutConv), c, bn)
                    }
                    None => x.clone(),
                };
                let last = block.convs.len() - 1;
                let mut t = x;
                for (i, (c, bn)) in block.convs.iter().zip(&block.bns).enumerate() {
                    let bn_key = key(Role::Bn(i));
                    t = self.conv_bn(t, &key(Role::Conv(i)), c, Some((&bn_key, bn)));
                    if i == last {
                        t = self.node(
                            "Add",
                            format!("{prefix}.add"),
                            vec![t, shortcut.clone()],
                            vec![],
                            None,
                        );
                        t = self.relu(format!("{prefix}.relu"), t);
                    } else if bn.relu {
                        t = self.relu(format!("{prefix}.relu{}", i + 1), t);
                    }
                }
                x = t;
            }
        }
        x = self.node("GlobalAveragePool", avg_name.into(), vec![x], vec![], None);
        x = self.node(
            "Flatten",
            "flatten".into(),
            vec![x],
            vec![int("axis", 1)],
            None,
        );
        let fc = naming.fc();
        let (out, inp) = (net.fc.out_features, net.fc.in_features);
        let w = self.init(format!("{fc}.weight"), &[out, inp], &net.fc.weight);
        let b = self.init(format!("{fc}.bias"), &[out], &net.fc.bias);
        self.node(
            "Gemm",
            fc.into(),
            vec![x, w, b],
            vec![int("transB", 1)],
            Some(OUTPUT),
        )
    }
}
