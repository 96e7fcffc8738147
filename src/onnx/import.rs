//! ONNX in: a ResNet graph (ours, or `torch.onnx.export`'s from torchvision's ResNets and the chapter's net, by
//! the TorchScript or the dynamo exporter, batch norm kept or folded into the convolutions as ONNX Runtime's
//! offline optimizer writes them) read into the architecture description and a state dict with PyTorch's keys,
//! so that everything downstream is the engine as it is.
//!
//! The graph is walked from its input (`recognize`): the stem (conv, batch norm, ReLU, max pool), each residual
//! block (two or three convs on the main path, the shortcut a 1×1 conv or the identity, the join `Add` and its
//! ReLU), the global average pool, the flatten and the classifier. The first node that does not fit is named
//! in the one error line. The walk's findings become a [`ResNetConfig`] (`describe`); a graph whose batch
//! norms were folded gets batch norms that compute exactly `conv + bias` (weight 1, mean 0, variance 1 − eps,
//! so that variance + eps is 1.0 in f32).

use super::graph::Graph;
use super::proto::{type_proto, ModelProto};
use super::recognize::{recognize, Bn, ConvUnit, Net, ENGINE_EPS};
use super::META_PREPROCESSING;
use crate::checkpoint::{arch_string, parse_arch, META_ARCH, META_EVAL_TRANSFORM, META_INPUT_SIZE};
use crate::data::transforms::INPUT_SIZES;
use crate::nn::arch::{BlockKind, ConvSpec, ResNetConfig, Role, Shortcut, Stem};
use crate::nn::{StateDict, StateTensor};
use crate::{bail, Error, Result};
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;

/// Whether `bytes` look like an ONNX model: they decode as a `ModelProto` with a graph and an opset import. A
/// safetensors file (an 8-byte header length, then `{`) and a zip archive are never taken for one.
pub fn is_onnx(bytes: &[u8]) -> bool {
    let safetensors = bytes.len() > 8 && bytes[8] == b'{';
    if safetensors || bytes.starts_with(b"PK") {
        return false;
    }
    ModelProto::decode(bytes).is_ok_and(|m| m.graph.is_some() && !m.opset_import.is_empty())
}

/// Reads an ONNX model's weights as a state dict with the keys of the network it holds, and metadata carrying
/// that network's description (`resnet.arch`) and, where the model says, its class names, evaluation
/// transform and input size. `origin` names the file in errors; tensors kept in other files are read from `dir`,
/// the model's folder (`None`: refused).
pub fn read(
    bytes: &[u8],
    origin: &str,
    dir: Option<&Path>,
) -> Result<(StateDict, BTreeMap<String, String>)> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| Error::new(format!("{origin}: not a valid ONNX model ({e})")))?;
    read_model(&model, dir).map_err(|e| Error::new(format!("{origin}: {e}")))
}

fn read_model(
    model: &ModelProto,
    dir: Option<&Path>,
) -> Result<(StateDict, BTreeMap<String, String>)> {
    let Some(g) = &model.graph else {
        bail!("an ONNX model without a graph");
    };
    if !model
        .opset_import
        .iter()
        .any(|o| matches!(o.domain.as_deref(), None | Some("" | "ai.onnx")))
    {
        bail!("the ONNX model imports no default-domain opset");
    }
    let meta: BTreeMap<&str, &str> = model
        .metadata_props
        .iter()
        .filter_map(|p| Some((p.key.as_deref()?, p.value.as_deref()?)))
        .collect();
    let input_hw = g
        .input
        .iter()
        .find_map(|v| fixed_hw(v.r#type.as_ref()?.value.as_ref()?));
    let graph = Graph::new(g, dir)?;
    let net = recognize(&graph, input_hw)?;
    let stored = meta.get(META_ARCH).map(|a| parse_arch(a)).transpose()?;
    let config = describe(&net, stored.as_ref(), &graph)?;
    let sd = state_dict(&net, &config)?;

    let mut out = BTreeMap::from([(META_ARCH.to_string(), arch_string(&config))]);
    for key in [crate::checkpoint::META_CLASSES, META_INPUT_SIZE] {
        if let Some(v) = meta.get(key) {
            out.insert(key.to_string(), v.to_string());
        }
    }
    if let Some(p) = meta.get(META_PREPROCESSING) {
        out.insert(
            META_EVAL_TRANSFORM.into(),
            eval_transform(p, config.in_channels)?,
        );
    }
    if let Some((h, w)) = input_hw.filter(|(h, w)| h == w && INPUT_SIZES.contains(h)) {
        out.entry(META_INPUT_SIZE.into()).or_insert(h.to_string());
        debug_assert_eq!(h, w);
    }
    Ok((sd, out))
}

/// The height and width a 4-D input type fixes, if it fixes both.
fn fixed_hw(t: &type_proto::Value) -> Option<(usize, usize)> {
    use super::proto::tensor_shape_proto::dimension::Value as Dim;
    let type_proto::Value::TensorType(t) = t else {
        return None;
    };
    let dims = &t.shape.as_ref()?.dim;
    let fixed = |i: usize| match dims.get(i)?.value {
        Some(Dim::DimValue(v)) if v > 0 => usize::try_from(v).ok(),
        _ => None,
    };
    (dims.len() == 4).then_some(())?;
    Some((fixed(2)?, fixed(3)?))
}

/// Our export's `resnet.preprocessing` (the pipeline's JSON with its `channels`) as `resnet.eval_transform`.
fn eval_transform(text: &str, channels: usize) -> Result<String> {
    let bad = |why: &str| Error::new(format!("bad `{META_PREPROCESSING}` metadata: {why}"));
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| bad("not a JSON object"))?;
    if let Some(c) = object.remove("channels") {
        if c.as_u64() != Some(channels as u64) {
            return Err(bad(&format!(
                "`channels` is {c}, the network takes {channels}"
            )));
        }
    }
    Ok(value.to_string())
}

/// The network the walk found, as a description: its structure from the graph; naming, conv biases, the
/// shortcut kind and the initialization from `stored` (our export's `resnet.arch`), else from the names the
/// exporter kept (the chapter's `fc.1`, `0.weight`, `resnet_block`) or torchvision's.
fn describe(net: &Net, stored: Option<&ResNetConfig>, g: &Graph) -> Result<ResNetConfig> {
    let stem_kind = match (net.stem.k, net.stem.stride, net.stem.pad, net.pool) {
        (7, 2, 3, true) => Stem::Imagenet,
        (3, 1, 1, false) => Stem::Small,
        (k, s, _, pool) => bail!(
            "{}: a {k}×{k} stride-{s} stem {} a max pool is neither ResNet stem (7×7/2 and a max pool, or 3×3/1)",
            net.stem.label,
            if pool { "with" } else { "without" }
        ),
    };
    let Some(first) = net.blocks.first() else {
        bail!("no residual block between the stem and the pool");
    };
    let kind = match first.main.len() {
        2 => BlockKind::Basic,
        _ => BlockKind::Bottleneck,
    };
    let (mut widths, mut layers) = (Vec::new(), Vec::<usize>::new());
    for (i, b) in net.blocks.iter().enumerate() {
        if b.main.len() != first.main.len() {
            bail!(
                "{}: a block of {} convolutions among blocks of {}",
                b.main[0].label,
                b.main.len(),
                first.main.len()
            );
        }
        let stride = b.main.iter().map(|c| c.stride).max().unwrap_or(1);
        if i == 0 || stride != 1 {
            widths.push(b.main[0].cout());
            layers.push(0);
        }
        *layers.last_mut().expect("a stage") += 1;
    }
    let chapter_names = g
        .consts
        .keys()
        .any(|k| *k == "fc.1.weight" || *k == "0.weight")
        || g.nodes.iter().any(|n| {
            n.proto
                .name
                .as_deref()
                .is_some_and(|s| s.contains("resnet_block"))
        });
    let found = ResNetConfig {
        in_channels: net.stem.cin(),
        num_classes: net.fc.dims[0],
        block: kind,
        layers,
        widths,
        stem: stem_kind,
        ..match stored {
            Some(s) => s.clone(),
            None if chapter_names => ResNetConfig::chapter(0, 0),
            None => ResNetConfig::torchvision(kind, &[], 0, 0),
        }
    };
    if let Some(s) = stored {
        if *s != found {
            bail!(
                "its `{META_ARCH}` metadata describes {}, the graph holds {}",
                s.name(),
                found.name()
            );
        }
    }
    if found.num_params().is_none() {
        bail!(
            "the graph's network ({}) is outside the supported bounds",
            found.name()
        );
    }
    check_shapes(net, &found)?;
    Ok(found)
}

/// Each convolution and the classifier have the shape the description gives them.
fn check_shapes(net: &Net, config: &ResNetConfig) -> Result<()> {
    let fits = |u: &ConvUnit, s: &ConvSpec| -> Result<()> {
        if (u.cin(), u.cout(), u.k, u.stride, u.pad) == (s.cin, s.cout, s.k, s.stride, s.pad) {
            return Ok(());
        }
        bail!(
            "cannot place {} in a ResNet: expected a {}×{} stride-{} conv from {} to {} channels (padding {}), found {}×{} stride {} from {} to {} (padding {})",
            u.label, s.k, s.k, s.stride, s.cin, s.cout, s.pad, u.k, u.k, u.stride, u.cin(), u.cout(), u.pad
        )
    };
    fits(&net.stem, &config.stem_conv())?;
    for (b, spec) in net.blocks.iter().zip(config.blocks()) {
        for (u, s) in b.main.iter().zip(spec.main_convs()) {
            fits(u, &s)?;
        }
        match (&b.shortcut, spec.shortcut_conv()) {
            (Some(u), Some(s)) => fits(u, &s)?,
            (None, None) => {}
            (_, s) => bail!(
                "{}: the block {} a shortcut convolution where a ResNet's {}",
                b.main[0].label,
                if s.is_some() { "lacks" } else { "has" },
                if s.is_some() { "has one" } else { "has none" }
            ),
        }
    }
    if net.fc.dims != [config.num_classes, config.features()] {
        bail!(
            "{}: a classifier from {} features where the last block makes {}",
            net.fc.label,
            net.fc.dims[1],
            config.features()
        );
    }
    Ok(())
}

/// The state dict of `config`'s network holding the graph's weights.
fn state_dict(net: &Net, config: &ResNetConfig) -> Result<StateDict> {
    let naming = config.naming;
    let mut sd = StateDict::new();
    let shortcut_bn = config.shortcut == Shortcut::ConvBn;
    place(
        &mut sd,
        &net.stem,
        naming.stem_conv(),
        Some(naming.stem_bn()),
        config.conv_bias,
    )?;
    let mut index = 0;
    for (k, &count) in config.layers.iter().enumerate() {
        for i in 0..count {
            let b = &net.blocks[index];
            index += 1;
            let prefix = format!("{}{}.{i}", naming.stage(), k + 1);
            let layers = naming.block_layers(b.main.len());
            let key = |role: Role| {
                layers
                    .iter()
                    .find(|(r, _)| *r == role)
                    .map(|(_, name)| format!("{prefix}.{name}"))
            };
            for (j, u) in b.main.iter().enumerate() {
                let conv = key(Role::Conv(j)).expect("every naming names the main convs");
                place(
                    &mut sd,
                    u,
                    &conv,
                    key(Role::Bn(j)).as_deref(),
                    config.conv_bias,
                )?;
            }
            if let Some(u) = &b.shortcut {
                let conv = key(Role::ShortcutConv).expect("every naming names the shortcut");
                let bn = key(Role::ShortcutBn).filter(|_| shortcut_bn);
                place(&mut sd, u, &conv, bn.as_deref(), config.conv_bias)?;
            }
        }
    }
    let fc = naming.fc();
    sd.push((
        format!("{fc}.weight"),
        f32s(net.fc.dims.to_vec(), net.fc.weight.clone()),
    ));
    sd.push((
        format!("{fc}.bias"),
        f32s(vec![net.fc.dims[0]], net.fc.bias.clone()),
    ));
    Ok(sd)
}

fn f32s(shape: Vec<usize>, data: Vec<f32>) -> StateTensor {
    StateTensor::F32 { shape, data }
}

/// Puts one convolution unit's tensors under `conv` (and `bn`, where the network has a batch norm there),
/// moving a bias or a batch norm the graph has and the network lacks where it computes the same: a folded
/// graph's bias into an identity batch norm, a batch norm the network lacks folded into the convolution.
fn place(
    sd: &mut StateDict,
    u: &ConvUnit,
    conv: &str,
    bn: Option<&str>,
    conv_bias: bool,
) -> Result<()> {
    let c = u.cout();
    let w = u.weight.f32().expect("checked FLOAT");
    let per_out = w.len() / c.max(1);
    let zeros = || vec![0.0; c];
    let bias = u.bias.map_or_else(zeros, <[f32]>::to_vec);
    let (weight, conv_b, norm) = match (bn, &u.bn) {
        (Some(_), Some(n)) => {
            let mut mean = n.mean.clone();
            if !conv_bias && u.bias.is_some() {
                mean.iter_mut().zip(&bias).for_each(|(m, b)| *m -= b);
            }
            let norm = Bn {
                weight: n.weight.clone(),
                bias: n.bias.clone(),
                mean,
                var: n.var.clone(),
            };
            (w.to_vec(), bias, Some(norm))
        }
        (Some(_), None) => {
            let (conv_b, bn_bias) = if conv_bias {
                (bias, zeros())
            } else {
                (zeros(), bias)
            };
            let identity = Bn {
                weight: vec![1.0; c],
                bias: bn_bias,
                mean: zeros(),
                var: vec![1.0 - ENGINE_EPS; c],
            };
            (w.to_vec(), conv_b, Some(identity))
        }
        (None, Some(n)) => {
            let mut weight = w.to_vec();
            let mut b = bias;
            for o in 0..c {
                let scale = n.weight[o] / (n.var[o] + ENGINE_EPS).sqrt();
                weight[o * per_out..(o + 1) * per_out]
                    .iter_mut()
                    .for_each(|v| *v *= scale);
                b[o] = (b[o] - n.mean[o]) * scale + n.bias[o];
            }
            (weight, b, None)
        }
        (None, None) => (w.to_vec(), bias, None),
    };
    if !conv_bias && norm.is_none() && conv_b.iter().any(|&b| b != 0.0) {
        bail!(
            "{}: a biased convolution where the network's has neither a bias nor a batch norm",
            u.label
        );
    }
    sd.push((
        format!("{conv}.weight"),
        f32s(u.weight.dims.clone(), weight),
    ));
    if conv_bias {
        sd.push((format!("{conv}.bias"), f32s(vec![c], conv_b)));
    }
    if let (Some(key), Some(n)) = (bn, norm) {
        for (field, v) in [
            ("weight", n.weight),
            ("bias", n.bias),
            ("running_mean", n.mean),
            ("running_var", n.var),
        ] {
            sd.push((format!("{key}.{field}"), f32s(vec![c], v)));
        }
        sd.push((
            format!("{key}.num_batches_tracked"),
            StateTensor::I64 {
                shape: vec![],
                data: vec![0],
            },
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An identity batch norm's variance makes variance + eps exactly 1.0, so it computes `x + bias` exactly.
    #[test]
    fn identity_variance_plus_eps_is_one() {
        assert_eq!((1.0 - ENGINE_EPS) + ENGINE_EPS, 1.0f32);
        assert_eq!(((1.0 - ENGINE_EPS) + ENGINE_EPS).sqrt(), 1.0f32);
    }
}
