//! The chapter's `Residual` block: `relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))`, where the shortcut is
//! the identity or a strided 1×1 conv (with bias, no BN).

use super::{ensure_len, BatchNorm2d, Conv2d, InitRng, Workspace};
use crate::kernels::pointwise::{add_assign, add_relu_forward, relu_backward_in_place};
use crate::Shape4;

/// `Residual(in_channels, out_channels, use_1x1conv, stride)` as in the chapter.
pub struct Residual {
    /// 3×3 conv, padding 1, the block's stride: `in → out` channels.
    pub conv1: Conv2d,
    /// Batch norm after `conv1`, with the ReLU fused.
    pub bn1: BatchNorm2d,
    /// 3×3 conv, padding 1, stride 1: `out → out` channels.
    pub conv2: Conv2d,
    /// Batch norm after `conv2`, no ReLU (the ReLU comes after the shortcut is added).
    pub bn2: BatchNorm2d,
    /// The 1×1 shortcut conv when `use_1x1conv`.
    pub conv3: Option<Conv2d>,
    /// `relu(y + shortcut)`, NHWC, from the last forward.
    pub out: Vec<f32>,
    /// Shape of [`Residual::out`] (named `[n, out, oh, ow]`, stored NHWC).
    pub out_shape: Shape4,
    /// [`Residual::backward`]'s own `grad`, `dx` and `tmp` buffers (empty inside a model, which shares its own).
    own_grads: [Vec<f32>; 3],
    /// Length of the input gradient in `own_grads[1]`.
    own_grad_len: usize,
}

impl Residual {
    /// conv1: 3×3, padding 1, `stride`; conv2: 3×3, padding 1; conv3 (if `use_1x1conv`): 1×1, `stride`.
    /// Parameters are drawn in PyTorch's registration order: conv1, conv2, conv3 (BN starts at 1 / 0).
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        use_1x1conv: bool,
        stride: usize,
        rng: &mut InitRng,
    ) -> Self {
        let conv1 = Conv2d::new(in_channels, out_channels, 3, stride, 1, rng);
        let conv2 = Conv2d::new(out_channels, out_channels, 3, 1, 1, rng);
        let conv3 = use_1x1conv.then(|| Conv2d::new(in_channels, out_channels, 1, stride, 0, rng));
        Residual {
            conv1,
            bn1: BatchNorm2d::new(out_channels, true),
            conv2,
            bn2: BatchNorm2d::new(out_channels, false),
            conv3,
            out: Vec::new(),
            out_shape: Shape4::default(),
            own_grads: Default::default(),
            own_grad_len: 0,
        }
    }

    /// Output shape for input `xs`, or `None` if the input does not fit (wrong channels, or the identity
    /// shortcut would not match the main path's shape, as PyTorch would fail on `Y + X`).
    pub fn output_shape(&self, xs: Shape4) -> Option<Shape4> {
        let ys = self.conv2.output_shape(self.conv1.output_shape(xs)?)?;
        let ss = match &self.conv3 {
            Some(c3) => c3.output_shape(xs)?,
            None => xs,
        };
        (ys == ss).then_some(ys)
    }

    /// Forward over `x` (NHWC, shape `xs`, checked with [`Residual::output_shape`]); fills [`Residual::out`].
    pub fn forward(&mut self, x: &[f32], xs: Shape4, train: bool, ws: &mut Workspace) -> Shape4 {
        let s2 = if train {
            let s1 = self.conv1.forward(x, xs, ws);
            self.bn1.forward(&self.conv1.out, s1, train);
            self.conv2.forward(&self.bn1.out, s1, ws)
        } else {
            // Eval: each batch norm is applied as its conv writes (one pass over the activation, not three).
            let s1 = self.conv1.forward_bn_eval(x, xs, &mut self.bn1, ws);
            self.conv2
                .forward_bn_eval(&self.bn1.out, s1, &mut self.bn2, ws)
        };
        ensure_len(&mut self.out, s2.len());
        let shortcut: &[f32] = match &mut self.conv3 {
            Some(c3) => {
                c3.forward(x, xs, ws);
                &c3.out
            }
            None => x,
        };
        if train {
            // bn2, the join and its ReLU in one pass; the normalized activation is never stored.
            self.bn2
                .forward_add_relu(&self.conv2.out, s2, shortcut, &mut self.out);
        } else {
            add_relu_forward(&self.bn2.out, shortcut, &mut self.out);
        }
        self.out_shape = s2;
        s2
    }

    /// Backward given the last forward's input `x` and `dout` (NHWC, output shape). Fills every parameter
    /// gradient and, when `need_grad_input`, the input gradient, returned by [`Residual::grad_input`].
    /// Uses buffers owned by the block; the model runs [`Residual::backward_into`] on shared ones instead.
    pub fn backward(&mut self, x: &[f32], dout: &[f32], need_grad_input: bool, ws: &mut Workspace) {
        let len = x.len().max(dout.len());
        let mut bufs = std::mem::take(&mut self.own_grads);
        for b in bufs.iter_mut() {
            ensure_len(b, len);
        }
        let [grad, dx, tmp] = &mut bufs;
        grad[..dout.len()].copy_from_slice(dout);
        self.backward_into(x, grad, dx, tmp, need_grad_input, ws);
        self.own_grads = bufs;
        self.own_grad_len = x.len();
    }

    /// Backward on caller-owned buffers, each at least as long as the block's input and its output (NHWC):
    /// `grad[..out]` holds `d out` on entry and is overwritten; `dx[..in]` receives the input gradient when
    /// `need_grad_input`; `tmp` is scratch. A model shares three such buffers across all its blocks, so the
    /// gradients take memory for one block at a time rather than five activation-sized buffers per block.
    pub fn backward_into(
        &mut self,
        x: &[f32],
        grad: &mut [f32],
        dx: &mut [f32],
        tmp: &mut [f32],
        need_grad_input: bool,
        ws: &mut Workspace,
    ) {
        let (in_len, out_len) = (x.len(), self.out.len());
        // The join: d(Y + shortcut) = d out masked by out > 0, kept in `grad`.
        let grad_join = &mut grad[..out_len];
        relu_backward_in_place(&self.out, grad_join);
        // The shortcut first, while `grad` still holds the join's gradient.
        let dx = &mut dx[..in_len];
        match &mut self.conv3 {
            Some(c3) => c3.backward_into(x, grad_join, need_grad_input.then_some(&mut *dx), ws),
            None => {
                if need_grad_input {
                    dx.copy_from_slice(grad_join);
                }
            }
        }
        // Main path: bn2 in place, conv2 into `tmp`, bn1 in place, conv1 into `grad` (free again), added to `dx`.
        self.bn2.backward_in_place(&self.conv2.out, grad_join);
        let dy1 = &mut tmp[..self.conv1.out.len()];
        self.conv2
            .backward_into(&self.bn1.out, grad_join, Some(&mut *dy1), ws);
        self.bn1.backward_in_place(&self.conv1.out, dy1);
        let dx_main = &mut grad[..in_len];
        self.conv1
            .backward_into(x, dy1, need_grad_input.then_some(&mut *dx_main), ws);
        if need_grad_input {
            add_assign(dx, dx_main);
        }
    }

    /// Gradient w.r.t. the block's input from the last [`Residual::backward`] (NHWC, input shape).
    pub fn grad_input(&self) -> &[f32] {
        &self.own_grads[1][..self.own_grad_len]
    }

    /// Number of trainable values.
    pub fn num_params(&self) -> usize {
        self.conv1.num_params()
            + self.conv2.num_params()
            + self.conv3.as_ref().map_or(0, Conv2d::num_params)
            + self.bn1.num_params()
            + self.bn2.num_params()
    }
}
