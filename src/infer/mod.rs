//! Inference: class probabilities of a trained [`Mlp`] for raw inputs, with
//! buffers allocated once and latency at batch 1 as the first concern.
//!
//! A [`Predictor`] takes raw feature rows (the same values the data loaders
//! produce: 0..=255 pixels for images) and applies the model's
//! [`Preprocess`](crate::data::Preprocess) itself, so every caller (the
//! `predict` command, the HTTP server, the benchmarks) feeds it the same
//! thing. [`CpuPredictor`] is the CPU implementation; a GPU one implements
//! the same trait. [`input`] turns images, IDX files and CSV files into raw
//! rows, and [`bench_inference`] measures a predictor.

pub mod input;
pub mod kernels;

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::data::Preprocess;
use crate::error::InferError;
use crate::model::Mlp;
use kernels::{Isa, PackedLinear};

/// Something that turns raw feature rows into class probabilities.
pub trait Predictor: Send {
    /// What runs the model, for logs and benchmark tables.
    fn name(&self) -> String;
    /// Shape of one input example, as recorded in the model (e.g. `[28, 28]`).
    fn input_shape(&self) -> &[usize];
    /// Values per input row.
    fn inputs(&self) -> usize;
    /// Number of classes (values per output row).
    fn classes(&self) -> usize;
    /// Probabilities of `raw.len() / inputs()` raw (not preprocessed) rows
    /// into `out`, which must hold `rows * classes()` values.
    fn probabilities_into(&mut self, raw: &[f32], out: &mut [f32]) -> Result<(), InferError>;

    /// [`Predictor::probabilities_into`] into a new vector.
    fn probabilities(&mut self, raw: &[f32]) -> Result<Vec<f32>, InferError> {
        let rows = raw.len() / self.inputs().max(1);
        let mut out = vec![0.0; rows * self.classes()];
        self.probabilities_into(raw, &mut out)?;
        Ok(out)
    }
}

/// Rows below which a batch runs on the calling thread only: waking the
/// thread pool costs more than it saves.
const PARALLEL_MIN_ROWS: usize = 16;

/// The CPU predictor: weights packed for [`kernels::linear_forward`] and
/// activation buffers for `capacity` rows, allocated once. Larger batches
/// run in chunks of `capacity` rows.
pub struct CpuPredictor {
    isa: Isa,
    layers: Vec<PackedLinear>,
    preprocess: Preprocess,
    input_shape: Vec<usize>,
    capacity: usize,
    /// Threads for batches of at least [`PARALLEL_MIN_ROWS`] rows, fixed at
    /// construction (asking the OS costs microseconds).
    threads: usize,
    /// `acts[l]` is the padded input of layer `l` (`[capacity, stride_l]`);
    /// the last holds the logits (`[capacity, classes]`).
    acts: Vec<Vec<f32>>,
}

impl CpuPredictor {
    /// Pack `model` for inference with buffers for batches of up to
    /// `capacity` rows (at least 1).
    pub fn new(model: &Mlp, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let layers: Vec<PackedLinear> = model.layers.iter().map(PackedLinear::pack).collect();
        let mut acts: Vec<Vec<f32>> = layers.iter().map(|l| vec![0.0; capacity * l.stride]).collect();
        acts.push(vec![0.0; capacity * model.classes()]);
        CpuPredictor {
            isa: Isa::detect(),
            layers,
            preprocess: model.preprocess,
            input_shape: model.input_shape.clone(),
            capacity,
            threads: crate::cpu::threads().min(rayon::current_num_threads()),
            acts,
        }
    }

    /// Forward `rows <= capacity` raw rows; the logits land in the last
    /// activation buffer.
    fn forward_chunk(&mut self, raw: &[f32], rows: usize) {
        let dim = self.inputs();
        let s0 = self.layers[0].stride;
        for (dst, src) in self.acts[0].chunks_exact_mut(s0).zip(raw.chunks_exact(dim)).take(rows) {
            self.preprocess.apply_into(src, &mut dst[..dim]);
        }
        let nl = self.layers.len();
        let threads = self.threads;
        for (l, layer) in self.layers.iter().enumerate() {
            let (lo, hi) = self.acts.split_at_mut(l + 1);
            let x = &lo[l][..rows * layer.stride];
            let ystride = if l + 1 < nl {
                self.layers[l + 1].stride
            } else {
                layer.outputs
            };
            let y = &mut hi[0][..rows * ystride];
            let relu = l + 1 < nl;
            let isa = self.isa;
            if threads > 1 && rows >= PARALLEL_MIN_ROWS {
                // Whole blocks of 4 rows per task, about one task per thread.
                let per = rows.div_ceil(threads).div_ceil(4) * 4;
                y.par_chunks_mut(per * ystride)
                    .zip(x.par_chunks(per * layer.stride))
                    .for_each(|(yc, xc)| {
                        kernels::linear_forward(isa, layer, xc, yc.len() / ystride, yc, ystride, relu)
                    });
            } else {
                kernels::linear_forward(isa, layer, x, rows, y, ystride, relu);
            }
        }
    }
}

impl Predictor for CpuPredictor {
    fn name(&self) -> String {
        format!("cpu ({}, {} threads)", self.isa.name(), self.threads)
    }

    fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    fn classes(&self) -> usize {
        self.layers.last().map(|l| l.outputs).unwrap_or(0)
    }

    fn probabilities_into(&mut self, raw: &[f32], out: &mut [f32]) -> Result<(), InferError> {
        let (dim, classes) = (self.inputs(), self.classes());
        if !raw.len().is_multiple_of(dim) {
            return Err(InferError::InputSize {
                source_name: "input".into(),
                expected: dim,
                found: raw.len() % dim,
                shape: self.input_shape.clone(),
            });
        }
        let rows = raw.len() / dim;
        if out.len() != rows * classes {
            return Err(InferError::Failed(format!(
                "output buffer holds {} values, {rows} rows of {classes} classes need {}",
                out.len(),
                rows * classes
            )));
        }
        let mut start = 0;
        while start < rows {
            let n = self.capacity.min(rows - start);
            self.forward_chunk(&raw[start * dim..(start + n) * dim], n);
            let logits = &self.acts[self.layers.len()][..n * classes];
            let dst = &mut out[start * classes..(start + n) * classes];
            dst.copy_from_slice(logits);
            crate::cpu::kernels::softmax_rows(dst, classes);
            start += n;
        }
        Ok(())
    }
}

/// One class and its probability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassProbability {
    pub class: usize,
    pub probability: f32,
}

/// The prediction for one input row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The most probable class (the lowest index on ties).
    pub class: usize,
    /// Probability of every class.
    pub probabilities: Vec<f32>,
    /// The `k` most probable classes, most probable first.
    pub top_k: Vec<ClassProbability>,
}

/// The `k` most probable classes of one row, most probable first (the lower
/// index first on ties).
pub fn top_k(probabilities: &[f32], k: usize) -> Vec<ClassProbability> {
    let mut v: Vec<ClassProbability> = probabilities
        .iter()
        .enumerate()
        .map(|(class, &probability)| ClassProbability { class, probability })
        .collect();
    v.sort_by(|a, b| b.probability.total_cmp(&a.probability).then(a.class.cmp(&b.class)));
    v.truncate(k);
    v
}

/// Split `[rows, classes]` probabilities into per-row predictions.
pub fn predictions(probabilities: &[f32], classes: usize, k: usize) -> Vec<Prediction> {
    probabilities
        .chunks_exact(classes.max(1))
        .map(|p| Prediction {
            class: crate::cpu::kernels::argmax(p).0,
            probabilities: p.to_vec(),
            top_k: top_k(p, k),
        })
        .collect()
}

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
    /// [`Predictor::name`].
    pub predictor: String,
    /// Median latency of one row (preprocessing, forward pass, softmax), µs.
    pub batch1_p50_us: f64,
    /// 99th percentile of the same, µs.
    pub batch1_p99_us: f64,
    pub batch1_mean_us: f64,
    /// Rows per call of the throughput measurement.
    pub batch: usize,
    /// Median time of one call at `batch` rows, ms.
    pub batch_p50_ms: f64,
    /// `batch` divided by the mean time per call.
    pub rows_per_second: f64,
}

/// Measure `predictor` in process: latency at batch 1 (p50, p99) and
/// throughput at `opts.batch` rows, on fixed pseudo-random raw inputs in
/// 0..=255.
pub fn bench_inference(predictor: &mut dyn Predictor, opts: &BenchOptions) -> Result<InferenceBench, InferError> {
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
        predictor: predictor.name(),
        batch1_p50_us: pct(&lat, 0.5),
        batch1_p99_us: pct(&lat, 0.99),
        batch1_mean_us: mean,
        batch,
        batch_p50_ms: pct(&big, 0.5) * 1e3,
        rows_per_second: batch as f64 * big.len() as f64 / total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_training_forward_pass() {
        let p = Preprocess {
            kind: crate::data::Normalize::Scale,
            scale: 1.0 / 255.0,
            offset: -0.1,
        };
        let m = Mlp::new(&[70, 33, 9, 5], 3, p, vec![7, 10]).unwrap();
        let rows = 37;
        let raw: Vec<f32> = (0..rows * 70).map(|i| ((i * 37) % 256) as f32).collect();
        let want = crate::cpu::probabilities(&m, &raw);
        // Capacity 8: the batch runs in chunks, the last one partial.
        let mut pr = CpuPredictor::new(&m, 8);
        let got = pr.probabilities(&raw).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        // Row by row: the same bits as in the batch.
        for r in 0..rows {
            let one = pr.probabilities(&raw[r * 70..(r + 1) * 70]).unwrap();
            assert_eq!(one, got[r * 5..(r + 1) * 5]);
        }
    }

    #[test]
    fn top_k_orders_and_breaks_ties_by_class() {
        let t = top_k(&[0.1, 0.4, 0.1, 0.4], 3);
        let classes: Vec<usize> = t.iter().map(|c| c.class).collect();
        assert_eq!(classes, vec![1, 3, 0]);
        assert_eq!(top_k(&[0.5, 0.5], 9).len(), 2);
    }
}
