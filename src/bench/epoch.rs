//! Epoch time of the training loop on any backend (`wgtrain bench
//! --epoch`). The timings synchronise with the device inside the timed
//! region (`take_stats` waits for the GPU).

use std::time::Instant;

use serde::Serialize;

use super::median;
use crate::backend::{steps_per_epoch, Backend};
use crate::data::epoch_permutation;
use crate::error::Result;
use crate::optim::StepHyper;

/// Epoch timings of one backend at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct EpochTiming {
    /// The benchmark's name in reports: `"epoch"`.
    pub bench: &'static str,
    /// The backend's device, in words.
    pub device: String,
    /// Layer widths of the model, inputs first, classes last.
    pub sizes: Vec<usize>,
    /// Weights and biases of the model.
    pub parameters: usize,
    /// Examples per training step.
    pub batch: usize,
    /// Steps in a full epoch.
    pub steps_per_epoch: usize,
    /// Steps actually run per timed epoch (fewer when capped).
    pub steps_timed: usize,
    /// Seconds of the first epoch (warm-up: pipeline creation, first
    /// uploads, caches), scaled to a full epoch when capped.
    pub first_epoch_s: f64,
    /// Median seconds of the later epochs, scaled to a full epoch when capped.
    pub steady_epoch_s: f64,
    /// Examples per second in the steady state.
    pub examples_per_s: f64,
    /// Bytes the backend holds for the run ([`Backend::memory`]).
    pub memory_bytes: u64,
}

/// Weights and biases of an MLP of layer widths `sizes`.
pub fn parameter_count(sizes: &[usize]) -> usize {
    sizes.windows(2).map(|w| w[1] * (w[0] + 1)).sum()
}

/// Time `epochs` epochs (at least 2: the first is reported apart) of SGD at
/// `lr` on `backend`, which trains a model of layer widths `sizes`. With
/// `max_steps`, each epoch runs at most that many steps and the time is
/// scaled to a full epoch.
pub fn epoch_time(
    backend: &mut dyn Backend,
    sizes: &[usize],
    n_train: usize,
    epochs: usize,
    max_steps: Option<usize>,
    lr: f32,
) -> Result<EpochTiming> {
    let batch = backend.batch_size();
    let full = steps_per_epoch(n_train, batch);
    let steps = max_steps.map_or(full, |m| m.clamp(1, full));
    let scale = full as f64 / steps as f64;
    let mut times = Vec::new();
    for epoch in 0..epochs.max(2) {
        let order = epoch_permutation(n_train, 0, epoch);
        let t0 = Instant::now();
        backend.begin_epoch(&order)?;
        backend.train_steps(0, &StepHyper::constant(lr, steps))?;
        backend.take_stats()?;
        times.push(t0.elapsed().as_secs_f64() * scale);
    }
    let first = times[0];
    let steady = median(&mut times[1..].to_vec());
    Ok(EpochTiming {
        bench: "epoch",
        device: backend.name(),
        sizes: sizes.to_vec(),
        parameters: parameter_count(sizes),
        batch,
        steps_per_epoch: full,
        steps_timed: steps,
        first_epoch_s: first,
        steady_epoch_s: steady,
        examples_per_s: n_train as f64 / steady,
        memory_bytes: backend.memory().total(),
    })
}
