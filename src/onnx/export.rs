//! A wgtrain model as the nodes of an ONNX graph, computed as
//! `wgtrain predict` computes it on the CPU:
//!
//! - Preprocessing is kept as `Mul` and `Add` nodes on the raw input, not
//!   folded into the first layer: folding changes the rounding of every
//!   first-layer product, and for int8 activations it would change the
//!   values that are quantized; kept, the graph does the operations of
//!   [`crate::data::Preprocess::apply`] in their order, and the two
//!   scalars stay visible (and in the metadata) for anyone who feeds the
//!   graph preprocessed values.
//! - An f32 layer is `Gemm(x, W, b, transB=1)` on the `[out, in]` weight,
//!   then `Relu` but after the last. A pruned layer is the same dense
//!   `Gemm` with its zeros.
//! - An int8 layer whose model keeps f32 activations (or a model with
//!   some f32 layers, which predict runs on the dequantized weights) is
//!   `DequantizeLinear` (per channel, axis 0, zero points 0) on the int8
//!   `[out, in]` weight, feeding the same `Gemm`.
//! - A model of int8 layers with int8 activations (the int8 engine of
//!   [`crate::infer::int8`]) quantizes each row of activations as the
//!   engine does (`scale = max |x| / 127`, `q = clip(round(x * (127 /
//!   max)), -127, 127)`, ties to even) with `Abs`, `ReduceMax`, `Div`,
//!   `Mul`, `Round` and `Clip`, multiplies the quantized values by the int8
//!   weight (an int8 `[in, out]` initializer, `Cast` to f32) with `MatMul`,
//!   and rescales the sum as [`crate::infer::int8::dequantize_acc`] does:
//!   `acc * (x_scale * w_scale) + bias`. The products and sums are of whole
//!   numbers, exact in f32 while a sum stays below 2^24, which
//!   `127 * 127 * inputs` does up to 1040 inputs per layer (wider layers
//!   in practice too), so the f32 sum is the engine's exact i32 sum
//!   converted to f32. `MatMulInteger` (int8 x int8 -> int32) computes the
//!   same and tract runs it exactly, but ONNX Runtime's graph optimizations
//!   fuse `MatMulInteger -> Cast -> Mul` into a kernel that gives other
//!   results for int8 activations (88% of the Fashion-MNIST test set the
//!   same class, against 100% with the optimizations off), so the graph
//!   avoids that pattern. `DynamicQuantizeLinear` is not used either: it
//!   quantizes asymmetrically to uint8 with one scale per tensor, the
//!   engine symmetrically with one scale per row.
//! - An ensemble is one subgraph per member (value names prefixed `mN.`),
//!   each member's `Softmax`, then their sum in member order divided by
//!   the count, as [`crate::infer::ensemble`] averages.

use super::graph::{Attr, GraphBuilder};
use crate::data::Preprocess;
use crate::model::int8::QMAX;
use crate::model::{Activations, AnyModel, CompressedMlp, LayerWeights, Mlp, QuantizedWeights};

/// The weights of one layer as the graph uses them.
enum Weights<'a> {
    /// f32 `[out, in]`, dense (pruned weights are zeros).
    F32(&'a [f32]),
    /// int8 `[out, in]`, dequantized in the graph, f32 activations.
    Int8F32Activations(&'a QuantizedWeights),
    /// int8 `[out, in]` with int8 activations (integer product).
    Int8Full(&'a QuantizedWeights),
}

/// One layer of a model to export.
struct Layer<'a> {
    inputs: usize,
    outputs: usize,
    weights: Weights<'a>,
    bias: &'a [f32],
}

/// The layers and preprocessing of one (non-ensemble) model.
struct Plain<'a> {
    preprocess: Preprocess,
    layers: Vec<Layer<'a>>,
}

fn plain_f32(m: &Mlp) -> Plain<'_> {
    Plain {
        preprocess: m.preprocess,
        layers: m
            .layers
            .iter()
            .map(|l| Layer {
                inputs: l.inputs,
                outputs: l.outputs,
                weights: Weights::F32(&l.weight),
                bias: &l.bias,
            })
            .collect(),
    }
}

fn plain_compressed(c: &CompressedMlp) -> Plain<'_> {
    // As `infer::cpu_predictor` chooses: the int8 engine only when every
    // layer is int8 and the activations are int8.
    let full = c.info.activations == Activations::Int8 && c.is_int8();
    Plain {
        preprocess: c.preprocess,
        layers: c
            .layers
            .iter()
            .map(|l| Layer {
                inputs: l.inputs,
                outputs: l.outputs,
                weights: match &l.weights {
                    LayerWeights::F32(w) => Weights::F32(w),
                    LayerWeights::Int8(q) if full => Weights::Int8Full(q),
                    LayerWeights::Int8(q) => Weights::Int8F32Activations(q),
                },
                bias: &l.bias,
            })
            .collect(),
    }
}

/// The weights `[out, in]` transposed to `[in, out]`.
fn transposed(q: &[i8], inputs: usize, outputs: usize) -> Vec<i8> {
    let mut t = vec![0i8; q.len()];
    for o in 0..outputs {
        for i in 0..inputs {
            t[i * outputs + o] = q[o * inputs + i];
        }
    }
    t
}

/// Wires a model into `g`.
pub(crate) struct Exporter<'g> {
    pub(crate) g: &'g mut GraphBuilder,
    pub(crate) opset: i64,
}

impl Exporter<'_> {
    /// The logits of `model` (not an ensemble) on the raw input `x`, value
    /// names starting with `prefix`; the last node writes `out`.
    fn plain(&mut self, p: &Plain, x: &str, prefix: &str, out: &str) -> String {
        let g = &mut *self.g;
        let scale = g.scalar(&format!("{prefix}input_scale"), p.preprocess.scale);
        let offset = g.scalar(&format!("{prefix}input_offset"), p.preprocess.offset);
        let scaled = g.node("Mul", &[x, &scale], vec![], &format!("{prefix}scaled"));
        let mut h = g.node("Add", &[&scaled, &offset], vec![], &format!("{prefix}preprocessed"));
        let n = p.layers.len();
        for (k, l) in p.layers.iter().enumerate() {
            let name = format!("{prefix}fc{}", k + 1);
            let last = k + 1 == n;
            let y = self.layer(l, &h, &name, if last { Some(out) } else { None });
            h = if last {
                y
            } else {
                self.g.node("Relu", &[&y], vec![], &format!("{name}.relu"))
            };
        }
        h
    }

    /// One layer (no ReLU) on `h`; its output is `out` when given.
    fn layer(&mut self, l: &Layer, h: &str, name: &str, out: Option<&str>) -> String {
        let g = &mut *self.g;
        let bias = g.f32s(&format!("{name}.bias"), &[l.outputs], l.bias);
        let gemm = |g: &mut GraphBuilder, w: &str| {
            let inputs = [h, w, bias.as_str()];
            let attrs = vec![Attr::Int("transB", 1)];
            match out {
                Some(o) => g.node_into("Gemm", &inputs, attrs, o),
                None => g.node("Gemm", &inputs, attrs, name),
            }
        };
        match l.weights {
            Weights::F32(w) => {
                let w = g.f32s(&format!("{name}.weight"), &[l.outputs, l.inputs], w);
                gemm(g, &w)
            }
            Weights::Int8F32Activations(q) => {
                let wq = g.i8s(&format!("{name}.weight_int8"), &[l.outputs, l.inputs], &q.q);
                let ws = g.f32s(&format!("{name}.weight_scale"), &[l.outputs], &q.scale);
                let zp = g.i8s(&format!("{name}.weight_zero_point"), &[l.outputs], &vec![0; l.outputs]);
                let w = g.node(
                    "DequantizeLinear",
                    &[&wq, &ws, &zp],
                    vec![Attr::Int("axis", 0)],
                    &format!("{name}.weight"),
                );
                gemm(g, &w)
            }
            Weights::Int8Full(q) => self.int8_layer(l, q, h, name, &bias, out),
        }
    }

    /// The int8 engine's layer: per-row quantization of `h`, the integer
    /// product, the f32 epilogue (see the module docs).
    fn int8_layer(
        &mut self,
        l: &Layer,
        q: &QuantizedWeights,
        h: &str,
        name: &str,
        bias: &str,
        out: Option<&str>,
    ) -> String {
        let opset = self.opset;
        let g = &mut *self.g;
        let v = |what: &str| format!("{name}.{what}");
        let abs = g.node("Abs", &[h], vec![], &v("abs"));
        // ReduceMax took its axes as an attribute until opset 18, as an
        // input since.
        let max = if opset >= 18 {
            let axes = g.i64s(&v("axes"), &[1], &[1]);
            g.node("ReduceMax", &[&abs, &axes], vec![Attr::Int("keepdims", 1)], &v("max"))
        } else {
            g.node(
                "ReduceMax",
                &[&abs],
                vec![Attr::Ints("axes", vec![1]), Attr::Int("keepdims", 1)],
                &v("max"),
            )
        };
        let qmax = g.scalar(&v("qmax"), QMAX);
        // A row of zeros (all activations dead) has max 0: the engine gives
        // it scale 0 and zeros; here 127 / max(max, tiny) keeps the
        // reciprocal finite, so the zeros quantize to zeros and the scale
        // (max / 127, from the unguarded max) is 0 as in the engine.
        let tiny = g.scalar(&v("tiny"), 1e-30);
        let guarded = g.node("Max", &[&max, &tiny], vec![], &v("max_guarded"));
        let inv = g.node("Div", &[&qmax, &guarded], vec![], &v("inv_scale"));
        let x_scale = g.node("Div", &[&max, &qmax], vec![], &v("x_scale"));
        let scaled = g.node("Mul", &[h, &inv], vec![], &v("x_scaled"));
        let rounded = g.node("Round", &[&scaled], vec![], &v("x_rounded"));
        let lo = g.scalar(&v("qmin"), -QMAX);
        let clipped = g.node("Clip", &[&rounded, &lo, &qmax], vec![], &v("x_clipped"));
        let wt = g.i8s(
            &v("weight_int8_t"),
            &[l.inputs, l.outputs],
            &transposed(&q.q, l.inputs, l.outputs),
        );
        let wtf = g.node("Cast", &[&wt], vec![Attr::Int("to", 1)], &v("weight_int8_values"));
        let accf = g.node("MatMul", &[&clipped, &wtf], vec![], &v("acc"));
        let ws = g.f32s(&v("weight_scale"), &[l.outputs], &q.scale);
        let s = g.node("Mul", &[&x_scale, &ws], vec![], &v("scale"));
        let y = g.node("Mul", &[&accf, &s], vec![], &v("unbiased"));
        match out {
            Some(o) => g.node_into("Add", &[&y, bias], vec![], o),
            None => g.node("Add", &[&y, bias], vec![], name),
        }
    }

    /// The model on the graph input `x`: its logits (or, with
    /// `probabilities` or for an ensemble, its probabilities) written to
    /// `out`.
    pub(crate) fn model(&mut self, model: &AnyModel, x: &str, probabilities: bool, out: &str) {
        let softmax = |g: &mut GraphBuilder, logits: &str, o: Option<&str>| {
            let attrs = vec![Attr::Int("axis", -1)];
            match o {
                Some(o) => g.node_into("Softmax", &[logits], attrs, o),
                None => g.node("Softmax", &[logits], attrs, "probabilities"),
            }
        };
        match model {
            AnyModel::F32(_) | AnyModel::Compressed(_) => {
                let p = match model {
                    AnyModel::Compressed(c) => plain_compressed(c),
                    AnyModel::F32(m) => plain_f32(m),
                    AnyModel::Ensemble(_) => return,
                };
                if probabilities {
                    let logits = self.plain(&p, x, "", "logits");
                    softmax(self.g, &logits, Some(out));
                } else {
                    self.plain(&p, x, "", out);
                }
            }
            AnyModel::Ensemble(e) => {
                let mut sum: Option<String> = None;
                for (i, m) in e.members().iter().enumerate() {
                    let p = match &m.model {
                        AnyModel::F32(f) => plain_f32(f),
                        AnyModel::Compressed(c) => plain_compressed(c),
                        // Ensembles do not nest (checked by `Ensemble::new`).
                        AnyModel::Ensemble(_) => continue,
                    };
                    let prefix = format!("m{i}.");
                    let logits = self.plain(&p, x, &prefix, &format!("{prefix}logits"));
                    let probs = softmax(self.g, &logits, Some(&format!("{prefix}probabilities")));
                    sum = Some(match sum {
                        None => probs,
                        Some(s) => self.g.node("Add", &[&s, &probs], vec![], "sum"),
                    });
                }
                let n = self.g.scalar("members", e.members().len() as f32);
                let sum = sum.unwrap_or_default();
                self.g.node_into("Div", &[&sum, &n], vec![], out);
            }
        }
    }
}
