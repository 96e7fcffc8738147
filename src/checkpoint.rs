//! Weights in and out, with PyTorch's key names and layouts: a file written by
//! `safetensors.torch.save_file(net.state_dict(), path)` or `torch.save(net.state_dict(), path)` loads here, and
//! ours (safetensors) loads into PyTorch with `load_state_dict(..., strict=True)`. Writes are atomic (temporary
//! file, fsync, rename).

use crate::error::{clip, Context};
use crate::nn::{BlockKind, Naming, ResNet, ResNetConfig, Shortcut, StateDict, StateTensor, Stem};
use crate::{bail, Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

/// Metadata key holding the network's description ([`ResNetConfig`] as JSON).
pub const META_ARCH: &str = "resnet.arch";
/// Metadata key holding the class names in label order (a JSON list of strings).
pub const META_CLASSES: &str = "resnet.classes";
/// Metadata key holding the evaluation transforms the model was trained with (a JSON [`crate::data::Pipeline`]).
pub const META_EVAL_TRANSFORM: &str = "resnet.eval_transform";
/// Metadata key holding the input size (height = width after resizing) the weights were trained at.
pub const META_INPUT_SIZE: &str = "resnet.input_size";

/// Files larger than this are refused before reading: the chapter's network is 45 MB, so 4 GiB leaves room for
/// far wider networks while keeping a lying or wrong file from exhausting memory.
pub const MAX_FILE_BYTES: u64 = 4 << 30;

fn bytes_f32(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn bytes_i64(data: &[i64]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Serializes a state dict (and string metadata) to safetensors bytes.
pub fn serialize(sd: &StateDict, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = sd
        .iter()
        .map(|(k, t)| match t {
            StateTensor::F32 { shape, data } => {
                (k.clone(), Dtype::F32, shape.clone(), bytes_f32(data))
            }
            StateTensor::I64 { shape, data } => {
                (k.clone(), Dtype::I64, shape.clone(), bytes_i64(data))
            }
        })
        .collect();
    let mut views = Vec::with_capacity(buffers.len());
    for (k, dtype, shape, bytes) in &buffers {
        let view = TensorView::new(*dtype, shape.clone(), bytes)
            .with_context(|| format!("tensor `{k}`"))?;
        views.push((k.as_str(), view));
    }
    let bytes = safetensors::serialize(views, None).context("serializing safetensors")?;
    with_metadata(bytes, metadata)
}

/// `bytes` (a safetensors file without metadata) with `metadata` added to its JSON header, every key of the header
/// in sorted order. The crate would write the metadata in hash-map order, which differs from process to process,
/// so equal models would get different bytes (and checksums). Tensor offsets are relative to the data, so only the
/// header and its length change.
pub(crate) fn with_metadata(
    bytes: Vec<u8>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    const N_LEN: usize = 8;
    let n = u64::from_le_bytes(bytes[..N_LEN].try_into().expect("8 bytes")) as usize;
    // BTreeMaps serialize in key order, whatever map type serde_json's `Value` holds.
    let mut header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[N_LEN..N_LEN + n]).context("serializing safetensors")?;
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(metadata).expect("strings serialize"),
    );
    let mut header = serde_json::to_vec(&header).expect("JSON values serialize");
    header.resize(header.len().next_multiple_of(N_LEN), b' ');
    let data = &bytes[N_LEN + n..];
    let mut out = Vec::with_capacity(N_LEN + header.len() + data.len());
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header);
    out.extend(data);
    Ok(out)
}

/// Parses safetensors bytes into a state dict (F32 and I64 tensors; anything else is an error naming the key)
/// and its metadata. `origin` names the file in errors.
pub fn deserialize(bytes: &[u8], origin: &str) -> Result<(StateDict, BTreeMap<String, String>)> {
    let invalid = || format!("{origin}: not a valid safetensors file");
    let (_, header) = SafeTensors::read_metadata(bytes).with_context(invalid)?;
    let st = SafeTensors::deserialize(bytes).with_context(invalid)?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    // Keep the file's own order (safetensors stores keys sorted; order does not matter for loading).
    let mut sd = StateDict::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let t = match view.dtype() {
            Dtype::F32 => StateTensor::F32 {
                shape,
                data: data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            },
            Dtype::I64 => StateTensor::I64 {
                shape,
                data: data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect(),
            },
            other => bail!("{origin}: tensor `{name}` has dtype {other:?}; only F32 (and I64 for num_batches_tracked) are supported"),
        };
        sd.push((name, t));
    }
    sd.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((sd, metadata))
}

/// A weights file's state dict and metadata, by its content: PyTorch's `torch.save` zip archive (`.pth`, no
/// metadata, read without executing its pickle), an ONNX model (named `.onnx` or decoding as one: the
/// network its graph holds, [`crate::onnx::import`]) or safetensors.
pub fn read_weights(bytes: &[u8], origin: &str) -> Result<(StateDict, BTreeMap<String, String>)> {
    // A legacy .pth goes to the .pth reader too, which says what it is (not "not a valid safetensors file").
    if crate::pth::is_pth(bytes) || crate::pth::is_legacy_pth(bytes) {
        Ok((crate::pth::read_state_dict(bytes, origin)?, BTreeMap::new()))
    } else if origin.ends_with(".onnx") || crate::onnx::import::is_onnx(bytes) {
        // Tensors an ONNX model keeps in other files are read from its folder only.
        let dir = Path::new(origin)
            .parent()
            .map(|d| match d.as_os_str().is_empty() {
                true => Path::new("."),
                false => d,
            });
        crate::onnx::import::read(bytes, origin, dir)
    } else {
        deserialize(bytes, origin)
    }
}

/// Reads a whole file, refusing files over [`MAX_FILE_BYTES`] and anything but a regular file.
pub fn read_file_limited(path: &Path) -> Result<Vec<u8>> {
    let (file, len) = crate::files::open_regular(path).context(path.display())?;
    if len > MAX_FILE_BYTES {
        bail!(
            "{}: {} bytes is larger than the {} byte limit for a checkpoint",
            path.display(),
            len,
            MAX_FILE_BYTES
        );
    }
    crate::files::read_limited(file, MAX_FILE_BYTES).context(path.display())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename, fsync of the
/// directory. A crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::new(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.context(path.display())
}

/// Whether `name` is a temporary file of [`write_atomic`]: `.NAME.tmpPID`.
fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes the temporary files a killed [`write_atomic`] left in `dir` (best effort: a file that cannot be
/// removed stays, and costs only disk space). Call only while no other process writes to `dir`.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(is_temporary) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The architecture stored in [`META_ARCH`]: the description as JSON.
pub fn arch_string(c: &ResNetConfig) -> String {
    serde_json::to_string(c).expect("a plain record serializes")
}

/// Parses [`arch_string`]'s JSON, or the format of earlier versions (`in,classes;w0,w1,..;r0,r1,..`, the
/// chapter's network with other widths and block counts).
pub fn parse_arch(s: &str) -> Result<ResNetConfig> {
    // The description is echoed cut short, and serde's message with it (it may quote the text): a description
    // of a million stages is megabytes.
    let bad = |why: &dyn std::fmt::Display| {
        Error::new(format!(
            "bad `{META_ARCH}` metadata `{}`: {}",
            clip(s, 80),
            clip(&why.to_string(), 160)
        ))
    };
    if s.trim_start().starts_with('{') {
        return serde_json::from_str(s).map_err(|e| bad(&e));
    }
    let parts: Vec<&str> = s.split(';').collect();
    if parts.len() != 3 {
        return Err(bad(&"expected JSON"));
    }
    let nums = |p: &str| -> Result<Vec<usize>> {
        p.split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .map_err(|_| bad(&format!("`{x}` is not a count")))
            })
            .collect()
    };
    let head = nums(parts[0])?;
    if head.len() != 2 {
        return Err(bad(&"expected `in_channels,num_classes` first"));
    }
    Ok(ResNetConfig {
        widths: nums(parts[1])?,
        layers: nums(parts[2])?,
        ..ResNetConfig::chapter(head[0], head[1])
    })
}

/// The shape of `key` in `sd`, if present.
fn shape_of<'a>(sd: &'a StateDict, key: &str) -> Option<&'a [usize]> {
    sd.iter().find(|(k, _)| k == key).map(|(_, t)| t.shape())
}

/// Infers the network configuration from a state dict's keys and shapes (for files written by PyTorch, which
/// carry no metadata): the chapter's `nn.Sequential` names (`0.weight`, `resnet_block1.0.conv1.weight`, …) or
/// torchvision's (`conv1.weight`, `layer1.0.conv1.weight`, …; Bottleneck when blocks have a `conv3`).
pub fn infer_config(sd: &StateDict) -> Result<ResNetConfig> {
    let naming = if shape_of(sd, "0.weight").is_some() {
        Naming::Chapter
    } else if shape_of(sd, "conv1.weight").is_some() {
        Naming::Torchvision
    } else {
        bail!("neither `0.weight` (the chapter's ResNet) nor `conv1.weight` (torchvision's ResNet) is in the file: not a ResNet state dict");
    };
    let need = |key: &str, dims: usize| -> Result<&[usize]> {
        match shape_of(sd, key) {
            Some(s) if s.len() == dims => Ok(s),
            Some(s) => bail!("key `{key}` has shape {s:?}, expected {dims} dimensions"),
            None => bail!("missing key `{key}`: not a {naming:?} ResNet state dict"),
        }
    };
    let stem = need(&format!("{}.weight", naming.stem_conv()), 4)?;
    let fc = need(&format!("{}.weight", naming.fc()), 2)?;
    let bottleneck =
        naming == Naming::Torchvision && shape_of(sd, "layer1.0.conv3.weight").is_some();
    let block = if bottleneck {
        BlockKind::Bottleneck
    } else {
        BlockKind::Basic
    };
    let mut widths = Vec::new();
    let mut layers = Vec::new();
    for k in 1.. {
        let first = format!("{}{k}.0.conv1.weight", naming.stage());
        let Some(s) = shape_of(sd, &first) else { break };
        if s.len() != 4 {
            bail!("key `{first}` has shape {s:?}, expected 4 dimensions");
        }
        if bottleneck {
            // torchvision's wide and grouped variants make conv1 wider than conv3's output / 4.
            let out = need(&format!("{}{k}.0.conv3.weight", naming.stage()), 4)?[0];
            if out != 4 * s[0] {
                bail!("`{first}` has {} output channels but the block outputs {out}: wide and grouped ResNets are not supported", s[0]);
            }
        }
        widths.push(s[0]);
        let count = (0..)
            .take_while(|i| {
                shape_of(sd, &format!("{}{k}.{i}.conv1.weight", naming.stage())).is_some()
            })
            .count();
        layers.push(count);
        if widths.len() > crate::nn::arch::MAX_STAGES {
            bail!("more than {} stages", crate::nn::arch::MAX_STAGES);
        }
    }
    if widths.is_empty() {
        bail!(
            "no `{}1.0.conv1.weight` key: not a ResNet state dict",
            naming.stage()
        );
    }
    let base = match naming {
        Naming::Chapter => ResNetConfig::chapter(stem[1], fc[0]),
        Naming::Torchvision => ResNetConfig::torchvision(block, &layers, stem[1], fc[0]),
    };
    let stem_kind = match stem[2] {
        7 => Stem::Imagenet,
        3 => Stem::Small,
        k => bail!(
            "the stem conv has a {k}×{k} kernel; expected 7×7 (ImageNet stem) or 3×3 (small stem)"
        ),
    };
    let downsample_bn = shape_of(sd, "layer2.0.downsample.1.weight").is_some()
        || shape_of(sd, "layer1.0.downsample.1.weight").is_some();
    Ok(ResNetConfig {
        widths,
        layers,
        stem: stem_kind,
        conv_bias: shape_of(sd, &format!("{}.bias", naming.stem_conv())).is_some(),
        shortcut: if naming == Naming::Chapter || !downsample_bn {
            Shortcut::Conv
        } else {
            Shortcut::ConvBn
        },
        ..base
    })
}

/// Saves the model's full state (PyTorch keys and layouts) plus metadata to `path`, atomically.
pub fn save_model(path: &Path, net: &ResNet, extra: &BTreeMap<String, String>) -> Result<()> {
    let mut meta = extra.clone();
    meta.insert("format".into(), "pt".into());
    meta.insert(META_ARCH.into(), arch_string(&net.config));
    let bytes = serialize(&net.state_dict(), &meta)?;
    write_atomic(path, &bytes)
}

/// Builds the network `config` describes for loading `sd` into, after checking that the file holds at least
/// as many values as that network has parameters: metadata (or keys) describing a huge network in a small file
/// is refused before the network is allocated.
pub fn build_for(config: ResNetConfig, sd: &StateDict, origin: &str) -> Result<ResNet> {
    // What the description itself gets wrong (0 channels or classes, a million stages) is said as such, before
    // its parameters are counted.
    config.check().context(origin)?;
    let held: usize = sd
        .iter()
        .map(|(_, t)| t.shape().iter().product::<usize>())
        .sum();
    match config.num_params() {
        Some(n) if n <= held => {}
        n => {
            let mut keys: Vec<String> = sd.iter().take(3).map(|(k, _)| clip(k, 60)).collect();
            if sd.len() > 3 {
                keys.push("…".to_string());
            }
            bail!(
                "{origin}: the architecture it declares ({}) has {} parameters, but its {} tensors ({}) hold only {held} values",
                config.name(),
                n.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                sd.len(),
                keys.join(", ")
            )
        }
    }
    ResNet::new(config, 0).context(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal models give equal bytes: the metadata's order does not follow a hash map's (each serialization builds
    /// a map with its own random hash keys, so the old code gave orders that differed from call to call).
    #[test]
    fn equal_models_serialize_to_equal_bytes() {
        let sd: StateDict = vec![
            (
                "fc.weight".into(),
                StateTensor::F32 {
                    shape: vec![2, 3],
                    data: vec![0.5; 6],
                },
            ),
            (
                "bn.num_batches_tracked".into(),
                StateTensor::I64 {
                    shape: vec![],
                    data: vec![7],
                },
            ),
        ];
        let meta: BTreeMap<String, String> = (0..32)
            .map(|i| (format!("key.{i:02}"), format!("value {i}")))
            .collect();
        let first = serialize(&sd, &meta).unwrap();
        for _ in 0..8 {
            assert_eq!(serialize(&sd, &meta).unwrap(), first);
        }
        let n = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0, "the header keeps the format's 8-byte alignment");
        let header = std::str::from_utf8(&first[8..8 + n]).unwrap();
        let at: Vec<usize> = meta
            .keys()
            .map(|k| header.find(k.as_str()).unwrap())
            .collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "metadata not in key order: {header}"
        );
        let (back, back_meta) = deserialize(&first, "test").unwrap();
        assert_eq!(back_meta, meta);
        for (k, t) in &sd {
            assert_eq!(
                back.iter().find(|(b, _)| b == k).map(|(_, t)| t),
                Some(t),
                "{k}"
            );
        }
    }
}
