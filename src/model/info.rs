//! How a compressed model was made ([`CompressionInfo`], the `compress.*`
//! metadata of its file), with the two choices it records that are not
//! free text: the pruning [`Scope`] and the int8 [`Activations`] mode.

use serde::Serialize;

/// Which weights compete for the kept slots when pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One magnitude threshold across all weight matrices: layers with many
    /// small weights (the first) lose more.
    Global,
    /// Every weight matrix pruned to the same sparsity.
    Layer,
}

impl Scope {
    /// The name written as the `compress.scope` metadata key.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Layer => "layer",
        }
    }
    /// The scope named `s` (as [`Scope::as_str`] writes it); `None` for any other name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "global" => Some(Scope::Global),
            "layer" => Some(Scope::Layer),
            _ => None,
        }
    }
}

/// How activations are represented in the int8 forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activations {
    /// Quantized to int8 per row at run time; integer dot products.
    Int8,
    /// Kept in f32; only the weights are int8.
    F32,
}

impl Activations {
    /// The name written as the `compress.activations` metadata key.
    pub fn as_str(self) -> &'static str {
        match self {
            Activations::Int8 => "int8",
            Activations::F32 => "f32",
        }
    }
    /// The mode named `s` (as [`Activations::as_str`] writes it); `None` for any other name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "int8" => Some(Activations::Int8),
            "f32" => Some(Activations::F32),
            _ => None,
        }
    }
}

/// How a compressed model was made (the `compress.*` metadata).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompressionInfo {
    /// Target sparsity of the pruning (0 when not pruned).
    pub target_sparsity: f64,
    /// Pruning scope, `None` when not pruned.
    pub scope: Option<Scope>,
    /// `none`, `one-shot` or `gradual-cubic`.
    pub schedule: String,
    /// Epochs of fine-tuning after pruning (0: none).
    pub finetune_epochs: usize,
    /// `none` or `int8` (symmetric, per output channel).
    pub quantization: String,
    /// How the int8 forward pass treats activations.
    pub activations: Activations,
    /// File name of the model it was made from.
    pub base_model: String,
}

impl Default for CompressionInfo {
    fn default() -> Self {
        CompressionInfo {
            target_sparsity: 0.0,
            scope: None,
            schedule: "none".into(),
            finetune_epochs: 0,
            quantization: "none".into(),
            activations: Activations::Int8,
            base_model: String::new(),
        }
    }
}
