//! The deterministic weights of tools/make_torchvision_golden.py (its docstring has the formula), so the
//! full-size torchvision goldens need not store their weights: every value is computed in f64 and rounded to
//! f32 once, as the script's numpy code does, so the two sides agree bit for bit.

use resnet::nn::{StateDict, StateTensor};

/// The seed the script uses for the full-size models (`"resnet"` in ASCII).
pub const SEED: u64 = 0x7265_736e_6574;

/// splitmix64's output function (wrapping u64 arithmetic).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// u in [-1, 1) for flat index `i` of the `k`-th state_dict tensor.
pub fn uniform(seed: u64, k: usize, i: usize) -> f64 {
    let u = splitmix64(seed ^ ((k as u64) << 32) ^ i as u64);
    ((u >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
}

/// The state dict the formula gives for `keys_shapes` = `(key, PyTorch shape, is_i64)` in state_dict() order.
/// Panics on a key the formula has no rule for (a test helper).
pub fn formula_state_dict(keys_shapes: &[(String, Vec<usize>, bool)], seed: u64) -> StateDict {
    keys_shapes
        .iter()
        .enumerate()
        .map(|(k, (key, shape, is_i64))| {
            let n: usize = shape.iter().product();
            if *is_i64 {
                assert!(
                    key.ends_with("num_batches_tracked"),
                    "{key}: i64 but not a counter"
                );
                let data = vec![0i64; n];
                return (
                    key.clone(),
                    StateTensor::I64 {
                        shape: shape.clone(),
                        data,
                    },
                );
            }
            let rule: Box<dyn Fn(f64) -> f64> = if key.ends_with("running_mean") {
                Box::new(|u| 0.1 * u)
            } else if key.ends_with("running_var") {
                Box::new(|u: f64| 1.0 + 0.5 * u.abs())
            } else if key.ends_with(".weight") && (shape.len() == 2 || shape.len() == 4) {
                let fan_in: usize = shape[1..].iter().product();
                let scale = (6.0 / fan_in as f64).sqrt();
                Box::new(move |u| u * scale * 0.5)
            } else if key.ends_with("bn3.weight") && shape.len() == 1 {
                // A Bottleneck's last BN starts at a fifth (see the script: conditioning).
                Box::new(|u| (1.0 + 0.1 * u) * 0.2)
            } else if key.ends_with(".weight") && shape.len() == 1 {
                Box::new(|u| 1.0 + 0.1 * u)
            } else if key.ends_with(".bias") {
                Box::new(|u| 0.1 * u)
            } else {
                panic!("no formula for {key} {shape:?}")
            };
            let data = (0..n).map(|i| rule(uniform(seed, k, i)) as f32).collect();
            (
                key.clone(),
                StateTensor::F32 {
                    shape: shape.clone(),
                    data,
                },
            )
        })
        .collect()
}

/// The 64 flat indices `gradsample.<key>` holds for the `k`-th state_dict tensor of `numel` elements.
pub fn gradsample_indices(k: usize, numel: usize) -> Vec<usize> {
    let base = splitmix64(0x5eed ^ k as u64);
    (0..64u64)
        .map(|j| (base.wrapping_add(j.wrapping_mul(2_654_435_761)) % numel as u64) as usize)
        .collect()
}

/// `(key, shape, is_i64)` from a golden's `golden` metadata (JSON, `keys` = `[[key, shape, is_i64], ...]`).
pub fn keys_from_metadata(json: &str) -> Vec<(String, Vec<usize>, bool)> {
    let v: serde_json::Value = serde_json::from_str(json).expect("`golden` metadata is JSON");
    v["keys"]
        .as_array()
        .expect("`keys` array")
        .iter()
        .map(|e| {
            let key = e[0].as_str().expect("key").to_string();
            let shape = e[1]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim") as usize)
                .collect();
            (key, shape, e[2].as_bool().expect("is_i64"))
        })
        .collect()
}
