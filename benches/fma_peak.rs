//! This machine's f32 FMA peak, the denominator of "share of peak" in docs/performance.md: independent chains of
//! fused multiply-adds on 16-float (AVX-512) and 8-float (AVX2) vectors, on 1 and on N threads.
//! `cargo bench --bench fma_peak [-- THREADS]` (default 2).
use std::time::Instant;

/// Steps of twelve independent FMA chains (more than the FMA latency times the units, so they never wait).
const STEPS: usize = 20_000_000;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chains_512() -> f32 {
    use core::arch::x86_64::*;
    let (b, c) = (_mm512_set1_ps(1.000_000_1), _mm512_set1_ps(-0.000_000_1));
    let mut a = [_mm512_set1_ps(1.0); 12];
    for _ in 0..STEPS {
        for v in a.iter_mut() {
            *v = _mm512_fmadd_ps(*v, b, c);
        }
    }
    a.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains_256() -> f32 {
    use core::arch::x86_64::*;
    let (b, c) = (_mm256_set1_ps(1.000_000_1), _mm256_set1_ps(-0.000_000_1));
    let mut a = [_mm256_set1_ps(1.0); 12];
    for _ in 0..STEPS {
        for v in a.iter_mut() {
            *v = _mm256_fmadd_ps(*v, b, c);
        }
    }
    let mut lanes = [0.0f32; 8];
    for v in a {
        let mut l = [0.0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), v);
        for (s, x) in lanes.iter_mut().zip(l) {
            *s += x;
        }
    }
    lanes.iter().sum()
}

/// GFLOP/s of `threads` threads each running `chains` (`lanes` floats per vector).
fn measure(threads: usize, lanes: usize, chains: unsafe fn() -> f32) -> f64 {
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let start = Instant::now();
        let sums: Vec<f32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                // SAFETY: called only after the CPU feature check in main.
                .map(|_| s.spawn(|| unsafe { chains() }))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let seconds = start.elapsed().as_secs_f64();
        assert!(sums.iter().all(|v| v.is_finite()));
        let flop = (2 * lanes * 12 * STEPS * threads) as f64;
        best = best.max(flop / seconds / 1e9);
    }
    best
}

fn main() {
    let threads: usize = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    #[cfg(target_arch = "x86_64")]
    {
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        println!("{model}: f32 FMA peak, best of 3");
        for t in [1, threads] {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                println!(
                    "  AVX2     {t} thread(s): {:7.1} GFLOP/s",
                    measure(t, 8, chains_256)
                );
            }
            if std::is_x86_feature_detected!("avx512f") {
                println!(
                    "  AVX-512  {t} thread(s): {:7.1} GFLOP/s",
                    measure(t, 16, chains_512)
                );
            }
        }
    }
}
