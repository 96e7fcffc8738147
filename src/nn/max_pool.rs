//! `MaxPool2d`: the ImageNet stem's 3×3 stride-2 max pool (padding 1), forward and backward over NHWC batches.

use super::{ensure_len, Buffers};
use crate::kernels::pool::{max_pool_backward, max_pool_forward, PoolGeom};
use crate::Shape4;

/// PyTorch's `nn.MaxPool2d(kernel, stride, padding)` over square windows; padding counts as −∞.
pub struct MaxPool2d {
    /// Window side `k` (square `k × k`).
    pub kernel: usize,
    /// Stride, in both directions.
    pub stride: usize,
    /// Padding on each side, in both directions.
    pub padding: usize,
    /// Output of the last forward, NHWC `[n, oh, ow, c]`.
    pub out: Vec<f32>,
    /// Gradient w.r.t. the input from the last backward, NHWC like the input.
    pub grad_input: Vec<f32>,
    /// Per output, the index within its image of the input that won its window (what backward routes by).
    argmax: Vec<u32>,
    /// Geometry and batch of the last forward.
    geom: Option<PoolGeom>,
    batch: usize,
}

impl MaxPool2d {
    /// `nn.MaxPool2d(kernel_size=kernel, stride, padding)`.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        MaxPool2d {
            kernel,
            stride,
            padding,
            out: Vec::new(),
            grad_input: Vec::new(),
            argmax: Vec::new(),
            geom: None,
            batch: 0,
        }
    }

    /// Geometry for input shape `xs`, or `None` if the window does not fit the plane.
    pub fn geom(&self, xs: Shape4) -> Option<PoolGeom> {
        PoolGeom::new(xs.c, self.kernel, self.stride, self.padding, xs.h, xs.w)
    }

    /// Output shape for input `xs` (`None` as for [`MaxPool2d::geom`]).
    pub fn output_shape(&self, xs: Shape4) -> Option<Shape4> {
        self.geom(xs).map(|g| Shape4::new(xs.n, xs.c, g.oh, g.ow))
    }

    /// `out = max over each window of x` for `x` NHWC of shape `xs` (checked with [`MaxPool2d::geom`] by the
    /// model). With `bufs` lent, [`MaxPool2d::out`] is taken from them; the caller gives it back when the next
    /// layer has read it.
    pub fn forward(&mut self, x: &[f32], xs: Shape4, bufs: Buffers<'_, Vec<Vec<f32>>>) -> Shape4 {
        let g = self
            .geom(xs)
            .expect("max pool: input shape checked by the model");
        let ys = Shape4::new(xs.n, xs.c, g.oh, g.ow);
        if let Buffers::Lent(spare) = bufs {
            self.out = spare.pop().unwrap_or_default();
        }
        ensure_len(&mut self.out, ys.len());
        ensure_len(&mut self.argmax, ys.len());
        max_pool_forward(&g, xs.n, x, &mut self.out, &mut self.argmax);
        self.geom = Some(g);
        self.batch = xs.n;
        ys
    }

    /// Given `dy` (NHWC, the last output's shape), routes each output's gradient to the input that won its
    /// window, into [`MaxPool2d::grad_input`].
    pub fn backward(&mut self, dy: &[f32]) {
        let g = self.geom.expect("max pool: backward after a forward");
        ensure_len(&mut self.grad_input, self.batch * g.h * g.w * g.c);
        max_pool_backward(&g, self.batch, dy, &self.argmax, &mut self.grad_input);
    }
}
