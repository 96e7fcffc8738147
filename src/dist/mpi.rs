//! [`Collective`] over MPI (rsmpi, OpenMPI): the world communicator of a job started by `mpirun` or `srun`.

use super::Collective;
use crate::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The job's world communicator. MPI is initialized at `MPI_THREAD_SERIALIZED` and every call is made under
/// `lock`, so a rank may call from any thread (batch norm's synchronized sums run inside the model); the lock
/// also guards the send buffers, because rsmpi offers no in-place allreduce.
pub struct Mpi {
    /// Finalizes MPI when dropped.
    _universe: Universe,
    rank: usize,
    size: usize,
    host: String,
    lock: Mutex<Scratch>,
    failed_together: AtomicBool,
}

#[derive(Default)]
struct Scratch {
    f32: Vec<f32>,
    f64: Vec<f64>,
}

impl Mpi {
    /// Initializes MPI. `Ok(None)` when the process is alone in its job (started without `mpirun`, or with
    /// `-np 1`): such a run is an ordinary single-process run.
    pub fn init() -> Result<Option<Mpi>> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| Error::new("MPI was already initialized"))?;
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
        Ok(Some(Mpi {
            _universe: universe,
            rank,
            size,
            host,
            lock: Mutex::new(Scratch::default()),
            failed_together: AtomicBool::new(false),
        }))
    }

    /// Ends the whole job now (`MPI_Abort`): for a failure the other ranks cannot know about.
    pub fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }

    fn scratch(&self) -> std::sync::MutexGuard<'_, Scratch> {
        // A panic while holding the lock ends the process (MPI state is unknown then); the data is scratch.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
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
        SimpleCommunicator::world().all_reduce_into(&s.f32[..], buf, SystemOperation::sum());
    }
    fn sum_f64(&self, buf: &mut [f64]) {
        let mut s = self.scratch();
        s.f64.clear();
        s.f64.extend_from_slice(buf);
        SimpleCommunicator::world().all_reduce_into(&s.f64[..], buf, SystemOperation::sum());
    }
    fn min_u64(&self, buf: &mut [u64]) {
        let _s = self.scratch();
        let send = buf.to_vec();
        SimpleCommunicator::world().all_reduce_into(&send[..], buf, SystemOperation::min());
    }
    fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>) {
        let _s = self.scratch();
        let world = SimpleCommunicator::world();
        let root = world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        // MPI counts are 32-bit: a checkpoint (up to 4 GiB) goes in pieces.
        for piece in bytes.chunks_mut(1 << 30) {
            root.broadcast_into(piece);
        }
    }
    fn mark_failed_together(&self) {
        self.failed_together.store(true, Ordering::Relaxed);
    }
    fn failed_together(&self) -> bool {
        self.failed_together.load(Ordering::Relaxed)
    }
}
