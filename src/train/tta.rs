//! Flip test-time augmentation: the network's logits on a batch and on its mirror image, averaged. A network
//! trained with random horizontal flips has seen both orientations; averaging the two views usually adds a little
//! accuracy at twice the cost of a forward pass.

use crate::nn::ResNet;
use crate::{Result, Shape4};

/// Mirrors every row of the NCHW tensor `x` of shape `xs` left to right (a flip along W, `torch.flip(x, [3])`)
/// into `out` (same length).
pub fn hflip_nchw(x: &[f32], xs: Shape4, out: &mut [f32]) {
    assert_eq!(x.len(), xs.len(), "hflip_nchw: input length");
    assert_eq!(out.len(), xs.len(), "hflip_nchw: output length");
    if xs.w == 0 {
        return;
    }
    for (src, dst) in x.chunks_exact(xs.w).zip(out.chunks_exact_mut(xs.w)) {
        for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
            *d = *s;
        }
    }
}

/// `(net(x) + net(hflip(x))) / 2` for the NCHW batch `x` of shape `xs`: the logits `[n, num_classes]` averaged
/// over the image and its mirror. Runs in the network's current mode; for evaluation that is eval mode (in
/// training mode the batch norms would see, and count, two batches).
pub fn forward_flip_tta(net: &mut ResNet, x: &[f32], xs: Shape4) -> Result<Vec<f32>> {
    // The first forward refuses an `x` that is not `xs`, before the flip could.
    let mut logits = net.forward(x, xs)?.to_vec();
    let mut mirror = vec![0.0f32; x.len()];
    hflip_nchw(x, xs, &mut mirror);
    let flipped = net.forward(&mirror, xs)?;
    for (a, &b) in logits.iter_mut().zip(flipped) {
        *a = 0.5 * (*a + b);
    }
    Ok(logits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hflip_reverses_each_row_of_each_plane() {
        let xs = Shape4::new(2, 3, 2, 4);
        let x: Vec<f32> = (0..xs.len()).map(|v| v as f32).collect();
        let mut y = vec![0.0; xs.len()];
        hflip_nchw(&x, xs, &mut y);
        assert_eq!(&y[..8], &[3.0, 2.0, 1.0, 0.0, 7.0, 6.0, 5.0, 4.0]);
        let mut z = vec![0.0; xs.len()];
        hflip_nchw(&y, xs, &mut z);
        assert_eq!(z, x);
    }
}
