//! Training over several processes and machines through MPI (the cargo
//! feature `mpi`): one process per device, started by `mpirun`.
//!
//! [`Mpi`] is the job: MPI itself (initialised once, finalised when it is
//! dropped), this process's rank, and a watchdog that ends the whole job
//! when a collective call waits longer than its timeout (a rank died or
//! hangs). [`Distributed`] is a [`Backend`] around one local [`Replica`]:
//! each global batch is split into contiguous, equal shards, one per rank
//! ([`shard_rows`]); each rank computes its shard's gradient, one
//! `MPI_Allreduce` (sum) of the packed gradient per step gives every rank
//! the whole batch's gradient, and every rank applies the same update, so
//! the parameters stay identical on every rank.
//!
//! Every rank runs the same training loop. The only collective calls are
//! in [`Backend::train_steps`] (one all-reduce per step, which also carries
//! the stop request of a signal), [`Backend::take_stats`] (one all-reduce of
//! the figures) and [`Backend::predict_split`] (rank 0 evaluates and
//! broadcasts its predictions, so every rank takes the same decisions:
//! best epoch, early stopping). The loop calls them at the same points on
//! every rank; everything else (the parameters, the state, checkpoints on
//! rank 0) is local.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;

use crate::backend::{check_steps, steps_per_epoch, Backend, BackendState, Predictions, Replica, SplitKind, StepStats};
use crate::error::{Error, Result};
use crate::model::Mlp;
use crate::optim::{Constraint, StepHyper};

/// The exit status of a process the watchdog ends.
pub const WATCHDOG_EXIT: i32 = 3;

/// Bytes per broadcast message (MPI counts are 32-bit).
const CHUNK: usize = 1 << 30;

/// The MPI job this process belongs to.
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    watchdog: Arc<Watchdog>,
    // Declared last: dropped (MPI_Finalize) after everything else.
    _universe: Universe,
}

impl Mpi {
    /// Initialise MPI (once per process). `timeout`: the longest a
    /// collective call may wait for the other ranks before the watchdog
    /// ends the job (`None`: no watchdog).
    pub fn init(timeout: Option<Duration>) -> Result<Mpi> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| Error::Distributed("MPI is already initialised in this process".into()))?;
        let world = universe.world();
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        // The ranks on this machine, for the choice of a GPU.
        let local = world.split_shared(rank as i32);
        let (local_rank, local_size) = (local.rank() as usize, local.size() as usize);
        let watchdog = Arc::new(Watchdog {
            rank,
            size,
            timeout,
            origin: Instant::now(),
            since_ms: AtomicU64::new(IDLE),
            what: Mutex::new(""),
            done: AtomicBool::new(false),
            // MPI_Abort from the watchdog's thread while the main thread is
            // inside a collective needs MPI_THREAD_MULTIPLE.
            can_abort: threading == Threading::Multiple,
        });
        if timeout.is_some() {
            let w = watchdog.clone();
            std::thread::Builder::new()
                .name("mpi-watchdog".into())
                .spawn(move || w.watch())
                .map_err(|e| Error::Distributed(format!("cannot start the watchdog thread: {e}")))?;
        }
        Ok(Mpi {
            world,
            rank,
            size,
            local_rank,
            local_size,
            watchdog,
            _universe: universe,
        })
    }

    /// This process's rank, from 0.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This process's rank among those on the same machine.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The number of ranks on this machine.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Whether this is rank 0, the one that logs and writes files.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// End every process of the job at once (MPI_Abort) with `code`.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    /// Rank 0's `bytes` on every rank (the argument is ignored elsewhere).
    pub fn broadcast_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        let root = self.world.process_at_rank(0);
        let _w = self.watchdog.enter("a broadcast from rank 0");
        let mut len = [bytes.len() as u64];
        root.broadcast_into(&mut len[..]);
        let mut out = if self.is_root() {
            bytes.to_vec()
        } else {
            vec![0u8; len[0] as usize]
        };
        for chunk in out.chunks_mut(CHUNK) {
            root.broadcast_into(chunk);
        }
        out
    }

    /// Refuse to start unless every rank describes its run (`fields`: the
    /// data, the settings, the model shape...) as rank 0 does. On a
    /// difference every rank returns [`Error::Distributed`]: a rank that
    /// differs names itself and each field with rank 0's value and its own;
    /// rank 0 lists every rank's differences.
    pub fn check_same(&self, fields: &BTreeMap<String, String>) -> Result<()> {
        let mine = serde_json::to_vec(fields).map_err(|e| Error::Distributed(e.to_string()))?;
        let root_bytes = self.broadcast_bytes(&mine);
        let root: BTreeMap<String, String> = serde_json::from_slice(&root_bytes)
            .map_err(|e| Error::Distributed(format!("rank 0's description does not parse: {e}")))?;
        let diff = describe_differences(self.rank, &root, fields);
        let mut bad = vec![0u8; self.size];
        {
            let _w = self.watchdog.enter("the consistency check");
            self.world
                .all_gather_into(&[u8::from(diff.is_some())][..], &mut bad[..]);
        }
        let differing: Vec<usize> = (0..self.size).filter(|&r| bad[r] != 0).collect();
        if differing.is_empty() {
            return Ok(());
        }
        // Rank 0 collects the differences to list them all.
        let _w = self.watchdog.enter("the consistency check");
        if self.is_root() {
            let mut all = Vec::new();
            for &r in &differing {
                let (msg, _) = self.world.process_at_rank(r as i32).receive_vec::<u8>();
                all.push(String::from_utf8_lossy(&msg).into_owned());
            }
            Err(Error::Distributed(format!(
                "refused to start: {} of {} ranks differ from rank 0: {}",
                differing.len(),
                self.size,
                all.join("; ")
            )))
        } else if let Some(d) = diff {
            self.world.process_at_rank(0).send(d.as_bytes());
            Err(Error::Distributed(format!("refused to start: {d}")))
        } else {
            Err(Error::Distributed(format!(
                "refused to start: rank {} differs from rank 0 (rank 0 lists the differences)",
                list_ranks(&differing)
            )))
        }
    }
}

impl Drop for Mpi {
    fn drop(&mut self) {
        self.watchdog.done.store(true, Ordering::SeqCst);
    }
}

/// The differences between rank 0's description and this rank's, in
/// words, or `None` when there are none.
pub fn describe_differences(
    rank: usize,
    root: &BTreeMap<String, String>,
    mine: &BTreeMap<String, String>,
) -> Option<String> {
    let none = "(none)".to_string();
    let keys: std::collections::BTreeSet<&String> = root.keys().chain(mine.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter_map(|k| {
            let (r, m) = (root.get(k).unwrap_or(&none), mine.get(k).unwrap_or(&none));
            (r != m).then(|| format!("{k}: rank 0 has {r}, rank {rank} has {m}"))
        })
        .collect();
    (!diffs.is_empty()).then(|| format!("rank {rank} differs from rank 0 in {}", diffs.join(", ")))
}

fn list_ranks(ranks: &[usize]) -> String {
    ranks.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
}

/// Rows `start..end` of a batch of `rows` rows that part `part` of `parts`
/// takes: contiguous, in order, sizes differing by at most one.
pub fn shard_rows(part: usize, parts: usize, rows: usize) -> Range<usize> {
    rows * part / parts..rows * (part + 1) / parts
}

/// `since_ms` when no collective call is under way.
const IDLE: u64 = u64::MAX;

/// Ends the job when a collective call has waited past the timeout.
struct Watchdog {
    rank: usize,
    size: usize,
    timeout: Option<Duration>,
    origin: Instant,
    /// When the collective under way started (ms since `origin`), or IDLE.
    since_ms: AtomicU64,
    what: Mutex<&'static str>,
    done: AtomicBool,
    can_abort: bool,
}

/// Marks a collective call for the watchdog while it lives.
struct Watched<'a>(&'a Watchdog);

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.0.since_ms.store(IDLE, Ordering::SeqCst);
    }
}

impl Watchdog {
    fn enter(&self, what: &'static str) -> Watched<'_> {
        if self.timeout.is_some() {
            if let Ok(mut w) = self.what.lock() {
                *w = what;
            }
            let now = self.origin.elapsed().as_millis() as u64;
            self.since_ms.store(now, Ordering::SeqCst);
        }
        Watched(self)
    }

    fn watch(&self) {
        let Some(timeout) = self.timeout else { return };
        let poll = (timeout / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
        while !self.done.load(Ordering::SeqCst) {
            std::thread::sleep(poll);
            let since = self.since_ms.load(Ordering::SeqCst);
            if since == IDLE {
                continue;
            }
            let waited = Duration::from_millis((self.origin.elapsed().as_millis() as u64).saturating_sub(since));
            if waited < timeout || self.done.load(Ordering::SeqCst) {
                continue;
            }
            let what = self.what.lock().map(|w| *w).unwrap_or("a collective call");
            log::error!(
                "rank {} of {}: {what} has waited {:.0} s for the other ranks (the timeout is {:.0} s): \
                 a rank died or stopped answering; ending the job",
                self.rank,
                self.size,
                waited.as_secs_f64(),
                timeout.as_secs_f64()
            );
            // Should MPI_Abort itself hang (no route to mpirun), exit anyway.
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_secs(10));
                std::process::exit(WATCHDOG_EXIT);
            });
            if self.can_abort {
                SimpleCommunicator::world().abort(WATCHDOG_EXIT);
            }
            std::process::exit(WATCHDOG_EXIT);
        }
    }
}

/// Where a distributed run's step time goes, summed over the steps since
/// the backend was built.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTiming {
    /// Steps timed.
    pub steps: u64,
    /// Computing this rank's shard gradient (its host transfer included).
    pub compute: Duration,
    /// Waiting in the gradient all-reduce (the other ranks' compute
    /// included when they are slower).
    pub all_reduce: Duration,
    /// Applying the summed gradient (a GPU's upload included).
    pub update: Duration,
    /// The replica's host transfers within `compute` and `update` (a GPU's
    /// readback of its shard gradient and upload of the sum; 0 on the CPU).
    pub transfer: Duration,
    /// Bytes of the packed buffer each step all-reduces.
    pub buffer_bytes: u64,
}

impl StepTiming {
    /// Bytes each rank sends (and receives) per step in a ring all-reduce
    /// of the buffer over `ranks` ranks: `2 (N - 1) / N` times the buffer.
    pub fn ring_bytes(&self, ranks: usize) -> u64 {
        if ranks < 2 {
            return 0;
        }
        self.buffer_bytes * 2 * (ranks as u64 - 1) / ranks as u64
    }
}

/// A [`Backend`] that trains one replica in step with the same replica on
/// every other rank of the job.
pub struct Distributed<'a> {
    mpi: &'a Mpi,
    replica: Box<dyn Replica>,
    /// Training examples of the epoch (the order's length).
    examples: usize,
    send: Vec<f32>,
    recv: Vec<f32>,
    /// Set by this process's signal handler.
    local_stop: Option<Arc<AtomicBool>>,
    /// Set when any rank asked to stop, at the same step on every rank.
    agreed_stop: Arc<AtomicBool>,
    timing: StepTiming,
}

impl<'a> Distributed<'a> {
    /// Train `replica` (built with the global batch as its batch size) as
    /// rank `mpi.rank()` of the job.
    pub fn new(mpi: &'a Mpi, replica: Box<dyn Replica>) -> Result<Self> {
        let len = replica.gradient_len() + 1;
        if len > i32::MAX as usize {
            return Err(Error::Distributed(format!(
                "the packed gradient of {} floats is more than one MPI message holds",
                len - 1
            )));
        }
        Ok(Distributed {
            mpi,
            replica,
            examples: 0,
            send: vec![0.0; len],
            recv: vec![0.0; len],
            local_stop: None,
            agreed_stop: Arc::new(AtomicBool::new(false)),
            timing: StepTiming {
                buffer_bytes: (len * 4) as u64,
                ..StepTiming::default()
            },
        })
    }

    /// Stop when `flag` (set by a signal handler) is set on any rank: the
    /// request travels with the next step's all-reduce, and every rank sees
    /// it in [`Distributed::stop_flag`] after the same step.
    pub fn stop_on(&mut self, flag: Arc<AtomicBool>) {
        self.local_stop = Some(flag);
    }

    /// The flag the training loop watches: set on every rank at once.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.agreed_stop.clone()
    }

    /// Where the step time went so far.
    pub fn timing(&self) -> StepTiming {
        self.timing
    }

    fn batch_rows(&self, index: usize) -> usize {
        let b = self.replica.batch_size();
        b.min(self.examples.saturating_sub(index * b))
    }
}

impl Backend for Distributed<'_> {
    fn name(&self) -> String {
        format!(
            "{}, rank {} of {}",
            self.replica.name(),
            self.mpi.rank(),
            self.mpi.size()
        )
    }

    fn batch_size(&self) -> usize {
        self.replica.batch_size()
    }

    fn memory(&self) -> crate::resources::Need {
        let mut need = self.replica.memory();
        need.what = format!("{}, rank {} of {}", need.what, self.mpi.rank(), self.mpi.size());
        need
    }

    fn begin_epoch(&mut self, order: &[u32]) -> Result<()> {
        self.replica.begin_epoch(order)?;
        self.examples = order.len();
        Ok(())
    }

    fn train_steps(&mut self, first: usize, hyper: &[StepHyper]) -> Result<()> {
        check_steps(
            first,
            hyper.len(),
            steps_per_epoch(self.examples, self.replica.batch_size()),
        )?;
        let g = self.send.len() - 1;
        for (k, h) in hyper.iter().enumerate() {
            let index = first + k;
            let rows = shard_rows(self.mpi.rank(), self.mpi.size(), self.batch_rows(index));
            let t0 = Instant::now();
            self.replica.shard_gradients(index, rows, &mut self.send[..g])?;
            let stop = self.local_stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
            self.send[g] = if stop { 1.0 } else { 0.0 };
            let t1 = Instant::now();
            {
                let _w = self.mpi.watchdog.enter("the gradient all-reduce");
                self.mpi
                    .world
                    .all_reduce_into(&self.send[..], &mut self.recv[..], SystemOperation::sum());
            }
            let t2 = Instant::now();
            if self.recv[g] > 0.0 {
                self.agreed_stop.store(true, Ordering::SeqCst);
            }
            self.replica.apply_gradients(&self.recv[..g], h)?;
            self.timing.steps += 1;
            self.timing.compute += t1 - t0;
            self.timing.all_reduce += t2 - t1;
            self.timing.update += t2.elapsed();
            self.timing.transfer += Duration::from_secs_f64(self.replica.take_transfer_seconds());
        }
        Ok(())
    }

    fn take_stats(&mut self) -> Result<StepStats> {
        let local = self.replica.take_stats()?;
        let mine = [local.loss_sum, local.correct as f64, local.examples as f64];
        let mut all = [0.0f64; 3];
        {
            let _w = self.mpi.watchdog.enter("the all-reduce of the training figures");
            self.mpi
                .world
                .all_reduce_into(&mine[..], &mut all[..], SystemOperation::sum());
        }
        Ok(StepStats {
            loss_sum: all[0],
            correct: all[1] as u64,
            examples: all[2] as u64,
            steps: local.steps,
        })
    }

    /// Rank 0 evaluates; every rank gets its predictions.
    fn predict_split(&mut self, split: SplitKind) -> Result<Predictions> {
        let root = self.mpi.world.process_at_rank(0);
        let mut p = if self.mpi.is_root() {
            self.replica.predict_split(split)?
        } else {
            Predictions {
                loss_sum: 0.0,
                classes: Vec::new(),
            }
        };
        let _w = self.mpi.watchdog.enter("the broadcast of rank 0's evaluation");
        let mut head = [p.loss_sum, p.classes.len() as f64];
        root.broadcast_into(&mut head[..]);
        if !self.mpi.is_root() {
            p.loss_sum = head[0];
            p.classes = vec![0; head[1] as usize];
        }
        for chunk in p.classes.chunks_mut(CHUNK / 4) {
            root.broadcast_into(chunk);
        }
        Ok(p)
    }

    fn model(&mut self) -> Result<Mlp> {
        self.replica.model()
    }

    fn set_constraint(&mut self, constraint: Option<&Constraint>) -> Result<()> {
        self.replica.set_constraint(constraint)
    }

    fn state(&mut self) -> Result<BackendState> {
        self.replica.state()
    }

    fn restore(&mut self, state: &BackendState) -> Result<()> {
        self.replica.restore(state)
    }

    fn is_primary(&self) -> bool {
        self.mpi.is_root()
    }
}

impl Drop for Distributed<'_> {
    /// Rank 0 logs where the step time went.
    fn drop(&mut self) {
        let t = self.timing;
        if !self.mpi.is_root() || t.steps == 0 {
            return;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / t.steps as f64;
        log::info!(
            "per step on rank 0 of {} ({} steps): compute {:.3} ms, all-reduce {:.3} ms, update {:.3} ms \
             (host transfers {:.3} ms of those); {} bytes all-reduced ({} sent per rank in a ring)",
            self.mpi.size(),
            t.steps,
            ms(t.compute),
            ms(t.all_reduce),
            ms(t.update),
            ms(t.transfer),
            t.buffer_bytes,
            t.ring_bytes(self.mpi.size())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order() {
        for rows in [0, 1, 2, 7, 33, 64, 65] {
            for parts in 1..6 {
                let shards: Vec<_> = (0..parts).map(|p| shard_rows(p, parts, rows)).collect();
                assert_eq!(shards[0].start, 0);
                assert_eq!(shards[parts - 1].end, rows);
                for w in shards.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let (lo, hi) = (rows / parts, rows.div_ceil(parts));
                assert!(shards.iter().all(|s| s.len() == lo || s.len() == hi), "{rows} {parts}");
            }
        }
    }

    #[test]
    fn differences_name_the_rank_the_field_and_both_values() {
        let root: BTreeMap<String, String> = [("data", "a.csv (hash 1)"), ("batch", "64")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(describe_differences(3, &root, &root), None);
        let mut mine = root.clone();
        mine.insert("data".into(), "b.csv (hash 2)".into());
        mine.insert("extra".into(), "1".into());
        let d = describe_differences(3, &root, &mine).unwrap();
        assert!(d.starts_with("rank 3 differs from rank 0"), "{d}");
        assert!(
            d.contains("data: rank 0 has a.csv (hash 1), rank 3 has b.csv (hash 2)"),
            "{d}"
        );
        assert!(d.contains("extra: rank 0 has (none), rank 3 has 1"), "{d}");
        assert!(!d.contains("batch"), "{d}");
    }
}
