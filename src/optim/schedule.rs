//! Learning-rate schedules, as closed-form functions of the position in training that match
//! `torch.optim.lr_scheduler`:
//!
//! * [`Schedule::Step`] — `StepLR(step_size, gamma)`, stepped once per epoch. We compute torch's closed form
//!   `base_lr · gamma^(epoch // step_size)` (`_get_closed_form_lr`); the recursive form torch steps with
//!   multiplies by `gamma` at each boundary and agrees to well within 1e-6 (`tools/make_optim_golden.py` checks).
//! * [`Schedule::Cosine`] — `CosineAnnealingLR(T_max = total_epochs, eta_min)`, stepped once per epoch, closed
//!   form `eta_min + (base_lr - eta_min)·(1 + cos(π·epoch / T_max))/2`; torch's recursive form agrees to within
//!   1.4e-16 relative over the tested range.
//! * [`Schedule::OneCycle`] — `OneCycleLR(max_lr = base_lr, total_steps = total_epochs·steps_per_epoch,
//!   pct_start, anneal_strategy='cos', div_factor, final_div_factor, three_phase=False)`, stepped every batch.
//!   torch's OneCycleLR also cycles the optimizer's momentum / beta1 by default (`cycle_momentum=True`); that is
//!   not modelled here — the learning rates are identical either way.
//!
//! All arithmetic is f64 in torch's order (Python floats), rounded to f32 at the end.

use super::decimal_f64;
use crate::{Error, Result};
use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

/// A learning-rate schedule; [`Schedule::lr`] gives the rate for any batch of a run.
///
/// On the command line (see [`FromStr`]): `constant`, `step[:STEP_SIZE_EPOCHS[:GAMMA]]`, `cosine[:ETA_MIN]`,
/// `onecycle[:PCT_START[:DIV_FACTOR[:FINAL_DIV_FACTOR]]]`; [`fmt::Display`] writes the same spelling back.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// The base learning rate throughout.
    Constant,
    /// `StepLR`: multiply by `gamma` every `step_size_epochs` epochs (`0` is treated as 1, where torch fails).
    Step {
        /// Epochs between decays (CLI default 5).
        step_size_epochs: usize,
        /// Factor per decay (torch default 0.1).
        gamma: f64,
    },
    /// `CosineAnnealingLR` over the whole run (`T_max` = total epochs), per epoch.
    Cosine {
        /// The rate the cosine ends at (torch default 0).
        eta_min: f64,
    },
    /// `OneCycleLR` with cosine annealing over all batches of the run, peaking at the base learning rate.
    OneCycle {
        /// Fraction of the steps spent warming up (torch default 0.3).
        pct_start: f64,
        /// Initial rate = base / div_factor (torch default 25).
        div_factor: f64,
        /// Final rate = initial / final_div_factor (torch default 1e4).
        final_div_factor: f64,
    },
}

impl Schedule {
    /// The command-line names, in order.
    pub const NAMES: [&'static str; 4] = ["constant", "step", "cosine", "onecycle"];

    /// `StepLR` with the command line's defaults: decay by 0.1 every 5 epochs.
    pub const fn step_default() -> Self {
        Schedule::Step {
            step_size_epochs: 5,
            gamma: 0.1,
        }
    }

    /// `CosineAnnealingLR` with torch's default `eta_min` 0.
    pub const fn cosine_default() -> Self {
        Schedule::Cosine { eta_min: 0.0 }
    }

    /// `OneCycleLR` with torch's defaults: `pct_start` 0.3, `div_factor` 25, `final_div_factor` 1e4.
    pub const fn onecycle_default() -> Self {
        Schedule::OneCycle {
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
        }
    }

    /// Whether the rate changes within an epoch (only [`Schedule::OneCycle`], stepped per batch).
    pub const fn per_batch(&self) -> bool {
        matches!(self, Schedule::OneCycle { .. })
    }

    /// The learning rate for batch `step_in_epoch` (0-based) of epoch `epoch` (0-based) of a run of
    /// `total_epochs` epochs of `steps_per_epoch` batches, starting from `base_lr` — the value torch's
    /// scheduler has put in `param_groups[0]["lr"]` when that batch's `optimizer.step()` runs.
    ///
    /// `base_lr` is widened to the f64 of its shortest decimal (`1e-3f32` → `0.001`), as the user typed it.
    /// Degenerate runs (no epochs or no steps) give `base_lr` for the epoch schedules and the formula's value at
    /// a one-step run for OneCycle; a OneCycle phase of zero length (where torch divides by zero) gives its end
    /// value. Past the end of the run the formulas simply continue (torch's OneCycleLR raises there).
    pub fn lr(
        &self,
        base_lr: f32,
        epoch: usize,
        step_in_epoch: usize,
        steps_per_epoch: usize,
        total_epochs: usize,
    ) -> f32 {
        let base = decimal_f64(base_lr);
        let lr = match *self {
            Schedule::Constant => base,
            Schedule::Step {
                step_size_epochs,
                gamma,
            } => {
                // Python: base_lr * gamma ** (last_epoch // step_size), `**` of a float and an int is libm pow
                let decays = epoch / step_size_epochs.max(1);
                base * gamma.powf(decays as f64)
            }
            Schedule::Cosine { eta_min } => {
                if total_epochs == 0 {
                    base
                } else {
                    let t_max = total_epochs as f64;
                    eta_min + (base - eta_min) * (1.0 + (PI * epoch as f64 / t_max).cos()) / 2.0
                }
            }
            Schedule::OneCycle {
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                let total_steps = (total_epochs * steps_per_epoch).max(1);
                let step = (epoch * steps_per_epoch + step_in_epoch) as f64;
                let initial_lr = base / div_factor;
                let min_lr = initial_lr / final_div_factor;
                let warmup_end = pct_start * total_steps as f64 - 1.0;
                let end = (total_steps - 1) as f64;
                if step <= warmup_end {
                    anneal_cos(initial_lr, base, phase_pct(step, 0.0, warmup_end))
                } else {
                    anneal_cos(base, min_lr, phase_pct(step, warmup_end, end))
                }
            }
        };
        lr as f32
    }
}

/// The factor of a linear warm-up over the first `warmup_steps` steps of a run, which multiplies any schedule's
/// rate (as torch's `LambdaLR(lambda s: min(1, (s + 1) / warmup_steps))` chained with it would): `(step + 1) /
/// warmup_steps` for `step` (0-based, counted over the whole run) before `warmup_steps`, then 1.
pub fn warmup_factor(step: usize, warmup_steps: usize) -> f32 {
    if step < warmup_steps {
        ((step + 1) as f64 / warmup_steps as f64) as f32
    } else {
        1.0
    }
}

/// OneCycleLR's `(step_num - start_step) / (end_step - start_step)`; 1 for a phase of zero length.
fn phase_pct(step: f64, start: f64, end: f64) -> f64 {
    if end == start {
        1.0
    } else {
        (step - start) / (end - start)
    }
}

/// OneCycleLR's `_annealing_cos`: from `start` at `pct` 0 to `end` at `pct` 1 along half a cosine.
fn anneal_cos(start: f64, end: f64, pct: f64) -> f64 {
    let cos_out = (PI * pct).cos() + 1.0;
    end + (start - end) / 2.0 * cos_out
}

impl Default for Schedule {
    /// [`Schedule::Constant`], the chapter's choice.
    fn default() -> Self {
        Schedule::Constant
    }
}

impl fmt::Display for Schedule {
    /// The command-line spelling, parameters included: `constant`, `step:5:0.1`, `cosine:0`,
    /// `onecycle:0.3:25:10000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Constant => f.write_str("constant"),
            Schedule::Step {
                step_size_epochs,
                gamma,
            } => write!(f, "step:{step_size_epochs}:{gamma}"),
            Schedule::Cosine { eta_min } => write!(f, "cosine:{eta_min}"),
            Schedule::OneCycle {
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                write!(f, "onecycle:{pct_start}:{div_factor}:{final_div_factor}")
            }
        }
    }
}

const USAGE: &str = "expected one of constant, step, cosine, onecycle, optionally with parameters: \
     step[:STEP_SIZE_EPOCHS[:GAMMA]], cosine[:ETA_MIN], onecycle[:PCT_START[:DIV_FACTOR[:FINAL_DIV_FACTOR]]]";

impl FromStr for Schedule {
    type Err = Error;

    /// Parses a command-line spelling: a name (`constant`, `step`, `cosine`, `onecycle`, ASCII case-insensitive)
    /// optionally followed by `:`-separated parameters; omitted ones take the defaults
    /// ([`Schedule::step_default`], [`Schedule::cosine_default`], [`Schedule::onecycle_default`]).
    fn from_str(s: &str) -> Result<Self> {
        let spec = s.trim();
        let mut parts = spec.split(':');
        let name = parts.next().unwrap_or("").to_ascii_lowercase();
        let args: Vec<&str> = parts.collect();
        let max_args = match name.as_str() {
            "constant" => 0,
            "step" => 2,
            "cosine" => 1,
            "onecycle" => 3,
            _ => {
                return Err(Error::new(format!(
                    "unknown learning-rate schedule `{s}`: {USAGE}"
                )))
            }
        };
        if args.len() > max_args {
            crate::bail!("learning-rate schedule `{s}`: `{name}` takes at most {max_args} parameters; {USAGE}");
        }
        let number = |i: usize, what: &str, default: f64| -> Result<f64> {
            match args.get(i) {
                None => Ok(default),
                Some(a) => match a.trim().parse::<f64>() {
                    Ok(x) if x.is_finite() => Ok(x),
                    _ => Err(Error::new(format!(
                        "learning-rate schedule `{s}`: {what} `{a}` is not a finite number"
                    ))),
                },
            }
        };
        let schedule = match name.as_str() {
            "constant" => Schedule::Constant,
            "step" => {
                let step_size_epochs = match args.first() {
                    None => 5,
                    Some(a) => match a.trim().parse::<usize>() {
                        Ok(n) if n > 0 => n,
                        _ => crate::bail!(
                            "learning-rate schedule `{s}`: step size `{a}` is not a whole number of epochs >= 1"
                        ),
                    },
                };
                let gamma = number(1, "gamma", 0.1)?;
                Schedule::Step {
                    step_size_epochs,
                    gamma,
                }
            }
            "cosine" => Schedule::Cosine {
                eta_min: number(0, "eta_min", 0.0)?,
            },
            _ => {
                let pct_start = number(0, "pct_start", 0.3)?;
                if !(0.0..=1.0).contains(&pct_start) {
                    crate::bail!("learning-rate schedule `{s}`: pct_start {pct_start} is not between 0 and 1");
                }
                let div_factor = number(1, "div_factor", 25.0)?;
                let final_div_factor = number(2, "final_div_factor", 1e4)?;
                if div_factor == 0.0 || final_div_factor == 0.0 {
                    crate::bail!("learning-rate schedule `{s}`: div factors must be non-zero");
                }
                Schedule::OneCycle {
                    pct_start,
                    div_factor,
                    final_div_factor,
                }
            }
        };
        Ok(schedule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_and_parameters() {
        assert_eq!("constant".parse::<Schedule>().unwrap(), Schedule::Constant);
        assert_eq!(
            "step".parse::<Schedule>().unwrap(),
            Schedule::step_default()
        );
        assert_eq!(
            "Step:3".parse::<Schedule>().unwrap(),
            Schedule::Step {
                step_size_epochs: 3,
                gamma: 0.1
            }
        );
        assert_eq!(
            "step:3:0.5".parse::<Schedule>().unwrap(),
            Schedule::Step {
                step_size_epochs: 3,
                gamma: 0.5
            }
        );
        assert_eq!(
            "cosine".parse::<Schedule>().unwrap(),
            Schedule::cosine_default()
        );
        assert_eq!(
            "cosine:1e-5".parse::<Schedule>().unwrap(),
            Schedule::Cosine { eta_min: 1e-5 }
        );
        assert_eq!(
            "onecycle".parse::<Schedule>().unwrap(),
            Schedule::onecycle_default()
        );
        assert_eq!(
            "onecycle:0.25:10".parse::<Schedule>().unwrap(),
            Schedule::OneCycle {
                pct_start: 0.25,
                div_factor: 10.0,
                final_div_factor: 1e4
            }
        );
        for s in [
            "constant",
            "step:2:0.1",
            "cosine:0.001",
            "onecycle:0.25:10:100",
            "step",
            "onecycle",
        ] {
            let parsed: Schedule = s.parse().unwrap();
            assert_eq!(
                parsed.to_string().parse::<Schedule>().unwrap(),
                parsed,
                "{s}"
            );
        }
    }

    #[test]
    fn parse_errors_are_clear() {
        let err = "linear".parse::<Schedule>().unwrap_err().to_string();
        assert!(
            err.contains("`linear`") && err.contains("constant, step, cosine, onecycle"),
            "{err}"
        );
        for bad in [
            "step:0",
            "step:x",
            "step:2:y",
            "cosine:nan",
            "onecycle:1.5",
            "onecycle:0.3:0",
            "constant:1",
            "step:1:2:3",
        ] {
            let err = bad.parse::<Schedule>().unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn shapes_of_the_curves() {
        let s = Schedule::Step {
            step_size_epochs: 2,
            gamma: 0.1,
        };
        assert_eq!(s.lr(1.0, 1, 0, 10, 6), 1.0);
        assert_eq!(s.lr(1.0, 2, 0, 10, 6), 0.1);
        assert_eq!(s.lr(1.0, 5, 9, 10, 6), 0.1f64.powf(2.0) as f32);
        let c = Schedule::cosine_default();
        assert_eq!(c.lr(0.1, 0, 0, 10, 4), 0.1);
        assert!((c.lr(0.1, 2, 0, 10, 4) - 0.05).abs() < 1e-8);
        assert_eq!(
            c.lr(0.1, 2, 0, 10, 4),
            c.lr(0.1, 2, 7, 10, 4),
            "per epoch only"
        );
        let o = Schedule::onecycle_default();
        assert!(
            (o.lr(0.1, 0, 0, 10, 10) - 0.004).abs() < 1e-9,
            "starts at max/25"
        );
        let peak = (0..100)
            .map(|i| o.lr(0.1, i / 10, i % 10, 10, 10))
            .fold(0.0f32, f32::max);
        assert!((peak - 0.1).abs() < 1e-3, "{peak}");
        assert!(
            (o.lr(0.1, 9, 9, 10, 10) - 4e-7).abs() < 1e-9,
            "ends at max/25/1e4"
        );
        assert!(o.per_batch() && !c.per_batch());
        assert_eq!(Schedule::default().lr(0.3, 7, 3, 10, 10), 0.3);
    }

    #[test]
    fn warmup_rises_linearly_then_stays_at_one() {
        assert_eq!(warmup_factor(0, 4), 0.25);
        assert_eq!(warmup_factor(1, 4), 0.5);
        assert_eq!(warmup_factor(3, 4), 1.0);
        assert_eq!(warmup_factor(4, 4), 1.0);
        assert_eq!(warmup_factor(0, 0), 1.0, "no warm-up");
    }

    #[test]
    fn degenerate_runs_are_finite() {
        for s in [
            "constant",
            "step",
            "cosine",
            "onecycle",
            "onecycle:1",
            "onecycle:0",
        ] {
            let s: Schedule = s.parse().unwrap();
            for (spe, epochs) in [(0, 0), (1, 1), (0, 3), (3, 0), (1, 3)] {
                for e in 0..epochs.max(1) {
                    let lr = s.lr(0.1, e, 0, spe, epochs);
                    assert!(lr.is_finite() && lr >= 0.0, "{s} {spe} {epochs} {e}: {lr}");
                }
            }
        }
    }
}
