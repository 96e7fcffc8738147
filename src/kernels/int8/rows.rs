//! Where the register tiles ([`super::tiles`]) of one task read their rows: per tile, per tap, per row of the
//! tile, a pointer to the `cin` bytes that row multiplies through that tap.
//!
//! Two ways, chosen by the geometry ([`gathers`]):
//! - **in place**: each pointer is the input pixel under the tap (a zero block, or the stem's zero points, where
//!   the tap falls in the padding);
//! - **gathered**: for a convolution with few channels and several taps (the stem: 49 taps of 4 bytes), each row's
//!   taps are first copied side by side into a buffer, `[rows][taps·cin]`, and the tile reads one tap of
//!   `taps·cin` bytes. The packed weights need no change: with `cin` a multiple of 4 their `[taps][cin/4][W][4]`
//!   is `[1][taps·cin/4][W][4]`. In place, such a tile would load four pointers per tap for one group of
//!   products, and the stem ran at a third of the 3×3 convolutions' rate.

use super::{Path, ZEROS};
use crate::kernels::conv::tile::MAX_CIN;
use crate::kernels::conv::ConvGeom;

/// Channels below which a convolution of several taps gathers its rows.
const GATHER_BELOW: usize = 16;

/// True when the register tiles read `g`'s rows gathered (see the module documentation).
pub(super) fn gathers(g: &ConvGeom) -> bool {
    g.kh * g.kw > 1 && g.cin < GATHER_BELOW && g.cin.is_multiple_of(4)
}

/// One task's rows: `ptrs [tiles][taps][mr]`, read as `taps` taps of `cin` bytes.
pub(super) struct TileRows {
    pub ptrs: Vec<*const u8>,
    pub taps: usize,
    pub cin: usize,
    /// The gathered rows the pointers point into (empty in place).
    _gathered: Vec<u8>,
}

/// Bytes past a gathered buffer's last row that the AVX2 copy may overwrite (see [`copy_avx2`]).
const SLACK: usize = 32;

impl TileRows {
    /// The rows `r0..r0 + nrows` of `g` over the NHWC batch `x`, in tiles of `mr` rows (rows past `nrows` in the
    /// last tile read something valid; their sums are never stored), `pad` what a padded tap reads. Allocates the
    /// pointers (and, gathered, the rows).
    pub fn of(
        path: Path,
        g: &ConvGeom,
        x: &[u8],
        pad: &[u8],
        r0: usize,
        nrows: usize,
        mr: usize,
    ) -> TileRows {
        let tiles = nrows.div_ceil(mr);
        if gathers(g) {
            let k = g.kh * g.kw * g.cin;
            let mut gathered = vec![0u8; nrows * k + SLACK];
            // SAFETY: `gathered` holds `nrows · k` bytes and the slack; the pad holds `cin` bytes (checked by
            // `conv`); the path's instructions are on this CPU (checked by `conv`).
            unsafe { path.gather(g, x, pad, r0, nrows, &mut gathered) };
            let base = gathered.as_ptr();
            let ptrs = (0..tiles * mr)
                // SAFETY: inside `gathered`; a dead row reads row 0.
                .map(|r| unsafe { base.add(if r < nrows { r * k } else { 0 }) })
                .collect();
            return TileRows {
                ptrs,
                taps: 1,
                cin: k,
                _gathered: gathered,
            };
        }
        TileRows {
            ptrs: pointers(g, x, pad, r0, nrows, mr),
            taps: g.kh * g.kw,
            cin: g.cin,
            _gathered: Vec::new(),
        }
    }

    /// Tile `tile`'s pointers, `[taps][mr]`.
    pub fn tile(&self, tile: usize, mr: usize) -> &[*const u8] {
        &self.ptrs[tile * self.taps * mr..][..self.taps * mr]
    }
}

/// The in-place pointers `[tiles][taps][mr]` of rows `r0..r0 + nrows`.
fn pointers(
    g: &ConvGeom,
    x: &[u8],
    pad: &[u8],
    r0: usize,
    nrows: usize,
    mr: usize,
) -> Vec<*const u8> {
    let (cin, taps) = (g.cin, g.kh * g.kw);
    let tiles = nrows.div_ceil(mr);
    let mut ptrs = vec![pad[..cin].as_ptr(); tiles * taps * mr];
    // A window wholly inside the image takes its taps' pointers as offsets from its corner (the stem's 49 taps
    // per row made the general case, a bounds check per tap, cost more than the products).
    let window = ((g.kh - 1) * g.w + g.kw) * cin;
    for (row, (img, oy, ox)) in positions(g, r0).take(nrows).enumerate() {
        let iy0 = (oy * g.stride) as isize - g.pad as isize;
        let ix0 = (ox * g.stride) as isize - g.pad as isize;
        let at = |t: usize| ((row / mr) * taps + t) * mr + row % mr;
        let inside =
            iy0 >= 0 && ix0 >= 0 && iy0 as usize + g.kh <= g.h && ix0 as usize + g.kw <= g.w;
        if inside {
            let corner = ((img * g.h + iy0 as usize) * g.w + ix0 as usize) * cin;
            let patch = x[corner..][..window].as_ptr();
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    // SAFETY: `(ky·w + kx)·cin + cin ≤ window`: inside the patch just sliced.
                    ptrs[at(ky * g.kw + kx)] = unsafe { patch.add((ky * g.w + kx) * cin) };
                }
            }
        } else {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let (iy, ix) = (iy0 + ky as isize, ix0 + kx as isize);
                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                        continue;
                    }
                    let pixel = (img * g.h + iy as usize) * g.w + ix as usize;
                    ptrs[at(ky * g.kw + kx)] = x[pixel * cin..][..cin].as_ptr();
                }
            }
        }
    }
    ptrs
}

/// The output positions `(image, oy, ox)` of `g`'s rows from `first` on, in order: walked, without a division
/// per row.
fn positions(g: &ConvGeom, first: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let (oh, ow) = (g.oh, g.ow);
    let plane = oh * ow;
    let mut at = (first / plane, first % plane / ow, first % ow);
    std::iter::from_fn(move || {
        let here = at;
        at.2 += 1;
        if at.2 == ow {
            at = (at.0, at.1 + 1, 0);
            if at.1 == oh {
                at = (at.0 + 1, 0, 0);
            }
        }
        Some(here)
    })
}

impl Path {
    /// Rows `first..first + count` of `g` (`cin` a multiple of 4) gathered into `dst [count][taps·cin]` (see
    /// [`gather`]), with the path's copy.
    ///
    /// # Safety
    /// `dst` holds `count · taps · cin` bytes and [`SLACK`] more (the AVX2 copy's last store may spill into it);
    /// the path is available.
    unsafe fn gather(
        self,
        g: &ConvGeom,
        x: &[u8],
        pad: &[u8],
        first: usize,
        count: usize,
        dst: &mut [u8],
    ) {
        let k = g.kh * g.kw * g.cin;
        assert!(
            g.cin.is_multiple_of(4) && dst.len() >= count * k + SLACK,
            "int8: rows gathered into too small a buffer"
        );
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Vnni512 | Path::Vnni256Evex | Path::Vnni256Vex | Path::Avx2 => {
                gather_avx2(g, x, pad, first, count, k, dst)
            }
            _ => gather(g, x, pad, first, count, k, dst, |src, dst, n| {
                core::ptr::copy_nonoverlapping(src, dst, n)
            }),
        }
    }
}

/// [`gather`] with [`copy_avx2`].
///
/// # Safety
/// As [`gather`]'s; the CPU has AVX2; `dst` holds [`SLACK`] bytes past its rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gather_avx2(
    g: &ConvGeom,
    x: &[u8],
    pad: &[u8],
    first: usize,
    count: usize,
    k: usize,
    dst: &mut [u8],
) {
    gather(g, x, pad, first, count, k, dst, |src, dst, n| {
        copy_avx2(src, dst, n)
    })
}

/// The reduction rows of output rows `first..first + count` of `g` over the NHWC batch `x`: `dst [count][k]`, row
/// `i` holding per tap (`t = ky·kw + kx`) the `cin` channels of the pixel under it at `t·⌈cin/4⌉·4` (`pad`, `[cin]`,
/// where the tap falls in the padding), then zeros to `k`. The bytes between a tap's `cin` and `⌈cin/4⌉·4` are left
/// as they are: their weights are zero. A kernel row wholly inside the image is one copy where the taps are side by
/// side in `dst` too (`cin` a multiple of 4): the stem's 7 taps of 4 bytes, one copy of 28, and no pointer per tap.
/// The register tiles' rows ([`TileRows`]: `k = taps·cin`) and AMX's (`k` rounded up to its step) are made so.
///
/// # Safety
/// `dst` holds `count · k` bytes, `k ≥ taps·⌈cin/4⌉·4`, and `k − taps·⌈cin/4⌉·4 ≤` [`MAX_CIN`]; `copy(src, dst,
/// n)` copies `n` bytes, and whatever it writes past them lies inside `dst` and is written again later (rows
/// and taps are written in order).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gather(
    g: &ConvGeom,
    x: &[u8],
    pad: &[u8],
    first: usize,
    count: usize,
    k: usize,
    dst: &mut [u8],
    copy: impl Fn(*const u8, *mut u8, usize),
) {
    let cin = g.cin;
    let per_tap = cin.div_ceil(4) * 4;
    let taps_end = g.kh * g.kw * per_tap;
    assert!(
        pad.len() >= cin && taps_end <= k && k - taps_end <= MAX_CIN && dst.len() >= count * k,
        "int8: rows gathered into too small a buffer"
    );
    let base = dst.as_mut_ptr();
    for (i, (img, oy, ox)) in positions(g, first).take(count).enumerate() {
        let row = base.add(i * k);
        if k > taps_end {
            // The buffers are reused: the zeros past the last tap, which meet other weights, are written each time.
            copy(ZEROS.as_ptr(), row.add(taps_end), k - taps_end);
        }
        let iy0 = (oy * g.stride) as isize - g.pad as isize;
        let ix0 = (ox * g.stride) as isize - g.pad as isize;
        let whole_rows = ix0 >= 0 && ix0 as usize + g.kw <= g.w && per_tap == cin;
        for ky in 0..g.kh {
            let iy = iy0 + ky as isize;
            let taps = row.add(ky * g.kw * per_tap);
            if iy < 0 || iy >= g.h as isize {
                for kx in 0..g.kw {
                    copy(pad.as_ptr(), taps.add(kx * per_tap), cin);
                }
                continue;
            }
            let line = &x[(img * g.h + iy as usize) * g.w * cin..][..g.w * cin];
            if whole_rows {
                let src = &line[ix0 as usize * cin..][..g.kw * cin];
                copy(src.as_ptr(), taps, g.kw * cin);
                continue;
            }
            for kx in 0..g.kw {
                let ix = ix0 + kx as isize;
                let src = if ix < 0 || ix >= g.w as isize {
                    &pad[..cin]
                } else {
                    &line[ix as usize * cin..][..cin]
                };
                copy(src.as_ptr(), taps.add(kx * per_tap), cin);
            }
        }
    }
}

/// Copies `n` bytes (a multiple of 4) from `src` to `dst`, 32 a step, the last step a masked load of its words and
/// a whole store: `dst` must be writable for `n` rounded up to 32 bytes (one call per kernel row; `memcpy`'s
/// call cost more than the products).
///
/// # Safety
/// The CPU has AVX2; `src` readable for `n` bytes, `dst` writable for `n.next_multiple_of(32)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn copy_avx2(src: *const u8, dst: *mut u8, n: usize) {
    use core::arch::x86_64::*;
    debug_assert!(n.is_multiple_of(4));
    let mut j = 0;
    while j + 32 <= n {
        _mm256_storeu_si256(
            dst.add(j) as *mut _,
            _mm256_loadu_si256(src.add(j) as *const _),
        );
        j += 32;
    }
    if j < n {
        let words = _mm256_set1_epi32(((n - j) / 4) as i32);
        let mask = _mm256_cmpgt_epi32(words, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        let v = _mm256_maskload_epi32(src.add(j) as *const i32, mask);
        _mm256_storeu_si256(dst.add(j) as *mut _, v);
    }
}
