//! Optimizers and learning-rate schedules, each matching its `torch.optim` counterpart operation for operation.
//!
//! * [`Adam`] — `torch.optim.Adam` (L2 weight decay added to the gradient) and `torch.optim.AdamW` (decoupled
//!   weight decay), built from an [`AdamConfig`].
//! * [`Sgd`] — `torch.optim.SGD` with momentum, dampening, Nesterov and weight decay, built from an [`SgdConfig`].
//! * [`Schedule`] — `StepLR`, `CosineAnnealingLR` and `OneCycleLR` as closed-form functions of the position in
//!   training; the learning rate is handed to [`Optimizer::step`] every step.
//!
//! Exactness: the updates reproduce torch's single-tensor (`foreach=False`, the CPU default) code in float32,
//! with the same operation order, the same fused multiply-adds its CPU kernels use (`lerp`, `addcmul`,
//! `add(alpha=…)`), and the scalar coefficients computed in f64 as Python computes them before rounding to f32.
//! The one deliberate difference: torch's CPU `Tensor.sqrt` runs through MKL's vector math, which is off by one
//! ulp on about a fifth of the elements (CPU-dependent); we use the correctly rounded IEEE square root. See
//! `tests/optim.rs` for the measured agreement.
//!
//! Optimizer state is kept per parameter, by index: the model hands out its parameters as [`ParamMut`]s in the
//! same order (PyTorch's) every step, and the optimizer is built for their lengths.
//!
//! ```
//! use resnet::optim::{Optimizer, OptimizerKind, OptimizerOptions, Schedule};
//! use resnet::ParamMut;
//!
//! let mut w = vec![1.0f32, -2.0];
//! let g = vec![0.5f32, 0.25];
//! let kind: OptimizerKind = "adam".parse().unwrap();
//! let mut opt = kind.build(&OptimizerOptions::default(), &[w.len()]).unwrap();
//! let schedule: Schedule = "cosine".parse().unwrap();
//! let lr = schedule.lr(1e-3, 0, 0, 1, 10);
//! opt.step(&mut [ParamMut { name: "w".into(), value: &mut w, grad: &g }], lr);
//! assert_eq!(opt.steps_taken(), 1);
//! assert!(w[0] < 1.0 && w[1] < -2.0);
//! ```

mod adam;
mod schedule;
mod sgd;

pub use adam::{Adam, AdamConfig};
pub use schedule::{warmup_factor, Schedule};
pub use sgd::{Sgd, SgdConfig};

use crate::nn::ResNet;
use crate::tensor::ParamMut;
use crate::{Error, Result};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// Elements per parallel task of an update. Tensors shorter than two chunks are updated on the calling thread.
pub(crate) const CHUNK: usize = 16 * 1024;

/// Called once per parameter with `(value, grad)`: what [`Optimizer::step_each`] hands to its caller.
pub type UpdateFn<'a> = dyn FnMut(&mut [f32], &[f32]) + 'a;

/// Hands every parameter, in order, to the update function it is given (see [`Optimizer::step_each`]).
pub type ParamVisitor<'a> = dyn FnMut(&mut UpdateFn<'_>) + 'a;

/// An optimizer: updates parameters in place from their gradients, one step at a time.
///
/// Implementations keep their state (moments, momentum buffers) per parameter index; `step` must be given the
/// parameters in the same order and with the same lengths every time, and panics with the parameter's name
/// otherwise (that is a programming error, not a user error).
pub trait Optimizer: Send {
    /// Applies one update with learning rate `lr` (the schedule decides it; pass the same value torch's
    /// `param_groups[0]["lr"]` would hold). Allocates nothing; large tensors are updated in parallel with rayon.
    fn step(&mut self, params: &mut [ParamMut<'_>], lr: f32);
    /// The same update for parameters handed out one at a time: `params` must call the function it is given
    /// once per parameter, `(value, grad)`, in the order the optimizer was built for (what
    /// [`Optimizer::step_net`] does without building a list, so a training step allocates
    /// nothing).
    fn step_each(&mut self, lr: f32, params: &mut ParamVisitor<'_>);
    /// One step over every trainable tensor of `net` with the gradients of its last backward pass: what
    /// `step(&mut net.params_mut(), lr)` does, without allocating the named list.
    fn step_net(&mut self, net: &mut ResNet, lr: f32) {
        self.step_each(lr, &mut |update| net.visit_params_mut(update));
    }
    /// [`Optimizer::step_net`] with the gradients taken from `grads`, every trainable tensor's gradient
    /// concatenated in [`ResNet::params_mut`] order (what [`ResNet::copy_grads`] writes): for gradients
    /// combined outside the network, e.g. summed over the ranks of a data-parallel job.
    fn step_net_with(&mut self, net: &mut ResNet, lr: f32, grads: &[f32]) {
        self.step_each(lr, &mut |update| {
            let mut at = 0;
            net.visit_params_mut(&mut |value, _| {
                let len = value.len();
                update(value, &grads[at..at + len]);
                at += len;
            });
            assert_eq!(at, grads.len(), "one gradient value per parameter");
        });
    }
    /// Number of steps taken so far (restored by [`Optimizer::load_state`]).
    fn steps_taken(&self) -> u64;
    /// A copy of the full state, for checkpoints. Loading it into an optimizer built with the same configuration
    /// and continuing gives bit-identical results to never having stopped.
    fn state(&self) -> OptimizerState;
    /// Replaces the state with one from [`Optimizer::state`]. Fails, leaving the optimizer unchanged, when the
    /// kind differs, a tensor is missing, unexpected, duplicated or has the wrong length for its parameter.
    fn load_state(&mut self, state: OptimizerState) -> Result<()>;
}

/// The exportable state of an optimizer.
///
/// `tensors` are named after torch's per-parameter optimizer state, `{param_index}.{field}`: `0.exp_avg`,
/// `0.exp_avg_sq` for Adam/AdamW, `0.momentum_buffer` for SGD with momentum (none for plain SGD). In torch's
/// `optimizer.state_dict()` they are `state[param_index][field]`, with `state[param_index]["step"] = step`.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// `"adam"`, `"adamw"` or `"sgd"` (see [`OptimizerKind`]).
    pub kind: String,
    /// Steps taken.
    pub step: u64,
    /// Per-parameter state tensors, named `{param_index}.{field}`, in parameter order.
    pub tensors: Vec<(String, Vec<f32>)>,
}

/// The optimizers the command line offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptimizerKind {
    /// `torch.optim.Adam`: L2 weight decay (default 0) added to the gradient.
    Adam,
    /// `torch.optim.AdamW`: decoupled weight decay (default 0.01).
    AdamW,
    /// `torch.optim.SGD`.
    Sgd,
}

impl OptimizerKind {
    /// Every kind, in the order the command line lists them.
    pub const ALL: [OptimizerKind; 3] = [
        OptimizerKind::Adam,
        OptimizerKind::AdamW,
        OptimizerKind::Sgd,
    ];

    /// The command-line name, also used as [`OptimizerState::kind`]: `adam`, `adamw` or `sgd`.
    pub const fn name(self) -> &'static str {
        match self {
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::Sgd => "sgd",
        }
    }

    /// Builds the optimizer for parameters of the given lengths (in the order `step` will receive them), with
    /// torch's defaults where `options` leaves a field `None`. Fails on values torch rejects (negative weight
    /// decay, betas outside [0, 1), Nesterov without momentum) and on options the kind does not have
    /// (momentum for Adam, betas for SGD).
    pub fn build(
        self,
        options: &OptimizerOptions,
        param_lens: &[usize],
    ) -> Result<Box<dyn Optimizer>> {
        let name = self.name();
        match self {
            OptimizerKind::Adam | OptimizerKind::AdamW => {
                if options.momentum.is_some() || options.nesterov {
                    crate::bail!("{name}: momentum and nesterov apply to sgd only (adam's momentum is beta1)");
                }
                let mut config = if self == OptimizerKind::Adam {
                    AdamConfig::adam()
                } else {
                    AdamConfig::adamw()
                };
                if let Some((b1, b2)) = options.betas {
                    config.beta1 = b1;
                    config.beta2 = b2;
                }
                if let Some(eps) = options.eps {
                    config.eps = eps;
                }
                if let Some(wd) = options.weight_decay {
                    config.weight_decay = wd;
                }
                let mut adam = Adam::new(config, param_lens)?;
                adam.set_no_decay(options.no_decay.clone())?;
                Ok(Box::new(adam))
            }
            OptimizerKind::Sgd => {
                if options.betas.is_some() || options.eps.is_some() {
                    crate::bail!("sgd: betas and eps apply to adam and adamw only");
                }
                let config = SgdConfig {
                    momentum: options.momentum.unwrap_or(0.0),
                    dampening: 0.0,
                    nesterov: options.nesterov,
                    weight_decay: options.weight_decay.unwrap_or(0.0),
                };
                let mut sgd = Sgd::new(config, param_lens)?;
                sgd.set_no_decay(options.no_decay.clone())?;
                Ok(Box::new(sgd))
            }
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OptimizerKind {
    type Err = Error;

    /// Parses `adam`, `adamw` or `sgd` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        match OptimizerKind::ALL.into_iter().find(|k| k.name() == lower) {
            Some(kind) => Ok(kind),
            None => Err(Error::new(format!(
                "unknown optimizer `{s}`: expected one of adam, adamw, sgd"
            ))),
        }
    }
}

/// Hyper-parameters for [`OptimizerKind::build`]; `None` (or `false`) means torch's default for the kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptimizerOptions {
    /// Weight decay: L2 for `adam` and `sgd` (default 0), decoupled for `adamw` (default 0.01).
    pub weight_decay: Option<f64>,
    /// SGD momentum (default 0).
    pub momentum: Option<f64>,
    /// SGD Nesterov momentum (needs a momentum > 0).
    pub nesterov: bool,
    /// Adam's `(beta1, beta2)` (default `(0.9, 0.999)`).
    pub betas: Option<(f64, f64)>,
    /// Adam's epsilon (default 1e-8).
    pub eps: Option<f64>,
    /// Per parameter (in the order the optimizer is built for): exempt from weight decay, as a second torch
    /// parameter group with `weight_decay=0` would be. Empty: every parameter decays.
    pub no_decay: Vec<bool>,
}

/// Checks a [`OptimizerOptions::no_decay`] mask against the parameters: empty, or one entry per parameter.
pub(crate) fn check_mask(lens: &[usize], no_decay: &[bool]) -> Result<()> {
    if !no_decay.is_empty() && no_decay.len() != lens.len() {
        crate::bail!(
            "a weight-decay mask of {} entries for {} parameters",
            no_decay.len(),
            lens.len()
        );
    }
    Ok(())
}

/// The f64 a user meant when they wrote the f32 `x`: the value of its shortest round-tripping decimal
/// (`1e-3f32` → `0.001f64`, not `0.0010000000474974513`). Torch computes its scalar coefficients from Python
/// floats (f64); widening this way makes ours identical whenever the learning rate was typed as a decimal.
/// Allocation-free.
pub(crate) fn decimal_f64(x: f32) -> f64 {
    struct Buf {
        bytes: [u8; 40],
        len: usize,
    }
    impl fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.len + s.len();
            if end > self.bytes.len() {
                return Err(fmt::Error);
            }
            self.bytes[self.len..end].copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let mut buf = Buf {
        bytes: [0; 40],
        len: 0,
    };
    if fmt::Write::write_fmt(&mut buf, format_args!("{x:e}")).is_err() {
        return x as f64;
    }
    std::str::from_utf8(&buf.bytes[..buf.len])
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(x as f64)
}

/// Panics with a clear message unless `params` match the lengths the optimizer was built for.
pub(crate) fn check_params(kind: &str, lens: &[usize], params: &[ParamMut<'_>]) {
    assert!(
        params.len() == lens.len(),
        "{kind}: step got {} parameters, the optimizer was built for {}",
        params.len(),
        lens.len()
    );
    for (i, (p, &len)) in params.iter().zip(lens).enumerate() {
        assert!(
            p.value.len() == len && p.grad.len() == len,
            "{kind}: parameter {i} (`{}`) has {} values and {} gradients, the optimizer was built for {len}",
            p.name,
            p.value.len(),
            p.grad.len()
        );
    }
}

/// The list `params` as a [`ParamVisitor`]: how a list-taking [`Optimizer::step`] runs its `step_each`.
pub(crate) fn each_of<'p, 'a: 'p>(
    params: &'p mut [ParamMut<'a>],
) -> impl FnMut(&mut UpdateFn<'_>) + use<'p, 'a> {
    move |update| {
        for p in params.iter_mut() {
            update(p.value, p.grad);
        }
    }
}

/// Panics unless parameter `index` exists and `value` and `grad` have its length (a programming error).
pub(crate) fn check_param(kind: &str, lens: &[usize], index: usize, value: &[f32], grad: &[f32]) {
    assert!(
        index < lens.len(),
        "{kind}: step got more than the {} parameters the optimizer was built for",
        lens.len()
    );
    let len = lens[index];
    assert!(
        value.len() == len && grad.len() == len,
        "{kind}: parameter {index} has {} values and {} gradients, the optimizer was built for {len}",
        value.len(),
        grad.len()
    );
}

/// Panics unless a step visited every parameter.
pub(crate) fn check_count(kind: &str, lens: &[usize], visited: usize) {
    assert!(
        visited == lens.len(),
        "{kind}: step got {visited} parameters, the optimizer was built for {}",
        lens.len()
    );
}

/// Validates `state` against an optimizer of `kind` over parameters of `lens` holding the per-parameter
/// `fields`, and returns its tensors arranged as `[field][param]`. Errors name the offending tensor.
pub(crate) fn take_state(
    kind: &str,
    lens: &[usize],
    fields: &[&str],
    state: OptimizerState,
) -> Result<Vec<Vec<Vec<f32>>>> {
    if state.kind != kind {
        crate::bail!(
            "optimizer state: saved by `{}`, cannot load into `{kind}`",
            state.kind
        );
    }
    let expected = fields.len() * lens.len();
    if state.tensors.len() != expected {
        crate::bail!(
            "optimizer state ({kind}): {} tensors, expected {expected} ({} per parameter for {} parameters)",
            state.tensors.len(),
            fields.len(),
            lens.len()
        );
    }
    let mut slots: Vec<Vec<Option<Vec<f32>>>> = vec![vec![None; lens.len()]; fields.len()];
    let index: HashMap<&str, usize> = fields.iter().enumerate().map(|(i, f)| (*f, i)).collect();
    for (name, values) in state.tensors {
        let parsed = name
            .split_once('.')
            .and_then(|(p, f)| Some((p.parse::<usize>().ok()?, *index.get(f)?)));
        let Some((param, field)) = parsed.filter(|&(p, _)| p < lens.len()) else {
            crate::bail!(
                "optimizer state ({kind}): unexpected tensor `{name}` (expected `{{0..{}}}.{{{}}}`)",
                lens.len(),
                fields.join(",")
            );
        };
        if values.len() != lens[param] {
            crate::bail!(
                "optimizer state ({kind}): `{name}` has {} values, parameter {param} has {}",
                values.len(),
                lens[param]
            );
        }
        if slots[field][param].replace(values).is_some() {
            crate::bail!("optimizer state ({kind}): tensor `{name}` appears twice");
        }
    }
    // every slot is filled: the count matched and nothing was duplicated or out of range
    Ok(slots
        .into_iter()
        .map(|f| f.into_iter().map(|t| t.unwrap_or_default()).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_widening() {
        assert_eq!(decimal_f64(1e-3), 0.001);
        assert_eq!(decimal_f64(0.1), 0.1);
        assert_eq!(decimal_f64(3e-4), 3e-4);
        assert_eq!(decimal_f64(0.0), 0.0);
        assert_eq!(decimal_f64(-2.5), -2.5);
        assert_eq!(decimal_f64(f32::MIN_POSITIVE) as f32, f32::MIN_POSITIVE);
        assert_eq!(decimal_f64(f32::MAX) as f32, f32::MAX);
        assert_eq!(decimal_f64(1e-45) as f32, 1e-45f32);
        assert_eq!(decimal_f64(f32::INFINITY), f64::INFINITY);
        assert!(decimal_f64(f32::NAN).is_nan());
        // always within half an f32 ulp of the f32 itself, so it rounds back
        for i in 0..10_000u32 {
            let x = f32::from_bits(0x3000_0000 + i * 99_991);
            assert_eq!(decimal_f64(x) as f32, x);
        }
    }

    #[test]
    fn kind_parsing() {
        assert_eq!(
            "adam".parse::<OptimizerKind>().unwrap(),
            OptimizerKind::Adam
        );
        assert_eq!(
            "AdamW".parse::<OptimizerKind>().unwrap(),
            OptimizerKind::AdamW
        );
        assert_eq!("sgd".parse::<OptimizerKind>().unwrap(), OptimizerKind::Sgd);
        let err = "rmsprop".parse::<OptimizerKind>().unwrap_err().to_string();
        assert!(
            err.contains("rmsprop") && err.contains("adam, adamw, sgd"),
            "{err}"
        );
        for k in OptimizerKind::ALL {
            assert_eq!(k.to_string().parse::<OptimizerKind>().unwrap(), k);
        }
    }

    #[test]
    fn build_defaults_and_rejections() {
        let lens = [3, 4];
        let o = OptimizerOptions::default();
        for k in OptimizerKind::ALL {
            let opt = k.build(&o, &lens).unwrap();
            assert_eq!(opt.state().kind, k.name());
            assert_eq!(opt.steps_taken(), 0);
        }
        let sgd_only = OptimizerOptions {
            momentum: Some(0.9),
            ..Default::default()
        };
        assert!(OptimizerKind::Adam.build(&sgd_only, &lens).is_err());
        assert!(OptimizerKind::Sgd.build(&sgd_only, &lens).is_ok());
        let adam_only = OptimizerOptions {
            betas: Some((0.8, 0.99)),
            ..Default::default()
        };
        assert!(OptimizerKind::Sgd.build(&adam_only, &lens).is_err());
        let nesterov_alone = OptimizerOptions {
            nesterov: true,
            ..Default::default()
        };
        assert!(OptimizerKind::Sgd.build(&nesterov_alone, &lens).is_err());
        let negative = OptimizerOptions {
            weight_decay: Some(-1.0),
            ..Default::default()
        };
        for k in OptimizerKind::ALL {
            assert!(k.build(&negative, &lens).is_err());
        }
    }
}
