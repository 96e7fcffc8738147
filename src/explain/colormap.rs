//! The viridis colormap (perceptually uniform, readable in grey and by colour-blind readers), as a table:
//! matplotlib's `viridis` entries 0, 8, …, 248 and 255 (of 256; the map is CC0, by van der Walt and Smith),
//! linearly interpolated between them.

/// `VIRIDIS[k]` is matplotlib's entry `min(8k, 255)`, sRGB in `[0, 1]`.
const VIRIDIS: [[f32; 3]; 33] = [
    [0.267004, 0.004874, 0.329415],
    [0.277018, 0.050344, 0.375715],
    [0.282327, 0.094955, 0.417331],
    [0.282884, 0.135920, 0.453427],
    [0.278826, 0.175490, 0.483397],
    [0.270595, 0.214069, 0.507052],
    [0.258965, 0.251537, 0.524736],
    [0.244972, 0.287675, 0.537260],
    [0.229739, 0.322361, 0.545706],
    [0.214298, 0.355619, 0.551184],
    [0.199430, 0.387607, 0.554642],
    [0.185556, 0.418570, 0.556753],
    [0.172719, 0.448791, 0.557885],
    [0.160665, 0.478540, 0.558115],
    [0.149039, 0.508051, 0.557250],
    [0.137770, 0.537492, 0.554906],
    [0.127568, 0.566949, 0.550556],
    [0.120565, 0.596422, 0.543611],
    [0.120638, 0.625828, 0.533488],
    [0.132268, 0.655014, 0.519661],
    [0.157851, 0.683765, 0.501686],
    [0.196571, 0.711827, 0.479221],
    [0.246070, 0.738910, 0.452024],
    [0.304148, 0.764704, 0.419943],
    [0.369214, 0.788888, 0.382914],
    [0.440137, 0.811138, 0.340967],
    [0.515992, 0.831158, 0.294279],
    [0.595839, 0.848717, 0.243329],
    [0.678489, 0.863742, 0.189503],
    [0.762373, 0.876424, 0.137064],
    [0.845561, 0.887322, 0.099702],
    [0.926106, 0.897330, 0.104071],
    [0.993248, 0.906157, 0.143936],
];

/// The matplotlib entry index each row of [`VIRIDIS`] holds.
fn entry(k: usize) -> f32 {
    (8 * k).min(255) as f32
}

/// The colour of `t` in `[0, 1]` (clamped; NaN counts as 0) as 8-bit sRGB.
pub fn viridis(t: f32) -> [u8; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let pos = t * 255.0;
    let k = ((pos / 8.0) as usize).min(VIRIDIS.len() - 2);
    let frac = ((pos - entry(k)) / (entry(k + 1) - entry(k))).clamp(0.0, 1.0);
    let (a, b) = (VIRIDIS[k], VIRIDIS[k + 1]);
    std::array::from_fn(|i| ((a[i] + (b[i] - a[i]) * frac) * 255.0).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_and_middle_are_matplotlibs() {
        // matplotlib: viridis(0) = #440154, viridis(0.5) ≈ entry 127.5 ≈ #21918c, viridis(1) = #fde725.
        assert_eq!(viridis(0.0), [68, 1, 84]);
        assert_eq!(viridis(1.0), [253, 231, 37]);
        let mid = viridis(0.5);
        for (got, want) in mid.iter().zip([33u8, 145, 140]) {
            assert!(got.abs_diff(want) <= 1, "{mid:?}");
        }
        assert_eq!(viridis(f32::NAN), viridis(-3.0));
        // Lightness rises monotonically (the property that makes it perceptual): green grows throughout.
        let greens: Vec<u8> = (0..=100).map(|i| viridis(i as f32 / 100.0)[1]).collect();
        assert!(greens.windows(2).all(|w| w[0] <= w[1]), "{greens:?}");
    }
}
