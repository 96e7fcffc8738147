//! What a rank does when its job stops making progress (`--collective-timeout`): the one line that names the
//! ranks that went silent, who prints it, and the exit that does not depend on MPI. The MPI side (waiting on
//! non-blocking collectives, asking the other ranks who is still there) is `dist::mpi` (feature `mpi`); this file
//! holds what can be decided without MPI, so it is built and tested without the feature, by a plain `cargo test`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a rank that timed out waits for the others to answer "are you there?" before naming those that did
/// not: a rank that is alive answers within milliseconds (it is waiting in the same collective, or reaches
/// one within a step), so a tenth of the timeout, between 1 and 10 seconds, is ample.
pub fn grace(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// The rank that prints the job's one line: the lowest rank this rank heard from (itself included). Every rank
/// on the same side of a partition hears the same ranks, so one line comes out of each side; the side that
/// still reaches `mpirun` is the one whose line is seen.
pub fn reporter(heard: &[bool]) -> usize {
    heard.iter().position(|&h| h).unwrap_or(0)
}

/// The line that ends the job: `me` on `host` waited `waited` in collective number `k` (`what`: `allreduce`,
/// `broadcast`), and `silent` (rank, host) did not answer within the grace. With no silent rank every rank is
/// there but the collective still did not finish (ranks calling different collectives).
pub fn silent_line(
    me: usize,
    host: &str,
    waited: Duration,
    what: &str,
    k: u64,
    silent: &[(usize, &str)],
) -> String {
    let who = match silent {
        [] => "every rank answered, yet the collective did not finish (ranks in different collectives?)"
            .to_string(),
        [(rank, host)] => format!("rank {rank} on {host} went silent (cut off, frozen or gone)"),
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|(rank, host)| format!("rank {rank} on {host}"))
                .collect();
            format!("{} went silent (cut off, frozen or gone)", list.join(", "))
        }
    };
    format!(
        "error: rank {me} on {host}: {what} #{k} made no progress for {} s (--collective-timeout): {who}; ending the job",
        waited.as_secs()
    )
}

/// Ends the process with status 1 after `after`, whatever MPI does meanwhile: `MPI_Abort` asks `mpirun` to end
/// the job, which a rank cut off from its daemon's `mpirun` may wait on forever. `_exit` runs no exit handlers
/// (OpenMPI's could block the same way).
pub fn exit_after(after: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        // SAFETY: _exit only ends the process.
        unsafe { libc::_exit(1) }
    });
}

/// Watches the start of the job: `MPI_Init` waits for every rank to join, and cannot be interrupted, so a
/// thread ends the process with one line if it has not returned within the timeout. Dropped once MPI is up.
pub struct StartGuard {
    started: Arc<AtomicBool>,
}

impl StartGuard {
    /// Starts watching: past `timeout`, prints the line naming this rank (`OMPI_COMM_WORLD_RANK`, as `mpirun`
    /// sets it) and exits with status 1.
    pub fn watch(timeout: Duration) -> StartGuard {
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        std::thread::spawn(move || {
            let begin = Instant::now();
            while begin.elapsed() < timeout {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if flag.load(Ordering::Relaxed) {
                return;
            }
            let rank = std::env::var("OMPI_COMM_WORLD_RANK")
                .or_else(|_| std::env::var("PMIX_RANK"))
                .unwrap_or_else(|_| "?".into());
            eprintln!(
                "error: rank {rank} (pid {}): MPI did not start within {} s (--collective-timeout): a rank never joined the job; ending it",
                std::process::id(),
                timeout.as_secs()
            );
            // SAFETY: _exit only ends the process.
            unsafe { libc::_exit(1) }
        });
        StartGuard { started }
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        self.started.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_every_silent_rank_and_its_host() {
        let s = Duration::from_secs(10);
        let one = silent_line(0, "a", s, "allreduce", 7, &[(1, "b")]);
        assert_eq!(
            one,
            "error: rank 0 on a: allreduce #7 made no progress for 10 s (--collective-timeout): rank 1 on b went silent (cut off, frozen or gone); ending the job"
        );
        let two = silent_line(0, "a", s, "broadcast", 2, &[(1, "b"), (2, "c")]);
        assert!(
            two.contains("rank 1 on b, rank 2 on c went silent"),
            "{two}"
        );
        let none = silent_line(1, "b", s, "allreduce", 3, &[]);
        assert!(none.contains("every rank answered"), "{none}");
    }

    #[test]
    fn the_lowest_rank_heard_reports_and_the_grace_is_bounded() {
        assert_eq!(reporter(&[true, true, false]), 0);
        assert_eq!(reporter(&[false, true, true]), 1);
        assert_eq!(grace(Duration::from_secs(300)), Duration::from_secs(10));
        assert_eq!(grace(Duration::from_secs(5)), Duration::from_secs(1));
        assert_eq!(grace(Duration::from_secs(30)), Duration::from_secs(3));
    }
}
