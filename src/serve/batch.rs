//! The job queue and the two batchers: a thread that gathers micro-batches
//! from a bounded queue, or (inline) a task on the HTTP runtime that runs
//! each batch between requests.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Metrics;
use crate::infer::Predictor;

/// One request's rows on their way to the inference thread.
pub(super) struct Job {
    pub(super) features: Vec<f32>,
    pub(super) rows: usize,
    pub(super) enqueued: Instant,
    pub(super) reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

/// The sending end of the job queue: to the inference thread, or to the
/// inline batch task.
#[derive(Clone)]
pub(super) enum JobQueue {
    Thread(SyncSender<Job>),
    Inline(tokio::sync::mpsc::Sender<Job>),
}

/// Why a job was not queued.
pub(super) enum QueueRefusal {
    Full,
    Closed,
}

impl JobQueue {
    pub(super) fn try_send(&self, job: Job) -> Result<(), QueueRefusal> {
        match self {
            JobQueue::Thread(q) => q.try_send(job).map_err(|e| match e {
                TrySendError::Full(_) => QueueRefusal::Full,
                TrySendError::Disconnected(_) => QueueRefusal::Closed,
            }),
            JobQueue::Inline(q) => q.try_send(job).map_err(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => QueueRefusal::Full,
                tokio::sync::mpsc::error::TrySendError::Closed(_) => QueueRefusal::Closed,
            }),
        }
    }
}

/// How [`batch_loop`] gathers batches (see [`ServeConfig`]).
#[derive(Clone, Copy)]
pub(super) struct BatchLimits {
    pub(super) max_batch: usize,
    pub(super) max_wait: Duration,
    pub(super) idle_spin: Duration,
}

/// The next job: polled for up to `spin`, then waited for. `None` when the
/// queue has closed.
fn next_job(rx: &Receiver<Job>, spin: Duration) -> Option<Job> {
    if !spin.is_zero() {
        let t0 = Instant::now();
        let mut polls = 0u32;
        loop {
            match rx.try_recv() {
                Ok(j) => return Some(j),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(32) && t0.elapsed() >= spin {
                break;
            }
            std::hint::spin_loop();
        }
    }
    rx.recv().ok()
}

/// The inference thread: gather jobs into batches and run them until the
/// queue closes.
pub(super) fn batch_loop(predictor: Box<dyn Predictor>, rx: Receiver<Job>, limits: BatchLimits, metrics: &Metrics) {
    let BatchLimits {
        max_batch,
        max_wait,
        idle_spin,
    } = limits;
    let mut batch = Batch::new(predictor, max_batch);
    let mut held: Option<Job> = None;
    let take = |j: Job| {
        metrics.queue_add(-1);
        j
    };
    // Rows of the previous batch: a nearly full one means requests arrive
    // faster than batches run, and waiting for more pays off.
    let mut last_rows = 0;
    loop {
        let first = match held.take() {
            Some(j) => j,
            None => match next_job(&rx, idle_spin) {
                Some(j) => take(j),
                None => return,
            },
        };
        let deadline = first.enqueued + max_wait;
        let saturated = 2 * last_rows >= max_batch;
        let mut rows = first.rows;
        batch.jobs.push(first);
        while rows < max_batch {
            let next = match rx.try_recv() {
                Ok(j) => take(j),
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    // Nothing queued: run now unless the server is
                    // saturated, and then wait only while requests keep
                    // coming (each at most a quarter of `max_wait` apart).
                    let now = Instant::now();
                    if !saturated || now >= deadline {
                        break;
                    }
                    match rx.recv_timeout((deadline - now).min(max_wait / 4)) {
                        Ok(j) => take(j),
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            if rows + next.rows > max_batch {
                held = Some(next);
                break;
            }
            rows += next.rows;
            batch.jobs.push(next);
        }
        last_rows = rows;
        batch.run(metrics);
    }
}

/// The predictor and the jobs of the batch being gathered, with scratch
/// space for their rows, shared by both batchers.
struct Batch {
    predictor: Box<dyn Predictor>,
    jobs: Vec<Job>,
    features: Vec<f32>,
    out: Vec<f32>,
}

impl Batch {
    fn new(predictor: Box<dyn Predictor>, max_batch: usize) -> Self {
        Batch {
            features: Vec::with_capacity(max_batch * predictor.inputs()),
            out: Vec::with_capacity(max_batch * predictor.classes()),
            jobs: Vec::with_capacity(max_batch),
            predictor,
        }
    }

    /// Run the gathered jobs in one forward pass and answer each with its
    /// rows; leaves no jobs.
    fn run(&mut self, metrics: &Metrics) {
        let classes = self.predictor.classes();
        // Clients that went away need no answer.
        self.jobs.retain(|j| !j.reply.is_closed());
        let rows: usize = self.jobs.iter().map(|j| j.rows).sum();
        if rows == 0 {
            return;
        }
        self.features.clear();
        for j in &self.jobs {
            self.features.extend_from_slice(&j.features);
        }
        self.out.resize(rows * classes, 0.0);
        let result = self.predictor.probabilities_into(&self.features, &mut self.out);
        metrics.batch(rows);
        let mut at = 0;
        for j in self.jobs.drain(..) {
            let answer = match &result {
                Ok(()) => Ok(self.out[at * classes..(at + j.rows) * classes].to_vec()),
                Err(e) => Err(e.to_string()),
            };
            at += j.rows;
            // A client that left meanwhile drops its receiver; nothing to do.
            let _ = j.reply.send(answer);
        }
    }
}

/// The inline batcher (see [`ServeConfig::inline`]): a task that takes the
/// oldest job, adds whatever else is queued up to `max_batch` rows, runs
/// the batch on the runtime's thread and answers, until the queue closes.
pub(super) async fn batch_task(
    predictor: Box<dyn Predictor>,
    mut rx: tokio::sync::mpsc::Receiver<Job>,
    max_batch: usize,
    metrics: Arc<Metrics>,
) {
    let mut batch = Batch::new(predictor, max_batch);
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        metrics.queue_add(-1);
        let mut rows = first.rows;
        batch.jobs.push(first);
        while rows < max_batch {
            let Ok(next) = rx.try_recv() else { break };
            if rows + next.rows > max_batch {
                held = Some(next);
                break;
            }
            metrics.queue_add(-1);
            rows += next.rows;
            batch.jobs.push(next);
        }
        batch.run(&metrics);
        // Let the connections answer and read more requests before the
        // next batch.
        tokio::task::yield_now().await;
    }
}
