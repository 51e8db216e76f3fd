//! The CPU backend: the fallback when there is no GPU and the reference every
//! GPU kernel is tested against. It never touches wgpu.

pub mod kernels;
pub mod optim;
pub mod team;

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use crate::backend::{
    check_order, check_shard, check_steps, steps_per_epoch, Backend, BackendState, Distillation, LayerSlots, Precision,
    Predictions, Replica, SplitKind, StepStats, TrainSpec,
};
use crate::data::{Dataset, Preprocess};
use crate::error::{Error, Result};
use crate::model::Mlp;
use crate::optim::draw::{dropout_stream, Dropout, Key, Shift, SHIFT_STREAM};
use crate::optim::{Constraint, Optimizer, StepHyper};

pub use team::{cores, device_name, Team};

/// Rows per forward pass when evaluating.
const EVAL_CHUNK: usize = 1024;

/// Parameters, data and every buffer a step needs, allocated once.
pub struct CpuBackend {
    model: Mlp,
    data: Arc<Dataset>,
    /// The training images as bytes when every value fits one (IDX data):
    /// a batch gather then reads a quarter of the memory.
    train_u8: Option<Vec<u8>>,
    batch: usize,
    order: Vec<u32>,
    /// `acts[0]` is the preprocessed input batch, `acts[l+1]` the output of
    /// layer `l` (post-ReLU for hidden layers, logits for the last).
    acts: Vec<Vec<f32>>,
    /// `grads[l]` is the gradient of the loss with respect to `acts[l]`
    /// (`grads[0]` is unused).
    grads: Vec<Vec<f32>>,
    labels: Vec<u32>,
    stats: StepStats,
    /// The threads of the split products.
    team: Team,
    optimizer: Optimizer,
    /// Per layer, the gradient buffers and optimizer state of an unfused
    /// optimizer (empty for plain SGD).
    opt_state: Vec<optim::LayerState>,
    /// Updates applied so far (torch's `t` is this plus one at a step).
    updates: u64,
    /// Enforced after every update.
    constraint: Option<Constraint>,
    /// Label smoothing of the training loss (0: none).
    smoothing: f32,
    /// The largest global gradient norm of a step (`None`: no clipping);
    /// a clipped step runs [`CpuBackend::step_clipped`].
    clip: Option<f32>,
    /// Keys the step's random draws.
    seed: u64,
    /// Dropout after each hidden layer in training steps.
    dropout: Option<Dropout>,
    /// Random translation of the training images.
    shift: Option<Shift>,
    /// The teachers when the student trains by distillation.
    distill: Option<CpuDistill>,
    /// How the training products round their operands.
    precision: Precision,
}

/// The teachers of a distilling backend and their buffers.
struct CpuDistill {
    teachers: Vec<Mlp>,
    /// Per teacher, its own preprocessed input batch when its
    /// preprocessing differs from the student's (else it reads the
    /// student's `acts[0]`).
    inputs: Vec<Option<Vec<f32>>>,
    /// Per teacher, the output of each layer (the logits last).
    acts: Vec<Vec<Vec<f32>>>,
    /// The mean of the teachers' probabilities at the temperature.
    probs: Vec<f32>,
    temperature: f32,
    alpha: f32,
    /// Every training example's probabilities, read instead of running
    /// the teachers.
    cached: Option<Arc<Vec<f32>>>,
    /// Where the step's batch starts in the epoch's order.
    start: usize,
}

/// Where a training batch's raw rows come from, and the shift drawn for
/// its step.
struct Source<'a> {
    features: &'a [f32],
    /// The features as bytes, when they all fit one.
    bytes: Option<&'a [u8]>,
    shift: Option<&'a Shift>,
    key: Key,
}

impl Source<'_> {
    /// Rows `idx`, shifted when there is a shift, preprocessed by `p`, into `x`.
    fn gather(&self, idx: &[u32], dim: usize, p: Preprocess, x: &mut [f32]) {
        match (self.shift, self.bytes) {
            (Some(sh), Some(b)) => kernels::gather_rows_shifted(b, idx, dim, p.scale, p.offset, x, sh, self.key),
            (Some(sh), None) => {
                kernels::gather_rows_shifted(self.features, idx, dim, p.scale, p.offset, x, sh, self.key)
            }
            (None, Some(b)) => kernels::gather_rows_u8(b, idx, dim, p.scale, p.offset, x),
            (None, None) => kernels::gather_rows(self.features, idx, dim, p.scale, p.offset, x),
        }
    }
}

impl CpuBackend {
    /// A backend on every core.
    pub fn new(model: Mlp, data: Arc<Dataset>, spec: TrainSpec) -> Result<Self> {
        Self::with_threads(model, data, spec, 0)
    }

    /// A backend on `threads` threads (0: one per core).
    pub fn with_threads(model: Mlp, data: Arc<Dataset>, spec: TrainSpec, threads: usize) -> Result<Self> {
        check_fit(&model, &data)?;
        spec.check()?;
        // The model is allocated already: what is still to come must fit.
        let mut need = crate::resources::cpu_training(&model.sizes(), spec.batch, spec.optimizer.state_slots());
        need.parts.retain(|(part, _)| *part != "parameters");
        crate::resources::check(
            &need,
            crate::resources::host_available(),
            "use narrower hidden layers, a smaller batch, or an optimizer with less state (SGD keeps none)",
        )?;
        let regular = spec.regular;
        let shift = Shift::new(regular.shift, &data.shape)?;
        let batch = spec.batch;
        let clip = spec.regular.clip_grad_norm;
        let sizes = model.sizes();
        let acts = sizes.iter().map(|&s| vec![0.0; s * batch]).collect();
        let grads = sizes.iter().map(|&s| vec![0.0; s * batch]).collect();
        // Clipping needs every gradient before any update, so even plain SGD
        // keeps gradient buffers then.
        let opt_state = if spec.optimizer.is_fused() && clip.is_none() {
            Vec::new()
        } else {
            model
                .layers
                .iter()
                .map(|l| optim::LayerState::new(&spec.optimizer, l.weight.len(), l.bias.len()))
                .collect()
        };
        let train_u8 = data
            .is_u8()
            .then(|| data.train.features.iter().map(|&v| v as u8).collect());
        Ok(CpuBackend {
            model,
            data,
            batch,
            order: Vec::new(),
            acts,
            grads,
            labels: vec![0; batch],
            stats: StepStats::default(),
            team: Team::new(threads, team::TRAIN_SPIN),
            optimizer: spec.optimizer,
            opt_state,
            updates: 0,
            constraint: None,
            train_u8,
            smoothing: spec.regular.label_smoothing,
            clip,
            seed: spec.seed,
            dropout: Dropout::new(regular.dropout),
            shift,
            distill: None,
            precision: spec.precision,
        })
    }

    /// Run `f` with the backend's team installed on this thread, so the
    /// kernels' products split over it.
    fn on_team<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let mut team = std::mem::take(&mut self.team);
        let r = team.install(|| f(self));
        self.team = team;
        r
    }

    /// Gather batch `index` of the epoch into `acts[0]` (preprocessed) and
    /// its labels into `labels`; returns its rows. A distilling backend
    /// also gathers the same (shifted) rows for each teacher whose
    /// preprocessing differs from the student's.
    fn load_batch(&mut self, index: usize) -> usize {
        let rows = self.batch_rows(index);
        self.load_rows(index, 0..rows)
    }

    /// Rows of batch `index` (the last batch may be partial).
    fn batch_rows(&self, index: usize) -> usize {
        self.batch.min(self.order.len() - index * self.batch)
    }

    /// Gather rows `part` of batch `index` (within its rows) into `acts[0]`
    /// and `labels`, drawing shifts as rows `part.start..` of the batch;
    /// returns their number.
    fn load_rows(&mut self, index: usize, part: Range<usize>) -> usize {
        let start = index * self.batch + part.start;
        let rows = part.len();
        let idx = &self.order[start..start + rows];
        let dim = self.model.inputs();
        let key = Key::new(self.seed, self.draw_step(), SHIFT_STREAM).rows_from(part.start as u32);
        let source = Source {
            features: &self.data.train.features,
            bytes: self.train_u8.as_deref(),
            shift: self.shift.as_ref(),
            key,
        };
        source.gather(idx, dim, self.model.preprocess, &mut self.acts[0]);
        if let Some(d) = &mut self.distill {
            d.start = start;
            for (t, input) in d.teachers.iter().zip(&mut d.inputs) {
                if let Some(x) = input {
                    source.gather(idx, dim, t.preprocess, x);
                }
            }
        }
        for (r, &i) in idx.iter().enumerate() {
            self.labels[r] = self.data.train.labels[i as usize];
        }
        rows
    }

    /// The training loss of the batch in `acts` and its gradient with
    /// respect to the logits into the last `grads`: softmax cross-entropy,
    /// or with teachers the distillation loss, after their forward passes.
    fn loss(&mut self, rows: usize) -> (f64, u32) {
        let nl = self.model.layers.len();
        let classes = self.model.classes();
        let Some(d) = &mut self.distill else {
            return kernels::softmax_xent(
                &self.acts[nl],
                &self.labels,
                &mut self.grads[nl],
                rows,
                classes,
                self.smoothing,
            );
        };
        let k = kernels::SoftTarget::new(d.temperature, d.alpha, self.smoothing, rows, classes);
        if let Some(c) = &d.cached {
            let idx = &self.order[d.start..d.start + rows];
            for (row, &i) in d.probs.chunks_exact_mut(classes).zip(idx) {
                let i = i as usize;
                row.copy_from_slice(&c[i * classes..(i + 1) * classes]);
            }
        }
        let weight = 1.0 / d.teachers.len().max(1) as f32;
        let teachers = if d.cached.is_some() {
            &d.teachers[..0]
        } else {
            &d.teachers[..]
        };
        for (i, t) in teachers.iter().enumerate() {
            let x = d.inputs[i].as_deref().unwrap_or(&self.acts[0]);
            forward_from(t, x, &mut d.acts[i], rows);
            let z = d.acts[i].last().map(Vec::as_slice).unwrap_or_default();
            kernels::soft_targets(z, &mut d.probs, rows, classes, k.inv_t, weight, i > 0);
        }
        kernels::soft_target_xent(
            &self.acts[nl],
            &d.probs,
            &self.labels,
            &mut self.grads[nl],
            rows,
            classes,
            &k,
        )
    }

    /// The gradient of batch `index`'s mean loss with respect to every
    /// parameter at the current values, `(weight, bias)` per layer in the
    /// layers' layouts; nothing is updated. Where a step's update cannot be
    /// fused into the gradient product (a replica's gradients, clipping),
    /// this is the gradient it needs.
    pub fn gradients(&mut self, index: usize) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        check_steps(index, 1, steps_per_epoch(self.order.len(), self.batch))?;
        Ok(self.on_team(|b| b.gradients_on_team(index)))
    }

    fn gradients_on_team(&mut self, index: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
        let rows = self.load_batch(index);
        self.forward_train(rows);
        let nl = self.model.layers.len();
        self.loss(rows);
        let mut out = Vec::with_capacity(nl);
        for l in (0..nl).rev() {
            let layer = &self.model.layers[l];
            let (lo, hi) = self.grads.split_at_mut(l + 1);
            let dy = &hi[0];
            if l > 0 {
                backprop(
                    self.precision,
                    self.dropout,
                    dy,
                    &layer.weight,
                    &self.acts[l],
                    &mut lo[l],
                    rows,
                    layer.inputs,
                    layer.outputs,
                );
            }
            let mut gw = vec![0.0; layer.weight.len()];
            let mut gb = vec![0.0; layer.outputs];
            let p = self.precision;
            layer_gradients(
                p,
                dy,
                &self.acts[l],
                &mut gw,
                &mut gb,
                rows,
                layer.inputs,
                layer.outputs,
            );
            out.push((gw, gb));
        }
        out.reverse();
        out
    }

    /// The step key of the next update's draws: torch's `t`, as Adam's
    /// bias corrections count it.
    fn draw_step(&self) -> u64 {
        self.updates + 1
    }

    /// The forward pass of a training step: [`forward`], with dropout after
    /// each hidden layer when it is on.
    fn forward_train(&mut self, rows: usize) {
        self.forward_train_from(rows, 0);
    }

    /// [`CpuBackend::forward_train`] of rows that stand for rows `row0..`
    /// of the batch (for the dropout draws).
    /// In f16-mixed, each product reads its input and weights rounded.
    fn forward_train_from(&mut self, rows: usize, row0: usize) {
        let p = self.precision;
        if self.dropout.is_none() && !p.is_f16() {
            forward(&self.model, &mut self.acts, rows);
            return;
        }
        let nl = self.model.layers.len();
        let step = self.draw_step();
        for (l, layer) in self.model.layers.iter().enumerate() {
            let (lo, hi) = self.acts.split_at_mut(l + 1);
            let (inputs, outputs) = (layer.inputs, layer.outputs);
            let (x, y) = (operand(p, &lo[l][..rows * inputs]), &mut hi[0]);
            let w = operand(p, &layer.weight);
            match self.dropout {
                Some(drop) if l + 1 < nl => {
                    let key = Key::new(self.seed, step, dropout_stream(l)).rows_from(row0 as u32);
                    kernels::linear_forward_dropout(&x, &w, &layer.bias, y, rows, inputs, outputs, drop, key);
                }
                _ => kernels::linear_forward(&x, &w, &layer.bias, y, rows, inputs, outputs, l + 1 < nl),
            }
        }
    }

    fn step(&mut self, index: usize, hyper: StepHyper) {
        if self.clip.is_some() {
            return self.step_clipped(index, hyper);
        }
        let rows = self.load_batch(index);
        self.forward_train(rows);
        let nl = self.model.layers.len();
        let (loss, correct) = self.loss(rows);
        for l in (0..nl).rev() {
            let layer = &mut self.model.layers[l];
            let (lo, hi) = self.grads.split_at_mut(l + 1);
            let dy = &hi[0];
            if l > 0 {
                // Uses the weights before this step's update.
                backprop(
                    self.precision,
                    self.dropout,
                    dy,
                    &layer.weight,
                    &self.acts[l],
                    &mut lo[l],
                    rows,
                    layer.inputs,
                    layer.outputs,
                );
            }
            if self.optimizer.is_fused() {
                let p = self.precision;
                kernels::weight_update(
                    &mut layer.weight,
                    Some(&mut layer.bias),
                    &operand(p, &dy[..rows * layer.outputs]),
                    &operand(p, &self.acts[l][..rows * layer.inputs]),
                    rows,
                    layer.inputs,
                    layer.outputs,
                    hyper.lr,
                );
            } else {
                let st = &mut self.opt_state[l];
                let (p, inputs, outputs) = (self.precision, layer.inputs, layer.outputs);
                layer_gradients(p, dy, &self.acts[l], &mut st.gw, &mut st.gb, rows, inputs, outputs);
                let t = self.updates + 1;
                optim::update_tensor(&self.optimizer, hyper.lr, t, &mut layer.weight, &st.gw, &mut st.w);
                optim::update_tensor(&self.optimizer, hyper.lr, t, &mut layer.bias, &st.gb, &mut st.b);
            }
            if let Some(Constraint::Mask(masks)) = &self.constraint {
                kernels::apply_mask(&mut layer.weight, &masks[l]);
            }
        }
        self.stats.loss_sum += loss;
        self.stats.correct += correct as u64;
        self.stats.examples += rows as u64;
        self.stats.steps += 1;
        self.updates += 1;
    }

    /// A step with gradient clipping, for every optimizer (plain SGD
    /// included, unfused): every layer's gradient into its `opt_state`
    /// buffers first (so backprop_input reads the weights before any
    /// update), then their global norm, then each update with the
    /// gradients scaled by `min(1, max_norm / (norm + 1e-6))`, as torch's
    /// `clip_grad_norm_` before `optimizer.step()` (L2 weight decay is
    /// added inside the update, after the scaling).
    fn step_clipped(&mut self, index: usize, hyper: StepHyper) {
        let rows = self.batch_rows(index);
        let (loss, correct) = self.part_gradients(index, 0..rows, None);
        self.apply_update(None, hyper);
        self.stats.loss_sum += loss;
        self.stats.correct += correct as u64;
        self.stats.examples += rows as u64;
        self.stats.steps += 1;
    }

    /// The gradient of batch `index`'s mean loss restricted to rows `part`
    /// of the batch (the sum over those rows of each row's loss gradient
    /// divided by the batch's rows), per layer the weight then the bias,
    /// into `packed` when given, else into the `opt_state` buffers. Reads
    /// the current weights, updates nothing; returns the rows' summed loss
    /// and correct count.
    fn part_gradients(&mut self, index: usize, part: Range<usize>, mut packed: Option<&mut [f32]>) -> (f64, u32) {
        let of_rows = self.batch_rows(index);
        let row0 = part.start;
        let rows = self.load_rows(index, part);
        let nl = self.model.layers.len();
        let (mut loss, mut correct) = (0.0, 0);
        if rows > 0 {
            self.forward_train_from(rows, row0);
            let classes = self.model.classes();
            (loss, correct) = if self.distill.is_some() {
                // Only whole batches distill (`shard_gradients` refuses a
                // distilling replica), so the loss divides by these rows.
                self.loss(rows)
            } else {
                kernels::softmax_xent_part(
                    &self.acts[nl],
                    &self.labels,
                    &mut self.grads[nl],
                    rows,
                    classes,
                    self.smoothing,
                    of_rows,
                )
            };
        }
        let mut end: usize = self.model.layers.iter().map(|l| l.weight.len() + l.bias.len()).sum();
        for l in (0..nl).rev() {
            let layer = &self.model.layers[l];
            let (nw, nb) = (layer.weight.len(), layer.bias.len());
            end -= nw + nb;
            let (gw, gb): (&mut [f32], &mut [f32]) = match packed.as_deref_mut() {
                Some(p) => p[end..end + nw + nb].split_at_mut(nw),
                None => {
                    let st = &mut self.opt_state[l];
                    (&mut st.gw, &mut st.gb)
                }
            };
            if rows == 0 {
                gw.fill(0.0);
                gb.fill(0.0);
                continue;
            }
            let (lo, hi) = self.grads.split_at_mut(l + 1);
            let dy = &hi[0];
            if l > 0 {
                backprop(
                    self.precision,
                    self.dropout,
                    dy,
                    &layer.weight,
                    &self.acts[l],
                    &mut lo[l],
                    rows,
                    layer.inputs,
                    layer.outputs,
                );
            }
            let (p, inputs, outputs) = (self.precision, layer.inputs, layer.outputs);
            layer_gradients(p, dy, &self.acts[l], gw, gb, rows, inputs, outputs);
        }
        (loss, correct)
    }

    /// One update from the gradients in `packed` (per layer the weight then
    /// the bias) or, without it, in the `opt_state` buffers: scaled by the
    /// clipping coefficient of their global norm when clipping is on, then
    /// the optimizer, then the constraint; counts one update. Needs the
    /// `opt_state` buffers.
    fn apply_update(&mut self, mut packed: Option<&[f32]>, hyper: StepHyper) {
        if let (Some(g), Some(_)) = (packed, self.clip) {
            // Clipping scales the gradients in place: work on a copy.
            let mut off = 0;
            for st in &mut self.opt_state {
                let (nw, nb) = (st.gw.len(), st.gb.len());
                st.gw.copy_from_slice(&g[off..off + nw]);
                st.gb.copy_from_slice(&g[off + nw..off + nw + nb]);
                off += nw + nb;
            }
            packed = None;
        }
        let coef = match self.clip {
            Some(max_norm) => {
                let tensors: Vec<&[f32]> = self
                    .opt_state
                    .iter()
                    .flat_map(|st| [st.gw.as_slice(), st.gb.as_slice()])
                    .collect();
                kernels::clip_coef(&tensors, max_norm).coef
            }
            None => 1.0,
        };
        let t = self.updates + 1;
        let mut off = 0;
        for (l, (layer, st)) in self.model.layers.iter_mut().zip(&mut self.opt_state).enumerate() {
            let optim::LayerState { gw, gb, w, b } = st;
            if coef < 1.0 {
                kernels::scale(gw, coef);
                kernels::scale(gb, coef);
            }
            let (nw, nb) = (layer.weight.len(), layer.bias.len());
            let (gw, gb): (&[f32], &[f32]) = match packed {
                Some(p) => (&p[off..off + nw], &p[off + nw..off + nw + nb]),
                None => (gw, gb),
            };
            off += nw + nb;
            optim::update_tensor(&self.optimizer, hyper.lr, t, &mut layer.weight, gw, w);
            optim::update_tensor(&self.optimizer, hyper.lr, t, &mut layer.bias, gb, b);
            if let Some(Constraint::Mask(masks)) = &self.constraint {
                kernels::apply_mask(&mut layer.weight, &masks[l]);
            }
        }
        self.updates += 1;
    }

    /// Allocate the gradient buffers a replica's update needs (plain SGD
    /// fused into the products has none).
    fn ensure_opt_state(&mut self) {
        if self.opt_state.is_empty() {
            self.opt_state = self
                .model
                .layers
                .iter()
                .map(|l| optim::LayerState::new(&self.optimizer, l.weight.len(), l.bias.len()))
                .collect();
        }
    }

    /// Check a packed gradient's length.
    fn check_packed(&self, len: usize) -> Result<()> {
        let want = self.gradient_len();
        if len != want {
            return Err(Error::Config(format!(
                "a packed gradient of {len} floats for a model of {want} parameters"
            )));
        }
        Ok(())
    }
}

impl Replica for CpuBackend {
    fn gradient_len(&self) -> usize {
        self.model.layers.iter().map(|l| l.weight.len() + l.bias.len()).sum()
    }

    fn shard_gradients(&mut self, index: usize, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        check_steps(index, 1, steps_per_epoch(self.order.len(), self.batch))?;
        check_shard(&rows, self.batch_rows(index))?;
        self.check_packed(out.len())?;
        if self.distill.is_some() {
            return Err(Error::Config(
                "distillation runs on one device; a data-parallel replica cannot distill".into(),
            ));
        }
        let (loss, correct) = self.on_team(|b| b.part_gradients(index, rows.clone(), Some(out)));
        self.stats.loss_sum += loss;
        self.stats.correct += correct as u64;
        self.stats.examples += rows.len() as u64;
        Ok(())
    }

    fn apply_gradients(&mut self, grads: &[f32], hyper: &StepHyper) -> Result<()> {
        self.check_packed(grads.len())?;
        self.ensure_opt_state();
        self.on_team(|b| b.apply_update(Some(grads), *hyper));
        self.stats.steps += 1;
        Ok(())
    }
}

/// `v` as a training product reads it: the values themselves in f32, a
/// copy rounded to f16 in f16-mixed ([`Precision`]).
fn operand(p: Precision, v: &[f32]) -> Cow<'_, [f32]> {
    if p.is_f16() {
        let mut r = v.to_vec();
        kernels::round_f16(&mut r);
        Cow::Owned(r)
    } else {
        Cow::Borrowed(v)
    }
}

/// `backprop_input` of a training step, with the dropout scale when it is
/// on; every operand as the step's precision reads it (the ReLU mask is
/// taken from the rounded `x`, as the GPU takes it).
#[allow(clippy::too_many_arguments)]
fn backprop(
    p: Precision,
    dropout: Option<Dropout>,
    dy: &[f32],
    w: &[f32],
    x: &[f32],
    dx: &mut [f32],
    rows: usize,
    inputs: usize,
    outputs: usize,
) {
    let (dy, w, x) = (
        operand(p, &dy[..rows * outputs]),
        operand(p, w),
        operand(p, &x[..rows * inputs]),
    );
    match dropout {
        None => kernels::backprop_input(&dy, &w, &x, dx, rows, inputs, outputs),
        Some(d) => kernels::backprop_input_dropout(&dy, &w, &x, dx, rows, inputs, outputs, d.scale),
    }
}

/// The weight and bias gradients of a layer, `gw = dy^T x` and `gb` the
/// column sums of `dy`, with the operands as the step's precision reads
/// them.
#[allow(clippy::too_many_arguments)]
fn layer_gradients(
    p: Precision,
    dy: &[f32],
    x: &[f32],
    gw: &mut [f32],
    gb: &mut [f32],
    rows: usize,
    inputs: usize,
    outputs: usize,
) {
    let (dy, x) = (operand(p, &dy[..rows * outputs]), operand(p, &x[..rows * inputs]));
    kernels::matmul_tn(&dy, &x, gw, outputs, inputs, rows);
    kernels::column_sums(&dy, gb, rows, outputs);
}

/// Forward pass of `rows` preprocessed rows in `acts[0]`, filling every
/// later activation.
pub fn forward(model: &Mlp, acts: &mut [Vec<f32>], rows: usize) {
    let nl = model.layers.len();
    for (l, layer) in model.layers.iter().enumerate() {
        let (lo, hi) = acts.split_at_mut(l + 1);
        kernels::linear_forward(
            &lo[l],
            &layer.weight,
            &layer.bias,
            &mut hi[0],
            rows,
            layer.inputs,
            layer.outputs,
            l + 1 < nl,
        );
    }
}

/// Forward pass of `rows` preprocessed rows `x` through `model`, each
/// layer's output into `outs[l]`.
fn forward_from(model: &Mlp, x: &[f32], outs: &mut [Vec<f32>], rows: usize) {
    let nl = model.layers.len();
    for (l, layer) in model.layers.iter().enumerate() {
        let (lo, hi) = outs.split_at_mut(l);
        let input = if l == 0 { x } else { &lo[l - 1] };
        kernels::linear_forward(
            input,
            &layer.weight,
            &layer.bias,
            &mut hi[0],
            rows,
            layer.inputs,
            layer.outputs,
            l + 1 < nl,
        );
    }
}

/// Check that a model and a dataset fit each other.
pub fn check_fit(model: &Mlp, data: &Dataset) -> Result<()> {
    if model.inputs() != data.dim() {
        return Err(crate::error::ModelError::InputMismatch {
            expected: model.inputs(),
            found: data.dim(),
        }
        .into());
    }
    let max_label = data
        .train
        .labels
        .iter()
        .chain(&data.validation.labels)
        .chain(&data.test.labels)
        .copied()
        .max()
        .unwrap_or(0) as usize;
    if max_label >= model.classes() {
        return Err(crate::error::ModelError::ClassMismatch {
            model: model.classes(),
            data: max_label,
        }
        .into());
    }
    Ok(())
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        team::device_name(self.team.size())
    }

    fn batch_size(&self) -> usize {
        self.batch
    }

    fn memory(&self) -> crate::resources::Need {
        let f32s = |v: &[f32]| 4 * v.len() as u64;
        let nested = |v: &[Vec<f32>]| v.iter().map(|x| f32s(x)).sum::<u64>();
        let params: u64 = self.model.layers.iter().map(|l| f32s(&l.weight) + f32s(&l.bias)).sum();
        let grads: u64 = self.opt_state.iter().map(|s| f32s(&s.gw) + f32s(&s.gb)).sum();
        let state: u64 = self.opt_state.iter().map(|s| nested(&s.w) + nested(&s.b)).sum();
        let acts = nested(&self.acts) + nested(&self.grads) + 4 * self.labels.len() as u64;
        let d = &self.data;
        let split = |s: &crate::data::Split| f32s(&s.features) + 4 * s.labels.len() as u64;
        let data = split(&d.train)
            + split(&d.test)
            + split(&d.validation)
            + self.train_u8.as_ref().map_or(0, |b| b.len() as u64)
            + 4 * self.order.capacity() as u64;
        let teachers = self.distill.as_ref().map_or(0, |t| {
            let weights: u64 = t
                .teachers
                .iter()
                .flat_map(|m| &m.layers)
                .map(|l| f32s(&l.weight) + f32s(&l.bias))
                .sum();
            let inputs: u64 = t.inputs.iter().flatten().map(|x| f32s(x)).sum();
            let acts: u64 = t.acts.iter().map(|a| nested(a)).sum();
            weights + inputs + acts + f32s(&t.probs) + t.cached.as_ref().map_or(0, |c| f32s(c))
        });
        crate::resources::TrainingBytes {
            parameters: params,
            gradients: grads,
            state,
            activations: acts,
            data,
            teachers,
            other: 0,
        }
        .need(&self.model.sizes(), &self.name())
    }

    fn begin_epoch(&mut self, order: &[u32]) -> Result<()> {
        check_order(order, self.data.train.len())?;
        self.order.clear();
        self.order.extend_from_slice(order);
        Ok(())
    }

    fn train_steps(&mut self, first: usize, hyper: &[StepHyper]) -> Result<()> {
        check_steps(first, hyper.len(), steps_per_epoch(self.order.len(), self.batch))?;
        self.on_team(|b| {
            for (i, &h) in hyper.iter().enumerate() {
                b.step(first + i, h);
            }
        });
        Ok(())
    }

    fn take_stats(&mut self) -> Result<StepStats> {
        Ok(std::mem::take(&mut self.stats))
    }

    fn predict_split(&mut self, split: SplitKind) -> Result<Predictions> {
        Ok(self.on_team(|b| {
            let s = match split {
                SplitKind::Train => &b.data.train,
                SplitKind::Validation => &b.data.validation,
                SplitKind::Test => &b.data.test,
            };
            predict_rows(&b.model, &s.features, &s.labels)
        }))
    }

    fn model(&mut self) -> Result<Mlp> {
        Ok(self.model.clone())
    }

    fn set_constraint(&mut self, constraint: Option<&Constraint>) -> Result<()> {
        if let Some(c) = constraint {
            c.check(&self.model.layers.iter().map(|l| l.weight.len()).collect::<Vec<_>>())?;
            match c {
                Constraint::Mask(masks) => {
                    for (layer, mask) in self.model.layers.iter_mut().zip(masks) {
                        kernels::apply_mask(&mut layer.weight, mask);
                    }
                }
            }
        }
        self.constraint = constraint.cloned();
        Ok(())
    }

    fn state(&mut self) -> Result<BackendState> {
        let slots = match self.opt_state.is_empty() {
            true => vec![LayerSlots::default(); self.model.layers.len()],
            false => self
                .opt_state
                .iter()
                .map(|s| LayerSlots {
                    weight: s.w.clone(),
                    bias: s.b.clone(),
                })
                .collect(),
        };
        Ok(BackendState {
            model: self.model.clone(),
            slots,
            updates: self.updates,
        })
    }

    fn set_distillation(&mut self, distillation: Option<&Distillation>) -> Result<()> {
        let Some(d) = distillation else {
            self.distill = None;
            return Ok(());
        };
        d.check(self.model.inputs(), self.model.classes())?;
        d.check_cached(self.data.train.len(), self.model.classes(), self.shift.is_some())?;
        let batch = self.batch;
        let student = self.model.preprocess;
        self.distill = Some(CpuDistill {
            inputs: d
                .teachers
                .iter()
                .map(|t| (t.preprocess != student).then(|| vec![0.0; batch * t.inputs()]))
                .collect(),
            acts: d
                .teachers
                .iter()
                .map(|t| t.layers.iter().map(|l| vec![0.0; batch * l.outputs]).collect())
                .collect(),
            probs: vec![0.0; batch * self.model.classes()],
            teachers: d.teachers.clone(),
            temperature: d.temperature,
            alpha: d.alpha,
            cached: d.cached.clone(),
            start: 0,
        });
        Ok(())
    }

    fn restore(&mut self, state: &BackendState) -> Result<()> {
        state.check_fits(&self.model, &self.optimizer)?;
        for (layer, saved) in self.model.layers.iter_mut().zip(&state.model.layers) {
            layer.weight.copy_from_slice(&saved.weight);
            layer.bias.copy_from_slice(&saved.bias);
        }
        for (st, saved) in self.opt_state.iter_mut().zip(&state.slots) {
            st.w.clone_from(&saved.weight);
            st.b.clone_from(&saved.bias);
        }
        self.updates = state.updates;
        Ok(())
    }
}

/// Forward pass over raw (not preprocessed) rows with labels: summed loss and
/// the arg-max of each row.
pub fn predict_rows(model: &Mlp, features: &[f32], labels: &[u32]) -> Predictions {
    let dim = model.inputs();
    let n = labels.len();
    let chunk = EVAL_CHUNK.min(n.max(1));
    let mut acts: Vec<Vec<f32>> = model.sizes().iter().map(|&s| vec![0.0; s * chunk]).collect();
    let mut out = Predictions {
        loss_sum: 0.0,
        classes: vec![0; n],
    };
    let p = model.preprocess;
    let nl = model.layers.len();
    for start in (0..n).step_by(chunk) {
        let rows = chunk.min(n - start);
        p.apply_into(&features[start * dim..(start + rows) * dim], &mut acts[0]);
        forward(model, &mut acts, rows);
        out.loss_sum += kernels::softmax_xent_eval(
            &acts[nl],
            &labels[start..start + rows],
            &mut out.classes[start..start + rows],
            rows,
            model.classes(),
        );
    }
    out
}

/// Class probabilities of raw (not preprocessed) rows: `[rows, classes]`.
pub fn probabilities(model: &Mlp, features: &[f32]) -> Vec<f32> {
    let dim = model.inputs();
    let rows = features.len() / dim;
    let mut acts: Vec<Vec<f32>> = model.sizes().iter().map(|&s| vec![0.0; s * rows]).collect();
    model.preprocess.apply_into(features, &mut acts[0]);
    forward(model, &mut acts, rows);
    let mut z = acts.pop().unwrap_or_default();
    kernels::softmax_rows(&mut z, model.classes());
    z
}

/// The mean of `teachers`' probabilities at `temperature` for raw (not
/// preprocessed) rows `features`, each teacher applying its own
/// preprocessing: `[rows, classes]`, as a distillation step computes them
/// for its batch ([`kernels::soft_targets`]).
pub fn teacher_probabilities(teachers: &[Mlp], features: &[f32], temperature: f32) -> Vec<f32> {
    let Some(first) = teachers.first() else {
        return Vec::new();
    };
    let (dim, classes) = (first.inputs(), first.classes());
    let n = features.len() / dim.max(1);
    let inv_t = kernels::SoftTarget::new(temperature, 0.0, 0.0, 1, classes).inv_t;
    let weight = 1.0 / teachers.len() as f32;
    let mut out = vec![0.0; n * classes];
    let chunk = EVAL_CHUNK.min(n.max(1));
    for (i, t) in teachers.iter().enumerate() {
        let mut acts: Vec<Vec<f32>> = t.sizes().iter().map(|&s| vec![0.0; s * chunk]).collect();
        for start in (0..n).step_by(chunk) {
            let rows = chunk.min(n - start);
            t.preprocess
                .apply_into(&features[start * dim..(start + rows) * dim], &mut acts[0]);
            forward(t, &mut acts, rows);
            let z = acts.last().map(Vec::as_slice).unwrap_or_default();
            let p = &mut out[start * classes..(start + rows) * classes];
            kernels::soft_targets(z, p, rows, classes, inv_t, weight, i > 0);
        }
    }
    out
}
