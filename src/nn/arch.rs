//! The one description of a residual network ([`ResNetConfig`]) and everything derived from it without building
//! the network: the blocks and their convolutions ([`ResNetConfig::blocks`], [`BlockSpec::main_convs`]), the
//! parameter count, the key names of each naming scheme ([`Naming`]), and the named models (`--arch`).
//!
//! A network is a stem, stages of residual blocks, a global average pool and a Linear classifier:
//! - stage `k` has `layers[k]` blocks of `widths[k]` planes; a block outputs `widths[k] · expansion` channels
//!   (expansion 1 for [`BlockKind::Basic`], 4 for [`BlockKind::Bottleneck`]);
//! - the first block of every stage but the first halves height and width (stride 2); a block whose stride is
//!   not 1 or whose channels change gets a 1×1 shortcut convolution, otherwise the shortcut is the identity;
//! - the chapter's ResNet-18 and torchvision's `BasicBlock` networks share that main path (3×3 carrying the
//!   stride, 3×3); they differ in conv biases, BN on the shortcut, initialization and key names.

use crate::error::few;
use crate::{bail, Error, Result, Shape4};
use serde::{Deserialize, Serialize};

/// The kind of residual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// 3×3 (carrying the stride) → 3×3; expansion 1. The chapter's `Residual` and torchvision's `BasicBlock`.
    Basic,
    /// 1×1 → 3×3 (carrying the stride, torchvision's "v1.5") → 1×1 to 4× the planes; expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per plane of the block: 1 or 4.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// The layers before the first stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    /// 7×7 stride-2 conv (padding 3), BN, ReLU, 3×3 stride-2 max pool (padding 1): the chapter's and ImageNet's.
    Imagenet,
    /// 3×3 stride-1 conv (padding 1), BN, ReLU, no pool: for 28×28 and 32×32 inputs (as CIFAR ResNets do).
    Small,
}

/// What the shortcut of a block that changes shape is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortcut {
    /// A 1×1 conv alone (the chapter's `conv3`).
    Conv,
    /// A 1×1 conv and a batch norm (torchvision's `downsample`).
    ConvBn,
}

/// How the initial parameters are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// PyTorch's defaults: convs and Linear uniform in ±1/√fan_in (the chapter's network is built this way).
    PytorchDefault,
    /// torchvision's ResNet: convs kaiming normal (fan_out, ReLU gain), Linear PyTorch's default.
    Torchvision,
}

/// Which state-dict key names the network uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Naming {
    /// The chapter's `nn.Sequential`: `0` (stem conv), `1` (stem BN), `resnet_block{k}.{i}.conv1/conv2/conv3/bn1/bn2`,
    /// `fc.1`; a block registers conv1, conv2, conv3 (the shortcut), bn1, bn2.
    Chapter,
    /// torchvision's `ResNet`: `conv1`, `bn1`, `layer{k}.{i}.conv1/bn1/conv2/bn2[/conv3/bn3]/downsample.0/.1`, `fc`.
    Torchvision,
}

/// One tensor-holding layer of a block, as the naming schemes order them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The main path's `i`-th convolution.
    Conv(usize),
    /// The batch norm after the main path's `i`-th convolution.
    Bn(usize),
    /// The shortcut's 1×1 convolution.
    ShortcutConv,
    /// The shortcut's batch norm.
    ShortcutBn,
}

impl Naming {
    /// Key of the stem's convolution.
    pub fn stem_conv(self) -> &'static str {
        match self {
            Naming::Chapter => "0",
            Naming::Torchvision => "conv1",
        }
    }
    /// Key of the stem's batch norm.
    pub fn stem_bn(self) -> &'static str {
        match self {
            Naming::Chapter => "1",
            Naming::Torchvision => "bn1",
        }
    }
    /// Prefix of stage `k` (1-based), before `.{block}`: `resnet_block` or `layer`.
    pub fn stage(self) -> &'static str {
        match self {
            Naming::Chapter => "resnet_block",
            Naming::Torchvision => "layer",
        }
    }
    /// Shape-walk names of the stem's ReLU, its max pool and the global average pool (layers without keys).
    pub fn stateless(self) -> [&'static str; 3] {
        match self {
            Naming::Chapter => ["2", "3", "global_avg_pool"],
            Naming::Torchvision => ["relu", "maxpool", "avgpool"],
        }
    }
    /// Key of the classifier.
    pub fn fc(self) -> &'static str {
        match self {
            Naming::Chapter => "fc.1",
            Naming::Torchvision => "fc",
        }
    }
    /// A block's layers in registration (state-dict) order with their names, for a block of `main` main-path
    /// convolutions; the caller skips the shortcut roles of a block without one.
    pub fn block_layers(self, main: usize) -> &'static [(Role, &'static str)] {
        use Role::*;
        match (self, main) {
            (Naming::Chapter, _) => &[
                (Conv(0), "conv1"),
                (Conv(1), "conv2"),
                (ShortcutConv, "conv3"),
                (Bn(0), "bn1"),
                (Bn(1), "bn2"),
            ],
            (Naming::Torchvision, 2) => &[
                (Conv(0), "conv1"),
                (Bn(0), "bn1"),
                (Conv(1), "conv2"),
                (Bn(1), "bn2"),
                (ShortcutConv, "downsample.0"),
                (ShortcutBn, "downsample.1"),
            ],
            (Naming::Torchvision, _) => &[
                (Conv(0), "conv1"),
                (Bn(0), "bn1"),
                (Conv(1), "conv2"),
                (Bn(1), "bn2"),
                (Conv(2), "conv3"),
                (Bn(2), "bn3"),
                (ShortcutConv, "downsample.0"),
                (ShortcutBn, "downsample.1"),
            ],
        }
    }
}

/// The named models of `--arch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchName {
    /// The chapter's ResNet-18 (conv biases, no BN on the shortcut, `nn.Sequential` names).
    Chapter,
    /// torchvision's `resnet18`: BasicBlock, layers 2, 2, 2, 2.
    Resnet18,
    /// torchvision's `resnet34`: BasicBlock, layers 3, 4, 6, 3.
    Resnet34,
    /// torchvision's `resnet50`: Bottleneck, layers 3, 4, 6, 3.
    Resnet50,
    /// torchvision's `resnet101`: Bottleneck, layers 3, 4, 23, 3.
    Resnet101,
    /// torchvision's `resnet152`: Bottleneck, layers 3, 8, 36, 3.
    Resnet152,
}

impl ArchName {
    /// Every named model, in the order `--arch` lists them.
    pub const ALL: [ArchName; 6] = [
        ArchName::Chapter,
        ArchName::Resnet18,
        ArchName::Resnet34,
        ArchName::Resnet50,
        ArchName::Resnet101,
        ArchName::Resnet152,
    ];

    /// The name as `--arch` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchName::Chapter => "chapter",
            ArchName::Resnet18 => "resnet18",
            ArchName::Resnet34 => "resnet34",
            ArchName::Resnet50 => "resnet50",
            ArchName::Resnet101 => "resnet101",
            ArchName::Resnet152 => "resnet152",
        }
    }
}

/// The description of a residual network, from which the layers, the shape walk, the parameter walk, the
/// key names, loading and the parameter count all follow. Stored as JSON in every model file we write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Channels of the input images (1 for Fashion-MNIST, 3 for colour).
    pub in_channels: usize,
    /// Number of classes: the length of each logits row.
    pub num_classes: usize,
    /// The residual block.
    pub block: BlockKind,
    /// Blocks per stage (torchvision's `layers`).
    pub layers: Vec<usize>,
    /// Planes of each stage; the stem outputs `widths[0]` channels, stage `k` outputs `widths[k] · expansion`.
    pub widths: Vec<usize>,
    /// The layers before the first stage.
    pub stem: Stem,
    /// Whether every convolution has a bias (the chapter's do; torchvision's, followed by BN, do not).
    pub conv_bias: bool,
    /// The shortcut of a block that changes shape.
    pub shortcut: Shortcut,
    /// How the parameters are initialized.
    pub init: Init,
    /// Start every block's last batch-norm weight at zero, so each block begins as the identity
    /// (torchvision's `zero_init_residual`).
    #[serde(default)]
    pub zero_init_residual: bool,
    /// Key names.
    pub naming: Naming,
}

/// The most trainable values a network may have (2^28, 24 times the chapter's ResNet-18): a configuration read
/// from a file or a flag that asks for more is refused before anything is allocated.
pub const MAX_PARAMS: usize = 1 << 28;
/// The most stages and blocks per stage a description may have (checked before anything is counted).
pub const MAX_STAGES: usize = 16;
/// See [`MAX_STAGES`].
pub const MAX_BLOCKS_PER_STAGE: usize = 1024;

/// One convolution of the description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel side.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
}

impl ConvSpec {
    /// Trainable values, with a bias when `bias`; `None` on overflow.
    pub fn num_params(&self, bias: bool) -> Option<usize> {
        self.cin
            .checked_mul(self.cout)?
            .checked_mul(self.k * self.k)?
            .checked_add(if bias { self.cout } else { 0 })
    }
}

/// One residual block of the description: where it sits, its channels and its stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Stage, 0-based (`resnet_block{stage+1}` / `layer{stage+1}`).
    pub stage: usize,
    /// Position in the stage, 0-based.
    pub index: usize,
    /// Input channels.
    pub cin: usize,
    /// Planes: the width of the block's inner convolutions.
    pub planes: usize,
    /// Output channels: `planes · expansion`.
    pub cout: usize,
    /// Stride of the block (2 for the first block of every stage but the first).
    pub stride: usize,
    /// The block kind.
    pub kind: BlockKind,
}

impl BlockSpec {
    /// Whether the shortcut is a 1×1 convolution (the shape changes) rather than the identity.
    pub fn has_shortcut(&self) -> bool {
        self.stride != 1 || self.cin != self.cout
    }
    /// The main path's convolutions, in order (each followed by a batch norm).
    pub fn main_convs(&self) -> Vec<ConvSpec> {
        let (i, p, o, s) = (self.cin, self.planes, self.cout, self.stride);
        let conv = |cin, cout, k, stride| ConvSpec {
            cin,
            cout,
            k,
            stride,
            pad: k / 2,
        };
        match self.kind {
            BlockKind::Basic => vec![conv(i, p, 3, s), conv(p, o, 3, 1)],
            BlockKind::Bottleneck => vec![conv(i, p, 1, 1), conv(p, p, 3, s), conv(p, o, 1, 1)],
        }
    }
    /// The shortcut's 1×1 convolution, when [`BlockSpec::has_shortcut`].
    pub fn shortcut_conv(&self) -> Option<ConvSpec> {
        self.has_shortcut().then_some(ConvSpec {
            cin: self.cin,
            cout: self.cout,
            k: 1,
            stride: self.stride,
            pad: 0,
        })
    }
}

impl ResNetConfig {
    /// The chapter's ResNet-18: basic blocks, widths 64, 128, 256, 512 with 2 blocks each, biased convs, a
    /// plain 1×1 conv shortcut, PyTorch's default initialization, `nn.Sequential` names.
    pub fn chapter(in_channels: usize, num_classes: usize) -> Self {
        ResNetConfig {
            in_channels,
            num_classes,
            block: BlockKind::Basic,
            layers: vec![2, 2, 2, 2],
            widths: vec![64, 128, 256, 512],
            stem: Stem::Imagenet,
            conv_bias: true,
            shortcut: Shortcut::Conv,
            init: Init::PytorchDefault,
            zero_init_residual: false,
            naming: Naming::Chapter,
        }
    }

    /// torchvision's `ResNet(block, layers)`: widths 64, 128, 256, 512, convs without bias, BN on the
    /// downsample shortcut, torchvision's initialization and key names.
    pub fn torchvision(
        block: BlockKind,
        layers: &[usize],
        in_channels: usize,
        num_classes: usize,
    ) -> Self {
        ResNetConfig {
            in_channels,
            num_classes,
            block,
            layers: layers.to_vec(),
            widths: vec![64, 128, 256, 512],
            stem: Stem::Imagenet,
            conv_bias: false,
            shortcut: Shortcut::ConvBn,
            init: Init::Torchvision,
            zero_init_residual: false,
            naming: Naming::Torchvision,
        }
    }

    /// A named model (`--arch`) for `in_channels` and `num_classes`.
    pub fn named(name: ArchName, in_channels: usize, num_classes: usize) -> Self {
        use BlockKind::*;
        let tv =
            |block, layers: &[usize]| Self::torchvision(block, layers, in_channels, num_classes);
        match name {
            ArchName::Chapter => Self::chapter(in_channels, num_classes),
            ArchName::Resnet18 => tv(Basic, &[2, 2, 2, 2]),
            ArchName::Resnet34 => tv(Basic, &[3, 4, 6, 3]),
            ArchName::Resnet50 => tv(Bottleneck, &[3, 4, 6, 3]),
            ArchName::Resnet101 => tv(Bottleneck, &[3, 4, 23, 3]),
            ArchName::Resnet152 => tv(Bottleneck, &[3, 8, 36, 3]),
        }
    }

    /// Output channels of the last stage: the classifier's input features.
    pub fn features(&self) -> usize {
        self.widths.last().map_or(0, |w| w * self.block.expansion())
    }

    /// The stem's convolution.
    pub fn stem_conv(&self) -> ConvSpec {
        let (k, stride) = match self.stem {
            Stem::Imagenet => (7, 2),
            Stem::Small => (3, 1),
        };
        ConvSpec {
            cin: self.in_channels,
            cout: self.widths[0],
            k,
            stride,
            pad: k / 2,
        }
    }

    /// Every block, stage by stage, in order. Call [`ResNetConfig::check`] first (it bounds the count).
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let mut out = Vec::new();
        let mut cin = self.widths[0];
        for (stage, (&planes, &count)) in self.widths.iter().zip(&self.layers).enumerate() {
            let cout = planes * self.block.expansion();
            for index in 0..count {
                out.push(BlockSpec {
                    stage,
                    index,
                    cin,
                    planes,
                    cout,
                    stride: if stage > 0 && index == 0 { 2 } else { 1 },
                    kind: self.block,
                });
                cin = cout;
            }
        }
        out
    }

    /// Trainable values of the network this configuration describes, computed without building it (`None` when
    /// the count overflows `usize` or the description is out of bounds): lets a loader refuse a lying file
    /// before allocating its network.
    pub fn num_params(&self) -> Option<usize> {
        self.check_shape().ok()?;
        let bias = self.conv_bias;
        let bn = |c: usize| c.checked_mul(2);
        let mut total = self
            .stem_conv()
            .num_params(bias)?
            .checked_add(bn(self.widths[0])?)?;
        for b in self.blocks() {
            for c in b.main_convs() {
                total = total
                    .checked_add(c.num_params(bias)?)?
                    .checked_add(bn(c.cout)?)?;
            }
            if let Some(c) = b.shortcut_conv() {
                total = total.checked_add(c.num_params(bias)?)?;
                if self.shortcut == Shortcut::ConvBn {
                    total = total.checked_add(bn(c.cout)?)?;
                }
            }
        }
        let fc = self
            .features()
            .checked_mul(self.num_classes)?
            .checked_add(self.num_classes)?;
        total.checked_add(fc)
    }

    /// The bounds checked before anything is counted: stages, blocks, positive sizes, a naming scheme that
    /// can name the blocks.
    fn check_shape(&self) -> Result<()> {
        if self.widths.is_empty() || self.widths.len() != self.layers.len() {
            bail!(
                "resnet: need one block count per stage width, got {} widths [{}] and {} block counts [{}]",
                self.widths.len(),
                few(&self.widths),
                self.layers.len(),
                few(&self.layers)
            );
        }
        if self.widths.len() > MAX_STAGES || self.layers.iter().any(|&l| l > MAX_BLOCKS_PER_STAGE) {
            bail!(
                "resnet: at most {MAX_STAGES} stages of {MAX_BLOCKS_PER_STAGE} blocks each, got {} stages of [{}] blocks",
                self.layers.len(),
                few(&self.layers)
            );
        }
        if self.in_channels == 0 {
            bail!("resnet: 0 input channels: the channel count must be positive");
        }
        if self.num_classes == 0 {
            bail!("resnet: 0 classes: the class count must be positive");
        }
        if self.widths.contains(&0) {
            bail!(
                "resnet: widths [{}] must all be positive",
                few(&self.widths)
            );
        }
        if self.widths.iter().any(|w| w.checked_mul(4).is_none()) {
            bail!("resnet: widths [{}] are too large", few(&self.widths));
        }
        if self.naming == Naming::Chapter
            && (self.block != BlockKind::Basic || self.shortcut != Shortcut::Conv)
        {
            bail!("resnet: the chapter's key names describe basic blocks with a plain 1×1 conv shortcut");
        }
        if self.block == BlockKind::Basic
            && self.naming == Naming::Chapter
            && self.layers.first() == Some(&0)
        {
            bail!("resnet: the chapter's first stage needs at least one block");
        }
        Ok(())
    }

    /// Checks an NCHW input shape against the network before anything walks it: its channels, and that it holds
    /// values (what the training path's shape walk and the compiled network both check first).
    pub fn check_input(&self, xs: Shape4) -> Result<()> {
        if xs.c != self.in_channels {
            bail!(
                "input has {} channels, the network expects {}",
                xs.c,
                self.in_channels
            );
        }
        if xs.is_empty() {
            bail!("input shape {xs} is empty");
        }
        Ok(())
    }

    /// The error of an input too small for the network (a layer's window would not fit).
    pub fn too_small(xs: Shape4) -> Error {
        Error::new(format!(
            "input {xs} is too small for the network (each stage halves height and width)"
        ))
    }

    /// Checks that the configuration describes a network this program builds: one block count per stage,
    /// positive channels, classes and widths, at most [`MAX_PARAMS`] parameters. Allocates nothing.
    pub fn check(&self) -> Result<()> {
        self.check_shape()?;
        match self.num_params() {
            Some(n) if n <= MAX_PARAMS => Ok(()),
            _ => bail!(
                "resnet: widths {:?} with layers {:?} describe more than {MAX_PARAMS} parameters, beyond what this program builds",
                self.widths,
                self.layers
            ),
        }
    }

    /// A short human name: `resnet50`, `chapter`, or the block kind and layers of another description.
    pub fn name(&self) -> String {
        for name in ArchName::ALL {
            let named = Self::named(name, self.in_channels, self.num_classes);
            if *self
                == (ResNetConfig {
                    zero_init_residual: self.zero_init_residual,
                    ..named
                })
            {
                return name.as_str().to_string();
            }
        }
        // Short even for a description that `check` would refuse (a million stages): the name goes in errors.
        format!(
            "{:?} blocks [{}], widths [{}], {:?} stem",
            self.block,
            few(&self.layers),
            few(&self.widths),
            self.stem
        )
        .to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_of_the_named_models() {
        let count = |name, c, k| ResNetConfig::named(name, c, k).num_params().unwrap();
        assert_eq!(count(ArchName::Chapter, 1, 10), 11_178_378);
        assert_eq!(count(ArchName::Resnet18, 3, 1000), 11_689_512);
        assert_eq!(count(ArchName::Resnet34, 3, 1000), 21_797_672);
        assert_eq!(count(ArchName::Resnet50, 3, 1000), 25_557_032);
        assert_eq!(count(ArchName::Resnet101, 3, 1000), 44_549_160);
        assert_eq!(count(ArchName::Resnet152, 3, 1000), 60_192_808);
    }

    #[test]
    fn bottleneck_blocks_follow_torchvision() {
        let c = ResNetConfig::named(ArchName::Resnet50, 3, 1000);
        let blocks = c.blocks();
        assert_eq!(blocks.len(), 16);
        // layer1.0: 64 → 256 at stride 1 still needs a downsample (channels change).
        assert!(blocks[0].has_shortcut() && blocks[0].stride == 1 && blocks[0].cout == 256);
        assert!(!blocks[1].has_shortcut());
        // layer2.0: the stride sits on the 3×3 (v1.5).
        let l2 = blocks[3];
        assert_eq!((l2.stage, l2.index, l2.stride), (1, 0, 2));
        let convs = l2.main_convs();
        assert_eq!((convs[0].k, convs[0].stride), (1, 1));
        assert_eq!((convs[1].k, convs[1].stride), (3, 2));
        assert_eq!(convs[2].cout, 512);
        assert_eq!(c.name(), "resnet50");
    }

    #[test]
    fn lying_descriptions_are_refused_without_counting() {
        let mut c = ResNetConfig::chapter(1, 10);
        c.layers = vec![usize::MAX; 4];
        assert!(c.check().is_err());
        c.layers = vec![2; 4];
        c.widths = vec![usize::MAX / 2; 4];
        assert!(c.check().is_err());
        c = ResNetConfig::chapter(1, 10);
        c.block = BlockKind::Bottleneck;
        assert!(c.check().is_err(), "chapter names cannot name a bottleneck");
    }
}
