//! The chapter's `Residual` block: `relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))`, where the shortcut is
//! the identity or a strided 1×1 conv (with bias, no BN).

use super::{ensure_len, BatchNorm2d, Conv2d, InitRng, Workspace};
use crate::kernels::pointwise::{add_assign, add_relu_forward, relu_backward};
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
    /// Gradient at the join (`d out` masked by `out > 0`), reused as the shortcut's gradient.
    grad_join: Vec<f32>,
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
            grad_join: Vec::new(),
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
            let s2 = self.conv2.forward(&self.bn1.out, s1, ws);
            self.bn2.forward(&self.conv2.out, s2, train);
            s2
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
        add_relu_forward(&self.bn2.out, shortcut, &mut self.out);
        self.out_shape = s2;
        s2
    }

    /// Backward given the last forward's input `x` and `dout` (NHWC, output shape). Fills every parameter
    /// gradient and, when `need_grad_input`, the input gradient, returned by [`Residual::grad_input`].
    pub fn backward(&mut self, x: &[f32], dout: &[f32], need_grad_input: bool, ws: &mut Workspace) {
        ensure_len(&mut self.grad_join, dout.len());
        relu_backward(&self.out, dout, &mut self.grad_join);
        self.bn2.backward(&self.conv2.out, &self.grad_join);
        self.conv2
            .backward(&self.bn1.out, &self.bn2.grad_input, true, ws);
        self.bn1.backward(&self.conv1.out, &self.conv2.grad_input);
        self.conv1
            .backward(x, &self.bn1.grad_input, need_grad_input, ws);
        match &mut self.conv3 {
            Some(c3) => {
                c3.backward(x, &self.grad_join, need_grad_input, ws);
                if need_grad_input {
                    add_assign(&mut self.conv1.grad_input, &c3.grad_input);
                }
            }
            None => {
                if need_grad_input {
                    add_assign(&mut self.conv1.grad_input, &self.grad_join);
                }
            }
        }
    }

    /// Gradient w.r.t. the block's input from the last backward (NHWC, input shape).
    pub fn grad_input(&self) -> &[f32] {
        &self.conv1.grad_input
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
