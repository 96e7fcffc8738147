//! Flip test-time augmentation: the network's logits on a batch and on its mirror image, averaged. A network
//! trained with random horizontal flips has seen both orientations; averaging the two views usually adds a little
//! accuracy at twice the cost of a forward pass.

use crate::compiled::Classifier;
use crate::data::transforms::hflip;
use crate::{Result, Shape4};

/// `(net(x) + net(hflip(x))) / 2` for the NCHW batch `x` of shape `xs`: the logits `[n, num_classes]` averaged
/// over the image and its mirror. A [`crate::nn::ResNet`] runs in its current mode; for evaluation that is eval
/// mode (in training mode the batch norms would see, and count, two batches).
pub fn forward_flip_tta(net: &mut impl Classifier, x: &[f32], xs: Shape4) -> Result<Vec<f32>> {
    // The first forward refuses an `x` that is not `xs`, before the flip could.
    let mut logits = net.logits(x, xs)?.to_vec();
    let mut mirror = x.to_vec();
    hflip(&mut mirror, xs.w);
    let flipped = net.logits(&mirror, xs)?;
    for (a, &b) in logits.iter_mut().zip(flipped) {
        *a = 0.5 * (*a + b);
    }
    Ok(logits)
}
