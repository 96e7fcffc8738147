//! The network a model file compiles to for inference: the f32 [`CompiledNet`] of a file of f32 weights, or the
//! [`QuantNet`] of a quantized file ([`super::quant_file`]). `predict`, `eval`, `serve`, `bench --weights` and
//! `summary --plan --weights` run either the same way.

use super::int8::QuantNet;
use super::{Classifier, CompiledNet, ProfiledStep};
use crate::nn::ResNetConfig;
use crate::{Result, Shape4};

/// A model file's network, compiled for inference in the precision the file holds.
pub enum InferenceNet {
    /// f32 weights: every batch norm folded, the f32 kernels.
    F32(Box<CompiledNet>),
    /// A quantized file: the convolutions on the int8 kernels.
    Int8(Box<QuantNet>),
}

impl InferenceNet {
    /// The description of the network.
    pub fn config(&self) -> &ResNetConfig {
        match self {
            InferenceNet::F32(n) => &n.config,
            InferenceNet::Int8(n) => n.config(),
        }
    }

    /// `"f32"`, or the int8 kernel path's name (`"int8 avx512-vnni"`).
    pub fn precision(&self) -> &'static str {
        match self {
            InferenceNet::F32(_) => "f32",
            InferenceNet::Int8(n) => n.path().name(),
        }
    }

    /// See [`CompiledNet::set_batch_invariant`].
    pub fn set_batch_invariant(&mut self, on: bool) {
        match self {
            InferenceNet::F32(n) => n.set_batch_invariant(on),
            InferenceNet::Int8(n) => n.set_batch_invariant(on),
        }
    }

    /// Plans input shape `xs` and sizes the arena for it now.
    pub fn reserve(&mut self, xs: Shape4) -> Result<()> {
        match self {
            InferenceNet::F32(n) => n.reserve(xs),
            InferenceNet::Int8(n) => n.reserve(xs),
        }
    }

    /// The logits `[n, classes]` of the NCHW batch `x` of shape `xs`.
    pub fn forward(&mut self, x: &[f32], xs: Shape4) -> Result<&[f32]> {
        match self {
            InferenceNet::F32(n) => n.forward(x, xs),
            InferenceNet::Int8(n) => n.forward(x, xs),
        }
    }

    /// Each step timed inside the pass ([`CompiledNet::profile`], [`QuantNet::profile`]).
    pub fn profile(&mut self, x: &[f32], xs: Shape4, iters: usize) -> Result<Vec<ProfiledStep>> {
        match self {
            InferenceNet::F32(n) => n.profile(x, xs, iters),
            InferenceNet::Int8(n) => n.profile(x, xs, iters),
        }
    }

    /// One line per step (f32) or per convolution (int8) for input `xs`: what `summary --plan` shows.
    pub fn plan_lines(&mut self, xs: Shape4) -> Result<Vec<String>> {
        match self {
            InferenceNet::F32(n) => n.plan_lines(xs),
            InferenceNet::Int8(n) => n.plan_lines(xs),
        }
    }
}

impl Classifier for InferenceNet {
    fn classes(&self) -> usize {
        self.config().num_classes
    }

    fn logits(&mut self, x: &[f32], xs: Shape4) -> Result<&[f32]> {
        self.forward(x, xs)
    }
}
