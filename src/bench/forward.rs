//! Throughput of the forward passes a compressed model is compared with
//! (`wgtrain compress --bench`): the f32 training path, the f32 inference
//! predictor and the int8 engine, at one batch size.

use std::time::Instant;

use serde::Serialize;

use crate::infer::int8::Int8Mlp;
use crate::model::Mlp;

/// Throughput of one forward path at a fixed batch.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardBench {
    /// What ran, e.g. `f32 gemm` or `int8 avx512-vnni`.
    pub path: String,
    /// Rows per call.
    pub batch: usize,
    /// Median time of one batch (preprocessing and forward pass), ms.
    pub batch_p50_ms: f64,
    /// Rows per second over all the timed calls (wall clock).
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
