//! The dispatch lists the trainer records: a training step and a pass of
//! evaluation over a split, each built once per row count and recorded any
//! number of times.
//!
//! A step of an `L`-layer network is `3L - 1` dispatches (5 for
//! 784-500-10), plus one `apply_mask` per layer when pruning:
//!
//! ```text
//! linear_forward      x L-1  (the first reads the resident dataset through the permutation)
//! linear_softmax_xent        (the last layer's logits, then in its epilogue dlogits, and
//!                             each row block's loss and correct count into the step's stats slot)
//! backprop_input      x L-1  (each before its layer's weights change)
//! weight_update       x L    (with bias_update fused in; apply_mask after each when pruning)
//! ```
//!
//! The loss rides in the last layer's forward pass ([`fuses_loss`]) when
//! the network has a hidden layer (the fused kernel's input is a buffer,
//! not the dataset), the classes fit the widest tile (128: a workgroup
//! holds whole rows of logits) and no teacher distills. Otherwise the
//! last layer is a `linear_forward` like the others followed by
//! `softmax_xent` (`3L` dispatches), and a step writes one stats entry,
//! not one per row block ([`stats_per_step`]).
//!
//! A distilling step runs the unfused last layer, puts each teacher's
//! `linear_forward`s and one `soft_targets` in front of the loss, and
//! `soft_target_xent` in place of `softmax_xent`: `3L + K (L_t + 1)`
//! dispatches for `K` teachers of `L_t` layers.
//!
//! A data-parallel replica's shard (`shard_gradient`) folds its loss the
//! same way, with the gradient of the whole batch's mean loss.
//!
//! An unfused optimizer (momentum, weight decay, Adam, AdamW) replaces each
//! weight_update by the same kernel writing the gradient into a buffer
//! (FLAG_GRAD, the bias gradient as its extra column) and two elementwise
//! updates, weight then bias: `5L - 1` dispatches.
//!
//! Gradient clipping needs every layer's gradient before any update, so a
//! clipped step (any optimizer, plain SGD as momentum-free
//! sgd_momentum_update) runs every weight_gradient first, then the norm,
//! then the updates: `6L` dispatches (12 for 784-500-10; `6L + 1` unfused):
//!
//! ```text
//! linear_forward x L-1, linear_softmax_xent, then per layer from the last:
//!   backprop_input (not for the first), weight_gradient
//! grad_sq_partial x L       (each layer's squares into per-workgroup partial sums)
//! clip_coef                 (one workgroup: min(1, C / (norm + 1e-6)) into a buffer)
//! 2 updates x L             (each scales its gradient by that coefficient; apply_mask after each layer when pruning)
//! ```

use super::clip::{clip_coef, grad_sq_partial, ClipBuffers};
use super::context::GpuContext;
use super::dispatch::Dispatch;
use super::gemm::{DataSource, Gemm, LayerDropout, Operand, XentLoss};
use super::optim::{optim_update, LayerOptim};
use super::resident::ResidentSplit;
use super::softmax::{soft_target_xent, soft_targets, softmax_xent_eval, softmax_xent_part};
use super::tile::Tile;
use super::vector::apply_mask;
use crate::backend::Precision;
use crate::cpu::kernels::SoftTarget;
use crate::data::Preprocess;
use crate::error::GpuError;
use crate::optim::draw::{dropout_stream, Dropout};
use crate::optim::Optimizer;

/// What an unfused optimizer's dispatches bind.
#[derive(Clone, Copy)]
pub(crate) struct OptimBuffers<'a> {
    pub optimizer: Optimizer,
    /// Per layer.
    pub layers: &'a [LayerOptim],
    /// Bound in place of state an optimizer does not keep.
    pub spares: &'a [wgpu::Buffer; 2],
    /// The clipping coefficient the updates scale the gradients by: the
    /// clipped step's, or a buffer holding 1.
    pub coef: &'a wgpu::Buffer,
}

/// The buffers a forward/backward schedule reads and writes.
pub(crate) struct Buffers<'a> {
    /// Layer widths, inputs first.
    pub sizes: &'a [usize],
    /// `(weight, bias)` per layer.
    pub params: &'a [(wgpu::Buffer, wgpu::Buffer)],
    /// `acts[l]` is the output of layer `l` (`[rows, sizes[l + 1]]`).
    pub acts: &'a [wgpu::Buffer],
    /// `grads[l]` is the gradient with respect to `acts[l]`.
    pub grads: &'a [wgpu::Buffer],
    /// Pruning masks, applied after each weight update when set.
    pub masks: Option<&'a [wgpu::Buffer]>,
    /// The per-step parameters the dispatches read at a dynamic offset.
    pub step: &'a wgpu::Buffer,
    /// The buffers of an unfused optimizer; `None` for plain SGD without
    /// clipping.
    pub optim: Option<OptimBuffers<'a>>,
    /// Label smoothing of the training loss (0: none).
    pub smoothing: f32,
    /// Gradient clipping's buffers (needs `optim`); `None`: no clipping.
    pub clip: Option<&'a ClipBuffers>,
    /// The teachers when the student trains by distillation.
    pub distill: Option<&'a GpuDistill>,
    /// How the products round their operands (f32 for evaluation and
    /// the teachers).
    pub precision: Precision,
    /// Entries of the stats buffer per step slot ([`stats_per_step`]).
    pub stats_per_step: usize,
}

/// Whether a training step of a network of widths `sizes` computes its
/// loss in the last layer's forward pass (`linear_softmax_xent`): when it
/// has a hidden layer, at most as many classes as the widest tile has
/// columns, and no teachers (`distill`).
pub(crate) fn fuses_loss(sizes: &[usize], distill: bool) -> bool {
    let classes = sizes.last().copied().unwrap_or(0);
    sizes.len() >= 3 && !distill && classes <= Tile::widest() as usize
}

/// Entries of the stats buffer a training step of at most `batch` rows
/// writes: one partial per row block of the fused loss, as many as the
/// narrowest tile makes of a batch (a step with fewer blocks zeroes the
/// rest), or the one entry of softmax_xent and soft_target_xent. Data-
/// parallel shards write the same (their rows are part of a batch).
pub(crate) fn stats_per_step(sizes: &[usize], distill: bool, batch: usize) -> usize {
    if fuses_loss(sizes, distill) {
        batch.div_ceil(Tile::narrowest() as usize).max(1)
    } else {
        1
    }
}

/// A teacher resident on the GPU: its weights and the activations of a
/// training batch.
pub(crate) struct GpuTeacher {
    /// Layer widths, inputs first.
    pub sizes: Vec<usize>,
    /// `(weight, bias)` per layer.
    pub params: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    /// `acts[l]`: the output of layer `l` for a batch (the logits last).
    pub acts: Vec<wgpu::Buffer>,
    /// Its own preprocessing of the raw input.
    pub preprocess: Preprocess,
}

/// Distillation's buffers: the teachers and the mean of their
/// probabilities at the temperature.
pub(crate) struct GpuDistill {
    pub teachers: Vec<GpuTeacher>,
    /// `[batch, classes]`.
    pub probs: wgpu::Buffer,
    /// Every training example's probabilities (`[n_train, classes]`), read
    /// through the permutation instead of running the teachers.
    pub cached: Option<wgpu::Buffer>,
    pub temperature: f32,
    pub alpha: f32,
}

/// Dropout of a hidden layer of a training step, keyed by the run's seed.
fn layer_dropout(dropout: Option<(Dropout, u64)>, layer: usize) -> Option<LayerDropout> {
    dropout.map(|(drop, seed)| LayerDropout {
        drop,
        seed,
        stream: dropout_stream(layer),
    })
}

/// The forward dispatches of layers `0..layers` for `rows` rows whose
/// input is `input`, with `dropout` (and the run's seed) after each hidden
/// layer in training.
fn forward(
    ctx: &GpuContext,
    bufs: &Buffers,
    input: DataSource,
    rows: usize,
    tag: &str,
    dropout: Option<(Dropout, u64)>,
    layers: usize,
) -> Result<Vec<Dispatch>, GpuError> {
    let sizes = bufs.sizes;
    let nl = sizes.len() - 1;
    (0..layers.min(nl))
        .map(|l| {
            let x = if l == 0 {
                Operand::Data(input)
            } else {
                Operand::rows(&bufs.acts[l - 1], sizes[l])
            };
            let (w, b) = &bufs.params[l];
            let hidden = l + 1 < nl;
            let g = Gemm::linear_forward(x, w, b, &bufs.acts[l], rows, sizes[l], sizes[l + 1], hidden)
                .with_dropout(if hidden { layer_dropout(dropout, l) } else { None })
                .with_precision(bufs.precision);
            g.dispatch(ctx, &format!("{tag} fc{} linear_forward", l + 1), bufs.step)
        })
        .collect()
}

/// Every dispatch of a training step of `rows` rows of `train` (read
/// through `input`, which carries the image shift when there is one), in
/// order, with `dropout` keyed by the run's seed after each hidden layer;
/// its loss and correct count go to `stats`.
pub(crate) fn train_step(
    ctx: &GpuContext,
    bufs: &Buffers,
    input: DataSource,
    train: &ResidentSplit,
    stats: &wgpu::Buffer,
    rows: usize,
    dropout: Option<(Dropout, u64)>,
) -> Result<Vec<Dispatch>, GpuError> {
    let sizes = bufs.sizes;
    let nl = sizes.len() - 1;
    let tag = format!("train step ({rows} rows)");
    let mut plan = match bufs.distill {
        None => forward_and_loss(ctx, bufs, input, train, stats, rows, rows, &tag, dropout)?,
        Some(d) => {
            let mut plan = forward(ctx, bufs, input, rows, &tag, dropout, nl)?;
            push_distill_loss(ctx, bufs, d, input, train, stats, rows, &tag, &mut plan)?;
            plan
        }
    };
    if bufs.clip.is_some() && bufs.optim.is_none() {
        return Err(GpuError::Other(
            "a clipped step needs the gradient buffers of the unfused path".into(),
        ));
    }
    let name = |l: usize, k: &str| format!("{tag} fc{} {k}", l + 1);
    for l in (0..nl).rev() {
        let (w, b) = &bufs.params[l];
        let (inputs, outputs) = (sizes[l], sizes[l + 1]);
        let dy = &bufs.grads[l];
        if l > 0 {
            // Before this layer's update: the gradient needs the old weights.
            // Layer l's input is hidden layer l - 1's output.
            let g = Gemm::backprop_input(dy, w, &bufs.acts[l - 1], &bufs.grads[l - 1], rows, inputs, outputs)
                .with_dropout(layer_dropout(dropout, l - 1))
                .with_precision(bufs.precision);
            plan.push(g.dispatch(ctx, &name(l, "backprop_input"), bufs.step)?);
        }
        let x = if l == 0 {
            Operand::Data(input)
        } else {
            Operand::rows(&bufs.acts[l - 1], inputs)
        };
        match &bufs.optim {
            None => {
                // bias_update fused into the update.
                let g = Gemm::weight_update(w, Some(b), dy, x, rows, inputs, outputs).with_precision(bufs.precision);
                plan.push(g.dispatch(ctx, &name(l, "weight_update"), bufs.step)?);
                push_mask(ctx, bufs, &mut plan, l, &name(l, "apply_mask"))?;
            }
            Some(o) => {
                let st = &o.layers[l];
                let g =
                    Gemm::weight_gradient(&st.gw, &st.gb, dy, x, rows, inputs, outputs).with_precision(bufs.precision);
                plan.push(g.dispatch(ctx, &name(l, "weight_gradient"), bufs.step)?);
                if bufs.clip.is_none() {
                    push_updates(ctx, bufs, o, &mut plan, l, &|k| name(l, k))?;
                }
            }
        }
    }
    if let (Some(c), Some(o)) = (bufs.clip, &bufs.optim) {
        push_clipped_updates(ctx, bufs, c, o, &mut plan, &tag)?;
    }
    Ok(plan)
}

/// The forward pass and the softmax cross-entropy loss of `rows` rows of a
/// batch of `of_rows` (the step's `index_off` places them): the hidden
/// layers' linear_forward, then the last layer's linear_softmax_xent when
/// [`fuses_loss`], else its linear_forward and softmax_xent. The loss's
/// gradient goes to the last `grads`, its stats to the step's slot of
/// `stats` (`bufs.stats_per_step` entries).
#[allow(clippy::too_many_arguments)]
fn forward_and_loss(
    ctx: &GpuContext,
    bufs: &Buffers,
    input: DataSource,
    train: &ResidentSplit,
    stats: &wgpu::Buffer,
    rows: usize,
    of_rows: usize,
    tag: &str,
    dropout: Option<(Dropout, u64)>,
) -> Result<Vec<Dispatch>, GpuError> {
    let sizes = bufs.sizes;
    let nl = sizes.len() - 1;
    let classes = sizes[nl];
    if !fuses_loss(sizes, false) {
        let mut plan = forward(ctx, bufs, input, rows, tag, dropout, nl)?;
        plan.push(softmax_xent_part(
            ctx,
            &format!("{tag} softmax_xent"),
            rows,
            of_rows,
            classes,
            bufs.smoothing,
            &bufs.acts[nl - 1],
            &train.labels,
            input.index,
            &bufs.grads[nl - 1],
            stats,
            bufs.step,
        )?);
        return Ok(plan);
    }
    let mut plan = forward(ctx, bufs, input, rows, tag, dropout, nl - 1)?;
    let (w, b) = &bufs.params[nl - 1];
    let loss = XentLoss {
        labels: &train.labels,
        index: input.index,
        gather: input.gather,
        dlogits: &bufs.grads[nl - 1],
        stats,
        stat_stride: bufs.stats_per_step,
        of_rows,
        smoothing: bufs.smoothing,
    };
    let g = Gemm::linear_softmax_xent(
        &bufs.acts[nl - 2],
        w,
        b,
        &bufs.acts[nl - 1],
        rows,
        sizes[nl - 1],
        classes,
        loss,
    )
    .with_precision(bufs.precision);
    plan.push(g.dispatch(ctx, &format!("{tag} fc{nl} linear_softmax_xent"), bufs.step)?);
    Ok(plan)
}

/// The clipped step's second half: every layer's squared-gradient partial
/// sums, the coefficient, then every layer's updates.
fn push_clipped_updates(
    ctx: &GpuContext,
    bufs: &Buffers,
    c: &ClipBuffers,
    o: &OptimBuffers,
    plan: &mut Vec<Dispatch>,
    tag: &str,
) -> Result<(), GpuError> {
    let sizes = bufs.sizes;
    let nl = sizes.len() - 1;
    let name = |l: usize, k: &str| format!("{tag} fc{} {k}", l + 1);
    {
        for l in (0..nl).rev() {
            let st = &o.layers[l];
            let (inputs, outputs) = (sizes[l], sizes[l + 1]);
            plan.push(grad_sq_partial(
                ctx,
                &name(l, "grad_sq_partial"),
                &st.gw,
                inputs * outputs,
                &st.gb,
                outputs,
                &c.partials,
                c.bases[l],
            )?);
        }
        plan.push(clip_coef(
            ctx,
            &format!("{tag} clip_coef"),
            &c.partials,
            c.count,
            c.max_norm,
            &c.coef,
        )?);
        for l in (0..nl).rev() {
            push_updates(ctx, bufs, o, plan, l, &|k| name(l, k))?;
        }
    }
    Ok(())
}

/// A replica's gradient plan: dispatch lists, each with the layer whose
/// gradient is complete after it.
pub(crate) type Segments = Vec<(Vec<Dispatch>, usize)>;

/// The gradient half of a data-parallel replica's step: rows `rows` of a
/// batch of `of_rows` (the step's `index_off` and `draw_row0` place them),
/// forward, loss (the gradient of the whole batch's mean loss, the shard's
/// loss into `stats`), and every layer's gradient into the optimizer's
/// gradient buffers. In segments, from the last layer down: after segment
/// `i`, the gradient of the layer it names is complete and may be copied
/// out while the next segments back-propagate to the layers below.
#[allow(clippy::too_many_arguments)]
pub(crate) fn shard_gradient(
    ctx: &GpuContext,
    bufs: &Buffers,
    input: DataSource,
    train: &ResidentSplit,
    stats: &wgpu::Buffer,
    rows: usize,
    of_rows: usize,
    dropout: Option<(Dropout, u64)>,
) -> Result<Segments, GpuError> {
    let Some(o) = &bufs.optim else {
        return Err(GpuError::Other(
            "a replica's gradients need the unfused path's buffers".into(),
        ));
    };
    let sizes = bufs.sizes;
    let nl = sizes.len() - 1;
    let tag = format!("shard gradient ({rows} of {of_rows} rows)");
    let name = |l: usize, k: &str| format!("{tag} fc{} {k}", l + 1);
    let mut cur = forward_and_loss(ctx, bufs, input, train, stats, rows, of_rows, &tag, dropout)?;
    let mut segments = Vec::with_capacity(nl);
    for l in (0..nl).rev() {
        let (w, _) = &bufs.params[l];
        let (inputs, outputs) = (sizes[l], sizes[l + 1]);
        let dy = &bufs.grads[l];
        let x = if l == 0 {
            Operand::Data(input)
        } else {
            Operand::rows(&bufs.acts[l - 1], inputs)
        };
        let st = &o.layers[l];
        let g = Gemm::weight_gradient(&st.gw, &st.gb, dy, x, rows, inputs, outputs).with_precision(bufs.precision);
        cur.push(g.dispatch(ctx, &name(l, "weight_gradient"), bufs.step)?);
        segments.push((std::mem::take(&mut cur), l));
        if l > 0 {
            let g = Gemm::backprop_input(dy, w, &bufs.acts[l - 1], &bufs.grads[l - 1], rows, inputs, outputs)
                .with_dropout(layer_dropout(dropout, l - 1))
                .with_precision(bufs.precision);
            cur.push(g.dispatch(ctx, &name(l, "backprop_input"), bufs.step)?);
        }
    }
    Ok(segments)
}

/// The update half of a data-parallel replica's step, from the gradients
/// in the optimizer's buffers: clipping when on, every layer's update, the
/// masks.
pub(crate) fn shard_update(ctx: &GpuContext, bufs: &Buffers) -> Result<Vec<Dispatch>, GpuError> {
    let Some(o) = &bufs.optim else {
        return Err(GpuError::Other(
            "a replica's update needs the unfused path's buffers".into(),
        ));
    };
    let mut plan = Vec::new();
    let tag = "replica update";
    match bufs.clip {
        Some(c) => push_clipped_updates(ctx, bufs, c, o, &mut plan, tag)?,
        None => {
            for l in (0..bufs.sizes.len() - 1).rev() {
                push_updates(ctx, bufs, o, &mut plan, l, &|k| format!("{tag} fc{} {k}", l + 1))?;
            }
        }
    }
    Ok(plan)
}

/// The distillation loss of a training step: each teacher's forward pass
/// on the step's batch (the student's gathered and shifted rows, with the
/// teacher's own preprocessing, no dropout) and its soft targets into
/// `d.probs`, then soft_target_xent on the student's logits.
#[allow(clippy::too_many_arguments)]
fn push_distill_loss(
    ctx: &GpuContext,
    bufs: &Buffers,
    d: &GpuDistill,
    input: DataSource,
    train: &ResidentSplit,
    stats: &wgpu::Buffer,
    rows: usize,
    tag: &str,
    plan: &mut Vec<Dispatch>,
) -> Result<(), GpuError> {
    let sizes = bufs.sizes;
    let nl = sizes.len() - 1;
    let classes = sizes[nl];
    let weight = 1.0 / d.teachers.len().max(1) as f32;
    let teachers = if d.cached.is_some() {
        &d.teachers[..0]
    } else {
        &d.teachers[..]
    };
    for (i, t) in teachers.iter().enumerate() {
        let tin = DataSource {
            scale: t.preprocess.scale,
            offset: t.preprocess.offset,
            ..input
        };
        let tb = Buffers {
            sizes: &t.sizes,
            params: &t.params,
            acts: &t.acts,
            grads: &[],
            masks: None,
            step: bufs.step,
            optim: None,
            smoothing: 0.0,
            clip: None,
            distill: None,
            precision: Precision::F32,
            stats_per_step: 1,
        };
        let ttag = format!("{tag} teacher {}", i + 1);
        plan.extend(forward(ctx, &tb, tin, rows, &ttag, None, t.sizes.len() - 1)?);
        let logits = t
            .acts
            .last()
            .ok_or_else(|| GpuError::Other(format!("{ttag}: a teacher without layers")))?;
        plan.push(soft_targets(
            ctx,
            &format!("{ttag} soft_targets"),
            rows,
            classes,
            d.temperature,
            weight,
            i > 0,
            logits,
            &d.probs,
            bufs.step,
        )?);
    }
    let k = SoftTarget::new(d.temperature, d.alpha, bufs.smoothing, rows, classes);
    plan.push(soft_target_xent(
        ctx,
        &format!("{tag} soft_target_xent"),
        rows,
        classes,
        &k,
        d.cached.is_some(),
        &bufs.acts[nl - 1],
        d.cached.as_ref().unwrap_or(&d.probs),
        &train.labels,
        input.index,
        &bufs.grads[nl - 1],
        stats,
        bufs.step,
    )?);
    Ok(())
}

/// Layer `l`'s two elementwise updates (weight, then bias) from the
/// gradients in its buffers, then its mask when pruning.
fn push_updates(
    ctx: &GpuContext,
    bufs: &Buffers,
    o: &OptimBuffers,
    plan: &mut Vec<Dispatch>,
    l: usize,
    name: &dyn Fn(&str) -> String,
) -> Result<(), GpuError> {
    let (w, b) = &bufs.params[l];
    let (inputs, outputs) = (bufs.sizes[l], bufs.sizes[l + 1]);
    let st = &o.layers[l];
    let kernel = match o.optimizer {
        Optimizer::Sgd(_) => "sgd_momentum_update",
        _ => "adam_update",
    };
    let tensors = [
        ("weight", inputs * outputs, &st.gw, w, &st.w_state),
        ("bias", outputs, &st.gb, b, &st.b_state),
    ];
    for (what, len, g, p, state) in tensors {
        let s0 = state.first().unwrap_or(&o.spares[0]);
        let s1 = state.get(1).unwrap_or(&o.spares[1]);
        plan.push(optim_update(
            ctx,
            &name(&format!("{what} {kernel}")),
            &o.optimizer,
            len,
            g,
            p,
            s0,
            s1,
            o.coef,
            bufs.step,
        )?);
    }
    push_mask(ctx, bufs, plan, l, &name("apply_mask"))
}

/// The pruning constraint on layer `l`, once its update is done.
fn push_mask(
    ctx: &GpuContext,
    bufs: &Buffers,
    plan: &mut Vec<Dispatch>,
    l: usize,
    label: &str,
) -> Result<(), GpuError> {
    if let Some(masks) = bufs.masks {
        let (inputs, outputs) = (bufs.sizes[l], bufs.sizes[l + 1]);
        plan.push(apply_mask(
            ctx,
            label,
            inputs * outputs,
            &masks[l],
            &bufs.params[l].0,
            bufs.step,
        )?);
    }
    Ok(())
}

/// The dispatches of one pass over a split: one list for full chunks and,
/// when the split does not divide evenly, one for the last chunk.
pub(crate) struct EvalPlan {
    pub len: usize,
    pub chunks: usize,
    pub full: Vec<Dispatch>,
    pub last: Option<Vec<Dispatch>>,
}

impl EvalPlan {
    /// The plan of `split` in chunks of `chunk_rows`, with the classes into
    /// `predictions` and each chunk's loss into `stats`; `bufs.step` holds
    /// one entry per chunk. `index` is bound but unused (the split is read
    /// in order).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: &GpuContext,
        bufs: &Buffers,
        split: &ResidentSplit,
        index: &wgpu::Buffer,
        preprocess: Preprocess,
        predictions: &wgpu::Buffer,
        stats: &wgpu::Buffer,
        chunk_rows: usize,
        name: &str,
    ) -> Result<Self, GpuError> {
        let input = split.source(index, false, preprocess);
        let sizes = bufs.sizes;
        let nl = sizes.len() - 1;
        let plan = |rows: usize| -> Result<Vec<Dispatch>, GpuError> {
            let tag = format!("eval {name} ({rows} rows)");
            let mut plan = forward(ctx, bufs, input, rows, &tag, None, nl)?;
            plan.push(softmax_xent_eval(
                ctx,
                &format!("{tag} softmax_xent_eval"),
                rows,
                sizes[nl],
                &bufs.acts[nl - 1],
                &split.labels,
                predictions,
                stats,
                bufs.step,
            )?);
            Ok(plan)
        };
        let chunks = split.len.div_ceil(chunk_rows);
        // The rows of the last chunk (none for an empty split).
        let last = split.len - chunks.saturating_sub(1) * chunk_rows;
        Ok(EvalPlan {
            len: split.len,
            chunks,
            full: plan(chunk_rows)?,
            last: if last != chunk_rows { Some(plan(last)?) } else { None },
        })
    }
}
