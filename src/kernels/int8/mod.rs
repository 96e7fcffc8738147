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
//! tap reads a block of zeros; a convolution of few channels and several taps, the stem, reads its rows gathered,
//! see `rows`). A rayon task owns a block of rows and walks every column panel over them (with few rows, a
//! group of the panels). A block's shortcut convolution can run inside its last convolution
//! ([`conv_with_shortcut`]), tile by tile.
//!
//! Paths ([`Path`], chosen once per process): AMX (`amx`, whose panels are two halves of 16 columns), AVX-512
//! VNNI, VNNI on ymm, AVX2, portable. The AVX2 path reads
//! activations of at most 127 ([`Path::qmax`]) and weights of at most 63 in magnitude ([`Path::wmax`]): a
//! network quantized for it stores 7-bit activations and weights, so that its 16-bit sums of four products
//! never overflow (see `tiles`).

mod amx;
pub mod reference;
pub mod requant;
mod rows;
mod tiles;

pub use requant::{Output, Requant, Residual};

use crate::kernels::conv::tile::{avx512, cpu_supported, MAX_CIN};
use crate::kernels::conv::ConvGeom;
use crate::kernels::TaskGrid;
use rayon::prelude::*;
use requant::{RawOut, RawResidual, TileStore};
use rows::TileRows;

/// Register tiles per rayon task (a block of rows that every column panel is multiplied with).
const TILES_PER_TASK: usize = 16;

/// The zero block a padded tap reads.
static ZEROS: [u8; MAX_CIN] = [0; MAX_CIN];

/// Which micro-kernel runs the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// AMX tiles (blocks of 32 rows × 32 columns; see `amx`).
    Amx,
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
    pub const ALL: [Path; 6] = [
        Path::Amx,
        Path::Vnni512,
        Path::Vnni256Evex,
        Path::Vnni256Vex,
        Path::Avx2,
        Path::Portable,
    ];

    /// The path this process runs, chosen once: the first of [`Path::ALL`] the CPU has, where `RESNET_AMX=0`
    /// rules out AMX (leaving AVX-512 VNNI), `RESNET_AVX512=0` the AVX-512 ones (AMX among them, leaving AVX-VNNI
    /// or AVX2) and `RESNET_PORTABLE=1` all but the portable one (as for the f32 kernels,
    /// `crate::kernels::conv::tile`).
    pub fn detect() -> Path {
        use std::sync::OnceLock;
        static PATH: OnceLock<Path> = OnceLock::new();
        *PATH.get_or_init(|| {
            let amx_off = std::env::var_os("RESNET_AMX").is_some_and(|v| v == "0");
            let usable = |p: Path| match p {
                Path::Amx => avx512() && !amx_off && p.available(),
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
                Path::Amx => amx::available(),
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
            Path::Amx => amx::BLOCK,
            Path::Vnni512 => 64,
            _ => 16,
        }
    }

    /// Rows per register tile.
    fn rows(self) -> usize {
        match self {
            Path::Amx => amx::BLOCK,
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

    /// Largest weight magnitude the path multiplies exactly: 63 on AVX2 (see `tiles`), else 127.
    pub fn wmax(self) -> u8 {
        match self {
            Path::Avx2 => 63,
            _ => 127,
        }
    }

    /// The name `resnet summary --plan` prints.
    pub fn name(self) -> &'static str {
        match self {
            Path::Amx => "int8 amx",
            Path::Vnni512 => "int8 avx512-vnni",
            Path::Vnni256Evex => "int8 vnni-ymm (avx512vl)",
            Path::Vnni256Vex => "int8 avx-vnni",
            Path::Avx2 => "int8 avx2",
            Path::Portable => "int8 portable",
        }
    }

    /// Register tiles per rayon task for the convolution `g`: [`TILES_PER_TASK`]; on AMX, whose task gathers its
    /// rows once and walks every panel over them, as many blocks as keep the gathered rows within about 1 MiB
    /// of the core's L2 (2 MiB on Sapphire Rapids), so that they are read from there by every panel.
    fn tiles_per_task(self, g: &ConvGeom) -> usize {
        match self {
            Path::Amx => ((1 << 20) / (amx::BLOCK * AmxRows::of(g).k)).clamp(2, TILES_PER_TASK),
            _ => TILES_PER_TASK,
        }
    }

    /// Columns of one sub-panel, the `[W'][4]` groups a tile reads: the width, but for AMX's halves.
    fn sub_width(self) -> usize {
        match self {
            Path::Amx => 16,
            p => p.width(),
        }
    }

    /// Runs the path's tile (see [`tiles`]; AMX's blocks run in [`amx_panels`] instead), then its epilogue into
    /// `store`: inside the tile on AVX-512 VNNI and AVX2, else from `acc` ([`Path::requant_tile`]).
    ///
    /// # Safety
    /// As the tiles': the path [`Path::available`], the pointers readable as they say; `store` as
    /// [`requant::tile_rows`]'.
    unsafe fn tile(
        self,
        rows: &[*const u8],
        taps: usize,
        cin: usize,
        w: *const i8,
        acc: &mut [i32],
        store: &TileStore,
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Vnni512 => return tiles::vnni512(rows, taps, cin, w, store),
            #[cfg(target_arch = "x86_64")]
            Path::Vnni256Evex => tiles::vnni256_evex(rows, taps, cin, w, acc),
            #[cfg(target_arch = "x86_64")]
            Path::Vnni256Vex => tiles::vnni256_vex(rows, taps, cin, w, acc),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => return tiles::avx2(rows, taps, cin, w, acc, store),
            Path::Amx => unreachable!("int8: AMX blocks run in amx_panels"),
            _ => tiles::portable(rows, taps, cin, w, acc),
        }
        self.requant_tile(acc, store)
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
            Path::Amx | Path::Vnni512 | Path::Vnni256Evex => {
                requant::tile_avx512(acc, width, store)
            }
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
    /// What a padded tap reads: [`PackedWeights::pad`], or zeros.
    fn pad_or_zeros(&self) -> &[u8] {
        if self.pad.is_empty() {
            &ZEROS[..self.cin]
        } else {
            &self.pad
        }
    }

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

/// Packs HWIO weights `w [taps, cin, cout]` (`taps = kh·kw`), each at most `path.wmax()` in magnitude, for
/// `path`. Allocates the packed copy.
pub fn pack(path: Path, taps: usize, cin: usize, cout: usize, w: &[i8]) -> PackedWeights {
    assert_eq!(
        w.len(),
        taps * cin * cout,
        "int8::pack: weights of the wrong length"
    );
    // Larger weights would overflow the AVX2 tile's 16-bit sums; the quantized network never makes them.
    assert!(
        w.iter().all(|v| v.unsigned_abs() <= path.wmax()),
        "int8::pack: a weight beyond the path's wmax"
    );
    let (width, sub) = (path.width(), path.sub_width());
    let groups = cin.div_ceil(4);
    let len = cout.div_ceil(width) * taps * groups * 4 * width;
    // AMX's last step reads up to 1,008 bytes past a half panel (see `amx`): the padding keeps that inside.
    let over = if path == Path::Amx { 1024 } else { 0 };
    let mut data = vec![0i8; len + over];
    for (i, d) in data[..len].iter_mut().enumerate() {
        // i = ((((panel · halves + h) · taps + t) · groups + g) · sub + col) · 4 + lane, halves = width / sub
        let lane = i % 4;
        let col = i / 4 % sub;
        let g = i / (4 * sub) % groups;
        let t = i / (4 * sub * groups) % taps;
        let half = i / (4 * sub * groups * taps);
        let (k, c) = (4 * g + lane, half * sub + col);
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
/// Allocates only each task's row pointers (and, for a convolution of few channels, its gathered rows).
pub fn conv(g: &ConvGeom, n: usize, x: &[u8], w: &PackedWeights, rq: &Requant, out: Output) {
    conv_impl(g, n, x, w, rq, out, None)
}

/// A shortcut convolution computed inside its block's last convolution ([`conv_with_shortcut`]): its output
/// `(sum + bias[c]) · scale[c]` in f32, what [`conv`] stores with [`Output::F32`] and neither shortcut nor ReLU,
/// added as `value · residual_scale` to the last convolution's sums before its ReLU, never stored.
pub struct Shortcut<'a> {
    /// Its geometry: the same output rows and channels as the last convolution's.
    pub g: &'a ConvGeom,
    /// Its input, NHWC `[n, h, w, cin]`.
    pub x: &'a [u8],
    /// Its weights, packed for the same path.
    pub w: &'a PackedWeights,
    /// `[cout]`: its bias, as [`Requant`]'s.
    pub bias: &'a [i32],
    /// `[cout]`: its scale, as [`Requant`]'s (`y_scale` 1).
    pub scale: &'a [f32],
    /// What its values are multiplied by where they are added (one over the output's scale).
    pub residual_scale: f32,
}

impl Shortcut<'_> {
    /// Where the epilogue of the shortcut's tile of rows `0..live`, channels `c0..c0 + cols` writes its f32 values
    /// (no residual, no ReLU): `values [live][stride]`.
    fn tile_store(
        &self,
        live: usize,
        c0: usize,
        cols: usize,
        stride: usize,
        values: *mut f32,
    ) -> TileStore {
        TileStore {
            rows: live,
            cols,
            stride,
            residual_stride: stride,
            bias: self.bias[c0..][..cols].as_ptr(),
            scale: self.scale[c0..][..cols].as_ptr(),
            residual: RawResidual::None,
            out: RawOut::F32(values),
            relu: false,
            qmax: 255,
        }
    }
}

/// [`conv`] with the shortcut `sc` computed alongside, block by block, in place of `rq.residual` (which must be
/// [`Residual::None`]): bit for bit [`conv`] of `sc` into an f32 tensor, then [`conv`] of the block's last
/// convolution with that tensor as [`Residual::F32`], without the tensor (the first stage's, at batch 32, is
/// 103 MB written and read back). Both weights packed for the same path: on AMX block by block, on the others
/// register tile by register tile.
pub fn conv_with_shortcut(
    g: &ConvGeom,
    n: usize,
    x: &[u8],
    w: &PackedWeights,
    rq: &Requant,
    out: Output,
    sc: &Shortcut,
) {
    assert!(
        sc.w.path == w.path,
        "int8::conv_with_shortcut: the shortcut's weights packed for another path"
    );
    assert!(
        matches!(rq.residual, Residual::None),
        "int8::conv_with_shortcut: the shortcut is the residual"
    );
    assert!(
        sc.g.oh == g.oh && sc.g.ow == g.ow && sc.g.cout == g.cout,
        "int8::conv_with_shortcut: the shortcut's output is not the block's"
    );
    assert!(
        sc.w.taps == sc.g.kh * sc.g.kw && sc.w.cin == sc.g.cin && sc.w.cout == g.cout,
        "int8::conv_with_shortcut: shortcut weights packed for another geometry"
    );
    assert!(
        sc.x.len() >= n * sc.g.h * sc.g.w * sc.g.cin
            && sc.bias.len() >= g.cout
            && sc.scale.len() >= g.cout
            && sc.g.cin <= MAX_CIN,
        "int8::conv_with_shortcut: shortcut input or epilogue too short"
    );
    conv_impl(g, n, x, w, rq, out, Some(sc))
}

fn conv_impl(
    g: &ConvGeom,
    n: usize,
    x: &[u8],
    w: &PackedWeights,
    rq: &Requant,
    out: Output,
    sc: Option<&Shortcut>,
) {
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
        Residual::InOutput { .. } => {
            assert!(
                matches!(out, Output::U8(_)),
                "int8::conv: a shortcut in the output needs a u8 output"
            );
            rows * cout
        }
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
    // Tasks: blocks of rows over every column panel, or with few rows (the 14×14 and 7×7 stages at small
    // batches) even blocks times shares of the panels (see `TaskGrid`).
    let grid = TaskGrid::new(
        tiles,
        w.path.tiles_per_task(g),
        panels,
        rayon::current_num_threads(),
    );
    let out = match out {
        Output::U8(y) => OutPtr::U8(y[..rows * cout].as_mut_ptr()),
        Output::F32(y) => OutPtr::F32(y[..rows * cout].as_mut_ptr()),
    };
    let tasks = |shared: Option<&[u8]>, sc: Option<(&Shortcut, Option<&[u8]>)>| {
        (0..grid.tasks()).into_par_iter().for_each(|task| {
            let (task_rows, task_panels) =
                (grid.rows(task, rows, mr), grid.panels(task, panels, 1));
            conv_block(g, x, w, rq, task_rows, task_panels, &out, shared, sc)
        })
    };
    // AMX with the panels cut among tasks: every row gathered once, in parallel, for the tasks to share (each
    // would gather them all again, the bulk of the 14×14 and 7×7 stages' time at batch 1).
    #[cfg(target_arch = "x86_64")]
    if w.path == Path::Amx && grid.panel_groups > 1 {
        let main = (!AmxRows::of(g).in_place).then_some((g, x, w.pad_or_zeros()));
        let side =
            sc.and_then(|s| (!AmxRows::of(s.g).in_place).then_some((s.g, s.x, s.w.pad_or_zeros())));
        SHARED_ROWS.with_borrow_mut(|buf| {
            SHARED_SHORTCUT_ROWS.with_borrow_mut(|side_buf| {
                // SAFETY: the path is available (checked above).
                let shared = main.map(|(g, x, pad)| unsafe { gather_all(g, x, pad, rows, buf) });
                let side = side.map(|(g, x, pad)| unsafe { gather_all(g, x, pad, rows, side_buf) });
                tasks(shared, sc.map(|s| (s, side)))
            })
        });
        return;
    }
    tasks(None, sc.map(|s| (s, None)))
}

/// Every row of `g`'s `rows` gathered for AMX into `buf` (grown to whole blocks), in parallel by blocks.
///
/// # Safety
/// [`Path::Amx`] is available.
#[cfg(target_arch = "x86_64")]
unsafe fn gather_all<'a>(
    g: &ConvGeom,
    x: &[u8],
    pad: &[u8],
    rows: usize,
    buf: &'a mut Vec<u8>,
) -> &'a [u8] {
    let k = AmxRows::of(g).k;
    let block = amx::BLOCK * k;
    let len = rows.div_ceil(amx::BLOCK) * block;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    buf[..len]
        .par_chunks_mut(block)
        .enumerate()
        .for_each(|(b, dst)| {
            let first = b * amx::BLOCK;
            let count = amx::BLOCK.min(rows - first);
            // SAFETY: as this function's.
            unsafe { amx::gather(g, x, pad, first, count, k, dst) };
        });
    &buf[..len]
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// AMX's rows gathered for all of a convolution's tasks (see [`conv`]), kept for the next convolution.
    static SHARED_ROWS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// AMX's rows gathered by one task (see [`amx_panels`]), kept for the next task on this thread.
    static TASK_ROWS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The same two for a [`Shortcut`]'s rows.
    static SHARED_SHORTCUT_ROWS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static TASK_SHORTCUT_ROWS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How the AMX path reads a convolution's reduction rows (its sizes also set the tasks, on every target).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct AmxRows {
    /// Bytes of a gathered row: the taps', rounded up to a step of 64.
    k: usize,
    /// A 1×1 convolution of stride 1 without padding, its channels a multiple of 64: whole blocks are read in
    /// place (its rows are consecutive pixels).
    in_place: bool,
}

impl AmxRows {
    fn of(g: &ConvGeom) -> AmxRows {
        let taps = g.kh * g.kw;
        AmxRows {
            k: (taps * g.cin.div_ceil(4) * 4).next_multiple_of(amx::STEP),
            in_place: taps == 1 && g.stride == 1 && g.pad == 0 && g.cin.is_multiple_of(amx::STEP),
        }
    }
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

/// Output rows `rows` over the column panels `panels`; `shared`: on AMX, every row of the convolution already
/// gathered (`[rows][k]`, see [`conv`]); `sc`: the shortcut computed alongside, with its rows likewise (AMX).
#[allow(clippy::too_many_arguments)]
fn conv_block(
    g: &ConvGeom,
    x: &[u8],
    w: &PackedWeights,
    rq: &Requant,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    out: &OutPtr,
    shared: Option<&[u8]>,
    sc: Option<(&Shortcut, Option<&[u8]>)>,
) {
    #[cfg(target_arch = "x86_64")]
    if w.path == Path::Amx {
        let main = AmxInput { g, x, w, shared };
        let side = sc.map(|(s, shared)| {
            let input = AmxInput {
                g: s.g,
                x: s.x,
                w: s.w,
                shared,
            };
            (input, s)
        });
        // SAFETY: the path is available (checked in `conv`).
        unsafe { amx_panels(&main, side, rq, rows, panels, out) };
        return;
    }
    let _ = shared;
    let cout = g.cout;
    let (r0, nrows) = (rows.start, rows.len());
    let (mr, width) = (w.path.rows(), w.path.width());
    let tiles = nrows.div_ceil(mr);
    let main = TileRows::of(w.path, g, x, w.pad_or_zeros(), r0, nrows, mr);
    let side = sc.map(|(s, _)| {
        let rows = TileRows::of(w.path, s.g, s.x, s.w.pad_or_zeros(), r0, nrows, mr);
        (s, rows)
    });
    let mut acc = [0i32; 6 * 64];
    let mut shortcut = [0f32; 6 * 64];
    // One tile times one panel, a macro rather than a closure (a closure here made the AVX2 path's
    // expansions slower, on the same loop order).
    macro_rules! tile_times_panel {
        ($tile:expr, $panel:expr) => {{
            let (tile, panel): (usize, usize) = ($tile, $panel);
            let c0 = panel * width;
            let cols = width.min(cout - c0);
            let (row0, live) = (r0 + tile * mr, mr.min(nrows - tile * mr));
            let mut store = tile_store(rq, out, cout, row0, live, c0, cols);
            // SAFETY (the products and epilogues): the path is available (checked in `conv`); each pointer reads its
            // `cin` bytes of `x`, of the gathered rows or of the padding block; the panels are whole; `acc` and
            // `shortcut` hold the largest tile; the store's pointers hold the tile's pieces, which this task alone
            // writes.
            if let Some((s, rows)) = &side {
                // The shortcut's tile first, into `shortcut` (`[live][width]`), which the epilogue adds.
                let wp = s.w.data[panel * s.w.panel_len()..].as_ptr();
                let values = s.tile_store(live, c0, cols, width, shortcut.as_mut_ptr());
                unsafe {
                    w.path.tile(
                        rows.tile(tile, mr),
                        rows.taps,
                        rows.cin,
                        wp,
                        &mut acc,
                        &values,
                    )
                };
                store.residual = RawResidual::F32(shortcut.as_ptr(), s.residual_scale);
                store.residual_stride = width;
            } else {
                prefetch_residual(rq, cout, row0, live, c0, cols);
            }
            let wp = w.data[panel * w.panel_len()..][..w.panel_len()].as_ptr();
            let rows = main.tile(tile, mr);
            unsafe { w.path.tile(rows, main.taps, main.cin, wp, &mut acc, &store) };
        }};
    }
    // Panels outside (each panel's weights read once per task, and kept in L1 over its tiles), but tiles
    // outside where the convolution reads its shortcut from memory, its panels stay in L2 and they are 64
    // columns wide: the output and shortcut rows are then written and read whole, one after the other, instead
    // of a 64-byte piece of each row per panel (resnet50's expansions at batch 32 on Zen 4 about 7 % faster).
    // With the shortcut computed alongside it was slower; AVX2's 16-column panels keep panels outside (untried
    // there since the body became a macro).
    let reads_shortcut = !matches!(rq.residual, Residual::None);
    if reads_shortcut && width == 64 && panels.len() * w.panel_len() <= 256 << 10 {
        for tile in 0..tiles {
            for panel in panels.clone() {
                tile_times_panel!(tile, panel);
            }
        }
    } else {
        for panel in panels {
            for tile in 0..tiles {
                tile_times_panel!(tile, panel);
            }
        }
    }
}

/// One convolution's operand on the AMX path: its geometry, input, weights and, when [`conv`] gathered them for
/// all its tasks, its rows.
#[cfg(target_arch = "x86_64")]
struct AmxInput<'a> {
    g: &'a ConvGeom,
    x: &'a [u8],
    w: &'a PackedWeights,
    shared: Option<&'a [u8]>,
}

/// Where an [`AmxInput`]'s blocks read their rows in one task: block `b` (of 32 rows from the task's first)
/// reads `gathered` from block `from` on (`[32][k]` a block), its rows in place before that.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct AmxRowsAt<'a> {
    x: &'a [u8],
    cin: usize,
    k: usize,
    gathered: Option<(&'a [u8], usize)>,
}

#[cfg(target_arch = "x86_64")]
impl AmxRowsAt<'_> {
    /// Block `block`'s first row (output row `row0`) and the bytes from one row to the next.
    fn a(&self, block: usize, row0: usize) -> (*const u8, usize) {
        use amx::BLOCK;
        match self.gathered {
            Some((rows, from)) if block >= from => (
                rows[(block - from) * BLOCK * self.k..][..BLOCK * self.k].as_ptr(),
                self.k,
            ),
            _ => (
                self.x[row0 * self.cin..][..BLOCK * self.cin].as_ptr(),
                self.cin,
            ),
        }
    }
}

/// An [`AmxInput`]'s rows for the task of output rows `rows`: from `shared`, in place, or gathered into `buf`
/// (grown as needed; the blocks read in place gather only a last partial block).
///
/// # Safety
/// [`Path::Amx`] is available.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_rows<'a>(
    input: &AmxInput<'a>,
    rows: &std::ops::Range<usize>,
    buf: &'a mut Vec<u8>,
) -> AmxRowsAt<'a> {
    use amx::BLOCK;
    let AmxRows { k, in_place } = AmxRows::of(input.g);
    let at = |gathered| AmxRowsAt {
        x: input.x,
        cin: input.g.cin,
        k,
        gathered,
    };
    if let Some(all) = input.shared {
        return at(Some((&all[rows.start * k..], 0)));
    }
    let (r0, nrows) = (rows.start, rows.len());
    let blocks = nrows.div_ceil(BLOCK);
    let from = if in_place { nrows / BLOCK } else { 0 };
    if from == blocks {
        return at(None);
    }
    let len = (blocks - from) * BLOCK * k;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    for block in from..blocks {
        let first = r0 + block * BLOCK;
        let count = BLOCK.min(nrows - block * BLOCK);
        let dst = &mut buf[(block - from) * BLOCK * k..][..BLOCK * k];
        amx::gather(
            input.g,
            input.x,
            input.w.pad_or_zeros(),
            first,
            count,
            k,
            dst,
        );
    }
    at(Some((&buf[..len], from)))
}

/// [`conv_block`] on the AMX path: the task's rows gathered once (or read in place, or from what [`conv`]
/// gathered, see `amx`), then a block of sums per pair of half panels and block of 32 rows, each through the
/// epilogue; with a shortcut, its block of sums too, through its epilogue into a block of f32 values the
/// other's epilogue adds. Panels outside and blocks inside where the weights are large (each panel's read from
/// memory once per task), blocks outside where they stay in L2 (the 1×1 convolutions that widen a block then
/// write whole output rows while they are in L1).
///
/// # Safety
/// [`Path::Amx`] is available; the arguments as [`conv`] checked them; the weights packed for AMX.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_panels(
    main: &AmxInput,
    side: Option<(AmxInput, &Shortcut)>,
    rq: &Requant,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    out: &OutPtr,
) {
    use amx::{BLOCK, STEP};
    TASK_ROWS.with_borrow_mut(|buf| {
        TASK_SHORTCUT_ROWS.with_borrow_mut(|side_buf| {
            let (r0, nrows) = (rows.start, rows.len());
            let blocks = nrows.div_ceil(BLOCK);
            let cout = main.g.cout;
            let a_main = amx_rows(main, &rows, buf);
            let a_side = side
                .as_ref()
                .map(|(input, _)| amx_rows(input, &rows, side_buf));
            let mut acc = Sums([0; BLOCK * BLOCK]);
            let mut shortcut = Shortcuts([0.0; BLOCK * BLOCK]);
            amx::Config::load();
            let mut block_times_panel = |block: usize, panel: usize| {
                let c0 = panel * BLOCK;
                let cols = BLOCK.min(cout - c0);
                let (row0, live) = (r0 + block * BLOCK, BLOCK.min(nrows - block * BLOCK));
                // The block of sums of `input`'s rows `a` times its panel.
                let products = |input: &AmxInput, rows: &AmxRowsAt, acc: &mut Sums| {
                    let (a, stride) = rows.a(block, row0);
                    let wp = input.w.data.as_ptr().add(panel * input.w.panel_len());
                    let half = input.w.panel_len() / 2;
                    let k = rows.k;
                    amx::block(
                        a,
                        a.add(16 * stride),
                        stride,
                        wp,
                        wp.add(half),
                        k / STEP,
                        acc.0.as_mut_ptr(),
                    );
                };
                let mut store = tile_store(rq, out, cout, row0, live, c0, cols);
                if let (Some((input, sc)), Some(a)) = (&side, &a_side) {
                    products(input, a, &mut acc);
                    let values = sc.tile_store(live, c0, cols, BLOCK, shortcut.0.as_mut_ptr());
                    requant::tile_avx512(&acc.0, BLOCK, &values);
                    store.residual = RawResidual::F32(shortcut.0.as_ptr(), sc.residual_scale);
                    store.residual_stride = BLOCK;
                } else {
                    prefetch_residual(rq, cout, row0, live, c0, cols);
                }
                products(main, &a_main, &mut acc);
                requant::tile_avx512(&acc.0, BLOCK, &store);
            };
            let weights = |rows: &AmxRowsAt| rows.k * panels.len() * BLOCK;
            let bytes = weights(&a_main) + a_side.as_ref().map_or(0, weights);
            if bytes <= 256 << 10 {
                for block in 0..blocks {
                    for panel in panels.clone() {
                        block_times_panel(block, panel);
                    }
                }
            } else {
                for panel in panels.clone() {
                    for block in 0..blocks {
                        block_times_panel(block, panel);
                    }
                }
            }
            amx::release();
        })
    })
}

/// A shortcut's block of f32 values, aligned to cache lines.
#[cfg(target_arch = "x86_64")]
#[repr(align(64))]
struct Shortcuts([f32; amx::BLOCK * amx::BLOCK]);

/// One AMX block's sums, aligned to cache lines (its rows are stored and read 64 bytes at a time).
#[repr(align(64))]
struct Sums([i32; amx::BLOCK * amx::BLOCK]);

/// Asks for the shortcut's pieces a tile's epilogue reads (rows `row0..row0 + live`, channels `c0..c0 + cols`),
/// so that they arrive while the tile multiplies: the rows are `cout` apart, too many interleaved streams for
/// the hardware prefetcher (waiting for them took a third of the epilogue's time on resnet50).
fn prefetch_residual(rq: &Requant, cout: usize, row0: usize, live: usize, c0: usize, cols: usize) {
    for i in 0..live {
        let at = (row0 + i) * cout + c0;
        match rq.residual {
            // In the output, which the tile's store reads as it writes.
            Residual::None | Residual::InOutput { .. } => return,
            Residual::U8 { values, .. } => prefetch(&values[at..][..cols]),
            Residual::F32 { values, .. } => prefetch(&values[at..][..cols]),
        }
    }
}

/// The epilogue's view of one tile: output rows `row0..row0 + live`, channels `c0..c0 + cols`.
fn tile_store(
    rq: &Requant,
    out: &OutPtr,
    cout: usize,
    row0: usize,
    live: usize,
    c0: usize,
    cols: usize,
) -> TileStore {
    let global = row0 * cout + c0;
    // The tile's pieces: rows `global + i · cout`, `i < live`, each `cols` long, inside the output (and shortcut)
    // `conv` checked to hold `rows · cout`.
    TileStore {
        rows: live,
        cols,
        stride: cout,
        residual_stride: cout,
        bias: rq.bias[c0..][..cols].as_ptr(),
        scale: rq.scale[c0..][..cols].as_ptr(),
        residual: match rq.residual {
            Residual::None => RawResidual::None,
            Residual::U8 { values, scale } => {
                RawResidual::U8(values[global..][..(live - 1) * cout + cols].as_ptr(), scale)
            }
            Residual::F32 { values, scale } => {
                RawResidual::F32(values[global..][..(live - 1) * cout + cols].as_ptr(), scale)
            }
            // SAFETY: as the output's below; `conv` checked that the output is u8.
            Residual::InOutput { scale } => match *out {
                OutPtr::U8(y) => RawResidual::U8(unsafe { y.add(global) }, scale),
                OutPtr::F32(_) => unreachable!("int8: checked in conv"),
            },
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
