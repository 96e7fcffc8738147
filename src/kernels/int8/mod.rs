//! Quantized convolutions: `u8` activations × `i8` weights summed in `i32`, then requantized as they are stored
//! ([`requant`]): a bias, a per-output-channel scale, a shortcut, the ReLU, the next layer's `u8` (or `f32`).
//!
//! Layouts: activations NHWC `[n·h·w, cin]` as the f32 kernels', their zero point 0 (every activation a
//! quantized convolution reads follows a ReLU, so none is negative); weights HWIO `[kh, kw, cin, cout]`,
//! symmetric (in [-127, 127]), packed once by [`pack`] into column panels of the path's tile width `W`:
//!
//! ```text
//! packed [cout / W][kh·kw][⌈cin/4⌉][W][4]      (columns beyond cout and channels beyond cin are zero)
//! ```
//!
//! The convolution is an implicit GEMM ([`conv`]): each output row reads, through each tap, the `cin` bytes of
//! one input pixel in place (a 1×1 convolution, any stride, is a plain matrix product with one tap; a padded
//! tap reads a block of zeros). A rayon task owns a block of rows and walks every column panel over them (with
//! few rows, a group of the panels).
//!
//! Paths ([`Path`], chosen once per process): AVX-512 VNNI, VNNI on ymm, AVX2, portable. The AVX2 path reads
//! activations of at most 127 ([`Path::qmax`]): a network quantized for it stores 7-bit activations, so that
//! `vpmaddubsw`'s 16-bit pair sums never saturate (see [`tiles`]).

pub mod reference;
pub mod requant;
mod tiles;

pub use requant::{Output, Requant, Residual};

use crate::kernels::conv::tile::{avx512, cpu_supported, MAX_CIN};
use crate::kernels::conv::ConvGeom;
use rayon::prelude::*;
use requant::{RawOut, RawResidual, TileStore};

/// Register tiles per rayon task (a block of rows that every column panel is multiplied with).
const TILES_PER_TASK: usize = 16;

/// The zero block a padded tap reads.
static ZEROS: [u8; MAX_CIN] = [0; MAX_CIN];

/// Which micro-kernel runs the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// AVX-512 VNNI on zmm registers (6 rows × 64 columns).
    Vnni512,
    /// VNNI on ymm registers, AVX-512VL encoding (6 × 16).
    Vnni256Evex,
    /// VNNI on ymm registers, AVX-VNNI (VEX) encoding, CPUs without AVX-512 (6 × 16).
    Vnni256Vex,
    /// AVX2 `vpmaddubsw` + `vpmaddwd` (4 × 16), activations at most 127.
    Avx2,
    /// Plain Rust (4 × 16).
    Portable,
}

impl Path {
    /// Every path, fastest first.
    pub const ALL: [Path; 5] = [
        Path::Vnni512,
        Path::Vnni256Evex,
        Path::Vnni256Vex,
        Path::Avx2,
        Path::Portable,
    ];

    /// The path this process runs, chosen once: the first of [`Path::ALL`] the CPU has, where
    /// `RESNET_AVX512=0` rules out the AVX-512 ones (leaving AVX-VNNI or AVX2) and `RESNET_PORTABLE=1` all but
    /// the portable one (as for the f32 kernels, `crate::kernels::conv::tile`).
    pub fn detect() -> Path {
        use std::sync::OnceLock;
        static PATH: OnceLock<Path> = OnceLock::new();
        *PATH.get_or_init(|| {
            let usable = |p: Path| match p {
                Path::Vnni512 | Path::Vnni256Evex => avx512() && p.available(),
                Path::Vnni256Vex | Path::Avx2 => cpu_supported() && p.available(),
                Path::Portable => true,
            };
            Path::ALL
                .into_iter()
                .find(|&p| usable(p))
                .unwrap_or(Path::Portable)
        })
    }

    /// True when this CPU has the instructions of the path.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            match self {
                Path::Vnni512 => has!("avx512f") && has!("avx512bw") && has!("avx512vnni"),
                Path::Vnni256Evex => has!("avx512f") && has!("avx512vl") && has!("avx512vnni"),
                Path::Vnni256Vex => has!("avx2") && has!("avxvnni"),
                Path::Avx2 => has!("avx2"),
                Path::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Path::Portable
        }
    }

    /// Output columns per register tile (the panel width `W`).
    pub fn width(self) -> usize {
        match self {
            Path::Vnni512 => 64,
            _ => 16,
        }
    }

    /// Rows per register tile.
    fn rows(self) -> usize {
        match self {
            Path::Vnni512 | Path::Vnni256Evex | Path::Vnni256Vex => 6,
            Path::Avx2 | Path::Portable => 4,
        }
    }

    /// Largest activation the path multiplies exactly: 127 on AVX2, else 255.
    pub fn qmax(self) -> u8 {
        match self {
            Path::Avx2 => 127,
            _ => 255,
        }
    }

    /// The name `resnet summary --plan` prints.
    pub fn name(self) -> &'static str {
        match self {
            Path::Vnni512 => "int8 avx512-vnni",
            Path::Vnni256Evex => "int8 vnni-ymm (avx512vl)",
            Path::Vnni256Vex => "int8 avx-vnni",
            Path::Avx2 => "int8 avx2",
            Path::Portable => "int8 portable",
        }
    }

    /// Runs the path's tile (see [`tiles`]).
    ///
    /// # Safety
    /// As the tiles': the path [`Path::available`], the pointers readable as they say.
    unsafe fn tile(
        self,
        rows: &[*const u8],
        taps: usize,
        cin: usize,
        w: *const i8,
        acc: &mut [i32],
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Vnni512 => tiles::vnni512(rows, taps, cin, w, acc),
            #[cfg(target_arch = "x86_64")]
            Path::Vnni256Evex => tiles::vnni256_evex(rows, taps, cin, w, acc),
            #[cfg(target_arch = "x86_64")]
            Path::Vnni256Vex => tiles::vnni256_vex(rows, taps, cin, w, acc),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => tiles::avx2(rows, taps, cin, w, acc),
            _ => tiles::portable(rows, taps, cin, w, acc),
        }
    }

    /// The epilogue of one register tile (`acc [rows][width]`), in the path's vectors ([`requant::tile_avx512`],
    /// [`requant::tile_avx2`]; [`requant::tile_rows`] on the portable path).
    ///
    /// # Safety
    /// As [`requant::tile_rows`]'; the path is available.
    unsafe fn requant_tile(self, acc: &[i32], store: &TileStore) {
        let width = self.width();
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Vnni512 | Path::Vnni256Evex => requant::tile_avx512(acc, width, store),
            #[cfg(target_arch = "x86_64")]
            Path::Vnni256Vex | Path::Avx2 => requant::tile_avx2(acc, width, store),
            _ => requant::tile_rows(acc, width, store),
        }
    }
}

/// A convolution's weights packed for one path (see the module documentation).
#[derive(Clone, Debug)]
pub struct PackedWeights {
    /// The path whose tiles read them.
    pub path: Path,
    /// Kernel taps, `kh·kw`.
    pub taps: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// What a padded tap reads, per input channel: the input's zero points (empty: zeros, the zero point of
    /// every activation after a ReLU; the stem's input, the signed image, has others).
    pub pad: Vec<u8>,
    data: Vec<i8>,
}

impl PackedWeights {
    /// Bytes of one column panel.
    fn panel_len(&self) -> usize {
        self.taps * self.cin.div_ceil(4) * 4 * self.path.width()
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when nothing is held (no output channels).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Packs HWIO weights `w [taps, cin, cout]` (`taps = kh·kw`) for `path`. Allocates the packed copy.
pub fn pack(path: Path, taps: usize, cin: usize, cout: usize, w: &[i8]) -> PackedWeights {
    assert_eq!(
        w.len(),
        taps * cin * cout,
        "int8::pack: weights of the wrong length"
    );
    let width = path.width();
    let groups = cin.div_ceil(4);
    let mut data = vec![0i8; cout.div_ceil(width) * taps * groups * 4 * width];
    for (i, d) in data.iter_mut().enumerate() {
        // i = (((panel · taps + t) · groups + g) · width + col) · 4 + lane
        let lane = i % 4;
        let col = i / 4 % width;
        let g = i / (4 * width) % groups;
        let t = i / (4 * width * groups) % taps;
        let panel = i / (4 * width * groups * taps);
        let (k, c) = (4 * g + lane, panel * width + col);
        if k < cin && c < cout {
            *d = w[(t * cin + k) * cout + c];
        }
    }
    PackedWeights {
        path,
        taps,
        cin,
        cout,
        pad: Vec::new(),
        data,
    }
}

/// `out [n·oh·ow, cout] = requant(conv(x, w))` for the NHWC batch `x [n, h, w, cin]` of `g` (the shapes of
/// [`reference::conv`]), on the path `w` was packed for. The activations are at most `w.path.qmax()`.
/// Allocates only each task's row pointers.
pub fn conv(g: &ConvGeom, n: usize, x: &[u8], w: &PackedWeights, rq: &Requant, out: Output) {
    let rows = n * g.oh * g.ow;
    let cout = g.cout;
    assert!(
        w.path.available(),
        "int8::conv: path {:?} not on this CPU",
        w.path
    );
    assert!(
        w.taps == g.kh * g.kw && w.cin == g.cin && w.cout == cout && g.cin <= MAX_CIN,
        "int8::conv: weights packed for another geometry"
    );
    assert!(
        w.pad.is_empty() || w.pad.len() == g.cin,
        "int8::conv: a padding value per input channel"
    );
    assert!(
        x.len() >= n * g.h * g.w * g.cin,
        "int8::conv: input too short"
    );
    // Larger activations would saturate vpmaddubsw's pair sums on AVX2; the quantized network never makes them.
    debug_assert!(
        x.iter().all(|&v| v <= w.path.qmax()),
        "int8::conv: activation above the path's qmax"
    );
    assert!(
        rq.bias.len() >= cout && rq.scale.len() >= cout,
        "int8::conv: epilogue too short"
    );
    let residual_len = match rq.residual {
        Residual::None => rows * cout,
        Residual::U8 { values, .. } => values.len(),
        Residual::F32 { values, .. } => values.len(),
    };
    assert!(
        residual_len >= rows * cout,
        "int8::conv: residual too short"
    );
    if rows == 0 || cout == 0 {
        return;
    }
    let (mr, width) = (w.path.rows(), w.path.width());
    let (tiles, panels) = (rows.div_ceil(mr), cout.div_ceil(width));
    // Tasks: blocks of rows, each over every column panel, while there are enough of them to keep every
    // thread busy; below that (the 14×14 and 7×7 stages at small batches) evenly cut row blocks, each times a
    // group of the panels, so that both cores work and each reads only its share of the weights.
    let enough = 4 * rayon::current_num_threads();
    let (row_blocks, tiles_per_block, panels_per_task) = if tiles.div_ceil(TILES_PER_TASK) >= enough
    {
        (tiles.div_ceil(TILES_PER_TASK), TILES_PER_TASK, panels)
    } else {
        let row_blocks = tiles.div_ceil(TILES_PER_TASK);
        let per_task = panels.div_ceil(enough.div_ceil(row_blocks).min(panels));
        (row_blocks, tiles.div_ceil(row_blocks), per_task)
    };
    let panel_groups = panels.div_ceil(panels_per_task);
    let out = match out {
        Output::U8(y) => OutPtr::U8(y[..rows * cout].as_mut_ptr()),
        Output::F32(y) => OutPtr::F32(y[..rows * cout].as_mut_ptr()),
    };
    (0..row_blocks * panel_groups)
        .into_par_iter()
        .for_each(|task| {
            let (block, group) = (task / panel_groups, task % panel_groups);
            let r0 = (block * tiles_per_block * mr).min(rows);
            let r1 = ((block + 1) * tiles_per_block * mr).min(rows);
            let p0 = group * panels_per_task;
            let p1 = (p0 + panels_per_task).min(panels);
            conv_block(g, x, w, rq, r0..r1, p0..p1, &out)
        });
}

/// Where [`conv`]'s tasks write: the output's first element. Each task writes only its own rows' pieces in its
/// own column panels, so no element is written by two.
#[derive(Clone, Copy)]
enum OutPtr {
    U8(*mut u8),
    F32(*mut f32),
}

// SAFETY: the tasks sharing it write disjoint elements (see above), inside the output slice it was taken from.
unsafe impl Sync for OutPtr {}

/// Output rows `rows` over the column panels `panels`.
fn conv_block(
    g: &ConvGeom,
    x: &[u8],
    w: &PackedWeights,
    rq: &Requant,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    out: &OutPtr,
) {
    let (cin, cout, taps) = (g.cin, g.cout, w.taps);
    let (r0, nrows) = (rows.start, rows.len());
    let (mr, width) = (w.path.rows(), w.path.width());
    let tiles = nrows.div_ceil(mr);
    // Per tile, per tap, per row of the tile: the input pixel it reads (the zero block in the padding, and
    // for the rows past the block's end, whose sums are never stored).
    let pad = if w.pad.is_empty() {
        ZEROS.as_ptr()
    } else {
        w.pad.as_ptr()
    };
    let mut ptrs = vec![pad; tiles * taps * mr];
    let plane = g.oh * g.ow;
    // The output position walks the rows (no division per row); a window wholly inside the image takes its
    // taps' pointers as offsets from its corner (the stem's 49 taps per row made the general case, a bounds
    // check per tap, cost more than the products).
    let (mut img, mut oy, mut ox) = (r0 / plane, r0 % plane / g.ow, r0 % g.ow);
    let window = ((g.kh - 1) * g.w + g.kw) * cin;
    for row in 0..nrows {
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
        ox += 1;
        if ox == g.ow {
            (ox, oy) = (0, oy + 1);
            if oy == g.oh {
                (oy, img) = (0, img + 1);
            }
        }
    }
    let mut acc = [0i32; 6 * 64];
    for panel in panels {
        let c0 = panel * width;
        let cols = width.min(cout - c0);
        let wp = w.data[panel * w.panel_len()..][..w.panel_len()].as_ptr();
        for tile in 0..tiles {
            // The shortcut's pieces this tile's epilogue reads, asked for now so that they arrive while the tile
            // multiplies: the rows are `cout` apart, too many interleaved streams for the hardware prefetcher
            // (waiting for them took a third of the epilogue's time on resnet50).
            for i in 0..mr.min(nrows - tile * mr) {
                let global = (r0 + tile * mr + i) * cout + c0;
                match rq.residual {
                    Residual::None => {}
                    Residual::U8 { values, .. } => prefetch(&values[global..][..cols]),
                    Residual::F32 { values, .. } => prefetch(&values[global..][..cols]),
                }
            }
            // SAFETY: the path is available (checked in `conv`), each pointer reads `cin` bytes of `x` or the
            // zero block (`cin ≤ MAX_CIN`), the panel is whole, `acc` holds the largest tile.
            unsafe {
                w.path.tile(
                    &ptrs[tile * taps * mr..][..taps * mr],
                    taps,
                    cin,
                    wp,
                    &mut acc,
                )
            };
            let global = (r0 + tile * mr) * cout + c0;
            let live = mr.min(nrows - tile * mr);
            // The tile's pieces: rows `global + i · cout`, `i < live`, each `cols` long, inside the output (and
            // shortcut) `conv` checked to hold `rows · cout`.
            let store = TileStore {
                rows: live,
                cols,
                stride: cout,
                bias: rq.bias[c0..][..cols].as_ptr(),
                scale: rq.scale[c0..][..cols].as_ptr(),
                residual: match rq.residual {
                    Residual::None => RawResidual::None,
                    Residual::U8 { values, scale } => RawResidual::U8(
                        values[global..][..(live - 1) * cout + cols].as_ptr(),
                        scale,
                    ),
                    Residual::F32 { values, scale } => RawResidual::F32(
                        values[global..][..(live - 1) * cout + cols].as_ptr(),
                        scale,
                    ),
                },
                // SAFETY: `global + (live - 1) · cout + cols ≤ rows · cout`, inside the output.
                out: unsafe {
                    match *out {
                        OutPtr::U8(y) => RawOut::U8(y.add(global)),
                        OutPtr::F32(y) => RawOut::F32(y.add(global)),
                    }
                },
                relu: rq.relu,
                qmax: rq.qmax,
            };
            // SAFETY: the pointers hold the tile's pieces (above); this task alone writes them; the path is
            // available.
            unsafe { w.path.requant_tile(&acc, &store) };
        }
    }
}

/// Asks for the cache lines of `values` (a hint: no effect on the results, none on a CPU without it).
#[inline(always)]
fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(values);
        let p = values.as_ptr() as *const i8;
        for line in (0..bytes).step_by(64) {
            // SAFETY: a prefetch never faults; the addresses are inside `values`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(line)) };
        }
    }
}

#[cfg(test)]
mod tests;
