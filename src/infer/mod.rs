//! Inference: class probabilities of a trained model for raw inputs, with
//! buffers allocated once and latency at batch 1 as the first concern.
//!
//! A [`Predictor`] takes raw feature rows (the same values the data loaders
//! produce: 0..=255 pixels for images) and applies the model's
//! [`Preprocess`] itself, so every caller (the `predict` command, the HTTP
//! server, the benchmarks) feeds it the same thing. [`CpuPredictor`] runs
//! an f32 [`Mlp`] on the [`kernels`], its large layers split by panels
//! over a [`crate::cpu::Team`] of threads;
//! [`Int8Predictor`] runs a compressed model on the int8 engine of
//! [`int8`]; [`ensemble::EnsemblePredictor`] averages the probabilities of
//! one predictor per member of an ensemble; [`cpu_predictor`] picks one for
//! any model file; a GPU predictor implements the same trait. [`compressed`] evaluates a
//! compressed model over a split. [`input`] turns images, IDX files and CSV
//! files into raw rows. `crate::bench::bench_inference` measures a
//! predictor.
//!
//! Models come from [`crate::model`]; nothing here makes or changes one.

pub mod compressed;
pub mod ensemble;
pub mod input;
pub mod int8;
pub mod kernels;

use std::time::Duration;

use serde::Serialize;

use crate::cpu::team::{self, Team};
use crate::data::Preprocess;
use crate::error::InferError;
use crate::model::{Activations, AnyModel, CompressedMlp, Mlp};
use int8::Int8Mlp;
use kernels::{forward_panels, AlignedBuf, Isa, PackedLinear, Rows};

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

    /// Whether a forward pass mostly waits on another device (a GPU) rather
    /// than computing on the calling thread.
    fn waits_on_device(&self) -> bool {
        false
    }

    /// [`Predictor::probabilities_into`] into a new vector.
    fn probabilities(&mut self, raw: &[f32]) -> Result<Vec<f32>, InferError> {
        let rows = raw.len() / self.inputs().max(1);
        let mut out = vec![0.0; rows * self.classes()];
        self.probabilities_into(raw, &mut out)?;
        Ok(out)
    }
}

/// Multiply-adds of one call's layer below which it runs on the calling
/// thread only: handing units to a helper costs a few hundred nanoseconds.
const PARALLEL_MIN_MACS: usize = 100_000;

/// How long the predictor's helper threads spin after their last unit
/// before they park (see [`crate::cpu::team`]): long enough to catch the
/// next request of a steady stream, short enough that an idle server
/// costs nothing.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(200);

/// The CPU predictor: weights packed for [`kernels`] and activation buffers
/// for `capacity` rows, allocated once; large layers split by panels over a
/// [`Team`] of persistent threads. Larger batches run in chunks of
/// `capacity` rows.
pub struct CpuPredictor {
    isa: Isa,
    layers: Vec<PackedLinear>,
    preprocess: Preprocess,
    input_shape: Vec<usize>,
    capacity: usize,
    /// `acts[0]` holds the preprocessed input (`[capacity, inputs]`),
    /// `acts[l]` the output of layer `l - 1` (`[capacity, padded outputs]`,
    /// cache-line aligned); the last holds the logits.
    acts: Vec<AlignedBuf>,
    team: Team,
}

impl CpuPredictor {
    /// Pack `model` for inference with buffers for batches of up to
    /// `capacity` rows (at least 1), on one thread per core.
    pub fn new(model: &Mlp, capacity: usize) -> Self {
        Self::with_threads(model, capacity, 0, DEFAULT_SPIN)
    }

    /// [`CpuPredictor::new`] on `threads` threads (the caller and `threads -
    /// 1` helpers; 0: one per core), whose helpers spin for `spin` after their
    /// last unit before they park.
    pub fn with_threads(model: &Mlp, capacity: usize, threads: usize, spin: Duration) -> Self {
        Self::with_isa(model, capacity, threads, spin, Isa::detect())
    }

    /// [`CpuPredictor::with_threads`] with a given kernel variant (for tests
    /// of the fallbacks); an unsupported one falls back to the portable loop.
    pub fn with_isa(model: &Mlp, capacity: usize, threads: usize, spin: Duration, isa: Isa) -> Self {
        let capacity = capacity.max(1);
        let layers: Vec<PackedLinear> = model.layers.iter().map(PackedLinear::pack).collect();
        let mut acts = vec![AlignedBuf::zeros(capacity * model.inputs())];
        acts.extend(layers.iter().map(|l| AlignedBuf::zeros(capacity * l.padded_outputs())));
        let largest = layers.iter().map(|l| l.macs()).max().unwrap_or(0);
        // Helpers only where some layer is large enough to split at batch 1
        // or at `capacity` rows.
        let threads = if largest * capacity >= PARALLEL_MIN_MACS {
            threads
        } else {
            1
        };
        CpuPredictor {
            isa: if isa.supported() { isa } else { Isa::Portable },
            layers,
            preprocess: model.preprocess,
            input_shape: model.input_shape.clone(),
            capacity,
            acts,
            team: Team::new(threads, spin),
        }
    }

    /// Forward `rows <= capacity` raw rows; the logits land in the last
    /// activation buffer, rows `padded classes` apart.
    fn forward_chunk(&mut self, raw: &[f32], rows: usize) {
        let dim = self.inputs();
        self.preprocess
            .apply_into(&raw[..rows * dim], &mut self.acts[0].as_mut_slice()[..rows * dim]);
        let nl = self.layers.len();
        let mut xs = dim;
        for (l, layer) in self.layers.iter().enumerate() {
            let (lo, hi) = self.acts.split_at_mut(l + 1);
            let x = lo[l].as_slice();
            let ys = layer.padded_outputs();
            let y = hi[0].as_mut_slice();
            kernels::check(layer, x.len(), xs, rows, y.len(), ys);
            let io = Rows {
                x: x.as_ptr(),
                xs,
                rows,
                y: y.as_mut_ptr(),
                ys,
                relu: l + 1 < nl,
            };
            if layer.macs() * rows >= PARALLEL_MIN_MACS {
                // SAFETY: `isa` is supported (checked at construction), the
                // extents were checked above, `y` is borrowed uniquely and
                // `forward` returns only when every unit is done.
                unsafe { forward_on_team(&mut self.team, self.isa, layer, io) };
            } else {
                // SAFETY: as above.
                unsafe { kernels::forward_panels(self.isa, layer, 0, layer.panels, io) };
            }
            xs = ys;
        }
    }
}

/// Panels per unit of a layer split over the team (64 outputs): small
/// enough to balance two cores on a 500-output layer, large enough for the
/// 4-panel tile.
const UNIT_PANELS: usize = 4;

/// One call's rows, shared with the team's helpers.
struct SharedRows(Rows);

impl SharedRows {
    /// The rows (a method, so a closure captures the whole wrapper, not
    /// its field).
    fn rows(&self) -> Rows {
        self.0
    }
}

// SAFETY: the pointers in `Rows` are only dereferenced through
// `forward_panels` on disjoint panel ranges (disjoint columns of `y`; `x`
// is only read), inside a team job that ends before the memory does (see
// `forward_on_team`).
unsafe impl Sync for SharedRows {}

/// Run `layer` over `io`, split by units of whole panels over `team`.
/// Which thread computes a panel never changes its values.
///
/// # Safety
/// `isa` runs on this CPU, and `io` satisfies the contract of
/// [`forward_panels`] for all of `layer`'s panels; the memory of `io`
/// stays valid until this returns (it waits for every unit).
unsafe fn forward_on_team(team: &mut Team, isa: Isa, layer: &PackedLinear, io: Rows) {
    let unit_panels = UNIT_PANELS.max(layer.panels.div_ceil(team::MAX_UNITS));
    let units = layer.panels.div_ceil(unit_panels);
    let shared = SharedRows(io);
    team.run(units, &|u| {
        let p0 = u * unit_panels;
        let p1 = (p0 + unit_panels).min(layer.panels);
        // SAFETY: the caller's contract, on panels p0..p1, which no other
        // unit touches.
        unsafe { forward_panels(isa, layer, p0, p1, shared.rows()) };
    });
}

/// Check `raw` and `out` against a predictor's sizes; the number of rows.
fn check_sizes(p: &dyn Predictor, raw: &[f32], out: &[f32]) -> Result<usize, InferError> {
    let (dim, classes) = (p.inputs(), p.classes());
    if dim == 0 || !raw.len().is_multiple_of(dim) {
        return Err(InferError::InputSize {
            source_name: "input".into(),
            expected: dim,
            found: raw.len() % dim.max(1),
            shape: p.input_shape().to_vec(),
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
    Ok(rows)
}

impl Predictor for CpuPredictor {
    fn name(&self) -> String {
        format!("cpu f32 ({}, {} threads)", self.isa.name(), self.team.size())
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
        let rows = check_sizes(self, raw, out)?;
        let (dim, classes) = (self.inputs(), self.classes());
        let stride = self.layers.last().map(|l| l.padded_outputs()).unwrap_or(0);
        let mut start = 0;
        while start < rows {
            let n = self.capacity.min(rows - start);
            self.forward_chunk(&raw[start * dim..(start + n) * dim], n);
            let logits = self.acts[self.layers.len()].as_slice();
            let dst = &mut out[start * classes..(start + n) * classes];
            for (d, l) in dst.chunks_exact_mut(classes).zip(logits.chunks_exact(stride)) {
                d.copy_from_slice(&l[..classes]);
            }
            crate::cpu::kernels::softmax_rows(dst, classes);
            start += n;
        }
        Ok(())
    }
}

/// The int8 CPU predictor: [`Int8Mlp`] logits (int8 weights, activations
/// quantized per row, exact integer sums) and a softmax. A row's answer
/// does not depend on the batch: its activation scale is its own and the
/// integer sums are exact.
pub struct Int8Predictor {
    engine: Int8Mlp,
    input_shape: Vec<usize>,
    team: Team,
}

impl Int8Predictor {
    /// The predictor of a compressed model whose layers all hold int8
    /// weights, on one thread per core; `None` otherwise.
    pub fn new(model: &CompressedMlp) -> Option<Self> {
        Self::with_threads(model, 0, DEFAULT_SPIN)
    }

    /// [`Int8Predictor::new`] on `threads` threads (0: one per core),
    /// whose helpers spin for `spin` after their last block of rows.
    pub fn with_threads(model: &CompressedMlp, threads: usize, spin: Duration) -> Option<Self> {
        Some(Int8Predictor {
            engine: model.int8_engine()?,
            input_shape: model.input_shape.clone(),
            team: Team::new(threads, spin),
        })
    }

    /// The engine the predictor runs.
    pub fn engine(&self) -> &Int8Mlp {
        &self.engine
    }
}

impl Predictor for Int8Predictor {
    fn name(&self) -> String {
        format!("cpu int8 ({}, {} threads)", self.engine.isa.name(), self.team.size())
    }

    fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    fn inputs(&self) -> usize {
        self.engine.inputs()
    }

    fn classes(&self) -> usize {
        self.engine.classes()
    }

    fn probabilities_into(&mut self, raw: &[f32], out: &mut [f32]) -> Result<(), InferError> {
        let rows = check_sizes(self, raw, out)?;
        if rows == 0 {
            return Ok(());
        }
        let engine = &self.engine;
        self.team.install(|| engine.logits(raw, rows, out));
        crate::cpu::kernels::softmax_rows(out, self.classes());
        Ok(())
    }
}

/// The CPU predictor for any model file: [`Int8Predictor`] for a compressed
/// model with int8 weights and int8 activations, else [`CpuPredictor`] on
/// the f32 (for a compressed model, dequantized) weights; for an ensemble,
/// an [`ensemble::EnsemblePredictor`] over one of those per member.
pub fn cpu_predictor(
    model: &AnyModel,
    capacity: usize,
    threads: usize,
    spin: Duration,
) -> Result<Box<dyn Predictor>, InferError> {
    Ok(match model {
        AnyModel::F32(m) => Box::new(CpuPredictor::with_threads(m, capacity, threads, spin)),
        AnyModel::Compressed(c) => match (c.info.activations, Int8Predictor::with_threads(c, threads, spin)) {
            (Activations::Int8, Some(p)) => Box::new(p),
            _ => Box::new(CpuPredictor::with_threads(&c.to_mlp(), capacity, threads, spin)),
        },
        AnyModel::Ensemble(e) => {
            let members = e
                .members()
                .iter()
                .map(|m| cpu_predictor(&m.model, capacity, threads, spin))
                .collect::<Result<Vec<_>, _>>()?;
            Box::new(ensemble::EnsemblePredictor::new(members)?)
        }
    })
}

/// One class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassProbability {
    /// The class index.
    pub class: usize,
    /// The class's name, when the model names its classes (see
    /// [`Prediction::name_classes`]); left out of JSON when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its probability, in `[0, 1]` (for an ensemble, the mean of the
    /// members').
    pub probability: f32,
}

/// The prediction for one input row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The most probable class (the lowest index on ties).
    pub class: usize,
    /// The name of [`Self::class`], when the model names its classes;
    /// left out of JSON when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Probability of every class.
    pub probabilities: Vec<f32>,
    /// The `k` most probable classes, most probable first.
    pub top_k: Vec<ClassProbability>,
}

impl Prediction {
    /// Set the name of the class and of each top-k class from `names`
    /// (one per class, in class order); an empty list leaves them `None`.
    pub fn name_classes(&mut self, names: &[String]) {
        self.name = names.get(self.class).cloned();
        for c in &mut self.top_k {
            c.name = names.get(c.class).cloned();
        }
    }
}

/// The `k` most probable classes of one row, most probable first (the lower
/// index first on ties).
pub fn top_k(probabilities: &[f32], k: usize) -> Vec<ClassProbability> {
    let mut v: Vec<ClassProbability> = probabilities
        .iter()
        .enumerate()
        .map(|(class, &probability)| ClassProbability {
            class,
            name: None,
            probability,
        })
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
            name: None,
            probabilities: p.to_vec(),
            top_k: top_k(p, k),
        })
        .collect()
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
    fn split_over_threads_and_isas_gives_the_same_bits() {
        let p = Preprocess {
            kind: crate::data::Normalize::Scale,
            scale: 1.0 / 255.0,
            offset: 0.0,
        };
        // 300 x 130 = 39,000 multiply-adds per row: split over the team from
        // 3 rows; 130 outputs are 9 panels, 3 units, the last one partial.
        let m = Mlp::new(&[300, 130, 40, 10], 9, p, vec![300]).unwrap();
        let rows = 23;
        let raw: Vec<f32> = (0..rows * 300).map(|i| ((i * 7919) % 256) as f32).collect();
        let spin = Duration::from_micros(50);
        let fused = cfg!(any(target_arch = "aarch64", target_feature = "fma"));
        let mut want: Option<Vec<f32>> = None;
        for isa in [Isa::Avx512, Isa::Avx2Fma, Isa::Portable] {
            if !isa.supported() || (isa == Isa::Portable && !fused && want.is_some()) {
                continue;
            }
            for threads in [1, 2, 3] {
                // Capacity 5: chunks of 5 rows, the last partial.
                let mut pr = CpuPredictor::with_isa(&m, 5, threads, spin, isa);
                let batch = pr.probabilities(&raw).unwrap();
                for r in 0..rows {
                    let one = pr.probabilities(&raw[r * 300..(r + 1) * 300]).unwrap();
                    assert_eq!(one, batch[r * 10..(r + 1) * 10], "{isa:?}, {threads} threads, row {r}");
                }
                match &want {
                    Some(w) => assert_eq!(&batch, w, "{isa:?}, {threads} threads"),
                    None => want = Some(batch),
                }
            }
        }
        let close = crate::cpu::probabilities(&m, &raw);
        for (g, w) in want.unwrap().iter().zip(&close) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
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
