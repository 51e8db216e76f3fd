//! The compressed model and its safetensors file, and [`AnyModel`], which
//! loads either a plain f32 model or a compressed one.
//!
//! A compressed file has `wgtrain.format = mlp-compressed-v1` and the same
//! metadata keys as a plain model (`layers`, `input_shape`, `normalize`,
//! `input_scale`, `input_offset`, `activation`), plus `compress.*` keys
//! saying how it was made and `fcN.encoding` naming each layer's weight
//! encoding. Each layer stores `fcN.bias` (F32 `[out]`) and its weights in
//! the smallest of:
//!
//! | encoding       | tensors                                                                         |
//! |----------------|---------------------------------------------------------------------------------|
//! | `dense-f32`    | `fcN.weight` F32 `[out, in]`                                                    |
//! | `dense-int8`   | `fcN.weight_q` I8 `[out, in]`, `fcN.weight_scale` F32 `[out]`                   |
//! | `bitmask-f32`  | `fcN.weight_mask` U8 `[out, ceil(in/8)]`, `fcN.weight_values` F32 `[nnz]`       |
//! | `bitmask-int8` | `fcN.weight_mask`, `fcN.weight_values` I8 `[nnz]`, `fcN.weight_scale` F32 `[out]` |
//!
//! In a bitmask, bit `k % 8` (least significant first) of byte `k / 8` of
//! row `o` says whether weight `[o, k]` is non-zero; the values of the set
//! bits follow in row-major order. At 90% sparsity this costs 1.125 bits of
//! position per weight plus one byte per kept int8 value: 0.225 bytes per
//! weight against 1 dense, and rows stay independent for parallel decoding.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde::Serialize;

use super::prune::Scope;
use super::quant::{quantize_linear, Activations, Int8Mlp, QuantizedWeights};
use crate::data::{Normalize, Preprocess};
use crate::error::ModelError;
use crate::metrics::Predictions;
use crate::model::{write_atomic, Linear, Mlp, FORMAT_KEY, FORMAT_MLP};

/// Value of [`FORMAT_KEY`] for a compressed MLP.
pub const FORMAT_COMPRESSED: &str = "mlp-compressed-v1";

/// A layer's weights in memory: dense, pruned weights held as zeros.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerWeights {
    F32(Vec<f32>),
    Int8(QuantizedWeights),
}

/// One fully connected layer of a compressed model.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedLinear {
    pub inputs: usize,
    pub outputs: usize,
    pub weights: LayerWeights,
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

/// How a compressed model was made (the `compress.*` metadata).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompressionInfo {
    /// Target sparsity of the pruning (0 when not pruned).
    pub target_sparsity: f64,
    /// Pruning scope, `None` when not pruned.
    pub scope: Option<Scope>,
    /// `none`, `one-shot` or `gradual-cubic`.
    pub schedule: String,
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

/// A pruned and/or int8-quantized MLP.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedMlp {
    pub layers: Vec<CompressedLinear>,
    pub preprocess: Preprocess,
    pub input_shape: Vec<usize>,
    pub info: CompressionInfo,
}

/// How one layer was stored.
#[derive(Debug, Clone, Serialize)]
pub struct LayerStorage {
    pub encoding: &'static str,
    /// Bytes of the layer's tensors (weights, scales, bias), without the
    /// file header.
    pub tensor_bytes: usize,
}

/// Tensors of one file, owned, before serialisation.
struct Tensors(Vec<(String, Dtype, Vec<usize>, Vec<u8>)>);

impl Tensors {
    fn push(&mut self, name: String, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> usize {
        let n = data.len();
        self.0.push((name, dtype, shape, data));
        n
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice::<f32, u8>(v).to_vec()
}

fn i8_bytes(v: &[i8]) -> Vec<u8> {
    bytemuck::cast_slice::<i8, u8>(v).to_vec()
}

/// Row-wise bitmask of `nonzero(o, k)` over `[out, in]`.
fn bitmask(inputs: usize, outputs: usize, nonzero: impl Fn(usize) -> bool) -> Vec<u8> {
    let rb = inputs.div_ceil(8);
    let mut m = vec![0u8; outputs * rb];
    for o in 0..outputs {
        for k in 0..inputs {
            if nonzero(o * inputs + k) {
                m[o * rb + k / 8] |= 1 << (k % 8);
            }
        }
    }
    m
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
            info,
        }
    }

    /// Layer widths, inputs first.
    pub fn sizes(&self) -> Vec<usize> {
        let mut v = vec![self.layers[0].inputs];
        v.extend(self.layers.iter().map(|l| l.outputs));
        v
    }

    pub fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    pub fn classes(&self) -> usize {
        self.layers.last().map(|l| l.outputs).unwrap_or(0)
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
        }
    }

    /// The int8 CPU engine, when every layer is int8.
    pub fn int8_engine(&self) -> Option<Int8Mlp> {
        let layers: Option<Vec<(QuantizedWeights, Vec<f32>)>> = self
            .layers
            .iter()
            .map(|l| match &l.weights {
                LayerWeights::Int8(q) => Some((q.clone(), l.bias.clone())),
                LayerWeights::F32(_) => None,
            })
            .collect();
        Some(Int8Mlp::new(&layers?, self.preprocess))
    }

    /// Loss and arg-max of raw rows on the CPU: the int8 kernels when the
    /// weights are int8 and the activation mode is int8, else the f32 path
    /// on the (dequantized) weights.
    pub fn predict_rows(&self, features: &[f32], labels: &[u32]) -> Predictions {
        match (self.info.activations, self.int8_engine()) {
            (Activations::Int8, Some(engine)) => engine.predict_rows(features, labels),
            _ => crate::cpu::predict_rows(&self.to_mlp(), features, labels),
        }
    }

    /// Metadata written into the file.
    pub fn metadata(&self, encodings: &[&str]) -> HashMap<String, String> {
        let join = |v: &[usize]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
        let i = &self.info;
        let mut m = HashMap::from([
            (FORMAT_KEY.to_string(), FORMAT_COMPRESSED.to_string()),
            ("wgtrain.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("layers".to_string(), join(&self.sizes())),
            ("activation".to_string(), "relu".to_string()),
            ("input_shape".to_string(), join(&self.input_shape)),
            ("normalize".to_string(), self.preprocess.kind.as_str().to_string()),
            ("input_scale".to_string(), format!("{:e}", self.preprocess.scale)),
            ("input_offset".to_string(), format!("{:e}", self.preprocess.offset)),
            ("compress.target_sparsity".to_string(), i.target_sparsity.to_string()),
            (
                "compress.scope".to_string(),
                i.scope.map(Scope::as_str).unwrap_or("none").to_string(),
            ),
            ("compress.schedule".to_string(), i.schedule.clone()),
            ("compress.finetune_epochs".to_string(), i.finetune_epochs.to_string()),
            ("compress.quantization".to_string(), i.quantization.clone()),
            ("compress.activations".to_string(), i.activations.as_str().to_string()),
            ("compress.base_model".to_string(), i.base_model.clone()),
        ]);
        for (n, e) in encodings.iter().enumerate() {
            m.insert(format!("fc{}.encoding", n + 1), e.to_string());
        }
        m
    }

    /// Serialise, choosing for each layer the smallest encoding; returns
    /// the bytes and how each layer was stored.
    pub fn to_safetensors(&self) -> Result<(Vec<u8>, Vec<LayerStorage>), ModelError> {
        let mut t = Tensors(Vec::new());
        let mut storage = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let name = |s: &str| format!("fc{}.{s}", i + 1);
            let (n, rb) = (l.inputs * l.outputs, l.inputs.div_ceil(8));
            let nnz = l.nonzeros();
            let mut bytes = 0;
            let encoding = match &l.weights {
                LayerWeights::F32(w) => {
                    if rb * l.outputs + 4 * nnz < 4 * n {
                        bytes += t.push(
                            name("weight_mask"),
                            Dtype::U8,
                            vec![l.outputs, rb],
                            bitmask(l.inputs, l.outputs, |j| w[j] != 0.0),
                        );
                        let vals: Vec<f32> = w.iter().copied().filter(|&v| v != 0.0).collect();
                        bytes += t.push(name("weight_values"), Dtype::F32, vec![nnz], f32_bytes(&vals));
                        "bitmask-f32"
                    } else {
                        bytes += t.push(name("weight"), Dtype::F32, vec![l.outputs, l.inputs], f32_bytes(w));
                        "dense-f32"
                    }
                }
                LayerWeights::Int8(q) => {
                    let enc = if rb * l.outputs + nnz < n {
                        bytes += t.push(
                            name("weight_mask"),
                            Dtype::U8,
                            vec![l.outputs, rb],
                            bitmask(l.inputs, l.outputs, |j| q.q[j] != 0),
                        );
                        let vals: Vec<i8> = q.q.iter().copied().filter(|&v| v != 0).collect();
                        bytes += t.push(name("weight_values"), Dtype::I8, vec![nnz], i8_bytes(&vals));
                        "bitmask-int8"
                    } else {
                        bytes += t.push(name("weight_q"), Dtype::I8, vec![l.outputs, l.inputs], i8_bytes(&q.q));
                        "dense-int8"
                    };
                    bytes += t.push(name("weight_scale"), Dtype::F32, vec![l.outputs], f32_bytes(&q.scale));
                    enc
                }
            };
            bytes += t.push(name("bias"), Dtype::F32, vec![l.outputs], f32_bytes(&l.bias));
            storage.push(LayerStorage {
                encoding,
                tensor_bytes: bytes,
            });
        }
        let views =
            t.0.iter()
                .map(|(n, d, s, b)| {
                    TensorView::new(*d, s.clone(), b)
                        .map(|v| (n.clone(), v))
                        .map_err(|e| ModelError::Invalid(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
        let encodings: Vec<&str> = storage.iter().map(|s| s.encoding).collect();
        let bytes = safetensors::serialize(views, Some(self.metadata(&encodings)))
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        Ok((bytes, storage))
    }

    /// Write atomically; returns how each layer was stored and the file size.
    pub fn save(&self, path: &Path) -> Result<(Vec<LayerStorage>, usize), ModelError> {
        let (bytes, storage) = self.to_safetensors()?;
        write_atomic(path, &bytes)?;
        Ok((storage, bytes.len()))
    }

    /// Parse a file written by [`CompressedMlp::to_safetensors`]; `path` is
    /// only used in messages.
    pub fn from_safetensors(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        let not_ours = |m: String| ModelError::NotWgtrain {
            path: path.to_path_buf(),
            message: m,
        };
        let (md, st) = read_header(bytes, path)?;
        let get = |k: &str| {
            md.get(k)
                .cloned()
                .ok_or_else(|| not_ours(format!("metadata has no `{k}`")))
        };
        let format = get(FORMAT_KEY)?;
        if format != FORMAT_COMPRESSED {
            return Err(not_ours(format!("format `{format}` is not `{FORMAT_COMPRESSED}`")));
        }
        let list = |k: &str| -> Result<Vec<usize>, ModelError> {
            let s = get(k)?;
            if s.is_empty() {
                return Ok(vec![]);
            }
            s.split(',')
                .map(|x| {
                    x.trim()
                        .parse::<usize>()
                        .map_err(|_| not_ours(format!("metadata `{k}` = `{s}` is not a list of sizes")))
                })
                .collect()
        };
        let num = |k: &str| -> Result<f64, ModelError> {
            get(k)?
                .parse::<f64>()
                .map_err(|_| not_ours(format!("metadata `{k}` is not a number")))
        };
        let sizes = list("layers")?;
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(not_ours(format!(
                "`layers` {sizes:?} needs at least two non-zero sizes"
            )));
        }
        let preprocess = Preprocess {
            kind: Normalize::parse(&get("normalize")?).ok_or_else(|| not_ours("unknown `normalize`".into()))?,
            scale: num("input_scale")? as f32,
            offset: num("input_offset")? as f32,
        };
        let info = CompressionInfo {
            target_sparsity: num("compress.target_sparsity")?,
            scope: Scope::parse(&get("compress.scope")?),
            schedule: get("compress.schedule")?,
            finetune_epochs: num("compress.finetune_epochs")? as usize,
            quantization: get("compress.quantization")?,
            activations: Activations::parse(&get("compress.activations")?)
                .ok_or_else(|| not_ours("unknown `compress.activations`".into()))?,
            base_model: md.get("compress.base_model").cloned().unwrap_or_default(),
        };
        let tensor = |name: &str, dtype: Dtype, shape: &[usize]| -> Result<Vec<u8>, ModelError> {
            let t = st
                .tensor(name)
                .map_err(|_| not_ours(format!("tensor `{name}` is missing")))?;
            if t.dtype() != dtype || t.shape() != shape {
                return Err(not_ours(format!(
                    "tensor `{name}` is {:?} {:?}, expected {dtype:?} {shape:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            Ok(t.data().to_vec())
        };
        let to_f32 = |b: Vec<u8>| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let to_i8 = |b: Vec<u8>| -> Vec<i8> { b.into_iter().map(|v| v as i8).collect() };
        let mut layers = Vec::new();
        for (i, w) in sizes.windows(2).enumerate() {
            let (inputs, outputs) = (w[0], w[1]);
            let name = |s: &str| format!("fc{}.{s}", i + 1);
            let encoding = get(&name("encoding"))?;
            // The positions of a bitmask and the count of set bits.
            let mask = |values: usize| -> Result<Vec<usize>, ModelError> {
                let rb = inputs.div_ceil(8);
                let m = tensor(&name("weight_mask"), Dtype::U8, &[outputs, rb])?;
                let pos: Vec<usize> = (0..outputs * inputs)
                    .filter(|&j| m[(j / inputs) * rb + (j % inputs) / 8] >> ((j % inputs) % 8) & 1 == 1)
                    .collect();
                if pos.len() != values {
                    return Err(not_ours(format!(
                        "`{}` has {} set bits but `{}` holds {values} values",
                        name("weight_mask"),
                        pos.len(),
                        name("weight_values")
                    )));
                }
                Ok(pos)
            };
            let values_len = || -> Result<usize, ModelError> {
                st.tensor(&name("weight_values"))
                    .map(|t| t.shape().iter().product())
                    .map_err(|_| not_ours(format!("tensor `{}` is missing", name("weight_values"))))
            };
            let scale = || tensor(&name("weight_scale"), Dtype::F32, &[outputs]).map(to_f32);
            let weights = match encoding.as_str() {
                "dense-f32" => LayerWeights::F32(to_f32(tensor(&name("weight"), Dtype::F32, &[outputs, inputs])?)),
                "dense-int8" => LayerWeights::Int8(QuantizedWeights {
                    inputs,
                    outputs,
                    q: to_i8(tensor(&name("weight_q"), Dtype::I8, &[outputs, inputs])?),
                    scale: scale()?,
                }),
                "bitmask-f32" => {
                    let nnz = values_len()?;
                    let pos = mask(nnz)?;
                    let vals = to_f32(tensor(&name("weight_values"), Dtype::F32, &[nnz])?);
                    let mut w = vec![0.0; inputs * outputs];
                    for (p, v) in pos.into_iter().zip(vals) {
                        w[p] = v;
                    }
                    LayerWeights::F32(w)
                }
                "bitmask-int8" => {
                    let nnz = values_len()?;
                    let pos = mask(nnz)?;
                    let vals = to_i8(tensor(&name("weight_values"), Dtype::I8, &[nnz])?);
                    let mut q = vec![0i8; inputs * outputs];
                    for (p, v) in pos.into_iter().zip(vals) {
                        q[p] = v;
                    }
                    LayerWeights::Int8(QuantizedWeights {
                        inputs,
                        outputs,
                        q,
                        scale: scale()?,
                    })
                }
                other => {
                    return Err(not_ours(format!(
                        "unknown weight encoding `{other}` of layer {}",
                        i + 1
                    )))
                }
            };
            layers.push(CompressedLinear {
                inputs,
                outputs,
                weights,
                bias: to_f32(tensor(&name("bias"), Dtype::F32, &[outputs])?),
            });
        }
        Ok(CompressedMlp {
            layers,
            preprocess,
            input_shape: list("input_shape")?,
            info,
        })
    }

    /// Load a compressed model file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::from_safetensors(&read_file(path)?, path)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// The metadata and tensors of safetensors bytes.
fn read_header<'a>(
    bytes: &'a [u8],
    path: &Path,
) -> Result<(HashMap<String, String>, safetensors::SafeTensors<'a>), ModelError> {
    let fmt_err = |e: safetensors::SafeTensorError| ModelError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(fmt_err)?;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(fmt_err)?;
    Ok((meta.metadata().clone().unwrap_or_default(), st))
}

/// Any model file wgtrain writes.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyModel {
    F32(Mlp),
    Compressed(CompressedMlp),
}

impl AnyModel {
    /// Read a model file of either format, by its `wgtrain.format`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::from_safetensors(&read_file(path)?, path)
    }

    pub fn from_safetensors(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        let (md, _) = read_header(bytes, path)?;
        match md.get(FORMAT_KEY).map(String::as_str) {
            Some(FORMAT_MLP) => Ok(AnyModel::F32(Mlp::from_safetensors(bytes, path)?)),
            Some(FORMAT_COMPRESSED) => Ok(AnyModel::Compressed(CompressedMlp::from_safetensors(bytes, path)?)),
            Some(other) => Err(ModelError::NotWgtrain {
                path: path.to_path_buf(),
                message: format!("unknown format `{other}` (expected `{FORMAT_MLP}` or `{FORMAT_COMPRESSED}`)"),
            }),
            None => Err(ModelError::NotWgtrain {
                path: path.to_path_buf(),
                message: format!(
                    "metadata has no `{FORMAT_KEY}`; was it written by `wgtrain train --save` or `wgtrain compress`?"
                ),
            }),
        }
    }

    pub fn inputs(&self) -> usize {
        match self {
            AnyModel::F32(m) => m.inputs(),
            AnyModel::Compressed(m) => m.inputs(),
        }
    }

    pub fn classes(&self) -> usize {
        match self {
            AnyModel::F32(m) => m.classes(),
            AnyModel::Compressed(m) => m.classes(),
        }
    }

    /// The f32 model (dequantized for a compressed one).
    pub fn to_mlp(&self) -> Mlp {
        match self {
            AnyModel::F32(m) => m.clone(),
            AnyModel::Compressed(m) => m.to_mlp(),
        }
    }
}
