//! Data-parallel training across processes: what a run needs from the collective layer, and the arithmetic of
//! sharing a global batch between ranks. The collectives come from MPI (the `mpi` crate, feature `mpi`); a run without
//! the feature, or launched as a single process, is the one rank of a [`Local`] job, whose collectives have
//! nothing to do: a single process trains through the same code as a job of many, and exactly as before.
//!
//! Semantics (PyTorch's DDP): `--batch-size` is the global batch; rank `r` of `P` takes the contiguous share
//! [`share`] of every global batch, in the order one process would use; gradients are summed over ranks after
//! each rank weights its loss gradient by its share of the global batch, so the sum is the gradient of the mean
//! loss over the whole batch even when shares differ by one.

#[cfg(feature = "mpi")]
pub mod mpi;
pub mod watchdog;

use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

/// The default `--collective-timeout`, in seconds: how long a data-parallel job waits in one collective before
/// it names the ranks that went silent and ends. Far longer than a step, an evaluation or a checkpoint write
/// (seconds, a minute for the largest networks on slow disks), short enough that a hung job is noticed.
pub const DEFAULT_COLLECTIVE_TIMEOUT_SECS: u64 = 300;

/// The collective operations a data-parallel run uses. Every rank calls the same operations in the same order
/// (MPI's rule); every rank receives the same result.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// The host this rank runs on (for the start-up line and error messages).
    fn host(&self) -> &str;
    /// Element-wise sum over ranks, in place.
    fn sum_f32(&self, buf: &mut [f32]);
    /// Element-wise sum over ranks, in place.
    fn sum_f64(&self, buf: &mut [f64]);
    /// Element-wise minimum over ranks, in place.
    fn min_u64(&self, buf: &mut [u64]);
    /// Replaces `bytes` on every rank with `root`'s (any length).
    fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>);
    /// Records that the ranks failed together through [`agree`] (each knows the error; rank 0 reports it).
    fn mark_failed_together(&self);
    /// Whether [`Collective::mark_failed_together`] was called.
    fn failed_together(&self) -> bool;
}

/// The collectives of a process alone in its job: rank 0 of 1, where every sum, minimum and broadcast is already
/// done.
#[derive(Default)]
pub struct Local {
    failed_together: AtomicBool,
}

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn host(&self) -> &str {
        "localhost"
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn min_u64(&self, _: &mut [u64]) {}
    fn broadcast_bytes(&self, _: usize, _: &mut Vec<u8>) {}
    fn mark_failed_together(&self) {
        self.failed_together.store(true, Ordering::Relaxed);
    }
    fn failed_together(&self) -> bool {
        self.failed_together.load(Ordering::Relaxed)
    }
}

/// Rank `rank`'s contiguous share of `n` items split over `size` ranks: the first `n % size` ranks take one more,
/// so shares differ by at most one and rank order is item order.
pub fn share(n: usize, rank: usize, size: usize) -> Range<usize> {
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Makes a step that may fail on some ranks fail on all of them: every rank calls it with its own outcome; if
/// any failed, the lowest failing rank's message becomes every rank's error, prefixed by that rank and its host
/// unless every rank failed (then the failure is the job's, not a rank's). A rank alone keeps its own outcome.
pub fn agree<T>(comm: &dyn Collective, local: Result<T>) -> Result<T> {
    if comm.size() == 1 {
        return local;
    }
    let size = comm.size() as u64;
    let failed = local.is_err();
    // [lowest failing rank (size: none), 1 if every rank failed]
    let mut v = [
        if failed { comm.rank() as u64 } else { size },
        u64::from(failed),
    ];
    comm.min_u64(&mut v);
    let (first, all) = (v[0], v[1] == 1);
    if first == size {
        return local;
    }
    let mut msg = match &local {
        Err(e) if first == comm.rank() as u64 && all => e.to_string().into_bytes(),
        Err(e) if first == comm.rank() as u64 => {
            format!("rank {} on {}: {e}", comm.rank(), comm.host()).into_bytes()
        }
        _ => Vec::new(),
    };
    comm.broadcast_bytes(first as usize, &mut msg);
    comm.mark_failed_together();
    Err(Error::new(String::from_utf8_lossy(&msg).into_owned()))
}

/// Refuses to go on unless every rank holds the same `bytes` as rank 0 (compared by a SHA-256 digest broadcast
/// from rank 0): `what` names them in the error (`the training configuration`), `hint` says what to do. A rank
/// alone has no other to differ from.
pub fn check_same(comm: &dyn Collective, what: &str, hint: &str, bytes: &[u8]) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mine = digest64(bytes);
    let mut root = mine.to_le_bytes().to_vec();
    comm.broadcast_bytes(0, &mut root);
    let root = u64::from_le_bytes(root[..].try_into().expect("8 bytes broadcast"));
    let local = if mine == root {
        Ok(())
    } else {
        Err(Error::new(format!(
            "{what} differs from rank 0's (digest {mine:016x}, rank 0 has {root:016x}): {hint}"
        )))
    };
    agree(comm, local)
}

/// The first 8 bytes of SHA-256 of `bytes`, as a number.
pub fn digest64(bytes: &[u8]) -> u64 {
    let d = Sha256::digest(bytes);
    u64::from_le_bytes(d[..8].try_into().expect("SHA-256 has 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_in_order_and_differ_by_at_most_one() {
        for n in 0..40 {
            for size in 1..9 {
                let shares: Vec<_> = (0..size).map(|r| share(n, r, size)).collect();
                assert_eq!(shares[0].start, 0);
                assert_eq!(shares[size - 1].end, n);
                for w in shares.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() == w[1].len() || w[0].len() == w[1].len() + 1);
                }
            }
        }
        assert_eq!(share(10, 0, 4), 0..3);
        assert_eq!(share(10, 3, 4), 8..10);
    }

    #[test]
    fn a_rank_alone_keeps_its_values_and_its_errors() {
        let local = Local::default();
        let mut v = [1.5f32, -2.0];
        local.sum_f32(&mut v);
        assert_eq!(v, [1.5, -2.0]);
        let mut bytes = b"rank 0".to_vec();
        local.broadcast_bytes(0, &mut bytes);
        assert_eq!(bytes, b"rank 0");
        assert_eq!(agree(&local, Ok::<_, Error>(3)).unwrap(), 3);
        let e = agree::<()>(&local, Err(Error::new("no data"))).unwrap_err();
        assert_eq!(e.to_string(), "no data");
        assert!(!local.failed_together(), "no job to fail together");
        check_same(&local, "the flags", "", b"anything").unwrap();
    }
}
