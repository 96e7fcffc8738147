//! Optimizers and schedules against PyTorch: `tests/golden/optim.safetensors`, written by
//! `tools/make_optim_golden.py` (torch 2.15.0, CPU, `foreach=False`; see the script for the layout).
//!
//! Tolerances:
//! * SGD: bit-identical to torch (every operation is an IEEE multiply or a fused multiply-add in torch too).
//! * Adam / AdamW: bit-identical to the golden run in which torch's `Tensor.sqrt` is replaced by a correctly
//!   rounded one (`values_exact_sqrt`) — that pins down the order of every other float operation. Against
//!   torch's own run (`values`), whose CPU sqrt (MKL vsSqrt) is up to one ulp off, within
//!   `|ours - torch| <= 1e-6 · max(|torch|, 1e-3)`: a one-ulp (≈ 1.2e-7 relative) change of the denominator changes
//!   an update of size ≈ lr by ≈ 1e-10, below one ulp of parameters of size 1e-3 and up. The largest difference
//!   measured is printed (`cargo test --test optim -- --nocapture`).
//! * Schedules: relative 1e-6 of torch's f64 learning rates (ours are f32; rounding alone is 6e-8).

use resnet::optim::{Optimizer, OptimizerKind, OptimizerOptions, OptimizerState, Schedule};
use resnet::ParamMut;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::HashMap;

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/optim.safetensors"
);

struct Golden {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    meta: HashMap<String, String>,
}

impl Golden {
    fn load() -> Golden {
        let bytes = std::fs::read(GOLDEN).unwrap_or_else(|e| panic!("{GOLDEN}: {e}"));
        let (_, header) = SafeTensors::read_metadata(&bytes).expect("safetensors header");
        let meta = header.metadata().clone().expect("metadata");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        let mut tensors = HashMap::new();
        for (name, view) in st.iter() {
            let data: Vec<f64> = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            tensors.insert(name.to_string(), (view.shape().to_vec(), data));
        }
        Golden { tensors, meta }
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("golden tensor `{name}` missing"))
            .1
            .iter()
            .map(|&x| x as f32)
            .collect()
    }

    fn f64s(&self, name: &str) -> &[f64] {
        &self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("golden tensor `{name}` missing"))
            .1
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn json(&self, key: &str) -> Value {
        serde_json::from_str(&self.meta[key]).unwrap()
    }

    /// Parameter lengths, from the metadata's shapes.
    fn lens(&self) -> Vec<usize> {
        let shapes = self.json("shapes");
        shapes
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s.as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .product()
            })
            .collect()
    }

    fn steps(&self) -> usize {
        self.meta["steps"].parse().unwrap()
    }

    fn cases(&self) -> Vec<Case> {
        self.json("cases")
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let f = |k: &str| c.get(k).and_then(Value::as_f64);
                let kind = match c["optimizer"].as_str().unwrap() {
                    "Adam" => OptimizerKind::Adam,
                    "AdamW" => OptimizerKind::AdamW,
                    "SGD" => OptimizerKind::Sgd,
                    other => panic!("unknown optimizer {other}"),
                };
                let options = OptimizerOptions {
                    weight_decay: f("weight_decay"),
                    momentum: f("momentum"),
                    nesterov: c.get("nesterov").and_then(Value::as_bool).unwrap_or(false),
                    ..Default::default()
                };
                Case {
                    name: c["name"].as_str().unwrap().to_string(),
                    kind,
                    options,
                    lr: f("lr").unwrap() as f32,
                }
            })
            .collect()
    }
}

struct Case {
    name: String,
    kind: OptimizerKind,
    options: OptimizerOptions,
    lr: f32,
}

impl Case {
    fn build(&self, lens: &[usize]) -> Box<dyn Optimizer> {
        self.kind.build(&self.options, lens).unwrap()
    }
}

/// The model's side: parameter values, split into tensors.
struct Params {
    values: Vec<Vec<f32>>,
}

impl Params {
    fn new(flat: &[f32], lens: &[usize]) -> Params {
        let mut values = Vec::new();
        let mut o = 0;
        for &n in lens {
            values.push(flat[o..o + n].to_vec());
            o += n;
        }
        Params { values }
    }

    fn flat(&self) -> Vec<f32> {
        self.values.concat()
    }

    /// One optimizer step with gradient row `t` of the golden gradients.
    fn step(&mut self, opt: &mut dyn Optimizer, grads: &[f32], t: usize, lr: f32) {
        let total: usize = self.values.iter().map(Vec::len).sum();
        let row = &grads[t * total..(t + 1) * total];
        let mut o = 0;
        let mut views = Vec::new();
        for (i, v) in self.values.iter_mut().enumerate() {
            let n = v.len();
            views.push(ParamMut {
                name: format!("p{i}"),
                value: v.as_mut_slice(),
                grad: &row[o..o + n],
            });
            o += n;
        }
        opt.step(&mut views, lr);
    }
}

fn concat_state(state: &OptimizerState, field: &str, n_params: usize) -> Vec<f32> {
    let by_name: HashMap<&str, &Vec<f32>> =
        state.tensors.iter().map(|(n, v)| (n.as_str(), v)).collect();
    (0..n_params)
        .flat_map(|i| {
            let name = format!("{i}.{field}");
            by_name
                .get(name.as_str())
                .unwrap_or_else(|| panic!("state lacks `{name}`"))
                .iter()
                .copied()
        })
        .collect()
}

fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// (count of differing values, largest |a - b|, largest |a - b| / max(|b|, 1e-3))
fn diff(ours: &[f32], torch: &[f32]) -> (usize, f64, f64) {
    assert_eq!(ours.len(), torch.len());
    let mut out = (0, 0.0f64, 0.0f64);
    for (&a, &b) in ours.iter().zip(torch) {
        let d = (a as f64 - b as f64).abs();
        if a.to_bits() != b.to_bits() {
            out.0 += 1;
        }
        out.1 = out.1.max(d);
        out.2 = out.2.max(d / (b as f64).abs().max(1e-3));
    }
    out
}

#[test]
fn optimizers_match_torch_step_by_step() {
    let g = Golden::load();
    let lens = g.lens();
    let init = g.f32s("init");
    let grads = g.f32s("grads");
    let total: usize = lens.iter().sum();
    let cases = g.cases();
    assert_eq!(cases.len(), 6);
    for case in &cases {
        let expected = g.f32s(&format!("{}.values", case.name));
        let exact_name = format!("{}.values_exact_sqrt", case.name);
        let exact = g.has(&exact_name).then(|| g.f32s(&exact_name));
        assert_eq!(
            exact.is_some(),
            case.kind != OptimizerKind::Sgd,
            "{}",
            case.name
        );
        let mut opt = case.build(&lens);
        let mut params = Params::new(&init, &lens);
        let mut worst = (0, 0.0f64, 0.0f64);
        for t in 0..g.steps() {
            params.step(opt.as_mut(), &grads, t, case.lr);
            let ours = params.flat();
            let row = t * total..(t + 1) * total;
            let (n, abs, rel) = diff(&ours, &expected[row.clone()]);
            worst = (worst.0 + n, worst.1.max(abs), worst.2.max(rel));
            match &exact {
                // Adam: the op order is exact; only torch's MKL sqrt differs
                Some(exact) => {
                    assert!(
                        bits_equal(&ours, &exact[row]),
                        "{} step {}: differs from torch with exact sqrt",
                        case.name,
                        t + 1
                    );
                    assert!(
                        rel <= 1e-6,
                        "{} step {}: {rel:e} relative from torch",
                        case.name,
                        t + 1
                    );
                }
                None => assert!(
                    n == 0,
                    "{} step {}: {n} values differ from torch (max {abs:e})",
                    case.name,
                    t + 1
                ),
            }
        }
        assert_eq!(opt.steps_taken(), g.steps() as u64);
        println!(
            "{:16} vs torch: {} of {} values not bit-identical, max |diff| {:.3e}, max relative {:.3e}{}",
            case.name,
            worst.0,
            expected.len(),
            worst.1,
            worst.2,
            if exact.is_some() { "; bit-identical to torch with exact sqrt" } else { "" }
        );

        // the state after the last step, by torch's names
        let state = opt.state();
        let fields: &[&str] = match (case.kind, case.options.momentum) {
            (OptimizerKind::Sgd, None) => &[],
            (OptimizerKind::Sgd, Some(_)) => &["momentum_buffer"],
            _ => &["exp_avg", "exp_avg_sq"],
        };
        assert_eq!(
            state.tensors.len(),
            fields.len() * lens.len(),
            "{}",
            case.name
        );
        assert_eq!(state.step, g.steps() as u64);
        assert_eq!(state.kind, case.kind.name());
        for field in fields {
            let ours = concat_state(&state, field, lens.len());
            let exact_name = format!("{}.state_exact_sqrt.{field}", case.name);
            let torch_name = format!("{}.state.{field}", case.name);
            if g.has(&exact_name) {
                assert!(
                    bits_equal(&ours, &g.f32s(&exact_name)),
                    "{} {field} vs exact-sqrt torch",
                    case.name
                );
                let (_, _, rel) = diff(&ours, &g.f32s(&torch_name));
                assert!(rel <= 1e-6, "{} {field}: {rel:e}", case.name);
            } else {
                assert!(
                    bits_equal(&ours, &g.f32s(&torch_name)),
                    "{} {field} vs torch",
                    case.name
                );
            }
        }
    }
}

#[test]
fn resuming_from_saved_state_is_bit_identical() {
    let g = Golden::load();
    let lens = g.lens();
    let init = g.f32s("init");
    let grads = g.f32s("grads");
    for case in g.cases() {
        let mut straight = case.build(&lens);
        let mut straight_params = Params::new(&init, &lens);
        for t in 0..g.steps() {
            straight_params.step(straight.as_mut(), &grads, t, case.lr);
        }
        for stop in 0..g.steps() {
            let mut first = case.build(&lens);
            let mut params = Params::new(&init, &lens);
            for t in 0..stop {
                params.step(first.as_mut(), &grads, t, case.lr);
            }
            let saved = first.state();
            drop(first);
            let mut resumed = case.build(&lens);
            resumed.load_state(saved.clone()).unwrap();
            assert_eq!(resumed.steps_taken(), stop as u64);
            assert_eq!(resumed.state(), saved, "{}: state round trip", case.name);
            for t in stop..g.steps() {
                params.step(resumed.as_mut(), &grads, t, case.lr);
            }
            assert!(
                bits_equal(&params.flat(), &straight_params.flat()),
                "{} resumed after {stop}",
                case.name
            );
            assert_eq!(
                resumed.state(),
                straight.state(),
                "{} resumed after {stop}: final state",
                case.name
            );
        }
    }
}

#[test]
fn mismatched_state_is_rejected_and_leaves_the_optimizer_unchanged() {
    let g = Golden::load();
    let lens = g.lens();
    let init = g.f32s("init");
    let grads = g.f32s("grads");
    let cases = g.cases();
    let by_name = |n: &str| cases.iter().find(|c| c.name == n).unwrap();
    let trained = |case: &Case| {
        let mut opt = case.build(&lens);
        let mut params = Params::new(&init, &lens);
        params.step(opt.as_mut(), &grads, 0, case.lr);
        params.step(opt.as_mut(), &grads, 1, case.lr);
        opt
    };
    let adam = trained(by_name("adam")).state();
    let adamw = trained(by_name("adamw")).state();
    let momentum = trained(by_name("sgd_momentum")).state();

    let expect_err = |case: &str, state: OptimizerState, needle: &str| {
        let case = by_name(case);
        let mut opt = trained(case);
        let before = opt.state();
        let err = opt
            .load_state(state)
            .expect_err("load should fail")
            .to_string();
        assert!(
            err.contains(needle),
            "{}: error `{err}` lacks `{needle}`",
            case.name
        );
        assert_eq!(
            opt.state(),
            before,
            "{}: failed load changed the optimizer",
            case.name
        );
    };
    // kind
    expect_err("adam", momentum.clone(), "saved by `sgd`");
    expect_err(
        "adamw",
        adam.clone(),
        "saved by `adam`, cannot load into `adamw`",
    );
    expect_err("sgd_momentum", adamw.clone(), "saved by `adamw`");
    expect_err("sgd", momentum.clone(), "no momentum");
    // count
    let mut fewer = adam.clone();
    fewer.tensors.pop();
    expect_err("adam", fewer, "5 tensors, expected 6");
    let mut none = momentum.clone();
    none.tensors.clear();
    expect_err("sgd_momentum", none, "0 tensors, expected 3");
    // length
    let mut short = adam.clone();
    short.tensors[3].1.pop();
    expect_err(
        "adam",
        short,
        "`1.exp_avg_sq` has 14 values, parameter 1 has 15",
    );
    // names
    let mut renamed = adam.clone();
    renamed.tensors[0].0 = "0.momentum".into();
    expect_err("adam", renamed, "unexpected tensor `0.momentum`");
    let mut out_of_range = momentum.clone();
    out_of_range.tensors[2].0 = "3.momentum_buffer".into();
    expect_err(
        "sgd_momentum",
        out_of_range,
        "unexpected tensor `3.momentum_buffer`",
    );
    let mut twice = adam.clone();
    twice.tensors[2] = twice.tensors[0].clone();
    expect_err("adam", twice, "`0.exp_avg` appears twice");
    // an optimizer built for other parameters
    let mut other = by_name("adam").build(&[7, 15]);
    let err = other.load_state(adam.clone()).unwrap_err().to_string();
    assert!(err.contains("6 tensors, expected 4"), "{err}");
    let mut other = by_name("adam").build(&[7, 15, 131]);
    let err = other.load_state(adam).unwrap_err().to_string();
    assert!(
        err.contains("`2.exp_avg` has 132 values, parameter 2 has 131"),
        "{err}"
    );
}

#[test]
fn tensors_follow_torch_state_names_in_parameter_order() {
    let g = Golden::load();
    let lens = g.lens();
    let names = |case: &Case| {
        case.build(&lens)
            .state()
            .tensors
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    };
    for case in g.cases() {
        let expected: Vec<String> = match (case.kind, case.options.momentum) {
            (OptimizerKind::Sgd, None) => vec![],
            (OptimizerKind::Sgd, Some(_)) => {
                (0..3).map(|i| format!("{i}.momentum_buffer")).collect()
            }
            _ => (0..3)
                .flat_map(|i| [format!("{i}.exp_avg"), format!("{i}.exp_avg_sq")])
                .collect(),
        };
        assert_eq!(names(&case), expected, "{}", case.name);
    }
}

#[test]
#[should_panic(expected = "step got 2 parameters, the optimizer was built for 3")]
fn stepping_with_the_wrong_parameters_panics_clearly() {
    let mut opt = OptimizerKind::Sgd
        .build(&OptimizerOptions::default(), &[1, 1, 1])
        .unwrap();
    let (mut a, mut b) = ([0.0f32], [0.0f32]);
    opt.step(
        &mut [
            ParamMut {
                name: "a".into(),
                value: &mut a,
                grad: &[1.0],
            },
            ParamMut {
                name: "b".into(),
                value: &mut b,
                grad: &[1.0],
            },
        ],
        0.1,
    );
}

#[test]
fn schedules_match_torch() {
    let g = Golden::load();
    let schedules = g.json("schedules");
    let schedules = schedules.as_array().unwrap();
    assert_eq!(schedules.len(), 8);
    let mut worst = 0.0f64;
    for s in schedules {
        let name = s["name"].as_str().unwrap();
        let schedule: Schedule = s["schedule"].as_str().unwrap().parse().unwrap();
        let base_lr = s["base_lr"].as_f64().unwrap() as f32;
        let epochs = s["epochs"].as_u64().unwrap() as usize;
        let spe = s["steps_per_epoch"].as_u64().unwrap() as usize;
        let torch = g.f64s(&format!("sched.{name}"));
        assert_eq!(torch.len(), epochs * spe);
        for e in 0..epochs {
            for b in 0..spe {
                let ours = schedule.lr(base_lr, e, b, spe, epochs) as f64;
                let want = torch[e * spe + b];
                let rel = (ours - want).abs() / want.abs();
                worst = worst.max(rel);
                assert!(
                    rel <= 1e-6,
                    "{name} epoch {e} batch {b}: ours {ours:e}, torch {want:e}"
                );
                // ours is torch's value rounded to f32
                assert_eq!(ours as f32, want as f32, "{name} epoch {e} batch {b}");
            }
        }
    }
    println!(
        "schedules vs torch: max relative difference {worst:.3e} (f32 rounding of torch's f64)"
    );
}

/// `OptimizerOptions::no_decay` (`--wd-skip-norm`) exempts exactly the marked parameters, for each kind of weight
/// decay: an exempt parameter moves as with `weight_decay=0` (a second torch parameter group), the other as with it.
#[test]
fn no_decay_mask_exempts_exactly_the_marked_parameters() {
    for kind in ["sgd", "adam", "adamw"] {
        let kind: OptimizerKind = kind.parse().unwrap();
        let step = |wd: f64, no_decay: Vec<bool>| -> (Vec<f32>, Vec<f32>) {
            let options = OptimizerOptions {
                weight_decay: Some(wd),
                momentum: (kind == OptimizerKind::Sgd).then_some(0.9),
                no_decay,
                ..Default::default()
            };
            let mut opt = kind.build(&options, &[3, 2]).unwrap();
            let (mut a, mut b) = (vec![1.0f32, -2.0, 0.5], vec![3.0f32, -1.0]);
            let (ga, gb) = (vec![0.1f32, 0.2, -0.3], vec![0.05f32, -0.4]);
            for _ in 0..3 {
                opt.step(
                    &mut [
                        ParamMut {
                            name: "a".into(),
                            value: &mut a,
                            grad: &ga,
                        },
                        ParamMut {
                            name: "b".into(),
                            value: &mut b,
                            grad: &gb,
                        },
                    ],
                    0.01,
                );
            }
            (a, b)
        };
        let (decayed_a, decayed_b) = step(0.1, Vec::new());
        let (_, plain_b) = step(0.0, Vec::new());
        let (masked_a, masked_b) = step(0.1, vec![false, true]);
        assert_ne!(decayed_b, plain_b, "{kind}: the decay must matter");
        assert_eq!(masked_a, decayed_a, "{kind}: `a` still decays");
        assert_eq!(masked_b, plain_b, "{kind}: `b` is exempt");
        let bad = OptimizerOptions {
            no_decay: vec![true],
            ..Default::default()
        };
        assert!(
            kind.build(&bad, &[3, 2]).is_err(),
            "{kind}: a mask of the wrong length"
        );
    }
}

/// The mask `--wd-skip-norm` builds is timm's rule: the trainable tensors of one dimension (batch-norm weights and
/// biases, every bias), in the optimizer's order.
#[test]
fn norm_and_bias_mask_marks_the_one_dimensional_tensors() {
    for arch in [
        resnet::nn::ArchName::Chapter,
        resnet::nn::ArchName::Resnet50,
    ] {
        let mut config = resnet::nn::ResNetConfig::named(arch, 1, 10);
        config.widths = config.widths.iter().map(|w| w / 8).collect();
        let mut net = resnet::nn::ResNet::new(config, 0).unwrap();
        let mask = net.norm_and_bias_mask();
        let sd = net.state_dict();
        let shapes: HashMap<String, usize> = sd
            .iter()
            .map(|(k, t)| (k.clone(), t.shape().len()))
            .collect();
        let names: Vec<String> = net.params_mut().iter().map(|p| p.name.clone()).collect();
        assert_eq!(mask.len(), names.len());
        for (name, exempt) in names.iter().zip(&mask) {
            assert_eq!(*exempt, shapes[name] == 1, "{arch:?} {name}");
        }
        assert!(mask.iter().any(|m| *m) && mask.iter().any(|m| !*m));
    }
}
