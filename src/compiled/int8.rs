//! The compiled network quantized to int8 for inference: the same steps as [`CompiledNet`], each convolution
//! after the stem run by [`crate::kernels::int8`] on `u8` activations and `i8` weights.
//!
//! - Weights: the folded convolutions' (batch norm first, `fold_bn`), per output channel symmetric:
//!   `w_scale[c] = max |w[.., c]| / 127`, `q = round(w / w_scale[c])` in [-127, 127] (what a quantized file
//!   holds); on AVX2 ([`Path::wmax`] 63) halved into [-63, 63] when the network is built, `round(q / 2)`
//!   (ties to even) at `2 · w_scale`; the bias in units of the sum, `round(bias[c] / (w_scale[c] · x_scale))`.
//! - Activations: per tensor, `u8` with zero point 0 (every one a quantized convolution reads follows a ReLU),
//!   `scale = clip / qmax`, the clip calibrated ([`Calibration`]: the largest value seen, or a percentile of
//!   the values), `qmax` the kernel path's (255; 127 on AVX2, see [`Path::qmax`]), so one calibration serves
//!   every CPU.
//! - The stem ([`QuantNet::quantize_stem`], when a model file loads): its input, the normalized image, is
//!   signed, so it is quantized per channel with a zero point from the preprocessing's range, the scales folded
//!   into the stem's weights and the zero points' sums into its bias; a padded tap reads the zero point. Its
//!   output and max pool are `u8`. Without that call (the calibration's pass, the tests) it runs in f32.
//! - Kept in f32: the outputs of the shortcut convolutions (signed: added to their block's sum as `f32`), the
//!   last block's output (the features the average pool and classifier read), the classifier.
//!
//! Each convolution's store does the rest ([`Requant`]): `y = relu?((sum + bias) · w_scale·x_scale / y_scale
//! + shortcut / y_scale)`, rounded to the next layer's `u8`.

use super::{median_step_seconds, CompiledNet, ProfiledStep, Step};
use crate::kernels::conv::Epilogue;
use crate::kernels::int8::{self, Output, PackedWeights, Path, Requant, Residual};
use crate::kernels::pool::{max_pool_infer, max_pool_infer_u8};
use crate::tensor::nchw_to_nhwc_into;
use crate::{bail, Result, Shape4};

/// Bins of a value's calibration histogram.
const BINS: usize = 2048;

/// How a value's clip is chosen from its calibration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// The largest value seen.
    MinMax,
    /// The given percentile (e.g. 99.99) of the values seen.
    Percentile(f64),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::MinMax => write!(f, "min-max"),
            Method::Percentile(p) => write!(f, "percentile {p}"),
        }
    }
}

/// The percentile `--method percentile` takes.
pub const DEFAULT_PERCENTILE: f64 = 99.99;

impl std::str::FromStr for Method {
    type Err = crate::Error;

    /// `minmax` (or `min-max`), `percentile` ([`DEFAULT_PERCENTILE`]) or `percentile P` with `P` in (0, 100]: what
    /// `quantize --method` and a quantized file's record say.
    fn from_str(s: &str) -> Result<Method> {
        match s {
            "minmax" | "min-max" => return Ok(Method::MinMax),
            "percentile" => return Ok(Method::Percentile(DEFAULT_PERCENTILE)),
            _ => {}
        }
        match s.strip_prefix("percentile ").map(str::parse::<f64>) {
            Some(Ok(p)) if p > 0.0 && p <= 100.0 => Ok(Method::Percentile(p)),
            _ => bail!(
                "unknown calibration method `{}` (minmax, percentile)",
                crate::error::clip(s, 40)
            ),
        }
    }
}

/// What calibration saw of one value: its largest element and a histogram of its elements over `[0, top)`,
/// `top` doubled (pairs of bins merged) whenever a larger element comes, so that one pass over the images
/// serves every method.
#[derive(Clone, Debug)]
struct ValueStats {
    max: f32,
    top: f32,
    bins: Vec<u64>,
}

impl ValueStats {
    fn add(&mut self, values: &[f32]) {
        let max = values.iter().fold(0.0f32, |m, &v| m.max(v));
        self.max = self.max.max(max);
        if self.top == 0.0 {
            self.top = max;
        }
        while max > self.top {
            for i in 0..BINS / 2 {
                self.bins[i] = self.bins[2 * i] + self.bins[2 * i + 1];
            }
            self.bins[BINS / 2..].fill(0);
            self.top *= 2.0;
        }
        if self.top == 0.0 {
            self.bins[0] += values.len() as u64;
            return;
        }
        let per_bin = BINS as f32 / self.top;
        for &v in values {
            let b = ((v.max(0.0) * per_bin) as usize).min(BINS - 1);
            self.bins[b] += 1;
        }
    }

    /// The clip `method` chooses (the upper edge of the bin where the percentile falls), never above the largest
    /// value seen; positive (a value that was always zero gets 1, any scale being exact for it).
    fn clip(&self, method: Method) -> f32 {
        let clip = match method {
            Method::MinMax => self.max,
            Method::Percentile(p) => {
                let total: u64 = self.bins.iter().sum();
                let want = (total as f64 * p / 100.0).ceil() as u64;
                let mut seen = 0;
                let bin = self.bins.iter().position(|&c| {
                    seen += c;
                    seen >= want
                });
                let edge = (bin.unwrap_or(BINS - 1) + 1) as f32 * self.top / BINS as f32;
                edge.min(self.max)
            }
        };
        if clip > 0.0 && clip.is_finite() {
            clip
        } else {
            1.0
        }
    }
}

/// Calibration over images run through the f32 network: per value that a quantized convolution reads, what
/// its elements were ([`Calibration::observe`], then [`Calibration::clips`]).
pub struct Calibration {
    stats: Vec<Option<ValueStats>>,
    /// Images observed.
    pub images: usize,
}

impl Calibration {
    /// An empty calibration for `net`'s quantized values.
    pub fn new(net: &CompiledNet) -> Calibration {
        let stats = quantized_values(net)
            .into_iter()
            .map(|q| {
                q.then(|| ValueStats {
                    max: 0.0,
                    top: 0.0,
                    bins: vec![0; BINS],
                })
            })
            .collect();
        Calibration { stats, images: 0 }
    }

    /// Runs the NCHW batch `x` of shape `xs` through `net` (f32) and adds what each quantized value held.
    pub fn observe(&mut self, net: &mut CompiledNet, x: &[f32], xs: Shape4) -> Result<()> {
        let stats = &mut self.stats;
        net.run(
            x,
            xs,
            None,
            Some(&mut |value, data| {
                if let Some(s) = stats.get_mut(value).and_then(Option::as_mut) {
                    s.add(data);
                }
            }),
        )?;
        self.images += xs.n;
        Ok(())
    }

    /// Per value, its clip by `method` (`None` for the values kept in f32).
    pub fn clips(&self, method: Method) -> Vec<Option<f32>> {
        self.stats
            .iter()
            .map(|s| s.as_ref().map(|s| s.clip(method)))
            .collect()
    }
}

/// Per value of `net`: true when a quantized convolution reads it as its input (every convolution but the
/// stem, the first).
fn quantized_values(net: &CompiledNet) -> Vec<bool> {
    let mut q = vec![false; net.steps.len() + 1];
    for (conv, input, _) in net.steps.iter().filter_map(Step::conv_io) {
        q[input] |= conv > 0;
    }
    q
}

/// Per convolution of `net`: true when it runs int8 (every one but the stem, which reads the signed image).
fn quantized_convs(net: &CompiledNet) -> Vec<bool> {
    (0..net.convs.len()).map(|c| c > 0).collect()
}

/// One convolution quantized: its packed weights and its store's bias and scale.
struct QuantConv {
    packed: PackedWeights,
    bias: Vec<i32>,
    /// `w_scale[c] · x_scale / y_scale`.
    scale: Vec<f32>,
}

/// The compiled network with its convolutions quantized (see the module documentation).
pub struct QuantNet {
    net: CompiledNet,
    path: Path,
    /// Per convolution of `net`: `None` for those run in f32 (the stem).
    convs: Vec<Option<QuantConv>>,
    /// Per value: the scale of its `u8` elements (`None`: kept in f32).
    scales: Vec<Option<f32>>,
    /// The `u8` buffers, one per slot of the f32 network's arena.
    bytes: Vec<Vec<u8>>,
    /// With the stem on int8 ([`QuantNet::quantize_stem`]): one over the network input's scale, and its zero
    /// point, per channel.
    stem_input: Option<(Vec<f32>, Vec<u8>)>,
    /// The stem's `u8` input, its channels padded to a multiple of 4 (grown to the largest batch met).
    stem_bytes: Vec<u8>,
    /// Per value, during a pass: whether its f32 copy, and its `u8` copy, has been made.
    has_f32: Vec<bool>,
    has_u8: Vec<bool>,
    /// The shortcut convolutions computed inside their block's last one ([`Fusions`]).
    fusions: Fusions,
    /// A fused shortcut's `u8` input, held from its last other reader to the block's last convolution (its slot
    /// may be reused meanwhile): swapped out of the arena, not copied.
    held: Vec<u8>,
}

/// Each block's shortcut convolution runs inside the block's last convolution ([`int8::conv_with_shortcut`]): its
/// f32 output (the first stage's, 103 MB at batch 32) is never written. Per step of the network:
#[derive(Clone, Debug, Default)]
struct Fusions {
    /// For a block's last convolution: the step of the shortcut convolution it computes.
    shortcut: Vec<Option<usize>>,
    /// For a shortcut convolution computed so: the step of the block's last convolution (the step itself does
    /// nothing).
    inside: Vec<Option<usize>>,
    /// The value whose `u8` buffer is held (moved out of the arena) once this step has run: a fused shortcut's
    /// input, after its last other reader.
    hold: Vec<Option<usize>>,
    /// For a block's last convolution with a `u8` output: it writes over its `u8` shortcut, the shortcut's last
    /// reader (whose buffer becomes the output's, [`requant::Residual::InOutput`]), so that each element of the
    /// shortcut is read where it is written, not from a second stream of memory.
    over: Vec<bool>,
}

impl Fusions {
    /// The fusions of `net`: a quantized convolution whose residual is only its own, the f32 output
    /// of a quantized shortcut convolution reading a `u8` value that nothing reads after the block; one held
    /// input at a time.
    fn plan(net: &CompiledNet, convs: &[Option<QuantConv>], scales: &[Option<f32>]) -> Fusions {
        let steps = &net.steps;
        let mut f = Fusions {
            shortcut: vec![None; steps.len()],
            inside: vec![None; steps.len()],
            hold: vec![None; steps.len()],
            over: vec![false; steps.len()],
        };
        let readers = |v: usize| -> Vec<usize> {
            (0..steps.len())
                .filter(|&s| steps[s].reads().any(|r| r == v))
                .collect()
        };
        let mut free_from = 0;
        for (i, step) in steps.iter().enumerate() {
            let Step::Conv {
                conv,
                residual: Some(r),
                ..
            } = *step
            else {
                continue;
            };
            let Some(j) = steps.iter().position(|s| s.output() == r) else {
                continue;
            };
            let Step::Conv {
                conv: cj,
                input: xj,
                residual: None,
                ..
            } = steps[j]
            else {
                continue;
            };
            let quantized = convs[conv].is_some() && convs[cj].is_some();
            let f32_shortcut = scales[r].is_none() && readers(r) == [i];
            let others: Vec<usize> = readers(xj).into_iter().filter(|&s| s != j).collect();
            if !quantized || !f32_shortcut || xj == 0 || scales[xj].is_none() || j >= i {
                continue;
            }
            if others.iter().any(|&s| s >= i) {
                continue;
            }
            let last = others.last().copied().unwrap_or(j).max(j);
            if last < free_from {
                continue;
            }
            f.shortcut[i] = Some(j);
            f.inside[j] = Some(i);
            f.hold[last] = Some(xj);
            free_from = i + 1;
        }
        for (i, step) in steps.iter().enumerate() {
            if let Step::Conv {
                conv,
                residual: Some(r),
                ..
            } = *step
            {
                f.over[i] = f.shortcut[i].is_none()
                    && convs[conv].is_some()
                    && r != 0
                    && scales[r].is_some()
                    && scales[step.output()].is_some()
                    && readers(r).last() == Some(&i);
            }
        }
        f
    }
}

impl QuantNet {
    /// Quantizes `net` with one clip per value (`None` where [`Calibration::clips`] says so) for the kernel
    /// `path`. Errors if the clips do not fit the network.
    pub fn new(net: CompiledNet, clips: &[Option<f32>], path: Path) -> Result<QuantNet> {
        let weights = quantized_convs(&net)
            .into_iter()
            .zip(&net.convs)
            .map(|(q, c)| q.then(|| quantize_weights(&c.weight, c.cout)))
            .collect();
        QuantNet::with_weights(net, clips, weights, path)
    }

    /// [`QuantNet::new`] with the convolutions' weights already quantized (a quantized model file's): per
    /// convolution of `net`, `None` for those run in f32, else the HWIO `i8` weights `[k, k, cin, cout]` and the
    /// `[cout]` scales of `quantize_weights`. Errors if the clips or the weights do not fit the network.
    pub fn with_weights(
        mut net: CompiledNet,
        clips: &[Option<f32>],
        weights: Vec<Option<(Vec<i8>, Vec<f32>)>>,
        path: Path,
    ) -> Result<QuantNet> {
        let quantized = quantized_values(&net);
        let same = clips.len() == quantized.len()
            && clips.iter().zip(&quantized).all(|(c, &q)| c.is_some() == q);
        if !same {
            bail!("int8: the calibration's values do not match the network's");
        }
        if let Some(bad) = clips
            .iter()
            .flatten()
            .find(|c| !(c.is_finite() && **c > 0.0))
        {
            bail!("int8: activation clip {bad} is not a positive number");
        }
        let wanted = quantized_convs(&net);
        let fits = weights.len() == net.convs.len()
            && weights
                .iter()
                .zip(&net.convs)
                .zip(&wanted)
                .all(|((w, c), &q)| match w {
                    None => !q,
                    Some((w, s)) => q && w.len() == c.weight.len() && s.len() == c.cout,
                });
        if !fits {
            bail!("int8: the quantized weights do not match the network's convolutions");
        }
        let qmax = path.qmax() as f32;
        let scales: Vec<Option<f32>> = clips.iter().map(|c| c.map(|c| c / qmax)).collect();
        let mut weights = weights;
        let mut convs: Vec<Option<QuantConv>> = (0..net.convs.len()).map(|_| None).collect();
        for (conv, input, output) in net.steps.iter().filter_map(Step::conv_io) {
            let Some(x_scale) = scales[input] else {
                continue;
            };
            let y_scale = scales[output].unwrap_or(1.0);
            let (w, w_scale) = weights[conv].take().expect("checked above");
            let (w, w_scale) = fit_weights(path, w, w_scale);
            convs[conv] = Some(quantize_conv(
                &net.convs[conv],
                &w,
                &w_scale,
                x_scale,
                y_scale,
                path,
            ));
        }
        let fusions = Fusions::plan(&net, &convs, &scales);
        // The `u8` values share the f32 arena's slots, and the int8 kernels read their residual from a buffer of
        // its own.
        net.write_over_shortcuts(false);
        Ok(QuantNet {
            net,
            path,
            convs,
            scales,
            bytes: Vec::new(),
            stem_input: None,
            stem_bytes: Vec::new(),
            has_f32: Vec::new(),
            has_u8: Vec::new(),
            fusions,
            held: Vec::new(),
        })
    }

    /// Runs the stem on int8 too, for inputs whose channel `c` lies in `ranges[c]` (the preprocessing's: a
    /// pixel in [0, 1], normalized): the input quantized per channel, asymmetric (`scale = (hi - lo) / qmax`, the
    /// zero point the `u8` of 0, which the stem's padded taps read), the scale folded into the stem's weights
    /// (then quantized per output channel as the others) and the zero points' sums into its bias; its output
    /// `u8` at the scale of the first block's input (through the max pool, which commutes with it). An input
    /// outside its range is clamped to it. The file's stem weights stay f32; this is done when it loads.
    pub fn quantize_stem(&mut self, ranges: &[(f32, f32)]) -> Result<()> {
        let stem = &self.net.convs[0];
        if ranges.len() != stem.cin {
            bail!(
                "int8: {} input ranges for a stem of {} channels",
                ranges.len(),
                stem.cin
            );
        }
        if let Some(&(lo, hi)) = ranges
            .iter()
            .find(|(lo, hi)| !(lo.is_finite() && hi.is_finite() && lo < hi))
        {
            bail!("int8: input range [{lo}, {hi}] is not a range");
        }
        let Some(Step::Conv {
            conv: 0, output, ..
        }) = self.net.steps.first()
        else {
            bail!("int8: the network does not begin with its stem");
        };
        let stem_out = *output;
        // The value the first block reads: the stem's output, or the max pool's after it.
        let block_in = match self.net.steps.get(1) {
            Some(Step::MaxPool { input, output, .. }) if *input == stem_out => *output,
            _ => stem_out,
        };
        let Some(y_scale) = self.scales[block_in] else {
            bail!("int8: the first block's input is not quantized");
        };
        let qmax = self.path.qmax() as f32;
        let scales: Vec<f32> = ranges.iter().map(|(lo, hi)| (hi - lo) / qmax).collect();
        let zero_points: Vec<u8> = ranges
            .iter()
            .zip(&scales)
            .map(|((lo, _), s)| (-lo / s).round_ties_even().clamp(0.0, qmax) as u8)
            .collect();
        // HWIO, the input channels padded to a multiple of 4 with zero weights: the kernel then reads every
        // pixel as whole groups of four (a last group of 1 to 3 bytes, per row and tap, halved the stem's speed).
        let (cin, cout) = (stem.cin, stem.cout);
        let cin4 = cin.next_multiple_of(4);
        let folded: Vec<f32> = (0..stem.weight.len() / cin * cin4)
            .map(|i| {
                let (tap, ci, co) = (i / (cin4 * cout), i / cout % cin4, i % cout);
                match ci < cin {
                    true => stem.weight[(tap * cin + ci) * cout + co] * scales[ci],
                    false => 0.0,
                }
            })
            .collect();
        let (w, w_scale) = quantize_weights_to(&folded, cout, self.path.wmax());
        let mut q = quantize_conv(stem, &w, &w_scale, 1.0, y_scale, self.path);
        let mut pad = zero_points.clone();
        pad.resize(cin4, 0);
        for (i, &wq) in w.iter().enumerate() {
            q.bias[i % cout] -= wq as i32 * pad[i / cout % cin4] as i32;
        }
        q.packed.pad = pad;
        self.convs[0] = Some(q);
        self.scales[stem_out] = Some(y_scale);
        self.stem_input = Some((scales.iter().map(|s| 1.0 / s).collect(), zero_points));
        Ok(())
    }

    /// The description of the network.
    pub fn config(&self) -> &crate::nn::ResNetConfig {
        &self.net.config
    }

    /// See [`CompiledNet::set_batch_invariant`] (the int8 convolutions' sums are exact in any batch; the f32
    /// stem's plan is what it changes).
    pub fn set_batch_invariant(&mut self, on: bool) {
        self.net.set_batch_invariant(on);
    }

    /// Plans input shape `xs` and sizes the arena (f32 and `u8` buffers) for it now.
    pub fn reserve(&mut self, xs: Shape4) -> Result<()> {
        self.net.shapes_for(xs)?;
        let lens = &self.net.shapes[&xs].arena.lens;
        if self.bytes.len() < lens.len() {
            self.bytes.resize_with(lens.len(), Vec::new);
        }
        // Every buffer as long as the longest slot: a block's last convolution swaps its shortcut's buffer into
        // its output's slot (`Fusions::over`).
        let longest = lens.iter().copied().max().unwrap_or(0);
        for buf in self.bytes.iter_mut() {
            if buf.len() < longest {
                buf.resize(longest, 0);
            }
        }
        Ok(())
    }

    /// The kernel path the quantized convolutions run on.
    pub fn path(&self) -> Path {
        self.path
    }

    /// One line per convolution for input `xs`: the layer, its geometry, what runs it (the int8 path, or the f32
    /// algorithm), and what it reads and writes (`u8` with its scale, or `f32`); what `summary --plan` shows of
    /// a quantized network.
    pub fn plan_lines(&mut self, xs: Shape4) -> Result<Vec<String>> {
        self.net.shapes_for(xs)?;
        let shapes = &self.net.shapes[&xs];
        let kind = |v: usize| match (self.scales[v], v, &self.stem_input) {
            (_, 0, Some((_, zero_points))) => {
                format!("u8 per channel, zero points {zero_points:?}")
            }
            (Some(s), ..) => format!("u8 ×{s:.3e}"),
            (None, ..) => "f32".to_string(),
        };
        let mut lines = Vec::new();
        for (i, step) in self.net.steps.iter().enumerate() {
            let Some((conv, input, output)) = step.conv_io() else {
                continue;
            };
            let plan = shapes.plans[i].as_ref().expect("a conv step has a plan");
            let runs = match self.convs[conv] {
                Some(_) => self.path.name().to_string(),
                None => format!("f32 {}", plan.forward),
            };
            // A fused shortcut: its f32 output is never stored, but made block by block where it is added.
            let output = match self.fusions.inside[i].and_then(|b| self.net.steps[b].conv_io()) {
                Some((c, ..)) => format!("f32 inside {}", self.net.convs[c].name),
                None => kind(output),
            };
            lines.push(format!(
                "  {:<22} {} {:<26} {} -> {}",
                self.net.convs[conv].name,
                plan.geom,
                runs,
                kind(input),
                output
            ));
        }
        Ok(lines)
    }

    /// Each step of the pass for input `xs` timed inside it: the median of `iters` passes, with its
    /// `summary --plan` line (a convolution's path, or the f32 step's) and multiply-adds (`bench --plan
    /// --weights`; a fused shortcut's in its block's last convolution).
    pub fn profile(&mut self, x: &[f32], xs: Shape4, iters: usize) -> Result<Vec<ProfiledStep>> {
        self.reserve(xs)?;
        let steps = self.net.steps.len();
        let seconds = crate::kernels::on_pool(|| {
            median_step_seconds(steps, iters, |t| self.run(x, xs, t).map(|_| ()))
        })?;
        let (mut convs, f32_lines) = (self.plan_lines(xs)?.into_iter(), self.net.plan_lines(xs)?);
        let plans = &self.net.shapes[&xs].plans;
        let mut steps: Vec<ProfiledStep> = seconds
            .iter()
            .enumerate()
            .map(
                |(i, &seconds)| match (plans.get(i), self.net.steps.get(i)) {
                    (Some(Some(p)), Some(Step::Conv { conv, .. })) => {
                        let algo = match self.convs[*conv] {
                            Some(_) => self.path.name().to_string(),
                            None => format!("f32 {}", p.forward),
                        };
                        let line = convs.next().expect("a line per convolution");
                        ProfiledStep::conv(line, algo, seconds, p, xs.n)
                    }
                    (Some(_), _) => ProfiledStep::other(f32_lines[i].clone(), "max pool", seconds),
                    (None, _) => ProfiledStep::pool_and_classifier(seconds),
                },
            )
            .collect();
        // A shortcut computed inside its block's last convolution takes no time of its own: its products count
        // in that convolution's rate.
        for (i, host) in self.fusions.inside.iter().enumerate() {
            if let Some(b) = *host {
                steps[b].macs += std::mem::take(&mut steps[i].macs);
            }
        }
        Ok(steps)
    }

    /// The logits `[n, classes]` of the NCHW batch `x` of shape `xs`. The values live in the f32 network's
    /// arena (its buffers for the f32 values, as many `u8` buffers beside them for the quantized ones, a value's
    /// two copies in the same slot), so that a shape met before allocates nothing.
    pub fn forward(&mut self, x: &[f32], xs: Shape4) -> Result<&[f32]> {
        crate::kernels::on_pool(|| self.run(x, xs, None))
    }

    /// Whether a pass needs the network input in f32 (NHWC): not when its only reader is the stem on int8, which
    /// quantizes the NCHW images directly ([`quantize_input`]).
    fn reads_input_f32(&self) -> bool {
        self.stem_input.is_none()
            || self.net.steps.iter().any(|step| match *step {
                Step::Conv {
                    conv,
                    input: 0,
                    residual,
                    ..
                } if self.convs[conv].is_some() => residual == Some(0),
                _ => step.reads().any(|v| v == 0),
            })
    }

    /// [`QuantNet::forward`], adding each step's seconds to `times[step]` when given (the average pool and the
    /// classifier at `times[steps]`), as [`CompiledNet`]'s profile does.
    fn run(&mut self, images: &[f32], xs: Shape4, mut times: Option<&mut [f64]>) -> Result<&[f32]> {
        if images.len() != xs.len() {
            bail!(
                "input holds {} values, shape {xs} needs {}",
                images.len(),
                xs.len()
            );
        }
        self.reserve(xs)?;
        let input_f32 = self.reads_input_f32();
        let net = &mut self.net;
        let shapes = &net.shapes[&xs];
        let slot = &shapes.arena.slot;
        // Which copies of each value this pass has made.
        let count = shapes.values.len();
        // Kept between passes, so that a pass allocates none.
        let (mut has_f32, mut has_u8) = (
            std::mem::take(&mut self.has_f32),
            std::mem::take(&mut self.has_u8),
        );
        for has in [&mut has_f32, &mut has_u8] {
            has.clear();
            has.resize(count, false);
        }
        // The input's conversion counts in the stem's time.
        let mut clock = std::time::Instant::now();
        if input_f32 {
            nchw_to_nhwc_into(images, xs, &mut net.slots[slot[0]][..xs.len()]);
            has_f32[0] = true;
        }
        let qmax = self.path.qmax();
        let mut lap = |i: usize, times: &mut Option<&mut [f64]>| {
            if let Some(t) = times {
                t[i] += clock.elapsed().as_secs_f64();
                clock = std::time::Instant::now();
            }
        };
        for (i, step) in net.steps.iter().enumerate() {
            let (out, out_len) = (step.output(), shapes.values[step.output()].len());
            match step {
                // Computed inside its block's last convolution.
                _ if self.fusions.inside[i].is_some() => {}
                Step::Conv {
                    conv,
                    input,
                    residual,
                    ..
                } => match &self.convs[*conv] {
                    None => {
                        let plan = shapes.plans[i].as_ref().expect("a conv step has a plan");
                        let c = &net.convs[*conv];
                        let mut y = std::mem::take(&mut net.slots[slot[out]]);
                        let x = &net.slots[slot[*input]][..shapes.values[*input].len()];
                        let residual = residual.map(|r| &net.slots[slot[r]][..out_len]);
                        let e = Epilogue::bias(&c.bias, residual, c.relu);
                        let p = c.prepared_for(plan);
                        plan.forward_with(
                            x,
                            &c.weight,
                            p,
                            e,
                            &mut y[..out_len],
                            &mut net.workspace,
                        );
                        net.slots[slot[out]] = y;
                        has_f32[out] = true;
                    }
                    Some(q) => {
                        let in_len = shapes.values[*input].len();
                        let mut g = plan_geom(shapes.plans[i].as_ref());
                        let x_scale = match (*input, &self.stem_input) {
                            (0, Some((inv_scales, zero_points))) => {
                                g.cin = q.packed.cin;
                                let len = in_len / inv_scales.len() * g.cin;
                                self.stem_bytes.resize(len, 0);
                                quantize_input(
                                    images,
                                    xs,
                                    inv_scales,
                                    zero_points,
                                    qmax,
                                    &mut self.stem_bytes[..len],
                                );
                                // Folded into the stem's weights.
                                1.0
                            }
                            _ => self.scales[*input].expect("a quantized conv reads a u8 value"),
                        };
                        let stem_int8 = *input == 0 && self.stem_input.is_some();
                        if !has_u8[*input] && !stem_int8 {
                            let f = &net.slots[slot[*input]][..in_len];
                            quantize(f, x_scale, qmax, &mut self.bytes[slot[*input]][..in_len]);
                            has_u8[*input] = true;
                        }
                        let y_scale = self.scales[out];
                        // Written over its shortcut: the shortcut's buffer passes to the output's slot (and the
                        // output's to the shortcut's, which nothing reads again); every `u8` buffer is as long.
                        let over = residual.filter(|&r| {
                            self.fusions.over[i]
                                && has_u8[r]
                                && !has_f32[r]
                                && self.bytes[slot[r]].len() == self.bytes[slot[out]].len()
                        });
                        if let Some(r) = over {
                            self.bytes.swap(slot[r], slot[out]);
                        }
                        // The output's buffer leaves the arena while the others are read.
                        let mut y8 = Vec::new();
                        let mut y32 = Vec::new();
                        match y_scale {
                            Some(_) => y8 = std::mem::take(&mut self.bytes[slot[out]]),
                            None => y32 = std::mem::take(&mut net.slots[slot[out]]),
                        }
                        let per_y = 1.0 / y_scale.unwrap_or(1.0);
                        let fused = self.fusions.shortcut[i];
                        // A fused shortcut is added inside the convolution, not read as a residual.
                        let residual = match residual.filter(|_| fused.is_none()) {
                            None => Residual::None,
                            Some(r) if over.is_some() => Residual::InOutput {
                                scale: self.scales[r].expect("a u8 value has a scale") * per_y,
                            },
                            Some(r) if has_f32[r] => Residual::F32 {
                                values: &net.slots[slot[r]][..out_len],
                                scale: per_y,
                            },
                            Some(r) => Residual::U8 {
                                values: &self.bytes[slot[r]][..out_len],
                                scale: self.scales[r].expect("a u8 value has a scale") * per_y,
                            },
                        };
                        let rq = Requant {
                            bias: &q.bias,
                            scale: &q.scale,
                            residual,
                            relu: net.convs[*conv].relu,
                            qmax,
                        };
                        let n = shapes.values[*input].n;
                        let x = match stem_int8 {
                            true => &self.stem_bytes[..],
                            false => &self.bytes[slot[*input]][..in_len],
                        };
                        let y = match y_scale {
                            Some(_) => Output::U8(&mut y8[..out_len]),
                            None => Output::F32(&mut y32[..out_len]),
                        };
                        match fused {
                            Some(j) => {
                                let Some((cj, xj, _)) = net.steps[j].conv_io() else {
                                    unreachable!("a fused shortcut is a convolution")
                                };
                                let qj = self.convs[cj]
                                    .as_ref()
                                    .expect("a fused shortcut is quantized");
                                let gj = plan_geom(shapes.plans[j].as_ref());
                                let sc = int8::Shortcut {
                                    g: &gj,
                                    x: &self.held[..shapes.values[xj].len()],
                                    w: &qj.packed,
                                    bias: &qj.bias,
                                    scale: &qj.scale,
                                    residual_scale: per_y,
                                };
                                int8::conv_with_shortcut(&g, n, x, &q.packed, &rq, y, &sc);
                            }
                            None => int8::conv(&g, n, x, &q.packed, &rq, y),
                        }
                        match y_scale {
                            Some(_) => (self.bytes[slot[out]], has_u8[out]) = (y8, true),
                            None => (net.slots[slot[out]], has_f32[out]) = (y32, true),
                        }
                    }
                },
                Step::MaxPool { input, .. } if has_u8[*input] => {
                    let g = shapes.pools[i]
                        .as_ref()
                        .expect("a pool step has a geometry");
                    let mut y = std::mem::take(&mut self.bytes[slot[out]]);
                    let x = &self.bytes[slot[*input]];
                    max_pool_infer_u8(g, shapes.values[*input].n, x, &mut y);
                    self.bytes[slot[out]] = y;
                    has_u8[out] = true;
                }
                Step::MaxPool { input, .. } => {
                    let g = shapes.pools[i]
                        .as_ref()
                        .expect("a pool step has a geometry");
                    let mut y = std::mem::take(&mut net.slots[slot[out]]);
                    let x = &net.slots[slot[*input]];
                    max_pool_infer(g, shapes.values[*input].n, x, &mut y);
                    net.slots[slot[out]] = y;
                    has_f32[out] = true;
                }
            }
            if let Some(v) = self.fusions.hold[i] {
                // A fused shortcut's input, after its last other reader: out of the arena until the block's
                // last convolution reads it (the buffer put in its place is as long).
                let len = shapes.values[v].len();
                if !has_u8[v] {
                    let scale = self.scales[v].expect("a fused shortcut reads a u8 value");
                    quantize(
                        &net.slots[slot[v]][..len],
                        scale,
                        qmax,
                        &mut self.bytes[slot[v]][..len],
                    );
                }
                let need = self.bytes[slot[v]].len();
                if self.held.len() < need {
                    self.held.resize(need, 0);
                }
                std::mem::swap(&mut self.held, &mut self.bytes[slot[v]]);
                has_u8[v] = false;
            }
            lap(i, &mut times);
        }
        (self.has_f32, self.has_u8) = (has_f32, has_u8);
        net.classify(xs);
        lap(net.steps.len(), &mut times);
        Ok(&net.logits[..xs.n * net.config.num_classes])
    }
}

/// The geometry of a convolution step's plan.
fn plan_geom(plan: Option<&crate::kernels::conv::ConvPlan>) -> crate::kernels::conv::ConvGeom {
    plan.expect("a conv step has a plan").geom
}

/// `y = x` as `u8` of `scale`: `round(v / scale)` clamped to `[0, qmax]`.
fn quantize(x: &[f32], scale: f32, qmax: u8, y: &mut [u8]) {
    let inv = 1.0 / scale;
    for (q, &v) in y.iter_mut().zip(x) {
        *q = int8::requant::to_u8(v * inv, qmax as f32);
    }
}

/// The NCHW network input `x` of shape `xs` as NHWC `u8` per channel into `y [n·h·w, c4]` (`c4 ≥ c`; the
/// channels past `c` zero): `round(v · inv_scale[c]) + zero_point[c]`, clamped to `[0, qmax]`. In parallel over
/// pieces of each image's pixels, with the channel counts of images (1 or 3, padded to 4) as constants: alone
/// on one core, a value at a time, it took most of the int8 stem's time. It reads the images as they come, so
/// that the pass makes no NHWC f32 copy of them.
fn quantize_input(
    x: &[f32],
    xs: Shape4,
    inv_scales: &[f32],
    zero_points: &[u8],
    qmax: u8,
    y: &mut [u8],
) {
    use rayon::prelude::*;
    const PIXELS: usize = 4096;
    let (c, plane) = (xs.c, xs.h * xs.w);
    assert!(x.len() == xs.len() && inv_scales.len() == c && zero_points.len() == c);
    if xs.is_empty() {
        return;
    }
    let c4 = y.len() / (xs.n * plane);
    assert!(c4 >= c && y.len() == xs.n * plane * c4);
    // The loops of one and three channels, with their counts as constants.
    type Fixed = fn(&[f32], usize, usize, &[f32], &[u8], u8, &mut [u8]);
    let fixed: Option<Fixed> = match (c, c4) {
        (3, 4) => Some(quantize_pixels::<3, 4>),
        (1, 4) => Some(quantize_pixels::<1, 4>),
        _ => None,
    };
    y.par_chunks_mut(plane * c4)
        .zip(x.par_chunks(plane * c))
        .for_each(|(y, planes)| {
            y.par_chunks_mut(PIXELS * c4)
                .enumerate()
                .for_each(|(piece, y)| {
                    let first = piece * PIXELS;
                    match fixed {
                        Some(quantize) => {
                            quantize(planes, plane, first, inv_scales, zero_points, qmax, y)
                        }
                        None => {
                            let mut pixel = vec![0.0; c];
                            for (i, ys) in y.chunks_exact_mut(c4).enumerate() {
                                for (ch, v) in pixel.iter_mut().enumerate() {
                                    *v = planes[ch * plane + first + i];
                                }
                                quantize_pixel(&pixel, inv_scales, zero_points, qmax, ys);
                            }
                        }
                    }
                })
        });
}

/// [`quantize_pixel`] over the pixels `first..` of one image's channel planes `planes [C][plane]` into
/// `y [.., C4]`.
fn quantize_pixels<const C: usize, const C4: usize>(
    planes: &[f32],
    plane: usize,
    first: usize,
    inv_scales: &[f32],
    zero_points: &[u8],
    qmax: u8,
    y: &mut [u8],
) {
    let inv: [f32; C] = inv_scales.try_into().expect("a scale per channel");
    let zp: [u8; C] = zero_points.try_into().expect("a zero point per channel");
    let count = y.len() / C4;
    let channels: [&[f32]; C] = std::array::from_fn(|ch| &planes[ch * plane + first..][..count]);
    for (i, ys) in y.chunks_exact_mut(C4).enumerate() {
        let xs: [f32; C] = std::array::from_fn(|ch| channels[ch][i]);
        quantize_pixel(&xs, &inv, &zp, qmax, ys);
    }
}

/// One pixel's channels `xs [c]` into `ys [c4]`: `round(v · inv_scale) + zero_point`, clamped to `[0, qmax]`;
/// the channels past `c` zero.
#[inline(always)]
fn quantize_pixel(xs: &[f32], inv_scales: &[f32], zero_points: &[u8], qmax: u8, ys: &mut [u8]) {
    let c = xs.len();
    for k in 0..c {
        // Rounded half to even by adding and taking away 1.5·2²³ (exact below 2²²; larger values clamp to 0 or
        // qmax either way): `round_ties_even` was a call to libm's rintf per value.
        const ROUNDER: f32 = 12_582_912.0;
        let v = (xs[k] * inv_scales[k] + ROUNDER) - ROUNDER + zero_points[k] as f32;
        ys[k] = int8::requant::to_u8(v, qmax as f32);
    }
    ys[c..].fill(0);
}

/// HWIO weights `[k, k, cin, cout]` quantized per output channel, symmetric: `(q, w_scale)`, `w_scale[c] =
/// max |w[.., c]| / 127` (1 for a channel of zeros, which any scale represents exactly) and `q = round(w /
/// w_scale[c])` in [-127, 127].
pub(crate) fn quantize_weights(weight: &[f32], cout: usize) -> (Vec<i8>, Vec<f32>) {
    quantize_weights_to(weight, cout, 127)
}

/// [`quantize_weights`] into [-wmax, wmax] (`wmax` at most 127).
fn quantize_weights_to(weight: &[f32], cout: usize, wmax: u8) -> (Vec<i8>, Vec<f32>) {
    let wmax = wmax.min(127) as f32;
    let mut w_scale = vec![0.0f32; cout];
    for row in weight.chunks_exact(cout) {
        for (s, w) in w_scale.iter_mut().zip(row) {
            *s = s.max(w.abs());
        }
    }
    for s in &mut w_scale {
        *s = if *s > 0.0 { *s / wmax } else { 1.0 };
    }
    let q = weight
        .iter()
        .enumerate()
        .map(|(i, &w)| (w / w_scale[i % cout]).round_ties_even().clamp(-wmax, wmax) as i8)
        .collect();
    (q, w_scale)
}

/// Weights `w` in [-127, 127] of per-channel scales `w_scale` (a quantized file's, [`quantize_weights`]'s) as
/// `path` multiplies them: unchanged, or for AVX2 ([`Path::wmax`] 63) halved, `round(w / 2)` with ties to even,
/// ±127 clamped to ±63, at twice the scale. An odd weight is a tie: to even, half go up and half down, where
/// rescaling by 63/127 (the full 7-bit range) would round every odd weight towards zero, shrinking them all
/// (resnet18's top-1 agreement with f32 over Fashion-MNIST's test set: 99.09 % halved, 98.62 % rescaled;
/// docs/int8.md).
fn fit_weights(path: Path, w: Vec<i8>, w_scale: Vec<f32>) -> (Vec<i8>, Vec<f32>) {
    let wmax = path.wmax();
    if wmax >= 127 {
        return (w, w_scale);
    }
    let limit = wmax as f32;
    let w = w
        .iter()
        .map(|&v| (v as f32 / 2.0).round_ties_even().clamp(-limit, limit) as i8)
        .collect();
    (w, w_scale.iter().map(|&s| s * 2.0).collect())
}

/// `c` with its weights quantized to `weights` of per-channel scales `w_scale` (`quantize_weights`), for input
/// scale `x_scale` and output scale `y_scale` (1 for an f32 output), packed for `path`.
fn quantize_conv(
    c: &super::FoldedConv,
    weights: &[i8],
    w_scale: &[f32],
    x_scale: f32,
    y_scale: f32,
    path: Path,
) -> QuantConv {
    // Bounded so that sum and bias never wrap: a 3×3 convolution's sum is below 9 · 2048 · 255 · 127 < 2^30.
    const BIAS_LIMIT: f32 = (1u32 << 30) as f32;
    let bias = c
        .bias
        .iter()
        .zip(w_scale)
        .map(|(&b, &s)| {
            (b / (s * x_scale))
                .round_ties_even()
                .clamp(-BIAS_LIMIT, BIAS_LIMIT) as i32
        })
        .collect();
    let scale = w_scale.iter().map(|&s| s * x_scale / y_scale).collect();
    let taps = c.kernel * c.kernel;
    // `c.cin`, or more where the weights' input channels are padded (the stem's).
    let cin = weights.len() / (taps * c.cout);
    QuantConv {
        packed: int8::pack(path, taps, cin, c.cout, weights),
        bias,
        scale,
    }
}

impl super::Classifier for QuantNet {
    fn classes(&self) -> usize {
        self.net.config.num_classes
    }

    fn logits(&mut self, x: &[f32], xs: Shape4) -> Result<&[f32]> {
        self.forward(x, xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The images read as NCHW, in pieces, equal each pixel quantized alone from its NHWC channels.
    #[test]
    fn the_input_quantized_from_nchw_is_each_pixel_quantized() {
        // One piece and several with a partial last one; the channel counts of the fast loops and another.
        for (xs, c4) in [
            (Shape4::new(2, 3, 5, 7), 4),
            (Shape4::new(2, 3, 70, 70), 4),
            (Shape4::new(3, 1, 65, 64), 4),
            (Shape4::new(2, 2, 9, 9), 4),
            (Shape4::new(1, 5, 66, 64), 8),
        ] {
            let x: Vec<f32> = (0..xs.len())
                .map(|i| (i % 301) as f32 * 0.37 - 40.0)
                .collect();
            let inv: Vec<f32> = (0..xs.c).map(|c| 0.5 + c as f32 * 0.25).collect();
            let zp: Vec<u8> = (0..xs.c).map(|c| 60 + c as u8).collect();
            let nhwc = crate::tensor::nchw_to_nhwc(&x, xs);
            let pixels = xs.n * xs.h * xs.w;
            let mut want = vec![0u8; pixels * c4];
            for (ys, v) in want.chunks_exact_mut(c4).zip(nhwc.chunks_exact(xs.c)) {
                quantize_pixel(v, &inv, &zp, 127, ys);
            }
            let mut got = vec![9u8; pixels * c4];
            quantize_input(&x, xs, &inv, &zp, 127, &mut got);
            assert_eq!(got, want, "{xs}");
        }
    }
}
