//! In-process inference figures of one [`Predictor`]: latency at batch 1
//! (p50, p90, p99) and throughput at a larger batch, behind
//! `wgtrain bench --inference`.

use std::time::Instant;

use serde::Serialize;

use crate::error::InferError;
use crate::infer::Predictor;

/// What [`bench_inference`] measures.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Untimed batch-1 calls first (caches, branch predictors, clocks).
    pub warmup: usize,
    /// Timed batch-1 calls; p50 and p99 are over these.
    pub batch1_iterations: usize,
    /// Rows per call of the throughput measurement.
    pub batch: usize,
    /// Timed calls at `batch` rows.
    pub batch_iterations: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            warmup: 2_000,
            batch1_iterations: 20_000,
            batch: 256,
            batch_iterations: 200,
        }
    }
}

/// In-process inference figures of one predictor.
#[derive(Debug, Clone, Serialize)]
pub struct InferenceBench {
    /// `inference`, the kind of the JSON line.
    pub bench: &'static str,
    /// The device as the epoch and matmul lines name it
    /// (`crate::cpu::device_name`, `GpuContext::label`).
    pub device: String,
    /// [`Predictor::name`].
    pub predictor: String,
    /// Median latency of one row (preprocessing, forward pass, softmax), µs.
    pub batch1_p50_us: f64,
    /// 90th percentile of the same, µs.
    pub batch1_p90_us: f64,
    /// 99th percentile of the same, µs.
    pub batch1_p99_us: f64,
    /// Mean latency of one row, µs.
    pub batch1_mean_us: f64,
    /// Rows per call of the throughput measurement.
    pub batch: usize,
    /// Median time of one call at `batch` rows, ms.
    pub batch_p50_ms: f64,
    /// `batch` divided by the mean time per call.
    pub rows_per_second: f64,
}

/// Measure `predictor`, which runs on `device`, in process: latency at
/// batch 1 (p50, p90, p99) and throughput at `opts.batch` rows, on fixed
/// pseudo-random raw inputs in 0..=255.
pub fn bench_inference(
    predictor: &mut dyn Predictor,
    device: &str,
    opts: &BenchOptions,
) -> Result<InferenceBench, InferError> {
    let dim = predictor.inputs();
    let classes = predictor.classes();
    let batch = opts.batch.max(1);
    // A small LCG: deterministic, and different rows defeat nothing-changed shortcuts.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let raw: Vec<f32> = (0..dim * batch)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) % 256) as f32
        })
        .collect();
    let mut out = vec![0.0; classes * batch];
    let row = |i: usize| &raw[(i % batch) * dim..(i % batch + 1) * dim];
    for i in 0..opts.warmup {
        predictor.probabilities_into(row(i), &mut out[..classes])?;
    }
    let mut lat = Vec::with_capacity(opts.batch1_iterations.max(1));
    for i in 0..opts.batch1_iterations.max(1) {
        let t = Instant::now();
        predictor.probabilities_into(row(i), &mut out[..classes])?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;

    predictor.probabilities_into(&raw, &mut out)?;
    let mut big = Vec::with_capacity(opts.batch_iterations.max(1));
    for _ in 0..opts.batch_iterations.max(1) {
        let t = Instant::now();
        predictor.probabilities_into(&raw, &mut out)?;
        big.push(t.elapsed().as_secs_f64());
    }
    let total: f64 = big.iter().sum();
    big.sort_by(f64::total_cmp);
    Ok(InferenceBench {
        bench: "inference",
        device: device.to_string(),
        predictor: predictor.name(),
        batch1_p50_us: pct(&lat, 0.5),
        batch1_p90_us: pct(&lat, 0.9),
        batch1_p99_us: pct(&lat, 0.99),
        batch1_mean_us: mean,
        batch,
        batch_p50_ms: pct(&big, 0.5) * 1e3,
        rows_per_second: batch as f64 * big.len() as f64 / total,
    })
}
