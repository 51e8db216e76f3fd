//! Making compressed models: magnitude pruning with masked fine-tuning
//! ([`prune`]) and per-layer reports of the result ([`report`]).
//!
//! The pipeline `wgtrain compress` runs: load an f32 [`Mlp`], prune it
//! ([`prune::magnitude_masks`]) and fine-tune with the masks held by the
//! backend ([`prune::prune_and_finetune`]), then build a [`CompressedMlp`]
//! with int8 ([`crate::model::int8`], symmetric per output channel) or f32
//! weights ([`CompressedMlp::from_mlp`]) and save it; each layer is stored
//! dense or as a bitmask plus values, whichever is smaller
//! ([`crate::model::file`]). The compressed model runs on the CPU int8
//! engine ([`crate::infer::int8`]); [`crate::infer::compressed::evaluate`]
//! measures its accuracy.
//!
//! Measured on Fashion-MNIST (784-500-10 trained 10 epochs at batch 64, lr
//! 0.1: 87.39%; 2-core AMD EPYC with AVX-512 VNNI; `--device cpu`;
//! `scripts/compare_compression.py` prints the same beside PyTorch):
//!
//! | step                                | test acc | file (of f32)      |
//! |-------------------------------------|----------|--------------------|
//! | prune 0.9 global, 2 fine-tune epochs | 87.77%   | 211,438 B (13.3%)  |
//! | int8                                 | 87.37%   | 402,016 B (25.3%)  |
//! | prune 0.9 + 2 epochs + int8          | 87.74%   | 94,514 B (5.9%)    |
//!
//! Forward pass at batch 256, 2 threads: int8 (VNNI) 0.76 ms against 1.56
//! ms for the f32 `gemm` path. One-shot 90% pruning without fine-tuning
//! drops to 74.06%; int8 with f32 activations gives 87.42%.
//!
//! [`Mlp`]: crate::model::Mlp
//! [`CompressedMlp`]: crate::model::CompressedMlp
//! [`CompressedMlp::from_mlp`]: crate::model::CompressedMlp::from_mlp

pub mod prune;
pub mod report;

pub use prune::{magnitude_masks, prune_and_finetune, PruneConfig};
pub use report::{layer_reports, LayerReport};

use std::time::Instant;

use serde::Serialize;

use crate::infer::int8::Int8Mlp;
use crate::model::Mlp;

/// Throughput of one forward path at a fixed batch.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardBench {
    /// What ran, e.g. `f32 gemm` or `int8 avx512-vnni`.
    pub path: String,
    pub batch: usize,
    /// Median time of one batch (preprocessing and forward pass), ms.
    pub batch_p50_ms: f64,
    pub rows_per_second: f64,
}

/// Deterministic raw inputs in 0..=255 for the benchmarks.
fn bench_inputs(dim: usize, batch: usize) -> Vec<f32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..dim * batch)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 33) % 256) as f32
        })
        .collect()
}

fn time_it(path: String, batch: usize, seconds: f64, mut f: impl FnMut()) -> ForwardBench {
    for _ in 0..3 {
        f();
    }
    let mut times = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < seconds || times.len() < 5 {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    let total: f64 = times.iter().sum();
    let n = times.len();
    times.sort_by(f64::total_cmp);
    ForwardBench {
        path,
        batch,
        batch_p50_ms: times[n / 2] * 1e3,
        rows_per_second: (batch * n) as f64 / total,
    }
}

/// Time the f32 forward pass of the training backend (`gemm` crate) at
/// `batch` rows for about `seconds`.
pub fn bench_forward_f32(model: &Mlp, batch: usize, seconds: f64) -> ForwardBench {
    let raw = bench_inputs(model.inputs(), batch);
    let mut acts: Vec<Vec<f32>> = model.sizes().iter().map(|&s| vec![0.0; s * batch]).collect();
    time_it("f32 gemm".into(), batch, seconds, || {
        model.preprocess.apply_into(&raw, &mut acts[0]);
        crate::cpu::forward(model, &mut acts, batch);
    })
}

/// Time the f32 inference predictor ([`crate::infer::CpuPredictor`],
/// softmax included) at `batch` rows for about `seconds`.
pub fn bench_forward_f32_predictor(model: &Mlp, batch: usize, seconds: f64) -> ForwardBench {
    use crate::infer::Predictor;
    let raw = bench_inputs(model.inputs(), batch);
    let mut p = crate::infer::CpuPredictor::new(model, batch);
    let mut out = vec![0.0; batch * model.classes()];
    time_it("f32 infer predictor".into(), batch, seconds, || {
        // The sizes match by construction, so this cannot fail.
        let _ = p.probabilities_into(&raw, &mut out);
    })
}

/// Time the int8 forward pass at `batch` rows for about `seconds`.
pub fn bench_forward_int8(engine: &Int8Mlp, batch: usize, seconds: f64) -> ForwardBench {
    let raw = bench_inputs(engine.inputs(), batch);
    let mut out = vec![0.0; batch * engine.classes()];
    time_it(format!("int8 {}", engine.isa.name()), batch, seconds, || {
        engine.logits(&raw, batch, &mut out)
    })
}
