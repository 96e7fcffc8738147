//! The chapter's network, built the way the chapter builds it: a stem (`0` conv 7×7/2, `1` BN, `2` ReLU,
//! `3` max pool 3/2), `resnet_block1..4` of [`Residual`] blocks, `global_avg_pool`, and `fc` (flatten + Linear).

use super::state::{take_f32, take_i64_scalar, StateDict, StateTensor};
use super::{ensure_len, BatchNorm2d, Conv2d, InitRng, Linear, Residual, Workspace};
use crate::kernels::loss::softmax_cross_entropy;
use crate::kernels::pool::{
    global_avg_pool_backward, global_avg_pool_forward, max_pool_backward, max_pool_forward,
    PoolGeom,
};
use crate::optim::Optimizer;
use crate::{bail, Error, ParamMut, Result, Shape4};
use rand::SeedableRng;

/// The chapter's `resnet_block(in, out, num_residuals, first_block)`: `num_residuals` blocks, the first of which
/// halves height and width and changes channels with a strided 1×1 shortcut — unless `first_block`, which keeps
/// the input's channels (so it requires `in_channels == out_channels`, as the chapter asserts).
pub fn resnet_block(
    in_channels: usize,
    out_channels: usize,
    num_residuals: usize,
    first_block: bool,
    rng: &mut InitRng,
) -> Result<Vec<Residual>> {
    if first_block && in_channels != out_channels {
        bail!("resnet_block: first_block requires in_channels == out_channels, got {in_channels} and {out_channels}");
    }
    Ok((0..num_residuals)
        .map(|i| {
            if i == 0 && !first_block {
                Residual::new(in_channels, out_channels, true, 2, rng)
            } else {
                Residual::new(out_channels, out_channels, false, 1, rng)
            }
        })
        .collect())
}

/// The shape of the network: input channels, classes, per-stage widths and residual counts.
/// [`ResNetConfig::chapter`] is the chapter's ResNet-18; narrower ones build small test networks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Channels of the input images (1 for Fashion-MNIST).
    pub in_channels: usize,
    /// Number of classes: the length of each logits row.
    pub num_classes: usize,
    /// Output channels of each stage; the stem has `widths[0]`.
    pub widths: Vec<usize>,
    /// Residual blocks per stage.
    pub residuals: Vec<usize>,
}

impl ResNetConfig {
    /// The chapter's ResNet-18: widths 64, 128, 256, 512 with 2 residuals each.
    pub fn chapter(in_channels: usize, num_classes: usize) -> Self {
        ResNetConfig {
            in_channels,
            num_classes,
            widths: vec![64, 128, 256, 512],
            residuals: vec![2, 2, 2, 2],
        }
    }

    /// Trainable values of the network this configuration describes, computed without building it (`None` when
    /// the count overflows `usize`): lets a loader refuse a lying file before allocating its network.
    pub fn num_params(&self) -> Option<usize> {
        let mul = |a: usize, b: usize| a.checked_mul(b);
        // Conv2d(i, o, k) with bias; BatchNorm2d(o) has a weight and a bias.
        let conv = |i: usize, o: usize, k: usize| mul(mul(i, o)?, k * k)?.checked_add(o);
        let bn = |c: usize| mul(c, 2);
        let residual = |i: usize, o: usize, shortcut: bool| -> Option<usize> {
            let mut n = conv(i, o, 3)?.checked_add(bn(o)?)?;
            n = n.checked_add(conv(o, o, 3)?)?.checked_add(bn(o)?)?;
            if shortcut {
                n = n.checked_add(conv(i, o, 1)?)?;
            }
            Some(n)
        };
        let w0 = *self.widths.first()?;
        let mut total = conv(self.in_channels, w0, 7)?.checked_add(bn(w0)?)?;
        let mut in_c = w0;
        for (k, (&w, &r)) in self.widths.iter().zip(&self.residuals).enumerate() {
            for i in 0..r {
                let block = if i == 0 && k > 0 {
                    residual(in_c, w, true)?
                } else {
                    residual(w, w, false)?
                };
                total = total.checked_add(block)?;
            }
            in_c = w;
        }
        total.checked_add(mul(in_c, self.num_classes)?.checked_add(self.num_classes)?)
    }

    /// Checks that the configuration describes a network this program builds: one residual count per stage,
    /// positive channels, classes and widths, at most [`MAX_PARAMS`] parameters. Allocates nothing.
    pub fn check(&self) -> Result<()> {
        if self.widths.is_empty() || self.widths.len() != self.residuals.len() {
            bail!("resnet: need one residual count per stage width, got widths {:?} and residuals {:?}", self.widths, self.residuals);
        }
        if self.in_channels == 0 || self.num_classes == 0 || self.widths.contains(&0) {
            bail!("resnet: channels, classes and widths must be positive");
        }
        match self.num_params() {
            Some(n) if n <= MAX_PARAMS => {}
            _ => bail!(
                "resnet: widths {:?} with residuals {:?} describe more than {MAX_PARAMS} parameters, beyond what this program builds",
                self.widths,
                self.residuals
            ),
        }
        Ok(())
    }
}

/// The most trainable values a network may have (2^28, 24 times the chapter's ResNet-18): a configuration read
/// from a file or a flag that asks for more is refused before anything is allocated.
pub const MAX_PARAMS: usize = 1 << 28;

/// One step of the shape walk: a top-level child's name and its output shape (PyTorch's dims).
pub type ShapeStep = (String, Vec<usize>);

/// ResNet as the chapter's `nn.Sequential`. Activations are NHWC inside; inputs and outputs of the public API
/// are NCHW, which for the chapter's one-channel images is the same memory layout as NHWC.
pub struct ResNet {
    /// The configuration the network was built from.
    pub config: ResNetConfig,
    /// `0`: `Conv2d(in, widths[0], 7, stride 2, padding 3)`.
    pub stem_conv: Conv2d,
    /// `1` and `2`: BatchNorm2d + ReLU, fused.
    pub stem_bn: BatchNorm2d,
    /// `resnet_block{k}` is `stages[k-1]`.
    pub stages: Vec<Vec<Residual>>,
    /// `fc.1`: Linear(widths.last, num_classes).
    pub fc: Linear,
    train: bool,
    workspace: Workspace,
    pool_out: Vec<f32>,
    pool_argmax: Vec<u32>,
    pool_grad_input: Vec<f32>,
    pool_geom: Option<PoolGeom>,
    gap_out: Vec<f32>,
    /// The blocks' shared gradient buffers (see [`Residual::backward_into`]).
    block_grads: [Vec<f32>; 3],
    grad_logits: Vec<f32>,
    input_shape: Shape4,
    last_shape: Shape4,
    /// The input shape and mode that last passed [`ResNet::validate_input`].
    validated_input: Option<(Shape4, bool)>,
}

/// The chapter's ResNet-18 for `in_channels`-channel images and `num_classes` classes (11,178,378 parameters for
/// 1 channel and 10 classes), initialized as PyTorch does, from `seed`.
pub fn resnet18(in_channels: usize, num_classes: usize, seed: u64) -> ResNet {
    ResNet::new(ResNetConfig::chapter(in_channels, num_classes), seed)
        .expect("the chapter's configuration is valid")
}

impl ResNet {
    /// Builds the network for `config`, drawing initial parameters from `seed`.
    pub fn new(config: ResNetConfig, seed: u64) -> Result<Self> {
        config.check()?;
        let mut rng = InitRng::seed_from_u64(seed);
        let w0 = config.widths[0];
        let stem_conv = Conv2d::new(config.in_channels, w0, 7, 2, 3, &mut rng);
        let mut stages = Vec::new();
        let mut in_c = w0;
        for (k, (&w, &r)) in config.widths.iter().zip(&config.residuals).enumerate() {
            stages.push(resnet_block(in_c, w, r, k == 0, &mut rng)?);
            in_c = w;
        }
        let fc = Linear::new(in_c, config.num_classes, &mut rng);
        Ok(ResNet {
            stem_conv,
            stem_bn: BatchNorm2d::new(w0, true),
            stages,
            fc,
            config,
            train: true,
            workspace: Workspace::default(),
            pool_out: Vec::new(),
            pool_argmax: Vec::new(),
            pool_grad_input: Vec::new(),
            pool_geom: None,
            gap_out: Vec::new(),
            block_grads: Default::default(),
            grad_logits: Vec::new(),
            input_shape: Shape4::default(),
            last_shape: Shape4::default(),
            validated_input: None,
        })
    }

    /// Switches between training mode (batch statistics, running-statistics update) and eval mode.
    pub fn set_train(&mut self, train: bool) {
        self.train = train;
    }

    /// True in training mode (see [`ResNet::set_train`]); a new network starts in training mode.
    pub fn is_train(&self) -> bool {
        self.train
    }

    fn pool_geom_for(&self, s: Shape4) -> Option<PoolGeom> {
        PoolGeom::new(s.c, 3, 2, 1, s.h, s.w)
    }

    /// The chapter's layer-by-layer shape walk for an NCHW input of shape `xs`, without running the network:
    /// `[("0", [n, 64, h/2, w/2]), ("1", …), …, ("fc", [n, classes])]`. Errors if the input does not fit.
    pub fn shape_walk(&self, xs: Shape4) -> Result<Vec<ShapeStep>> {
        if xs.c != self.config.in_channels {
            bail!(
                "input has {} channels, the network expects {}",
                xs.c,
                self.config.in_channels
            );
        }
        if xs.is_empty() {
            bail!("input shape {xs} is empty");
        }
        let too_small = || {
            Error::new(format!(
                "input {xs} is too small for the network (each stage halves height and width)"
            ))
        };
        let mut steps = Vec::new();
        let s = self.stem_conv.output_shape(xs).ok_or_else(too_small)?;
        for name in ["0", "1", "2"] {
            steps.push((name.to_string(), s.dims().to_vec()));
        }
        let p = self.pool_geom_for(s).ok_or_else(too_small)?;
        let mut s = Shape4::new(s.n, s.c, p.oh, p.ow);
        steps.push(("3".to_string(), s.dims().to_vec()));
        for (k, stage) in self.stages.iter().enumerate() {
            for block in stage {
                s = block.output_shape(s).ok_or_else(too_small)?;
            }
            steps.push((format!("resnet_block{}", k + 1), s.dims().to_vec()));
        }
        steps.push(("global_avg_pool".to_string(), vec![s.n, s.c, 1, 1]));
        steps.push(("fc".to_string(), vec![s.n, self.config.num_classes]));
        Ok(steps)
    }

    /// Checks that an input of shape `xs` fits the network ([`ResNet::shape_walk`]) and, in training mode,
    /// that every batch norm sees more than one value per channel.
    fn validate_input(&self, xs: Shape4) -> Result<()> {
        let walk = self.shape_walk(xs)?;
        if self.train {
            // BatchNorm needs more than one value per channel to compute a batch variance (PyTorch raises too).
            if let Some((name, dims)) = walk
                .iter()
                .take(walk.len() - 2)
                .find(|(_, d)| d[0] * d[2] * d[3] <= 1)
            {
                bail!("training-mode batch norm needs more than 1 value per channel, but layer {name} outputs {dims:?}: use a larger batch or input");
            }
        }
        Ok(())
    }

    /// Forward pass over `x`, NCHW of shape `xs` (for one channel, NCHW and NHWC coincide; for more channels
    /// convert with [`crate::tensor::nchw_to_nhwc`] first). Returns the logits `[n, num_classes]`.
    pub fn forward(&mut self, x: &[f32], xs: Shape4) -> Result<&[f32]> {
        if x.len() != xs.len() {
            bail!(
                "input holds {} values, shape {xs} needs {}",
                x.len(),
                xs.len()
            );
        }
        // The walk allocates: run it for a new shape or mode only, so a steady-state step allocates nothing.
        if self.validated_input != Some((xs, self.train)) {
            self.validate_input(xs)?;
            self.validated_input = Some((xs, self.train));
        }
        let train = self.train;
        let ws = &mut self.workspace;
        self.input_shape = xs;
        let s = if train {
            let s = self.stem_conv.forward(x, xs, ws);
            self.stem_bn.forward(&self.stem_conv.out, s, train);
            s
        } else {
            self.stem_conv.forward_bn_eval(x, xs, &mut self.stem_bn, ws)
        };
        let pg = PoolGeom::new(s.c, 3, 2, 1, s.h, s.w).expect("checked by shape_walk");
        self.pool_geom = Some(pg);
        let mut s = Shape4::new(s.n, s.c, pg.oh, pg.ow);
        ensure_len(&mut self.pool_out, s.len());
        ensure_len(&mut self.pool_argmax, s.len());
        max_pool_forward(
            &pg,
            s.n,
            &self.stem_bn.out,
            &mut self.pool_out,
            &mut self.pool_argmax,
        );
        let mut input: &[f32] = &self.pool_out;
        for stage in self.stages.iter_mut() {
            for block in stage.iter_mut() {
                s = block.forward(input, s, train, ws);
                input = &block.out;
            }
        }
        self.last_shape = s;
        ensure_len(&mut self.gap_out, s.n * s.c);
        global_avg_pool_forward(s.n, s.h * s.w, s.c, input, &mut self.gap_out);
        self.fc.forward(&self.gap_out, s.n);
        Ok(&self.fc.out)
    }

    /// Mean cross-entropy of the last forward's logits against `labels`, and the count of correct arg-max
    /// predictions; keeps the gradient for [`ResNet::backward`].
    pub fn loss(&mut self, labels: &[usize]) -> Result<(f32, usize)> {
        let n = self.input_shape.n;
        let k = self.config.num_classes;
        if labels.len() != n {
            bail!("{} labels for a batch of {n}", labels.len());
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= k) {
            bail!("label {bad} out of range for {k} classes");
        }
        ensure_len(&mut self.grad_logits, n * k);
        Ok(softmax_cross_entropy(
            n,
            k,
            &self.fc.out,
            labels,
            &mut self.grad_logits,
        ))
    }

    /// Backward pass from the gradient of the loss computed by [`ResNet::loss`], for the input `x` given to the
    /// last (training-mode) forward. Fills every parameter's gradient, and the input gradient when asked
    /// ([`ResNet::grad_input`]).
    pub fn backward(&mut self, x: &[f32], need_grad_input: bool) {
        let grad_logits = std::mem::take(&mut self.grad_logits);
        self.backward_from(x, &grad_logits, need_grad_input);
        self.grad_logits = grad_logits;
    }

    /// Backward pass from an explicit `grad_logits [n, num_classes]`.
    pub fn backward_from(&mut self, x: &[f32], grad_logits: &[f32], need_grad_input: bool) {
        let s = self.last_shape;
        let ws = &mut self.workspace;
        self.fc.backward(&self.gap_out, grad_logits);
        // Every block's gradients run through three buffers shared by all blocks: `grad` holds d(block output)
        // on the way in and d(block input) on the way out (after a swap with `dx`).
        let longest = self
            .stages
            .iter()
            .flatten()
            .map(|b| b.out.len())
            .chain([self.pool_out.len()])
            .max()
            .unwrap_or(0);
        let [grad, dx, tmp] = &mut self.block_grads;
        for b in [&mut *grad, &mut *dx, &mut *tmp] {
            ensure_len(b, longest);
        }
        global_avg_pool_backward(
            s.n,
            s.h * s.w,
            s.c,
            &self.fc.grad_input,
            &mut grad[..s.len()],
        );
        // Walk the blocks backwards; each block's input is the previous block's output (or the pool's).
        for k in (0..self.stages.len()).rev() {
            let (earlier, rest) = self.stages.split_at_mut(k);
            for i in (0..rest[0].len()).rev() {
                let (before, rest) = rest[0].split_at_mut(i);
                let block_input: &[f32] = match before.last() {
                    Some(prev) => &prev.out,
                    None => match earlier.iter().rev().find_map(|s| s.last()) {
                        Some(prev) => &prev.out,
                        None => &self.pool_out,
                    },
                };
                rest[0].backward_into(block_input, grad, dx, tmp, true, ws);
                std::mem::swap(grad, dx);
            }
        }
        let pool_dout = &grad[..self.pool_out.len()];
        let pg = self.pool_geom.expect("backward after forward");
        ensure_len(&mut self.pool_grad_input, self.stem_bn.out.len());
        max_pool_backward(
            &pg,
            s.n,
            pool_dout,
            &self.pool_argmax,
            &mut self.pool_grad_input,
        );
        // The pool's input gradient is needed only here: BN turns it into its own input gradient in place.
        self.stem_bn
            .backward_in_place(&self.stem_conv.out, &mut self.pool_grad_input);
        self.stem_conv
            .backward(x, &self.pool_grad_input, need_grad_input, ws);
    }

    /// Gradient w.r.t. the input of the last backward run with `need_grad_input` (NHWC; NCHW for one channel).
    pub fn grad_input(&self) -> &[f32] {
        &self.stem_conv.grad_input
    }

    /// Logits of the last forward, `[n, num_classes]`.
    pub fn logits(&self) -> &[f32] {
        &self.fc.out
    }

    /// Every trainable tensor with its gradient, in PyTorch's `named_parameters()` order and names.
    pub fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let mut out = Vec::new();
        self.for_each_param(&mut |key, value, grad| {
            out.push(ParamMut {
                name: key.to_string(),
                value,
                grad,
            })
        });
        out
    }

    /// Calls `f(value, grad)` for every trainable tensor, in [`ResNet::params_mut`] order, without building a
    /// list (nothing is allocated).
    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut [f32], &[f32])) {
        self.for_each_param(&mut |_, value, grad| f(value, grad));
    }

    /// The one walk over the trainable tensors, in PyTorch's `named_parameters()` order: both
    /// [`ResNet::params_mut`] and the optimizer's [`ResNet::visit_params_mut`] take it, so their orders cannot
    /// drift apart. Keys are formatted only by a caller that wants them.
    fn for_each_param<'a>(&'a mut self, f: &mut ParamSink<'a, '_>) {
        conv_params(f, ParamKey::top("0"), &mut self.stem_conv);
        bn_params(f, ParamKey::top("1"), &mut self.stem_bn);
        for (k, stage) in self.stages.iter_mut().enumerate() {
            for (i, b) in stage.iter_mut().enumerate() {
                let at = |layer| ParamKey {
                    block: Some((k + 1, i)),
                    layer,
                    field: "",
                };
                conv_params(f, at("conv1"), &mut b.conv1);
                conv_params(f, at("conv2"), &mut b.conv2);
                if let Some(c3) = &mut b.conv3 {
                    conv_params(f, at("conv3"), c3);
                }
                bn_params(f, at("bn1"), &mut b.bn1);
                bn_params(f, at("bn2"), &mut b.bn2);
            }
        }
        let fc = ParamKey::top("fc.1");
        f(
            fc.field("weight"),
            &mut self.fc.weight,
            &self.fc.grad_weight,
        );
        f(fc.field("bias"), &mut self.fc.bias, &self.fc.grad_bias);
    }

    /// One optimizer step over every trainable tensor with the gradients of the last backward pass: what
    /// `opt.step(&mut net.params_mut(), lr)` does, without allocating the named list.
    pub fn optimizer_step(&mut self, opt: &mut dyn Optimizer, lr: f32) {
        opt.step_each(lr, &mut |update| self.visit_params_mut(update));
    }

    /// Lengths of the trainable tensors, in [`ResNet::params_mut`] order (what optimizers size their state by).
    pub fn param_lens(&mut self) -> Vec<usize> {
        self.params_mut().iter().map(|p| p.value.len()).collect()
    }

    /// Number of trainable values: 11,178,378 for the chapter's network.
    pub fn num_params(&self) -> usize {
        self.stem_conv.num_params()
            + self.stem_bn.num_params()
            + self
                .stages
                .iter()
                .flatten()
                .map(Residual::num_params)
                .sum::<usize>()
            + self.fc.num_params()
    }

    /// The state dict in PyTorch's key names, order, layouts and dtypes (what `net.state_dict()` holds).
    pub fn state_dict(&self) -> StateDict {
        let mut sd = StateDict::new();
        conv_state(&mut sd, "0", &self.stem_conv);
        bn_state(&mut sd, "1", &self.stem_bn);
        for (k, stage) in self.stages.iter().enumerate() {
            for (i, b) in stage.iter().enumerate() {
                let p = format!("resnet_block{}.{i}", k + 1);
                block_state(&mut sd, &p, b);
            }
        }
        let fc = &self.fc;
        sd.push((
            "fc.1.weight".into(),
            f32_tensor(vec![fc.out_features, fc.in_features], fc.weight.clone()),
        ));
        sd.push((
            "fc.1.bias".into(),
            f32_tensor(vec![fc.out_features], fc.bias.clone()),
        ));
        sd
    }

    /// Loads a state dict strictly (like `load_state_dict(strict=True)`): every key present with its exact shape
    /// and dtype, no extra keys. On error the model is left unchanged.
    pub fn load_state_dict(&mut self, sd: &StateDict) -> Result<()> {
        let expected = self.state_dict();
        for (key, _) in sd {
            if !expected.iter().any(|(k, _)| k == key) {
                bail!("unexpected key `{key}` (not part of this network)");
            }
        }
        for (key, want) in &expected {
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
        // Everything checked: now copy (no partial loads).
        load_conv(sd, "0", &mut self.stem_conv)?;
        load_bn(sd, "1", &mut self.stem_bn)?;
        for (k, stage) in self.stages.iter_mut().enumerate() {
            for (i, b) in stage.iter_mut().enumerate() {
                let p = format!("resnet_block{}.{i}", k + 1);
                load_block(sd, &p, b)?;
            }
        }
        let (o, i) = (self.fc.out_features, self.fc.in_features);
        self.fc
            .weight
            .copy_from_slice(take_f32(sd, "fc.1.weight", &[o, i])?);
        self.fc
            .bias
            .copy_from_slice(take_f32(sd, "fc.1.bias", &[o])?);
        Ok(())
    }
}

/// Receives each trainable tensor of a walk: its key, its values, its gradient.
type ParamSink<'a, 'f> = dyn FnMut(ParamKey, &'a mut [f32], &'a [f32]) + 'f;

/// A trainable tensor's PyTorch key in parts (`resnet_block{k}.{i}.{layer}.{field}` or `{layer}.{field}`),
/// so that a walk that does not need names allocates nothing.
#[derive(Clone, Copy)]
struct ParamKey {
    /// `(k, i)` of `resnet_block{k}.{i}`, for a tensor inside a residual block.
    block: Option<(usize, usize)>,
    layer: &'static str,
    field: &'static str,
}

impl ParamKey {
    fn top(layer: &'static str) -> Self {
        ParamKey {
            block: None,
            layer,
            field: "",
        }
    }

    fn field(self, field: &'static str) -> Self {
        ParamKey { field, ..self }
    }
}

impl std::fmt::Display for ParamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((k, i)) = self.block {
            write!(f, "resnet_block{k}.{i}.")?;
        }
        write!(f, "{}.{}", self.layer, self.field)
    }
}

/// A conv's weight and bias, after dropping its eval-mode packed copy (the weight may change).
fn conv_params<'a>(f: &mut ParamSink<'a, '_>, key: ParamKey, c: &'a mut Conv2d) {
    c.invalidate_packed();
    f(key.field("weight"), &mut c.weight, &c.grad_weight);
    f(key.field("bias"), &mut c.bias, &c.grad_bias);
}

fn bn_params<'a>(f: &mut ParamSink<'a, '_>, key: ParamKey, b: &'a mut BatchNorm2d) {
    f(key.field("weight"), &mut b.weight, &b.grad_weight);
    f(key.field("bias"), &mut b.bias, &b.grad_bias);
}

/// A conv's entries of [`ResNet::params_mut`], keyed `conv.*`, for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn push_conv_for_test<'a>(out: &mut Vec<ParamMut<'a>>, c: &'a mut Conv2d) {
    conv_params(
        &mut |key, value, grad| {
            out.push(ParamMut {
                name: key.to_string(),
                value,
                grad,
            })
        },
        ParamKey::top("conv"),
        c,
    );
}

fn f32_tensor(shape: Vec<usize>, data: Vec<f32>) -> StateTensor {
    StateTensor::F32 { shape, data }
}

/// The state of one `Residual` under `prefix` (e.g. `resnet_block2.0`), in PyTorch's registration order.
pub(crate) fn block_state(sd: &mut StateDict, prefix: &str, b: &Residual) {
    conv_state(sd, &format!("{prefix}.conv1"), &b.conv1);
    conv_state(sd, &format!("{prefix}.conv2"), &b.conv2);
    if let Some(c3) = &b.conv3 {
        conv_state(sd, &format!("{prefix}.conv3"), c3);
    }
    bn_state(sd, &format!("{prefix}.bn1"), &b.bn1);
    bn_state(sd, &format!("{prefix}.bn2"), &b.bn2);
}

fn conv_state(sd: &mut StateDict, prefix: &str, c: &Conv2d) {
    sd.push((
        format!("{prefix}.weight"),
        f32_tensor(c.weight_shape_oihw(), c.weight_oihw()),
    ));
    sd.push((
        format!("{prefix}.bias"),
        f32_tensor(vec![c.out_channels], c.bias.clone()),
    ));
}

fn bn_state(sd: &mut StateDict, prefix: &str, b: &BatchNorm2d) {
    let c = b.num_features;
    sd.push((
        format!("{prefix}.weight"),
        f32_tensor(vec![c], b.weight.clone()),
    ));
    sd.push((
        format!("{prefix}.bias"),
        f32_tensor(vec![c], b.bias.clone()),
    ));
    sd.push((
        format!("{prefix}.running_mean"),
        f32_tensor(vec![c], b.running_mean.clone()),
    ));
    sd.push((
        format!("{prefix}.running_var"),
        f32_tensor(vec![c], b.running_var.clone()),
    ));
    sd.push((
        format!("{prefix}.num_batches_tracked"),
        StateTensor::I64 {
            shape: vec![],
            data: vec![b.num_batches_tracked],
        },
    ));
}

/// Loads one conv's weight (OIHW in the dict) and bias.
pub(crate) fn load_conv(sd: &StateDict, prefix: &str, c: &mut Conv2d) -> Result<()> {
    let w = take_f32(sd, &format!("{prefix}.weight"), &c.weight_shape_oihw())?;
    c.set_weight_oihw(w);
    c.bias
        .copy_from_slice(take_f32(sd, &format!("{prefix}.bias"), &[c.out_channels])?);
    Ok(())
}

/// Loads one batch norm's affine parameters and running statistics.
pub(crate) fn load_bn(sd: &StateDict, prefix: &str, b: &mut BatchNorm2d) -> Result<()> {
    let c = [b.num_features];
    b.weight
        .copy_from_slice(take_f32(sd, &format!("{prefix}.weight"), &c)?);
    b.bias
        .copy_from_slice(take_f32(sd, &format!("{prefix}.bias"), &c)?);
    b.running_mean
        .copy_from_slice(take_f32(sd, &format!("{prefix}.running_mean"), &c)?);
    b.running_var
        .copy_from_slice(take_f32(sd, &format!("{prefix}.running_var"), &c)?);
    b.num_batches_tracked = take_i64_scalar(sd, &format!("{prefix}.num_batches_tracked"))?;
    Ok(())
}

/// Loads one `Residual` whose keys sit under `prefix` (e.g. `resnet_block2.0`; empty for block-relative keys
/// such as `conv1.weight`), mirroring [`block_state`].
fn load_block(sd: &StateDict, prefix: &str, b: &mut Residual) -> Result<()> {
    let key = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        }
    };
    load_conv(sd, &key("conv1"), &mut b.conv1)?;
    load_conv(sd, &key("conv2"), &mut b.conv2)?;
    if let Some(c3) = &mut b.conv3 {
        load_conv(sd, &key("conv3"), c3)?;
    }
    load_bn(sd, &key("bn1"), &mut b.bn1)?;
    load_bn(sd, &key("bn2"), &mut b.bn2)
}

/// Loads a single `Residual` from a state dict whose keys are relative to the block (`conv1.weight`, …).
pub fn load_residual(sd: &StateDict, b: &mut Residual) -> Result<()> {
    load_block(sd, "", b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chapter_parameter_count_and_shape_walk() {
        let net = resnet18(1, 10, 0);
        assert_eq!(net.num_params(), 11_178_378);
        let walk = net.shape_walk(Shape4::new(1, 1, 224, 244)).unwrap();
        let want: &[(&str, &[usize])] = &[
            ("0", &[1, 64, 112, 122]),
            ("1", &[1, 64, 112, 122]),
            ("2", &[1, 64, 112, 122]),
            ("3", &[1, 64, 56, 61]),
            ("resnet_block1", &[1, 64, 56, 61]),
            ("resnet_block2", &[1, 128, 28, 31]),
            ("resnet_block3", &[1, 256, 14, 16]),
            ("resnet_block4", &[1, 512, 7, 8]),
            ("global_avg_pool", &[1, 512, 1, 1]),
            ("fc", &[1, 10]),
        ];
        assert_eq!(walk.len(), want.len());
        for ((name, dims), (wn, wd)) in walk.iter().zip(want) {
            assert_eq!(name, wn);
            assert_eq!(dims.as_slice(), *wd);
        }
    }

    #[test]
    fn first_block_rule_is_checked() {
        let mut rng = InitRng::seed_from_u64(0);
        let err = resnet_block(64, 128, 2, true, &mut rng).err().unwrap();
        assert!(
            err.to_string().contains("in_channels == out_channels"),
            "{err}"
        );
    }
}
