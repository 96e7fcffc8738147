//! The micro-kernels: one register tile of `i32` sums,
//!
//! ```text
//! acc[i, 0..W] = Σ_t Σ_k rows[t·MR + i][k] · w[t][k][0..W]      i < MR, k < cin
//! ```
//!
//! `rows[t·MR + i]` points at the `cin` input channels row `i` of the tile reads through tap `t` (a zero block
//! where the tap falls in the padding); `w` is one column panel as [`super::pack`] wrote it: per tap, `cin`
//! rounded up to a multiple of 4, in groups of four input channels, each group `[W][4]` bytes (the four
//! channels of one output column side by side, what `vpdpbusd` multiplies with four bytes of a row and sums
//! into one `i32` lane). Four channels of a row are read as one `u32` and broadcast; the last group of a row
//! whose `cin` is not a multiple of 4 is read byte by byte (the weights beyond `cin` are zero).
//!
//! The paths: AVX-512 VNNI (6 rows × 64 columns, 24 zmm sums), VNNI on ymm (6 × 16, AVX-VNNI or AVX-512VL),
//! AVX2 (4 × 16, below), and a portable scalar tile.
//!
//! AVX2 has no instruction that sums four byte products into an `i32`: `vpmaddubsw` multiplies byte pairs into
//! saturating `i16` sums, and `vpmaddwd` by ones adds neighbouring `i16`s into `i32`, a second multiply. The tile
//! takes two groups of four channels at a time: their pair sums are added in 16 bits (`vpaddw`), and the four
//! products of each lane widened once, three multiplies per 64 products instead of four. With activations at
//! most 127 ([`super::Path::qmax`]) and weights at most 63 in magnitude ([`super::Path::wmax`]), four products
//! sum to at most 4·127·63 = 32004 < 32767: nothing saturates or wraps, and the sums are exact.

#[cfg(target_arch = "x86_64")]
use super::requant;

/// Reads the `tail` (1 to 3) bytes at `p` as the low bytes of a `u32`.
///
/// # Safety
/// `p` readable for `tail` bytes.
#[inline(always)]
unsafe fn tail_word(p: *const u8, tail: usize) -> i32 {
    // Plain loads: a copy of `tail` bytes became a call to memcpy per row and tap, which made the stem's
    // three channels slower on int8 than on f32.
    let byte = |i: usize| (*p.add(i) as i32) << (8 * i);
    match tail {
        1 => byte(0),
        2 => byte(0) | byte(1),
        _ => byte(0) | byte(1) | byte(2),
    }
}

/// The products of one tile into `$sums: [$vec; MR·NV]` (row `i`'s `NV` vectors of `$lanes` columns at `i·NV`):
/// `$mr` rows, `$nv` vectors, `$dot(sum, a, b)` the multiply-add of four bytes per lane.
#[cfg(target_arch = "x86_64")]
macro_rules! products {
    ($sums:ident = $mr:expr, $nv:expr, $lanes:expr, $vec:ty, $zero:expr, $load:expr, $set1:expr,
     ($rows:expr, $taps:expr, $cin:expr, $w:expr), |$c:ident, $a:ident, $b:ident| $dot:expr) => {
        const MR: usize = $mr;
        const NV: usize = $nv;
        let (rows, taps, cin): (&[*const u8], usize, usize) = ($rows, $taps, $cin);
        assert!(rows.len() >= taps * MR);
        let mut $sums: [$vec; MR * NV] = [$zero; MR * NV];
        let (full, tail) = (cin / 4, cin % 4);
        let mut wp: *const i8 = $w;
        // One group of four channels: the panel's `[W][4]` bytes times each row's four channels.
        macro_rules! group {
            ($word:expr) => {{
                let mut b: [$vec; NV] = [$zero; NV];
                for (j, v) in b.iter_mut().enumerate() {
                    *v = $load(wp.add(j * $lanes * 4));
                }
                for i in 0..MR {
                    let $a = $set1($word(i));
                    for j in 0..NV {
                        let ($c, $b) = ($sums[i * NV + j], b[j]);
                        $sums[i * NV + j] = $dot;
                    }
                }
                wp = wp.add(NV * $lanes * 4);
            }};
        }
        for t in 0..taps {
            let r = &rows[t * MR..(t + 1) * MR];
            for g in 0..full {
                group!(|i: usize| (r[i].add(4 * g) as *const i32).read_unaligned());
            }
            if tail > 0 {
                group!(|i: usize| tail_word(r[i].add(4 * full), tail));
            }
        }
    };
}

/// One tile kernel: [`products`], then the sums stored to `acc`.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_kernel {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $mr:expr, $nv:expr, $lanes:expr, $vec:ty,
     $zero:expr, $load:expr, $set1:expr, $store:expr, |$c:ident, $a:ident, $b:ident| $dot:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU has the features named; `rows` holds `taps · MR` pointers, each readable for `cin` bytes;
        /// `w` readable for the panel's `taps · ⌈cin/4⌉ · 4 · W` bytes; `acc` holds `MR · W` sums.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn $name(rows: &[*const u8], taps: usize, cin: usize, w: *const i8, acc: &mut [i32]) {
            use core::arch::x86_64::*;
            products!(sums = $mr, $nv, $lanes, $vec, $zero, $load, $set1, (rows, taps, cin, w),
                      |$c, $a, $b| $dot);
            assert!(acc.len() >= MR * NV * $lanes);
            for (k, s) in sums.iter().enumerate() {
                $store(acc.as_mut_ptr().add(k * $lanes), *s);
            }
        }
    };
}

/// The AVX-512 VNNI tile, 6 rows × 64 columns, with its epilogue: the 24 sums stay in registers and go
/// through [`requant::store16_avx512`] into `s`, a column vector at a time (its biases and scales loaded once
/// for the six rows), masked where the panel is partial. Storing the sums and reading them back for a separate
/// epilogue cost about 5 % of resnet50's int8 pass at batch 32 (Zen 4).
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; `rows` holds `taps · 6` pointers, each readable for `cin` bytes; `w`
/// readable for the panel's `taps · ⌈cin/4⌉ · 256` bytes; `s` as [`requant::tile_rows`]' with at most 6 rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn vnni512(
    rows: &[*const u8],
    taps: usize,
    cin: usize,
    w: *const i8,
    s: &requant::TileStore,
) {
    use core::arch::x86_64::*;
    products!(
        sums = 6,
        4,
        16,
        __m512i,
        _mm512_setzero_si512(),
        |p: *const i8| _mm512_loadu_si512(p as *const _),
        _mm512_set1_epi32,
        (rows, taps, cin, w),
        |c, a, b| _mm512_dpbusd_epi32(c, a, b)
    );
    assert!(s.rows <= MR && s.cols <= NV * 16);
    let k = requant::Avx512Consts::new(s.qmax);
    // Literal indices into `sums`, which keeps them in registers: loops over the rows and columns (whose 24
    // bodies LLVM does not unroll) made it keep all 24 in memory and store them every product step.
    macro_rules! column {
        ($j:literal: $($i:literal)*) => {
            if $j * 16 < s.cols {
                let m = requant::mask16(s.cols - $j * 16);
                let b = _mm512_maskz_loadu_epi32(m, s.bias.add($j * 16));
                let scale = _mm512_maskz_loadu_ps(m, s.scale.add($j * 16));
                $(
                    if $i < s.rows {
                        requant::store16_avx512(sums[$i * NV + $j], b, scale, m, s, $i, $j * 16, &k);
                    }
                )*
            }
        };
    }
    column!(0: 0 1 2 3 4 5);
    column!(1: 0 1 2 3 4 5);
    column!(2: 0 1 2 3 4 5);
    column!(3: 0 1 2 3 4 5);
}

#[cfg(target_arch = "x86_64")]
tile_kernel!(
    /// The VNNI tile on ymm registers with the AVX-512VL encoding: 6 rows × 16 columns.
    vnni256_evex, "avx512f,avx512vl,avx512vnni", 6, 2, 8, __m256i, _mm256_setzero_si256(),
    |p: *const i8| _mm256_loadu_si256(p as *const _),
    _mm256_set1_epi32,
    |p: *mut i32, v| _mm256_storeu_si256(p as *mut _, v),
    |c, a, b| _mm256_dpbusd_epi32(c, a, b)
);

#[cfg(target_arch = "x86_64")]
tile_kernel!(
    /// The VNNI tile on ymm registers with the AVX-VNNI (VEX) encoding, for CPUs without AVX-512: 6 × 16.
    vnni256_vex, "avx2,avxvnni", 6, 2, 8, __m256i, _mm256_setzero_si256(),
    |p: *const i8| _mm256_loadu_si256(p as *const _),
    _mm256_set1_epi32,
    |p: *mut i32, v| _mm256_storeu_si256(p as *mut _, v),
    |c, a, b| _mm256_dpbusd_avx_epi32(c, a, b)
);

/// The AVX2 tile, 4 rows × 16 columns (activations at most 127, weights at most 63 in magnitude, two groups of
/// channels per step: see the module documentation), with its
/// epilogue: the sums stay in registers and go through [`requant::store8_avx2`] into `s` (a partial panel, fewer
/// than 16 columns, through `acc` and [`requant::tile_avx2`]). A separate epilogue, storing and reloading the
/// sums, took as long as 16 groups of products: as long as a 1×1 convolution's over 64 channels.
///
/// # Safety
/// The CPU has AVX2; `rows` holds `taps · 4` pointers, each readable for `cin` bytes; `w` readable for the
/// panel's `taps · ⌈cin/4⌉ · 64` bytes; `acc` holds 64 sums; `s` as [`requant::tile_rows`]' with at most 4 rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn avx2(
    rows: &[*const u8],
    taps: usize,
    cin: usize,
    w: *const i8,
    acc: &mut [i32],
    s: &requant::TileStore,
) {
    use core::arch::x86_64::*;
    const MR: usize = 4;
    const NV: usize = 2;
    assert!(rows.len() >= taps * MR);
    let ones = _mm256_set1_epi16(1);
    let mut sums = [_mm256_setzero_si256(); MR * NV];
    let (full, tail) = (cin / 4, cin % 4);
    let mut wp = w;
    let load = |p: *const i8| _mm256_loadu_si256(p as *const __m256i);
    let word = |p: *const u8| _mm256_set1_epi32((p as *const i32).read_unaligned());
    // `sums[i·NV + j] += Σ four products per lane`, from the 16-bit pair sums `p` of one or two groups.
    let widen = |sum: __m256i, p: __m256i| _mm256_add_epi32(sum, _mm256_madd_epi16(p, ones));
    for t in 0..taps {
        let r = &rows[t * MR..(t + 1) * MR];
        // Two groups of four channels: each lane's two pair sums of one group and two of the next, added in
        // 16 bits, then widened once.
        let mut g = 0;
        while g + 2 <= full {
            let (b0, b1) = (load(wp), load(wp.add(32)));
            let (c0, c1) = (load(wp.add(64)), load(wp.add(96)));
            for i in 0..MR {
                let (a0, a1) = (word(r[i].add(4 * g)), word(r[i].add(4 * g + 4)));
                let p0 =
                    _mm256_add_epi16(_mm256_maddubs_epi16(a0, b0), _mm256_maddubs_epi16(a1, c0));
                let p1 =
                    _mm256_add_epi16(_mm256_maddubs_epi16(a0, b1), _mm256_maddubs_epi16(a1, c1));
                sums[i * NV] = widen(sums[i * NV], p0);
                sums[i * NV + 1] = widen(sums[i * NV + 1], p1);
            }
            wp = wp.add(2 * NV * 8 * 4);
            g += 2;
        }
        // A last whole group, then the last 1 to 3 channels (read byte by byte; the weights beyond `cin` are 0).
        let single = (g < full)
            .then_some(g)
            .into_iter()
            .chain((tail > 0).then_some(full));
        for g in single {
            let (b0, b1) = (load(wp), load(wp.add(32)));
            for i in 0..MR {
                let a = match g == full {
                    true => _mm256_set1_epi32(tail_word(r[i].add(4 * full), tail)),
                    false => word(r[i].add(4 * g)),
                };
                sums[i * NV] = widen(sums[i * NV], _mm256_maddubs_epi16(a, b0));
                sums[i * NV + 1] = widen(sums[i * NV + 1], _mm256_maddubs_epi16(a, b1));
            }
            wp = wp.add(NV * 8 * 4);
        }
    }
    assert!(s.rows <= MR && acc.len() >= MR * NV * 8);
    if s.cols < NV * 8 {
        for (k, v) in sums.iter().enumerate() {
            _mm256_storeu_si256(acc.as_mut_ptr().add(k * 8) as *mut _, *v);
        }
        requant::tile_avx2(acc, NV * 8, s);
        return;
    }
    let k = requant::Avx2Consts::new(s.qmax);
    for j in 0..NV {
        let b = _mm256_loadu_si256(s.bias.add(j * 8) as *const __m256i);
        let scale = _mm256_loadu_ps(s.scale.add(j * 8));
        // Constant indices into `sums`, which keeps them in registers (a loop to the run-time row count
        // would put them in memory).
        for i in 0..MR {
            if i < s.rows {
                requant::store8_avx2(sums[i * NV + j], b, scale, s, i, j * 8, &k);
            }
        }
    }
}

/// The portable tile: 4 rows × 16 columns in plain Rust.
///
/// # Safety
/// As the other tiles': `rows` holds `taps · 4` pointers readable for `cin` bytes, `w` the panel, `acc` 64 sums.
pub(super) unsafe fn portable(
    rows: &[*const u8],
    taps: usize,
    cin: usize,
    w: *const i8,
    acc: &mut [i32],
) {
    const MR: usize = 4;
    const W: usize = 16;
    let acc = &mut acc[..MR * W];
    acc.fill(0);
    let groups = cin.div_ceil(4);
    for t in 0..taps {
        let panel = core::slice::from_raw_parts(w.add(t * groups * 4 * W), groups * 4 * W);
        for i in 0..MR {
            let x = core::slice::from_raw_parts(rows[t * MR + i], cin);
            let sums = &mut acc[i * W..][..W];
            for (k, &a) in x.iter().enumerate() {
                let wg = &panel[(k / 4) * 4 * W..][..4 * W];
                for (col, s) in sums.iter_mut().enumerate() {
                    *s += a as i32 * wg[col * 4 + k % 4] as i32;
                }
            }
        }
    }
}
