//! `BatchNorm2d`, optionally fused with the ReLU that follows it in the chapter's network.

use super::sync_bn::{correct_input_grad, global_stats};
use super::{ensure_len, Grad};
use crate::dist::Collective;
use crate::kernels::norm::{
    batch_norm_add_relu, batch_norm_affine, batch_norm_apply, batch_norm_backward,
    batch_norm_backward_in_place, batch_stats, sums_scratch_len,
};
use crate::Shape4;
use std::sync::Arc;

/// Where [`BatchNorm2d::forward`] stores its result.
pub enum BnStore<'a> {
    /// [`BatchNorm2d::out`].
    Out,
    /// A block's last norm with the residual join fused in: `out = max(bn(x) + shortcut, 0)`, all NHWC of the
    /// input's shape, in one pass. [`BatchNorm2d::out`] is not written (the normalized activation is never
    /// stored: backward needs only `x`), so the norm must have no fused ReLU.
    AddRelu {
        /// The shortcut's output, added before the ReLU.
        shortcut: &'a [f32],
        /// The block's output.
        out: &'a mut [f32],
    },
}

/// PyTorch's `nn.BatchNorm2d(c)` (eps 1e-5, momentum 0.1, affine, tracking running statistics).
/// With `relu` set, the output is `max(bn(x), 0)` and backward masks by it: the chapter's `BN → ReLU` pairs
/// run as one memory pass.
pub struct BatchNorm2d {
    /// Channels `c` normalized (the last axis of the NHWC input).
    pub num_features: usize,
    /// Added to the variance before the square root, `1e-5`.
    pub eps: f32,
    /// Weight of the new batch statistic in the running averages, `0.1` (PyTorch's convention).
    pub momentum: f32,
    /// Whether a ReLU is fused into the output (`max(bn(x), 0)`) and into backward.
    pub relu: bool,
    /// `[c]`, init 1.
    pub weight: Vec<f32>,
    /// `[c]`, init 0.
    pub bias: Vec<f32>,
    /// Gradient of the loss w.r.t. `weight`, `[c]`, from the last backward.
    pub grad_weight: Vec<f32>,
    /// Gradient of the loss w.r.t. `bias`, `[c]`, from the last backward.
    pub grad_bias: Vec<f32>,
    /// `[c]`, init 0; updated in training with the batch mean.
    pub running_mean: Vec<f32>,
    /// `[c]`, init 1; updated in training with the *unbiased* batch variance.
    pub running_var: Vec<f32>,
    /// Training-mode forwards run so far (PyTorch's i64 buffer; kept for checkpoints, not used in the math).
    pub num_batches_tracked: i64,
    /// Output of the last forward, NHWC.
    pub out: Vec<f32>,
    /// Gradient w.r.t. the input from the last backward, NHWC.
    pub grad_input: Vec<f32>,
    /// The statistics the last training forward normalized with, `[c]` each.
    save_mean: Vec<f32>,
    save_invstd: Vec<f32>,
    batch_var: Vec<f32>,
    /// The last forward as one affine map per channel, `[c]` each (see [`BatchNorm2d::eval_affine`]).
    scale: Vec<f32>,
    shift: Vec<f32>,
    /// Scratch of the kernels: per-channel f64 sums and their partials ([`sums_scratch_len`]) and backward
    /// coefficients `[3, c]`.
    sums: Vec<f64>,
    coeffs: Vec<f32>,
    /// `--sync-bn`: the job whose global batch the statistics and backward sums cover (`None`: this
    /// process's batch, as `nn.BatchNorm2d`).
    pub sync: Option<Arc<dyn Collective>>,
    /// Rows of the global batch of the last synchronized training forward, and the sums' scratch.
    sync_rows: usize,
    sync_buf: Vec<f64>,
}

impl BatchNorm2d {
    /// `nn.BatchNorm2d(num_features)` with PyTorch's defaults (weight 1, bias 0, running mean 0 / var 1),
    /// followed by a fused ReLU when `relu`.
    pub fn new(num_features: usize, relu: bool) -> Self {
        let c = num_features;
        BatchNorm2d {
            num_features,
            eps: 1e-5,
            momentum: 0.1,
            relu,
            weight: vec![1.0; c],
            bias: vec![0.0; c],
            grad_weight: vec![0.0; c],
            grad_bias: vec![0.0; c],
            running_mean: vec![0.0; c],
            running_var: vec![1.0; c],
            num_batches_tracked: 0,
            out: Vec::new(),
            grad_input: Vec::new(),
            save_mean: vec![0.0; c],
            save_invstd: vec![0.0; c],
            batch_var: vec![0.0; c],
            scale: vec![0.0; c],
            shift: vec![0.0; c],
            sums: Vec::new(),
            coeffs: vec![0.0; 3 * c],
            sync: None,
            sync_rows: 0,
            sync_buf: Vec::new(),
        }
    }

    /// Normalizes `x` (NHWC, shape `xs`, `xs.c == num_features`) and stores the result as `store` says. In
    /// training, with the batch's statistics (which needs more than one value per channel: `xs.rows() > 1`,
    /// checked by the model) and updating the running statistics; in eval, with the running statistics.
    pub fn forward(&mut self, x: &[f32], xs: Shape4, train: bool, store: BnStore<'_>) {
        self.statistics(x, xs, train);
        match store {
            BnStore::Out => {
                ensure_len(&mut self.out, xs.len());
                batch_norm_apply(
                    x,
                    self.num_features,
                    &self.scale,
                    &self.shift,
                    self.relu,
                    &mut self.out,
                );
            }
            BnStore::AddRelu { shortcut, out } => {
                assert!(!self.relu, "the join's ReLU replaces the norm's own");
                batch_norm_add_relu(
                    x,
                    self.num_features,
                    &self.scale,
                    &self.shift,
                    shortcut,
                    out,
                );
            }
        }
    }

    /// Sets `save_mean` / `save_invstd` to the statistics to normalize with (the batch's in training, updating
    /// the running statistics; the running ones in eval), and `scale` / `shift` to the affine map they make.
    fn statistics(&mut self, x: &[f32], xs: Shape4, train: bool) {
        let c = self.num_features;
        if train {
            self.size_sums(xs.rows());
            batch_stats(
                x,
                c,
                &mut self.save_mean,
                &mut self.batch_var,
                &mut self.sums,
            );
            if let Some(comm) = &self.sync {
                self.sync_rows = global_stats(
                    &**comm,
                    xs.rows(),
                    &mut self.save_mean,
                    &mut self.batch_var,
                    &mut self.sync_buf,
                );
            }
            let m = match self.sync {
                Some(_) => self.sync_rows,
                None => xs.rows(),
            } as f32;
            let unbias = m / (m - 1.0).max(1.0);
            for ch in 0..c {
                self.save_invstd[ch] = 1.0 / (self.batch_var[ch] + self.eps).sqrt();
                self.running_mean[ch] = (1.0 - self.momentum) * self.running_mean[ch]
                    + self.momentum * self.save_mean[ch];
                self.running_var[ch] = (1.0 - self.momentum) * self.running_var[ch]
                    + self.momentum * self.batch_var[ch] * unbias;
            }
            self.num_batches_tracked += 1;
        } else {
            for ch in 0..c {
                self.save_mean[ch] = self.running_mean[ch];
                self.save_invstd[ch] = 1.0 / (self.running_var[ch] + self.eps).sqrt();
            }
        }
        batch_norm_affine(
            &self.save_mean,
            &self.save_invstd,
            &self.weight,
            &self.bias,
            &mut self.scale,
            &mut self.shift,
        );
    }

    /// Sizes the f64 scratch of the per-channel sums for `rows` rows (allocates only when the shape grows).
    fn size_sums(&mut self, rows: usize) {
        ensure_len(&mut self.sums, sums_scratch_len(rows, self.num_features));
    }

    /// Eval mode as `y = x·scale + shift` per channel (`scale = weight / √(running_var + eps)`,
    /// `shift = bias − running_mean·scale`), for a producer that applies it as it writes (see
    /// [`crate::nn::ConvStore::EvalBn`]). Returns `(scale, shift)`, each `[c]`.
    pub fn eval_affine(&mut self) -> (&[f32], &[f32]) {
        // Eval-mode statistics read no input.
        self.statistics(&[], Shape4::default(), false);
        (&self.scale, &self.shift)
    }

    /// [`BatchNorm2d::eval_affine`] computed into new buffers, the norm untouched: `(scale, shift)`, each `[c]`
    /// (what a compiled network folds into the convolution before it).
    pub fn eval_scale_shift(&self) -> (Vec<f32>, Vec<f32>) {
        let c = self.num_features;
        let invstd: Vec<f32> = self
            .running_var
            .iter()
            .map(|v| 1.0 / (v + self.eps).sqrt())
            .collect();
        let (mut scale, mut shift) = (vec![0.0; c], vec![0.0; c]);
        batch_norm_affine(
            &self.running_mean,
            &invstd,
            &self.weight,
            &self.bias,
            &mut scale,
            &mut shift,
        );
        (scale, shift)
    }

    /// Backward of a training-mode forward on `x`, from `grad` (NHWC, same shape): writes the parameter
    /// gradients and the input gradient, into [`BatchNorm2d::grad_input`] or over the lent `d out`. The output
    /// is read only for a fused ReLU's mask; without one, `x` stands in for it, so a norm run with
    /// [`BnStore::AddRelu`] needs no stored output.
    pub fn backward(&mut self, x: &[f32], grad: Grad<'_, [f32]>) {
        self.size_sums(x.len() / self.num_features);
        let y = if self.relu { &self.out } else { x };
        let mut grad_input = std::mem::take(&mut self.grad_input);
        let dx = match grad {
            Grad::Own(dy) => {
                ensure_len(&mut grad_input, x.len());
                batch_norm_backward(
                    x,
                    y,
                    dy,
                    self.num_features,
                    &self.save_mean,
                    &self.save_invstd,
                    &self.weight,
                    self.relu,
                    &mut grad_input,
                    &mut self.grad_weight,
                    &mut self.grad_bias,
                    &mut self.sums,
                    &mut self.coeffs,
                );
                &mut grad_input[..]
            }
            Grad::Lent(dy) => {
                batch_norm_backward_in_place(
                    x,
                    y,
                    dy,
                    self.num_features,
                    &self.save_mean,
                    &self.save_invstd,
                    &self.weight,
                    self.relu,
                    &mut self.grad_weight,
                    &mut self.grad_bias,
                    &mut self.sums,
                    &mut self.coeffs,
                );
                dy
            }
        };
        self.sync_input_grad(x, dx);
        self.grad_input = grad_input;
    }

    /// With `--sync-bn`: turns `grad` (the input gradient from this rank's batch alone) into the global batch's,
    /// from the per-channel sums `[Σg, Σg(x−mean)]` (`[2, c]`, f64) the backward kernels leave at the start of
    /// their scratch. The sums are checked against the f32 gradients the kernels wrote, so a kernel that stops
    /// leaving them fails the synchronized runs' tests instead of training wrongly.
    fn sync_input_grad(&mut self, x: &[f32], grad: &mut [f32]) {
        let Some(comm) = &self.sync else { return };
        let c = self.num_features;
        let local = &self.sums[..2 * c];
        for ch in 0..c {
            assert!(
                local[ch] as f32 == self.grad_bias[ch]
                    && (local[c + ch] * self.save_invstd[ch] as f64) as f32 == self.grad_weight[ch],
                "the batch-norm backward kernel no longer leaves its sums in its scratch"
            );
        }
        correct_input_grad(
            &**comm,
            x,
            grad,
            &self.save_mean,
            &self.save_invstd,
            &self.weight,
            local,
            &mut self.grad_weight,
            &mut self.grad_bias,
            self.sync_rows,
            &mut self.sync_buf,
        );
    }

    /// Number of trainable values (weight and bias).
    pub fn num_params(&self) -> usize {
        2 * self.num_features
    }
}
