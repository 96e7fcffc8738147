//! [`Collective`] over MPI (rsmpi, OpenMPI): the world communicator of a job started by `mpirun` or `srun`,
//! with collectives that cannot hang. Each collective is started non-blocking and waited on by polling; one
//! that makes no progress for the timeout (`--collective-timeout`) ends the job: the rank asks every other
//! "are you there?" (point-to-point notes, which a rank waiting in any collective answers), names those that do
//! not answer within a grace, and calls `MPI_Abort` ([`super::watchdog`] holds the line and the exit).

use super::watchdog::{exit_after, grace, reporter, silent_line, StartGuard};
use super::Collective;
use crate::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, Source};
use mpi::request::{Request, Scope, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tag of the note "are you there?" a rank that timed out sends every other rank.
const TAG_ASK: i32 = 0x7e51;
/// Tag of the answer "here".
const TAG_HERE: i32 = 0x7e52;
/// The (empty) content of both notes: a static, so that a send can be left to complete on its own.
static NOTE: [u8; 0] = [];
/// How often a rank waiting in a collective looks for "are you there?" notes.
const LOOK_EVERY: Duration = Duration::from_millis(100);
/// Bytes of a host name in the start-up gathering (`MPI_MAX_PROCESSOR_NAME` is 256 in OpenMPI).
const HOST_BYTES: usize = 256;
/// How long `MPI_Abort` may take before the rank exits by itself.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// The job's world communicator. MPI is initialized at `MPI_THREAD_SERIALIZED` and every call is made under
/// `lock`, so a rank may call from any thread (batch norm's synchronized sums run inside the model); the lock
/// also guards the send buffers, because rsmpi offers no in-place allreduce.
pub struct Mpi {
    /// Finalizes MPI when dropped.
    _universe: Universe,
    rank: usize,
    size: usize,
    host: String,
    /// Every rank's host, by rank (gathered at start, for naming silent ranks).
    hosts: Vec<String>,
    /// How long a collective may make no progress.
    timeout: Duration,
    /// Collectives started so far (the number a timeout names).
    started: AtomicU64,
    lock: Mutex<Scratch>,
    failed_together: AtomicBool,
}

#[derive(Default)]
struct Scratch {
    f32: Vec<f32>,
    f64: Vec<f64>,
    u64: Vec<u64>,
}

impl Mpi {
    /// Initializes MPI, ending the process with one line if the job does not start within `timeout` (a rank
    /// that never joins), then gathers every rank's host under the same timeout. `Ok(None)` when the process
    /// is alone in its job (started without `mpirun`, or with `-np 1`): such a run is an ordinary
    /// single-process run.
    pub fn init(timeout: Duration) -> Result<Option<Mpi>> {
        let guard = StartGuard::watch(timeout);
        let (universe, provided) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| Error::new("MPI was already initialized"))?;
        drop(guard);
        if provided < Threading::Serialized {
            return Err(Error::new(format!(
                "the MPI library provides thread level {provided:?}, at least Serialized is needed"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        if size == 1 {
            return Ok(None);
        }
        let host = mpi::environment::processor_name().unwrap_or_else(|_| "?".into());
        let mut mpi = Mpi {
            _universe: universe,
            rank,
            size,
            host,
            hosts: Vec::new(),
            timeout,
            started: AtomicU64::new(0),
            lock: Mutex::new(Scratch::default()),
            failed_together: AtomicBool::new(false),
        };
        mpi.hosts = mpi.gather_hosts();
        Ok(Some(mpi))
    }

    /// Ends the whole job now (`MPI_Abort`): for a failure the other ranks cannot know about.
    pub fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }

    fn scratch(&self) -> std::sync::MutexGuard<'_, Scratch> {
        // A panic while holding the lock ends the process (MPI state is unknown then); the data is scratch.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every rank's host name, by rank: the job's first collective.
    fn gather_hosts(&self) -> Vec<String> {
        let _s = self.scratch();
        let mut mine = [0u8; HOST_BYTES];
        let n = self.host.len().min(HOST_BYTES);
        mine[..n].copy_from_slice(&self.host.as_bytes()[..n]);
        let mut all = vec![0u8; HOST_BYTES * self.size];
        let world = SimpleCommunicator::world();
        mpi::request::scope(|sc| {
            let req = world.immediate_all_gather_into(sc, &mine[..], &mut all[..]);
            self.finish(&world, "the start-up gathering", req);
        });
        all.chunks(HOST_BYTES)
            .map(|name| {
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                String::from_utf8_lossy(&name[..end]).into_owned()
            })
            .collect()
    }

    /// Waits for `req` (collective `what`), answering other ranks' "are you there?" notes meanwhile; past the
    /// timeout, ends the job ([`Mpi::end_silent`]). Polls with a yield between tests, as OpenMPI's blocking
    /// calls do: its non-blocking collectives move on (the next round, the next TCP fragment) only inside MPI
    /// calls, so a sleep between tests would slow a large sum by a sleep per fragment.
    fn finish<'a, D: ?Sized, S: Scope<'a>>(
        &self,
        world: &SimpleCommunicator,
        what: &str,
        mut req: Request<'a, D, S>,
    ) {
        let k = self.started.fetch_add(1, Ordering::Relaxed) + 1;
        let start = Instant::now();
        let mut look = start + LOOK_EVERY;
        loop {
            req = match req.test() {
                Ok(_) => return,
                Err(req) => req,
            };
            let now = Instant::now();
            let waited = now - start;
            if now >= look {
                self.answer_asks(world, &mut []);
                look = now + LOOK_EVERY;
            }
            if waited >= self.timeout {
                self.end_silent(world, what, k, waited);
            }
            std::thread::yield_now();
        }
    }

    /// Answers every "are you there?" note received so far with "here", marking its sender in `heard` (when
    /// given: a rank that asks is alive too). The answers are left to complete on their own: the asker may be
    /// gone.
    fn answer_asks(&self, world: &SimpleCommunicator, heard: &mut [bool]) {
        while let Some((msg, status)) = world
            .any_process()
            .immediate_matched_probe_with_tag(TAG_ASK)
        {
            let mut note = [0u8; 0];
            msg.matched_receive_into(&mut note[..]);
            let from = status.source_rank();
            if let Some(h) = heard.get_mut(from as usize) {
                *h = true;
            }
            let send = world.process_at_rank(from).immediate_send_with_tag(
                StaticScope,
                &NOTE[..],
                TAG_HERE,
            );
            std::mem::forget(send);
        }
    }

    /// Collective number `k` (`what`) made no progress for `waited`: asks every other rank whether it is there,
    /// waits the grace for the answers, prints the line naming those that did not answer (the lowest rank that
    /// answered prints it) and ends the job with `MPI_Abort`, or by itself if that does not end it.
    fn end_silent(&self, world: &SimpleCommunicator, what: &str, k: u64, waited: Duration) -> ! {
        let mut heard = vec![false; self.size];
        heard[self.rank] = true;
        for other in (0..self.size).filter(|&r| r != self.rank) {
            let ask = world.process_at_rank(other as i32).immediate_send_with_tag(
                StaticScope,
                &NOTE[..],
                TAG_ASK,
            );
            std::mem::forget(ask);
        }
        let until = Instant::now() + grace(self.timeout);
        while Instant::now() < until && heard.contains(&false) {
            self.answer_asks(world, &mut heard);
            while let Some((msg, status)) = world
                .any_process()
                .immediate_matched_probe_with_tag(TAG_HERE)
            {
                let mut note = [0u8; 0];
                msg.matched_receive_into(&mut note[..]);
                if let Some(h) = heard.get_mut(status.source_rank() as usize) {
                    *h = true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let silent: Vec<(usize, &str)> = (0..self.size)
            .filter(|&r| !heard[r])
            .map(|r| {
                (
                    r,
                    self.hosts.get(r).map_or("an unknown host", |h| h.as_str()),
                )
            })
            .collect();
        if reporter(&heard) == self.rank {
            eprintln!(
                "{}",
                silent_line(self.rank, &self.host, waited, what, k, &silent)
            );
        }
        exit_after(ABORT_GRACE);
        world.abort(1)
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn host(&self) -> &str {
        &self.host
    }
    fn sum_f32(&self, buf: &mut [f32]) {
        let mut s = self.scratch();
        s.f32.clear();
        s.f32.extend_from_slice(buf);
        let world = SimpleCommunicator::world();
        mpi::request::scope(|sc| {
            let op = SystemOperation::sum();
            let req = world.immediate_all_reduce_into(sc, &s.f32[..], buf, op);
            self.finish(&world, "allreduce", req);
        });
    }
    fn sum_f64(&self, buf: &mut [f64]) {
        let mut s = self.scratch();
        s.f64.clear();
        s.f64.extend_from_slice(buf);
        let world = SimpleCommunicator::world();
        mpi::request::scope(|sc| {
            let op = SystemOperation::sum();
            let req = world.immediate_all_reduce_into(sc, &s.f64[..], buf, op);
            self.finish(&world, "allreduce", req);
        });
    }
    fn min_u64(&self, buf: &mut [u64]) {
        let mut s = self.scratch();
        s.u64.clear();
        s.u64.extend_from_slice(buf);
        let world = SimpleCommunicator::world();
        mpi::request::scope(|sc| {
            let op = SystemOperation::min();
            let req = world.immediate_all_reduce_into(sc, &s.u64[..], buf, op);
            self.finish(&world, "allreduce", req);
        });
    }
    fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>) {
        let _s = self.scratch();
        let world = SimpleCommunicator::world();
        let root = world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        mpi::request::scope(|sc| {
            let req = root.immediate_broadcast_into(sc, &mut len);
            self.finish(&world, "broadcast", req);
        });
        bytes.resize(len as usize, 0);
        // MPI counts are 32-bit: a checkpoint (up to 4 GiB) goes in pieces.
        for piece in bytes.chunks_mut(1 << 30) {
            mpi::request::scope(|sc| {
                let req = root.immediate_broadcast_into(sc, piece);
                self.finish(&world, "broadcast", req);
            });
        }
    }
    fn mark_failed_together(&self) {
        self.failed_together.store(true, Ordering::Relaxed);
    }
    fn failed_together(&self) -> bool {
        self.failed_together.load(Ordering::Relaxed)
    }
}
