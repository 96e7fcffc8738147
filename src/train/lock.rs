//! The run directory's lock.

use crate::checkpoint;
use crate::error::Context;
use crate::{bail, Result};
use std::path::Path;

/// An exclusive advisory lock (flock) on a run directory itself, so no lock file is left behind; released when
/// dropped or when the process dies (even by SIGKILL), so a crashed run never leaves its directory locked.
pub(super) struct RunLock {
    _dir: std::fs::File,
}

impl RunLock {
    pub(super) fn acquire(dir: &Path) -> Result<RunLock> {
        let handle = std::fs::File::open(dir)
            .with_context(|| format!("{}: cannot open run directory", dir.display()))?;
        match handle.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "{}: another `resnet train` is using this run directory; wait for it to finish or choose another --out",
                dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                bail!("{}: cannot lock the run directory: {e}", dir.display())
            }
        }
        // Fail now, not after an epoch of training, if checkpoints cannot be written here.
        let probe = dir.join(format!(".write-check.tmp{}", std::process::id()));
        std::fs::File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .with_context(|| format!("{}: cannot write to the run directory", dir.display()))?;
        // With the lock held no other run writes here, so temporary files are leftovers of a killed run.
        checkpoint::remove_stale_temporaries(dir);
        Ok(RunLock { _dir: handle })
    }
}
