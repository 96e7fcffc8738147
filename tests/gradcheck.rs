//! Finite-difference gradient checks of every layer's backward pass, through the public API, on tiny shapes.
//!
//! Each check differentiates a scalar objective `L = Σ out·R` (a fixed random `R`, accumulated in f64; for the
//! loss, the loss itself) with central differences `(L(v + h) − L(v − h)) / ((v + h) − (v − h))` — the divisor
//! is the step f32 actually took — for a random subset of at most [`SAMPLES`] coordinates of each input or
//! parameter tensor, and compares with the analytic gradient the layer's `backward` left for the same buffer
//! (given `R` as the output gradient). `cargo test --test gradcheck -- --nocapture` prints, per check, the
//! largest relative error (over coordinates whose gradient is ≥ 1e-2), the largest |Δ|, and |Δ| / tolerance.
//!
//! Tolerance: `|fd − analytic| ≤ REL·max(|analytic|, |fd|) + ABS`, `REL = 2e-2`, `ABS = 2e-3`, for gradients of
//! order 0.1–30 here. Everything runs in f32, so `L` carries rounding noise that the division by `2h` magnifies,
//! while the central difference's own truncation error is `O(h²)`. Measured with this file's seeds: convs,
//! linear, pools and the loss agree to ≤ 3.7e-4 relative (max |Δ| ≤ 1.1e-5); BN to 5.4e-4 and BN + ReLU to
//! 1.3e-3 (max |Δ| ≤ 1.1e-4) — 35× or more inside the tolerance. Residual blocks and the network, whose batch
//! norms see few values per channel and amplify rounding, and where kinks intrude (below), reach 0.96–0.99 of
//! the tolerance on their worst coordinate and stay under 1e-3 relative on most. A wrong index, a missing term
//! or a transposed weight gives errors of order the gradient itself, far above the tolerance.
//!
//! Kinks. ReLU, the residual join's ReLU and max pooling are only piecewise smooth. Max-pool inputs here are
//! distinct values spaced wider than `2h` and plain-ReLU inputs stay further than `h` from 0, so no kink is
//! crossed ([`SMOOTH`]: one step, every coordinate must pass). In BN + ReLU, residual blocks and the network,
//! perturbing a weight moves every unit after it, and one of dozens of ReLU inputs lying within the step of 0
//! is the rule (measured: a conv1 weight of the 1×1-shortcut block had fd −0.586 at h = 1e-2, −0.335 at 3e-3,
//! −0.01492 at 1e-3, −0.01637 at 3e-4 against the analytic −0.01504). A central difference converges to the
//! true derivative once the step is below the distance to the nearest kink, and when a kink lies closer than
//! every step, one of the one-sided differences is the slope of the analytic gradient's piece; a wrong analytic
//! gradient matches none of them. So [`KINKED`] checks walk down a ladder of steps and pass a coordinate at the
//! first central (or, failing that, one-sided) difference that agrees; each printed line counts the coordinates
//! that needed more than the first central difference.
//!
//! The whole network is the one place where that is not always enough: perturbing a stem weight moves every
//! unit of the network, and with batch norms over few values the f32 evaluation itself gets noisy. Sweeping
//! 12 seeds each for several inputs (widths [2, 4, 4, 4], 370 coordinates per run) left, after the ladder,
//! 0–3 coordinates per run that no difference resolved at 3×1×40×40 (at most 2 of the stem weight's 20, at most
//! 1 in any other tensor); 0–6 at 2×1×48×48, 0–9 at 2×1×64×64, and up to 35 at 3×1×16×16, where the last two
//! stages batch-normalize only 3 values per channel. The network check therefore uses 3×1×40×40 (the last stage
//! still normalizes 12 values per channel), with seed 1 (0 unresolved), and tolerates at most a quarter of one
//! tensor's coordinates and 2% of all of them, each printed; a wiring error (a gradient routed to the wrong
//! buffer, a missing shortcut term) fails every coordinate of a tensor.
//!
//! Layers keep state between forward calls (train-mode BN updates its running statistics), but the train-mode
//! output depends only on the batch, which is the function differentiated here.

use rand::seq::index::sample;
use rand::Rng;
use resnet::kernels::loss::softmax_cross_entropy;
use resnet::kernels::pointwise::{relu_backward, relu_forward};
use resnet::kernels::pool::{
    global_avg_pool_backward, global_avg_pool_forward, max_pool_backward, max_pool_forward,
    PoolGeom,
};
use resnet::nn::arch::BlockSpec;
use resnet::nn::{
    BatchNorm2d, BlockKind, BnStore, Buffers, Conv2d, ConvStore, Grad, InitRng, Linear, Naming,
    ResNet, ResNetConfig, Residual, SeedableRng, Stem, Workspace,
};
use resnet::tensor::nchw_to_nhwc;
use resnet::Shape4;

/// Coordinates checked per tensor (all of them when the tensor is smaller).
const SAMPLES: usize = 20;
/// Relative part of the tolerance.
const REL: f64 = 2e-2;
/// Absolute part of the tolerance.
const ABS: f64 = 2e-3;
/// The step for functions that are smooth on the whole interval probed.
const SMOOTH: &[f32] = &[1e-2];
/// Steps tried in turn where a ReLU kink can lie within the step (BN + ReLU, residual blocks, the network).
const KINKED: &[f32] = &[3e-3, 1e-3, 3e-4, 1e-4];

fn tol(a: f64, b: f64) -> f64 {
    REL * a.abs().max(b.abs()) + ABS
}

fn rng(seed: u64) -> InitRng {
    InitRng::seed_from_u64(seed)
}

fn uniform(rng: &mut InitRng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

/// `Σ a·b` in f64.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// A stable per-check seed, so each check samples its own coordinates.
fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// What one check measured, over the coordinates that passed, each at the difference that passed it.
#[derive(Debug, Default)]
struct Stats {
    checked: usize,
    /// Coordinates that needed more than the first central difference (a kink lay within the step).
    ladder: usize,
    /// Coordinates no difference resolved (allowed only where [`Fd::max_misses`] says so).
    misses: usize,
    /// Largest |fd − analytic|.
    max_abs: f64,
    /// Largest |fd − analytic| / max(|analytic|, |fd|) over coordinates whose gradient is at least 1e-2.
    max_rel: f64,
    /// Largest |fd − analytic| / tolerance.
    worst: f64,
    /// Largest |analytic| seen.
    max_grad: f64,
}

/// One finite-difference check: its name, steps, how many coordinates, what it may expect.
struct Fd {
    name: String,
    steps: &'static [f32],
    samples: usize,
    /// The gradient is expected to be non-trivial: guards against a vacuous pass where everything sits below
    /// the absolute tolerance. Off for conv biases feeding a batch norm (their true gradient is 0).
    nonzero: bool,
    /// Coordinates that no difference resolves and that are tolerated (the whole network only).
    max_misses: usize,
}

impl Fd {
    fn smooth(name: impl Into<String>) -> Fd {
        Fd {
            name: name.into(),
            steps: SMOOTH,
            samples: SAMPLES,
            nonzero: true,
            max_misses: 0,
        }
    }
    fn kinked(name: impl Into<String>) -> Fd {
        Fd {
            steps: KINKED,
            ..Fd::smooth(name)
        }
    }
    fn samples(self, samples: usize) -> Fd {
        Fd { samples, ..self }
    }
    fn nonzero(self, nonzero: bool) -> Fd {
        Fd { nonzero, ..self }
    }
    fn max_misses(self, max_misses: usize) -> Fd {
        Fd { max_misses, ..self }
    }

    /// Checks `analytic` (the gradient of L w.r.t. the tensor whose current values are `values`).
    /// `eval(i, v)` must set coordinate `i` to `v`, return L, and restore the coordinate.
    fn run(
        &self,
        values: &[f32],
        analytic: &[f32],
        mut eval: impl FnMut(usize, f32) -> f64,
    ) -> Stats {
        let name = &self.name;
        assert_eq!(values.len(), analytic.len(), "{name}: gradient length");
        let mut r = rng(seed_of(name));
        let mut idx = sample(&mut r, values.len(), self.samples.min(values.len())).into_vec();
        idx.sort_unstable();
        let mut st = Stats::default();
        let mut failures = Vec::new();
        for i in idx {
            let x0 = values[i];
            let an = analytic[i] as f64;
            let mut tries = Vec::new();
            let mut passed = None;
            let mut l0 = None;
            for (k, &h) in self.steps.iter().enumerate() {
                let (xp, xm) = (x0 + h, x0 - h);
                let (lp, lm) = (eval(i, xp), eval(i, xm));
                let fd = (lp - lm) / (xp as f64 - xm as f64);
                tries.push(format!("{fd:.6} at h={h:.0e}"));
                if (fd - an).abs() <= tol(an, fd) {
                    passed = Some((k > 0, fd));
                    break;
                }
                if self.steps.len() > 1 {
                    // A kink closer than the step: the central difference averages the slopes on its two
                    // sides, while the analytic gradient is the slope of one of them.
                    let l0 = *l0.get_or_insert_with(|| eval(i, x0));
                    let fp = (lp - l0) / (xp as f64 - x0 as f64);
                    let fm = (l0 - lm) / (x0 as f64 - xm as f64);
                    tries.push(format!("(one-sided {fp:.6} / {fm:.6})"));
                    if let Some(f) = [fp, fm].into_iter().find(|&f| (f - an).abs() <= tol(an, f)) {
                        passed = Some((true, f));
                        break;
                    }
                }
            }
            let Some((ladder, fd)) = passed else {
                failures.push(format!(
                    "{name}[{i}]: analytic {an:.6}, finite differences {} (tolerance {REL:.0e}·|g| + {ABS:.0e})",
                    tries.join(", ")
                ));
                continue;
            };
            let err = (fd - an).abs();
            st.checked += 1;
            st.ladder += ladder as usize;
            st.max_abs = st.max_abs.max(err);
            st.worst = st.worst.max(err / tol(an, fd));
            st.max_grad = st.max_grad.max(an.abs());
            let mag = an.abs().max(fd.abs());
            if mag >= 1e-2 {
                st.max_rel = st.max_rel.max(err / mag);
            }
        }
        st.misses = failures.len();
        let mut notes = String::new();
        if st.ladder > 0 {
            notes += &format!("  ({} past the first step)", st.ladder);
        }
        if st.misses > 0 {
            notes += &format!("  ({} UNRESOLVED)", st.misses);
        }
        println!(
            "gradcheck {name:<38} {:>2} coords  max rel err {:.2e}  max|Δ| {:.2e}  worst |Δ|/tol {:.3}  max|g| {:.2e}{notes}",
            st.checked, st.max_rel, st.max_abs, st.worst, st.max_grad,
        );
        if st.misses <= self.max_misses {
            for f in &failures {
                println!("    tolerated: {f}");
            }
        } else {
            panic!("{}", failures.join("\n"));
        }
        if self.nonzero {
            assert!(
                st.max_grad > 10.0 * ABS,
                "{name}: largest sampled gradient {:.2e} is too small for the check to mean anything",
                st.max_grad
            );
        }
        st
    }
}

// ---------------------------------------------------------------------------------------------------- conv

/// `(in, out, kernel, stride, padding)`, input shape, expected output shape.
fn conv_case(
    name: &str,
    (cin, cout, k, s, p): (usize, usize, usize, usize, usize),
    xs: Shape4,
    want: Shape4,
) {
    let mut r = rng(seed_of(name));
    let mut conv = Conv2d::new(cin, cout, k, s, p, &mut r);
    let ys = conv.output_shape(xs).expect("kernel fits");
    assert_eq!(ys, want, "{name}: output shape");
    // Drawn in PyTorch's NCHW order and converted at the edge, as the model's users do.
    let x = nchw_to_nhwc(&uniform(&mut r, xs.len(), -1.0, 1.0), xs);
    let dy = uniform(&mut r, ys.len(), -1.0, 1.0);
    let mut ws = Workspace::default();
    conv.forward(&x, xs, ConvStore::Out, &mut ws);
    conv.backward(&x, &dy, Some(Buffers::Own), &mut ws);
    let gx = conv.grad_input.clone();
    let (gw, gb) = (conv.grad_weight.clone(), conv.grad_bias.clone());

    Fd::smooth(format!("{name} input")).run(&x, &gx, |i, v| {
        let mut xv = x.clone();
        xv[i] = v;
        conv.forward(&xv, xs, ConvStore::Out, &mut ws);
        dot(&conv.out, &dy)
    });
    let w0 = conv.weight().to_vec();
    Fd::smooth(format!("{name} weight")).run(&w0, &gw, |i, v| {
        conv.weight_mut()[i] = v;
        conv.forward(&x, xs, ConvStore::Out, &mut ws);
        conv.weight_mut()[i] = w0[i];
        dot(&conv.out, &dy)
    });
    let b0 = conv.bias.clone();
    Fd::smooth(format!("{name} bias")).run(&b0, &gb, |i, v| {
        conv.bias[i] = v;
        conv.forward(&x, xs, ConvStore::Out, &mut ws);
        conv.bias[i] = b0[i];
        dot(&conv.out, &dy)
    });
}

#[test]
fn conv3x3_stride1_pad1() {
    let (xs, ys) = (Shape4::new(2, 3, 5, 6), Shape4::new(2, 4, 5, 6));
    conv_case("conv3x3 s1 p1", (3, 4, 3, 1, 1), xs, ys);
}

#[test]
fn conv7x7_stride2_pad3() {
    let (xs, ys) = (Shape4::new(2, 2, 9, 11), Shape4::new(2, 3, 5, 6));
    conv_case("conv7x7 s2 p3", (2, 3, 7, 2, 3), xs, ys);
}

#[test]
fn conv1x1_stride2() {
    let (xs, ys) = (Shape4::new(2, 3, 7, 7), Shape4::new(2, 4, 4, 4));
    conv_case("conv1x1 s2", (3, 4, 1, 2, 0), xs, ys);
}

#[test]
fn conv1x1_stride1_pointwise_path() {
    // 1×1, stride 1, no padding: the input is its own column matrix (no im2col).
    let (xs, ys) = (Shape4::new(2, 5, 3, 4), Shape4::new(2, 3, 3, 4));
    conv_case("conv1x1 s1", (5, 3, 1, 1, 0), xs, ys);
}

#[test]
fn conv3x3_stride2_pad1_odd_sizes() {
    let (xs, ys) = (Shape4::new(2, 3, 7, 9), Shape4::new(2, 5, 4, 5));
    conv_case("conv3x3 s2 p1 odd", (3, 5, 3, 2, 1), xs, ys);
}

// ---------------------------------------------------------------------------------------------- batch norm

fn bn_case(name: &str, relu: bool) {
    let xs = Shape4::new(2, 3, 3, 4);
    let mut r = rng(seed_of(name));
    let mut bn = BatchNorm2d::new(xs.c, relu);
    bn.weight = uniform(&mut r, xs.c, 0.5, 1.5);
    bn.bias = uniform(&mut r, xs.c, -0.5, 0.5);
    // Per-channel offsets and scales, so the statistics are not the trivial ones.
    let x: Vec<f32> = (0..xs.len())
        .map(|i| {
            let ch = (i % xs.c) as f32;
            (ch - 1.0) * 0.7 + (1.0 + 0.5 * ch) * r.random_range(-1.0..1.0f32)
        })
        .collect();
    let dy = uniform(&mut r, xs.len(), -1.0, 1.0);
    bn.forward(&x, xs, true, BnStore::Out);
    bn.backward(&x, Grad::Own(&dy));
    let gx = bn.grad_input.clone();
    let (gw, gb) = (bn.grad_weight.clone(), bn.grad_bias.clone());
    let fd = |what: &str| {
        let n = format!("{name} {what}");
        if relu {
            Fd::kinked(n)
        } else {
            Fd::smooth(n)
        }
    };

    fd("input").run(&x, &gx, |i, v| {
        let mut xv = x.clone();
        xv[i] = v;
        bn.forward(&xv, xs, true, BnStore::Out);
        dot(&bn.out, &dy)
    });
    let w0 = bn.weight.clone();
    fd("weight").run(&w0, &gw, |i, v| {
        bn.weight[i] = v;
        bn.forward(&x, xs, true, BnStore::Out);
        bn.weight[i] = w0[i];
        dot(&bn.out, &dy)
    });
    let b0 = bn.bias.clone();
    fd("bias").run(&b0, &gb, |i, v| {
        bn.bias[i] = v;
        bn.forward(&x, xs, true, BnStore::Out);
        bn.bias[i] = b0[i];
        dot(&bn.out, &dy)
    });
}

#[test]
fn batch_norm_train() {
    bn_case("bn train", false);
}

#[test]
fn batch_norm_train_fused_relu() {
    bn_case("bn+relu train", true);
}

// ------------------------------------------------------------------------------------------- pools, relu

#[test]
fn max_pool_3_2_1() {
    let (n, c, h, w) = (2, 3, 7, 8);
    let g = PoolGeom::new(c, 3, 2, 1, h, w).unwrap();
    assert_eq!((g.oh, g.ow), (4, 4));
    let mut r = rng(11);
    // Distinct values 0.05 apart (> 2h), shuffled: no perturbation can change a window's winner.
    let len = n * h * w * c;
    let mut x: Vec<f32> = (0..len)
        .map(|i| (i as f32 - len as f32 / 2.0) * 0.05)
        .collect();
    for i in (1..len).rev() {
        x.swap(i, r.random_range(0..=i));
    }
    let out_len = n * g.oh * g.ow * c;
    let dy = uniform(&mut r, out_len, -1.0, 1.0);
    let mut y = vec![0.0; out_len];
    let mut am = vec![0u32; out_len];
    max_pool_forward(&g, n, &x, &mut y, &mut am);
    let mut gx = vec![0.0; len];
    max_pool_backward(&g, n, &dy, &am, &mut gx);
    let mut pool = |xv: &[f32]| {
        max_pool_forward(&g, n, xv, &mut y, &mut am);
        dot(&y, &dy)
    };
    // Most inputs win no window (gradient 0): check a sample of all inputs, then of the winners only.
    Fd::smooth("maxpool 3/2/1 input (all)")
        .nonzero(false)
        .run(&x, &gx, |i, v| {
            let mut xv = x.clone();
            xv[i] = v;
            pool(&xv)
        });
    let winners: Vec<usize> = (0..len).filter(|&i| gx[i] != 0.0).collect();
    assert!(winners.len() >= SAMPLES, "{} winners", winners.len());
    let xw: Vec<f32> = winners.iter().map(|&i| x[i]).collect();
    let gw: Vec<f32> = winners.iter().map(|&i| gx[i]).collect();
    Fd::smooth("maxpool 3/2/1 input (winners)").run(&xw, &gw, |j, v| {
        let mut xv = x.clone();
        xv[winners[j]] = v;
        pool(&xv)
    });
}

#[test]
fn global_avg_pool() {
    let (n, hw, c) = (2, 15, 4);
    let mut r = rng(12);
    let x = uniform(&mut r, n * hw * c, -1.0, 1.0);
    // R scaled so the gradients (R / hw) stand well above the absolute tolerance.
    let dy = uniform(&mut r, n * c, -10.0, 10.0);
    let mut y = vec![0.0; n * c];
    let mut gx = vec![0.0; x.len()];
    global_avg_pool_forward(n, hw, c, &x, &mut y);
    global_avg_pool_backward(n, hw, c, &dy, &mut gx);
    Fd::smooth("global avg pool input").run(&x, &gx, |i, v| {
        let mut xv = x.clone();
        xv[i] = v;
        global_avg_pool_forward(n, hw, c, &xv, &mut y);
        dot(&y, &dy)
    });
}

#[test]
fn relu() {
    let mut r = rng(13);
    // |x| ≥ 0.05 > h: no perturbation crosses 0.
    let x: Vec<f32> = (0..60)
        .map(|_| {
            let m = r.random_range(0.05..1.0f32);
            if r.random_bool(0.5) {
                m
            } else {
                -m
            }
        })
        .collect();
    let dy = uniform(&mut r, x.len(), -1.0, 1.0);
    let mut y = vec![0.0; x.len()];
    let mut gx = vec![0.0; x.len()];
    relu_forward(&x, &mut y);
    relu_backward(&y, &dy, &mut gx);
    assert!(gx.iter().zip(&x).all(|(&g, &v)| (g == 0.0) == (v < 0.0)));
    Fd::smooth("relu input").samples(40).run(&x, &gx, |i, v| {
        let mut xv = x.clone();
        xv[i] = v;
        relu_forward(&xv, &mut y);
        dot(&y, &dy)
    });
}

// ------------------------------------------------------------------------------------------- linear, loss

#[test]
fn linear() {
    let (n, fin, fout) = (3, 5, 4);
    let mut r = rng(14);
    let mut lin = Linear::new(fin, fout, &mut r);
    let x = uniform(&mut r, n * fin, -1.0, 1.0);
    let dy = uniform(&mut r, n * fout, -1.0, 1.0);
    lin.forward(&x, n);
    lin.backward(&x, &dy);
    let gx = lin.grad_input.clone();
    let (gw, gb) = (lin.grad_weight.clone(), lin.grad_bias.clone());
    Fd::smooth("linear input").run(&x, &gx, |i, v| {
        let mut xv = x.clone();
        xv[i] = v;
        lin.forward(&xv, n);
        dot(&lin.out, &dy)
    });
    let w0 = lin.weight.clone();
    Fd::smooth("linear weight").run(&w0, &gw, |i, v| {
        lin.weight[i] = v;
        lin.forward(&x, n);
        lin.weight[i] = w0[i];
        dot(&lin.out, &dy)
    });
    let b0 = lin.bias.clone();
    Fd::smooth("linear bias").run(&b0, &gb, |i, v| {
        lin.bias[i] = v;
        lin.forward(&x, n);
        lin.bias[i] = b0[i];
        dot(&lin.out, &dy)
    });
}

#[test]
fn softmax_cross_entropy_logits() {
    let (n, k) = (4, 5);
    let mut r = rng(15);
    let logits = uniform(&mut r, n * k, -3.0, 3.0);
    let labels = [0usize, 3, 4, 1];
    for eps in [0.0, 0.2] {
        let mut grad = vec![0.0; n * k];
        softmax_cross_entropy(n, k, &logits, &labels, eps, &mut grad);
        let mut scratch = vec![0.0; n * k];
        // The objective is the loss itself (mean over the batch of the smoothed −log softmax).
        Fd::smooth(format!(
            "softmax cross-entropy logits, label smoothing {eps}"
        ))
        .run(&logits, &grad, |i, v| {
            let mut z = logits.clone();
            z[i] = v;
            softmax_cross_entropy(n, k, &z, &labels, eps, &mut scratch).0 as f64
        });
    }
}

// ------------------------------------------------------------------------------------------- residual

/// `(in, out, use_1x1conv, stride)` of the chapter's `Residual`, input shape, expected output shape.
fn residual_case(
    name: &str,
    (cin, cout, use_1x1, stride): (usize, usize, bool, usize),
    xs: Shape4,
    want: Shape4,
) {
    let mut r = rng(seed_of(name));
    let blk = Residual::new(cin, cout, use_1x1, stride, &mut r);
    block_case(name, blk, Naming::Chapter, xs, want, r);
}

/// Finite differences of a residual block's input and every parameter, in training mode.
fn block_case(
    name: &str,
    mut blk: Residual,
    naming: Naming,
    xs: Shape4,
    want: Shape4,
    mut r: InitRng,
) {
    // Non-trivial affine parameters, so a gradient that ignores them cannot pass.
    for bn in blk.bns.iter_mut().chain(blk.shortcut_bn.as_mut()) {
        bn.weight = uniform(&mut r, bn.num_features, 0.5, 1.5);
        bn.bias = uniform(&mut r, bn.num_features, -0.5, 0.5);
    }
    assert_eq!(blk.output_shape(xs), Some(want), "{name}: output shape");
    let x = nchw_to_nhwc(&uniform(&mut r, xs.len(), -1.0, 1.0), xs);
    let dy = uniform(&mut r, want.len(), -1.0, 1.0);
    let mut ws = Workspace::default();
    blk.forward(&x, xs, true, Buffers::Own, &mut ws);
    blk.backward(&x, Grad::Own(&dy), true, &mut ws);
    let gx = blk.grad_input().to_vec();
    Fd::kinked(format!("{name} input")).run(&x, &gx, |i, v| {
        let mut xv = x.clone();
        xv[i] = v;
        blk.forward(&xv, xs, true, Buffers::Own, &mut ws);
        dot(&blk.out, &dy)
    });
    let params: Vec<(String, Vec<f32>, Vec<f32>)> = blk
        .params_mut(naming)
        .into_iter()
        .map(|p| (p.name, p.value.to_vec(), p.grad.to_vec()))
        .collect();
    assert!(!params.is_empty());
    for (pi, (p, v0, g)) in params.iter().enumerate() {
        // A conv that feeds a batch norm: the norm removes any per-channel constant, so its bias gradient is 0.
        let nonzero = !(p.starts_with("conv") && p.ends_with(".bias") && p != "conv3.bias");
        Fd::kinked(format!("{name} {p}"))
            .nonzero(nonzero)
            .run(v0, g, |i, val| {
                blk.params_mut(naming)[pi].value[i] = val;
                blk.forward(&x, xs, true, Buffers::Own, &mut ws);
                blk.params_mut(naming)[pi].value[i] = v0[i];
                dot(&blk.out, &dy)
            });
    }
}

/// A torchvision block (`BasicBlock` or `Bottleneck`, BN on the downsample) from its description.
fn torchvision_block(
    name: &str,
    kind: BlockKind,
    cin: usize,
    planes: usize,
    stride: usize,
    xs: Shape4,
) {
    let mut r = rng(seed_of(name));
    let config = ResNetConfig::torchvision(kind, &[1], 3, 10);
    let spec = BlockSpec {
        stage: 0,
        index: 0,
        cin,
        planes,
        cout: planes * kind.expansion(),
        stride,
        kind,
    };
    let blk = Residual::from_spec(&spec, &config, &mut r);
    assert_eq!(blk.shortcut_bn.is_some(), spec.has_shortcut());
    let (oh, ow) = ((xs.h - 1) / stride + 1, (xs.w - 1) / stride + 1);
    let want = Shape4::new(xs.n, spec.cout, oh, ow);
    block_case(name, blk, Naming::Torchvision, xs, want, r);
}

#[test]
fn bottleneck_downsample_stride2() {
    torchvision_block(
        "bottleneck(3,2) s2",
        BlockKind::Bottleneck,
        3,
        2,
        2,
        Shape4::new(2, 3, 5, 6),
    );
}

#[test]
fn bottleneck_downsample_stride1() {
    // torchvision's layer1.0: the channels change (in 4 → 4·2 = 8) at stride 1.
    torchvision_block(
        "bottleneck(4,2) s1",
        BlockKind::Bottleneck,
        4,
        2,
        1,
        Shape4::new(2, 4, 4, 4),
    );
}

#[test]
fn bottleneck_identity() {
    torchvision_block(
        "bottleneck(8,2) id",
        BlockKind::Bottleneck,
        8,
        2,
        1,
        Shape4::new(2, 8, 4, 3),
    );
}

#[test]
fn basic_block_downsample_bn() {
    torchvision_block(
        "basic(3,4) s2",
        BlockKind::Basic,
        3,
        4,
        2,
        Shape4::new(2, 3, 5, 5),
    );
}

#[test]
fn residual_identity_shortcut() {
    let (xs, ys) = (Shape4::new(2, 3, 5, 5), Shape4::new(2, 3, 5, 5));
    residual_case("residual(3,3)", (3, 3, false, 1), xs, ys);
}

#[test]
fn residual_1x1_shortcut_stride2() {
    let (xs, ys) = (Shape4::new(2, 3, 7, 7), Shape4::new(2, 4, 4, 4));
    residual_case("residual(3,4,1x1,s2)", (3, 4, true, 2), xs, ys);
}

// ------------------------------------------------------------------------------------------- whole network

/// Train mode: every forward recomputes the batch statistics, and that function is what is differentiated.
#[test]
fn tiny_resnet_train_mode() {
    let config = ResNetConfig {
        widths: vec![2, 4, 4, 4],
        layers: vec![2, 2, 2, 2],
        ..ResNetConfig::chapter(1, 10)
    };
    let xs = Shape4::new(3, 1, 40, 40);
    // The last stage still batch-normalizes 3·2·2 = 12 values per channel.
    let net = ResNet::new(config.clone(), 1).unwrap();
    let walk = net.shape_walk(xs).unwrap();
    assert_eq!(walk[7], ("resnet_block4".to_string(), vec![3, 4, 2, 2]));
    network_case("resnet", config, xs, 4 + 8 * 8 + 3 * 2 + 2);
}

#[test]
fn tiny_torchvision_bottleneck_rgb_small_stem() {
    // Three input channels (NCHW in, NCHW input gradient out), the small stem, Bottleneck blocks with BN on
    // the downsample, no conv biases.
    let config = ResNetConfig {
        widths: vec![2, 3],
        stem: Stem::Small,
        ..ResNetConfig::torchvision(BlockKind::Bottleneck, &[1, 2], 3, 5)
    };
    let xs = Shape4::new(3, 3, 8, 7);
    // stem conv + bn, two downsampling blocks of 3 convs, 3 BNs and a conv + BN shortcut, one plain block, fc.
    network_case("bottleneck net", config, xs, 3 + 2 * 12 + 9 + 2);
}

/// Finite differences of a whole network's input and of a few coordinates of every parameter, in training
/// mode; `tensors` is the expected number of parameter tensors.
fn network_case(label: &str, config: ResNetConfig, xs: Shape4, tensors: usize) {
    let seed = 1;
    let classes = config.num_classes;
    let mut net = ResNet::new(config, seed).unwrap();
    net.set_train(true);
    let mut r = rng(16 + seed);
    let x = uniform(&mut r, xs.len(), 0.0, 1.0);
    let dy = uniform(&mut r, xs.n * classes, -1.0, 1.0);
    net.forward(&x, xs, Buffers::Own).unwrap();
    net.set_loss_grad(&dy);
    net.backward(&x, true, None);
    let gx = net.grad_input().to_vec();
    let mut total = (0, 0);
    let st = Fd::kinked(format!("{label} input"))
        .max_misses(SAMPLES / 4)
        .run(&x, &gx, |i, v| {
            let mut xv = x.clone();
            xv[i] = v;
            dot(net.forward(&xv, xs, Buffers::Own).unwrap(), &dy)
        });
    total = (total.0 + st.checked + st.misses, total.1 + st.misses);
    // Every parameter tensor, a few coordinates each (more for the stem and the classifier). Conv weights are
    // HWIO inside, but the gradient lives in the same layout as the buffer perturbed, so no conversion is needed.
    let snapshot: Vec<(String, Vec<f32>, Vec<f32>)> = net
        .params_mut()
        .into_iter()
        .map(|p| (p.name, p.value.to_vec(), p.grad.to_vec()))
        .collect();
    assert_eq!(snapshot.len(), tensors, "parameter tensors");
    let mut worst = (0.0f64, String::new());
    for (pi, (name, v0, g)) in snapshot.iter().enumerate() {
        let samples = if !name.contains('.') || name.starts_with("0.") || name.starts_with("fc") {
            SAMPLES
        } else {
            6
        };
        let before_bn =
            name == "0.bias" || name.ends_with("conv1.bias") || name.ends_with("conv2.bias");
        let st = Fd::kinked(format!("{label} {name}"))
            .samples(samples)
            .nonzero(!before_bn)
            .max_misses(samples / 4)
            .run(v0, g, |i, val| {
                net.params_mut()[pi].value[i] = val;
                let l = dot(net.forward(&x, xs, Buffers::Own).unwrap(), &dy);
                net.params_mut()[pi].value[i] = v0[i];
                l
            });
        total = (total.0 + st.checked + st.misses, total.1 + st.misses);
        if st.worst > worst.0 {
            worst = (st.worst, name.clone());
        }
    }
    println!(
        "{label}: {} coordinates, {} unresolved; worst parameter check {} at {:.3} of tolerance",
        total.0, total.1, worst.1, worst.0
    );
    assert!(
        total.1 * 50 <= total.0,
        "{} of {} coordinates unresolved (at most 2% allowed)",
        total.1,
        total.0
    );
}

/// Fine-tuning with the stem and the first stage frozen: only the later parameters are walked, the frozen ones
/// (and their batch-norm statistics) stay as they were, and the gradients of the trainable ones match finite
/// differences of the network as it runs frozen (the frozen part in eval mode).
#[test]
fn frozen_stem_and_first_stage() {
    let config = ResNetConfig {
        widths: vec![2, 4, 4],
        stem: Stem::Small,
        ..ResNetConfig::torchvision(BlockKind::Basic, &[1, 1, 1], 3, 4)
    };
    let mut net = ResNet::new(config, 5).unwrap();
    let all = net.params_mut().len();
    net.set_frozen(2).unwrap();
    let names: Vec<String> = net.params_mut().into_iter().map(|p| p.name).collect();
    assert!(names
        .iter()
        .all(|n| n.starts_with("layer2") || n.starts_with("layer3") || n.starts_with("fc")));
    assert_eq!(
        all - names.len(),
        3 + 6,
        "stem conv + bn, layer1's two convs and two bns"
    );
    assert!(net.set_frozen(5).is_err());
    let before = net.state_dict();
    let xs = Shape4::new(3, 3, 6, 6);
    let mut r = rng(77);
    let x = uniform(&mut r, xs.len(), 0.0, 1.0);
    let dy = uniform(&mut r, xs.n * 4, -1.0, 1.0);
    net.set_train(true);
    net.forward(&x, xs, Buffers::Own).unwrap();
    net.set_loss_grad(&dy);
    net.backward(&x, false, None);
    let after = net.state_dict();
    for ((k, a), (_, b)) in before.iter().zip(&after) {
        if k.starts_with("conv1") || k.starts_with("bn1") || k.starts_with("layer1") {
            assert_eq!(a, b, "{k}: a frozen layer changed in a training forward");
        }
    }
    assert_ne!(
        before
            .iter()
            .find(|(k, _)| k == "layer2.0.bn1.running_mean"),
        after.iter().find(|(k, _)| k == "layer2.0.bn1.running_mean"),
        "a trainable batch norm updates its statistics"
    );
    let snapshot: Vec<(String, Vec<f32>, Vec<f32>)> = net
        .params_mut()
        .into_iter()
        .map(|p| (p.name, p.value.to_vec(), p.grad.to_vec()))
        .collect();
    for (pi, (name, v0, g)) in snapshot.iter().enumerate() {
        Fd::kinked(format!("frozen net {name}"))
            .samples(8)
            .max_misses(2)
            .run(v0, g, |i, val| {
                net.params_mut()[pi].value[i] = val;
                let l = dot(net.forward(&x, xs, Buffers::Own).unwrap(), &dy);
                net.params_mut()[pi].value[i] = v0[i];
                l
            });
    }
}
