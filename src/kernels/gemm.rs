//! The single door to the matrix-multiply crate (`gemm`, with runtime-dispatched AVX2 / AVX-512 kernels).
//! Everything compute-heavy in the network is one of these calls.

use gemm::Parallelism;

/// Row-major view of a matrix operand: element `(i, j)` is at `data[i*row_stride + j*col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    /// The backing buffer; it must reach the largest strided index the product touches.
    pub data: &'a [f32],
    /// Distance in `data` between elements `(i, j)` and `(i + 1, j)`.
    pub row_stride: usize,
    /// Distance in `data` between elements `(i, j)` and `(i, j + 1)`.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major `[rows, cols]` matrix (`row_stride = cols`).
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }
    /// The transpose of a dense row-major `[rows, cols]` matrix, seen as `[cols, rows]`.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }
    fn max_index(&self, rows: usize, cols: usize) -> usize {
        (rows - 1) * self.row_stride + (cols - 1) * self.col_stride
    }
}

/// Products smaller than this many multiply-adds run on one thread: splitting them costs more than it gains.
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// `c [m, n] (row-major) = a [m, k] × b [k, n]`, or `c += a × b` when `accumulate`.
///
/// Panics if a slice is too short for its shape (a bug in the caller, never user input).
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    accumulate: bool,
    a: MatRef<'_>,
    b: MatRef<'_>,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= m * n, "gemm: c holds {} < {m}×{n}", c.len());
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    assert!(
        a.data.len() > a.max_index(m, k),
        "gemm: a too short for {m}×{k}"
    );
    assert!(
        b.data.len() > b.max_index(k, n),
        "gemm: b too short for {k}×{n}"
    );
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && m * n * k >= PARALLEL_MIN_MACS {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above bound every index the kernel touches: c is m×n dense row-major, a and b
    // cover their largest strided index; the three buffers are distinct borrows, so they do not alias.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matches_naive_including_transposes_and_accumulate() {
        let (m, n, k) = (37, 29, 71);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let want = naive(m, n, k, &a, &b);
        let mut c = vec![0.0; m * n];
        matmul(
            m,
            n,
            k,
            &mut c,
            false,
            MatRef::row_major(&a, k),
            MatRef::row_major(&b, n),
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-4);
        }
        // aᵀ stored as [k, m]; bᵀ stored as [n, k]
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        matmul(
            m,
            n,
            k,
            &mut c,
            true,
            MatRef::transposed(&at, m),
            MatRef::transposed(&bt, k),
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - 2.0 * y).abs() < 2e-4);
        }
    }
}
