//! The GPU training backend: parameters, data and every intermediate live
//! on the device; a training step is a fixed list of dispatches
//! (`plan`) recorded many times into one command buffer.
//!
//! Everything is built once, in [`GpuBackend::new`]: the buffers, and for
//! each step variant (a full batch and, when the epoch does not divide
//! evenly, the last partial batch) the list of dispatches with their bind
//! groups. What differs between steps (where the batch starts in the
//! permutation, the learning rate, which stats slot to write) lives in a
//! ring of `StepParams` bound at a dynamic offset, so recording a step
//! costs a few `set_bind_group`/`dispatch` calls and no allocation.
//!
//! Nothing is read back inside a step: each step writes its loss and correct
//! count to its own slot of a stats buffer (one entry, or with the fused
//! loss one partial per row block of the last layer), and
//! [`Backend::take_stats`] copies the used slots back in one transfer and
//! sums them in f64.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::clip::ClipBuffers;
use super::context::GpuContext;
use super::dispatch::{need_u32, Dispatch};
use super::optim::{self, LayerOptim};
use super::plan::{
    shard_gradient, shard_update, stats_per_step, train_step, Buffers, EvalPlan, GpuDistill, GpuTeacher, OptimBuffers,
    Segments,
};
use super::resident::ResidentSplit;
use super::uniforms::{Stat, StepParams, STAT_BYTES, STEP_BYTES};
use super::vector::apply_mask;
use crate::backend::{
    check_order, check_shard, check_steps, steps_per_epoch, Backend, BackendState, Distillation, LayerSlots, Precision,
    Predictions, Regularization, Replica, SplitKind, StepStats, TrainSpec,
};
use crate::cpu::optim::AdamScalars;
use crate::data::{Dataset, Preprocess};
use crate::error::{Error, GpuError, Result};
use crate::model::{Linear, Mlp};
use crate::optim::draw::{Dropout, Shift};
use crate::optim::{Constraint, Optimizer, StepHyper};

/// Steps recorded per command buffer: enough that submission overhead
/// vanishes, few enough that the GPU starts while later steps are encoded.
const STEPS_PER_SUBMIT: usize = 128;
/// Largest number of steps whose stats are kept on the GPU before a
/// [`Backend::take_stats`]; past it, `train_steps` reads them back itself.
const MAX_STAT_SLOTS: usize = 8192;
/// Rows per forward pass when evaluating a split.
const EVAL_ROWS: usize = 4096;

/// `params` written into a step ring: entry `i` at `i * stride` bytes.
fn step_ring(out: &mut Vec<u8>, stride: usize, params: impl ExactSizeIterator<Item = StepParams>) {
    out.clear();
    out.resize(params.len() * stride, 0);
    for (i, p) in params.enumerate() {
        out[i * stride..i * stride + STEP_BYTES as usize].copy_from_slice(bytemuck::bytes_of(&p));
    }
}

/// Adam's per-step `(lr / (1 - b1^t), sqrt(1 - b2^t))` at step `t`, from
/// f64; zeros for the other rules, which do not read them.
fn adam_scalars(optimizer: &Optimizer, lr: f32, t: u64) -> (f32, f32) {
    match optimizer {
        Optimizer::Adam(a) | Optimizer::AdamW(a) => {
            // The CPU backend's scalars, so both round them alike.
            let s = AdamScalars::new(a, false, lr, t);
            (s.step_size, s.bc2_sqrt)
        }
        Optimizer::Sgd(_) => (0.0, 0.0),
    }
}

/// The stats slots read back as `bytes`.
fn stats_of(bytes: &[u8]) -> Vec<Stat> {
    bytemuck::pod_collect_to_vec(bytes)
}

/// The GPU implementation of [`Backend`].
pub struct GpuBackend {
    ctx: Arc<GpuContext>,
    sizes: Vec<usize>,
    preprocess: Preprocess,
    input_shape: Vec<usize>,
    /// The model's class names, given back with its weights.
    class_names: Vec<String>,
    batch: usize,
    n_train: usize,
    /// `(weight, bias)` per layer.
    params: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    /// Pruning masks, one per layer, when set (see [`Backend::set_constraint`]).
    masks: Option<Vec<wgpu::Buffer>>,
    /// `acts[l]`: output of layer `l`; `grads[l]`: its gradient.
    acts: Vec<wgpu::Buffer>,
    grads: Vec<wgpu::Buffer>,
    train: ResidentSplit,
    /// The epoch's permutation of the training examples.
    perm: wgpu::Buffer,
    epoch_started: bool,
    /// Ring of per-step parameters, one entry per stats slot.
    steps: wgpu::Buffer,
    /// `{loss: f32, correct: u32}` per step since the last `take_stats`:
    /// `stats_per_step` entries a step (the fused loss's row-block
    /// partials, or one), summed on the host.
    stats: wgpu::Buffer,
    stats_per_step: usize,
    slots: usize,
    /// Slots used since the last `take_stats`.
    pending: usize,
    /// Host-side part of the stats: examples and steps recorded, and any
    /// GPU totals already folded in when the slots ran out.
    host_stats: StepStats,
    full_step: Vec<Dispatch>,
    last_step: Option<Vec<Dispatch>>,
    last_rows: usize,
    eval_train: EvalPlan,
    eval_test: EvalPlan,
    /// Bytes of the test split on the device (held by `eval_test`'s bind
    /// groups).
    test_bytes: u64,
    /// The validation split and its plan, when the dataset has one.
    eval_validation: Option<(ResidentSplit, EvalPlan)>,
    eval_rows: usize,
    eval_stats: wgpu::Buffer,
    predictions: wgpu::Buffer,
    /// Host staging for the step ring, reused between calls.
    step_bytes: Vec<u8>,
    optimizer: Optimizer,
    /// Per layer, the gradient buffers and state of an unfused optimizer
    /// (empty for plain SGD).
    optim_layers: Vec<LayerOptim>,
    optim_spares: [wgpu::Buffer; 2],
    /// The coefficient 1 the updates read when the step does not clip.
    unit_coef: wgpu::Buffer,
    /// Label smoothing of the training loss (0: none).
    smoothing: f32,
    /// How the training products round their operands.
    precision: Precision,
    /// Gradient clipping's partial sums and coefficient, when it clips.
    clip: Option<ClipBuffers>,
    /// Steps submitted so far: step `updates + 1` is torch's `t`, and the
    /// step key of its random draws.
    updates: u64,
    /// Dropout and shifts of the training steps.
    draws: Draws,
    /// The teachers when the student trains by distillation.
    distill: Option<GpuDistill>,
    /// The plans and transfer buffers of a data-parallel replica, made on
    /// first use.
    replica: Option<ReplicaBuffers>,
}

/// What a [`GpuBackend`] serving as a [`Replica`] adds.
struct ReplicaBuffers {
    /// The gradient plans by `(rows, of_rows)`, in segments (see
    /// [`shard_gradient`]).
    plans: HashMap<(usize, usize), Segments>,
    /// The update plan; rebuilt when the masks change.
    update: Option<Vec<Dispatch>>,
    /// The packed gradient read back (MAP_READ) and the summed one to upload.
    down: wgpu::Buffer,
    up: wgpu::Buffer,
    /// Byte offsets of each layer's weight and bias gradients in the packed
    /// buffers.
    offsets: Vec<(u64, u64)>,
    len: usize,
    /// Host time spent waiting for readbacks and writing uploads, seconds.
    transfer: f64,
}

/// What a training step draws at random, keyed by the run's seed.
#[derive(Clone, Copy)]
struct Draws {
    seed: u64,
    /// Dropout after each hidden layer.
    dropout: Option<Dropout>,
    /// Random translation of the training images.
    shift: Option<Shift>,
}

impl GpuBackend {
    /// Upload the model and both splits, and build every dispatch.
    pub fn new(ctx: Arc<GpuContext>, model: Mlp, data: Arc<Dataset>, spec: TrainSpec) -> Result<Self> {
        Self::open(ctx, model, data, spec, false)
    }

    /// A backend to serve as a data-parallel [`Replica`]: as [`GpuBackend::new`],
    /// with the gradient buffers of the unfused path for every optimizer
    /// (plain SGD included), since its updates take a summed gradient.
    pub fn new_replica(ctx: Arc<GpuContext>, model: Mlp, data: Arc<Dataset>, spec: TrainSpec) -> Result<Self> {
        Self::open(ctx, model, data, spec, true)
    }

    fn open(ctx: Arc<GpuContext>, model: Mlp, data: Arc<Dataset>, spec: TrainSpec, unfused: bool) -> Result<Self> {
        crate::cpu::check_fit(&model, &data)?;
        spec.check()?;
        let regular = spec.regular;
        let shift = Shift::new(regular.shift, &data.shape)?;
        let batch = spec.batch;
        if spec.precision.is_f16() && !ctx.supports_f16() {
            return Err(GpuError::InvalidArgument(format!(
                "--precision f16-mixed needs WGSL's f16 (shader-f16), which {} does not offer; use --precision f32 or the CPU",
                ctx.label()
            ))
            .into());
        }
        if data.train.is_empty() {
            return Err(Error::Config("the training split is empty".into()));
        }
        let device = &ctx.dev.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let draws = Draws {
            seed: spec.seed,
            dropout: Dropout::new(regular.dropout),
            shift,
        };
        let built = Self::build(
            ctx.clone(),
            model,
            &data,
            batch,
            spec.optimizer,
            regular,
            draws,
            unfused,
            spec.precision,
        );
        let invalid = pollster::block_on(invalid.pop());
        let oom = pollster::block_on(oom.pop());
        if let Some(e) = oom {
            return Err(GpuError::Other(format!("out of GPU memory while uploading the model and data: {e}")).into());
        }
        if let Some(e) = invalid {
            return Err(GpuError::Other(format!("setting up the GPU trainer: {e}")).into());
        }
        built
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        ctx: Arc<GpuContext>,
        model: Mlp,
        data: &Dataset,
        batch: usize,
        optimizer: Optimizer,
        regular: Regularization,
        draws: Draws,
        unfused: bool,
        precision: Precision,
    ) -> Result<Self> {
        let dev = &ctx.dev;
        let sizes = model.sizes();
        let nl = model.layers.len();
        let dim = model.inputs();
        let widest = sizes[1..].iter().copied().max().unwrap_or(1);
        let as_u8 = data.is_u8();
        let train = ResidentSplit::upload(&ctx, "train", &data.train, dim, as_u8)?;
        let test = ResidentSplit::upload(&ctx, "test", &data.test, dim, as_u8)?;
        let validation = (!data.validation.is_empty())
            .then(|| ResidentSplit::upload(&ctx, "validation", &data.validation, dim, as_u8))
            .transpose()?;
        let n_train = train.len;

        let params = model
            .layers
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                Ok((
                    dev.storage_init(&format!("fc{} weight", l + 1), bytemuck::cast_slice(&layer.weight))?,
                    dev.storage_init(&format!("fc{} bias", l + 1), bytemuck::cast_slice(&layer.bias))?,
                ))
            })
            .collect::<Result<Vec<_>, GpuError>>()?;

        // Evaluation runs in chunks as large as fit the activation buffers'
        // binding limit, but never smaller than a training batch needs.
        // Clipping needs every gradient before any update: the unfused path,
        // plain SGD included.
        let optim_layers = if optimizer.is_fused() && regular.clip_grad_norm.is_none() && !unfused {
            Vec::new()
        } else {
            model
                .layers
                .iter()
                .enumerate()
                .map(|(l, layer)| LayerOptim::new(&ctx, &optimizer, l, layer.weight.len(), layer.bias.len()))
                .collect::<Result<Vec<_>, GpuError>>()?
        };
        let optim_spares = optim::spares(&ctx)?;
        let unit_coef = optim::unit_coef(&ctx)?;
        let clip = regular
            .clip_grad_norm
            .map(|c| {
                let lens: Vec<usize> = model.layers.iter().map(|l| l.weight.len() + l.bias.len()).collect();
                ClipBuffers::new(&ctx, c, &lens)
            })
            .transpose()?;

        let max_rows = (dev.limits.max_storage_buffer_binding_size / (4 * widest as u64)) as usize;
        if max_rows < batch {
            return Err(GpuError::Limit {
                what: format!("a batch of {batch} rows of {widest} activations"),
                needed: 4 * (batch * widest) as u64,
                limit: dev.limits.max_storage_buffer_binding_size,
                limit_name: "max_storage_buffer_binding_size, bytes",
            }
            .into());
        }
        let eval_rows = EVAL_ROWS.max(batch).min(max_rows);
        let act_rows = eval_rows.max(batch);
        let acts = (1..=nl)
            .map(|l| dev.storage(&format!("activations {l}"), 4 * (act_rows * sizes[l]) as u64))
            .collect::<Result<Vec<_>, _>>()?;
        let grads = (1..=nl)
            .map(|l| dev.storage(&format!("gradients {l}"), 4 * (batch * sizes[l]) as u64))
            .collect::<Result<Vec<_>, _>>()?;
        let perm = dev.storage("epoch permutation", 4 * n_train as u64)?;

        let spe = steps_per_epoch(n_train, batch);
        let slots = spe.clamp(1, MAX_STAT_SLOTS);
        let stride = ctx.registry.step_stride;
        let steps = dev.uniform_init("step ring", &vec![0u8; (slots as u64 * stride) as usize])?;
        // Room for the fused loss's partials, the most a step writes.
        let max_stats_per_step = stats_per_step(&sizes, false, batch);
        // The shaders index the entries with u32 (`slot * stride + block`).
        need_u32("the step stats entries", (slots * max_stats_per_step) as u64)?;
        let stats = dev.storage("step stats", STAT_BYTES * (slots * max_stats_per_step) as u64)?;
        let last_rows = n_train - (spe - 1) * batch;

        let longest = train.len.max(test.len).max(validation.as_ref().map_or(0, |v| v.len));
        let chunks = longest.div_ceil(eval_rows);
        let mut eval_bytes = Vec::new();
        let chunk_params = (0..chunks).map(|c| StepParams {
            index_off: (c * eval_rows) as u32,
            slot: c as u32,
            lr: 0.0,
            ..Default::default()
        });
        step_ring(&mut eval_bytes, stride as usize, chunk_params);
        let eval_steps = dev.uniform_init("evaluation chunk params", &eval_bytes)?;
        let eval_stats = dev.storage("evaluation stats", STAT_BYTES * chunks as u64)?;
        let predictions = dev.storage("predictions", 4 * longest as u64)?;
        let eval_bufs = Buffers {
            sizes: &sizes,
            params: &params,
            acts: &acts,
            grads: &grads,
            masks: None,
            step: &eval_steps,
            optim: None,
            smoothing: 0.0,
            clip: None,
            distill: None,
            precision: Precision::F32,
            stats_per_step: 1,
        };
        let pre = model.preprocess;
        let eval_plan = |split: &ResidentSplit, name: &str| {
            EvalPlan::new(
                &ctx,
                &eval_bufs,
                split,
                &perm,
                pre,
                &predictions,
                &eval_stats,
                eval_rows,
                name,
            )
        };
        let eval_train = eval_plan(&train, "train")?;
        let eval_test = eval_plan(&test, "test")?;
        let test_bytes = test.bytes();
        let eval_validation = match validation {
            Some(v) => {
                let plan = eval_plan(&v, "validation")?;
                Some((v, plan))
            }
            None => None,
        };

        let mut backend = GpuBackend {
            sizes,
            preprocess: model.preprocess,
            input_shape: model.input_shape,
            class_names: model.class_names,
            batch,
            n_train,
            params,
            perm,
            epoch_started: false,
            steps,
            stats,
            stats_per_step: max_stats_per_step,
            slots,
            pending: 0,
            host_stats: StepStats::default(),
            full_step: Vec::new(),
            last_step: None,
            last_rows,
            masks: None,
            acts,
            grads,
            train,
            eval_train,
            eval_test,
            test_bytes,
            eval_validation,
            eval_rows,
            eval_stats,
            predictions,
            step_bytes: Vec::new(),
            optimizer,
            optim_layers,
            optim_spares,
            unit_coef,
            smoothing: regular.label_smoothing,
            precision,
            clip,
            updates: 0,
            draws,
            replica: None,
            distill: None,
            ctx,
        };
        backend.build_train_plans()?;
        Ok(backend)
    }

    /// (Re)build the dispatches of a training step, for a full batch and
    /// for the last partial one; again whenever masks are set or cleared,
    /// since each mask adds an `apply_mask` after its layer's update.
    fn build_train_plans(&mut self) -> Result<(), GpuError> {
        let per_step = stats_per_step(&self.sizes, self.distill.is_some(), self.batch);
        if per_step != self.stats_per_step {
            // The pending slots hold the old plans' layout.
            self.drain_stats()?;
            self.stats_per_step = per_step;
        }
        let (full, last) = {
            let ctx = &*self.ctx;
            let bufs = self.buffers();
            let mut input = self.train.source(&self.perm, true, self.preprocess);
            let Draws { seed, dropout, shift } = self.draws;
            input.shift = shift.map(|s| (s, seed));
            let dropout = dropout.map(|d| (d, seed));
            let plan = |rows| train_step(ctx, &bufs, input, &self.train, &self.stats, rows, dropout);
            let full = plan(self.batch)?;
            let last = match self.last_rows != self.batch {
                true => Some(plan(self.last_rows)?),
                false => None,
            };
            (full, last)
        };
        self.full_step = full;
        self.last_step = last;
        if let Some(r) = &mut self.replica {
            r.plans.clear();
            r.update = None;
        }
        Ok(())
    }

    /// Copy the stats slots in use to the host and fold them into
    /// `host_stats`; waits for every step submitted so far.
    fn drain_stats(&mut self) -> Result<(), GpuError> {
        if self.pending == 0 {
            return Ok(());
        }
        let bytes = self.ctx.dev.read_back(
            None,
            &[(&self.stats, 0, STAT_BYTES * (self.pending * self.stats_per_step) as u64)],
        )?;
        for s in stats_of(&bytes[0]) {
            self.host_stats.loss_sum += f64::from(s.loss);
            self.host_stats.correct += u64::from(s.correct);
        }
        self.pending = 0;
        Ok(())
    }

    /// Record and submit steps `first..first + count` of the epoch into
    /// stats slots `pending..pending + count`.
    fn submit_steps(&mut self, first: usize, hyper: &[StepHyper]) -> Result<(), GpuError> {
        let count = hyper.len();
        let dev = &self.ctx.dev;
        let stride = self.ctx.registry.step_stride as usize;
        let total = steps_per_epoch(self.n_train, self.batch);
        let (optimizer, updates) = (self.optimizer, self.updates);
        let params = hyper.iter().enumerate().map(|(s, h)| {
            let (step_size, bc2_sqrt) = adam_scalars(&optimizer, h.lr, updates + 1 + s as u64);
            StepParams {
                index_off: ((first + s) * self.batch) as u32,
                slot: (self.pending + s) as u32,
                lr: h.lr,
                step_size,
                bc2_sqrt,
                draw_step: (updates + 1 + s as u64) as u32,
                ..Default::default()
            }
        });
        step_ring(&mut self.step_bytes, stride, params);
        // Queue writes land before the next submission's commands and after
        // the previous ones', so reusing ring entries is safe.
        dev.queue
            .write_buffer(&self.steps, (self.pending * stride) as u64, &self.step_bytes);
        let mut enc = dev.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("training steps"),
        });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("training steps"),
                timestamp_writes: None,
            });
            for s in 0..count {
                let index = first + s;
                let (plan, rows) = match &self.last_step {
                    Some(last) if index + 1 == total => (last, self.last_rows),
                    _ => (&self.full_step, self.batch),
                };
                let offset = ((self.pending + s) * stride) as u32;
                for d in plan {
                    d.record(&mut pass, offset);
                }
                self.host_stats.examples += rows as u64;
                self.host_stats.steps += 1;
            }
        }
        dev.queue.submit([enc.finish()]);
        self.pending += count;
        self.updates += count as u64;
        Ok(())
    }

    /// Layer widths, inputs first.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// Rows per forward pass when evaluating.
    pub fn eval_rows(&self) -> usize {
        self.eval_rows
    }

    /// Dispatches recorded per full training step.
    pub fn dispatches_per_step(&self) -> usize {
        self.full_step.len()
    }

    /// The entry point of each dispatch of a full training step, in order.
    pub fn step_kernels(&self) -> Vec<&'static str> {
        self.full_step.iter().map(|d| d.kernel().name()).collect()
    }

    /// Record `steps` full training steps from the start of the epoch at
    /// learning rate `lr` into `enc`, each dispatch in its own compute pass
    /// whose beginning and end write timestamps `2i` and `2i + 1` of
    /// `queries` (dispatch `i` in recording order). Returns each dispatch's
    /// name within the step (e.g. `fc1 weight_update`). For
    /// [`crate::gpu::timing`]; the caller checks that `queries` is large
    /// enough and that the device has `TIMESTAMP_QUERY`.
    pub(crate) fn record_timed_steps(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        steps: usize,
        lr: f32,
        queries: &wgpu::QuerySet,
    ) -> Result<Vec<String>, GpuError> {
        let total = steps_per_epoch(self.n_train, self.batch);
        let steps = steps.min(total).min(self.slots);
        let stride = self.ctx.registry.step_stride as usize;
        let mut ring = Vec::new();
        let params = (0..steps).map(|s| StepParams {
            index_off: (s * self.batch) as u32,
            slot: s as u32,
            lr,
            ..Default::default()
        });
        step_ring(&mut ring, stride, params);
        self.ctx.dev.queue.write_buffer(&self.steps, 0, &ring);
        let tag = format!("train step ({} rows) ", self.batch);
        let mut names = Vec::new();
        for s in 0..steps {
            for d in &self.full_step {
                let q = 2 * names.len() as u32;
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(d.label()),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: queries,
                        beginning_of_pass_write_index: Some(q),
                        end_of_pass_write_index: Some(q + 1),
                    }),
                });
                d.record(&mut pass, (s * stride) as u32);
                names.push(d.label().strip_prefix(&tag).unwrap_or(d.label()).to_string());
            }
        }
        // The stats slots now hold these steps; they are not training
        // progress, so they are dropped rather than reported.
        self.pending = 0;
        Ok(names)
    }
}

impl GpuBackend {
    /// The replica's buffers, made on first use.
    fn replica_buffers(&mut self) -> Result<&mut ReplicaBuffers> {
        if self.optim_layers.is_empty() {
            return Err(Error::Config(
                "this GPU backend keeps no gradient buffers; build replicas with GpuBackend::new_replica".into(),
            ));
        }
        if self.replica.is_none() {
            let mut offsets = Vec::with_capacity(self.sizes.len() - 1);
            let mut at = 0u64;
            for s in self.sizes.windows(2) {
                let nw = 4 * (s[0] * s[1]) as u64;
                offsets.push((at, at + nw));
                at += nw + 4 * s[1] as u64;
            }
            let dev = &self.ctx.dev;
            let down = dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("replica gradient readback"),
                size: at.max(4),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let up = dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("replica summed gradient"),
                size: at.max(4),
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.replica = Some(ReplicaBuffers {
                plans: HashMap::new(),
                update: None,
                down,
                up,
                offsets,
                len: (at / 4) as usize,
                transfer: 0.0,
            });
        }
        self.replica
            .as_mut()
            .ok_or_else(|| Error::Config("the replica buffers are missing".into()))
    }

    /// The buffers the step plans bind.
    fn buffers(&self) -> Buffers<'_> {
        Buffers {
            sizes: &self.sizes,
            params: &self.params,
            acts: &self.acts,
            grads: &self.grads,
            masks: self.masks.as_deref(),
            step: &self.steps,
            optim: (!self.optim_layers.is_empty()).then_some(OptimBuffers {
                optimizer: self.optimizer,
                layers: &self.optim_layers,
                spares: &self.optim_spares,
                coef: self.clip.as_ref().map_or(&self.unit_coef, |c| &c.coef),
            }),
            smoothing: self.smoothing,
            clip: self.clip.as_ref(),
            distill: self.distill.as_ref(),
            precision: self.precision,
            stats_per_step: self.stats_per_step,
        }
    }

    /// Write one entry of the step ring at the next stats slot (draining the
    /// slots first when they are all used); returns its dynamic offset.
    fn write_step(&mut self, p: StepParams) -> Result<u32, GpuError> {
        if self.pending == self.slots {
            self.drain_stats()?;
        }
        let stride = self.ctx.registry.step_stride as usize;
        step_ring(
            &mut self.step_bytes,
            stride,
            std::iter::once(StepParams {
                slot: self.pending as u32,
                ..p
            }),
        );
        self.ctx
            .dev
            .queue
            .write_buffer(&self.steps, (self.pending * stride) as u64, &self.step_bytes);
        Ok((self.pending * stride) as u32)
    }
}

impl Replica for GpuBackend {
    fn gradient_len(&self) -> usize {
        self.sizes.windows(2).map(|s| s[0] * s[1] + s[1]).sum()
    }

    fn shard_gradients(&mut self, index: usize, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        if !self.epoch_started {
            return Err(Error::Config("shard_gradients called before begin_epoch".into()));
        }
        check_steps(index, 1, steps_per_epoch(self.n_train, self.batch))?;
        let of_rows = self.batch.min(self.n_train - index * self.batch);
        check_shard(&rows, of_rows)?;
        if self.distill.is_some() {
            return Err(Error::Config(
                "distillation runs on one device; a data-parallel replica cannot distill".into(),
            ));
        }
        let len = self.gradient_len();
        if out.len() != len {
            return Err(Error::Config(format!(
                "a packed gradient of {} floats for a model of {len} parameters",
                out.len()
            )));
        }
        self.replica_buffers()?;
        if rows.is_empty() {
            out.fill(0.0);
            return Ok(());
        }
        let key = (rows.len(), of_rows);
        if !self.replica.as_ref().is_some_and(|r| r.plans.contains_key(&key)) {
            let plan = {
                let bufs = self.buffers();
                let mut input = self.train.source(&self.perm, true, self.preprocess);
                let Draws { seed, dropout, shift } = self.draws;
                input.shift = shift.map(|s| (s, seed));
                let dropout = dropout.map(|d| (d, seed));
                shard_gradient(
                    &self.ctx,
                    &bufs,
                    input,
                    &self.train,
                    &self.stats,
                    key.0,
                    of_rows,
                    dropout,
                )?
            };
            if let Some(r) = &mut self.replica {
                r.plans.insert(key, plan);
            }
        }
        let offset = self.write_step(StepParams {
            index_off: (index * self.batch + rows.start) as u32,
            draw_step: (self.updates + 1) as u32,
            draw_row0: rows.start as u32,
            ..Default::default()
        })?;
        let (dev, r) = (&self.ctx.dev, self.replica.as_ref());
        let Some(r) = r else {
            return Err(Error::Config("the replica buffers are missing".into()));
        };
        let Some(plan) = r.plans.get(&key) else {
            return Err(Error::Config("the replica's gradient plan is missing".into()));
        };
        let mut enc = dev.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("shard gradient"),
        });
        // The copy of the first layer's gradient, the last computed and the
        // largest, goes in a submission of its own, so that the host can time
        // the transfer apart from the compute.
        let mut tail = dev.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("shard gradient readback"),
        });
        // Each other layer's gradient is copied out as soon as its segment
        // is recorded, so the copy is ordered before the lower layers' work.
        for (segment, l) in plan {
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("shard gradient"),
                    timestamp_writes: None,
                });
                for d in segment {
                    d.record(&mut pass, offset);
                }
            }
            let (w_at, b_at) = r.offsets[*l];
            let st = &self.optim_layers[*l];
            let nb = 4 * self.sizes[*l + 1] as u64;
            let to = if *l == 0 { &mut tail } else { &mut enc };
            to.copy_buffer_to_buffer(&st.gw, 0, &r.down, w_at, b_at - w_at);
            to.copy_buffer_to_buffer(&st.gb, 0, &r.down, b_at, nb);
        }
        let t = Instant::now();
        let computed = dev.read_staged(enc, tail, &r.down, out)?;
        let waited = (t.elapsed() - computed).as_secs_f64();
        self.pending += 1;
        self.host_stats.examples += rows.len() as u64;
        if let Some(r) = &mut self.replica {
            r.transfer += waited;
        }
        Ok(())
    }

    fn apply_gradients(&mut self, grads: &[f32], hyper: &StepHyper) -> Result<()> {
        let len = self.gradient_len();
        if grads.len() != len {
            return Err(Error::Config(format!(
                "a packed gradient of {} floats for a model of {len} parameters",
                grads.len()
            )));
        }
        self.replica_buffers()?;
        if self.replica.as_ref().is_some_and(|r| r.update.is_none()) {
            let plan = shard_update(&self.ctx, &self.buffers())?;
            if let Some(r) = &mut self.replica {
                r.update = Some(plan);
            }
        }
        let t = self.updates + 1;
        let (step_size, bc2_sqrt) = adam_scalars(&self.optimizer, hyper.lr, t);
        let offset = self.write_step(StepParams {
            lr: hyper.lr,
            step_size,
            bc2_sqrt,
            draw_step: t as u32,
            ..Default::default()
        })?;
        let dev = &self.ctx.dev;
        let Some(r) = self.replica.as_mut() else {
            return Err(Error::Config("the replica buffers are missing".into()));
        };
        let started = Instant::now();
        dev.queue.write_buffer(&r.up, 0, bytemuck::cast_slice(grads));
        let mut enc = dev.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("replica update"),
        });
        for (l, &(w_at, b_at)) in r.offsets.iter().enumerate() {
            let st = &self.optim_layers[l];
            enc.copy_buffer_to_buffer(&r.up, w_at, &st.gw, 0, b_at - w_at);
            enc.copy_buffer_to_buffer(&r.up, b_at, &st.gb, 0, 4 * self.sizes[l + 1] as u64);
        }
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("replica update"),
                timestamp_writes: None,
            });
            for d in r.update.iter().flatten() {
                d.record(&mut pass, offset);
            }
        }
        dev.queue.submit([enc.finish()]);
        r.transfer += started.elapsed().as_secs_f64();
        debug_assert_eq!(r.len, len);
        self.updates += 1;
        self.host_stats.steps += 1;
        Ok(())
    }

    /// The host time of the readbacks (from the end of the gradient work to
    /// the gradient in host memory: the first layer's copy, whose gradient
    /// is computed last, and the mapping; the other layers' copies run
    /// inside the gradient submission) and of the uploads (the write and the
    /// submission of the copies).
    fn take_transfer_seconds(&mut self) -> f64 {
        self.replica.as_mut().map_or(0.0, |r| std::mem::take(&mut r.transfer))
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        self.ctx.label()
    }

    fn memory(&self) -> crate::resources::Need {
        let sum = |bufs: &mut dyn Iterator<Item = &wgpu::Buffer>| bufs.map(|b| b.size()).sum::<u64>();
        let params = sum(&mut self.params.iter().flat_map(|(w, b)| [w, b]));
        let grads = sum(&mut self.optim_layers.iter().flat_map(|o| [&o.gw, &o.gb]));
        let state = sum(&mut self
            .optim_layers
            .iter()
            .flat_map(|o| o.w_state.iter().chain(&o.b_state)));
        let acts = sum(&mut self.acts.iter().chain(&self.grads));
        let data = self.train.bytes()
            + self.test_bytes
            + self.eval_validation.as_ref().map_or(0, |(v, _)| v.bytes())
            + self.perm.size();
        let teachers = self.distill.as_ref().map_or(0, |d| {
            let t = sum(&mut d
                .teachers
                .iter()
                .flat_map(|t| t.params.iter().flat_map(|(w, b)| [w, b]).chain(&t.acts)));
            t + d.probs.size() + d.cached.as_ref().map_or(0, |c| c.size())
        });
        let mut other = sum(&mut [
            &self.steps,
            &self.stats,
            &self.eval_stats,
            &self.predictions,
            &self.unit_coef,
        ]
        .into_iter()
        .chain(&self.optim_spares));
        other += self.clip.as_ref().map_or(0, |c| c.partials.size() + c.coef.size());
        other += self.masks.as_ref().map_or(0, |m| sum(&mut m.iter()));
        other += self.replica.as_ref().map_or(0, |r| r.down.size() + r.up.size());
        crate::resources::TrainingBytes {
            parameters: params,
            gradients: grads,
            state,
            activations: acts,
            data,
            teachers,
            other,
        }
        .need(&self.sizes, &self.name())
    }

    fn batch_size(&self) -> usize {
        self.batch
    }

    fn begin_epoch(&mut self, order: &[u32]) -> Result<()> {
        check_order(order, self.n_train)?;
        // Ordered after the steps already submitted, which still read the
        // previous permutation.
        self.ctx
            .dev
            .queue
            .write_buffer(&self.perm, 0, bytemuck::cast_slice(order));
        self.epoch_started = true;
        Ok(())
    }

    fn train_steps(&mut self, first: usize, hyper: &[StepHyper]) -> Result<()> {
        if !self.epoch_started {
            return Err(Error::Config("train_steps called before begin_epoch".into()));
        }
        check_steps(first, hyper.len(), steps_per_epoch(self.n_train, self.batch))?;
        let mut done = 0;
        while done < hyper.len() {
            if self.pending == self.slots {
                self.drain_stats()?;
            }
            let count = (hyper.len() - done)
                .min(self.slots - self.pending)
                .min(STEPS_PER_SUBMIT);
            self.submit_steps(first + done, &hyper[done..done + count])?;
            done += count;
        }
        Ok(())
    }

    fn take_stats(&mut self) -> Result<StepStats> {
        self.drain_stats()?;
        Ok(std::mem::take(&mut self.host_stats))
    }

    /// With masks, every step applies them after each layer's update (an
    /// `apply_mask` per layer), and they are applied once now; without,
    /// the steps go back to the plain update.
    fn set_distillation(&mut self, distillation: Option<&Distillation>) -> Result<()> {
        let Some(d) = distillation else {
            if self.distill.take().is_some() {
                self.build_train_plans()?;
            }
            return Ok(());
        };
        let classes = self.sizes[self.sizes.len() - 1];
        d.check(self.sizes[0], classes)?;
        d.check_cached(self.n_train, classes, self.draws.shift.is_some())?;
        let dev = &self.ctx.dev;
        let batch = self.batch;
        let teachers = d
            .teachers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let name = |what: &str, l: usize| format!("teacher {} fc{l} {what}", i + 1);
                let params = t
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(l, layer)| {
                        Ok((
                            dev.storage_init(&name("weight", l + 1), bytemuck::cast_slice(&layer.weight))?,
                            dev.storage_init(&name("bias", l + 1), bytemuck::cast_slice(&layer.bias))?,
                        ))
                    })
                    .collect::<Result<Vec<_>, GpuError>>()?;
                let acts = t
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(l, layer)| dev.storage(&name("activations", l + 1), 4 * (batch * layer.outputs) as u64))
                    .collect::<Result<Vec<_>, GpuError>>()?;
                Ok(GpuTeacher {
                    sizes: t.sizes(),
                    params,
                    acts,
                    preprocess: t.preprocess,
                })
            })
            .collect::<Result<Vec<_>, GpuError>>()?;
        let probs = dev.storage("teacher probabilities", 4 * (batch * classes) as u64)?;
        let cached = d
            .cached
            .as_ref()
            .map(|c| dev.storage_init("cached teacher probabilities", bytemuck::cast_slice(c)))
            .transpose()?;
        self.distill = Some(GpuDistill {
            teachers,
            probs,
            cached,
            temperature: d.temperature,
            alpha: d.alpha,
        });
        self.build_train_plans()?;
        Ok(())
    }

    fn set_constraint(&mut self, constraint: Option<&Constraint>) -> Result<()> {
        let shapes: Vec<usize> = self.sizes.windows(2).map(|s| s[0] * s[1]).collect();
        if let Some(c) = constraint {
            c.check(&shapes)?;
        }
        let Some(Constraint::Mask(masks)) = constraint else {
            if self.masks.take().is_some() {
                self.build_train_plans()?;
            }
            return Ok(());
        };
        let ctx = self.ctx.clone();
        // Reuse the mask buffers when there are some: only their contents change.
        if self.masks.is_none() {
            let bufs = shapes
                .iter()
                .enumerate()
                .map(|(l, &n)| ctx.dev.storage(&format!("fc{} mask", l + 1), 4 * n as u64))
                .collect::<Result<Vec<_>, _>>()?;
            self.masks = Some(bufs);
            self.build_train_plans()?;
        }
        let bufs = self.masks.as_deref().unwrap_or_default();
        let mut enc = ctx.dev.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("apply masks"),
        });
        let dispatches = bufs
            .iter()
            .zip(masks)
            .zip(&self.params)
            .enumerate()
            .map(|(l, ((buf, mask), (w, _)))| {
                // Ordered after the steps already submitted, which still use the old mask.
                ctx.dev.queue.write_buffer(buf, 0, bytemuck::cast_slice(mask));
                apply_mask(
                    &ctx,
                    &format!("fc{} apply_mask", l + 1),
                    mask.len(),
                    buf,
                    w,
                    &self.steps,
                )
            })
            .collect::<Result<Vec<Dispatch>, _>>()?;
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("apply masks"),
                timestamp_writes: None,
            });
            for d in &dispatches {
                d.record(&mut pass, 0);
            }
        }
        ctx.dev.queue.submit([enc.finish()]);
        Ok(())
    }

    fn predict_split(&mut self, split: SplitKind) -> Result<Predictions> {
        let dev = &self.ctx.dev;
        let stride = self.ctx.registry.step_stride as usize;
        let plan = match split {
            SplitKind::Train => &self.eval_train,
            SplitKind::Test => &self.eval_test,
            SplitKind::Validation => match &self.eval_validation {
                Some((_, plan)) => plan,
                None => return Err(Error::Config("the dataset has no validation split".into())),
            },
        };
        let mut enc = dev.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("evaluation"),
        });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("evaluation"),
                timestamp_writes: None,
            });
            for c in 0..plan.chunks {
                let dispatches = match &plan.last {
                    Some(last) if c + 1 == plan.chunks => last,
                    _ => &plan.full,
                };
                for d in dispatches {
                    d.record(&mut pass, (c * stride) as u32);
                }
            }
        }
        let bytes = dev.read_back(
            Some(enc),
            &[
                (&self.predictions, 0, 4 * plan.len as u64),
                (&self.eval_stats, 0, STAT_BYTES * plan.chunks as u64),
            ],
        )?;
        Ok(Predictions {
            loss_sum: stats_of(&bytes[1]).iter().map(|s| f64::from(s.loss)).sum(),
            classes: bytemuck::pod_collect_to_vec(&bytes[0]),
        })
    }

    fn state(&mut self) -> Result<BackendState> {
        let model = self.model()?;
        let mut slots = vec![LayerSlots::default(); model.layers.len()];
        if !self.optim_layers.is_empty() {
            let ranges: Vec<(&wgpu::Buffer, u64, u64)> = self
                .optim_layers
                .iter()
                .zip(self.sizes.windows(2))
                .flat_map(|(o, s)| {
                    let w = o.w_state.iter().map(move |b| (b, 0, 4 * (s[0] * s[1]) as u64));
                    let bias = o.b_state.iter().map(move |b| (b, 0, 4 * s[1] as u64));
                    w.chain(bias)
                })
                .collect();
            let mut bytes = self.ctx.dev.read_back(None, &ranges)?.into_iter();
            for (o, s) in self.optim_layers.iter().zip(&mut slots) {
                s.weight = (&mut bytes)
                    .take(o.w_state.len())
                    .map(|b| bytemuck::pod_collect_to_vec(&b))
                    .collect();
                s.bias = (&mut bytes)
                    .take(o.b_state.len())
                    .map(|b| bytemuck::pod_collect_to_vec(&b))
                    .collect();
            }
        }
        Ok(BackendState {
            model,
            slots,
            updates: self.updates,
        })
    }

    fn restore(&mut self, state: &BackendState) -> Result<()> {
        let current = self.model()?;
        state.check_fits(&current, &self.optimizer)?;
        self.drain_stats()?;
        let queue = &self.ctx.dev.queue;
        for ((w, b), saved) in self.params.iter().zip(&state.model.layers) {
            queue.write_buffer(w, 0, bytemuck::cast_slice(&saved.weight));
            queue.write_buffer(b, 0, bytemuck::cast_slice(&saved.bias));
        }
        for (o, saved) in self.optim_layers.iter().zip(&state.slots) {
            for (buf, v) in o
                .w_state
                .iter()
                .zip(&saved.weight)
                .chain(o.b_state.iter().zip(&saved.bias))
            {
                queue.write_buffer(buf, 0, bytemuck::cast_slice(v));
            }
        }
        self.updates = state.updates;
        Ok(())
    }

    fn model(&mut self) -> Result<Mlp> {
        let ranges: Vec<(&wgpu::Buffer, u64, u64)> = self
            .params
            .iter()
            .zip(self.sizes.windows(2))
            .flat_map(|((w, b), s)| [(w, 0, 4 * (s[0] * s[1]) as u64), (b, 0, 4 * s[1] as u64)])
            .collect();
        let bytes = self.ctx.dev.read_back(None, &ranges)?;
        let layers = self
            .sizes
            .windows(2)
            .zip(bytes.chunks_exact(2))
            .map(|(s, wb)| Linear {
                inputs: s[0],
                outputs: s[1],
                weight: bytemuck::pod_collect_to_vec(&wb[0]),
                bias: bytemuck::pod_collect_to_vec(&wb[1]),
            })
            .collect();
        Ok(Mlp {
            layers,
            preprocess: self.preprocess,
            input_shape: self.input_shape.clone(),
            class_names: self.class_names.clone(),
        })
    }
}
