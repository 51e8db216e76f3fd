//! Model compression: magnitude pruning with masked fine-tuning
//! ([`prune`]), post-training int8 quantization with CPU int8 kernels
//! ([`quant`]), and the compressed safetensors format with a loader for
//! every wgtrain model file ([`format`]).
//!
//! The pipeline `wgtrain compress` runs: load an f32 [`Mlp`], prune it
//! ([`prune::magnitude_masks`]) and fine-tune with the masks held by the
//! backend ([`prune::prune_and_finetune`]), then build a
//! [`CompressedMlp`] (int8 or f32 weights) and save it; each layer is
//! stored dense or as a bitmask plus values, whichever is smaller.
//!
//! For a GPU int8 path: [`quant::PackedI8Linear`] holds the rows padded to
//! a multiple of 64 bytes, [`quant::PackedI8Linear::packed_u32`] gives them
//! as the words WGSL's `dot4I8Packed` reads, and the CPU kernels
//! [`quant::quantize_rows_i8`] and [`quant::linear_forward_i8`] (with the
//! epilogue [`quant::dequantize_acc`]) define the results a WGSL twin must
//! reproduce: the i32 sums are exact, so CPU and GPU agree up to the f32
//! epilogue.
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

pub mod format;
pub mod prune;
pub mod quant;

use std::time::Instant;

use serde::Serialize;

pub use format::{AnyModel, CompressedLinear, CompressedMlp, CompressionInfo, LayerStorage, LayerWeights};
pub use prune::{magnitude_masks, prune_and_finetune, PruneConfig, Scope};
pub use quant::{Activations, Int8Mlp, QuantizedWeights};

use crate::model::Mlp;

/// Per-layer figures of a compressed model.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub layer: String,
    /// `[outputs, inputs]`.
    pub shape: [usize; 2],
    pub weights: usize,
    /// Non-zero weights.
    pub kept: usize,
    pub sparsity: f64,
    pub encoding: String,
    /// Bytes of the layer's tensors in the compressed file.
    pub bytes: usize,
    /// Bytes of the same layer in an f32 file.
    pub f32_bytes: usize,
}

/// Per-layer figures from a model and how [`CompressedMlp::save`] stored it.
pub fn layer_reports(model: &CompressedMlp, storage: &[LayerStorage]) -> Vec<LayerReport> {
    model
        .layers
        .iter()
        .zip(storage)
        .enumerate()
        .map(|(i, (l, s))| {
            let weights = l.inputs * l.outputs;
            let kept = l.nonzeros();
            LayerReport {
                layer: format!("fc{}", i + 1),
                shape: [l.outputs, l.inputs],
                weights,
                kept,
                sparsity: 1.0 - kept as f64 / weights.max(1) as f64,
                encoding: s.encoding.to_string(),
                bytes: s.tensor_bytes,
                f32_bytes: 4 * (weights + l.outputs),
            }
        })
        .collect()
}

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

/// Evaluate a compressed model on a split of `data` on the CPU (see
/// [`CompressedMlp::predict_rows`] for which kernels run), after checking
/// that the model fits the data.
pub fn evaluate(
    model: &CompressedMlp,
    data: &crate::data::Dataset,
    split: crate::backend::SplitKind,
) -> crate::error::Result<crate::metrics::Evaluation> {
    use crate::error::ModelError;
    if model.inputs() != data.dim() {
        return Err(ModelError::InputMismatch {
            expected: model.inputs(),
            found: data.dim(),
        }
        .into());
    }
    let s = match split {
        crate::backend::SplitKind::Train => &data.train,
        crate::backend::SplitKind::Test => &data.test,
    };
    let max_label = s.labels.iter().copied().max().unwrap_or(0) as usize;
    if max_label >= model.classes() {
        return Err(ModelError::ClassMismatch {
            model: model.classes(),
            data: max_label,
        }
        .into());
    }
    let pred = model.predict_rows(&s.features, &s.labels);
    Ok(crate::metrics::Evaluation::new(&pred, &s.labels, model.classes()))
}

/// What runs a compressed model's forward pass on this CPU, for messages.
pub fn cpu_path_name(model: &CompressedMlp) -> String {
    match (model.info.activations, model.is_int8()) {
        (Activations::Int8, true) => format!(
            "cpu int8 ({}, {} threads)",
            quant::I8Isa::detect().name(),
            crate::cpu::threads()
        ),
        (_, true) => format!("cpu int8 weights, f32 activations ({} threads)", crate::cpu::threads()),
        _ => format!("cpu f32 ({} threads)", crate::cpu::threads()),
    }
}
