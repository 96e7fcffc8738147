//! Adam and AdamW, exactly as `torch.optim.Adam` / `torch.optim.AdamW` (single-tensor code, `amsgrad=False`).
//!
//! torch's step for one parameter, float32, with the scalars computed in f64 (Python floats) and rounded to f32
//! where they meet a tensor (`t` is the step count after incrementing):
//!
//! ```text
//! AdamW: p = p * f32(1 - lr*wd)                      param.mul_(1 - lr * weight_decay)
//! Adam:  g = fma(p, f32(wd), g)                      grad.add(param, alpha=weight_decay)
//! m = fma(f32(1 - b1), g - m, m)                     exp_avg.lerp_(grad, 1 - beta1)
//! v = fma(f32(1 - b2) * g, g, v * f32(b2))           exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
//! d = sqrt(v) / f32(sqrt_bc2) + f32(eps)             (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
//! p = p + (f32(-lr / bc1) * m) / d                   param.addcdiv_(exp_avg, denom, value=-step_size)
//! bc1 = 1 - b1**t, bc2 = 1 - b2**t, sqrt_bc2 = bc2**0.5   (f64, libm pow as Python's `**`)
//! ```
//!
//! The fused multiply-adds are what torch's AVX2 CPU kernels compute (`lerp` and `add` vectorize to `fmadd`, and
//! GCC contracts `self + value * t1 * t2` in `addcmul` to one); `sqrt` is IEEE here, MKL's in torch (see the
//! module documentation of [`crate::optim`]).

use super::{
    check_count, check_mask, check_param, check_params, decimal_f64, each_of, take_state,
    Optimizer, OptimizerState, ParamVisitor, CHUNK,
};
use crate::tensor::ParamMut;
use crate::Result;
use rayon::prelude::*;

/// Hyper-parameters of [`Adam`], as f64 like torch's (they are Python floats there).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamConfig {
    /// Decay of the first moment (torch default 0.9).
    pub beta1: f64,
    /// Decay of the second moment (torch default 0.999).
    pub beta2: f64,
    /// Added to the bias-corrected root of the second moment (torch default 1e-8).
    pub eps: f64,
    /// Weight decay: L2 added to the gradient for Adam (default 0), decoupled for AdamW (default 0.01).
    pub weight_decay: f64,
    /// `false`: `torch.optim.Adam`; `true`: `torch.optim.AdamW` (`p *= 1 - lr*wd` before the update).
    pub decoupled_weight_decay: bool,
}

impl AdamConfig {
    /// `torch.optim.Adam`'s defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.
    pub fn adam() -> Self {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
        }
    }

    /// `torch.optim.AdamW`'s defaults: betas (0.9, 0.999), eps 1e-8, decoupled weight decay 0.01.
    pub fn adamw() -> Self {
        AdamConfig {
            weight_decay: 0.01,
            decoupled_weight_decay: true,
            ..AdamConfig::adam()
        }
    }

    /// The state kind: `"adamw"` when the weight decay is decoupled, else `"adam"`.
    pub fn kind(&self) -> &'static str {
        if self.decoupled_weight_decay {
            "adamw"
        } else {
            "adam"
        }
    }

    /// Rejects what torch's constructor rejects: eps or weight decay negative, betas outside [0, 1).
    pub fn validate(&self) -> Result<()> {
        let kind = self.kind();
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                crate::bail!("{kind}: invalid {name} {b}: must be in [0, 1)");
            }
        }
        if self.eps.is_nan() || self.eps < 0.0 {
            crate::bail!("{kind}: invalid eps {}: must be >= 0", self.eps);
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            crate::bail!(
                "{kind}: invalid weight decay {}: must be >= 0",
                self.weight_decay
            );
        }
        Ok(())
    }
}

impl Default for AdamConfig {
    /// Same as [`AdamConfig::adam`].
    fn default() -> Self {
        AdamConfig::adam()
    }
}

/// Adam / AdamW over a fixed list of parameters; state `{i}.exp_avg`, `{i}.exp_avg_sq`.
#[derive(Clone, Debug)]
pub struct Adam {
    config: AdamConfig,
    lens: Vec<usize>,
    step: u64,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    /// Per parameter: exempt from weight decay (torch: a parameter group with `weight_decay=0`).
    no_decay: Vec<bool>,
}

/// The per-step scalars, already rounded to f32 the way torch rounds them.
#[derive(Clone, Copy)]
struct Coeffs {
    decay: f32,
    wd: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
    neg_step_size: f32,
}

const FIELDS: [&str; 2] = ["exp_avg", "exp_avg_sq"];

impl Adam {
    /// An optimizer for parameters of the given lengths (in the order [`Optimizer::step`] will receive them),
    /// with zeroed moments. Fails on an invalid `config` (see [`AdamConfig::validate`]).
    pub fn new(config: AdamConfig, param_lens: &[usize]) -> Result<Self> {
        config.validate()?;
        Ok(Adam {
            config,
            lens: param_lens.to_vec(),
            step: 0,
            exp_avg: param_lens.iter().map(|&n| vec![0.0; n]).collect(),
            exp_avg_sq: param_lens.iter().map(|&n| vec![0.0; n]).collect(),
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
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    fn coeffs(&self, lr: f32, step: u64) -> Coeffs {
        let c = &self.config;
        let lr = decimal_f64(lr);
        let t = step as f64;
        let bias_correction1 = 1.0 - c.beta1.powf(t);
        let bias_correction2 = 1.0 - c.beta2.powf(t);
        // Python's `x ** 0.5` is libm pow, which is not always sqrt; black_box keeps LLVM from rewriting it
        let bias_correction2_sqrt = bias_correction2.powf(std::hint::black_box(0.5));
        Coeffs {
            decay: (1.0 - lr * c.weight_decay) as f32,
            wd: c.weight_decay as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            bias_correction2_sqrt: bias_correction2_sqrt as f32,
            eps: c.eps as f32,
            neg_step_size: (-(lr / bias_correction1)) as f32,
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &mut [ParamMut<'_>], lr: f32) {
        check_params(self.config.kind(), &self.lens, params);
        self.step_each(lr, &mut each_of(params));
    }

    fn step_each(&mut self, lr: f32, params: &mut ParamVisitor<'_>) {
        self.step += 1;
        let k = self.coeffs(lr, self.step);
        let mode = match (
            self.config.weight_decay != 0.0,
            self.config.decoupled_weight_decay,
        ) {
            (false, _) => Mode::Plain,
            (true, false) => Mode::L2,
            (true, true) => Mode::Decoupled,
        };
        let kind = self.config.kind();
        let mut index = 0;
        params(&mut |value, grad| {
            check_param(kind, &self.lens, index, value, grad);
            let (m, v) = (&mut self.exp_avg[index], &mut self.exp_avg_sq[index]);
            let mode = match self.no_decay.get(index) {
                Some(true) => Mode::Plain,
                _ => mode,
            };
            if value.len() < 2 * CHUNK {
                update(mode, value, grad, m, v, &k);
            } else {
                value
                    .par_chunks_mut(CHUNK)
                    .zip(grad.par_chunks(CHUNK))
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK))
                    .for_each(|(((value, grad), m), v)| update(mode, value, grad, m, v, &k));
            }
            index += 1;
        });
        check_count(kind, &self.lens, index);
    }

    fn steps_taken(&self) -> u64 {
        self.step
    }

    fn state(&self) -> OptimizerState {
        let mut tensors = Vec::with_capacity(2 * self.lens.len());
        for (i, (m, v)) in self.exp_avg.iter().zip(&self.exp_avg_sq).enumerate() {
            tensors.push((format!("{i}.exp_avg"), m.clone()));
            tensors.push((format!("{i}.exp_avg_sq"), v.clone()));
        }
        OptimizerState {
            kind: self.config.kind().to_string(),
            step: self.step,
            tensors,
        }
    }

    fn load_state(&mut self, state: OptimizerState) -> Result<()> {
        let step = state.step;
        let mut fields = take_state(self.config.kind(), &self.lens, &FIELDS, state)?.into_iter();
        self.exp_avg = fields.next().unwrap_or_default();
        self.exp_avg_sq = fields.next().unwrap_or_default();
        self.step = step;
        Ok(())
    }
}

/// Which weight decay the update applies.
#[derive(Clone, Copy)]
enum Mode {
    Plain,
    L2,
    Decoupled,
}

/// One chunk of the update; picks the compiled variant once per chunk.
fn update(mode: Mode, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &Coeffs) {
    match mode {
        Mode::Plain => update_with::<false, false>(p, g, m, v, k),
        Mode::L2 => update_with::<true, false>(p, g, m, v, k),
        Mode::Decoupled => update_with::<false, true>(p, g, m, v, k),
    }
}

fn update_with<const L2: bool, const DECOUPLED: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    k: &Coeffs,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { update_avx2::<L2, DECOUPLED>(p, g, m, v, k) };
        return;
    }
    // elsewhere `mul_add` is the hardware FMA (aarch64) or libm's exact `fmaf`: same results, slower
    update_body::<L2, DECOUPLED>(p, g, m, v, k);
}

/// [`update_body`] compiled with AVX2 + FMA, so `mul_add` becomes `vfmadd` and the loop vectorizes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn update_avx2<const L2: bool, const DECOUPLED: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    k: &Coeffs,
) {
    update_body::<L2, DECOUPLED>(p, g, m, v, k);
}

/// The update of one element, in torch's order of operations (see the module documentation).
#[inline(always)]
fn update_body<const L2: bool, const DECOUPLED: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    k: &Coeffs,
) {
    let k = *k;
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let mut pi = p[i];
        let mut gi = g[i];
        if DECOUPLED {
            pi *= k.decay;
        }
        if L2 {
            gi = pi.mul_add(k.wd, gi);
        }
        let mi = (gi - m[i]).mul_add(k.one_minus_beta1, m[i]);
        let vi = (k.one_minus_beta2 * gi).mul_add(gi, v[i] * k.beta2);
        let denom = vi.sqrt() / k.bias_correction2_sqrt + k.eps;
        p[i] = pi + (k.neg_step_size * mi) / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_step(config: AdamConfig, p: f32, g: f32, lr: f32) -> (f32, OptimizerState) {
        let mut opt = Adam::new(config, &[1]).unwrap();
        let mut value = [p];
        opt.step(
            &mut [ParamMut {
                name: "w".into(),
                value: &mut value,
                grad: &[g],
            }],
            lr,
        );
        (value[0], opt.state())
    }

    #[test]
    fn first_step_moves_by_lr_against_the_gradient() {
        // after one step m̂ = g and v̂ = g², so the update is lr·g/(|g| + eps) ≈ lr·sign(g)
        let (p, state) = one_step(AdamConfig::adam(), 1.0, 0.5, 0.01);
        assert!((p - 0.99).abs() < 1e-6, "{p}");
        assert_eq!(state.step, 1);
        assert_eq!(state.tensors[0].0, "0.exp_avg");
        assert_eq!(state.tensors[0].1, vec![0.05]);
        assert_eq!(state.tensors[1].0, "0.exp_avg_sq");
        assert!((state.tensors[1].1[0] - 0.00025).abs() < 1e-10);
        let (p, _) = one_step(AdamConfig::adam(), 1.0, -3.0, 0.01);
        assert!((p - 1.01).abs() < 1e-6, "{p}");
    }

    #[test]
    fn decoupled_decay_shrinks_without_gradient() {
        // zero gradient: Adam's update is 0, AdamW still multiplies by 1 - lr·wd
        let (p, _) = one_step(AdamConfig::adamw(), 2.0, 0.0, 0.1);
        assert_eq!(p, 2.0 * (1.0 - 0.1 * 0.01) as f32);
        let (p, _) = one_step(AdamConfig::adam(), 2.0, 0.0, 0.1);
        assert_eq!(p, 2.0);
        // L2 decay with zero gradient behaves like a gradient of wd·p
        let l2 = AdamConfig {
            weight_decay: 0.5,
            ..AdamConfig::adam()
        };
        let (p, _) = one_step(l2, 2.0, 0.0, 0.1);
        assert!((p - 1.9).abs() < 1e-6, "{p}");
    }

    #[test]
    fn parallel_chunks_match_serial() {
        // a tensor long enough to be split across rayon tasks gives exactly what the serial loop gives
        let n = 5 * CHUNK + 123;
        let init: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let grad: Vec<f32> = (0..n)
            .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
            .collect();
        let config = AdamConfig {
            weight_decay: 0.01,
            ..AdamConfig::adam()
        };
        let mut opt = Adam::new(config.clone(), &[n]).unwrap();
        let mut value = init.clone();
        for _ in 0..3 {
            opt.step(
                &mut [ParamMut {
                    name: "w".into(),
                    value: &mut value,
                    grad: &grad,
                }],
                1e-3,
            );
        }
        let mut serial = init;
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let reference = Adam::new(config, &[n]).unwrap();
        for t in 1..=3 {
            update(
                Mode::L2,
                &mut serial,
                &grad,
                &mut m,
                &mut v,
                &reference.coeffs(1e-3, t),
            );
        }
        assert!(value == serial);
    }

    #[test]
    #[should_panic(expected = "parameter 0 (`w`) has 3 values")]
    fn wrong_length_panics_with_name() {
        let mut opt = Adam::new(AdamConfig::adam(), &[2]).unwrap();
        let mut value = [0.0; 3];
        opt.step(
            &mut [ParamMut {
                name: "w".into(),
                value: &mut value,
                grad: &[0.0; 3],
            }],
            1e-3,
        );
    }

    #[test]
    fn invalid_configs() {
        assert!(Adam::new(
            AdamConfig {
                beta1: 1.0,
                ..AdamConfig::adam()
            },
            &[1]
        )
        .is_err());
        assert!(Adam::new(
            AdamConfig {
                beta2: -0.1,
                ..AdamConfig::adam()
            },
            &[1]
        )
        .is_err());
        assert!(Adam::new(
            AdamConfig {
                eps: -1.0,
                ..AdamConfig::adam()
            },
            &[1]
        )
        .is_err());
        assert!(Adam::new(
            AdamConfig {
                weight_decay: f64::NAN,
                ..AdamConfig::adam()
            },
            &[1]
        )
        .is_err());
        assert!(Adam::new(AdamConfig::adamw(), &[1]).is_ok());
    }
}
