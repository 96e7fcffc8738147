//! The residual network: a stem, stages of [`Residual`] blocks, a global average pool and a Linear classifier,
//! built from a [`ResNetConfig`]. The chapter's builder, `resnet_block`, reads like the chapter; the layer walk,
//! keys and state dict live in [`super::keys`].

use super::arch::{ResNetConfig, Role, Stem};
use super::keys::{GradsReady, LayerMut};
use super::{
    ensure_len, BatchNorm2d, BnStore, Buffers, Conv2d, ConvStore, Grad, InitRng, Linear, MaxPool2d,
    Residual, Workspace,
};
use crate::dist::Collective;
use crate::kernels::conv::ConvPlan;
use crate::kernels::loss::softmax_cross_entropy;
use crate::kernels::pool::{global_avg_pool_backward, global_avg_pool_forward};
use crate::tensor::{nchw_to_nhwc_into, nhwc_to_nchw_into};
use crate::{bail, Result, Shape4};
use rand::SeedableRng;
use std::sync::Arc;

pub use super::keys::load_residual;

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

/// One step of the shape walk: a top-level child's name and its output shape (PyTorch's dims).
pub type ShapeStep = (String, Vec<usize>);

/// A residual network as its [`ResNetConfig`] describes it: the chapter's `nn.Sequential` or torchvision's
/// `ResNet`. Activations are NHWC inside; inputs and input gradients of the public API are NCHW, as PyTorch's
/// (converted where the input enters and where its gradient leaves, nowhere else; for one channel the layouts
/// coincide).
pub struct ResNet {
    /// The description the network was built from.
    pub config: ResNetConfig,
    /// The stem's conv (`0` / `conv1`): 7×7 stride 2 padding 3, or 3×3 stride 1 for the small stem.
    pub stem_conv: Conv2d,
    /// The stem's batch norm and ReLU (`1` and `2` / `bn1` and `relu`), fused.
    pub stem_bn: BatchNorm2d,
    /// The stem's 3×3 stride-2 max pool (`3` / `maxpool`), for the ImageNet stem; the small stem has none.
    pub stem_pool: Option<MaxPool2d>,
    /// Stage `k` (`resnet_block{k+1}` / `layer{k+1}`): its residual blocks.
    pub stages: Vec<Vec<Residual>>,
    /// The classifier (`fc.1` / `fc`): Linear(features, num_classes).
    pub fc: Linear,
    train: bool,
    workspace: Workspace,
    gap_out: Vec<f32>,
    /// The gradient buffers the model lends to every block (see [`Residual::backward`]).
    block_grads: [Vec<f32>; 3],
    grad_logits: Vec<f32>,
    /// The last input in NHWC, when it has more than one channel (the layouts differ).
    input_nhwc: Vec<f32>,
    /// [`ResNet::grad_input`] in NCHW, when the input has more than one channel.
    grad_input_nchw: Vec<f32>,
    input_shape: Shape4,
    last_shape: Shape4,
    /// The input shape and mode that last passed [`ResNet::validate_input`].
    validated_input: Option<(Shape4, bool)>,
    /// Leading parts held fixed for fine-tuning ([`ResNet::set_frozen`]): 0 none, 1 the stem, `1 + k` the stem
    /// and the first `k` stages.
    frozen: usize,
}

/// The chapter's ResNet-18 for `in_channels`-channel images and `num_classes` classes (11,178,378 parameters for
/// 1 channel and 10 classes), initialized as PyTorch does, from `seed`.
pub fn resnet18(in_channels: usize, num_classes: usize, seed: u64) -> ResNet {
    ResNet::new(ResNetConfig::chapter(in_channels, num_classes), seed)
        .expect("the chapter's configuration is valid")
}

impl ResNet {
    /// Builds the network `config` describes, drawing initial parameters from `seed` in registration order
    /// (stem conv, each block's convs, the classifier; batch norms start at weight 1 and bias 0).
    pub fn new(config: ResNetConfig, seed: u64) -> Result<Self> {
        config.check()?;
        let mut rng = InitRng::seed_from_u64(seed);
        let stem = config.stem_conv();
        let stem_conv = Conv2d::with_init(
            stem.cin,
            stem.cout,
            stem.k,
            stem.stride,
            stem.pad,
            config.conv_bias,
            config.init,
            &mut rng,
        );
        let mut stages: Vec<Vec<Residual>> = config.layers.iter().map(|_| Vec::new()).collect();
        for spec in config.blocks() {
            stages[spec.stage].push(Residual::from_spec(&spec, &config, &mut rng));
        }
        let fc = Linear::new(config.features(), config.num_classes, &mut rng);
        let stem_pool = (config.stem == Stem::Imagenet).then(|| MaxPool2d::new(3, 2, 1));
        Ok(ResNet {
            stem_conv,
            stem_bn: BatchNorm2d::new(stem.cout, true),
            stem_pool,
            stages,
            fc,
            config,
            train: true,
            workspace: Workspace::default(),
            gap_out: Vec::new(),
            block_grads: Default::default(),
            grad_logits: Vec::new(),
            input_nhwc: Vec::new(),
            grad_input_nchw: Vec::new(),
            input_shape: Shape4::default(),
            last_shape: Shape4::default(),
            validated_input: None,
            frozen: 0,
        })
    }

    /// `--sync-bn`: every batch norm normalizes with the statistics of the global batch of `comm`'s job and
    /// sums its backward over it (`None`: each process's own batch, the default).
    pub fn set_sync_bn(&mut self, comm: Option<Arc<dyn Collective>>) {
        self.for_each_layer_mut(&mut |_, layer| {
            if let LayerMut::Bn(b) = layer {
                b.sync = comm.clone();
            }
        });
    }

    /// Switches between training mode (batch statistics, running-statistics update) and eval mode.
    pub fn set_train(&mut self, train: bool) {
        self.train = train;
    }

    /// Runs every convolution with the algorithm a batch of one gets, so that an image's logits do not depend on
    /// the batch it is in (bit for bit; `resnet serve` batches unrelated requests). Off by default: large batches
    /// may then be slower.
    pub fn set_batch_independent(&mut self, on: bool) {
        self.stem_conv.set_batch_independent(on);
        for block in self.stages.iter_mut().flatten() {
            for conv in block.convs.iter_mut().chain(block.shortcut_conv.as_mut()) {
                conv.set_batch_independent(on);
            }
        }
    }

    /// Holds the first `parts` parts fixed, for fine-tuning: 0 none, 1 the stem, `1 + k` the stem and the first
    /// `k` stages (`1 + stages`: the whole backbone, only the classifier trains). Frozen layers run as in eval mode
    /// even in training (their batch norms use and keep their running statistics), no gradient is computed for
    /// them or through them, and the parameter walks ([`ResNet::params_mut`], the optimizer's) leave them out.
    pub fn set_frozen(&mut self, parts: usize) -> Result<()> {
        if parts > 1 + self.stages.len() {
            bail!(
                "cannot freeze {parts} parts of a network with a stem and {} stages",
                self.stages.len()
            );
        }
        self.frozen = parts;
        Ok(())
    }

    /// The number of leading parts held fixed ([`ResNet::set_frozen`]).
    pub fn frozen(&self) -> usize {
        self.frozen
    }

    /// True in training mode (see [`ResNet::set_train`]); a new network starts in training mode.
    pub fn is_train(&self) -> bool {
        self.train
    }

    /// The layer-by-layer shape walk over the network's top-level children for an NCHW input of shape `xs`,
    /// without running it: `[("0", [n, 64, h/2, w/2]), ("1", …), …, ("fc", [n, classes])]` with the chapter's
    /// names, `conv1`, `bn1`, `relu`, `maxpool`, `layer1`…, `avgpool`, `fc` with torchvision's. Errors if the
    /// input does not fit.
    pub fn shape_walk(&self, xs: Shape4) -> Result<Vec<ShapeStep>> {
        self.config.check_input(xs)?;
        let too_small = || ResNetConfig::too_small(xs);
        let naming = self.config.naming;
        let [relu, pool, avgpool] = naming.stateless();
        let mut steps = Vec::new();
        let mut s = self.stem_conv.output_shape(xs).ok_or_else(too_small)?;
        for name in [naming.stem_conv(), naming.stem_bn(), relu] {
            steps.push((name.to_string(), s.dims().to_vec()));
        }
        if let Some(p) = &self.stem_pool {
            s = p.output_shape(s).ok_or_else(too_small)?;
            steps.push((pool.to_string(), s.dims().to_vec()));
        }
        for (k, stage) in self.stages.iter().enumerate() {
            for block in stage {
                s = block.output_shape(s).ok_or_else(too_small)?;
            }
            steps.push((format!("{}{}", naming.stage(), k + 1), s.dims().to_vec()));
        }
        steps.push((avgpool.to_string(), vec![s.n, s.c, 1, 1]));
        // The classifier's child is `fc` in both schemes (the chapter's is `Sequential(Flatten, Linear)`).
        steps.push(("fc".to_string(), vec![s.n, self.config.num_classes]));
        Ok(steps)
    }

    /// Every convolution of the network for input `xs`, in forward order, with its state-dict name and the
    /// plan the kernels follow for it (see [`ConvPlan`]).
    pub fn conv_plans(&self, xs: Shape4) -> Result<Vec<(String, ConvPlan)>> {
        self.shape_walk(xs)?;
        let naming = self.config.naming;
        let plan = |c: &Conv2d, s: Shape4| c.plan(s).expect("checked by shape_walk");
        let mut plans = vec![(naming.stem_conv().to_string(), plan(&self.stem_conv, xs))];
        let mut s = Shape4::new(
            xs.n,
            self.stem_conv.out_channels,
            plans[0].1.geom.oh,
            plans[0].1.geom.ow,
        );
        if let Some(p) = &self.stem_pool {
            s = p.output_shape(s).expect("checked by shape_walk");
        }
        for (k, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let layers = naming.block_layers(block.convs.len());
                let name = |role: Role| {
                    let key = layers.iter().find(|(r, _)| *r == role).map_or("?", |l| l.1);
                    format!("{}{}.{b}.{key}", naming.stage(), k + 1)
                };
                if let Some(c) = &block.shortcut_conv {
                    plans.push((name(Role::ShortcutConv), plan(c, s)));
                }
                for (i, c) in block.convs.iter().enumerate() {
                    let p = plan(c, s);
                    s = Shape4::new(s.n, c.out_channels, p.geom.oh, p.geom.ow);
                    plans.push((name(Role::Conv(i)), p));
                }
            }
        }
        Ok(plans)
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

    /// Checks the NCHW input `x` against its shape `xs` (the shape walk only for a new shape or mode, so that a
    /// steady-state step allocates nothing) and, for more than one channel, converts it into `input_nhwc`: the
    /// one place the public NCHW layout becomes the engine's NHWC (the same memory for one channel).
    fn take_input(&mut self, x: &[f32], xs: Shape4) -> Result<()> {
        if x.len() != xs.len() {
            bail!(
                "input holds {} values, shape {xs} needs {}",
                x.len(),
                xs.len()
            );
        }
        if self.validated_input != Some((xs, self.train)) {
            self.validate_input(xs)?;
            self.validated_input = Some((xs, self.train));
        }
        if xs.c > 1 {
            ensure_len(&mut self.input_nhwc, xs.len());
            nchw_to_nhwc_into(x, xs, &mut self.input_nhwc);
        }
        Ok(())
    }

    /// The way back across [`ResNet::take_input`]'s edge: for more than one channel, the input gradient the
    /// stem's conv left in NHWC becomes [`ResNet::grad_input`]'s NCHW.
    fn give_grad_input(&mut self) {
        let xs = self.input_shape;
        if xs.c > 1 {
            ensure_len(&mut self.grad_input_nchw, xs.len());
            nhwc_to_nchw_into(&self.stem_conv.grad_input, xs, &mut self.grad_input_nchw);
        }
    }

    /// Forward pass over `x`, NCHW of shape `xs` (PyTorch's layout). Returns the logits `[n, num_classes]`.
    ///
    /// With `bufs` lent (eval mode only), the layers write their activations in buffers taken from `bufs`, each
    /// given back as soon as the next layer has read it, so the activations take about six of the largest
    /// layer's outputs rather than all of them (resnet50 at 224: ~20 MB per image instead of ~80 MB): for serving
    /// large batches. The same kernels in the same order compute the same logits; the layers' own outputs stay
    /// empty afterwards (nothing can be trained from this pass).
    pub fn forward(
        &mut self,
        x: &[f32],
        xs: Shape4,
        mut bufs: Buffers<'_, Vec<Vec<f32>>>,
    ) -> Result<&[f32]> {
        if self.train && matches!(bufs, Buffers::Lent(_)) {
            bail!("forward: lent buffers are for eval mode, and the network is in training mode");
        }
        self.take_input(x, xs)?;
        let x: &[f32] = if xs.c > 1 { &self.input_nhwc } else { x };
        let train = self.train;
        let frozen = self.frozen;
        let ws = &mut self.workspace;
        self.input_shape = xs;
        if let Buffers::Lent(spare) = &mut bufs {
            self.stem_bn.out = spare.pop().unwrap_or_default();
        }
        let mut s = if train && frozen == 0 {
            let s = self.stem_conv.forward(x, xs, ConvStore::Out, ws);
            self.stem_bn
                .forward(&self.stem_conv.out, s, true, BnStore::Out);
            s
        } else {
            self.stem_conv
                .forward(x, xs, ConvStore::EvalBn(&mut self.stem_bn), ws)
        };
        // The activation the next layer reads; with lent buffers, given back once it has.
        let mut input = &mut self.stem_bn.out;
        if let Some(pool) = &mut self.stem_pool {
            s = pool.forward(input, s, bufs.reborrow());
            give_back(&mut bufs, input);
            input = &mut pool.out;
        }
        for (k, stage) in self.stages.iter_mut().enumerate() {
            // A frozen stage runs as in eval mode.
            let train = train && frozen < k + 2;
            for block in stage.iter_mut() {
                s = block.forward(input, s, train, bufs.reborrow(), ws);
                give_back(&mut bufs, input);
                input = &mut block.out;
            }
        }
        self.last_shape = s;
        ensure_len(&mut self.gap_out, s.n * s.c);
        global_avg_pool_forward(s.n, s.h * s.w, s.c, input, &mut self.gap_out);
        give_back(&mut bufs, input);
        self.fc.forward(&self.gap_out, s.n);
        Ok(&self.fc.out)
    }

    /// Mean cross-entropy of the last forward's logits against `labels`, and the count of correct arg-max
    /// predictions; keeps the gradient for [`ResNet::backward`]. [`ResNet::loss_smoothed`] without smoothing.
    pub fn loss(&mut self, labels: &[usize]) -> Result<(f32, usize)> {
        self.loss_smoothed(labels, 0.0)
    }

    /// [`ResNet::loss`] with label smoothing `label_smoothing` in `[0, 1)`, as PyTorch's
    /// `CrossEntropyLoss(label_smoothing=eps)`: the target is `1 − eps + eps/k` on the label and `eps/k` elsewhere.
    pub fn loss_smoothed(
        &mut self,
        labels: &[usize],
        label_smoothing: f32,
    ) -> Result<(f32, usize)> {
        let n = self.input_shape.n;
        let k = self.config.num_classes;
        if labels.len() != n {
            bail!("{} labels for a batch of {n}", labels.len());
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= k) {
            bail!("label {bad} out of range for {k} classes");
        }
        if !(0.0..1.0).contains(&label_smoothing) {
            bail!("label smoothing must be at least 0 and less than 1, got {label_smoothing}");
        }
        ensure_len(&mut self.grad_logits, n * k);
        Ok(softmax_cross_entropy(
            n,
            k,
            &self.fc.out,
            labels,
            label_smoothing,
            &mut self.grad_logits,
        ))
    }

    /// Multiplies the loss gradient kept by [`ResNet::loss`] by `factor`: a rank of a data-parallel job holding
    /// `n` of a global batch of `N` images scales by `n / N`, so that the ranks' gradients sum to the gradient
    /// of the mean loss over the global batch.
    pub fn scale_loss_grad(&mut self, factor: f32) {
        for g in &mut self.grad_logits {
            *g *= factor;
        }
    }

    /// Sets the loss gradient backward starts from, `grad_logits [n, num_classes]` for the last forward's batch,
    /// as [`ResNet::loss`] would: for a caller with a loss of its own.
    pub fn set_loss_grad(&mut self, grad_logits: &[f32]) {
        ensure_len(&mut self.grad_logits, grad_logits.len());
        self.grad_logits.copy_from_slice(grad_logits);
    }

    /// Backward pass from the loss gradient kept by [`ResNet::loss`] (or [`ResNet::set_loss_grad`]), for the
    /// input `x` (NCHW) given to the last (training-mode) forward. Fills every parameter's gradient, and the
    /// input gradient when asked ([`ResNet::grad_input`]). With `ready`, reports each part of the network as
    /// soon as its parameter gradients are final ([`GradsReady`]; the classifier, the blocks from the last, the
    /// stem): for a data-parallel job that starts summing gradients while the backward pass still runs.
    pub fn backward(
        &mut self,
        x: &[f32],
        need_grad_input: bool,
        mut ready: Option<&mut dyn FnMut(GradsReady<'_>)>,
    ) {
        let s = self.last_shape;
        let ws = &mut self.workspace;
        self.fc.backward(&self.gap_out, &self.grad_logits);
        if let Some(ready) = &mut ready {
            ready(GradsReady::Classifier(&self.fc));
        }
        // Every block's gradients run through three buffers lent to all blocks: `grads[0]` holds d(block output)
        // on the way in and d(block input) on the way out.
        let stem_out = self.stem_bn.out.len();
        let pool_out = self.stem_pool.as_ref().map_or(0, |p| p.out.len());
        let longest = self
            .stages
            .iter()
            .flatten()
            .map(Residual::grad_buffer_len)
            .fold(stem_out.max(pool_out), usize::max);
        let grads = &mut self.block_grads;
        for b in grads.iter_mut() {
            ensure_len(b, longest);
        }
        global_avg_pool_backward(
            s.n,
            s.h * s.w,
            s.c,
            &self.fc.grad_input,
            &mut grads[0][..s.len()],
        );
        let stem_output: &[f32] = match &self.stem_pool {
            Some(pool) => &pool.out,
            None => &self.stem_bn.out,
        };
        // Walk the blocks backwards; each block's input is the previous block's output (or the stem's). Nothing
        // below the trainable parts needs a gradient: stop there.
        let frozen = self.frozen;
        for k in (0..self.stages.len()).rev() {
            if frozen >= k + 2 {
                return;
            }
            let (earlier, rest) = self.stages.split_at_mut(k);
            for i in (0..rest[0].len()).rev() {
                let first_trainable = i == 0 && frozen == k + 1;
                let (before, rest) = rest[0].split_at_mut(i);
                let block_input: &[f32] = match before.last() {
                    Some(prev) => &prev.out,
                    None => match earlier.iter().rev().find_map(|s| s.last()) {
                        Some(prev) => &prev.out,
                        None => stem_output,
                    },
                };
                rest[0].backward(block_input, Grad::Lent(&mut *grads), !first_trainable, ws);
                if let Some(ready) = &mut ready {
                    ready(GradsReady::Block(&rest[0]));
                }
            }
        }
        if frozen >= 1 {
            return;
        }
        let stem_grad: &mut [f32] = match &mut self.stem_pool {
            Some(pool) => {
                pool.backward(&grads[0][..pool.out.len()]);
                &mut pool.grad_input
            }
            None => &mut grads[0][..stem_out],
        };
        // BN turns the stem's output gradient into its own input gradient in place.
        self.stem_bn
            .backward(&self.stem_conv.out, Grad::Lent(&mut *stem_grad));
        let xs = self.input_shape;
        let x: &[f32] = if xs.c > 1 { &self.input_nhwc } else { x };
        let grad_input = need_grad_input.then_some(Buffers::Own);
        self.stem_conv.backward(x, stem_grad, grad_input, ws);
        if let Some(ready) = &mut ready {
            ready(GradsReady::Stem(&self.stem_conv, &self.stem_bn));
        }
        if need_grad_input {
            self.give_grad_input();
        }
    }

    /// Gradient w.r.t. the input of the last backward run with `need_grad_input`, NCHW like the input.
    pub fn grad_input(&self) -> &[f32] {
        if self.input_shape.c > 1 {
            &self.grad_input_nchw
        } else {
            &self.stem_conv.grad_input
        }
    }

    /// Logits of the last forward, `[n, num_classes]`.
    pub fn logits(&self) -> &[f32] {
        &self.fc.out
    }
}

/// With lent buffers, gives `buf` back to them: the layer after it has read it.
fn give_back(bufs: &mut Buffers<'_, Vec<Vec<f32>>>, buf: &mut Vec<f32>) {
    if let Buffers::Lent(spare) = bufs {
        spare.push(std::mem::take(buf));
    }
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

    #[test]
    fn forward_on_lent_buffers_computes_what_forward_computes() {
        use crate::nn::ArchName;
        let configs = [
            ResNetConfig::named(ArchName::Chapter, 1, 10),
            ResNetConfig {
                widths: vec![8, 8, 16, 16],
                layers: vec![1, 2, 1, 1],
                ..ResNetConfig::named(ArchName::Resnet50, 3, 7)
            },
            ResNetConfig {
                widths: vec![8, 16, 16, 32],
                stem: Stem::Small,
                ..ResNetConfig::named(ArchName::Resnet18, 3, 5)
            },
        ];
        for config in configs {
            let name = config.name();
            let mut net = ResNet::new(config, 1).unwrap();
            let mut spare = Vec::new();
            net.set_train(false);
            // Batches and sizes that change between calls, so that lent buffers change roles and lengths.
            for (n, side) in [(3, 40), (1, 40), (5, 33), (2, 64), (3, 40)] {
                let xs = Shape4::new(n, net.config.in_channels, side, side);
                let x: Vec<f32> = (0..xs.len())
                    .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                    .collect();
                let want = net.forward(&x, xs, Buffers::Own).unwrap().to_vec();
                let got = net
                    .forward(&x, xs, Buffers::Lent(&mut spare))
                    .unwrap()
                    .to_vec();
                assert_eq!(got, want, "{name} at {xs}");
                // And after a pass on lent buffers, one on the layers' own still computes the same.
                let again = net.forward(&x, xs, Buffers::Own).unwrap();
                assert_eq!(again, &want[..], "{name} at {xs}");
            }
            net.set_train(true);
            let lent = Buffers::Lent(&mut spare);
            assert!(net
                .forward(&[0.0; 3], Shape4::new(1, 3, 1, 1), lent)
                .is_err());
        }
    }
}
