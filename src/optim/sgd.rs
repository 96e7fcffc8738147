//! SGD, exactly as `torch.optim.SGD` (single-tensor code).
//!
//! torch's step for one parameter, float32, scalars rounded from f64 to f32 where they meet a tensor:
//!
//! ```text
//! d = fma(p, f32(wd), g)                            grad.add(param, alpha=weight_decay)       (wd ≠ 0)
//! first step: buf = d                               buf = grad.detach().clone()               (momentum ≠ 0)
//! later:      buf = fma(d, f32(1 - damp), buf * f32(mom))   buf.mul_(momentum).add_(grad, alpha=1 - dampening)
//! nesterov:   d = fma(buf, f32(mom), d)  else d = buf       grad.add(buf, alpha=momentum)
//! p = fma(d, f32(-lr), p)                           param.add_(grad, alpha=-lr)
//! ```
//!
//! `add` with `alpha` is a fused multiply-add in torch's CPU kernels, so these match torch to the bit.

use super::{
    check_count, check_mask, check_param, check_params, each_of, take_state, Optimizer,
    OptimizerState, ParamVisitor, CHUNK,
};
use crate::tensor::ParamMut;
use crate::Result;
use rayon::prelude::*;

/// Hyper-parameters of [`Sgd`], as f64 like torch's; the default is torch's (all 0, no Nesterov).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SgdConfig {
    /// Momentum factor (0: no momentum buffers).
    pub momentum: f64,
    /// Dampening of the gradient's contribution to the momentum buffer (torch default 0).
    pub dampening: f64,
    /// Nesterov momentum: step along `d + momentum·buf` instead of `buf`. Needs momentum > 0, dampening 0.
    pub nesterov: bool,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
}

impl SgdConfig {
    /// Rejects what torch's constructor rejects: negative momentum or weight decay, Nesterov without momentum
    /// or with dampening.
    pub fn validate(&self) -> Result<()> {
        if self.momentum.is_nan() || self.momentum < 0.0 {
            crate::bail!("sgd: invalid momentum {}: must be >= 0", self.momentum);
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            crate::bail!(
                "sgd: invalid weight decay {}: must be >= 0",
                self.weight_decay
            );
        }
        if !self.dampening.is_finite() {
            crate::bail!("sgd: invalid dampening {}", self.dampening);
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            crate::bail!("sgd: Nesterov momentum requires a momentum > 0 and zero dampening");
        }
        Ok(())
    }
}

/// SGD over a fixed list of parameters; with momentum its state is `{i}.momentum_buffer`.
#[derive(Clone, Debug)]
pub struct Sgd {
    config: SgdConfig,
    lens: Vec<usize>,
    step: u64,
    /// One buffer per parameter when momentum ≠ 0, else empty. Before the first step they hold zeros and are
    /// not read (torch's buffers do not exist yet; the first step copies the gradient in).
    momentum_buffer: Vec<Vec<f32>>,
    /// Per parameter: exempt from weight decay.
    no_decay: Vec<bool>,
}

#[derive(Clone, Copy)]
struct Coeffs {
    wd: f32,
    momentum: f32,
    one_minus_dampening: f32,
    neg_lr: f32,
}

/// What the momentum part of the update does this step.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Momentum {
    None,
    First,
    Later,
}

const FIELDS: [&str; 1] = ["momentum_buffer"];

impl Sgd {
    /// An optimizer for parameters of the given lengths (in the order [`Optimizer::step`] will receive them).
    /// Fails on an invalid `config` (see [`SgdConfig::validate`]).
    pub fn new(config: SgdConfig, param_lens: &[usize]) -> Result<Self> {
        config.validate()?;
        let momentum_buffer = if config.momentum != 0.0 {
            param_lens.iter().map(|&n| vec![0.0; n]).collect()
        } else {
            Vec::new()
        };
        Ok(Sgd {
            config,
            lens: param_lens.to_vec(),
            step: 0,
            momentum_buffer,
            no_decay: Vec::new(),
        })
    }

    /// Exempts the parameters marked `true` from weight decay, as a second torch parameter group with
    /// `weight_decay=0` does (`--wd-skip-norm`); one entry per parameter, or empty for none.
    pub fn set_no_decay(&mut self, no_decay: Vec<bool>) -> Result<()> {
        check_mask(&self.lens, &no_decay)?;
        self.no_decay = no_decay;
        Ok(())
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    fn fields(&self) -> &'static [&'static str] {
        if self.config.momentum != 0.0 {
            &FIELDS
        } else {
            &[]
        }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut [ParamMut<'_>], lr: f32) {
        check_params("sgd", &self.lens, params);
        self.step_each(lr, &mut each_of(params));
    }

    fn step_each(&mut self, lr: f32, params: &mut ParamVisitor<'_>) {
        let c = &self.config;
        let k = Coeffs {
            wd: c.weight_decay as f32,
            momentum: c.momentum as f32,
            one_minus_dampening: (1.0 - c.dampening) as f32,
            // f32(-lr) is the same whether lr is torch's f64 or its f32 rounding
            neg_lr: -lr,
        };
        let momentum = match (c.momentum != 0.0, self.step) {
            (false, _) => Momentum::None,
            (true, 0) => Momentum::First,
            (true, _) => Momentum::Later,
        };
        let variant = Variant {
            wd: c.weight_decay != 0.0,
            momentum,
            nesterov: c.nesterov,
        };
        self.step += 1;
        let mut index = 0;
        params(&mut |value, grad| {
            check_param("sgd", &self.lens, index, value, grad);
            let variant = match self.no_decay.get(index) {
                Some(true) => Variant {
                    wd: false,
                    ..variant
                },
                _ => variant,
            };
            let buf: &mut [f32] = match self.momentum_buffer.get_mut(index) {
                Some(b) => b,
                None => &mut [],
            };
            if value.len() < 2 * CHUNK {
                update(variant, value, grad, buf, &k);
            } else if buf.is_empty() {
                value
                    .par_chunks_mut(CHUNK)
                    .zip(grad.par_chunks(CHUNK))
                    .for_each(|(value, grad)| update(variant, value, grad, &mut [], &k));
            } else {
                value
                    .par_chunks_mut(CHUNK)
                    .zip(grad.par_chunks(CHUNK))
                    .zip(buf.par_chunks_mut(CHUNK))
                    .for_each(|((value, grad), buf)| update(variant, value, grad, buf, &k));
            }
            index += 1;
        });
        check_count("sgd", &self.lens, index);
    }

    fn steps_taken(&self) -> u64 {
        self.step
    }

    fn state(&self) -> OptimizerState {
        let tensors = self
            .momentum_buffer
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("{i}.momentum_buffer"), b.clone()))
            .collect();
        OptimizerState {
            kind: "sgd".to_string(),
            step: self.step,
            tensors,
        }
    }

    fn load_state(&mut self, state: OptimizerState) -> Result<()> {
        let step = state.step;
        let fields = self.fields();
        let mut taken = take_state("sgd", &self.lens, fields, state).map_err(|e| {
            if fields.is_empty() {
                crate::Error::new(format!(
                    "{e} (this SGD has no momentum, so it keeps no state tensors)"
                ))
            } else {
                e
            }
        })?;
        if !fields.is_empty() {
            self.momentum_buffer = taken.swap_remove(0);
        }
        self.step = step;
        Ok(())
    }
}

/// The compiled variant of the update.
#[derive(Clone, Copy)]
struct Variant {
    wd: bool,
    momentum: Momentum,
    nesterov: bool,
}

/// One chunk of the update (`buf` empty without momentum); picks the compiled variant once per chunk.
fn update(v: Variant, p: &mut [f32], g: &[f32], buf: &mut [f32], k: &Coeffs) {
    use Momentum::*;
    match (v.wd, v.momentum, v.nesterov) {
        (false, None, _) => update_with::<false, 0, false>(p, g, buf, k),
        (true, None, _) => update_with::<true, 0, false>(p, g, buf, k),
        (false, First, false) => update_with::<false, 1, false>(p, g, buf, k),
        (false, First, true) => update_with::<false, 1, true>(p, g, buf, k),
        (true, First, false) => update_with::<true, 1, false>(p, g, buf, k),
        (true, First, true) => update_with::<true, 1, true>(p, g, buf, k),
        (false, Later, false) => update_with::<false, 2, false>(p, g, buf, k),
        (false, Later, true) => update_with::<false, 2, true>(p, g, buf, k),
        (true, Later, false) => update_with::<true, 2, false>(p, g, buf, k),
        (true, Later, true) => update_with::<true, 2, true>(p, g, buf, k),
    }
}

fn update_with<const WD: bool, const MOMENTUM: u8, const NESTEROV: bool>(
    p: &mut [f32],
    g: &[f32],
    buf: &mut [f32],
    k: &Coeffs,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { update_avx2::<WD, MOMENTUM, NESTEROV>(p, g, buf, k) };
        return;
    }
    update_body::<WD, MOMENTUM, NESTEROV>(p, g, buf, k);
}

/// [`update_body`] compiled with AVX2 + FMA, so `mul_add` becomes `vfmadd` and the loop vectorizes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn update_avx2<const WD: bool, const MOMENTUM: u8, const NESTEROV: bool>(
    p: &mut [f32],
    g: &[f32],
    buf: &mut [f32],
    k: &Coeffs,
) {
    update_body::<WD, MOMENTUM, NESTEROV>(p, g, buf, k);
}

/// The update of one chunk, in torch's order of operations (see the module documentation).
/// `MOMENTUM`: 0 none, 1 first step (the buffer takes the gradient), 2 later steps.
#[inline(always)]
fn update_body<const WD: bool, const MOMENTUM: u8, const NESTEROV: bool>(
    p: &mut [f32],
    g: &[f32],
    buf: &mut [f32],
    k: &Coeffs,
) {
    let k = *k;
    let n = p.len();
    let g = &g[..n];
    if MOMENTUM == 0 {
        for i in 0..n {
            let d = if WD { p[i].mul_add(k.wd, g[i]) } else { g[i] };
            p[i] = d.mul_add(k.neg_lr, p[i]);
        }
        return;
    }
    let buf = &mut buf[..n];
    for i in 0..n {
        let mut d = if WD { p[i].mul_add(k.wd, g[i]) } else { g[i] };
        let b = if MOMENTUM == 1 {
            d
        } else {
            d.mul_add(k.one_minus_dampening, buf[i] * k.momentum)
        };
        buf[i] = b;
        d = if NESTEROV {
            b.mul_add(k.momentum, d)
        } else {
            b
        };
        p[i] = d.mul_add(k.neg_lr, p[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: SgdConfig, n: usize, steps: usize) -> (Vec<f32>, Sgd) {
        let mut opt = Sgd::new(config, &[n]).unwrap();
        let mut value: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        for s in 0..steps {
            let grad: Vec<f32> = (0..n)
                .map(|i| ((i + 3 * s) % 7) as f32 * 0.05 - 0.15)
                .collect();
            opt.step(
                &mut [ParamMut {
                    name: "w".into(),
                    value: &mut value,
                    grad: &grad,
                }],
                0.1,
            );
        }
        (value, opt)
    }

    #[test]
    fn plain_step_is_p_minus_lr_g() {
        let mut opt = Sgd::new(SgdConfig::default(), &[2]).unwrap();
        let mut value = [1.0f32, 2.0];
        opt.step(
            &mut [ParamMut {
                name: "w".into(),
                value: &mut value,
                grad: &[0.5, -1.0],
            }],
            0.1,
        );
        assert_eq!(value, [0.95, 2.1]);
        assert!(opt.state().tensors.is_empty());
    }

    #[test]
    fn momentum_accumulates() {
        let config = SgdConfig {
            momentum: 0.5,
            ..Default::default()
        };
        let mut opt = Sgd::new(config, &[1]).unwrap();
        let mut value = [0.0f32];
        for _ in 0..3 {
            opt.step(
                &mut [ParamMut {
                    name: "w".into(),
                    value: &mut value,
                    grad: &[1.0],
                }],
                1.0,
            );
        }
        // buffers 1, 1.5, 1.75
        assert_eq!(value, [-4.25]);
        assert_eq!(
            opt.state().tensors,
            vec![("0.momentum_buffer".to_string(), vec![1.75])]
        );
    }

    #[test]
    fn parallel_chunks_match_serial() {
        let config = SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            dampening: 0.0,
        };
        let n = 3 * CHUNK + 5;
        let (parallel, _) = run(config.clone(), n, 3);
        // the same values computed chunk-free, element by element, through the short-tensor path
        let mut opt = Sgd::new(config, &[1]).unwrap();
        let mut serial = Vec::with_capacity(n);
        for i in 0..n {
            opt.step = 0;
            opt.momentum_buffer[0][0] = 0.0;
            let mut v = [(i % 13) as f32 * 0.1 - 0.6];
            for s in 0..3 {
                let g = [((i + 3 * s) % 7) as f32 * 0.05 - 0.15];
                opt.step(
                    &mut [ParamMut {
                        name: "w".into(),
                        value: &mut v,
                        grad: &g,
                    }],
                    0.1,
                );
            }
            serial.push(v[0]);
        }
        assert!(parallel == serial);
    }

    #[test]
    fn invalid_configs() {
        assert!(Sgd::new(
            SgdConfig {
                momentum: -0.1,
                ..Default::default()
            },
            &[1]
        )
        .is_err());
        assert!(Sgd::new(
            SgdConfig {
                weight_decay: -0.1,
                ..Default::default()
            },
            &[1]
        )
        .is_err());
        assert!(Sgd::new(
            SgdConfig {
                nesterov: true,
                ..Default::default()
            },
            &[1]
        )
        .is_err());
        let damped = SgdConfig {
            momentum: 0.9,
            dampening: 0.1,
            nesterov: true,
            ..Default::default()
        };
        assert!(Sgd::new(damped, &[1]).is_err());
    }

    #[test]
    fn plain_sgd_rejects_momentum_state() {
        let (_, with_momentum) = run(
            SgdConfig {
                momentum: 0.9,
                ..Default::default()
            },
            4,
            2,
        );
        let mut plain = Sgd::new(SgdConfig::default(), &[4]).unwrap();
        let err = plain
            .load_state(with_momentum.state())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no momentum"), "{err}");
    }
}
