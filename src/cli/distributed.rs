//! `wgtrain train --distributed`: the MPI job around a training run (with
//! the cargo feature `mpi`; without it, `Job::start` refuses with how to
//! build it).
//!
//! Rank 0 reads a `--resume` checkpoint and sends its bytes to every rank;
//! every rank loads the data and builds the model itself, then the ranks
//! check that each describes the same run as rank 0 ([`Job::check_same`])
//! before the first step. Errors every rank meets at the same point (that
//! check, rank 0's checkpoint, a stop or a divergence) end each process
//! normally; any other error ends the whole job (MPI_Abort, [`Job::fail`]),
//! so no rank waits for one that is gone.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;

use wgtrain::backend::{Backend, Replica};
use wgtrain::checkpoint::Checkpoint;

/// How to get a build that can run `--distributed`.
#[cfg(not(feature = "mpi"))]
const BUILD_HINT: &str = "--distributed needs wgtrain built with the cargo feature `mpi`: \
     cargo build --release --features mpi (it needs an MPI library and libclang: on Debian, \
     apt install libopenmpi-dev openmpi-bin libclang-dev), then run it under mpirun";

/// The MPI job of a `--distributed` run (no value exists without the
/// feature).
#[cfg(not(feature = "mpi"))]
pub(crate) enum Job {}

#[cfg(not(feature = "mpi"))]
impl Job {
    pub(crate) fn start(_timeout_s: u64) -> Result<Job> {
        anyhow::bail!("{BUILD_HINT}")
    }
    pub(crate) fn rank(&self) -> usize {
        match *self {}
    }
    pub(crate) fn size(&self) -> usize {
        match *self {}
    }
    pub(crate) fn local_size(&self) -> usize {
        match *self {}
    }
    pub(crate) fn local_rank(&self) -> usize {
        match *self {}
    }
    pub(crate) fn share_checkpoint(&self, _path: Option<&Path>) -> Result<Option<Checkpoint>> {
        match *self {}
    }
    pub(crate) fn check_same(&self, _fields: &BTreeMap<String, String>) -> Result<()> {
        match *self {}
    }
    pub(crate) fn backend(
        &self,
        _replica: Box<dyn Replica>,
        _stop: Arc<AtomicBool>,
    ) -> Result<(Box<dyn Backend + '_>, Arc<AtomicBool>)> {
        match *self {}
    }
    pub(crate) fn fail(&self, _e: anyhow::Error) -> anyhow::Error {
        match *self {}
    }
}

#[cfg(feature = "mpi")]
pub(crate) use with_mpi::Job;

#[cfg(feature = "mpi")]
mod with_mpi {
    use super::*;
    use anyhow::Context;
    use std::time::Duration;
    use wgtrain::checkpoint;
    use wgtrain::parallel::mpi::{Distributed, Mpi};

    /// The MPI job of a `--distributed` run.
    pub(crate) struct Job {
        mpi: Mpi,
    }

    impl Job {
        /// Join the job: initialise MPI, with a watchdog that ends the job
        /// when a collective call waits more than `timeout_s` seconds (0:
        /// none). Ranks other than 0 log warnings and errors only.
        pub(crate) fn start(timeout_s: u64) -> Result<Job> {
            let timeout = (timeout_s > 0).then(|| Duration::from_secs(timeout_s));
            let mpi = Mpi::init(timeout)?;
            if !mpi.is_root() {
                log::set_max_level(log::LevelFilter::Warn);
            }
            log::info!(
                "distributed run: {} ranks (this is rank 0, on {})",
                mpi.size(),
                mpi::environment::processor_name().unwrap_or_default()
            );
            Ok(Job { mpi })
        }

        pub(crate) fn rank(&self) -> usize {
            self.mpi.rank()
        }

        pub(crate) fn size(&self) -> usize {
            self.mpi.size()
        }

        /// Ranks on this machine (for the default thread count).
        pub(crate) fn local_size(&self) -> usize {
            self.mpi.local_size()
        }

        /// This rank's place among the ranks on this machine (for the
        /// choice of a GPU).
        pub(crate) fn local_rank(&self) -> usize {
            self.mpi.local_rank()
        }

        /// Rank 0's `--resume` checkpoint on every rank: rank 0 finds and
        /// reads the file (`path` as rank 0 was given it) and sends its
        /// bytes; every rank checks and parses them. A failure on rank 0
        /// fails every rank.
        pub(crate) fn share_checkpoint(&self, path: Option<&Path>) -> Result<Option<Checkpoint>> {
            // Rank 0's message: a tag byte (0 none, 1 a checkpoint, 2 an
            // error), then the file's path and bytes or the error.
            let mut msg = Vec::new();
            if self.mpi.is_root() {
                match path.map(|p| checkpoint::latest(p).and_then(|f| Ok((checkpoint::read_bytes(&f)?, f)))) {
                    None => msg.push(0),
                    Some(Ok((bytes, file))) => {
                        msg.push(1);
                        let name = file.to_string_lossy().into_owned();
                        msg.extend((name.len() as u64).to_le_bytes());
                        msg.extend(name.as_bytes());
                        msg.extend(bytes);
                    }
                    Some(Err(e)) => {
                        msg.push(2);
                        msg.extend(format!("{e}").as_bytes());
                    }
                }
            }
            let msg = self.mpi.broadcast_bytes(&msg);
            match msg.first() {
                Some(0) => Ok(None),
                Some(1) if msg.len() >= 9 => {
                    let mut len = [0u8; 8];
                    len.copy_from_slice(&msg[1..9]);
                    let len = (u64::from_le_bytes(len) as usize).min(msg.len() - 9);
                    let file = std::path::PathBuf::from(String::from_utf8_lossy(&msg[9..9 + len]).into_owned());
                    let ck = checkpoint::parse(&file, &msg[9 + len..]).map_err(super::super::flagged)?;
                    Ok(Some(ck))
                }
                Some(2) => anyhow::bail!("--resume: rank 0: {}", String::from_utf8_lossy(&msg[1..])),
                _ => anyhow::bail!("--resume: rank 0 sent no checkpoint"),
            }
        }

        /// Refuse to start unless every rank describes the run as rank 0.
        pub(crate) fn check_same(&self, fields: &BTreeMap<String, String>) -> Result<()> {
            Ok(self.mpi.check_same(fields)?)
        }

        /// The backend that trains `replica` in step with the other ranks,
        /// stopping when `stop` is set on any rank; and the flag the loop
        /// watches, set on every rank after the same step.
        pub(crate) fn backend(
            &self,
            replica: Box<dyn Replica>,
            stop: Arc<AtomicBool>,
        ) -> Result<(Box<dyn Backend + '_>, Arc<AtomicBool>)> {
            let mut d = Distributed::new(&self.mpi, replica).context("--distributed")?;
            d.stop_on(stop);
            let agreed = d.stop_flag();
            Ok((Box::new(d), agreed))
        }

        /// An error one rank met alone during the run: the others may wait
        /// for it in a collective call, so log it and end the whole job.
        pub(crate) fn fail(&self, e: anyhow::Error) -> anyhow::Error {
            if self.size() < 2 {
                return e;
            }
            log::error!("rank {} of {}: {e:#}", self.rank(), self.size());
            self.mpi.abort(1)
        }
    }
}
