//! [`Int8Mlp`]: a whole int8 model on the CPU, its rows split over the CPU
//! team.

use super::kernels::{linear_forward_i8, quantize_rows_i8, I8Isa};
use super::pack::{PackedI8Linear, MR};
use crate::data::Preprocess;
use crate::metrics::Predictions;
use crate::model::{CompressedMlp, LayerWeights, QuantizedWeights};

/// The output of [`Int8Mlp::logits`], shared by the parts of a team job
/// that write disjoint rows of it.
struct OutPtr(*mut f32);
// SAFETY: see `Int8Mlp::logits`: each part writes its own rows, and the
// job ends before the borrow of the output does.
unsafe impl Sync for OutPtr {}

/// A whole quantized MLP prepared for CPU inference.
#[derive(Debug, Clone)]
pub struct Int8Mlp {
    /// The layers packed for the int8 kernels, input first.
    pub layers: Vec<PackedI8Linear>,
    /// The preprocessing of raw inputs, applied before the first layer.
    pub preprocess: Preprocess,
    /// The kernel variant that runs ([`Int8Mlp::new`] takes the best this CPU
    /// runs).
    pub isa: I8Isa,
}

/// Rows per chunk of a forward pass over a large split.
const CHUNK: usize = 1024;

impl Int8Mlp {
    /// Pack `layers` (each layer's int8 weights and f32 bias, input first) for this CPU's best
    /// kernels.
    pub fn new(layers: &[(QuantizedWeights, Vec<f32>)], preprocess: Preprocess) -> Self {
        Int8Mlp {
            layers: layers.iter().map(|(w, b)| PackedI8Linear::pack(w, b)).collect(),
            preprocess,
            isa: I8Isa::detect(),
        }
    }

    /// Input values per example: the first layer's inputs (panics without layers).
    pub fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    /// Number of classes: the last layer's outputs (0 without layers).
    pub fn classes(&self) -> usize {
        self.layers.last().map(|l| l.outputs).unwrap_or(0)
    }

    /// Logits of `rows` raw rows (preprocessing applied here), `[rows,
    /// classes]`, split by rows over the CPU team installed on this thread
    /// (see [`crate::cpu::team::Team::install`]), one block of rows per
    /// member; serial without one.
    pub fn logits(&self, raw: &[f32], rows: usize, out: &mut [f32]) {
        let dim = self.inputs();
        let classes = self.classes();
        assert!(raw.len() >= rows * dim && out.len() >= rows * classes);
        crate::cpu::team::with_current(|team| match team {
            Some(team) if team.size() > 1 && rows >= 16 => self.logits_split(team, raw, rows, out),
            _ => self.logits_serial(raw, rows, out),
        })
    }

    /// [`Int8Mlp::logits`], one block of rows per member of `team`.
    fn logits_split(&self, team: &mut crate::cpu::Team, raw: &[f32], rows: usize, out: &mut [f32]) {
        let (dim, classes) = (self.inputs(), self.classes());
        let parts = team.size();
        let per = rows.div_ceil(parts).div_ceil(MR) * MR;
        let outp = OutPtr(out.as_mut_ptr());
        team.run(parts, &|p| {
            let outp = &outp;
            let lo = p * per;
            if lo >= rows {
                return;
            }
            let n = per.min(rows - lo);
            // SAFETY: part p writes rows lo..lo + n of `out` only, disjoint
            // from every other part's, inside `out` (asserted in `logits`); `out`
            // outlives `run`, which returns after every part.
            let o = unsafe { std::slice::from_raw_parts_mut(outp.0.add(lo * classes), n * classes) };
            self.logits_serial(&raw[lo * dim..(lo + n) * dim], n, o);
        });
    }

    fn logits_serial(&self, raw: &[f32], rows: usize, out: &mut [f32]) {
        let dim = self.inputs();
        let mut x: Vec<f32> = vec![0.0; rows * dim];
        self.preprocess.apply_into(&raw[..rows * dim], &mut x);
        let nl = self.layers.len();
        let mut xq = Vec::new();
        let mut xs = vec![0.0; rows];
        for (l, layer) in self.layers.iter().enumerate() {
            xq.resize(rows * layer.stride, 0);
            quantize_rows_i8(&x, rows, layer.inputs, layer.stride, &mut xq, &mut xs);
            if l + 1 == nl {
                linear_forward_i8(self.isa, layer, &xq, &xs, rows, out, layer.outputs, false);
            } else {
                x.resize(rows * layer.outputs, 0.0);
                linear_forward_i8(self.isa, layer, &xq, &xs, rows, &mut x, layer.outputs, true);
            }
        }
    }

    /// Loss and arg-max of raw rows with labels, as
    /// [`crate::cpu::predict_rows`] computes them for f32 models.
    pub fn predict_rows(&self, features: &[f32], labels: &[u32]) -> Predictions {
        let dim = self.inputs();
        let classes = self.classes();
        let n = labels.len();
        let mut out = Predictions {
            loss_sum: 0.0,
            classes: vec![0; n],
        };
        let mut logits = vec![0.0; CHUNK * classes];
        for start in (0..n).step_by(CHUNK) {
            let rows = CHUNK.min(n - start);
            self.logits(&features[start * dim..(start + rows) * dim], rows, &mut logits);
            out.loss_sum += crate::cpu::kernels::softmax_xent_eval(
                &logits,
                &labels[start..start + rows],
                &mut out.classes[start..start + rows],
                rows,
                classes,
            );
        }
        out
    }
}

impl CompressedMlp {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::int8::pseudo;

    #[test]
    fn split_logits_equal_serial_logits_bitwise() {
        // Rows split over the CPU team (on a machine with 2 or more cores)
        // against one pass on this thread, with row counts that do and do
        // not divide evenly into blocks.
        let layers = [
            (QuantizedWeights::quantize(&pseudo(90 * 40, 1), 90, 40), pseudo(40, 2)),
            (QuantizedWeights::quantize(&pseudo(40 * 7, 3), 40, 7), pseudo(7, 4)),
        ];
        let p = Preprocess {
            kind: crate::data::Normalize::Scale,
            scale: 0.5,
            offset: 0.1,
        };
        let mlp = Int8Mlp::new(&layers, p);
        for rows in [16, 37, 100] {
            let raw = pseudo(rows * 90, 5 + rows as u32);
            let mut split = vec![f32::NAN; rows * 7];
            let mut serial = vec![f32::NAN; rows * 7];
            mlp.logits(&raw, rows, &mut split);
            mlp.logits_serial(&raw, rows, &mut serial);
            assert_eq!(
                split.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                serial.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "rows {rows}"
            );
        }
    }
}
