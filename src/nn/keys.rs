//! The network's layers in state-dict order with their keys, and everything that follows from that one walk:
//! the parameter walk optimizers step over ([`ResNet::visit_params_mut`], [`ResNet::params_mut`]), the state dict in
//! PyTorch's layouts ([`ResNet::state_dict`]), strict loading ([`ResNet::load_state_dict`]), the gradients as a
//! state dict and the parameter count. The key names come from the description's [`Naming`] tables.

use super::arch::{Naming, Role};
use super::state::{take_f32, take_i64_scalar, StateDict, StateTensor};
use super::{BatchNorm2d, Conv2d, Linear, ResNet, Residual};
use crate::{bail, ParamMut, Result};

/// A layer that holds tensors, borrowed.
pub enum LayerRef<'a> {
    /// A convolution (weight, optional bias).
    Conv(&'a Conv2d),
    /// A batch norm (weight, bias, running statistics, batch counter).
    Bn(&'a BatchNorm2d),
    /// The classifier.
    Linear(&'a Linear),
}

/// A layer that holds tensors, borrowed mutably.
pub enum LayerMut<'a> {
    /// A convolution (weight, optional bias).
    Conv(&'a mut Conv2d),
    /// A batch norm (weight, bias, running statistics, batch counter).
    Bn(&'a mut BatchNorm2d),
    /// The classifier.
    Linear(&'a mut Linear),
}

/// A layer's key in parts (`{stage}{k}.{i}.{name}` inside a block, `{name}` outside), so that a walk that does
/// not need names allocates nothing.
#[derive(Clone, Copy, Debug)]
pub struct LayerKey {
    /// `(stage prefix, k, i)` of a layer inside block `i` of stage `k` (1-based, as the names count).
    pub block: Option<(&'static str, usize, usize)>,
    /// The layer's own name: `conv1`, `downsample.0`, `fc`, `0`…
    pub name: &'static str,
}

impl std::fmt::Display for LayerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((stage, k, i)) = self.block {
            write!(f, "{stage}{k}.{i}.")?;
        }
        f.write_str(self.name)
    }
}

/// Generates the two walks (shared and mutable borrows) from one body, so their orders cannot differ.
macro_rules! layer_walks {
    ($block_walk:ident, $net_walk:ident, $layer:ident, $iter:ident, $($mutability:ident)?) => {
        /// A block's layers in the naming scheme's registration order, with their names.
        fn $block_walk<'a>(
            b: &'a $($mutability)? Residual,
            naming: Naming,
            f: &mut dyn FnMut(&'static str, $layer<'a>),
        ) {
            let mut convs: [Option<&'a $($mutability)? Conv2d>; 3] = Default::default();
            let mut bns: [Option<&'a $($mutability)? BatchNorm2d>; 3] = Default::default();
            let main = b.convs.len();
            assert!(main <= 3, "a block has at most three main-path convolutions");
            for (slot, c) in convs.iter_mut().zip(&$($mutability)? b.convs) {
                *slot = Some(c);
            }
            for (slot, c) in bns.iter_mut().zip(&$($mutability)? b.bns) {
                *slot = Some(c);
            }
            let mut sc: Option<&'a $($mutability)? Conv2d> = match &$($mutability)? b.shortcut_conv {
                Some(c) => Some(c),
                None => None,
            };
            let mut sb: Option<&'a $($mutability)? BatchNorm2d> = match &$($mutability)? b.shortcut_bn {
                Some(c) => Some(c),
                None => None,
            };
            for &(role, name) in naming.block_layers(main) {
                let layer = match role {
                    Role::Conv(j) => convs[j].take().map($layer::Conv),
                    Role::Bn(j) => bns[j].take().map($layer::Bn),
                    Role::ShortcutConv => sc.take().map($layer::Conv),
                    Role::ShortcutBn => sb.take().map($layer::Bn),
                };
                if let Some(layer) = layer {
                    f(name, layer);
                }
            }
        }

        impl ResNet {
            /// Every tensor-holding layer in state-dict order, with its key.
            pub fn $net_walk<'a>(&'a $($mutability)? self, f: &mut dyn FnMut(LayerKey, $layer<'a>)) {
                let naming = self.config.naming;
                let top = |name| LayerKey { block: None, name };
                f(top(naming.stem_conv()), $layer::Conv(&$($mutability)? self.stem_conv));
                f(top(naming.stem_bn()), $layer::Bn(&$($mutability)? self.stem_bn));
                for (k, stage) in self.stages.$iter().enumerate() {
                    for (i, b) in stage.$iter().enumerate() {
                        let block = Some((naming.stage(), k + 1, i));
                        $block_walk(b, naming, &mut |name, layer| f(LayerKey { block, name }, layer));
                    }
                }
                f(top(naming.fc()), $layer::Linear(&$($mutability)? self.fc));
            }
        }
    };
}

layer_walks!(block_layers, for_each_layer, LayerRef, iter,);
layer_walks!(
    block_layers_mut,
    for_each_layer_mut,
    LayerMut,
    iter_mut,
    mut
);

/// A parameter's or buffer's full key: the layer's key and the field (`weight`, `running_mean`…).
fn full_key(layer: impl std::fmt::Display, field: &str) -> String {
    format!("{layer}.{field}")
}

/// Whether the layer at `key` trains when the first `frozen` parts are held fixed (see [`ResNet::set_frozen`]).
fn trains(frozen: usize, key: LayerKey, layer: &LayerMut<'_>) -> bool {
    match key.block {
        Some((_, k, _)) => frozen <= k, // stage k (1-based) is frozen from `frozen = k + 1` on
        // The stem's conv and batch norm; the classifier always trains.
        None => frozen == 0 || matches!(layer, LayerMut::Linear(_)),
    }
}

/// A layer's trainable tensors in `named_parameters()` order (weight, then bias), as `f(field, value, grad)`,
/// after dropping a conv's eval-mode packed weights (the values may change).
fn layer_params<'a>(
    layer: LayerMut<'a>,
    f: &mut dyn FnMut(&'static str, &'a mut [f32], &'a [f32]),
) {
    match layer {
        LayerMut::Conv(c) => {
            c.invalidate_packed();
            let has_bias = c.has_bias();
            f("weight", &mut c.weight, &c.grad_weight);
            if has_bias {
                f("bias", &mut c.bias, &c.grad_bias);
            }
        }
        LayerMut::Bn(b) => {
            f("weight", &mut b.weight, &b.grad_weight);
            f("bias", &mut b.bias, &b.grad_bias);
        }
        LayerMut::Linear(l) => {
            f("weight", &mut l.weight, &l.grad_weight);
            f("bias", &mut l.bias, &l.grad_bias);
        }
    }
}

/// A part of the network whose parameter gradients are final, as [`ResNet::backward`] reports them during
/// the backward pass: the classifier first, then the blocks from the last to the first, then the stem, which is
/// the reverse of [`ResNet::params_mut`]'s order of parts (frozen parts are never reported).
pub enum GradsReady<'a> {
    /// The classifier.
    Classifier(&'a Linear),
    /// A residual block.
    Block(&'a Residual),
    /// The stem's convolution and batch norm.
    Stem(&'a Conv2d, &'a BatchNorm2d),
}

impl GradsReady<'_> {
    /// Calls `f` with each of the part's gradients in [`ResNet::params_mut`] order.
    pub fn visit(&self, naming: Naming, f: &mut dyn FnMut(&[f32])) {
        let mut layer = |layer: LayerRef<'_>| match layer {
            LayerRef::Conv(c) => {
                f(&c.grad_weight);
                if c.has_bias() {
                    f(&c.grad_bias);
                }
            }
            LayerRef::Bn(b) => {
                f(&b.grad_weight);
                f(&b.grad_bias);
            }
            LayerRef::Linear(l) => {
                f(&l.grad_weight);
                f(&l.grad_bias);
            }
        };
        match self {
            GradsReady::Classifier(l) => layer(LayerRef::Linear(l)),
            GradsReady::Block(b) => block_layers(b, naming, &mut |_, l| layer(l)),
            GradsReady::Stem(c, b) => {
                layer(LayerRef::Conv(c));
                layer(LayerRef::Bn(b));
            }
        }
    }
}

impl Residual {
    /// The block's trainable tensors with their gradients, named relative to the block in `naming`'s scheme
    /// (`conv1.weight`, `downsample.1.bias`, …), in registration order.
    pub fn params_mut(&mut self, naming: Naming) -> Vec<ParamMut<'_>> {
        let mut out = Vec::new();
        block_layers_mut(self, naming, &mut |name, layer| {
            layer_params(layer, &mut |field, value, grad| {
                out.push(ParamMut {
                    name: full_key(name, field),
                    value,
                    grad,
                })
            })
        });
        out
    }
}

impl ResNet {
    /// Calls `f(key, value, grad)` for every trainable tensor in PyTorch's `named_parameters()` order.
    /// Keys are formatted only by a caller that wants them.
    /// Frozen layers ([`ResNet::set_frozen`]) are left out.
    fn for_each_param<'a>(
        &'a mut self,
        f: &mut dyn FnMut(LayerKey, &'static str, &'a mut [f32], &'a [f32]),
    ) {
        let frozen = self.frozen();
        self.for_each_layer_mut(&mut |key, layer| {
            if trains(frozen, key, &layer) {
                layer_params(layer, &mut |field, value, grad| f(key, field, value, grad))
            }
        });
    }

    /// For each trainable tensor, in [`ResNet::params_mut`] order: whether it is a batch norm's weight or bias
    /// or any bias, the one-dimensional tensors that `--wd-skip-norm` exempts from weight decay (timm's
    /// `param.ndim <= 1` rule).
    pub fn norm_and_bias_mask(&mut self) -> Vec<bool> {
        let frozen = self.frozen();
        let mut mask = Vec::new();
        self.for_each_layer_mut(&mut |key, layer| {
            if trains(frozen, key, &layer) {
                let norm = matches!(layer, LayerMut::Bn(_));
                layer_params(layer, &mut |field, _, _| mask.push(norm || field == "bias"));
            }
        });
        mask
    }

    /// Calls `f` with every floating-point tensor of the state dict, in its order: the parameters (frozen ones
    /// included) and the batch norms' running statistics, not their batch counters. What a weight average
    /// ([`crate::train::Ema`]) averages; allocates nothing.
    pub fn visit_float_state_mut(&mut self, f: &mut dyn FnMut(&mut [f32])) {
        self.for_each_layer_mut(&mut |_, layer| match layer {
            LayerMut::Conv(c) => {
                c.invalidate_packed();
                f(&mut c.weight);
                if c.has_bias() {
                    f(&mut c.bias);
                }
            }
            LayerMut::Bn(b) => {
                f(&mut b.weight);
                f(&mut b.bias);
                f(&mut b.running_mean);
                f(&mut b.running_var);
            }
            LayerMut::Linear(l) => {
                f(&mut l.weight);
                f(&mut l.bias);
            }
        });
    }

    /// Every trainable tensor with its gradient, in PyTorch's `named_parameters()` order and names.
    pub fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let mut out = Vec::new();
        self.for_each_param(&mut |key, field, value, grad| {
            out.push(ParamMut {
                name: full_key(key, field),
                value,
                grad,
            })
        });
        out
    }

    /// Calls `f(value, grad)` for every trainable tensor, in [`ResNet::params_mut`] order, without building a
    /// list (nothing is allocated).
    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut [f32], &[f32])) {
        self.for_each_param(&mut |_, _, value, grad| f(value, grad));
    }

    /// The key of the first trainable tensor whose gradient holds a NaN or an infinity, if any.
    pub fn non_finite_grad(&mut self) -> Option<String> {
        let mut found = None;
        self.for_each_param(&mut |key, field, _, grad| {
            if found.is_none() && grad.iter().any(|g| !g.is_finite()) {
                found = Some(full_key(key, field));
            }
        });
        found
    }

    /// Writes every trainable tensor's gradient, concatenated in [`ResNet::params_mut`] order, to
    /// `out[..n]`, `n` the number of trainable values; returns `n`.
    pub fn copy_grads(&mut self, out: &mut [f32]) -> usize {
        let mut at = 0;
        self.visit_params_mut(&mut |_, grad| {
            out[at..at + grad.len()].copy_from_slice(grad);
            at += grad.len();
        });
        at
    }

    /// The key of the trainable tensor that holds value `index` of [`ResNet::copy_grads`]'s concatenation.
    pub fn param_name_at(&mut self, index: usize) -> Option<String> {
        let mut at = 0;
        let mut found = None;
        self.for_each_param(&mut |key, field, value, _| {
            if found.is_none() && (at..at + value.len()).contains(&index) {
                found = Some(full_key(key, field));
            }
            at += value.len();
        });
        found
    }

    /// Trainable values of each part [`ResNet::backward`] reports, in the order it reports them: the
    /// classifier, the blocks from the last, the stem (frozen parts left out).
    pub fn grad_parts(&mut self) -> Vec<usize> {
        // A part is the block `(k, i)` a tensor belongs to, or outside the blocks the classifier or the stem.
        type Part = (Option<(usize, usize)>, bool);
        let fc = self.config.naming.fc();
        let mut parts: Vec<(Part, usize)> = Vec::new();
        self.for_each_param(&mut |key, _, value, _| {
            let part = (key.block.map(|(_, k, i)| (k, i)), key.name == fc);
            match parts.last_mut() {
                Some((p, n)) if *p == part => *n += value.len(),
                _ => parts.push((part, value.len())),
            }
        });
        parts.iter().rev().map(|p| p.1).collect()
    }

    /// Lengths of the trainable tensors, in [`ResNet::params_mut`] order (what optimizers size their state by).
    pub fn param_lens(&mut self) -> Vec<usize> {
        let mut lens = Vec::new();
        self.visit_params_mut(&mut |value, _| lens.push(value.len()));
        lens
    }

    /// Number of trainable values: 11,178,378 for the chapter's network, 25,557,032 for torchvision's resnet50.
    pub fn num_params(&self) -> usize {
        let mut n = 0;
        self.for_each_layer(&mut |_, layer| {
            n += match layer {
                LayerRef::Conv(c) => c.num_params(),
                LayerRef::Bn(b) => b.num_params(),
                LayerRef::Linear(l) => l.num_params(),
            }
        });
        n
    }

    /// The state dict in PyTorch's key names, order, layouts and dtypes (what `net.state_dict()` holds).
    pub fn state_dict(&self) -> StateDict {
        let mut sd = StateDict::new();
        self.for_each_layer(&mut |key, layer| layer_state(&mut sd, &key.to_string(), layer));
        sd
    }

    /// The gradients of the last backward pass as a state dict of the parameters' keys in PyTorch's layouts
    /// (what `{n: p.grad for n, p in net.named_parameters()}` holds).
    pub fn grad_state_dict(&self) -> StateDict {
        let mut sd = StateDict::new();
        self.for_each_layer(&mut |key, layer| {
            let mut push = |field: &str, shape: Vec<usize>, data: Vec<f32>| {
                sd.push((full_key(key, field), StateTensor::F32 { shape, data }))
            };
            match layer {
                LayerRef::Conv(c) => {
                    push(
                        "weight",
                        c.weight_shape_oihw(),
                        c.hwio_to_oihw(&c.grad_weight),
                    );
                    if c.has_bias() {
                        push("bias", vec![c.out_channels], c.grad_bias.clone());
                    }
                }
                LayerRef::Bn(b) => {
                    push("weight", vec![b.num_features], b.grad_weight.clone());
                    push("bias", vec![b.num_features], b.grad_bias.clone());
                }
                LayerRef::Linear(l) => {
                    push(
                        "weight",
                        vec![l.out_features, l.in_features],
                        l.grad_weight.clone(),
                    );
                    push("bias", vec![l.out_features], l.grad_bias.clone());
                }
            }
        });
        sd
    }

    /// Loads a state dict strictly (like `load_state_dict(strict=True)`): every key present with its exact shape
    /// and dtype, no extra keys. On error the model is left unchanged.
    pub fn load_state_dict(&mut self, sd: &StateDict) -> Result<()> {
        self.load_state_dict_except(sd, None)
    }

    /// [`ResNet::load_state_dict`] leaving one layer (by its key, e.g. the classifier's `fc`) as it is: its
    /// entries must be absent from `sd` or are ignored, every other key is loaded strictly. For fine-tuning with
    /// a new classifier.
    pub fn load_state_dict_except(&mut self, sd: &StateDict, keep: Option<&str>) -> Result<()> {
        let in_kept = |key: &str| {
            keep.is_some_and(|k| key.strip_prefix(k).is_some_and(|r| r.starts_with('.')))
        };
        let mut expected = self.state_dict();
        expected.retain(|(k, _)| !in_kept(k));
        let given: StateDict = sd.iter().filter(|(k, _)| !in_kept(k)).cloned().collect();
        check_keys(&expected, &given)?;
        // Everything checked: now copy (no partial loads).
        let mut result = Ok(());
        self.for_each_layer_mut(&mut |key, layer| {
            let key = key.to_string();
            if result.is_ok() && Some(key.as_str()) != keep {
                result = load_layer(&given, &key, layer);
            }
        });
        result
    }
}

/// Checks that `sd` holds exactly the keys of `expected`, with its dtypes and shapes (an I64 scalar may be
/// stored as `[]` or `[1]`).
fn check_keys(expected: &StateDict, sd: &StateDict) -> Result<()> {
    for (key, _) in sd {
        if !expected.iter().any(|(k, _)| k == key) {
            bail!("unexpected key `{key}` (not part of this network)");
        }
    }
    for (key, want) in expected {
        match sd.iter().find(|(k, _)| k == key) {
            None => bail!("missing key `{key}`"),
            Some((_, got)) => {
                if got.dtype_name() != want.dtype_name() {
                    bail!(
                        "key `{key}`: dtype {}, expected {}",
                        got.dtype_name(),
                        want.dtype_name()
                    );
                }
                let scalar_ok = matches!(want, StateTensor::I64 { .. })
                    && got.shape().iter().product::<usize>() == 1;
                if got.shape() != want.shape() && !scalar_ok {
                    bail!(
                        "key `{key}`: shape {:?}, expected {:?}",
                        got.shape(),
                        want.shape()
                    );
                }
            }
        }
    }
    Ok(())
}

fn f32_tensor(shape: Vec<usize>, data: Vec<f32>) -> StateTensor {
    StateTensor::F32 { shape, data }
}

/// One layer's entries of the state dict under `prefix`, in PyTorch's registration order.
fn layer_state(sd: &mut StateDict, prefix: &str, layer: LayerRef<'_>) {
    let mut push = |field: &str, t: StateTensor| sd.push((full_key(prefix, field), t));
    match layer {
        LayerRef::Conv(c) => {
            push("weight", f32_tensor(c.weight_shape_oihw(), c.weight_oihw()));
            if c.has_bias() {
                push("bias", f32_tensor(vec![c.out_channels], c.bias.clone()));
            }
        }
        LayerRef::Bn(b) => {
            let c = b.num_features;
            push("weight", f32_tensor(vec![c], b.weight.clone()));
            push("bias", f32_tensor(vec![c], b.bias.clone()));
            push("running_mean", f32_tensor(vec![c], b.running_mean.clone()));
            push("running_var", f32_tensor(vec![c], b.running_var.clone()));
            push(
                "num_batches_tracked",
                StateTensor::I64 {
                    shape: vec![],
                    data: vec![b.num_batches_tracked],
                },
            );
        }
        LayerRef::Linear(l) => {
            push(
                "weight",
                f32_tensor(vec![l.out_features, l.in_features], l.weight.clone()),
            );
            push("bias", f32_tensor(vec![l.out_features], l.bias.clone()));
        }
    }
}

/// Loads one layer's entries of `sd` under `prefix` (checked already by [`check_keys`]).
fn load_layer(sd: &StateDict, prefix: &str, layer: LayerMut<'_>) -> Result<()> {
    let key = |field: &str| full_key(prefix, field);
    match layer {
        LayerMut::Conv(c) => {
            let w = take_f32(sd, &key("weight"), &c.weight_shape_oihw())?;
            c.set_weight_oihw(w);
            if c.has_bias() {
                c.bias
                    .copy_from_slice(take_f32(sd, &key("bias"), &[c.out_channels])?);
            }
        }
        LayerMut::Bn(b) => {
            let c = [b.num_features];
            b.weight.copy_from_slice(take_f32(sd, &key("weight"), &c)?);
            b.bias.copy_from_slice(take_f32(sd, &key("bias"), &c)?);
            b.running_mean
                .copy_from_slice(take_f32(sd, &key("running_mean"), &c)?);
            b.running_var
                .copy_from_slice(take_f32(sd, &key("running_var"), &c)?);
            b.num_batches_tracked = take_i64_scalar(sd, &key("num_batches_tracked"))?;
        }
        LayerMut::Linear(l) => {
            let (o, i) = (l.out_features, l.in_features);
            l.weight
                .copy_from_slice(take_f32(sd, &key("weight"), &[o, i])?);
            l.bias.copy_from_slice(take_f32(sd, &key("bias"), &[o])?);
        }
    }
    Ok(())
}

/// Loads a single chapter `Residual` strictly from a state dict whose keys are relative to the block
/// (`conv1.weight`, `bn2.running_var`, …), as PyTorch's `blk.state_dict()` names them.
pub fn load_residual(sd: &StateDict, b: &mut Residual) -> Result<()> {
    let mut expected = StateDict::new();
    block_layers(b, Naming::Chapter, &mut |name, layer| {
        layer_state(&mut expected, name, layer)
    });
    check_keys(&expected, sd)?;
    let mut result = Ok(());
    block_layers_mut(b, Naming::Chapter, &mut |name, layer| {
        if result.is_ok() {
            result = load_layer(sd, name, layer);
        }
    });
    result
}

/// A conv's entries of [`ResNet::params_mut`], keyed `conv.*`, for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn push_conv_for_test<'a>(out: &mut Vec<ParamMut<'a>>, c: &'a mut Conv2d) {
    c.invalidate_packed();
    out.push(ParamMut {
        name: "conv.weight".into(),
        value: &mut c.weight,
        grad: &c.grad_weight,
    });
}
