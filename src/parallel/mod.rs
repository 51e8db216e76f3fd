//! Data-parallel training in one process: [`Replicated`] runs N
//! [`Replica`]s (CPU or GPU backends, each holding the parameters, the
//! optimizer state and the whole dataset) as one [`Backend`].
//!
//! Each global batch (the epoch's permutation, as one device takes it) is
//! split into contiguous shards, one per replica, sized by the replicas'
//! weights ([`shard_bounds`]). A step is three phases, each ended by a
//! barrier of every replica's thread:
//!
//! 1. every replica computes its shard's gradient, packed into its own
//!    buffer ([`Replica::shard_gradients`]);
//! 2. the packed gradients are summed on the host, each element in the
//!    fixed order replica 0, 1, ..., N-1 (so the sum does not depend on
//!    which thread computes it), the buffer split in contiguous parts over
//!    the threads;
//! 3. every replica applies the same summed gradient
//!    ([`Replica::apply_gradients`]), so the replicas never drift.
//!
//! Replica 0 runs on the calling thread; each other replica on a worker
//! thread of its own, started once with the [`Replicated`] and parked on
//! the barrier between calls. Evaluation, the model and the state come from
//! replica 0; epochs, constraints and restored states go to every replica.
//!
//! `mpi` (the cargo feature `mpi`) runs one replica per process instead,
//! across machines, summing the gradients with MPI's all-reduce.

#[cfg(feature = "mpi")]
pub mod mpi;

use std::cell::UnsafeCell;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

mod barrier;

use crate::backend::{check_steps, steps_per_epoch, Backend, BackendState, Predictions, Replica, SplitKind, StepStats};
use crate::error::{Error, Result, Setting};
use crate::model::Mlp;
use crate::optim::{Constraint, StepHyper};
use barrier::SpinBarrier;

/// Check shard weights: one per replica, each finite and positive.
pub fn check_weights(weights: &[f64], replicas: usize) -> Result<()> {
    if weights.len() != replicas {
        return Err(Error::Config(format!(
            "{} shard weights for {replicas} devices: give one weight per device",
            weights.len()
        )));
    }
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
        return Err(Error::invalid(
            Setting::ShardWeights,
            w,
            "positive numbers, one per device",
        ));
    }
    Ok(())
}

/// The shard boundaries of a batch of `rows` rows over replicas of
/// `weights`: replica `i` takes rows `b[i]..b[i + 1]`, where `b[i]` is
/// `rows` times the weights before `i` over their total, rounded to the
/// nearest row. Contiguous, in replica order, covering the batch; a shard
/// may be empty when the batch has fewer rows than there are replicas.
pub fn shard_bounds(weights: &[f64], rows: usize) -> Vec<usize> {
    let total: f64 = weights.iter().sum();
    let mut bounds = Vec::with_capacity(weights.len() + 1);
    let mut acc = 0.0;
    bounds.push(0);
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        let b = if i + 1 == weights.len() {
            rows
        } else {
            ((rows as f64 * acc / total).round() as usize).min(rows)
        };
        bounds.push(b);
    }
    bounds
}

/// Seconds spent in each phase of the steps since the last
/// [`Replicated::take_times`], as the calling thread sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimes {
    /// Phase 1: until the slowest replica's shard gradient is packed
    /// (for a GPU replica, including its readback).
    pub gradients: f64,
    /// Phase 2: the host sum of the packed gradients.
    pub reduce: f64,
    /// Phase 3 on replica 0: the update (for a GPU replica, including the
    /// upload of the summed gradient).
    pub apply: f64,
    /// Replica 0's host transfers within the phases above
    /// ([`Replica::take_transfer_seconds`]).
    pub transfer: f64,
    /// Steps timed.
    pub steps: u64,
}

/// What the worker threads do next.
#[derive(Clone)]
enum Job {
    Idle,
    Steps {
        first: usize,
        hyper: Vec<StepHyper>,
        /// Rows of the epoch's training set (for the last, partial batch).
        examples: usize,
    },
    Quit,
}

/// The packed gradient buffers, one per replica, and their sum. The phases
/// of a step (separated by the barrier) make access exclusive: in phase 1
/// replica `i` alone writes `bufs[i]`; in phase 2 every thread reads every
/// buffer and writes its own part of `sum`; in phase 3 every thread reads
/// `sum`. Nothing touches them between jobs but the owner of the
/// [`Replicated`] while every worker waits at the barrier. One replica's
/// buffer is its own sum: `sum` is then empty and phase 2 does nothing
/// (with several, `sum` is apart from `bufs[0]` because replica 0 starts
/// the next step's phase 1 while the others may still read phase 3's sum).
struct Grads {
    bufs: Vec<UnsafeCell<Vec<f32>>>,
    sum: UnsafeCell<Vec<f32>>,
}

// SAFETY: every access follows the phase discipline above, enforced by the
// barrier between the phases (which orders the memory accesses too).
unsafe impl Sync for Grads {}

impl Grads {
    /// Replica `i`'s buffer. SAFETY: phase 1, by replica `i`'s thread only.
    #[allow(clippy::mut_from_ref)]
    unsafe fn buf_mut(&self, i: usize) -> &mut [f32] {
        unsafe { &mut *self.bufs[i].get() }
    }

    /// Part `part` of the sum: `sum[part] = bufs[0][part] + ... +
    /// bufs[N-1][part]`, in that order. SAFETY: phase 2, with parts that
    /// do not overlap between threads.
    unsafe fn reduce(&self, part: Range<usize>) {
        if part.is_empty() || self.bufs.len() == 1 {
            return;
        }
        // SAFETY: no thread writes a buffer in phase 2, and this thread alone
        // writes this part of the sum.
        unsafe {
            let sum = (*self.sum.get()).as_mut_ptr().add(part.start);
            let out = std::slice::from_raw_parts_mut(sum, part.len());
            // The first two in one pass (the same sum as copying the first
            // and adding the second), the others added in order.
            let first = &(&*self.bufs[0].get())[part.clone()];
            let second = &(&*self.bufs[1].get())[part.clone()];
            for ((o, &a), &b) in out.iter_mut().zip(first).zip(second) {
                *o = a + b;
            }
            for b in &self.bufs[2..] {
                let b = &(&*b.get())[part.clone()];
                for (o, &v) in out.iter_mut().zip(b) {
                    *o += v;
                }
            }
        }
    }

    /// The sum. SAFETY: phase 3 (every thread reads, none writes).
    unsafe fn sum(&self) -> &[f32] {
        match self.bufs.as_slice() {
            [only] => unsafe { &*only.get() },
            _ => unsafe { &*self.sum.get() },
        }
    }
}

/// What the threads share.
struct Shared {
    replicas: Vec<Mutex<Box<dyn Replica>>>,
    grads: Grads,
    job: Mutex<Job>,
    /// Every replica's thread (the caller's included).
    barrier: SpinBarrier,
    /// Set by a thread whose replica failed; read after a barrier, so every
    /// thread sees the same value and leaves the job at the same step.
    failed: AtomicBool,
    errors: Mutex<Vec<(usize, Error)>>,
    /// Shard weights, one per replica.
    weights: Vec<f64>,
    batch: usize,
}

impl Shared {
    fn replica(&self, i: usize) -> MutexGuard<'_, Box<dyn Replica>> {
        // A poisoned lock means a replica panicked; its state is then what
        // the panic left, and the failure was already reported.
        self.replicas[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, i: usize, e: Error) {
        self.failed.store(true, Ordering::SeqCst);
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).push((i, e));
    }

    /// Run `f` on replica `i`, turning a panic into an error.
    fn guarded(&self, i: usize, rep: &mut Box<dyn Replica>, f: impl FnOnce(&mut Box<dyn Replica>) -> Result<()>) {
        match catch_unwind(AssertUnwindSafe(|| f(rep))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.fail(i, e),
            Err(_) => self.fail(i, Error::Config(format!("replica {i} panicked during a step"))),
        }
    }

    /// Replica `i`'s part of a job's steps; every thread calls this with the
    /// same job and passes the same barriers. Returns the caller's phase
    /// times (meaningful on thread 0).
    fn run_steps(&self, i: usize, first: usize, hyper: &[StepHyper], examples: usize) -> PhaseTimes {
        let n = self.replicas.len();
        let mut rep = self.replica(i);
        let len = self.grads_len();
        let part = {
            let per = len.div_ceil(n);
            (i * per).min(len)..((i + 1) * per).min(len)
        };
        let mut times = PhaseTimes::default();
        for (s, h) in hyper.iter().enumerate() {
            let index = first + s;
            let t0 = Instant::now();
            let rows = self.batch.min(examples - index * self.batch);
            let bounds = shard_bounds(&self.weights, rows);
            // SAFETY: phase 1, this replica's own buffer.
            let buf = unsafe { self.grads.buf_mut(i) };
            self.guarded(i, &mut rep, |r| r.shard_gradients(index, bounds[i]..bounds[i + 1], buf));
            self.barrier.wait();
            if self.failed.load(Ordering::SeqCst) {
                break;
            }
            let t1 = Instant::now();
            // SAFETY: phase 2, disjoint parts.
            unsafe { self.grads.reduce(part.clone()) };
            self.barrier.wait();
            let t2 = Instant::now();
            // SAFETY: phase 3, read only.
            let sum = unsafe { self.grads.sum() };
            self.guarded(i, &mut rep, |r| r.apply_gradients(sum, h));
            let t3 = Instant::now();
            times.gradients += (t1 - t0).as_secs_f64();
            times.reduce += (t2 - t1).as_secs_f64();
            times.apply += (t3 - t2).as_secs_f64();
            times.steps += 1;
        }
        times
    }

    fn grads_len(&self) -> usize {
        // SAFETY: the length of a buffer never changes after construction.
        unsafe { (*self.grads.bufs[0].get()).len() }
    }
}

/// The loop of worker thread `i`: wait at the barrier for a job, run it,
/// meet the others at the barrier that ends it.
fn worker(shared: Arc<Shared>, i: usize) {
    loop {
        shared.barrier.wait();
        let job = shared.job.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match job {
            Job::Quit => return,
            Job::Idle => {}
            Job::Steps { first, hyper, examples } => {
                shared.run_steps(i, first, &hyper, examples);
            }
        }
        shared.barrier.wait();
    }
}

/// N replicas trained as one backend (see the module docs).
pub struct Replicated {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Training examples of the current epoch.
    examples: usize,
    /// Set when a replica failed during a step: the replicas may then differ,
    /// so steps are refused until a [`Backend::restore`].
    poisoned: bool,
    times: PhaseTimes,
}

impl Replicated {
    /// Replicas with equal shards.
    pub fn new(replicas: Vec<Box<dyn Replica>>) -> Result<Self> {
        let n = replicas.len();
        Self::with_weights(replicas, vec![1.0; n])
    }

    /// Replicas whose shards are in proportion to `weights` (one positive
    /// weight per replica). Every replica must train the same model with the
    /// same batch: the parameters of replica 0 are copied to the others
    /// through [`Backend::restore`], so they start identical.
    pub fn with_weights(mut replicas: Vec<Box<dyn Replica>>, weights: Vec<f64>) -> Result<Self> {
        if replicas.is_empty() {
            return Err(Error::Config("data-parallel training needs at least one device".into()));
        }
        check_weights(&weights, replicas.len())?;
        let batch = replicas[0].batch_size();
        let len = replicas[0].gradient_len();
        let start = replicas[0].state()?;
        for (i, r) in replicas.iter_mut().enumerate().skip(1) {
            if r.batch_size() != batch || r.gradient_len() != len {
                return Err(Error::Config(format!(
                    "replica {i} ({}) trains {} parameters at batch {}, replica 0 ({}) {len} at batch {batch}",
                    r.name(),
                    r.gradient_len(),
                    r.batch_size(),
                    replicas[0].name()
                )));
            }
            r.restore(&start)?;
        }
        let n = replicas.len();
        let shared = Arc::new(Shared {
            grads: Grads {
                bufs: (0..n).map(|_| UnsafeCell::new(vec![0.0; len])).collect(),
                sum: UnsafeCell::new(if n > 1 { vec![0.0; len] } else { Vec::new() }),
            },
            replicas: replicas.into_iter().map(Mutex::new).collect(),
            job: Mutex::new(Job::Idle),
            barrier: SpinBarrier::new(n),
            failed: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
            weights,
            batch,
        });
        let mut workers = Vec::with_capacity(n - 1);
        for i in 1..n {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("replica-{i}"))
                .spawn(move || worker(s, i));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    // The started workers wait at the barrier for all n; tell
                    // them to quit through a barrier of the threads that exist.
                    let mut r = Replicated {
                        shared,
                        workers,
                        examples: 0,
                        poisoned: true,
                        times: PhaseTimes::default(),
                    };
                    r.abandon();
                    return Err(Error::Config(format!("cannot start a replica thread: {e}")));
                }
            }
        }
        Ok(Replicated {
            shared,
            workers,
            examples: 0,
            poisoned: false,
            times: PhaseTimes::default(),
        })
    }

    /// Number of replicas.
    pub fn replicas(&self) -> usize {
        self.shared.replicas.len()
    }

    /// Floats moved per replica and direction each step (the packed gradient).
    pub fn gradient_len(&self) -> usize {
        self.shared.grads_len()
    }

    /// The phase times of the steps since the last call.
    pub fn take_times(&mut self) -> PhaseTimes {
        std::mem::take(&mut self.times)
    }

    /// Run `f` on every replica in order, stopping at the first error.
    fn each(&mut self, mut f: impl FnMut(&mut dyn Replica) -> Result<()>) -> Result<()> {
        for i in 0..self.replicas() {
            f(self.shared.replica(i).as_mut())?;
        }
        Ok(())
    }

    /// Stop workers that were started when not all of them could be.
    fn abandon(&mut self) {
        // Workers wait at a barrier sized for every replica, which can never
        // fill: leave them parked; they hold only their Arc.
        self.workers.clear();
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        if self.workers.len() + 1 != self.replicas() {
            return;
        }
        *self.shared.job.lock().unwrap_or_else(|p| p.into_inner()) = Job::Quit;
        self.shared.barrier.wait();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Backend for Replicated {
    fn name(&self) -> String {
        let names: Vec<String> = (0..self.replicas()).map(|i| self.shared.replica(i).name()).collect();
        let n = names.len();
        format!("{n} replica{}: {}", if n == 1 { "" } else { "s" }, names.join(" + "))
    }

    fn batch_size(&self) -> usize {
        self.shared.batch
    }

    fn memory(&self) -> crate::resources::Need {
        let needs: Vec<_> = (0..self.replicas()).map(|i| self.shared.replica(i).memory()).collect();
        let mut need = crate::resources::Need::sum(format!("training on {}", self.name()), &needs);
        if let Some(first) = needs.first() {
            // "training 784-500-10 on ..." of the first replica names the model.
            need.what = match first.what.split_once(" on ") {
                Some((model, _)) => format!("{model} on {}", self.name()),
                None => need.what,
            };
        }
        need
    }

    fn begin_epoch(&mut self, order: &[u32]) -> Result<()> {
        // Every replica holds the same data and checks the order.
        self.each(|r| r.begin_epoch(order))?;
        self.examples = order.len();
        Ok(())
    }

    fn train_steps(&mut self, first: usize, hyper: &[StepHyper]) -> Result<()> {
        if self.poisoned {
            return Err(Error::Config(
                "a replica failed in an earlier step; restore a state before training on".into(),
            ));
        }
        check_steps(first, hyper.len(), steps_per_epoch(self.examples, self.shared.batch))?;
        if hyper.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        *shared.job.lock().unwrap_or_else(|p| p.into_inner()) = Job::Steps {
            first,
            hyper: hyper.to_vec(),
            examples: self.examples,
        };
        shared.barrier.wait();
        let times = shared.run_steps(0, first, hyper, self.examples);
        shared.barrier.wait();
        *shared.job.lock().unwrap_or_else(|p| p.into_inner()) = Job::Idle;
        self.times.gradients += times.gradients;
        self.times.reduce += times.reduce;
        self.times.apply += times.apply;
        self.times.steps += times.steps;
        self.times.transfer += shared.replica(0).take_transfer_seconds();
        if shared.failed.swap(false, Ordering::SeqCst) {
            self.poisoned = true;
            let mut errors = std::mem::take(&mut *shared.errors.lock().unwrap_or_else(|p| p.into_inner()));
            errors.sort_by_key(|(i, _)| *i);
            if let Some((_, e)) = errors.into_iter().next() {
                return Err(e);
            }
        }
        Ok(())
    }

    fn take_stats(&mut self) -> Result<StepStats> {
        let mut total = StepStats::default();
        for i in 0..self.replicas() {
            let s = self.shared.replica(i).take_stats()?;
            total.loss_sum += s.loss_sum;
            total.correct += s.correct;
            total.examples += s.examples;
            // Every replica counts each step: count replica 0's.
            if i == 0 {
                total.steps = s.steps;
            }
        }
        Ok(total)
    }

    fn predict_split(&mut self, split: SplitKind) -> Result<Predictions> {
        self.shared.replica(0).predict_split(split)
    }

    fn model(&mut self) -> Result<Mlp> {
        self.shared.replica(0).model()
    }

    fn set_constraint(&mut self, constraint: Option<&Constraint>) -> Result<()> {
        self.each(|r| r.set_constraint(constraint))
    }

    fn state(&mut self) -> Result<BackendState> {
        self.shared.replica(0).state()
    }

    fn restore(&mut self, state: &BackendState) -> Result<()> {
        self.each(|r| r.restore(state))?;
        self.poisoned = false;
        Ok(())
    }
}
