//! `Linear(in, out)` with PyTorch's layout and initialization.

use super::{ensure_len, uniform_init, InitRng};
use crate::kernels::linear::{linear_backward, linear_forward};

/// `y [n, out] = x [n, in] · weightᵀ + bias`, weight `[out, in]` as in PyTorch.
pub struct Linear {
    /// Input features `in` per row.
    pub in_features: usize,
    /// Output features `out` per row.
    pub out_features: usize,
    /// `[out, in]`, row-major, PyTorch's layout.
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
    /// Gradient of the loss w.r.t. `weight`, `[out, in]`, from the last backward.
    pub grad_weight: Vec<f32>,
    /// Gradient of the loss w.r.t. `bias`, `[out]`, from the last backward.
    pub grad_bias: Vec<f32>,
    /// `[n, out]` from the last forward.
    pub out: Vec<f32>,
    /// `[n, in]` from the last backward.
    pub grad_input: Vec<f32>,
    batch: usize,
}

impl Linear {
    /// PyTorch's `nn.Linear(in_features, out_features)` with its default initialization (weight, then bias).
    pub fn new(in_features: usize, out_features: usize, rng: &mut InitRng) -> Self {
        let weight = uniform_init(rng, in_features * out_features, in_features);
        let bias = uniform_init(rng, out_features, in_features);
        Linear {
            in_features,
            out_features,
            grad_weight: vec![0.0; weight.len()],
            grad_bias: vec![0.0; out_features],
            weight,
            bias,
            out: Vec::new(),
            grad_input: Vec::new(),
            batch: 0,
        }
    }

    /// Forward over a batch of `n` rows `x [n, in]`; fills [`Linear::out`].
    pub fn forward(&mut self, x: &[f32], n: usize) {
        self.batch = n;
        ensure_len(&mut self.out, n * self.out_features);
        linear_forward(
            n,
            self.in_features,
            self.out_features,
            x,
            &self.weight,
            &self.bias,
            &mut self.out,
        );
    }

    /// Backward given the last forward's `x` and `dy [n, out]`; fills gradients and [`Linear::grad_input`].
    pub fn backward(&mut self, x: &[f32], dy: &[f32]) {
        let n = self.batch;
        ensure_len(&mut self.grad_input, n * self.in_features);
        linear_backward(
            n,
            self.in_features,
            self.out_features,
            x,
            &self.weight,
            dy,
            &mut self.grad_weight,
            &mut self.grad_bias,
            Some(&mut self.grad_input),
        );
    }

    /// Number of trainable values (weight and bias).
    pub fn num_params(&self) -> usize {
        self.weight.len() + self.bias.len()
    }
}
