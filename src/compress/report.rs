//! Per-layer figures of a compressed model: shape, kept weights, sparsity,
//! encoding and bytes, beside what the layer takes in an f32 file.

use serde::Serialize;

use crate::model::{CompressedMlp, LayerStorage};

/// Per-layer figures of a compressed model.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// The layer's tensor name stem: `fc1`, `fc2`, ...
    pub layer: String,
    /// `[outputs, inputs]`.
    pub shape: [usize; 2],
    /// Weights in the layer (`outputs * inputs`).
    pub weights: usize,
    /// Non-zero weights.
    pub kept: usize,
    /// The fraction of the weights that are zero.
    pub sparsity: f64,
    /// How the layer's weights are stored (see [`LayerStorage::encoding`]).
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
