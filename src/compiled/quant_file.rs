//! A quantized model file (`resnet quantize`): safetensors, with the metadata of a model file (`resnet.arch`,
//! `resnet.classes`, `resnet.eval_transform`, `resnet.input_size`) and `resnet.quantization`, the record of how it
//! was made ([`Record`]). Its tensors, per convolution of the compiled network (names as in the state dict,
//! weights in PyTorch's OIHW layout, every batch norm folded first):
//!
//! - the stem, stored in f32 (quantized when the file loads, [`QuantNet::quantize_stem`]): `NAME.weight` F32
//!   `[cout, cin, k, k]`, `NAME.bias` F32 `[cout]`;
//! - every other convolution: `NAME.weight` I8 `[cout, cin, k, k]` (symmetric, in [-127, 127]; the AVX2 path
//!   halves them into [-63, 63] when it builds the network, see `int8`), `NAME.weight_scale`
//!   F32 `[cout]` (the weight is `weight · weight_scale[cout]`), `NAME.bias` F32 `[cout]` (quantized when loaded,
//!   in units of the sum), `NAME.input_clip` F32 `[]` (the calibrated largest value of its `u8` input: its scale
//!   is `input_clip / qmax`, `qmax` 255, or 127 on the AVX2 path);
//! - the classifier in f32: `fc.weight`, `fc.bias` (`fc.1.` in the chapter's naming).
//!
//! Reading checks the declared network against the file's size before building it, then every tensor's name,
//! dtype and shape, every scale and clip (finite, positive) and the record: a file that is not exactly this is
//! refused with one line. The bytes are a function of the inputs (header keys sorted).

use super::int8::{quantize_weights, Method, QuantNet};
use super::{CompiledNet, Step};
use crate::checkpoint::{parse_arch, with_metadata, META_ARCH};
use crate::error::{clip, Context};
use crate::kernels::int8::Path as KernelPath;
use crate::nn::{ResNet, ResNetConfig};
use crate::{bail, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Metadata key holding the quantization record ([`Record`] as JSON); its presence makes a file a quantized one.
pub const META_QUANT: &str = "resnet.quantization";

/// The version of the layout this module writes and reads.
pub const FORMAT: u32 = 1;

/// How a quantized file was made (`resnet.quantization`), fields in sorted order so that the JSON is too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// What the activations are (a fixed description, for readers of the file).
    pub activations: String,
    /// Calibration images run through the f32 network.
    pub calibration_images: usize,
    /// How each activation's clip was chosen ([`Method`]'s display: `min-max`, `percentile 99.99`).
    pub calibration_method: String,
    /// sha256 of the calibration images as the network read them (the NCHW f32 inputs, little-endian, in order).
    pub calibration_sha256: String,
    /// The layout's version ([`FORMAT`]).
    pub format: u32,
    /// What the weights are (a fixed description).
    pub weights: String,
}

impl Record {
    /// The record of a calibration by `method` over `images` images whose inputs hash to `sha256`.
    pub fn new(method: Method, images: usize, sha256: String) -> Record {
        Record {
            activations: "u8 per tensor, zero point 0, scale input_clip / qmax (255; 127 on AVX2)"
                .into(),
            calibration_images: images,
            calibration_method: method.to_string(),
            calibration_sha256: sha256,
            format: FORMAT,
            weights:
                "i8 per output channel, symmetric, batch norms folded; stem and classifier f32"
                    .into(),
        }
    }

    /// The calibration method the record names.
    pub fn method(&self) -> Result<Method> {
        self.calibration_method.parse()
    }
}

/// Whether `bytes` is a quantized file: safetensors whose metadata holds [`META_QUANT`].
pub fn is_quantized(bytes: &[u8]) -> bool {
    SafeTensors::read_metadata(bytes).is_ok_and(|(_, h)| {
        h.metadata()
            .as_ref()
            .is_some_and(|m| m.contains_key(META_QUANT))
    })
}

/// HWIO `[k, k, cin, cout]` to OIHW `[cout, cin, k, k]`.
fn hwio_to_oihw<T: Copy + Default>(w: &[T], k: usize, cin: usize, cout: usize) -> Vec<T> {
    let mut out = vec![T::default(); w.len()];
    for t in 0..k * k {
        for ci in 0..cin {
            for co in 0..cout {
                out[(co * cin + ci) * k * k + t] = w[(t * cin + ci) * cout + co];
            }
        }
    }
    out
}

/// OIHW `[cout, cin, k, k]` to HWIO `[k, k, cin, cout]`.
fn oihw_to_hwio<T: Copy + Default>(w: &[T], k: usize, cin: usize, cout: usize) -> Vec<T> {
    let mut out = vec![T::default(); w.len()];
    for t in 0..k * k {
        for ci in 0..cin {
            for co in 0..cout {
                out[(t * cin + ci) * cout + co] = w[(co * cin + ci) * k * k + t];
            }
        }
    }
    out
}

/// Per convolution of `net`: the value its input is (the step that runs it).
fn conv_inputs(net: &CompiledNet) -> Vec<usize> {
    let mut inputs = vec![0; net.convs.len()];
    for step in &net.steps {
        if let Step::Conv { conv, input, .. } = step {
            inputs[*conv] = *input;
        }
    }
    inputs
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The quantized file of the f32 network `net` with activation `clips` ([`super::int8::Calibration::clips`]),
/// the metadata `meta` of its model file (its architecture included) and the calibration `record`.
pub fn to_bytes(
    net: &CompiledNet,
    clips: &[Option<f32>],
    record: &Record,
    meta: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let inputs = conv_inputs(net);
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, c) in net.convs.iter().enumerate() {
        let shape = vec![c.cout, c.cin, c.kernel, c.kernel];
        let name = &c.name;
        if i == 0 {
            let w = hwio_to_oihw(&c.weight, c.kernel, c.cin, c.cout);
            tensors.push((format!("{name}.weight"), Dtype::F32, shape, le_f32(&w)));
        } else {
            let Some(clip) = clips.get(inputs[i]).copied().flatten() else {
                bail!("int8: no activation clip for the input of {name}");
            };
            let (q, scale) = quantize_weights(&c.weight, c.cout);
            let q = hwio_to_oihw(&q, c.kernel, c.cin, c.cout);
            let q = q.iter().map(|&v| v as u8).collect();
            tensors.push((format!("{name}.weight"), Dtype::I8, shape, q));
            tensors.push((
                format!("{name}.weight_scale"),
                Dtype::F32,
                vec![c.cout],
                le_f32(&scale),
            ));
            tensors.push((
                format!("{name}.input_clip"),
                Dtype::F32,
                vec![],
                le_f32(&[clip]),
            ));
        }
        tensors.push((
            format!("{name}.bias"),
            Dtype::F32,
            vec![c.cout],
            le_f32(&c.bias),
        ));
    }
    let fc = net.config.naming.fc();
    let (classes, features) = (
        net.fc_bias.len(),
        net.fc_weight.len() / net.fc_bias.len().max(1),
    );
    tensors.push((
        format!("{fc}.weight"),
        Dtype::F32,
        vec![classes, features],
        le_f32(&net.fc_weight),
    ));
    tensors.push((
        format!("{fc}.bias"),
        Dtype::F32,
        vec![classes],
        le_f32(&net.fc_bias),
    ));
    let mut views = Vec::with_capacity(tensors.len());
    for (k, dtype, shape, bytes) in &tensors {
        let view = TensorView::new(*dtype, shape.clone(), bytes)
            .with_context(|| format!("tensor `{k}`"))?;
        views.push((k.as_str(), view));
    }
    let bytes = safetensors::serialize(views, None).context("serializing safetensors")?;
    let mut meta = meta.clone();
    meta.insert(
        META_QUANT.into(),
        serde_json::to_string(record).expect("a plain record serializes"),
    );
    with_metadata(bytes, &meta)
}

/// One convolution as a quantized file holds it.
struct ConvTensors {
    /// HWIO f32 weights: the stem's as stored, the others' dequantized (`q · scale`).
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// The `i8` HWIO weights and their per-channel scales (`None`: the stem, f32).
    quantized: Option<(Vec<i8>, Vec<f32>)>,
    /// Its input's clip (`None`: the stem).
    input_clip: Option<f32>,
}

/// A quantized file read and checked: what [`Quantized::network`] builds the int8 network from.
pub struct Quantized {
    /// How it was made.
    pub record: Record,
    config: ResNetConfig,
    convs: Vec<ConvTensors>,
    fc_weight: Vec<f32>,
    fc_bias: Vec<f32>,
}

/// The tensors of a safetensors file, by name.
type Views<'a> = BTreeMap<String, TensorView<'a>>;

/// Takes tensor `key` of `dtype` and `shape` from `views`; `origin` names the file in errors.
fn take<'a>(
    views: &mut Views<'a>,
    key: &str,
    dtype: Dtype,
    shape: &[usize],
    origin: &str,
) -> Result<TensorView<'a>> {
    let Some(v) = views.remove(key) else {
        bail!("{origin}: quantized file lacks tensor `{key}`");
    };
    if v.dtype() != dtype || v.shape() != shape {
        bail!(
            "{origin}: tensor `{key}` is {:?} {}, the network needs {dtype:?} {shape:?}",
            v.dtype(),
            clip(&format!("{:?}", v.shape()), 60)
        );
    }
    Ok(v)
}

fn f32s(v: &TensorView<'_>) -> Vec<f32> {
    v.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Refuses values of tensor `key` that are not finite (and, with `positive`, not above zero).
fn check_values(values: &[f32], key: &str, positive: bool, origin: &str) -> Result<()> {
    let bad = |v: f32| !v.is_finite() || (positive && v <= 0.0);
    if let Some(v) = values.iter().find(|&&v| bad(v)) {
        let want = if positive {
            "positive numbers"
        } else {
            "finite numbers"
        };
        bail!("{origin}: tensor `{key}` holds {v}; it must hold {want}");
    }
    Ok(())
}

impl Quantized {
    /// Reads a quantized file's bytes (`origin` names it in errors): its metadata first (the record and the
    /// architecture, whose parameter count must fit the file's tensors before the network is built), then every
    /// tensor the network needs, exactly. Returns the parts and the file's metadata.
    pub fn read(bytes: &[u8], origin: &str) -> Result<(Quantized, BTreeMap<String, String>)> {
        let invalid = || format!("{origin}: not a valid safetensors file");
        let (_, header) = SafeTensors::read_metadata(bytes).with_context(invalid)?;
        let meta: BTreeMap<String, String> = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let Some(text) = meta.get(META_QUANT) else {
            bail!("{origin}: not a quantized model file (no `{META_QUANT}` metadata)");
        };
        let record: Record = serde_json::from_str(text).map_err(|e| {
            crate::Error::new(format!(
                "{origin}: bad `{META_QUANT}` metadata: {}",
                clip(&e.to_string(), 120)
            ))
        })?;
        if record.format != FORMAT {
            bail!(
                "{origin}: quantized file format {} (this build reads {FORMAT})",
                record.format
            );
        }
        record
            .method()
            .with_context(|| format!("{origin}: bad `{META_QUANT}` metadata"))?;
        let digest = &record.calibration_sha256;
        if record.calibration_images == 0
            || digest.len() != 64
            || !digest.bytes().all(|b| b.is_ascii_hexdigit())
        {
            bail!("{origin}: bad `{META_QUANT}` metadata: no calibration images, or a digest that is not 64 hex digits");
        }
        let Some(arch) = meta.get(META_ARCH) else {
            bail!("{origin}: quantized file lacks `{META_ARCH}` metadata");
        };
        let config = parse_arch(arch).context(origin)?;
        config.check().context(origin)?;
        let st = SafeTensors::deserialize(bytes).with_context(invalid)?;
        // Each weight is at least one byte of the file: a declared network larger than that is a lie, refused
        // before the network (4 bytes a parameter, and more for its buffers) is allocated.
        let held: usize = st
            .tensors()
            .iter()
            .map(|(_, v)| v.shape().iter().product::<usize>())
            .sum();
        match config.num_params() {
            Some(n) if n <= 2 * held + 1024 => {}
            n => bail!(
                "{origin}: the architecture it declares ({}) has {} parameters, but its tensors hold only {held} values",
                config.name(),
                n.map_or_else(|| "too many".to_string(), |n| n.to_string())
            ),
        }
        let mut views: Views = st.tensors().into_iter().collect();
        let net = CompiledNet::new(&ResNet::new(config.clone(), 0).context(origin)?, None)?;
        let mut convs = Vec::with_capacity(net.convs.len());
        for (i, c) in net.convs.iter().enumerate() {
            let (name, k) = (&c.name, c.kernel);
            let shape = [c.cout, c.cin, k, k];
            let key = format!("{name}.bias");
            let bias = f32s(&take(&mut views, &key, Dtype::F32, &[c.cout], origin)?);
            check_values(&bias, &key, false, origin)?;
            let key = format!("{name}.weight");
            let conv = if i == 0 {
                let w = f32s(&take(&mut views, &key, Dtype::F32, &shape, origin)?);
                check_values(&w, &key, false, origin)?;
                ConvTensors {
                    weight: oihw_to_hwio(&w, k, c.cin, c.cout),
                    bias,
                    quantized: None,
                    input_clip: None,
                }
            } else {
                let q = take(&mut views, &key, Dtype::I8, &shape, origin)?;
                let q: Vec<i8> = q.data().iter().map(|&b| b as i8).collect();
                if q.contains(&i8::MIN) {
                    bail!(
                        "{origin}: tensor `{key}` holds -128; symmetric weights are in [-127, 127]"
                    );
                }
                let q = oihw_to_hwio(&q, k, c.cin, c.cout);
                let key = format!("{name}.weight_scale");
                let scale = f32s(&take(&mut views, &key, Dtype::F32, &[c.cout], origin)?);
                check_values(&scale, &key, true, origin)?;
                let key = format!("{name}.input_clip");
                let clip = f32s(&take(&mut views, &key, Dtype::F32, &[], origin)?)[0];
                check_values(&[clip], &key, true, origin)?;
                let weight = q
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| v as f32 * scale[j % c.cout])
                    .collect();
                ConvTensors {
                    weight,
                    bias,
                    quantized: Some((q, scale)),
                    input_clip: Some(clip),
                }
            };
            convs.push(conv);
        }
        let fc = config.naming.fc();
        let (classes, features) = (net.fc_bias.len(), net.fc_weight.len() / net.fc_bias.len());
        let key = format!("{fc}.weight");
        let fc_weight = f32s(&take(
            &mut views,
            &key,
            Dtype::F32,
            &[classes, features],
            origin,
        )?);
        check_values(&fc_weight, &key, false, origin)?;
        let key = format!("{fc}.bias");
        let fc_bias = f32s(&take(&mut views, &key, Dtype::F32, &[classes], origin)?);
        check_values(&fc_bias, &key, false, origin)?;
        if let Some(extra) = views.keys().next() {
            bail!(
                "{origin}: unexpected tensor `{}` ({} not in the network)",
                clip(extra, 60),
                views.len()
            );
        }
        // Convolutions that read the same value must agree on its clip.
        let inputs = conv_inputs(&net);
        let mut clips: BTreeMap<usize, f32> = BTreeMap::new();
        for (i, c) in convs.iter().enumerate() {
            if let Some(clip) = c.input_clip {
                if *clips.entry(inputs[i]).or_insert(clip) != clip {
                    bail!(
                        "{origin}: `{}.input_clip` differs from that of another convolution reading the same value",
                        net.convs[i].name
                    );
                }
            }
        }
        let q = Quantized {
            record,
            config,
            convs,
            fc_weight,
            fc_bias,
        };
        Ok((q, meta))
    }

    /// The network the file describes.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// The int8 network on the kernel `path` (see [`KernelPath::detect`]).
    pub fn network(&self, path: KernelPath) -> Result<QuantNet> {
        let mut net = CompiledNet::new(&ResNet::new(self.config.clone(), 0)?, None)?;
        let inputs = conv_inputs(&net);
        let mut clips = vec![None; net.steps.len() + 1];
        let mut weights = Vec::with_capacity(self.convs.len());
        for (i, (c, t)) in net.convs.iter_mut().zip(&self.convs).enumerate() {
            c.weight.clone_from(&t.weight);
            c.bias.clone_from(&t.bias);
            if let Some(clip) = t.input_clip {
                clips[inputs[i]] = Some(clip);
            }
            weights.push(t.quantized.clone());
        }
        net.fc_weight.clone_from(&self.fc_weight);
        net.fc_bias.clone_from(&self.fc_bias);
        QuantNet::with_weights(net, &clips, weights, path)
    }
}
