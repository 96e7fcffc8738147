//! The Rust side of tools/make_torchvision_golden.py's weight formula (tests/common/torchvision_weights.rs)
//! against the values the script wrote: `check.<key>` (first 8 values of three tensors) and every
//! `gradsample_idx.<key>`, bit for bit, for both full-size goldens.

mod common;

use common::golden_path;
use common::torchvision_weights::{
    formula_state_dict, gradsample_indices, keys_from_metadata, splitmix64, SEED,
};
use resnet::checkpoint::deserialize;
use resnet::nn::StateTensor;

#[test]
fn splitmix64_reference_value() {
    // The first output of the reference splitmix64 generator seeded with 0.
    assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
}

#[test]
fn formula_matches_the_script() {
    for name in [
        "torchvision_resnet18.safetensors",
        "torchvision_resnet50.safetensors",
    ] {
        let bytes = std::fs::read(golden_path(name)).unwrap();
        let (golden, meta) = deserialize(&bytes, name).unwrap();
        let keys = keys_from_metadata(&meta["golden"]);
        let sd = formula_state_dict(&keys, SEED);
        let get = |k: &str| &golden.iter().find(|(key, _)| key == k).unwrap().1;
        let mut checked = 0;
        for (k, (key, shape, is_i64)) in keys.iter().enumerate() {
            let (_, t) = &sd[k];
            assert_eq!(t.shape(), &shape[..]);
            if let Some((_, StateTensor::F32 { data: want, .. })) =
                golden.iter().find(|(g, _)| g == &format!("check.{key}"))
            {
                let StateTensor::F32 { data, .. } = t else {
                    panic!("{key}: f32")
                };
                let got: Vec<u32> = data[..8].iter().map(|v| v.to_bits()).collect();
                let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{name}: {key}");
                checked += 1;
            }
            if let Some(StateTensor::I64 { data: idx, .. }) = golden
                .iter()
                .find(|(g, _)| g == &format!("gradsample_idx.{key}"))
                .map(|(_, t)| t)
            {
                assert!(!is_i64);
                let want: Vec<usize> = idx.iter().map(|&i| i as usize).collect();
                assert_eq!(gradsample_indices(k, shape.iter().product()), want, "{key}");
            }
        }
        assert_eq!(checked, 3, "{name}: check.* tensors");
        assert_eq!(get("input").shape(), &[2, 3, 64, 64]);
    }
}
