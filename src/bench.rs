//! The measurements of `resnet bench` ([`crate::commands::bench`]): the chapter's ResNet-18 (or torchvision's
//! models) timed the way `tools/bench_pytorch.py` times PyTorch — training step (forward, loss, backward, Adam)
//! and eval-mode inference in images/s, batch-1 latency, peak memory.

use crate::compiled::{CompiledNet, ProfiledStep};
use crate::kernels::conv::ConvGeom;
use crate::nn::{ArchName, Buffers, ResNet, ResNetConfig};
use crate::optim::{Optimizer, OptimizerKind, OptimizerOptions};
use crate::{outln, Result, Shape4};
use serde::Serialize;
use std::time::Instant;

/// The network `bench --arch` times: the chapter's for one channel and 10 classes, torchvision's for RGB
/// images and ImageNet's 1000 classes.
pub fn bench_config(arch: ArchName) -> ResNetConfig {
    match arch {
        ArchName::Chapter => ResNetConfig::chapter(1, 10),
        _ => ResNetConfig::named(arch, 3, 1000),
    }
}

/// One measured configuration.
#[derive(Serialize, Debug, Clone)]
pub struct BenchResult {
    /// Configuration name, e.g. `train96` or `latency224`.
    pub name: String,
    /// Images per iteration.
    pub batch: usize,
    /// The network (`chapter`, `resnet50`, …).
    pub arch: String,
    /// Channels of the input images.
    pub channels: usize,
    /// Side of the square input images, pixels (input `[batch, channels, size, size]`).
    pub size: usize,
    /// Timed iterations.
    pub iters: usize,
    /// Median time of one iteration, seconds.
    pub median_s: f64,
    /// Fastest iteration, seconds.
    pub min_s: f64,
    /// Slowest iteration, seconds.
    pub max_s: f64,
    /// Throughput at the median: `batch / median_s`.
    pub images_per_s: f64,
    /// Multiply-accumulates of one forward pass over the batch.
    pub forward_macs: u64,
    /// Achieved: training counts 6 × forward MACs (forward 2, backward 4 FLOPs per MAC), inference 2 ×.
    pub gflops: f64,
    /// Peak resident memory of the process so far, MiB.
    pub peak_rss_mib: f64,
}

impl BenchResult {
    /// A configuration on input `xs` (square: `xs.h` is the size) timed `iters` times as `(median, min, max)`
    /// seconds, `flops_per_mac` FLOPs per forward MAC; the process's peak memory so far.
    fn measured(
        name: &str,
        arch: String,
        xs: Shape4,
        iters: usize,
        (median, min, max): (f64, f64, f64),
        macs: u64,
        flops_per_mac: f64,
    ) -> BenchResult {
        BenchResult {
            name: name.to_string(),
            arch,
            channels: xs.c,
            batch: xs.n,
            size: xs.h,
            iters,
            median_s: median,
            min_s: min,
            max_s: max,
            images_per_s: xs.n as f64 / median,
            forward_macs: macs,
            gflops: flops_per_mac * macs as f64 / median / 1e9,
            peak_rss_mib: peak_rss_mib(),
        }
    }
}

/// Multiply-accumulates of one forward pass of `net` on input `xs` (convolutions and the final Linear).
pub fn forward_macs(net: &ResNet, xs: Shape4) -> Result<u64> {
    let convs: u64 = net
        .conv_plans(xs)?
        .iter()
        .map(|(_, p)| conv_macs(&p.geom, p.batch))
        .sum();
    Ok(convs + (xs.n * net.fc.in_features * net.fc.out_features) as u64)
}

/// Multiply-accumulates of one convolution's forward pass over `n` images.
fn conv_macs(g: &ConvGeom, n: usize) -> u64 {
    (n * g.oh * g.ow * g.cout * g.kh * g.kw * g.cin) as u64
}

/// `bench --plan`: every convolution of `config` at `batch`×`size`², its plan, and its forward (and, when
/// `train`, backward) pass timed alone: milliseconds and GFLOP/s per layer, then per forward algorithm.
pub fn plan_report(
    config: &ResNetConfig,
    name: &str,
    train: bool,
    batch: usize,
    size: usize,
    iters: usize,
) -> Result<()> {
    let net = ResNet::new(config.clone(), 0)?;
    let xs = Shape4::new(batch, config.in_channels, size, size);
    if !train {
        let steps = CompiledNet::new(&net, Some(xs))?.profile(&input(xs), xs, iters)?;
        steps_report(name, "the compiled network", xs, &steps);
        return Ok(());
    }
    let plans = net.conv_plans(xs)?;
    outln!(
        "{name}: {} convolutions at batch {batch}, {size}×{size}",
        plans.len()
    );
    let mut by_algo = KindSums::default();
    for (index, (layer, plan)) in plans.iter().enumerate() {
        let g = &plan.geom;
        let fill = |len: usize, k: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * k) % 255) as f32 / 255.0 - 0.5)
                .collect()
        };
        let x = fill(batch * g.h * g.w * g.cin, 7919);
        let w = fill(g.patch_len() * g.cout, 104729);
        let mut y = vec![0.0f32; batch * g.oh * g.ow * g.cout];
        let mut ws = vec![0.0f32; plan.workspace_len()];
        let macs = conv_macs(g, batch) as f64;
        let (fwd, _, _) = time_it(1, iters, || {
            plan.forward(&x, &w, &[], &mut y, &mut ws);
            Ok(())
        })?;
        let mut line = format!(
            "  {layer:<22} {plan}\n  {:<22} fwd {:8.2} ms {:6.1} GFLOP/s",
            "",
            fwd * 1e3,
            2.0 * macs / fwd / 1e9
        );
        let mut dw = vec![0.0f32; w.len()];
        let mut dx = vec![0.0f32; x.len()];
        // The stem's input gradient is never computed in training (nothing upstream learns).
        let stem = index == 0;
        let (bwd, _, _) = time_it(1, iters, || {
            let dx = (!stem).then_some(&mut dx[..]);
            plan.backward(&x, &w, &y, &mut dw, &mut [], dx, &mut ws);
            Ok(())
        })?;
        line += &format!(
            "   bwd {:8.2} ms {:6.1} GFLOP/s",
            bwd * 1e3,
            4.0 * macs / bwd / 1e9
        );
        outln!("{line}");
        by_algo.add(plan.forward.to_string(), fwd + bwd, 6.0 * macs);
    }
    outln!("  by forward algorithm (forward + backward):");
    by_algo.print("of the convolutions' time");
    let (total_s, total_flop) = by_algo.total();
    outln!(
        "  all convolutions: {:.1} ms, {:.1} GFLOP/s",
        total_s * 1e3,
        total_flop / total_s / 1e9
    );
    Ok(())
}

/// `bench --plan` for an inference configuration: each step of a compiled network (`what`: f32, or a quantized
/// file's) timed inside its forward pass (the weights prepared, the epilogues fused, the activations in the
/// arena), then per algorithm.
pub fn steps_report(name: &str, what: &str, xs: Shape4, steps: &[ProfiledStep]) {
    outln!(
        "{name}: {what}, {} steps at batch {}, {}×{}, each timed inside the forward pass",
        steps.len(),
        xs.n,
        xs.h,
        xs.w
    );
    let mut by_kind = KindSums::default();
    for s in steps {
        let rate = if s.macs > 0.0 {
            format!("{:6.1} GFLOP/s", 2.0 * s.macs / s.seconds / 1e9)
        } else {
            String::new()
        };
        outln!("{}  {:7.3} ms {rate}", s.line, s.seconds * 1e3);
        by_kind.add(s.algo.clone(), s.seconds, 2.0 * s.macs);
    }
    outln!("  by step kind:");
    by_kind.print("of the pass");
    let (total, flop) = by_kind.total();
    outln!(
        "  the whole pass: {:.2} ms, {:.1} GFLOP/s (direct-convolution multiply-adds)",
        total * 1e3,
        flop / total / 1e9
    );
}

/// `bench --plan --weights FILE`: [`steps_report`] for a model file's network as it loads (f32 or int8).
pub fn loaded_steps_report(
    net: &mut crate::compiled::loaded::InferenceNet,
    name: &str,
    batch: usize,
    size: usize,
    iters: usize,
) -> Result<()> {
    let xs = Shape4::new(batch, net.config().in_channels, size, size);
    let steps = net.profile(&input(xs), xs, iters)?;
    let what = format!("the file's network ({})", net.precision());
    steps_report(name, &what, xs, &steps);
    Ok(())
}

/// Seconds and floating-point operations summed per kind (an algorithm), in the order the kinds first came.
#[derive(Default)]
struct KindSums(Vec<(String, f64, f64)>);

impl KindSums {
    fn add(&mut self, kind: String, seconds: f64, flop: f64) {
        match self.0.iter_mut().find(|k| k.0 == kind) {
            Some(k) => {
                k.1 += seconds;
                k.2 += flop;
            }
            None => self.0.push((kind, seconds, flop)),
        }
    }

    /// All kinds' seconds and operations.
    fn total(&self) -> (f64, f64) {
        self.0
            .iter()
            .fold((0.0, 0.0), |(s, f), k| (s + k.1, f + k.2))
    }

    /// One line per kind: time, GFLOP/s (blank for kinds without multiply-adds) and share of the total time.
    fn print(&self, share_of: &str) {
        let (total, _) = self.total();
        for (kind, seconds, flop) in &self.0 {
            let rate = if *flop > 0.0 {
                format!("{:6.1} GFLOP/s", flop / seconds / 1e9)
            } else {
                " ".repeat(14)
            };
            outln!(
                "    {kind:<28} {:8.2} ms {rate}  {:4.1} % {share_of}",
                seconds * 1e3,
                100.0 * seconds / total
            );
        }
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`; 0 where unavailable).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn input(xs: Shape4) -> Vec<f32> {
    (0..xs.len())
        .map(|i| ((i * 7919) % 256) as f32 / 255.0)
        .collect()
}

/// Times `f` after `warmup` calls: `(median, min, max)` seconds over `iters` calls.
fn time_it(
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, f64, f64)> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok((t[t.len() / 2], t[0], t[t.len() - 1]))
}

/// Measures one configuration of the network `config` describes: `train` (forward, loss, backward, Adam step)
/// or inference, at `batch`×channels×`size`².
pub fn bench_one(
    config: &ResNetConfig,
    name: &str,
    train: bool,
    batch: usize,
    size: usize,
    warmup: usize,
    iters: usize,
) -> Result<BenchResult> {
    let mut net = ResNet::new(config.clone(), 0)?;
    let xs = Shape4::new(batch, config.in_channels, size, size);
    let x = input(xs);
    let labels: Vec<usize> = (0..batch).map(|i| i % config.num_classes).collect();
    let macs = forward_macs(&net, xs)?;
    let (median, min, max) = if train {
        let mut opt: Box<dyn Optimizer> =
            OptimizerKind::Adam.build(&OptimizerOptions::default(), &net.param_lens())?;
        net.set_train(true);
        // On a pool worker, as `resnet train`'s steps run (see `kernels::on_pool`).
        time_it(warmup, iters, || {
            crate::kernels::on_pool(|| {
                net.forward(&x, xs, Buffers::Own)?;
                net.loss(&labels)?;
                net.backward(&x, false, None);
                opt.step_net(&mut net, 1e-3);
                Ok(())
            })
        })?
    } else {
        // Inference runs the network compiled for it (what predict, eval and serve run).
        let mut compiled = CompiledNet::new(&net, Some(xs))?;
        time_it(warmup, iters, || compiled.forward(&x, xs).map(|_| ()))?
    };
    let flops_per_mac = if train { 6.0 } else { 2.0 };
    Ok(BenchResult::measured(
        name,
        config.name(),
        xs,
        iters,
        (median, min, max),
        macs,
        flops_per_mac,
    ))
}

/// An inference configuration timed on a model file's network as it loads (`bench --weights FILE`: f32, or
/// int8 from a quantized file): the same measurement as [`bench_one`]'s inference, `arch` naming the precision.
pub fn bench_loaded(
    net: &mut crate::compiled::loaded::InferenceNet,
    name: &str,
    batch: usize,
    size: usize,
    warmup: usize,
    iters: usize,
) -> Result<BenchResult> {
    let config = net.config().clone();
    let xs = Shape4::new(batch, config.in_channels, size, size);
    let macs = forward_macs(&ResNet::new(config.clone(), 0)?, xs)?;
    net.reserve(xs)?;
    let x = input(xs);
    let (median, min, max) = time_it(warmup, iters, || net.forward(&x, xs).map(|_| ()))?;
    let arch = format!("{} {}", config.name(), net.precision());
    Ok(BenchResult::measured(
        name,
        arch,
        xs,
        iters,
        (median, min, max),
        macs,
        2.0,
    ))
}

/// Every configuration: name, training (or inference), input side. Latency configurations run batch 1.
pub const CONFIGS: [(&str, bool, usize); 7] = [
    ("train28", true, 28),
    ("train96", true, 96),
    ("infer28", false, 28),
    ("infer96", false, 96),
    ("train224", true, 224),
    ("infer224", false, 224),
    ("latency224", false, 224),
];
