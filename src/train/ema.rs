//! An exponential moving average of the weights, evaluated and saved in place of the raw weights: torch's
//! `AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)` updated after every
//! optimizer step. With `use_buffers=True` the batch norms' running statistics are averaged like the parameters
//! (so the averaged model evaluates with statistics that match its averaged weights); the batch counters are not.

use crate::nn::ResNet;
use crate::{bail, Result};
use rayon::prelude::*;

/// Values per parallel task of an update.
const CHUNK: usize = 64 * 1024;

/// The averaged weights of a network: every floating-point tensor of its state dict, concatenated in
/// [`ResNet::visit_float_state_mut`] order.
pub struct Ema {
    /// Weight of the old average per update, e.g. 0.999.
    pub decay: f64,
    /// Updates so far; the first copies the weights (`AveragedModel`'s `n_averaged == 0`).
    pub updates: u64,
    /// The averaged values (empty before the first update).
    pub values: Vec<f32>,
}

impl Ema {
    /// An empty average with `decay` in `[0, 1)`.
    pub fn new(decay: f64) -> Result<Ema> {
        check_decay(decay)?;
        Ok(Ema {
            decay,
            updates: 0,
            values: Vec::new(),
        })
    }

    /// A stored average: `values` must hold one value per floating-point state value of `net`.
    pub fn restore(decay: f64, updates: u64, values: Vec<f32>, net: &mut ResNet) -> Result<Ema> {
        check_decay(decay)?;
        let n = float_state_len(net);
        if values.len() != n || (updates == 0) != values.is_empty() {
            bail!(
                "the weight average holds {} values after {updates} updates; the network has {n}",
                values.len()
            );
        }
        Ok(Ema {
            decay,
            updates,
            values,
        })
    }

    /// Folds the network's current weights into the average: the first update copies them, later ones compute
    /// `avg.lerp_(w, 1 − decay)` as torch does in f32. Allocates only on the first update.
    pub fn update(&mut self, net: &mut ResNet) {
        if self.updates == 0 {
            self.values.clear();
            net.visit_float_state_mut(&mut |t| self.values.extend_from_slice(t));
        } else {
            let mut at = 0;
            net.visit_float_state_mut(&mut |t| {
                average_into(&mut self.values[at..at + t.len()], t, self.decay);
                at += t.len();
            });
        }
        self.updates += 1;
    }

    /// Runs `f` on `net` holding the average in place of its own weights (on `net` as it is without an average
    /// or before its first update), then puts the raw weights back: what is evaluated and saved.
    pub fn applied<T>(
        ema: Option<&mut Ema>,
        net: &mut ResNet,
        f: impl FnOnce(&mut ResNet) -> T,
    ) -> T {
        match ema {
            Some(ema) => {
                ema.swap(net);
                let out = f(net);
                ema.swap(net);
                out
            }
            None => f(net),
        }
    }

    /// Exchanges the averaged values with the network's own: call once to evaluate or save the average, and
    /// again to continue training the raw weights. Nothing happens before the first update.
    pub fn swap(&mut self, net: &mut ResNet) {
        if self.updates == 0 {
            return;
        }
        let mut at = 0;
        net.visit_float_state_mut(&mut |t| {
            t.swap_with_slice(&mut self.values[at..at + t.len()]);
            at += t.len();
        });
    }
}

/// One update of an exponential moving average, `avg[i].lerp_(values[i], 1 − decay)` for `avg, values [n]`, as
/// torch's `get_ema_multi_avg_fn(decay)` computes it in f32 (in parallel for long tensors).
pub fn average_into(avg: &mut [f32], values: &[f32], decay: f64) {
    let weight = (1.0 - decay) as f32;
    avg.par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(a, w)| lerp_chunk(a, w, weight));
}

fn lerp_chunk(avg: &mut [f32], values: &[f32], weight: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { lerp_chunk_fma(avg, values, weight) };
        return;
    }
    // elsewhere `mul_add` is the hardware FMA (aarch64) or libm's exact `fmaf`: same results, slower
    avg.iter_mut()
        .zip(values)
        .for_each(|(a, &w)| *a = lerp(*a, w, weight));
}

/// [`lerp_chunk`] compiled with FMA, so that `mul_add` is one instruction and the loop vectorizes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn lerp_chunk_fma(avg: &mut [f32], values: &[f32], weight: f32) {
    avg.iter_mut()
        .zip(values)
        .for_each(|(a, &w)| *a = lerp(*a, w, weight));
}

/// Number of floating-point values in `net`'s state dict (parameters and running statistics).
pub fn float_state_len(net: &mut ResNet) -> usize {
    let mut n = 0;
    net.visit_float_state_mut(&mut |t| n += t.len());
    n
}

fn check_decay(decay: f64) -> Result<()> {
    if !(0.0..1.0).contains(&decay) {
        bail!("--ema: the decay must be at least 0 and below 1 (e.g. 0.999), got {decay}");
    }
    Ok(())
}

/// torch's CPU `lerp(start, end, weight)` for a scalar weight, with the fused multiply-adds of its vectorized
/// kernel: `fma(weight, end − start, start)` when `|weight| < 0.5`, else `fma(−(end − start), 1 − weight, end)`.
#[inline(always)]
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    let diff = end - start;
    if weight.abs() < 0.5 {
        weight.mul_add(diff, start)
    } else {
        (-diff).mul_add(1.0 - weight, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{ArchName, ResNetConfig};

    fn tiny() -> ResNet {
        let mut c = ResNetConfig::named(ArchName::Chapter, 1, 3);
        c.widths = vec![4, 8];
        c.layers = vec![1, 1];
        ResNet::new(c, 7).unwrap()
    }

    fn first_value(net: &mut ResNet) -> f32 {
        let mut v = None;
        net.visit_float_state_mut(&mut |t| {
            v.get_or_insert(t[0]);
        });
        v.unwrap()
    }

    #[test]
    fn first_update_copies_then_lerps_and_swap_round_trips() {
        let mut net = tiny();
        let mut ema = Ema::new(0.75).unwrap();
        let w0 = first_value(&mut net);
        ema.update(&mut net);
        assert_eq!(ema.values.len(), float_state_len(&mut net));
        assert_eq!(ema.values[0], w0);
        net.visit_float_state_mut(&mut |t| t.iter_mut().for_each(|v| *v += 1.0));
        ema.update(&mut net);
        assert_eq!(ema.values[0], lerp(w0, w0 + 1.0, 0.25));
        assert!((ema.values[0] - (w0 + 0.25)).abs() < 1e-6);
        let before = net.state_dict();
        ema.swap(&mut net);
        assert_eq!(first_value(&mut net), lerp(w0, w0 + 1.0, 0.25));
        ema.swap(&mut net);
        assert_eq!(net.state_dict(), before);
    }

    #[test]
    fn running_statistics_are_averaged_too() {
        let mut net = tiny();
        let mut ema = Ema::new(0.5).unwrap();
        ema.update(&mut net);
        let sd = net.state_dict();
        let var_key = sd
            .iter()
            .position(|(k, _)| k.ends_with("running_var"))
            .unwrap();
        net.visit_float_state_mut(&mut |t| t.iter_mut().for_each(|v| *v = 3.0));
        ema.update(&mut net);
        ema.swap(&mut net);
        let averaged = net.state_dict();
        match &averaged[var_key].1 {
            crate::nn::StateTensor::F32 { data, .. } => assert_eq!(data[0], 2.0, "(1 + 3) / 2"),
            t => panic!("{t:?}"),
        }
    }

    #[test]
    fn bad_decays_and_stored_averages_are_refused() {
        for d in [-0.1, 1.0, f64::NAN] {
            assert!(Ema::new(d).is_err(), "{d}");
        }
        let mut net = tiny();
        let n = float_state_len(&mut net);
        assert!(Ema::restore(0.9, 3, vec![0.0; n], &mut net).is_ok());
        assert!(Ema::restore(0.9, 3, vec![0.0; n - 1], &mut net).is_err());
        assert!(Ema::restore(0.9, 0, vec![0.0; n], &mut net).is_err());
    }
}
