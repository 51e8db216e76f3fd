//! Data-parallel step costs (`wgtrain bench --parallel`): time per step
//! split into the phases of [`Replicated`] (gradients, host sum, update),
//! the host transfers inside them, and the bytes moved per step, for one
//! replica and for N.

use std::time::Instant;

use serde::Serialize;

use crate::backend::{steps_per_epoch, Backend, Replica};
use crate::data::epoch_permutation;
use crate::error::Result;
use crate::optim::StepHyper;
use crate::parallel::Replicated;

/// One configuration's figures, per step (means over the timed steps).
#[derive(Debug, Clone, Serialize)]
pub struct ParallelTiming {
    /// The benchmark's name in reports: `"parallel"`.
    pub bench: &'static str,
    /// The replicas' devices, as [`Replicated`] names them.
    pub device: String,
    /// Replicas trained as one.
    pub replicas: usize,
    /// The global batch: examples per step over all replicas.
    pub batch: usize,
    /// Steps timed (after the warm-up).
    pub steps_timed: u64,
    /// Wall time of a step, milliseconds.
    pub step_ms: f64,
    /// Compute: the gradient and update phases less replica 0's transfers.
    pub compute_ms: f64,
    /// The update phase on replica 0 (within `compute_ms`, transfers
    /// included; the sum of the packed gradients too when the replicas add
    /// them inside the update).
    pub update_ms: f64,
    /// Replica 0's host transfers (GPU readback and upload; 0 on the CPU).
    pub transfer_ms: f64,
    /// The host sum of the packed gradients.
    pub reduce_ms: f64,
    /// Bytes that cross a bus per step: the packed gradient down and the sum
    /// up, for each replica not in host memory.
    pub bus_bytes: u64,
    /// Bytes the host sum reads per step (every replica's packed gradient).
    pub reduce_bytes: u64,
    /// Training examples per second over the timed steps (wall clock).
    pub examples_per_s: f64,
}

/// Time `steps` steps (after `warmup`) of `replicas` trained as one
/// [`Replicated`] at `lr`, on a training set of `n_train` examples.
/// `on_bus` counts the replicas whose gradients cross a bus (GPUs).
pub fn bench_parallel(
    replicas: Vec<Box<dyn Replica>>,
    weights: Vec<f64>,
    on_bus: usize,
    n_train: usize,
    warmup: usize,
    steps: usize,
    lr: f32,
) -> Result<ParallelTiming> {
    let n = replicas.len();
    let mut r = Replicated::with_weights(replicas, weights)?;
    let batch = r.batch_size();
    let per_epoch = steps_per_epoch(n_train, batch);
    let run = |r: &mut Replicated, count: usize, epoch0: usize| -> Result<()> {
        let mut done = 0;
        let mut epoch = epoch0;
        while done < count {
            let now = (count - done).min(per_epoch);
            r.begin_epoch(&epoch_permutation(n_train, 0, epoch))?;
            r.train_steps(0, &StepHyper::constant(lr, now))?;
            r.take_stats()?;
            done += now;
            epoch += 1;
        }
        Ok(())
    };
    run(&mut r, warmup.max(1), 0)?;
    r.take_times();
    let t0 = Instant::now();
    run(&mut r, steps.max(1), 1000)?;
    let wall = t0.elapsed().as_secs_f64();
    let t = r.take_times();
    let per = |s: f64| s * 1e3 / t.steps.max(1) as f64;
    let len = r.gradient_len() as u64;
    Ok(ParallelTiming {
        bench: "parallel",
        device: r.name(),
        replicas: n,
        batch,
        steps_timed: t.steps,
        step_ms: wall * 1e3 / t.steps.max(1) as f64,
        compute_ms: per(t.gradients + t.apply - t.transfer),
        update_ms: per(t.apply),
        transfer_ms: per(t.transfer),
        reduce_ms: per(t.reduce),
        bus_bytes: 2 * 4 * len * on_bus as u64,
        reduce_bytes: 4 * len * n as u64,
        examples_per_s: (t.steps as f64 * batch as f64) / wall,
    })
}
