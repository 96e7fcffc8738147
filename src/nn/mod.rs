//! Layers: parameters, their gradients, and what backward needs, with `forward` and `backward` side by side.
//! Networks are described by [`arch::ResNetConfig`] and built in [`resnet`] from [`Residual`] blocks; [`keys`]
//! walks their layers in state-dict order.
//!
//! Every layer owns its output and input-gradient buffers and reuses them while the batch shape stays the
//! same, so a steady-state training step allocates no activation memory. Each layer has one `forward` and one
//! `backward`; where a caller may lend the memory a pass writes instead, they take a [`Buffers`] or a [`Grad`].

pub mod arch;
pub mod batch_norm;
pub mod conv2d;
pub mod keys;
pub mod linear;
pub mod max_pool;
pub mod residual;
pub mod resnet;
pub mod state;
pub mod sync_bn;

pub use arch::{ArchName, BlockKind, Init, Naming, ResNetConfig, Shortcut, Stem, MAX_PARAMS};
pub use batch_norm::{BatchNorm2d, BnStore};
pub use conv2d::{Conv2d, ConvStore};
pub use keys::{load_residual, GradsReady, LayerKey, LayerMut, LayerRef};
pub use linear::Linear;
pub use max_pool::MaxPool2d;
pub use residual::Residual;
pub use resnet::{resnet18, resnet_block, ResNet};
pub use state::{StateDict, StateTensor};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Scratch memory shared by all convolutions of a model (im2col columns); grows to the largest request.
#[derive(Default)]
pub struct Workspace {
    buf: Vec<f32>,
}

impl Workspace {
    /// A slice of at least `len` floats (contents unspecified).
    pub fn get(&mut self, len: usize) -> &mut [f32] {
        if self.buf.len() < len {
            self.buf.resize(len, 0.0);
        }
        &mut self.buf[..len]
    }
}

/// Where a pass gets the memory it writes: the layer's own buffers, kept and reused from call to call (what
/// training needs: backward reads them), or buffers `L` the caller lends for the call, so that a model can
/// share a few among all its layers.
pub enum Buffers<'a, L: ?Sized> {
    /// The layer's own (its `out`, its `grad_input`).
    Own,
    /// The caller's.
    Lent(&'a mut L),
}

impl<L: ?Sized> Buffers<'_, L> {
    /// The same source for one more call.
    pub fn reborrow(&mut self) -> Buffers<'_, L> {
        match self {
            Buffers::Own => Buffers::Own,
            Buffers::Lent(l) => Buffers::Lent(&mut **l),
        }
    }
}

/// The output gradient a backward pass starts from, and where the input gradient goes.
pub enum Grad<'a, L: ?Sized> {
    /// `d out`, read only; the input gradient goes to the layer's own buffer.
    Own(&'a [f32]),
    /// Buffers `L` the caller lends, holding `d out` on entry and the input gradient on return: no
    /// activation-sized buffer per layer (151 MB for the chapter's stem at 96×96, batch 256).
    Lent(&'a mut L),
}

/// Sets `buf` to exactly `len` elements, reusing its allocation when it is large enough.
pub(crate) fn ensure_len<T: Clone + Default>(buf: &mut Vec<T>, len: usize) {
    if buf.len() != len {
        buf.resize(len, T::default());
    }
}

/// The random source used for initialization (ChaCha8, reproducible across platforms for a seed).
pub type InitRng = ChaCha8Rng;
pub use rand::SeedableRng;

/// PyTorch's default init for Conv2d and Linear: weight and bias ~ U(−1/√fan_in, 1/√fan_in)
/// (kaiming_uniform with a = √5 reduces to this bound).
pub(crate) fn uniform_init(rng: &mut InitRng, len: usize, fan_in: usize) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    (0..len).map(|_| rng.random_range(-bound..bound)).collect()
}

/// torchvision's conv init, `kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`: N(0, 2 / fan_out).
pub(crate) fn kaiming_normal_fan_out(rng: &mut InitRng, len: usize, fan_out: usize) -> Vec<f32> {
    let std = (2.0 / fan_out as f32).sqrt();
    (0..len)
        .map(|_| std * rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect()
}
