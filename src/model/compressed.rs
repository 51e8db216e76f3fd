//! The compressed model: [`CompressedMlp`], whose layers hold pruned f32 or
//! int8 weights ([`LayerWeights`]), and how it was made
//! ([`CompressionInfo`]). Its file is read and written by [`super::file`];
//! the int8 CPU engine that runs it is [`crate::infer::int8`], which also
//! defines `CompressedMlp::int8_engine` (so that this module need not know
//! the engine).

use super::header::Header;
use super::info::CompressionInfo;
use super::int8::{quantize_linear, QuantizedWeights};
use super::mlp::{Linear, Mlp};
use crate::data::Preprocess;

/// A layer's weights in memory: dense, pruned weights held as zeros.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerWeights {
    /// f32 weights, `[outputs, inputs]` row-major.
    F32(Vec<f32>),
    /// Symmetric int8 weights with one scale per output row.
    Int8(QuantizedWeights),
}

/// One fully connected layer of a compressed model.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedLinear {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// `outputs * inputs` weights, `[outputs, inputs]` as in [`Linear`].
    pub weights: LayerWeights,
    /// `outputs` biases, kept in f32 in both formats.
    pub bias: Vec<f32>,
}

impl CompressedLinear {
    /// Weights that are not zero (after quantization for int8).
    pub fn nonzeros(&self) -> usize {
        match &self.weights {
            LayerWeights::F32(w) => w.iter().filter(|&&v| v != 0.0).count(),
            LayerWeights::Int8(q) => q.nonzeros(),
        }
    }

    /// The weights as f32 (`q * scale` for int8).
    pub fn weights_f32(&self) -> Vec<f32> {
        match &self.weights {
            LayerWeights::F32(w) => w.clone(),
            LayerWeights::Int8(q) => q.dequantize(),
        }
    }
}

/// A pruned and/or int8-quantized MLP.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedMlp {
    /// The layers, input first; each layer's inputs are the previous one's outputs.
    pub layers: Vec<CompressedLinear>,
    /// The preprocessing of raw inputs (as the f32 model it came from).
    pub preprocess: Preprocess,
    /// Shape of one example (e.g. `[28, 28]`); its product is the input width.
    pub input_shape: Vec<usize>,
    /// The name of each class, in class order; empty when the model has
    /// none.
    pub class_names: Vec<String>,
    /// How it was made (sparsity, quantization, fine-tuning).
    pub info: CompressionInfo,
}

impl CompressedMlp {
    /// Compress an f32 model whose pruned weights are already zero:
    /// quantize to int8 when `quantize`, else keep f32.
    pub fn from_mlp(model: &Mlp, quantize: bool, info: CompressionInfo) -> Self {
        let layers = model
            .layers
            .iter()
            .map(|l| CompressedLinear {
                inputs: l.inputs,
                outputs: l.outputs,
                weights: if quantize {
                    LayerWeights::Int8(quantize_linear(l))
                } else {
                    LayerWeights::F32(l.weight.clone())
                },
                bias: l.bias.clone(),
            })
            .collect();
        CompressedMlp {
            layers,
            preprocess: model.preprocess,
            input_shape: model.input_shape.clone(),
            class_names: model.class_names.clone(),
            info,
        }
    }

    /// Layer widths, inputs first.
    pub fn sizes(&self) -> Vec<usize> {
        let mut v = vec![self.layers[0].inputs];
        v.extend(self.layers.iter().map(|l| l.outputs));
        v
    }

    /// Input values per example: the first layer's inputs (panics on a
    /// model without layers).
    pub fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    /// Number of classes: the last layer's outputs (0 without layers).
    pub fn classes(&self) -> usize {
        self.layers.last().map(|l| l.outputs).unwrap_or(0)
    }

    /// Layer widths, input shape and preprocessing.
    pub fn header(&self) -> Header {
        Header {
            sizes: self.sizes(),
            input_shape: self.input_shape.clone(),
            preprocess: self.preprocess,
            class_names: self.class_names.clone(),
        }
    }

    /// True when every layer holds int8 weights.
    pub fn is_int8(&self) -> bool {
        self.layers.iter().all(|l| matches!(l.weights, LayerWeights::Int8(_)))
    }

    /// The f32 model with the same (dequantized) weights.
    pub fn to_mlp(&self) -> Mlp {
        Mlp {
            layers: self
                .layers
                .iter()
                .map(|l| Linear {
                    inputs: l.inputs,
                    outputs: l.outputs,
                    weight: l.weights_f32(),
                    bias: l.bias.clone(),
                })
                .collect(),
            preprocess: self.preprocess,
            input_shape: self.input_shape.clone(),
            class_names: self.class_names.clone(),
        }
    }
}
