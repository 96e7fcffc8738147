//! The geometry of one convolution: channels, kernel, stride, padding, the planes, and which kernel taps ever
//! read the input (the others fall wholly in the padding and are skipped by every kernel).

/// Largest kernel side supported (the tap masks are `u32`).
pub const MAX_KERNEL: usize = 32;

fn live_mask(k: usize, stride: usize, pad: usize, size: usize, out: usize) -> u32 {
    let mut mask = 0;
    for t in 0..k {
        if (0..out).any(|o| {
            let i = (o * stride + t) as isize - pad as isize;
            i >= 0 && i < size as isize
        }) {
            mask |= 1 << t;
        }
    }
    mask
}

/// The set bits of `mask`, lowest first.
pub(crate) fn bits(mask: u32) -> impl Iterator<Item = usize> + Clone {
    (0..32).filter(move |b| mask & (1 << b) != 0)
}

/// Geometry of one convolution: channels, kernel, stride, padding and the input/output plane sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input channels (last axis of `x [n, h, w, cin]`).
    pub cin: usize,
    /// Output channels (last axis of `y [n, oh, ow, cout]`).
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride, in both directions.
    pub stride: usize,
    /// Zero padding on each side, in both directions.
    pub pad: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height, `(h + 2·pad − kh) / stride + 1`.
    pub oh: usize,
    /// Output width, `(w + 2·pad − kw) / stride + 1`.
    pub ow: usize,
    /// Bit `ky` set when kernel row `ky` reads the input for at least one output row.
    pub(crate) live_rows: u32,
    /// Bit `kx` set when kernel column `kx` reads the input for at least one output column.
    pub(crate) live_cols: u32,
}

impl ConvGeom {
    /// Output size `(h + 2·pad − k) / stride + 1`, as PyTorch computes it. Returns `None` when the kernel does
    /// not fit the padded input (or is larger than [`MAX_KERNEL`]).
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        h: usize,
        w: usize,
    ) -> Option<Self> {
        if stride == 0 || k == 0 || k > MAX_KERNEL || h + 2 * pad < k || w + 2 * pad < k {
            return None;
        }
        let oh = (h + 2 * pad - k) / stride + 1;
        let ow = (w + 2 * pad - k) / stride + 1;
        let live_rows = live_mask(k, stride, pad, h, oh);
        let live_cols = live_mask(k, stride, pad, w, ow);
        Some(ConvGeom {
            cin,
            cout,
            kh: k,
            kw: k,
            stride,
            pad,
            h,
            w,
            oh,
            ow,
            live_rows,
            live_cols,
        })
    }
    /// Rows of the full weight matrix: `kh·kw·cin`.
    pub fn patch_len(&self) -> usize {
        self.kh * self.kw * self.cin
    }
    /// Kernel taps that read the input somewhere.
    pub fn live_taps(&self) -> usize {
        (self.live_rows.count_ones() * self.live_cols.count_ones()) as usize
    }
    /// Columns of the im2col matrix: `live_taps·cin`.
    pub fn live_patch_len(&self) -> usize {
        self.live_taps() * self.cin
    }
    /// The pixel (`iy·w + ix`, within an image) that tap `(ky, kx)` reads for output position `(oy, ox)`, or
    /// `None` where the tap falls in the padding.
    pub(crate) fn input_pixel(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<usize> {
        let iy = (oy * self.stride + ky).checked_sub(self.pad)?;
        let ix = (ox * self.stride + kx).checked_sub(self.pad)?;
        (iy < self.h && ix < self.w).then_some(iy * self.w + ix)
    }
    /// The live taps `(ky, kx)` in row-major order (the order of the column matrix's tap blocks).
    pub(crate) fn live_taps_iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        bits(self.live_rows).flat_map(move |ky| bits(self.live_cols).map(move |kx| (ky, kx)))
    }
    /// True when every kernel tap reads the input somewhere.
    pub fn all_taps_live(&self) -> bool {
        self.live_taps() == self.kh * self.kw
    }
    /// True when `x` is its own column matrix (1×1 kernel, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// The convolution that computes this one's input gradient when the stride is 1: `dy` convolved with the
    /// rotated, channel-swapped kernel, padded by `k − 1 − pad` (same-size output = this conv's input).
    pub fn transposed(&self) -> Option<ConvGeom> {
        if self.stride != 1 || self.pad >= self.kh || !self.all_taps_live() {
            return None;
        }
        let g = ConvGeom::new(
            self.cout,
            self.cin,
            self.kh,
            1,
            self.kh - 1 - self.pad,
            self.oh,
            self.ow,
        )?;
        (g.oh == self.h && g.ow == self.w && g.all_taps_live()).then_some(g)
    }
}

impl std::fmt::Display for ConvGeom {
    /// `3x3 /1  256->256   14x14`: kernel, stride, channels and input plane, in fixed widths (plan tables).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{} /{} {:>4}->{:<4} {:>3}x{:<3}",
            self.kh, self.kw, self.stride, self.cin, self.cout, self.h, self.w
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_taps_are_found() {
        // 3×3 pad 1 on a 1×1 plane: only the centre tap reads the input.
        let g = ConvGeom::new(4, 4, 3, 1, 1, 1, 1).unwrap();
        assert_eq!(g.live_taps(), 1);
        // 3×3 stride 2 pad 1 from 2×2 to 1×1: rows/cols 1 and 2 are live.
        let g = ConvGeom::new(4, 4, 3, 2, 1, 2, 2).unwrap();
        assert_eq!((g.oh, g.live_taps()), (1, 4));
        // 7×7 stride 2 pad 3 on 28×28: every tap is live somewhere.
        assert_eq!(
            ConvGeom::new(1, 8, 7, 2, 3, 28, 28).unwrap().live_taps(),
            49
        );
    }
}
