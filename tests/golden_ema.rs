//! The weight average against PyTorch: `tests/golden/ema.safetensors`, written by `tools/make_ema_golden.py`
//! (torch 2.15.0, `AveragedModel(..., multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)`).

use resnet::train::average_into;
use safetensors::SafeTensors;

fn tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The first update copies the weights, each later one is torch's f32 `lerp_`: bit-identical to torch's.
#[test]
fn weight_average_matches_torch_bit_for_bit() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/ema.safetensors"
    ))
    .unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let weights = tensor(&st, "weights");
    let n = weights.len() / 6;
    for decay in ["0.9", "0.999"] {
        let expected = tensor(&st, &format!("decay_{decay}.averaged"));
        let mut avg = weights[..n].to_vec();
        assert_eq!(avg, expected[..n], "the first update copies");
        for t in 1..6 {
            average_into(&mut avg, &weights[t * n..][..n], decay.parse().unwrap());
            let want = &expected[t * n..][..n];
            let differ = avg
                .iter()
                .zip(want)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differ,
                0,
                "decay {decay}, update {}: {avg:?} vs {want:?}",
                t + 1
            );
        }
    }
}
