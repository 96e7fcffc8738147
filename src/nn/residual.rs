//! The residual block: `relu(main(x) + shortcut(x))`. The main path is a chain of conv → batch norm units with a
//! ReLU after every unit but the last; the shortcut is the identity, a 1×1 conv, or a 1×1 conv + batch norm.
//!
//! - The chapter's `Residual` ([`Residual::new`]): 3×3 (the stride) → 3×3, biased convs, shortcut a 1×1 conv.
//! - torchvision's `BasicBlock` (the same main path without biases, BN on the shortcut) and `Bottleneck`
//!   (1×1 → 3×3 with the stride → 1×1 to four times the planes), built by [`Residual::from_spec`].

use super::arch::{BlockSpec, ConvSpec, Init, ResNetConfig, Shortcut};
use super::{
    ensure_len, BatchNorm2d, BnStore, Buffers, Conv2d, ConvStore, Grad, InitRng, Workspace,
};
use crate::kernels::norm::batch_norm_eval_backward_in_place;
use crate::kernels::pointwise::{add_assign, add_relu_forward, relu_backward_in_place};
use crate::Shape4;

/// One residual block. `convs[i]` feeds `bns[i]`; every batch norm but the last has its ReLU fused.
pub struct Residual {
    /// The main path's convolutions, in order (the chapter's `conv1`, `conv2`).
    pub convs: Vec<Conv2d>,
    /// The batch norm after each main-path convolution (the chapter's `bn1`, `bn2`); the last has no ReLU:
    /// the ReLU comes after the shortcut is added.
    pub bns: Vec<BatchNorm2d>,
    /// The 1×1 shortcut conv (the chapter's `conv3`, torchvision's `downsample.0`), when the shape changes.
    pub shortcut_conv: Option<Conv2d>,
    /// The batch norm after the shortcut conv (torchvision's `downsample.1`), when the network has one.
    pub shortcut_bn: Option<BatchNorm2d>,
    /// `relu(y + shortcut)`, NHWC, from the last forward.
    pub out: Vec<f32>,
    /// Shape of [`Residual::out`] (named `[n, out, oh, ow]`, stored NHWC).
    pub out_shape: Shape4,
    /// [`Residual::backward`]'s own `grad`, `dx` and `tmp` buffers (empty inside a model, which lends its own).
    own_grads: [Vec<f32>; 3],
    /// Length of the input gradient in `own_grads[0]`.
    own_grad_len: usize,
}

impl Residual {
    /// The chapter's `Residual(in_channels, out_channels, use_1x1conv, stride)`: conv1 3×3 padding 1 with the
    /// stride, conv2 3×3 padding 1, conv3 (if `use_1x1conv`) 1×1 with the stride; every conv biased.
    /// Parameters are drawn in PyTorch's registration order: conv1, conv2, conv3 (BN starts at 1 / 0).
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        use_1x1conv: bool,
        stride: usize,
        rng: &mut InitRng,
    ) -> Self {
        let conv = |cin, cout, k, stride| ConvSpec {
            cin,
            cout,
            k,
            stride,
            pad: k / 2,
        };
        let main = [
            conv(in_channels, out_channels, 3, stride),
            conv(out_channels, out_channels, 3, 1),
        ];
        let shortcut = use_1x1conv.then_some(conv(in_channels, out_channels, 1, stride));
        Self::build(&main, shortcut, true, false, Init::PytorchDefault, rng)
    }

    /// The block `spec` of the network `config` describes (its bias, shortcut kind and initialization).
    pub fn from_spec(spec: &BlockSpec, config: &ResNetConfig, rng: &mut InitRng) -> Self {
        let mut b = Self::build(
            &spec.main_convs(),
            spec.shortcut_conv(),
            config.conv_bias,
            config.shortcut == Shortcut::ConvBn,
            config.init,
            rng,
        );
        if config.zero_init_residual {
            b.bns
                .last_mut()
                .expect("a block has convs")
                .weight
                .fill(0.0);
        }
        b
    }

    /// Draws the convolutions in registration order: the main path's, then the shortcut's.
    fn build(
        main: &[ConvSpec],
        shortcut: Option<ConvSpec>,
        bias: bool,
        shortcut_bn: bool,
        init: Init,
        rng: &mut InitRng,
    ) -> Self {
        let make = |c: &ConvSpec, rng: &mut InitRng| {
            Conv2d::with_init(c.cin, c.cout, c.k, c.stride, c.pad, bias, init, rng)
        };
        let convs: Vec<Conv2d> = main.iter().map(|c| make(c, rng)).collect();
        let last = main.len() - 1;
        let bns = main
            .iter()
            .enumerate()
            .map(|(i, c)| BatchNorm2d::new(c.cout, i < last))
            .collect();
        let shortcut_conv = shortcut.map(|c| make(&c, rng));
        let shortcut_bn = shortcut
            .filter(|_| shortcut_bn)
            .map(|c| BatchNorm2d::new(c.cout, false));
        Residual {
            convs,
            bns,
            shortcut_conv,
            shortcut_bn,
            out: Vec::new(),
            out_shape: Shape4::default(),
            own_grads: Default::default(),
            own_grad_len: 0,
        }
    }

    /// Output shape for input `xs`, or `None` if the input does not fit (wrong channels, or the identity
    /// shortcut would not match the main path's shape, as PyTorch would fail on `Y + X`).
    pub fn output_shape(&self, xs: Shape4) -> Option<Shape4> {
        let ys = self.convs.iter().try_fold(xs, |s, c| c.output_shape(s))?;
        let ss = match &self.shortcut_conv {
            Some(c) => c.output_shape(xs)?,
            None => xs,
        };
        (ys == ss).then_some(ys)
    }

    /// Forward over `x` (NHWC, shape `xs`, checked with [`Residual::output_shape`]); fills [`Residual::out`].
    /// With `bufs` lent (eval mode only: a training forward keeps what backward reads in the layers), every
    /// activation the block writes lives in a buffer taken from them for the call; all but `out` go back after
    /// it, and the caller gives `out` back once the next layer has read it. The same kernels in the same order:
    /// the same values.
    pub fn forward(
        &mut self,
        x: &[f32],
        xs: Shape4,
        train: bool,
        mut bufs: Buffers<'_, Vec<Vec<f32>>>,
        ws: &mut Workspace,
    ) -> Shape4 {
        if let Buffers::Lent(spare) = &mut bufs {
            assert!(!train, "a training forward runs on the layers' own buffers");
            for buf in self.inner_outputs() {
                *buf = spare.pop().unwrap_or_default();
            }
            self.out = spare.pop().unwrap_or_default();
        }
        let last = self.convs.len() - 1;
        let mut s = xs;
        for i in 0..=last {
            let (done, rest) = self.bns.split_at_mut(i);
            let input: &[f32] = if i == 0 { x } else { &done[i - 1].out };
            let conv = &mut self.convs[i];
            if !train {
                // Eval: each batch norm is applied as its conv writes (one pass over the activation, not three).
                s = conv.forward(input, s, ConvStore::EvalBn(&mut rest[0]), ws);
            } else {
                s = conv.forward(input, s, ConvStore::Out, ws);
                if i < last {
                    rest[0].forward(&conv.out, s, true, BnStore::Out);
                }
            }
        }
        ensure_len(&mut self.out, s.len());
        let shortcut: &[f32] = match (&mut self.shortcut_conv, &mut self.shortcut_bn) {
            (Some(c), Some(bn)) => {
                if train {
                    let cs = c.forward(x, xs, ConvStore::Out, ws);
                    bn.forward(&c.out, cs, true, BnStore::Out);
                } else {
                    c.forward(x, xs, ConvStore::EvalBn(bn), ws);
                }
                &bn.out
            }
            (Some(c), None) => {
                c.forward(x, xs, ConvStore::Out, ws);
                &c.out
            }
            (None, _) => x,
        };
        if train {
            // The last bn, the join and its ReLU in one pass; the normalized activation is never stored.
            let store = BnStore::AddRelu {
                shortcut,
                out: &mut self.out,
            };
            self.bns[last].forward(&self.convs[last].out, s, true, store);
        } else {
            add_relu_forward(&self.bns[last].out, shortcut, &mut self.out);
        }
        self.out_shape = s;
        if let Buffers::Lent(spare) = bufs {
            spare.extend(self.inner_outputs().map(std::mem::take));
        }
        s
    }

    /// The buffers an eval-mode forward writes besides [`Residual::out`]: each batch norm's output and the
    /// shortcut's (its batch norm's, or its convolution's where it has none).
    fn inner_outputs(&mut self) -> impl Iterator<Item = &mut Vec<f32>> {
        let shortcut = match (&mut self.shortcut_conv, &mut self.shortcut_bn) {
            (Some(_), Some(bn)) => Some(&mut bn.out),
            (Some(c), None) => Some(&mut c.out),
            _ => None,
        };
        self.bns.iter_mut().map(|bn| &mut bn.out).chain(shortcut)
    }

    /// Floats each lent gradient buffer of [`Residual::backward`] needs after the last forward: the longest of
    /// the block's input, output and inner activations.
    pub fn grad_buffer_len(&self) -> usize {
        self.convs
            .iter()
            .map(|c| c.in_shape().len().max(c.out.len()))
            .fold(self.out.len(), usize::max)
    }

    /// Backward given the last forward's input `x` (NHWC) and the gradient of its output. Fills every parameter
    /// gradient and, when `need_grad_input`, the input gradient: in the block's own buffers
    /// ([`Residual::grad_input`]), or in three buffers the caller lends, `[grad, dx, tmp]`, each at least
    /// [`Residual::grad_buffer_len`] long, `grad` holding `d out` on entry and `d x` on return (the others are
    /// scratch). A model lends the same three to all its blocks, so the gradients take memory for one block
    /// at a time rather than several activation-sized buffers per block.
    pub fn backward(
        &mut self,
        x: &[f32],
        grad: Grad<'_, [Vec<f32>; 3]>,
        need_grad_input: bool,
        ws: &mut Workspace,
    ) {
        let mut own = None;
        let [grad, dx, tmp] = match grad {
            Grad::Own(dout) => {
                let len = self.grad_buffer_len();
                let bufs = own.insert(std::mem::take(&mut self.own_grads));
                for b in bufs.iter_mut() {
                    ensure_len(b, len);
                }
                bufs[0][..dout.len()].copy_from_slice(dout);
                bufs
            }
            Grad::Lent(bufs) => bufs,
        };
        let (in_len, out_len) = (x.len(), self.out.len());
        // The join: d(Y + shortcut) = d out masked by out > 0, kept in `grad`.
        relu_backward_in_place(&self.out, &mut grad[..out_len]);
        // The shortcut first, while `grad` still holds the join's gradient.
        let d_x = &mut dx[..in_len];
        match (&mut self.shortcut_conv, &mut self.shortcut_bn) {
            (Some(c), Some(bn)) => {
                let d = &mut tmp[..out_len];
                d.copy_from_slice(&grad[..out_len]);
                bn.backward(&c.out, Grad::Lent(&mut *d));
                let d_x = need_grad_input.then_some(Buffers::Lent(&mut *d_x));
                c.backward(x, d, d_x, ws);
            }
            (Some(c), None) => {
                let d_x = need_grad_input.then_some(Buffers::Lent(&mut *d_x));
                c.backward(x, &grad[..out_len], d_x, ws)
            }
            (None, _) => {
                if need_grad_input {
                    d_x.copy_from_slice(&grad[..out_len]);
                }
            }
        }
        // Main path, last unit first: each batch norm in place, each conv's input gradient into the other
        // buffer (`grad` and `tmp` take turns), the first conv's added to `dx`.
        let last = self.convs.len() - 1;
        self.bns[last].backward(&self.convs[last].out, Grad::Lent(&mut grad[..out_len]));
        let (mut cur, mut other) = (&mut grad[..], &mut tmp[..]);
        for i in (1..=last).rev() {
            let (before, rest) = self.convs.split_at_mut(i);
            let conv = &mut rest[0];
            let d_in = &mut other[..conv.in_shape().len()];
            let d_out = &cur[..conv.out.len()];
            conv.backward(
                &self.bns[i - 1].out,
                d_out,
                Some(Buffers::Lent(&mut *d_in)),
                ws,
            );
            self.bns[i - 1].backward(&before[i - 1].out, Grad::Lent(d_in));
            std::mem::swap(&mut cur, &mut other);
        }
        let first = &mut self.convs[0];
        let dy = &cur[..first.out.len()];
        let dx_main = &mut other[..in_len];
        let d_main = need_grad_input.then_some(Buffers::Lent(&mut *dx_main));
        first.backward(x, dy, d_main, ws);
        if need_grad_input {
            add_assign(d_x, dx_main);
        }
        std::mem::swap(grad, dx);
        if let Some(bufs) = own {
            self.own_grads = bufs;
            self.own_grad_len = in_len;
        }
    }

    /// Floats each gradient buffer of [`Residual::backward_eval`] needs after the last eval-mode forward (whose
    /// convolutions wrote no output of their own: their batch norms took it).
    pub fn eval_grad_buffer_len(&self) -> usize {
        self.convs
            .iter()
            .map(|c| c.in_shape().len().max(c.out_shape.len()))
            .fold(self.out.len(), usize::max)
    }

    /// The input gradient of the last forward when it ran in eval mode on the block's own buffers (batch norms
    /// with their running statistics, a fixed affine map per channel: what an explanation differentiates, as
    /// PyTorch's autograd does through a model in `eval()`). `x` is that forward's input (NHWC); `grads` are
    /// `[grad, dx, tmp]`, each at least [`Residual::eval_grad_buffer_len`] long, `grad` holding `d out` on entry
    /// and `d x` on return. The convolutions' kernels also leave weight gradients in the layers (nothing reads
    /// them); no batch-norm parameter gradient is computed.
    pub fn backward_eval(&mut self, x: &[f32], grads: &mut [Vec<f32>; 3], ws: &mut Workspace) {
        let [grad, dx, tmp] = grads;
        let (in_len, out_len) = (x.len(), self.out.len());
        relu_backward_in_place(&self.out, &mut grad[..out_len]);
        let d_x = &mut dx[..in_len];
        match (&mut self.shortcut_conv, &mut self.shortcut_bn) {
            (Some(c), Some(bn)) => {
                let d = &mut tmp[..out_len];
                d.copy_from_slice(&grad[..out_len]);
                let (scale, _) = bn.eval_scale_shift();
                batch_norm_eval_backward_in_place(&bn.out, d, &scale, false);
                c.backward(x, d, Some(Buffers::Lent(&mut *d_x)), ws);
            }
            (Some(c), None) => {
                c.backward(x, &grad[..out_len], Some(Buffers::Lent(&mut *d_x)), ws);
            }
            (None, _) => d_x.copy_from_slice(&grad[..out_len]),
        }
        let last = self.convs.len() - 1;
        let (scale, _) = self.bns[last].eval_scale_shift();
        let last_bn = &self.bns[last];
        batch_norm_eval_backward_in_place(&last_bn.out, &mut grad[..out_len], &scale, false);
        let (mut cur, mut other) = (&mut grad[..], &mut tmp[..]);
        for i in (1..=last).rev() {
            let conv = &mut self.convs[i];
            let d_in = &mut other[..conv.in_shape().len()];
            let d_out = &cur[..conv.out_shape.len()];
            let bn = &self.bns[i - 1];
            conv.backward(&bn.out, d_out, Some(Buffers::Lent(&mut *d_in)), ws);
            let (scale, _) = bn.eval_scale_shift();
            batch_norm_eval_backward_in_place(&bn.out, d_in, &scale, bn.relu);
            std::mem::swap(&mut cur, &mut other);
        }
        let first = &mut self.convs[0];
        let dy = &cur[..first.out_shape.len()];
        let dx_main = &mut other[..in_len];
        first.backward(x, dy, Some(Buffers::Lent(&mut *dx_main)), ws);
        add_assign(d_x, dx_main);
        std::mem::swap(grad, dx);
    }

    /// Gradient w.r.t. the block's input from the last [`Residual::backward`] on its own buffers (NHWC, input
    /// shape).
    pub fn grad_input(&self) -> &[f32] {
        &self.own_grads[0][..self.own_grad_len]
    }

    /// Number of trainable values.
    pub fn num_params(&self) -> usize {
        self.convs.iter().map(Conv2d::num_params).sum::<usize>()
            + self.bns.iter().map(BatchNorm2d::num_params).sum::<usize>()
            + self.shortcut_conv.as_ref().map_or(0, Conv2d::num_params)
            + self.shortcut_bn.as_ref().map_or(0, BatchNorm2d::num_params)
    }
}
