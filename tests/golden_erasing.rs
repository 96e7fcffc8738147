//! Random erasing's parameter draw against torchvision: `tests/golden/random_erasing.json`, written by
//! `tools/make_erasing_golden.py` (torch 2.15.0, torchvision 0.29.2): summary statistics of 200,000
//! `RandomErasing.get_params` calls (scale (0.02, 0.33), ratio (0.3, 3.3)) on 1×28×28, 3×32×32 and 1×3×64 tensors.
//!
//! Our generator is not torch's, so the test draws as many rectangles with ours and compares the distributions:
//! the fraction of calls in which no attempt fits, and the mean and standard deviation of the height, width,
//! area fraction, top and left of the rectangles, each within `Z_MAX` standard errors of the difference of two
//! independent samples. The z-scores are printed (`cargo test --test golden_erasing -- --nocapture`).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use resnet::data::transforms::{random_erasing_params, ERASING_RATIO, ERASING_SCALE};
use serde_json::Value;

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/random_erasing.json"
);

/// Largest accepted |difference| / standard error. 33 comparisons of a fixed seed: 4 leaves room for chance
/// without hiding a changed rule (an exclusive bound off by one moves `top`'s mean by ≈ 0.5, tens of errors).
const Z_MAX: f64 = 4.0;

/// Mean, population std and fourth central moment.
fn moments(v: &[f64]) -> (f64, f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let m4 = v.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n;
    (mean, var.sqrt(), m4)
}

/// Standard error of a sample's std: `√((m4 − σ⁴) / n) / (2σ)` (the delta method on the variance).
fn se_std(std: f64, m4: f64, n: f64) -> f64 {
    ((m4 - std.powi(4)).max(0.0) / n).sqrt() / (2.0 * std)
}

#[test]
fn erasing_params_match_torchvision_distribution() {
    let text = std::fs::read_to_string(GOLDEN)
        .unwrap_or_else(|e| panic!("{GOLDEN}: {e} (run tools/make_erasing_golden.py)"));
    let golden: Value = serde_json::from_str(&text).unwrap();
    let pair = |v: &Value| (v[0].as_f64().unwrap(), v[1].as_f64().unwrap());
    assert_eq!(pair(&golden["scale"]), ERASING_SCALE);
    assert_eq!(pair(&golden["ratio"]), ERASING_RATIO);
    let shapes = golden["shapes"].as_object().unwrap();
    assert_eq!(shapes.len(), 3);
    let mut worst = 0.0f64;
    for (seed, (key, g)) in shapes.iter().enumerate() {
        let dims: Vec<usize> = key.split('x').map(|d| d.parse().unwrap()).collect();
        let (h, w) = (dims[1], dims[2]);
        let draws = g["draws"].as_u64().unwrap() as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(seed as u64);
        let mut cols: [Vec<f64>; 5] = Default::default();
        let mut none = 0usize;
        for _ in 0..draws {
            match random_erasing_params(h, w, ERASING_SCALE, ERASING_RATIO, &mut rng) {
                Some((top, left, eh, ew)) => {
                    let area = (eh * ew) as f64 / (h * w) as f64;
                    for (c, v) in
                        cols.iter_mut()
                            .zip([eh as f64, ew as f64, area, top as f64, left as f64])
                    {
                        c.push(v);
                    }
                }
                None => none += 1,
            }
        }
        let mut check = |what: String, ours: f64, theirs: f64, se: f64| {
            let z = (ours - theirs).abs() / se;
            println!("{key:8} {what:12} ours {ours:10.5} torchvision {theirs:10.5}  |z| {z:.2}");
            assert!(
                z <= Z_MAX,
                "{key} {what}: ours {ours} vs torchvision {theirs}, {z:.1} standard errors apart"
            );
            worst = worst.max(z);
        };
        // The no-fit fraction: a binomial proportion (floored at one draw for the square images, where it is 0).
        let n = draws as f64;
        let (q_ours, q_tv) = (none as f64 / n, g["none"].as_f64().unwrap());
        let q = (q_ours + q_tv) / 2.0;
        let se = (q * (1.0 - q) * 2.0 / n).sqrt().max(1.0 / n);
        check("none".into(), q_ours, q_tv, se);
        for (name, col) in ["h", "w", "area", "top", "left"].iter().zip(&cols) {
            let (mean, std, m4) = moments(col);
            let t = &g[name];
            let (t_mean, t_std, t_m4) = (
                t["mean"].as_f64().unwrap(),
                t["std"].as_f64().unwrap(),
                t["m4"].as_f64().unwrap(),
            );
            let (n_ours, n_tv) = (col.len() as f64, g["erased"].as_f64().unwrap());
            let se_mean = (std * std / n_ours + t_std * t_std / n_tv).sqrt();
            check(format!("{name} mean"), mean, t_mean, se_mean);
            let se_sd =
                (se_std(std, m4, n_ours).powi(2) + se_std(t_std, t_m4, n_tv).powi(2)).sqrt();
            check(format!("{name} std"), std, t_std, se_sd);
        }
    }
    println!("largest |z| {worst:.2} (limit {Z_MAX})");
}
