//! Grad-CAM (Selvaraju et al., 2017) on the training path's network in eval mode: the activations `A` of one
//! stage or block, the gradient `G = d score / d A` of one class's logit, channel weights `α_c` = the spatial
//! mean of `G`, and the map `relu(Σ_c α_c A_c)` at the layer's resolution. What PyTorch computes with a forward
//! hook and a backward hook on the same module of a model in `eval()`.

use crate::nn::{Buffers, ResNet, Residual, Workspace};
use crate::{bail, Result, Shape4};

/// Which output a map explains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The most probable class.
    Top1,
    /// This class index.
    Class(usize),
}

/// A layer whose output Grad-CAM reads: the output of block `block` of stage `stage` (0-based), named as the
/// state dict names the module (`layer4`, `layer4.1`, `resnet_block4`…).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CamLayer {
    /// Stage index, 0-based.
    pub stage: usize,
    /// Block index within the stage, 0-based (a stage's output is its last block's).
    pub block: usize,
    /// The module's name as the user gave it or, by default, the last stage's.
    pub name: String,
}

impl CamLayer {
    /// The output of the network's last stage (Grad-CAM's usual layer).
    pub fn last_stage(net: &ResNet) -> CamLayer {
        let stage = net.stages.len() - 1;
        CamLayer {
            stage,
            block: net.stages[stage].len() - 1,
            name: format!("{}{}", net.config.naming.stage(), stage + 1),
        }
    }

    /// The layer named `name`: a stage (`layer3`, the chapter's `resnet_block3`; either prefix is accepted for
    /// either network) or one block of it (`layer3.1`). An error lists the names this network has.
    pub fn find(net: &ResNet, name: &str) -> Result<CamLayer> {
        let stage_prefix = net.config.naming.stage();
        let parsed = ["layer", "resnet_block"].iter().find_map(|prefix| {
            let rest = name.strip_prefix(prefix)?;
            let (stage, block) = match rest.split_once('.') {
                Some((s, b)) => (s, Some(b)),
                None => (rest, None),
            };
            let digits =
                |s: &str| !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit());
            if !digits(stage) || !block.is_none_or(digits) {
                return None;
            }
            // At most four digits each: the parses cannot overflow.
            let block: Option<usize> = block.map(|b| b.parse().expect("digits"));
            Some((stage.parse::<usize>().expect("digits"), block))
        });
        if let Some((k, block)) = parsed {
            if (1..=net.stages.len()).contains(&k) {
                let blocks = net.stages[k - 1].len();
                match block {
                    None => {
                        return Ok(CamLayer {
                            stage: k - 1,
                            block: blocks - 1,
                            name: name.to_string(),
                        })
                    }
                    Some(b) if b < blocks => {
                        return Ok(CamLayer {
                            stage: k - 1,
                            block: b,
                            name: name.to_string(),
                        })
                    }
                    _ => {}
                }
            }
        }
        let last = net.stages.len();
        // Escaped first, then clipped: escaping can make a character ten.
        let shown = crate::error::clip(&format!("{name:?}"), 80);
        bail!(
            "--layer {shown}: not a layer of this network; choose a stage, {stage_prefix}1 to {stage_prefix}{last}, \
             or one of its blocks, e.g. {stage_prefix}{last}.{}",
            net.stages[last - 1].len() - 1
        )
    }
}

/// One Grad-CAM map and what it was computed from.
#[derive(Clone, Debug)]
pub struct GradCam {
    /// The layer whose activations were weighted.
    pub layer: String,
    /// The class explained.
    pub class: usize,
    /// The logits of the forward, `[classes]`.
    pub logits: Vec<f32>,
    /// The map, `[h, w]` row-major at the layer's resolution: `relu(Σ_c α_c A_c)`, not normalized.
    pub map: Vec<f32>,
    /// Height of [`GradCam::map`].
    pub h: usize,
    /// Width of [`GradCam::map`].
    pub w: usize,
    /// The channel weights `α_c`, `[c]`.
    pub weights: Vec<f32>,
}

/// Grad-CAM of the NCHW input `x` (shape `xs`, one image) for `target` at `layer`: an eval-mode forward on the
/// layers' own buffers, then the gradient of the class's logit back to the layer's output (the classifier and
/// the global average pool in closed form, each later block's eval-mode backward). The network must be in eval
/// mode; its convolutions' weight gradients are overwritten.
pub fn grad_cam(
    net: &mut ResNet,
    x: &[f32],
    xs: Shape4,
    layer: &CamLayer,
    target: Target,
) -> Result<GradCam> {
    if net.is_train() {
        bail!("Grad-CAM runs on a network in eval mode (set_train(false))");
    }
    if xs.n != 1 {
        bail!(
            "Grad-CAM explains one image at a time, got a batch of {}",
            xs.n
        );
    }
    if layer.stage >= net.stages.len() || layer.block >= net.stages[layer.stage].len() {
        bail!("layer {} is not in this network", layer.name);
    }
    let logits = net.forward(x, xs, Buffers::Own)?.to_vec();
    let class = match target {
        Target::Top1 => argmax(&logits),
        Target::Class(k) if k < logits.len() => k,
        Target::Class(k) => bail!("class {k} out of range for {} classes", logits.len()),
    };
    let chosen = net.stages[..layer.stage]
        .iter()
        .map(Vec::len)
        .sum::<usize>()
        + layer.block;
    let mut blocks: Vec<&mut Residual> = net.stages.iter_mut().flatten().collect();
    let last = blocks.len() - 1;
    // d logit / d (last block's output): the classifier's row for the class, spread evenly by the pool.
    let s = blocks[last].out_shape;
    let hw = (s.h * s.w) as f32;
    let fc_row = &net.fc.weight[class * net.fc.in_features..][..net.fc.in_features];
    let longest = blocks[chosen..]
        .iter()
        .map(|b| b.eval_grad_buffer_len())
        .max()
        .unwrap_or(0);
    let mut grads: [Vec<f32>; 3] = std::array::from_fn(|_| vec![0.0; longest]);
    for px in grads[0][..s.len()].chunks_exact_mut(s.c) {
        for (g, &w) in px.iter_mut().zip(fc_row) {
            *g = w / hw;
        }
    }
    let mut ws = Workspace::default();
    for j in (chosen + 1..=last).rev() {
        let (before, rest) = blocks.split_at_mut(j);
        rest[0].backward_eval(&before[j - 1].out, &mut grads, &mut ws);
    }
    let a = &blocks[chosen];
    let s = a.out_shape;
    let weights = channel_weights(&grads[0][..s.len()], s.c);
    let mut map = vec![0.0; s.h * s.w];
    weighted_relu(&a.out, &weights, &mut map);
    Ok(GradCam {
        layer: layer.name.clone(),
        class,
        logits,
        map,
        h: s.h,
        w: s.w,
        weights,
    })
}

/// Index of the largest value (the first of ties).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0
}

/// Grad-CAM's channel weights: the spatial mean of the gradient `grad [h·w, c]` (NHWC, one image) per channel,
/// summed in f64. Returns `[c]`.
pub fn channel_weights(grad: &[f32], c: usize) -> Vec<f32> {
    let mut sums = vec![0f64; c];
    for px in grad.chunks_exact(c) {
        for (s, &g) in sums.iter_mut().zip(px) {
            *s += g as f64;
        }
    }
    let n = (grad.len() / c).max(1) as f64;
    sums.iter().map(|s| (s / n) as f32).collect()
}

/// `map[p] = max(Σ_c weights[c]·act[p, c], 0)` for the activation `act [h·w, c]` (NHWC, one image), summed in
/// f64; `map`: `[h·w]`.
pub fn weighted_relu(act: &[f32], weights: &[f32], map: &mut [f32]) {
    for (m, px) in map.iter_mut().zip(act.chunks_exact(weights.len())) {
        let v: f64 = px
            .iter()
            .zip(weights)
            .map(|(&a, &w)| a as f64 * w as f64)
            .sum();
        *m = v.max(0.0) as f32;
    }
}
