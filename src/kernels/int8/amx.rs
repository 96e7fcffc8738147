//! The AMX path: Intel's tile registers (`tdpbusd`: a 16×64 `u8` tile times a 64×16 `i8` tile summed into a
//! 16×16 `i32` tile, 16,384 multiply-adds an instruction), on the Xeons that have AMX-INT8 (Sapphire Rapids and
//! later).
//!
//! One block is 32 rows × 32 columns: two `A` tiles of 16 rows (tmm4, tmm5) times two `B` tiles of 16 columns
//! (tmm6, tmm7) into four sums (tmm0–tmm3), 64 channels of the reduction a step, the blocking oneDNN's AMX
//! convolutions use (four loads feed four products).
//!
//! - `B` is the weight panel as [`super::pack`] writes it for this path, `[2][taps][⌈cin/4⌉][16][4]`: each half
//!   is a `[K/4][16][4]` matrix, the layout `tdpbusd` reads (four channels of one output column side by side),
//!   so a tile is 16 consecutive 64-byte rows of it.
//! - `A` is 16 rows of 64 reduction bytes at a fixed stride. A 1×1 convolution of stride 1 whose channels are a
//!   multiple of 64 reads its input in place (consecutive rows are consecutive pixels); every other one gathers
//!   its 32 rows into a buffer `[32][K']` (`K' = taps·⌈cin/4⌉·4` rounded up to 64, the rest zeros), once per
//!   row block, read by every column panel.
//!
//! Where the reduction is not a multiple of 64, the last step's `B` tile reads up to 1,008 bytes past its half
//! panel (the next half, the next panel, or the padding [`super::pack`] adds): those bytes meet the zeros of the
//! gathered rows, so they add nothing.
//!
//! The tile registers are enabled per process (Linux's `arch_prctl(ARCH_REQ_XCOMP_PERM)`, once, in
//! [`available`]) and configured per task ([`Config::load`]); the instructions are written as inline assembly,
//! since Rust's AMX intrinsics are not stable.

/// True when the CPU has AMX-TILE and AMX-INT8 and the kernel lets this process use the tile data (asked once).
pub fn available() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| cpu_has_amx_int8() && request_tile_data())
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx_int8() -> bool {
    use core::arch::x86_64::__cpuid_count;
    // Leaf 7 is read only when the CPU reports it.
    let max_leaf = __cpuid_count(0, 0).eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    // EDX bit 24: AMX-TILE, bit 25: AMX-INT8. The rest of the path (gathers, epilogue) is AVX-512.
    let (tile, int8) = (edx >> 24 & 1 == 1, edx >> 25 & 1 == 1);
    tile && int8
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx_int8() -> bool {
    false
}

/// Asks Linux for the tile data state (XTILEDATA, 8 KiB per thread, off until a process asks).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes which state components the process may use.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_data() -> bool {
    false
}

/// Rows and columns of one block.
pub(super) const BLOCK: usize = 32;

/// Reduction bytes a step.
pub(super) const STEP: usize = 64;

/// The tile configuration (`ldtilecfg`'s 64 bytes): palette 1, tmm0–tmm7 each 16 rows of 64 bytes.
#[repr(C, align(64))]
pub(super) struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl Config {
    const BLOCKS: Config = {
        let mut colsb = [0u16; 16];
        let mut rows = [0u8; 16];
        let mut t = 0;
        while t < 8 {
            colsb[t] = 64;
            rows[t] = 16;
            t += 1;
        }
        Config {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb,
            rows,
        }
    };

    /// Configures this thread's tiles for [`block`] until [`release`].
    ///
    /// # Safety
    /// [`available`] returned true.
    #[cfg(target_arch = "x86_64")]
    pub(super) unsafe fn load() {
        let cfg = &Config::BLOCKS;
        core::arch::asm!("ldtilecfg [{}]", in(reg) cfg as *const Config, options(nostack, readonly));
    }
}

/// Returns this thread's tiles to their initial state (so that a context switch saves no tile data).
///
/// # Safety
/// [`available`] returned true.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn release() {
    core::arch::asm!("tilerelease", options(nostack, nomem));
}

/// One block: `acc [32][32] = A · B` over `steps` steps of 64 reduction bytes.
///
/// `a0`, `a1`: rows 0–15 and 16–31, each row `a_stride` bytes after the one before, each step 64 bytes after the
/// one before; `b0`, `b1`: the two half panels (columns 0–15, 16–31), each step 1,024 bytes (16 rows of 64).
///
/// # Safety
/// [`Config::load`] ran on this thread; the pointers readable for `steps` steps as described; `acc` writable for
/// 1,024 sums.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn block(
    a0: *const u8,
    a1: *const u8,
    a_stride: usize,
    b0: *const i8,
    b1: *const i8,
    steps: usize,
    acc: *mut i32,
) {
    debug_assert!(steps > 0);
    core::arch::asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "2:",
        "tileloadd tmm4, [{a0} + {sa} * 1]",
        "tileloadd tmm6, [{b0} + {sb} * 1]",
        "tdpbusd tmm0, tmm4, tmm6",
        "tileloadd tmm7, [{b1} + {sb} * 1]",
        "tdpbusd tmm1, tmm4, tmm7",
        "tileloadd tmm5, [{a1} + {sa} * 1]",
        "tdpbusd tmm2, tmm5, tmm6",
        "tdpbusd tmm3, tmm5, tmm7",
        "add {a0}, 64",
        "add {a1}, 64",
        "add {b0}, 1024",
        "add {b1}, 1024",
        "dec {k}",
        "jnz 2b",
        "tilestored [{c} + {sc} * 1], tmm0",
        "lea {t}, [{c} + 64]",
        "tilestored [{t} + {sc} * 1], tmm1",
        "lea {t}, [{c} + 2048]",
        "tilestored [{t} + {sc} * 1], tmm2",
        "lea {t}, [{c} + 2112]",
        "tilestored [{t} + {sc} * 1], tmm3",
        a0 = inout(reg) a0 => _,
        a1 = inout(reg) a1 => _,
        b0 = inout(reg) b0 => _,
        b1 = inout(reg) b1 => _,
        k = inout(reg) steps => _,
        sa = in(reg) a_stride,
        sb = in(reg) 64usize,
        sc = in(reg) BLOCK * 4,
        c = in(reg) acc,
        t = out(reg) _,
        out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
        out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
        options(nostack),
    );
}

/// The reduction rows of output rows `first..first + count` of `g` over the NHWC batch `x`, as the AMX blocks
/// read them: `dst [count][k]` ([`super::rows::gather`], with the masked AVX-512 [`copy`]).
///
/// # Safety
/// The CPU has AVX-512 F and BW ([`available`]); `dst` and `k` as [`super::rows::gather`] asks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn gather(
    g: &super::ConvGeom,
    x: &[u8],
    pad: &[u8],
    first: usize,
    count: usize,
    k: usize,
    dst: &mut [u8],
) {
    super::rows::gather(g, x, pad, first, count, k, dst, |src, dst, n| {
        copy(src, dst, n)
    })
}

/// Copies `n` bytes from `src` to `dst`, 64 a step, the last step masked (a gathered row's taps are
/// short: one call of `memcpy` each cost more than the products).
///
/// # Safety
/// The CPU has AVX-512 F and BW; `src` readable and `dst` writable for `n` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
pub(super) unsafe fn copy(src: *const u8, dst: *mut u8, n: usize) {
    use core::arch::x86_64::*;
    let mut j = 0;
    while j + 64 <= n {
        _mm512_storeu_si512(
            dst.add(j) as *mut _,
            _mm512_loadu_si512(src.add(j) as *const _),
        );
        j += 64;
    }
    if j < n {
        let m: __mmask64 = (1u64 << (n - j)) - 1;
        let v = _mm512_maskz_loadu_epi8(m, src.add(j) as *const i8);
        _mm512_mask_storeu_epi8(dst.add(j) as *mut i8, m, v);
    }
}
