//! Per-kernel GPU time of training steps, from timestamp queries.
//!
//! [`kernel_times`] builds a [`GpuBackend`] for the given layer sizes and
//! batch on synthetic byte-valued data (as a resident u8 dataset such as
//! Fashion-MNIST is read), records `steps` training steps with every
//! dispatch in its own compute pass, timestamps written at the beginning
//! and end of each pass, and reports the time per kernel of the step
//! (`fc1 linear_forward`, `fc2 linear_softmax_xent` (the last layer with
//! the loss), `fc2 backprop_input`, ...).
//!
//! Pass-level timestamps (`Features::TIMESTAMP_QUERY`) are used rather than
//! timestamps between dispatches inside one pass, which need the rarer
//! `TIMESTAMP_QUERY_INSIDE_PASSES`; a pass per dispatch adds the pass
//! boundary's synchronisation to each kernel, which the training loop (one
//! pass for many steps) does not have, so the figures are each kernel's
//! time with its inputs ready, not a breakdown of the epoch time.

use std::sync::Arc;

use serde::Serialize;

use super::context::GpuContext;
use super::trainer::GpuBackend;
use crate::backend::{Backend, TrainSpec};
use crate::data::{Dataset, Normalize, Preprocess, Split};
use crate::error::{Error, GpuError};
use crate::model::Mlp;
use crate::optim::StepHyper;

/// Time of one kernel of the training step, over every step timed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelTime {
    /// The dispatch's name within the step, e.g. `fc1 weight_update`.
    pub name: String,
    /// Dispatches timed (one per step).
    pub calls: usize,
    /// GPU time of every timed dispatch together, µs.
    pub total_us: f64,
    /// GPU time of one dispatch on average, µs.
    pub mean_us: f64,
}

/// Most queries a query set may hold (`wgpu::QUERY_SET_MAX_QUERIES`).
const MAX_QUERIES: usize = wgpu::QUERY_SET_MAX_QUERIES as usize;

fn gpu_error(e: Error) -> GpuError {
    match e {
        Error::Gpu(g) => g,
        other => GpuError::InvalidArgument(other.to_string()),
    }
}

/// Per-kernel GPU time of `steps` training steps of an MLP of layer widths
/// `sizes` (inputs first) at batch `batch`, in the order the step runs
/// them, after one untimed warm-up step; `None` when the device cannot
/// write timestamps. Steps are capped so that two timestamps per dispatch
/// of a step of at most 3 dispatches a layer fit one query set (341 steps
/// of a two-layer network).
pub fn kernel_times(
    ctx: &Arc<GpuContext>,
    sizes: &[usize],
    batch: usize,
    steps: usize,
) -> Result<Option<Vec<KernelTime>>, GpuError> {
    if !ctx.supports_timestamps() {
        return Ok(None);
    }
    if sizes.len() < 2 || sizes.contains(&0) || batch == 0 {
        return Err(GpuError::InvalidArgument(format!(
            "timing needs layer sizes of at least two non-zero widths and a batch of at least 1 (got {sizes:?}, batch {batch})"
        )));
    }
    // At most: linear_forward, backprop_input and weight_update a layer
    // (the fused loss makes it one fewer).
    let dispatches = 3 * (sizes.len() - 1);
    let steps = steps.clamp(1, MAX_QUERIES / (2 * dispatches));
    let (dim, classes) = (sizes[0], sizes[sizes.len() - 1]);
    let preprocess = Preprocess {
        kind: Normalize::Scale,
        scale: 1.0 / 255.0,
        offset: 0.0,
    };
    let model = Mlp::new(sizes, 1, preprocess, vec![dim]).map_err(|e| GpuError::InvalidArgument(e.to_string()))?;
    // One epoch of exactly `steps` full batches, plus the warm-up step's.
    let n = batch * (steps + 1);
    let mut state = 0x9e37_79b9u32;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let features: Vec<f32> = (0..n * dim).map(|_| (next() % 256) as f32).collect();
    let labels: Vec<u32> = (0..n).map(|_| next() % classes as u32).collect();
    let split = Split { features, labels };
    let data = Arc::new(Dataset {
        source: "timing (synthetic)".into(),
        shape: vec![dim],
        classes,
        value_max: 255.0,
        train: split.clone(),
        validation: Split::default(),
        test: Split {
            features: split.features[..dim].to_vec(),
            labels: split.labels[..1].to_vec(),
        },
    });
    let mut backend = GpuBackend::new(ctx.clone(), model, data, TrainSpec::sgd(batch)).map_err(gpu_error)?;
    let order: Vec<u32> = (0..n as u32).collect();
    backend.begin_epoch(&order).map_err(gpu_error)?;
    // Warm-up: first-use costs (pipeline compilation, memory residency).
    backend
        .train_steps(0, &StepHyper::constant(0.01, 1))
        .map_err(gpu_error)?;
    backend.take_stats().map_err(gpu_error)?;

    let queries = 2 * dispatches * steps;
    let query_set = ctx.dev.device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("kernel timestamps"),
        ty: wgpu::QueryType::Timestamp,
        count: queries as u32,
    });
    let resolved = ctx.dev.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("kernel timestamps resolved"),
        size: 8 * queries as u64,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let mut enc = ctx.dev.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("timed training steps"),
    });
    let names = backend.record_timed_steps(&mut enc, steps, 0.01, &query_set)?;
    let used = 2 * names.len();
    enc.resolve_query_set(&query_set, 0..used as u32, &resolved, 0);
    let bytes = ctx.dev.read_back(Some(enc), &[(&resolved, 0, 8 * used as u64)])?;
    let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes[0]);
    let ns_per_tick = f64::from(ctx.dev.queue.get_timestamp_period());

    let mut out: Vec<KernelTime> = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let us = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * ns_per_tick / 1e3;
        match out.iter_mut().find(|k| k.name == name) {
            Some(k) => {
                k.calls += 1;
                k.total_us += us;
            }
            None => out.push(KernelTime {
                name,
                calls: 1,
                total_us: us,
                mean_us: 0.0,
            }),
        }
    }
    for k in &mut out {
        k.mean_us = k.total_us / k.calls as f64;
    }
    Ok(Some(out))
}
