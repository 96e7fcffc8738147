//! A network compiled once for inference (what `predict`, `eval`, `serve` and `bench`'s inference configurations
//! run): every batch norm folded into its convolution's weights and bias, each residual block's add and ReLU
//! applied as its last convolution stores its output, the weights prepared once in the layout the kernels' tiles
//! read, and the activations in a few buffers of an arena sized for the input shape and batch it was compiled
//! for, so that a forward pass allocates nothing. The training path ([`ResNet::forward`]) keeps its own layers;
//! both run the same kernels ([`crate::kernels::conv`]).
//!
//! Plans are chosen per (input shape, batch) on this CPU and kept ([`CompiledNet::plan_lines`] prints them:
//! `resnet summary --plan`). With [`CompiledNet::set_batch_invariant`], every batch runs the algorithms a batch of
//! one gets, so that an image's logits do not depend, bit for bit, on the images it is batched with (`serve`).

pub mod arena;
pub mod int8;
pub mod loaded;
pub mod quant_file;

use crate::kernels::conv::{Algo, ConvGeom, ConvPlan, Epilogue};
use crate::kernels::linear::linear_forward;
use crate::kernels::pool::{global_avg_pool_forward, max_pool_infer, PoolGeom};
use crate::nn::arch::Role;
use crate::nn::{BatchNorm2d, Conv2d, ResNet, ResNetConfig};
use crate::tensor::nchw_to_nhwc_into;
use crate::{bail, Result, Shape4};
use std::collections::HashMap;
use std::fmt::Write as _;

/// A convolution with its batch norm folded in: `out = relu?(conv(x, weight) + bias + residual?)`.
struct FoldedConv {
    /// The state-dict name of the convolution (`layer2.0.conv1`).
    name: String,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    /// HWIO `[k, k, cin, cout]`, each output channel scaled by its batch norm's `weight / √(var + eps)`.
    weight: Vec<f32>,
    /// `[cout]`: the conv bias and the batch norm's shift, folded.
    bias: Vec<f32>,
    relu: bool,
    /// The weights as the kernels read them, per (geometry, algorithm) met so far.
    prepared: Vec<(ConvGeom, Algo, Vec<f32>)>,
}

impl FoldedConv {
    /// `conv` followed by `bn` in eval mode (if any), its ReLU (if the norm has one).
    fn new(name: String, conv: &Conv2d, bn: Option<&BatchNorm2d>) -> FoldedConv {
        let (weight, bias) = fold_bn(conv, bn);
        FoldedConv {
            name,
            cin: conv.in_channels,
            cout: conv.out_channels,
            kernel: conv.kernel,
            stride: conv.stride,
            padding: conv.padding,
            weight,
            bias,
            relu: bn.is_some_and(|bn| bn.relu),
            prepared: Vec::new(),
        }
    }

    fn geom(&self, xs: Shape4) -> Option<ConvGeom> {
        ConvGeom::new(
            self.cin,
            self.cout,
            self.kernel,
            self.stride,
            self.padding,
            xs.h,
            xs.w,
        )
    }

    /// The prepared weights for `plan`, prepared now if they were not (`None`: the kernels read the weights as
    /// they are).
    fn prepare(&mut self, plan: &ConvPlan) {
        let Some(len) = plan.prepared_len() else {
            return;
        };
        if self.prepared_for(plan).is_none() {
            let mut p = vec![0.0; len];
            plan.prepare_weights(&self.weight, &mut p);
            self.prepared.push((plan.geom, plan.forward, p));
        }
    }

    /// The weights [`FoldedConv::prepare`] kept for `plan` (`None` where the kernels read them as they are).
    fn prepared_for(&self, plan: &ConvPlan) -> Option<&[f32]> {
        plan.prepared_len()?;
        self.prepared
            .iter()
            .find(|(g, a, _)| *g == plan.geom && *a == plan.forward)
            .map(|(_, _, p)| &p[..])
    }
}

/// `conv` followed by `bn` in eval mode (if any) as one convolution: `(weight, bias)`, the HWIO `[k, k, cin, cout]`
/// weight with each output channel scaled by the norm's `weight / √(running_var + eps)`, and the `[cout]` bias
/// (the conv's, zero without one) scaled likewise plus the norm's shift. The ReLU a norm carries is not applied.
/// What the compiled network runs, and what `resnet export --fold-bn` writes.
pub(crate) fn fold_bn(conv: &Conv2d, bn: Option<&BatchNorm2d>) -> (Vec<f32>, Vec<f32>) {
    let cout = conv.out_channels;
    let mut weight = conv.weight().to_vec();
    let mut bias = if conv.has_bias() {
        conv.bias.clone()
    } else {
        vec![0.0; cout]
    };
    if let Some(bn) = bn {
        let (scale, shift) = bn.eval_scale_shift();
        for row in weight.chunks_exact_mut(cout) {
            for (w, s) in row.iter_mut().zip(&scale) {
                *w *= s;
            }
        }
        for ((b, s), t) in bias.iter_mut().zip(&scale).zip(&shift) {
            *b = *b * s + t;
        }
    }
    (weight, bias)
}

/// One step of the compiled forward pass; values are numbered, 0 the NHWC input.
enum Step {
    /// `conv` of value `input` (plus value `residual`) into value `output`.
    Conv {
        conv: usize,
        input: usize,
        residual: Option<usize>,
        output: usize,
    },
    /// The stem's max pool.
    MaxPool {
        kernel: usize,
        stride: usize,
        padding: usize,
        input: usize,
        output: usize,
    },
}

impl Step {
    /// A convolution step's `(conv, input, output)`; `None` for the max pool.
    fn conv_io(&self) -> Option<(usize, usize, usize)> {
        match *self {
            Step::Conv {
                conv,
                input,
                output,
                ..
            } => Some((conv, input, output)),
            Step::MaxPool { .. } => None,
        }
    }

    fn output(&self) -> usize {
        match self {
            Step::Conv { output, .. } | Step::MaxPool { output, .. } => *output,
        }
    }

    /// The values the step reads: its input, then its residual if any (an iterator: a pass asks it every time).
    fn reads(&self) -> impl Iterator<Item = usize> {
        let (input, residual) = match *self {
            Step::Conv {
                input, residual, ..
            } => (input, residual),
            Step::MaxPool { input, .. } => (input, None),
        };
        std::iter::once(input).chain(residual)
    }
}

/// What the steps need for one input shape: each value's shape, each step's plan, the arena's assignment.
struct Shapes {
    values: Vec<Shape4>,
    /// Per step: the convolution's plan (`None` for a max pool).
    plans: Vec<Option<ConvPlan>>,
    /// Per step: the max pool's geometry.
    pools: Vec<Option<PoolGeom>>,
    arena: arena::Assignment,
    workspace: usize,
}

/// What sees each step's output: its value number and its NHWC values.
type Observer<'a> = &'a mut dyn FnMut(usize, &[f32]);

/// A network compiled for inference (see the module documentation).
pub struct CompiledNet {
    /// The description of the network it was compiled from.
    pub config: ResNetConfig,
    convs: Vec<FoldedConv>,
    steps: Vec<Step>,
    /// The classifier, `[classes, features]` and `[classes]`.
    fc_weight: Vec<f32>,
    fc_bias: Vec<f32>,
    batch_invariant: bool,
    /// Whether a block's last convolution may write its output over its shortcut (see [`arena::assign`]).
    over_shortcuts: bool,
    /// Per input shape met (batch included), its plans and arena.
    shapes: HashMap<Shape4, Shapes>,
    /// The arena's buffers (grown to the largest shape met) and the kernels' workspace.
    slots: Vec<Vec<f32>>,
    workspace: Vec<f32>,
    pooled: Vec<f32>,
    logits: Vec<f32>,
}

impl CompiledNet {
    /// Compiles `net` (its current weights and batch-norm running statistics) for inference; `reserve`: the
    /// input shape to plan and size the arena for now (later shapes are planned when first met).
    pub fn new(net: &ResNet, reserve: Option<Shape4>) -> Result<CompiledNet> {
        let naming = net.config.naming;
        let mut convs = Vec::new();
        let mut steps = Vec::new();
        // Each step writes one new value: step `s` writes value `s + 1`.
        let conv_step = |convs: &mut Vec<FoldedConv>,
                         steps: &mut Vec<Step>,
                         folded: FoldedConv,
                         input: usize,
                         residual: Option<usize>| {
            convs.push(folded);
            let output = steps.len() + 1;
            steps.push(Step::Conv {
                conv: convs.len() - 1,
                input,
                residual,
                output,
            });
            output
        };
        let stem = FoldedConv::new(
            naming.stem_conv().to_string(),
            &net.stem_conv,
            Some(&net.stem_bn),
        );
        let mut x = conv_step(&mut convs, &mut steps, stem, 0, None);
        if let Some(p) = &net.stem_pool {
            let output = steps.len() + 1;
            steps.push(Step::MaxPool {
                kernel: p.kernel,
                stride: p.stride,
                padding: p.padding,
                input: x,
                output,
            });
            x = output;
        }
        for (k, stage) in net.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let layers = naming.block_layers(block.convs.len());
                let name = |role: Role| {
                    let key = layers.iter().find(|(r, _)| *r == role).map_or("?", |l| l.1);
                    format!("{}{}.{b}.{key}", naming.stage(), k + 1)
                };
                let shortcut = match &block.shortcut_conv {
                    Some(c) => {
                        let bn = block.shortcut_bn.as_ref();
                        let folded = FoldedConv::new(name(Role::ShortcutConv), c, bn);
                        conv_step(&mut convs, &mut steps, folded, x, None)
                    }
                    None => x,
                };
                let last = block.convs.len() - 1;
                let mut t = x;
                for (i, (c, bn)) in block.convs.iter().zip(&block.bns).enumerate() {
                    let mut folded = FoldedConv::new(name(Role::Conv(i)), c, Some(bn));
                    let residual = (i == last).then_some(shortcut);
                    // The block's ReLU comes after the shortcut is added: the last conv's epilogue.
                    folded.relu |= i == last;
                    t = conv_step(&mut convs, &mut steps, folded, t, residual);
                }
                x = t;
            }
        }
        let mut compiled = CompiledNet {
            config: net.config.clone(),
            convs,
            steps,
            fc_weight: net.fc.weight.clone(),
            fc_bias: net.fc.bias.clone(),
            batch_invariant: false,
            over_shortcuts: true,
            shapes: HashMap::new(),
            slots: Vec::new(),
            workspace: Vec::new(),
            pooled: Vec::new(),
            logits: Vec::new(),
        };
        if let Some(xs) = reserve {
            compiled.reserve(xs)?;
        }
        Ok(compiled)
    }

    /// Runs every batch with the algorithms a batch of one gets, so that an image's logits do not depend on
    /// the batch it is in, bit for bit (`resnet serve`); off by default (large batches may then be slower).
    pub fn set_batch_invariant(&mut self, on: bool) {
        if self.batch_invariant != on {
            self.batch_invariant = on;
            self.shapes.clear();
        }
    }

    /// Lets a block's last convolution write its output over its shortcut, where its kernel allows (on by
    /// default: a stream of memory traffic less); off, every value gets a buffer it alone writes.
    pub(crate) fn write_over_shortcuts(&mut self, on: bool) {
        if self.over_shortcuts != on {
            self.over_shortcuts = on;
            self.shapes.clear();
        }
    }

    /// Plans input shape `xs` (NCHW names) and sizes the arena for it now, so that its forward passes allocate
    /// nothing. Errors if the input does not fit the network.
    pub fn reserve(&mut self, xs: Shape4) -> Result<()> {
        self.shapes_for(xs)?;
        Ok(())
    }

    /// The plans and arena of input shape `xs`, made on first use.
    fn shapes_for(&mut self, xs: Shape4) -> Result<&Shapes> {
        if !self.shapes.contains_key(&xs) {
            let shapes = self.plan(xs)?;
            for (step, plan) in self.steps.iter().zip(&shapes.plans) {
                if let (Step::Conv { conv, .. }, Some(plan)) = (step, plan) {
                    self.convs[*conv].prepare(plan);
                }
            }
            if self.slots.len() < shapes.arena.lens.len() {
                self.slots.resize_with(shapes.arena.lens.len(), Vec::new);
            }
            for (buf, &len) in self.slots.iter_mut().zip(&shapes.arena.lens) {
                if buf.len() < len {
                    buf.resize(len, 0.0);
                }
            }
            if self.workspace.len() < shapes.workspace {
                self.workspace.resize(shapes.workspace, 0.0);
            }
            let last = *shapes.values.last().expect("a network has steps");
            grow(&mut self.pooled, last.n * last.c);
            grow(&mut self.logits, last.n * self.config.num_classes);
            self.shapes.insert(xs, shapes);
        }
        Ok(&self.shapes[&xs])
    }

    /// Shapes, plans and arena for input `xs`.
    fn plan(&self, xs: Shape4) -> Result<Shapes> {
        self.config.check_input(xs)?;
        let too_small = || ResNetConfig::too_small(xs);
        let mut values = vec![xs];
        let mut plans = Vec::new();
        let mut pools = Vec::new();
        for step in &self.steps {
            let (out, plan, pool) = match step {
                Step::Conv {
                    conv,
                    input,
                    residual,
                    ..
                } => {
                    let c = &self.convs[*conv];
                    let s = values[*input];
                    let Some(g) = c.geom(s) else {
                        return Err(too_small());
                    };
                    let out = Shape4::new(s.n, c.cout, g.oh, g.ow);
                    if residual.is_some_and(|r| values[r] != out) {
                        return Err(too_small());
                    }
                    let plan = ConvPlan::inference(g, s.n, self.batch_invariant);
                    (out, Some(plan), None)
                }
                Step::MaxPool {
                    kernel,
                    stride,
                    padding,
                    input,
                    ..
                } => {
                    let s = values[*input];
                    let Some(g) = PoolGeom::new(s.c, *kernel, *stride, *padding, s.h, s.w) else {
                        return Err(too_small());
                    };
                    (Shape4::new(s.n, s.c, g.oh, g.ow), None, Some(g))
                }
            };
            values.push(out);
            plans.push(plan);
            pools.push(pool);
        }
        let lens: Vec<usize> = values.iter().map(|s| s.len()).collect();
        let writes: Vec<usize> = self.steps.iter().map(Step::output).collect();
        let reads: Vec<Vec<usize>> = self.steps.iter().map(|s| s.reads().collect()).collect();
        // A block's last convolution writes over its shortcut where its kernel allows.
        let over: Vec<Option<usize>> = self
            .steps
            .iter()
            .zip(&plans)
            .map(|(step, plan)| match (step, plan) {
                (Step::Conv { residual, .. }, Some(p))
                    if self.over_shortcuts && p.adds_residual_in_place() =>
                {
                    *residual
                }
                _ => None,
            })
            .collect();
        let workspace = plans
            .iter()
            .flatten()
            .map(ConvPlan::forward_workspace_len)
            .max()
            .unwrap_or(0);
        Ok(Shapes {
            values,
            plans,
            pools,
            arena: arena::assign(&lens, &writes, &reads, &over),
            workspace,
        })
    }

    /// The logits `[n, classes]` of the NCHW batch `x` of shape `xs`. Allocates nothing for a shape reserved or
    /// met before.
    pub fn forward(&mut self, x: &[f32], xs: Shape4) -> Result<&[f32]> {
        crate::kernels::on_pool(|| self.run(x, xs, None, None))
    }

    /// [`CompiledNet::forward`], adding each step's seconds to `times` (one per step, then one for the pool and
    /// classifier) when given, and showing each step's output (value number, NHWC values) to `observe` when
    /// given (the int8 network's calibration, [`int8`]).
    fn run(
        &mut self,
        x: &[f32],
        xs: Shape4,
        mut times: Option<&mut [f64]>,
        mut observe: Option<Observer<'_>>,
    ) -> Result<&[f32]> {
        if x.len() != xs.len() {
            bail!(
                "input holds {} values, shape {xs} needs {}",
                x.len(),
                xs.len()
            );
        }
        self.shapes_for(xs)?;
        let shapes = &self.shapes[&xs];
        let slot = &shapes.arena.slot;
        // The input's conversion counts in the first step's time.
        let mut clock = std::time::Instant::now();
        nchw_to_nhwc_into(x, xs, &mut self.slots[slot[0]][..xs.len()]);
        let mut lap = |i: usize, times: &mut Option<&mut [f64]>| {
            if let Some(t) = times {
                t[i] += clock.elapsed().as_secs_f64();
                clock = std::time::Instant::now();
            }
        };
        for (i, step) in self.steps.iter().enumerate() {
            let out_slot = slot[step.output()];
            // The output's buffer leaves the arena while the step reads the others (never the same slot).
            let mut out = std::mem::take(&mut self.slots[out_slot]);
            let out_len = shapes.values[step.output()].len();
            match step {
                Step::Conv {
                    conv,
                    input,
                    residual,
                    ..
                } => {
                    let plan = shapes.plans[i].as_ref().expect("a conv step has a plan");
                    let c = &self.convs[*conv];
                    let x = &self.slots[slot[*input]][..shapes.values[*input].len()];
                    // The output's buffer holds the shortcut when the arena gave it the shortcut's slot.
                    let epilogue = match residual {
                        Some(r) if slot[*r] == out_slot => {
                            Epilogue::bias_onto_output(&c.bias, c.relu)
                        }
                        _ => {
                            let residual = residual.map(|r| &self.slots[slot[r]][..out_len]);
                            Epilogue::bias(&c.bias, residual, c.relu)
                        }
                    };
                    plan.forward_with(
                        x,
                        &c.weight,
                        c.prepared_for(plan),
                        epilogue,
                        &mut out[..out_len],
                        &mut self.workspace,
                    );
                }
                Step::MaxPool { input, .. } => {
                    let g = shapes.pools[i]
                        .as_ref()
                        .expect("a pool step has a geometry");
                    let s = shapes.values[*input];
                    max_pool_infer(g, s.n, &self.slots[slot[*input]], &mut out);
                }
            }
            if let Some(observe) = observe.as_mut() {
                observe(step.output(), &out[..out_len]);
            }
            self.slots[out_slot] = out;
            lap(i, &mut times);
        }
        self.classify(xs);
        lap(self.steps.len(), &mut times);
        let rows = xs.n * self.config.num_classes;
        Ok(&self.logits[..rows])
    }

    /// The global average pool and the classifier over the last value of a pass for input `xs` (in its arena
    /// slot, as f32), into `self.logits` (`[n, classes]`); the f32 and the int8 passes end with it.
    fn classify(&mut self, xs: Shape4) {
        let shapes = &self.shapes[&xs];
        let last = *shapes.values.last().expect("a network has values");
        let slot = *shapes.arena.slot.last().expect("a network has values");
        let features = &self.slots[slot][..last.len()];
        let classes = self.config.num_classes;
        global_avg_pool_forward(last.n, last.h * last.w, last.c, features, &mut self.pooled);
        linear_forward(
            last.n,
            last.c,
            classes,
            &self.pooled,
            &self.fc_weight,
            &self.fc_bias,
            &mut self.logits,
        );
    }

    /// Times each step of the forward pass over the NCHW input `x` of shape `xs` (median of `iters` passes after one warm-up): one
    /// line per step, its milliseconds and GFLOP/s, and `(algorithm, seconds, multiply-adds)` per convolution
    /// for the per-algorithm sums (`resnet bench --plan`).
    pub fn profile(&mut self, x: &[f32], xs: Shape4, iters: usize) -> Result<Vec<ProfiledStep>> {
        let lines = self.plan_lines(xs)?;
        let steps = self.steps.len();
        let seconds = crate::kernels::on_pool(|| {
            median_step_seconds(steps, iters, |t| self.run(x, xs, t, None).map(|_| ()))
        })?;
        let plans = &self.shapes[&xs].plans;
        Ok(seconds
            .iter()
            .enumerate()
            .map(|(i, &seconds)| match plans.get(i) {
                Some(Some(p)) => {
                    ProfiledStep::conv(lines[i].clone(), p.forward.to_string(), seconds, p, xs.n)
                }
                Some(None) => ProfiledStep::other(lines[i].clone(), "max pool", seconds),
                None => ProfiledStep::pool_and_classifier(seconds),
            })
            .collect())
    }

    /// One line per step for input `xs`: the layer, its geometry, the algorithm, what its epilogue adds, and the
    /// arena buffer it writes; then the arena and the prepared weights in MiB (`resnet summary --plan`).
    pub fn plan_lines(&mut self, xs: Shape4) -> Result<Vec<String>> {
        self.shapes_for(xs)?;
        let shapes = &self.shapes[&xs];
        let mut lines = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            let out = shapes.values[step.output()];
            let buffer = shapes.arena.slot[step.output()];
            let mut line = String::new();
            match step {
                Step::Conv { conv, residual, .. } => {
                    let c = &self.convs[*conv];
                    let p = shapes.plans[i].expect("a conv step has a plan");
                    let g = p.geom;
                    let epilogue = format!(
                        "bias{}{}",
                        if residual.is_some() {
                            " + shortcut"
                        } else {
                            ""
                        },
                        if c.relu { ", relu" } else { "" }
                    );
                    let over = residual.is_some_and(|r| shapes.arena.slot[r] == buffer);
                    let _ = write!(
                        line,
                        "  {:<22} {g} {:<26} {:<24} -> buffer {buffer}{}",
                        c.name,
                        p.forward.to_string(),
                        epilogue,
                        if over { ", over the shortcut" } else { "" }
                    );
                }
                Step::MaxPool { kernel, stride, .. } => {
                    let _ = write!(
                        line,
                        "  {:<22} {kernel}x{kernel} /{stride} max pool to {}x{}, {} channels{:>33} -> buffer {buffer}",
                        self.config.naming.stateless()[1],
                        out.h,
                        out.w,
                        out.c,
                        ""
                    );
                }
            }
            lines.push(line);
        }
        let mib = |floats: usize| floats as f64 * 4.0 / (1 << 20) as f64;
        let arena: usize = shapes.arena.lens.iter().sum();
        let prepared: usize = self
            .convs
            .iter()
            .map(|c| {
                c.prepared
                    .iter()
                    .map(|(_, _, p)| p.len())
                    .sum::<usize>()
                    .max(c.weight.len())
            })
            .sum();
        lines.push(format!(
            "  arena: {} buffers, {:.1} MiB for batch {} (the longest value each holds); kernels' workspace {:.1} MiB; weights as the kernels read them {:.1} MiB",
            shapes.arena.lens.len(),
            mib(arena),
            xs.n,
            mib(shapes.workspace),
            mib(prepared)
        ));
        Ok(lines)
    }
}

/// What evaluation and test-time augmentation need of a network: logits for a batch. The compiled network, and
/// the training path's [`ResNet`] in its current mode (training's own evaluations).
pub trait Classifier {
    /// Number of classes (the logits' row length).
    fn classes(&self) -> usize;
    /// The logits `[n, classes]` of the NCHW batch `x` of shape `xs`.
    fn logits(&mut self, x: &[f32], xs: Shape4) -> Result<&[f32]>;
}

impl Classifier for CompiledNet {
    fn classes(&self) -> usize {
        self.config.num_classes
    }

    fn logits(&mut self, x: &[f32], xs: Shape4) -> Result<&[f32]> {
        self.forward(x, xs)
    }
}

impl Classifier for ResNet {
    fn classes(&self) -> usize {
        self.config.num_classes
    }

    fn logits(&mut self, x: &[f32], xs: Shape4) -> Result<&[f32]> {
        self.forward(x, xs, crate::nn::Buffers::Own)
    }
}

/// One step of [`CompiledNet::profile`] (or [`int8::QuantNet::profile`]).
pub struct ProfiledStep {
    /// The step's plan line ([`CompiledNet::plan_lines`]).
    pub line: String,
    /// Its algorithm (a convolution's forward algorithm, or what else it is).
    pub algo: String,
    /// Median seconds.
    pub seconds: f64,
    /// Multiply-adds of the direct convolution (0 for the other steps).
    pub macs: f64,
}

impl ProfiledStep {
    /// A convolution of plan `p` at batch `n`, run by `algo`.
    fn conv(line: String, algo: String, seconds: f64, p: &ConvPlan, n: usize) -> ProfiledStep {
        let g = &p.geom;
        let macs = (n * g.oh * g.ow * g.cout * g.kh * g.kw * g.cin) as f64;
        ProfiledStep {
            line,
            algo,
            seconds,
            macs,
        }
    }

    /// A step without multiply-adds.
    fn other(line: String, algo: &str, seconds: f64) -> ProfiledStep {
        ProfiledStep {
            line,
            algo: algo.to_string(),
            seconds,
            macs: 0.0,
        }
    }

    /// The last one: the global average pool and the classifier.
    fn pool_and_classifier(seconds: f64) -> ProfiledStep {
        let line = format!("  {:<22} global average pool + classifier", "avgpool, fc");
        ProfiledStep::other(line, "pool + classifier", seconds)
    }
}

/// Each step's median seconds over `iters` passes (after one untimed pass) of `pass`, which adds each step's
/// seconds to its slot of the `steps + 1` it is given (the last: the average pool and the classifier).
fn median_step_seconds(
    steps: usize,
    iters: usize,
    mut pass: impl FnMut(Option<&mut [f64]>) -> Result<()>,
) -> Result<Vec<f64>> {
    pass(None)?;
    let mut runs = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let mut t = vec![0.0; steps + 1];
        pass(Some(&mut t))?;
        runs.push(t);
    }
    Ok((0..=steps)
        .map(|i| {
            let mut t: Vec<f64> = runs.iter().map(|r| r[i]).collect();
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}

/// Grows `buf` to at least `len` floats.
fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

#[cfg(test)]
mod tests;
