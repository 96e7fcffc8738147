//! A model file read once: the network it holds, its class names, how its inputs are prepared and the size it
//! was trained at, every metadata key parsed and checked when the file is read. `predict`, `eval`, `serve` and
//! `train --init` all start from a [`ModelFile`].

use crate::checkpoint::{
    build_for, infer_config, parse_arch, read_file_limited, read_weights, META_ARCH, META_CLASSES,
    META_EVAL_TRANSFORM, META_INPUT_SIZE,
};
use crate::compiled::loaded::InferenceNet;
use crate::compiled::quant_file::{self, Quantized};
use crate::compiled::CompiledNet;
use crate::data::transforms::{Step, INPUT_SIZES, MAX_INPUT_SIDE};
use crate::data::{Pipeline, CLASS_NAMES};
use crate::error::Context;
use crate::nn::{ArchName, ResNet, ResNetConfig, StateDict};
use crate::{bail, Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A weights file (ours: safetensors with metadata; PyTorch's: safetensors or `.pth`, no metadata), its
/// metadata typed and checked: a file that carries a bad value is refused even where another value would be
/// used instead.
pub struct ModelFile {
    /// The file (named in errors).
    pub path: PathBuf,
    /// The network: from `resnet.arch` in ours, from the keys and shapes in PyTorch's.
    pub config: ResNetConfig,
    /// The class names `train` stored (`resnet.classes`), one per output.
    pub classes: Option<Vec<String>>,
    /// The evaluation transforms `train` stored (`resnet.eval_transform`).
    pub eval_transform: Option<Pipeline>,
    /// The input size it was trained at (`resnet.input_size`).
    pub trained_size: Option<usize>,
    /// The tensors, with PyTorch's keys and layouts; not yet checked against [`ModelFile::config`]'s network
    /// ([`ModelFile::network`] loads them strictly). Empty for a quantized file.
    pub weights: StateDict,
    /// A quantized file's network ([`quant_file`]), read and checked.
    pub quantized: Option<Quantized>,
}

impl ModelFile {
    /// Reads and checks the model file at `path` (refusing files over [`crate::checkpoint::MAX_FILE_BYTES`]).
    pub fn load(path: &Path) -> Result<ModelFile> {
        ModelFile::from_bytes(&read_file_limited(path)?, path)
    }

    /// [`ModelFile::load`] on a file's bytes; `path` names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<ModelFile> {
        let origin = path.display();
        let (weights, meta, quantized) = if quant_file::is_quantized(bytes) {
            let (q, meta) = Quantized::read(bytes, &origin.to_string())?;
            (StateDict::new(), meta, Some(q))
        } else {
            let (weights, meta) = read_weights(bytes, &origin.to_string())?;
            (weights, meta, None)
        };
        let config = match (&quantized, meta.get(META_ARCH)) {
            (Some(q), _) => Ok(q.config().clone()),
            (None, Some(a)) => parse_arch(a),
            (None, None) => infer_config(&weights),
        }
        .context(origin)?;
        let trained_size = meta
            .get(META_INPUT_SIZE)
            .map(|s| parse_input_size(path, s))
            .transpose()?;
        let eval_transform = stored_pipeline(path, &meta)?;
        let classes = stored_classes(path, &meta, config.num_classes)?;
        Ok(ModelFile {
            path: path.to_path_buf(),
            config,
            classes,
            eval_transform,
            trained_size,
            weights,
            quantized,
        })
    }

    /// Refuses a file that holds another network than `arch` (`--arch`; `None` accepts any).
    pub fn check_arch(&self, arch: Option<ArchName>) -> Result<()> {
        let found = self.config.name();
        match arch {
            Some(arch) if found != arch.as_str() => bail!(
                "{}: holds {found}, not {} (--arch)",
                self.path.display(),
                arch.as_str()
            ),
            _ => Ok(()),
        }
    }

    /// The network the file describes with its weights loaded strictly. A description of a network with more
    /// parameters than the file holds values is refused before the network is allocated.
    pub fn network(&self) -> Result<ResNet> {
        let origin = self.path.display().to_string();
        if self.quantized.is_some() {
            bail!("{origin}: a quantized model file runs inference only (predict, eval, serve, bench, summary --plan); start from its f32 model file");
        }
        let mut net = build_for(self.config.clone(), &self.weights, &origin)?;
        net.load_state_dict(&self.weights).context(origin)?;
        Ok(net)
    }

    /// The network compiled for inference in the file's precision: f32 ([`CompiledNet`]), or int8 on this CPU's
    /// kernel path for a quantized file.
    pub fn inference(&self) -> Result<InferenceNet> {
        Ok(match &self.quantized {
            Some(q) => {
                let mut net = q
                    .network(crate::kernels::int8::Path::detect())
                    .context(self.path.display())?;
                net.quantize_stem(&self.input_ranges().context(self.path.display())?)
                    .context(self.path.display())?;
                InferenceNet::Int8(Box::new(net))
            }
            None => InferenceNet::F32(Box::new(CompiledNet::new(&self.network()?, None)?)),
        })
    }

    /// Starts `net` from the file's weights (`train --init`): every tensor strictly, except the classifier's
    /// when `reset_head` (which then keeps its fresh initialization). Errors begin with `--init FILE`.
    pub fn load_into(&self, net: &mut ResNet, reset_head: bool) -> Result<()> {
        if self.quantized.is_some() {
            bail!("--init {}: a quantized model file cannot start training; start from its f32 model file", self.path.display());
        }
        let head = net.config.naming.fc();
        let hint = if !reset_head && self.config.num_classes != net.config.num_classes {
            " (a different class count? --reset-head starts a new classifier)"
        } else {
            ""
        };
        net.load_state_dict_except(&self.weights, reset_head.then_some(head))
            .map_err(|e| Error::new(format!("--init {}: {e}{hint}", self.path.display())))
    }

    /// The name of each output, in label order: those `train` stored, else [`default_class_names`].
    pub fn class_names(&self) -> Vec<String> {
        match &self.classes {
            Some(names) => names.clone(),
            None => default_class_names(&self.config),
        }
    }

    /// How an image, decoded to the network's channels, becomes its input: the stored transforms, else the
    /// chapter's `Resize(size)` for one channel, else torchvision's ImageNet evaluation transform for three.
    /// `resize` (`--resize`, range-checked with the other flags) forces the chapter's at that size. Stored
    /// transforms without a resize step (a run that trained at its data's own size) begin with a `Resize` to the
    /// size the model was trained at, where the file says: an image of another size is seen at the scale the
    /// network learned, and a large one does not reach the network at its own size.
    pub fn preprocess(&self, resize: Option<usize>) -> Result<Pipeline> {
        if let (None, Some(p)) = (resize, &self.eval_transform) {
            let mut p = p.clone();
            if let Some(size) = self.trained_size.filter(|_| !p.has_resize()) {
                p.steps.insert(0, Step::Resize(size));
            }
            return Ok(p);
        }
        Ok(match self.config.in_channels {
            1 => Pipeline {
                steps: vec![Step::Resize(self.input_size(resize)?)],
                normalize: None,
                erasing: None,
            },
            3 => imagenet_eval(),
            c => bail!(
                "{}: a network for {c} channels; images are read as grayscale (1) or RGB (3)",
                self.path.display()
            ),
        })
    }

    /// Each input channel's range as the preprocessing makes it ([`ModelFile::preprocess`]'s normalization of a
    /// pixel in [0, 1]): what the int8 stem quantizes its input to.
    pub fn input_ranges(&self) -> Result<Vec<(f32, f32)>> {
        let c = self.config.in_channels;
        let normalize = match &self.eval_transform {
            Some(p) => p.normalize_for(c)?,
            None if c == 3 => imagenet_eval().normalize_for(c)?,
            None => None,
        };
        Ok(match normalize {
            Some((mean, std)) => mean
                .iter()
                .zip(&std)
                .map(|(m, s)| ((0.0 - m) / s, (1.0 - m) / s))
                .collect(),
            None => vec![(0.0, 1.0); c],
        })
    }

    /// The input size of a one-channel model: `resize`, else the size it was trained at.
    fn input_size(&self, resize: Option<usize>) -> Result<usize> {
        match resize.or(self.trained_size) {
            Some(size) => Ok(size),
            None => bail!("{}: the file does not say what input size it was trained at (PyTorch files don't): pass --resize N (the chapter trains at 96)", self.path.display()),
        }
    }
}

/// `resnet.input_size`'s value, a size in [`INPUT_SIZES`].
fn parse_input_size(path: &Path, s: &str) -> Result<usize> {
    match s.parse() {
        Ok(size) if INPUT_SIZES.contains(&size) => Ok(size),
        _ => bail!(
            "{}: bad `{META_INPUT_SIZE}` metadata `{s}` (expected a size between {} and {}); pass --resize N to override it",
            path.display(),
            INPUT_SIZES.start(),
            INPUT_SIZES.end()
        ),
    }
}

/// `resnet.eval_transform`'s pipeline, checked as one that `train` stores.
fn stored_pipeline(path: &Path, meta: &BTreeMap<String, String>) -> Result<Option<Pipeline>> {
    let Some(text) = meta.get(META_EVAL_TRANSFORM) else {
        return Ok(None);
    };
    let bad = || format!("{}: bad `{META_EVAL_TRANSFORM}` metadata", path.display());
    let p: Pipeline = serde_json::from_str(text).with_context(bad)?;
    p.check_stored().with_context(bad)?;
    // What it makes of a square image (of any size when it resizes): the network's input side.
    let (h, w) = p.prepared_size(1, 1);
    if h.max(w) > MAX_INPUT_SIDE {
        bail!(
            "{}: bad `{META_EVAL_TRANSFORM}` metadata: it makes inputs of {w}×{h} pixels, more than the \
             {MAX_INPUT_SIDE}-pixel limit on a side of the network's input",
            path.display()
        );
    }
    Ok(Some(p))
}

/// `resnet.classes`'s names, one for each of the network's `num_classes` outputs.
fn stored_classes(
    path: &Path,
    meta: &BTreeMap<String, String>,
    num_classes: usize,
) -> Result<Option<Vec<String>>> {
    let Some(text) = meta.get(META_CLASSES) else {
        return Ok(None);
    };
    let names: Vec<String> = serde_json::from_str(text)
        .with_context(|| format!("{}: bad `{META_CLASSES}` metadata", path.display()))?;
    if names.len() != num_classes {
        bail!(
            "{}: `{META_CLASSES}` names {} classes, the network has {num_classes}",
            path.display(),
            names.len()
        );
    }
    Ok(Some(names))
}

/// torchvision's ImageNet evaluation transform: `Resize(256)`, `CenterCrop(224)`, `ToTensor`,
/// `Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])`.
fn imagenet_eval() -> Pipeline {
    Pipeline::imagenet(false, 224)
        .with_normalize(vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225])
}

/// ImageNet's 1000 class names in label order (torchvision's `weights.meta["categories"]`).
const IMAGENET_CLASSES: &str = include_str!("data/imagenet_classes.txt");

/// The names of a network's outputs when no file names them: Fashion-MNIST's for one channel and 10 classes,
/// ImageNet's for 1000 classes, `class K` otherwise.
pub fn default_class_names(config: &ResNetConfig) -> Vec<String> {
    match (config.in_channels, config.num_classes) {
        (1, 10) => CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        (_, 1000) => IMAGENET_CLASSES.lines().map(str::to_string).collect(),
        (_, k) => (0..k).map(|i| format!("class {i}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{arch_string, serialize};

    fn small(classes: usize) -> ResNet {
        let config = ResNetConfig {
            widths: vec![4, 8, 8, 16],
            layers: vec![2, 2, 2, 2],
            ..ResNetConfig::chapter(1, classes)
        };
        ResNet::new(config, 0).unwrap()
    }

    fn file_of(net: &ResNet, meta: &[(&str, &str)]) -> Result<ModelFile> {
        let mut meta: BTreeMap<String, String> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        meta.insert(META_ARCH.into(), arch_string(&net.config));
        let bytes = serialize(&net.state_dict(), &meta)?;
        ModelFile::from_bytes(&bytes, Path::new("m.safetensors"))
    }

    #[test]
    fn metadata_is_typed_and_checked_when_read() {
        let net = small(3);
        let file = file_of(
            &net,
            &[(META_INPUT_SIZE, "28"), (META_CLASSES, r#"["a","b","c"]"#)],
        )
        .unwrap();
        assert_eq!(file.config, net.config);
        assert_eq!(file.trained_size, Some(28));
        assert_eq!(file.class_names(), ["a", "b", "c"]);
        assert_eq!(file.preprocess(None).unwrap().steps, [Step::Resize(28)]);
        assert_eq!(file.preprocess(Some(64)).unwrap().steps, [Step::Resize(64)]);
        assert_eq!(file.network().unwrap().state_dict(), net.state_dict());

        let err = |meta: &[(&str, &str)]| file_of(&net, meta).err().unwrap().to_string();
        assert_eq!(
            err(&[(META_CLASSES, r#"["a"]"#)]),
            "m.safetensors: `resnet.classes` names 1 classes, the network has 3"
        );
        assert!(err(&[(META_INPUT_SIZE, "7")])
            .starts_with("m.safetensors: bad `resnet.input_size` metadata `7`"));
        assert!(err(&[(META_EVAL_TRANSFORM, "[")])
            .starts_with("m.safetensors: bad `resnet.eval_transform` metadata: "));
    }

    #[test]
    fn stored_transforms_without_a_resize_resize_to_the_trained_size() {
        let net = small(3);
        let stored = |steps: &str| format!(r#"{{"steps":{steps},"normalize":null}}"#);
        // Trained at its data's own size (no resize step): images are brought to that size.
        let file = file_of(
            &net,
            &[
                (META_INPUT_SIZE, "28"),
                (META_EVAL_TRANSFORM, &stored("[]")),
            ],
        )
        .unwrap();
        let p = file.preprocess(None).unwrap();
        assert_eq!(p.steps, [Step::Resize(28)]);
        assert_eq!(p.prepared_size(4000, 4000), (28, 28));
        // A stored resize is kept as it is; a file that does not say its size keeps its transforms.
        let file = file_of(
            &net,
            &[
                (META_INPUT_SIZE, "28"),
                (META_EVAL_TRANSFORM, &stored(r#"[{"resize":64}]"#)),
            ],
        )
        .unwrap();
        assert_eq!(file.preprocess(None).unwrap().steps, [Step::Resize(64)]);
        let file = file_of(&net, &[(META_EVAL_TRANSFORM, &stored("[]"))]).unwrap();
        assert_eq!(file.preprocess(None).unwrap().steps, []);
        // Transforms that make inputs larger than the network's input limit are refused when the file is read;
        // a resize followed by a crop within it is not.
        let err = file_of(
            &net,
            &[(META_EVAL_TRANSFORM, &stored(r#"[{"resize":4096}]"#))],
        )
        .err()
        .unwrap()
        .to_string();
        assert_eq!(
            err,
            "m.safetensors: bad `resnet.eval_transform` metadata: it makes inputs of 4096×4096 pixels, more \
             than the 1024-pixel limit on a side of the network's input"
        );
        let crop = stored(r#"[{"resize":1170},{"center_crop":[1024,1024]}]"#);
        assert!(file_of(&net, &[(META_EVAL_TRANSFORM, &crop)]).is_ok());
    }

    #[test]
    fn arch_and_input_size_are_asked_for_by_name() {
        let file = file_of(&small(10), &[]).unwrap();
        assert!(file.check_arch(None).is_ok());
        assert_eq!(
            file.check_arch(Some(ArchName::Chapter))
                .unwrap_err()
                .to_string(),
            format!(
                "m.safetensors: holds {}, not chapter (--arch)",
                file.config.name()
            )
        );
        assert!(file
            .preprocess(None)
            .unwrap_err()
            .to_string()
            .contains("pass --resize N"));
        assert_eq!(file.class_names()[0], CLASS_NAMES[0]);
    }

    #[test]
    fn a_different_class_count_hints_at_reset_head() {
        let file = file_of(&small(10), &[]).unwrap();
        let mut same = small(10);
        file.load_into(&mut same, false).unwrap();
        let mut other = small(5);
        let err = file.load_into(&mut other, false).unwrap_err().to_string();
        assert!(err.starts_with("--init m.safetensors: key `fc."), "{err}");
        assert!(
            err.ends_with("(a different class count? --reset-head starts a new classifier)"),
            "{err}"
        );
        file.load_into(&mut other, true).unwrap();
    }
}
