//! `Conv2d`, with a bias (every conv of the chapter has one) or without (torchvision's, each followed by a batch
//! norm): forward and backward over NHWC batches.

use super::arch::Init;
use super::batch_norm::BatchNorm2d;
use super::{ensure_len, kaiming_normal_fan_out, uniform_init, Buffers, InitRng, Workspace};
use crate::kernels::conv::{ConvGeom, ConvPlan};
use crate::Shape4;

/// Where [`Conv2d::forward`] stores its result.
pub enum ConvStore<'a> {
    /// [`Conv2d::out`]: what backward and a training-mode batch norm read.
    Out,
    /// Eval mode only: through this batch norm with its running statistics (and its ReLU), straight into its
    /// `out` in the same pass (one pass over the activation, not three), as `bn.forward(&conv.out, …, false, …)`
    /// would leave it (to rounding). [`Conv2d::out`] is not written, so no backward may follow.
    EvalBn(&'a mut BatchNorm2d),
}

/// A square-kernel 2-d convolution. Weight stored HWIO `[k, k, in, out]` (a `[k·k·in, out]` matrix);
/// PyTorch's OIHW only at the edges ([`Conv2d::weight_oihw`]).
pub struct Conv2d {
    /// Input channels `in` (the last axis of the NHWC input).
    pub in_channels: usize,
    /// Output channels `out` (the last axis of the NHWC output).
    pub out_channels: usize,
    /// Kernel side `k` (square `k × k`).
    pub kernel: usize,
    /// Stride, in both directions.
    pub stride: usize,
    /// Zero padding on each side, in both directions.
    pub padding: usize,
    /// `[k, k, in, out]`; read with [`Conv2d::weight`], changed with [`Conv2d::weight_mut`] (which keeps the
    /// eval-mode packed copy honest).
    pub(crate) weight: Vec<f32>,
    /// `[out]`, or empty for a convolution without bias.
    pub bias: Vec<f32>,
    /// Gradient of the loss w.r.t. `weight`, HWIO `[k, k, in, out]` like it, from the last backward.
    pub grad_weight: Vec<f32>,
    /// Gradient of the loss w.r.t. `bias`, `[out]` (empty without bias), from the last backward.
    pub grad_bias: Vec<f32>,
    /// Output of the last forward, NHWC `[n, oh, ow, out]`.
    pub out: Vec<f32>,
    /// Shape of [`Conv2d::out`] (named `[n, out, oh, ow]`, stored NHWC).
    pub out_shape: Shape4,
    /// Gradient w.r.t. the input from the last backward, NHWC like the input.
    pub grad_input: Vec<f32>,
    in_shape: Shape4,
    /// Eval mode only: the weight as the kernels read it for the geometry in `packed_for` (Winograd-transformed,
    /// or packed for the direct kernels' wide layers); emptied whenever the weight may change. Preparing it every
    /// forward costs a pass over the weights, a fifth of the batch-1 latency.
    packed: Vec<f32>,
    /// The plan `packed` was prepared for (the layout depends on the plane and the batch: live taps, Winograd
    /// tile or not).
    packed_for: Option<ConvPlan>,
    /// The plan of the last call: chosen once per input shape, kept while the shape stays.
    plan: Option<ConvPlan>,
    /// Plans chosen as for a batch of one ([`ConvPlan::batch_independent`]).
    batch_independent: bool,
}

impl Conv2d {
    /// PyTorch's `nn.Conv2d(in, out, kernel_size=k, stride, padding)` with its default initialization.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        rng: &mut InitRng,
    ) -> Self {
        Self::with_init(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            true,
            Init::PytorchDefault,
            rng,
        )
    }

    /// `nn.Conv2d(in, out, k, stride, padding, bias=bias)` initialized by `init`: PyTorch's default (weight, then
    /// bias, uniform in ±1/√fan_in) or torchvision's ResNet (kaiming normal, fan_out, ReLU gain; bias zero).
    #[allow(clippy::too_many_arguments)]
    pub fn with_init(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        init: Init,
        rng: &mut InitRng,
    ) -> Self {
        let fan_in = in_channels * kernel * kernel;
        let len = fan_in * out_channels;
        // Drawn in PyTorch's OIHW order, then laid out HWIO, so a seed means the same filters in either layout.
        let (oihw, bias) = match init {
            Init::PytorchDefault => {
                let w = uniform_init(rng, len, fan_in);
                (
                    w,
                    if bias {
                        uniform_init(rng, out_channels, fan_in)
                    } else {
                        Vec::new()
                    },
                )
            }
            Init::Torchvision => {
                let w = kaiming_normal_fan_out(rng, len, out_channels * kernel * kernel);
                (
                    w,
                    if bias {
                        vec![0.0; out_channels]
                    } else {
                        Vec::new()
                    },
                )
            }
        };
        let mut conv = Conv2d {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            weight: vec![0.0; len],
            grad_weight: vec![0.0; len],
            grad_bias: vec![0.0; bias.len()],
            bias,
            out: Vec::new(),
            out_shape: Shape4::default(),
            grad_input: Vec::new(),
            in_shape: Shape4::default(),
            packed: Vec::new(),
            packed_for: None,
            plan: None,
            batch_independent: false,
        };
        conv.set_weight_oihw(&oihw);
        conv
    }

    /// Geometry for input shape `xs`, or `None` if the kernel does not fit or the channels differ.
    pub fn geom(&self, xs: Shape4) -> Option<ConvGeom> {
        if xs.c != self.in_channels {
            return None;
        }
        ConvGeom::new(
            self.in_channels,
            self.out_channels,
            self.kernel,
            self.stride,
            self.padding,
            xs.h,
            xs.w,
        )
    }

    /// How this convolution runs on input shape `xs` (`None` as for [`Conv2d::geom`]).
    pub fn plan(&self, xs: Shape4) -> Option<ConvPlan> {
        let g = self.geom(xs)?;
        Some(match self.plan {
            Some(p) if p.geom == g && p.batch == xs.n => p,
            _ if self.batch_independent => ConvPlan::batch_independent(g, xs.n),
            _ => ConvPlan::new(g, xs.n),
        })
    }

    /// Chooses every later plan as for a batch of one (see [`ConvPlan::batch_independent`]), or not.
    pub fn set_batch_independent(&mut self, on: bool) {
        self.batch_independent = on;
        self.plan = None;
    }

    /// [`Conv2d::plan`] for a shape the model has checked, kept for the next call.
    fn planned(&mut self, xs: Shape4) -> ConvPlan {
        let plan = self
            .plan(xs)
            .expect("conv2d: input shape checked by the model");
        self.plan = Some(plan);
        plan
    }

    /// Whether the convolution has a bias.
    pub fn has_bias(&self) -> bool {
        !self.bias.is_empty()
    }

    /// Shape of the last forward's input.
    pub fn in_shape(&self) -> Shape4 {
        self.in_shape
    }

    /// Output shape for input `xs` (`None` as for [`Conv2d::geom`]).
    pub fn output_shape(&self, xs: Shape4) -> Option<Shape4> {
        self.geom(xs)
            .map(|g| Shape4::new(xs.n, self.out_channels, g.oh, g.ow))
    }

    /// `conv(x) + bias` for `x` NHWC of shape `xs` (checked with [`Conv2d::geom`] by the model), stored as
    /// `store` says.
    pub fn forward(
        &mut self,
        x: &[f32],
        xs: Shape4,
        store: ConvStore<'_>,
        ws: &mut Workspace,
    ) -> Shape4 {
        let plan = self.planned(xs);
        self.in_shape = xs;
        self.out_shape = Shape4::new(xs.n, self.out_channels, plan.geom.oh, plan.geom.ow);
        let workspace = ws.get(plan.workspace_len());
        match store {
            ConvStore::Out => {
                ensure_len(&mut self.out, self.out_shape.len());
                plan.forward(x, &self.weight, &self.bias, &mut self.out, workspace);
            }
            ConvStore::EvalBn(bn) => {
                let relu = bn.relu;
                let mut out = std::mem::take(&mut bn.out);
                ensure_len(&mut out, self.out_shape.len());
                let (scale, shift) = bn.eval_affine();
                // Prepare the weights once per plan, reuse them until the weight changes.
                let packed = match plan.prepared_len() {
                    Some(len) => {
                        // Keyed by geometry and algorithm, not batch: a server's batches vary in size, and the
                        // same algorithm (Winograd tile included) prepares the same weights for any of them.
                        let same = |p: ConvPlan| p.geom == plan.geom && p.forward == plan.forward;
                        if !self.packed_for.is_some_and(same) {
                            ensure_len(&mut self.packed, len);
                            plan.prepare_weights(&self.weight, &mut self.packed);
                            self.packed_for = Some(plan);
                        }
                        Some(&self.packed[..])
                    }
                    None => None,
                };
                plan.forward_affine(
                    x,
                    &self.weight,
                    packed,
                    &self.bias,
                    scale,
                    shift,
                    relu,
                    &mut out,
                    workspace,
                );
                bn.out = out;
            }
        }
        self.out_shape
    }

    /// Given `dy` (NHWC, shape of the last output) and the last forward's input `x`, writes the parameter
    /// gradients and, when asked, the input gradient (NHWC, the last input's length): into
    /// [`Conv2d::grad_input`], or into a caller's buffer (a model shares a few among all its layers, so only
    /// the gradients in flight take memory).
    pub fn backward(
        &mut self,
        x: &[f32],
        dy: &[f32],
        grad_input: Option<Buffers<'_, [f32]>>,
        ws: &mut Workspace,
    ) {
        let plan = self.planned(self.in_shape);
        let workspace = ws.get(plan.workspace_len());
        let grad_input = match grad_input {
            Some(Buffers::Own) => {
                ensure_len(&mut self.grad_input, self.in_shape.len());
                Some(&mut self.grad_input[..])
            }
            Some(Buffers::Lent(dx)) => Some(dx),
            None => None,
        };
        plan.backward(
            x,
            &self.weight,
            dy,
            &mut self.grad_weight,
            &mut self.grad_bias,
            grad_input,
            workspace,
        );
    }

    /// Number of trainable values (weight and bias).
    pub fn num_params(&self) -> usize {
        self.weight.len() + self.bias.len()
    }

    /// PyTorch's OIHW `[out, in, k, k]` shape of the weight.
    pub fn weight_shape_oihw(&self) -> Vec<usize> {
        vec![
            self.out_channels,
            self.in_channels,
            self.kernel,
            self.kernel,
        ]
    }

    /// A HWIO `[k, k, in, out]` buffer (weight or its gradient) in PyTorch's OIHW order.
    pub fn hwio_to_oihw(&self, hwio: &[f32]) -> Vec<f32> {
        let (o, i, k) = (self.out_channels, self.in_channels, self.kernel);
        let mut oihw = vec![0.0; hwio.len()];
        for ky in 0..k {
            for kx in 0..k {
                for ci in 0..i {
                    for co in 0..o {
                        oihw[((co * i + ci) * k + ky) * k + kx] =
                            hwio[((ky * k + kx) * i + ci) * o + co];
                    }
                }
            }
        }
        oihw
    }

    /// The weight, HWIO `[k, k, in, out]`.
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// The weight, HWIO `[k, k, in, out]`, for changing it.
    pub fn weight_mut(&mut self) -> &mut [f32] {
        self.invalidate_packed();
        &mut self.weight
    }

    /// The weight for changing it together with its gradient (for tests that perturb one value at a time).
    pub fn weight_and_grad_mut(&mut self) -> (&mut [f32], &[f32]) {
        self.invalidate_packed();
        (&mut self.weight, &self.grad_weight)
    }

    /// Drops the eval-mode packed weights (before the weight is handed out for changing), memory included:
    /// training never reads them.
    pub(crate) fn invalidate_packed(&mut self) {
        self.packed = Vec::new();
        self.packed_for = None;
    }

    /// The weight in PyTorch's OIHW order.
    pub fn weight_oihw(&self) -> Vec<f32> {
        self.hwio_to_oihw(&self.weight)
    }

    /// Sets the weight from PyTorch's OIHW order (`oihw.len()` must equal the weight's length).
    pub fn set_weight_oihw(&mut self, oihw: &[f32]) {
        self.invalidate_packed();
        let (o, i, k) = (self.out_channels, self.in_channels, self.kernel);
        assert_eq!(oihw.len(), o * i * k * k);
        for ky in 0..k {
            for kx in 0..k {
                for ci in 0..i {
                    for co in 0..o {
                        self.weight[((ky * k + kx) * i + ci) * o + co] =
                            oihw[((co * i + ci) * k + ky) * k + kx];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{BnStore, SeedableRng};

    /// The eval-mode packed weights of a wide layer are rebuilt after every way the weight can change.
    #[test]
    fn eval_packed_weights_follow_weight_changes() {
        let mut rng = InitRng::seed_from_u64(3);
        let mut conv = Conv2d::new(16, 256, 3, 1, 1, &mut rng);
        let mut bn = BatchNorm2d::new(256, true);
        bn.running_mean
            .iter_mut()
            .enumerate()
            .for_each(|(i, m)| *m = i as f32 / 900.0);
        let xs = Shape4::new(2, 16, 4, 4);
        let x: Vec<f32> = (0..xs.len())
            .map(|i| (i % 29) as f32 / 29.0 - 0.4)
            .collect();
        let mut ws = Workspace::default();
        let reference = |conv: &mut Conv2d, bn: &mut BatchNorm2d, ws: &mut Workspace| {
            let s = conv.forward(&x, xs, ConvStore::Out, ws);
            bn.forward(&conv.out, s, false, BnStore::Out);
            bn.out.clone()
        };
        let mut check = |conv: &mut Conv2d, bn: &mut BatchNorm2d, what: &str| {
            conv.forward(&x, xs, ConvStore::EvalBn(bn), &mut ws);
            let fused = bn.out.clone();
            let want = reference(conv, bn, &mut Workspace::default());
            for (a, b) in fused.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{what}: {a} vs {b}"
                );
            }
            fused
        };
        let first = check(&mut conv, &mut bn, "first");
        conv.weight_mut().iter_mut().for_each(|w| *w *= 1.5);
        let second = check(&mut conv, &mut bn, "after weight_mut");
        assert_ne!(first, second);
        let oihw: Vec<f32> = conv.weight_oihw().iter().map(|w| -w).collect();
        conv.set_weight_oihw(&oihw);
        check(&mut conv, &mut bn, "after set_weight_oihw");
        conv.weight_and_grad_mut().0[7] += 3.0;
        check(&mut conv, &mut bn, "after weight_and_grad_mut");
        let mut params = Vec::new();
        crate::nn::keys::push_conv_for_test(&mut params, &mut conv);
        params[0].value[11] -= 2.0;
        drop(params);
        check(&mut conv, &mut bn, "after the optimizer's parameter list");
    }

    /// The eval-mode prepared weights follow the input size: a 1×1 plane (one live tap), a 3×3 plane (nine) and
    /// a batch of 8×8 planes (Winograd on AVX2 CPUs) each need their own layout, in any order.
    #[test]
    fn eval_prepared_weights_follow_the_input_size() {
        let mut rng = InitRng::seed_from_u64(5);
        let mut conv = Conv2d::new(16, 256, 3, 1, 1, &mut rng);
        let mut bn = BatchNorm2d::new(256, true);
        bn.running_var.iter_mut().for_each(|v| *v = 2.0);
        let mut ws = Workspace::default();
        for (n, side) in [(2, 1), (2, 3), (16, 8), (2, 1), (16, 8), (2, 3)] {
            let xs = Shape4::new(n, 16, side, side);
            let x: Vec<f32> = (0..xs.len())
                .map(|i| (i % 31) as f32 / 31.0 - 0.5)
                .collect();
            conv.forward(&x, xs, ConvStore::EvalBn(&mut bn), &mut ws);
            let fused = bn.out.clone();
            let s = conv.forward(&x, xs, ConvStore::Out, &mut Workspace::default());
            bn.forward(&conv.out, s, false, BnStore::Out);
            for (a, b) in fused.iter().zip(&bn.out) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{n}×{side}×{side}: {a} vs {b}"
                );
            }
        }
    }
}
