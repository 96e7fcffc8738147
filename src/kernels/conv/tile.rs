//! The pieces every register-tile kernel shares: the tile sizes, the CPU check, the zero block that stands for
//! padding, a pointer rayon tasks may share, what is applied to a tile as it is stored ([`Epilogue`]), and
//! the AVX2 micro-kernels themselves: a 6×16 tile of `y = a·b` with `a` read through six row pointers
//! (`tile_6x16`, the direct kernels' over several taps), and the two shapes generated for AVX2 (6 × 16) and
//! AVX-512 (6 × 64) from one body (`micro_kernels!`): `rows_tile_16/64` (`a` through six row pointers) and
//! `cols_tile_16/64` (`a` read six floats at a time down a strided column: the weight gradients').

/// Rows per register tile.
pub(crate) const MR: usize = 6;
/// Output channels per register tile (two AVX vectors).
pub const NR: usize = 16;

/// Most input channels the direct path handles (the length of the zero block that stands for padding).
pub const MAX_CIN: usize = 2048;

/// Fewest input channels the direct path takes.
pub const MIN_CIN: usize = 16;

pub(crate) static ZEROS: [f32; MAX_CIN] = [0.0; MAX_CIN];

/// True when this CPU can run the direct kernels (checked once). `RESNET_PORTABLE=1` in the environment
/// forces the portable im2col + `gemm` path, which is what a CPU without AVX2 runs.
pub fn cpu_supported() -> bool {
    use std::sync::OnceLock;
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let forced_portable =
            std::env::var_os("RESNET_PORTABLE").is_some_and(|v| v != "0" && !v.is_empty());
        !forced_portable && detect()
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

/// True when AVX-512F is available and not switched off with `RESNET_AVX512=0` (checked once).
pub fn avx512() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var_os("RESNET_AVX512").is_some_and(|v| v == "0");
        cpu_supported() && !off && detect_avx512()
    })
}

#[cfg(target_arch = "x86_64")]
fn detect_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_avx512() -> bool {
    false
}

/// True when a product with `n` output columns runs on the AVX-512 6 × 64 tiles (four 16-column panels per
/// tile): AVX-512 available and `n` a multiple of 64. Every kernel asks this one question.
pub(crate) fn wide(n: usize) -> bool {
    avx512() && n.is_multiple_of(64)
}

/// A raw pointer that rayon tasks may share; each task writes a disjoint part (see the SAFETY notes).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only used where tasks write disjoint elements.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`, not its raw field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// What a kernel applies to each output as it stores it: `relu?(v·scale + shift + residual)` per output
/// channel, each part optional (`shift` alone is a bias; an eval-mode batch norm is `scale` and `shift` with the
/// conv bias folded in; `residual` is a residual block's shortcut, added before the block's ReLU; nothing at all
/// stores the plain sum).
#[derive(Clone, Copy, Default, Debug)]
pub struct Epilogue<'a> {
    /// `[cout]`
    pub scale: Option<&'a [f32]>,
    /// `[cout]`
    pub shift: Option<&'a [f32]>,
    /// Laid out as the output, `[rows, cout]`: element `i` is added to output element `i`.
    pub residual: Option<&'a [f32]>,
    /// The residual is the output itself: on entry the output holds the shortcut, and each element is read
    /// just before it is overwritten (only for kernels that store every output once,
    /// [`super::ConvPlan::adds_residual_in_place`]).
    pub residual_in_place: bool,
    /// Clamp at zero last.
    pub relu: bool,
}

impl<'a> Epilogue<'a> {
    /// `relu?(v·scale + shift)`.
    pub fn affine(scale: &'a [f32], shift: &'a [f32], relu: bool) -> Self {
        Epilogue {
            scale: Some(scale),
            shift: Some(shift),
            residual: None,
            residual_in_place: false,
            relu,
        }
    }

    /// `relu?(v + bias + residual)`: a convolution whose batch norm is folded into its weights and bias
    /// ([`crate::compiled`]), with the shortcut it ends a block with, if any.
    pub fn bias(bias: &'a [f32], residual: Option<&'a [f32]>, relu: bool) -> Self {
        Epilogue {
            scale: None,
            shift: Some(bias),
            residual,
            residual_in_place: false,
            relu,
        }
    }

    /// `relu?(v + bias + y)` where the output `y` holds the residual on entry: a block's last convolution
    /// writing over its shortcut, as [`super::ConvPlan::adds_residual_in_place`] allows.
    pub fn bias_onto_output(bias: &'a [f32], relu: bool) -> Self {
        Epilogue {
            residual_in_place: true,
            ..Epilogue::bias(bias, None, relu)
        }
    }

    /// True when the epilogue adds a residual, from a slice or from the output.
    pub fn has_residual(&self) -> bool {
        self.residual.is_some() || self.residual_in_place
    }

    /// True when nothing is applied.
    pub fn is_identity(&self) -> bool {
        self.scale.is_none() && self.shift.is_none() && !self.has_residual() && !self.relu
    }

    /// True when the epilogue is a bias at most (what a GEMM can start its sums from).
    pub fn is_bias_only(&self) -> bool {
        self.scale.is_none() && !self.has_residual() && !self.relu
    }

    /// Panics unless the given parts hold `cout` values.
    pub(crate) fn check(&self, cout: usize) {
        assert!(
            self.scale.is_none_or(|s| s.len() >= cout)
                && self.shift.is_none_or(|s| s.len() >= cout),
            "epilogue shorter than the output channels"
        );
    }

    /// Panics unless the residual holds an element for each of the output's `len`.
    pub(crate) fn check_residual(&self, len: usize) {
        assert!(
            self.residual.is_none_or(|r| r.len() >= len),
            "epilogue: residual shorter than the output"
        );
        assert!(
            !(self.residual.is_some() && self.residual_in_place),
            "epilogue: a residual both given and in the output"
        );
    }

    /// Where the residual of the output that starts at `out` is: the given slice, the output itself, or null
    /// (none).
    pub(crate) fn residual_ptr(&self, out: *const f32) -> *const f32 {
        match (self.residual, self.residual_in_place) {
            (Some(r), _) => r.as_ptr(),
            (None, true) => out,
            (None, false) => core::ptr::null(),
        }
    }

    /// The epilogue from output channel `col` on, as the micro-kernels read it (`None`: nothing to apply), for
    /// an output that starts at `out` (where the residual's element of an output element is found).
    pub(crate) fn columns(&self, col: usize, out: *const f32) -> Option<Columns> {
        (!self.is_identity()).then(|| Columns {
            scale: self.scale.map_or(core::ptr::null(), |s| s[col..].as_ptr()),
            shift: self.shift.map_or(core::ptr::null(), |s| s[col..].as_ptr()),
            residual: self.residual_ptr(out),
            out,
            relu: self.relu,
        })
    }
}

/// An [`Epilogue`] from one output channel on, for the micro-kernels: null `scale` means 1, null `shift` 0,
/// null `residual` nothing; the residual of output element `d` is `residual[d − out]`.
#[derive(Clone, Copy)]
pub(crate) struct Columns {
    pub(crate) scale: *const f32,
    pub(crate) shift: *const f32,
    pub(crate) residual: *const f32,
    pub(crate) out: *const f32,
    pub(crate) relu: bool,
}

impl Columns {
    /// Where the residual of the output element at `d` is (`d` inside the output that starts at `out`).
    ///
    /// # Safety
    /// `residual` is not null and `d` lies in the output that `out` starts.
    #[inline(always)]
    pub(crate) unsafe fn residual_at(&self, d: *const f32) -> *const f32 {
        self.residual.add(d.offset_from(self.out) as usize)
    }
}

/// One 6×16 tile: `dst[i, 0..16] (+)= Σ_t Σ_c ptrs[t·6 + i][c] · wtaps[t][c·w_stride + 0..16]` for `i < rows`,
/// then, with `epilogue`, `dst = relu?(dst·scale + shift)`.
///
/// # Safety
/// AVX2 and FMA must be available; each `ptrs` entry must be readable for `cin` floats, each `wtaps` entry
/// for `(cin − 1)·w_stride + 16`, `dst` writable at `i·dst_stride + 0..16` for `i < rows`, and the epilogue's pointers readable
/// for 16 floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile_6x16(
    ptrs: &[*const f32],
    cin: usize,
    wtaps: &[*const f32],
    w_stride: usize,
    dst: *mut f32,
    dst_stride: usize,
    rows: usize,
    accumulate: bool,
    epilogue: Option<Columns>,
) {
    use core::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for (t, &w_tap) in wtaps.iter().enumerate() {
        let p = &ptrs[t * MR..t * MR + MR];
        let (p0, p1, p2, p3, p4, p5) = (p[0], p[1], p[2], p[3], p[4], p[5]);
        let mut wp = w_tap;
        for c in 0..cin {
            let b0 = _mm256_loadu_ps(wp);
            let b1 = _mm256_loadu_ps(wp.add(8));
            wp = wp.add(w_stride);
            let a = _mm256_broadcast_ss(&*p0.add(c));
            acc[0][0] = _mm256_fmadd_ps(a, b0, acc[0][0]);
            acc[0][1] = _mm256_fmadd_ps(a, b1, acc[0][1]);
            let a = _mm256_broadcast_ss(&*p1.add(c));
            acc[1][0] = _mm256_fmadd_ps(a, b0, acc[1][0]);
            acc[1][1] = _mm256_fmadd_ps(a, b1, acc[1][1]);
            let a = _mm256_broadcast_ss(&*p2.add(c));
            acc[2][0] = _mm256_fmadd_ps(a, b0, acc[2][0]);
            acc[2][1] = _mm256_fmadd_ps(a, b1, acc[2][1]);
            let a = _mm256_broadcast_ss(&*p3.add(c));
            acc[3][0] = _mm256_fmadd_ps(a, b0, acc[3][0]);
            acc[3][1] = _mm256_fmadd_ps(a, b1, acc[3][1]);
            let a = _mm256_broadcast_ss(&*p4.add(c));
            acc[4][0] = _mm256_fmadd_ps(a, b0, acc[4][0]);
            acc[4][1] = _mm256_fmadd_ps(a, b1, acc[4][1]);
            let a = _mm256_broadcast_ss(&*p5.add(c));
            acc[5][0] = _mm256_fmadd_ps(a, b0, acc[5][0]);
            acc[5][1] = _mm256_fmadd_ps(a, b1, acc[5][1]);
        }
    }
    for (i, acc_row) in acc.iter().enumerate().take(rows) {
        let d = dst.add(i * dst_stride);
        let (mut v0, mut v1) = (acc_row[0], acc_row[1]);
        if accumulate {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(d));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(d.add(8)));
        }
        if let Some(e) = epilogue {
            let one = _mm256_set1_ps(1.0);
            let (s0, s1) = match e.scale.is_null() {
                true => (one, one),
                false => (_mm256_loadu_ps(e.scale), _mm256_loadu_ps(e.scale.add(8))),
            };
            let (t0, t1) = match e.shift.is_null() {
                true => (_mm256_setzero_ps(), _mm256_setzero_ps()),
                false => (_mm256_loadu_ps(e.shift), _mm256_loadu_ps(e.shift.add(8))),
            };
            v0 = _mm256_fmadd_ps(v0, s0, t0);
            v1 = _mm256_fmadd_ps(v1, s1, t1);
            if !e.residual.is_null() {
                let r = e.residual_at(d);
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(r));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(r.add(8)));
            }
            if e.relu {
                // max(0, v): a NaN passes, as through PyTorch's ReLU (maxps returns its second operand then).
                v0 = _mm256_max_ps(_mm256_setzero_ps(), v0);
                v1 = _mm256_max_ps(_mm256_setzero_ps(), v1);
            }
        }
        _mm256_storeu_ps(d, v0);
        _mm256_storeu_ps(d.add(8), v1);
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile_6x16(
    _ptrs: &[*const f32],
    _cin: usize,
    _wtaps: &[*const f32],
    _w_stride: usize,
    _dst: *mut f32,
    _dst_stride: usize,
    _rows: usize,
    _accumulate: bool,
    _epilogue: Option<Columns>,
) {
    unreachable!("cpu_supported() is false off x86-64")
}

/// Stores (or, unless `overwrite`, adds) a weight-gradient tile's `M × 16` sums at `dw[dst[i] + 0..16]`.
///
/// # Safety
/// AVX2 must be available; `dw` writable at `dst[i] + 0..16` for `i < M`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn store_dw_tile<const M: usize>(
    acc: &[[core::arch::x86_64::__m256; 2]; M],
    dw: *mut f32,
    dst: &[usize; MR],
    overwrite: bool,
) {
    use core::arch::x86_64::*;
    for (acc_row, &at) in acc.iter().zip(dst.iter()) {
        let d = dw.add(at);
        let (mut v0, mut v1) = (acc_row[0], acc_row[1]);
        if !overwrite {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(d));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(d.add(8)));
        }
        _mm256_storeu_ps(d, v0);
        _mm256_storeu_ps(d.add(8), v1);
    }
}

/// The two micro-kernels for one tile width, from one body:
///
/// - `rows_tile`: `c[i][v·L..(v + 1)·L] (+)= Σ_q a[i][q] · b[v][q·b_step + 0..L]` for `i < rows` and each of
///   the tile's vectors `v` (`a`: six row pointers; `b`: one pointer per vector of `L` lanes, into packed panels),
///   then the epilogue; adds onto `c` when `accumulate`;
/// - `cols_tile`: `dst[i][0..W] (+)= Σ_runs Σ_q a[a_off + q·a_step + i] · b[b_off + q·b_step + 0..W]` for
///   `i < m` (six channels of one `x_s` row per step, one `dy` row), the first `stored` rows stored,
///   overwriting unless `accumulate`.
macro_rules! micro_kernels {
    ($features:literal, $rows_tile:ident, $cols_tile:ident, $vec:ty, $lanes:literal, $nv:literal,
     $load:ident, $store:ident, $set1:ident, $fmadd:ident, $add:ident, $max:ident, $zero:ident) => {
        /// # Safety
        /// The CPU has the target features; `a[i]` readable for `k` floats, `b[v]` at `q·b_step + 0..L` for
        /// `q < k`, `c[i]` writable for `W` floats for `i < rows`, the epilogue's columns readable for `W`.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn $rows_tile(
            a: &[*const f32; MR],
            k: usize,
            b: &[*const f32; $nv],
            b_step: usize,
            c: &[*mut f32; MR],
            rows: usize,
            accumulate: bool,
            epilogue: Option<Columns>,
        ) {
            use core::arch::x86_64::*;
            let mut acc: [[$vec; $nv]; MR] = [[$zero(); $nv]; MR];
            let [a0, a1, a2, a3, a4, a5] = *a;
            for q in 0..k {
                let bv: [$vec; $nv] = core::array::from_fn(|j| $load(b[j].add(q * b_step)));
                for (i, p) in [a0, a1, a2, a3, a4, a5].into_iter().enumerate() {
                    let av = $set1(*p.add(q));
                    for j in 0..$nv {
                        acc[i][j] = $fmadd(av, bv[j], acc[i][j]);
                    }
                }
            }
            // Each row stored by a call with its accumulators by value: indexed by a run-time row, `acc` would be
            // kept in memory, and the product loop above would then store all 24 accumulators every step (half
            // the speed, measured).
            let store_row = |row: [$vec; $nv], c_row: *mut f32| {
                for (j, &sum) in row.iter().enumerate() {
                    let d = c_row.add(j * $lanes);
                    let mut v = sum;
                    if accumulate {
                        v = $add(v, $load(d));
                    }
                    if let Some(e) = epilogue {
                        let s = if e.scale.is_null() {
                            $set1(1.0)
                        } else {
                            $load(e.scale.add(j * $lanes))
                        };
                        let t = if e.shift.is_null() {
                            $zero()
                        } else {
                            $load(e.shift.add(j * $lanes))
                        };
                        v = $fmadd(v, s, t);
                        if !e.residual.is_null() {
                            v = $add(v, $load(e.residual_at(d)));
                        }
                        if e.relu {
                            // max(0, v): a NaN passes, as through PyTorch's ReLU.
                            v = $max($zero(), v);
                        }
                    }
                    $store(d, v);
                }
            };
            let [r0, r1, r2, r3, r4, r5] = acc;
            for (i, row) in [r0, r1, r2, r3, r4, r5].into_iter().enumerate().take(rows) {
                store_row(row, c[i]);
            }
        }

        /// # Safety
        /// The CPU has the target features; for each run `(a_off, b_off, len)`, `a` readable at
        /// `a_off + q·a_step + 0..m` and `b` at `b_off + q·b_step + 0..W` for `q < len`; `dst[i]` writable for
        /// `W` floats for `i < stored`.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn $cols_tile(
            a: *const f32,
            a_step: usize,
            b: *const f32,
            b_step: usize,
            runs: &[(usize, usize, usize)],
            m: usize,
            dst: &[*mut f32; MR],
            accumulate: bool,
            stored: usize,
        ) {
            use core::arch::x86_64::*;
            let mut acc: [[$vec; $nv]; MR] = [[$zero(); $nv]; MR];
            for &(a_off, b_off, len) in runs {
                let (mut ap, mut bp) = (a.add(a_off), b.add(b_off));
                if m == MR {
                    for _ in 0..len {
                        let bv: [$vec; $nv] = core::array::from_fn(|j| $load(bp.add(j * $lanes)));
                        for i in 0..MR {
                            let av = $set1(*ap.add(i));
                            for j in 0..$nv {
                                acc[i][j] = $fmadd(av, bv[j], acc[i][j]);
                            }
                        }
                        ap = ap.add(a_step);
                        bp = bp.add(b_step);
                    }
                } else {
                    for _ in 0..len {
                        let bv: [$vec; $nv] = core::array::from_fn(|j| $load(bp.add(j * $lanes)));
                        for i in 0..m {
                            let av = $set1(*ap.add(i));
                            for j in 0..$nv {
                                acc[i][j] = $fmadd(av, bv[j], acc[i][j]);
                            }
                        }
                        ap = ap.add(a_step);
                        bp = bp.add(b_step);
                    }
                }
            }
            for i in 0..stored.min(m) {
                for j in 0..$nv {
                    let d = dst[i].add(j * $lanes);
                    let v = if accumulate {
                        $add(acc[i][j], $load(d))
                    } else {
                        acc[i][j]
                    };
                    $store(d, v);
                }
            }
        }

        #[cfg(not(target_arch = "x86_64"))]
        unsafe fn $rows_tile(
            _: &[*const f32; MR],
            _: usize,
            _: *const f32,
            _: &[*mut f32; MR],
            _: usize,
            _: bool,
            _: Option<Columns>,
        ) {
            unreachable!("cpu_supported() is false off x86-64")
        }

        #[cfg(not(target_arch = "x86_64"))]
        unsafe fn $cols_tile(
            _: &dyn Fn(usize) -> *const f32,
            _: usize,
            _: usize,
            _: *const f32,
            _: usize,
            _: &[*mut f32; MR],
            _: bool,
        ) {
            unreachable!("cpu_supported() is false off x86-64")
        }
    };
}

micro_kernels!(
    "avx2,fma",
    rows_tile_16,
    cols_tile_16,
    __m256,
    8,
    2,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_max_ps,
    _mm256_setzero_ps
);
micro_kernels!(
    "avx512f",
    rows_tile_64,
    cols_tile_64,
    __m512,
    16,
    4,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_max_ps,
    _mm512_setzero_ps
);
