//! [`GpuPredictor`]: the GPU implementation of [`Predictor`], for f32 models
//! (the training kernels' `linear_forward`), int8 models
//! (`quantize_rows_i8` and `linear_forward_i8` per layer), and ensembles of
//! them (every member's dispatches in one submission).
//!
//! Everything is built once: the weights are uploaded at construction, and
//! the input, activation and staging buffers are sized for `max_batch`
//! rows. The dispatches of a batch of `n` rows are built the first time `n`
//! is seen and kept, so a server's steady state allocates nothing on the
//! GPU. One call is one `write_buffer` of the raw rows, one submission
//! (every layer's dispatches of every member, and the copy of each
//! member's logits to its part of a persistent staging buffer), one wait
//! and one map; larger batches run in chunks of `max_batch` rows.
//!
//! Preprocessing (`raw * scale + offset`) happens on the GPU, inside the
//! first layer's kernel (the f32 GEMM reads the raw rows as a dataset
//! operand; `quantize_rows_i8` scales them as it quantizes), with each
//! member's own scalars. The softmax, and an ensemble's mean, run on the
//! host: a few classes per row cost less than a dispatch.

use std::borrow::Cow;
use std::sync::{mpsc, Arc};

use super::context::GpuContext;
use super::dispatch::Dispatch;
use super::gemm::{DataSource, Gemm, Operand};
use super::int8::{linear_forward_i8, quantize_rows_i8, GpuI8Layer};
use super::registry::{Int8Path, Kernel};
use super::uniforms::StepParams;
use crate::data::Preprocess;
use crate::error::{GpuError, InferError};
use crate::infer::ensemble::{add_member, finish_mean};
use crate::infer::int8::Int8Mlp;
use crate::infer::Predictor;
use crate::model::{Activations, AnyModel, CompressedMlp, Mlp};

/// What a model's layers are on the GPU.
enum Layers {
    /// `(weight, bias)` per layer, f32.
    F32(Vec<(wgpu::Buffer, wgpu::Buffer)>),
    /// Packed int8 layers with, per layer, the quantized input rows
    /// (`[max_batch, words]` u32) and their scales (`[max_batch]`).
    Int8 {
        layers: Vec<GpuI8Layer>,
        xq: Vec<wgpu::Buffer>,
        x_scale: Vec<wgpu::Buffer>,
        path: Int8Path,
    },
}

/// A model to upload: f32 weights, or an int8 engine's packed layers and
/// the dot-product path to run them on.
enum Net<'a> {
    F32(Cow<'a, Mlp>),
    Int8(Cow<'a, Int8Mlp>, Int8Path),
}

impl Net<'_> {
    /// Layer widths, inputs first.
    fn sizes(&self) -> Vec<usize> {
        match self {
            Net::F32(m) => m.sizes(),
            Net::Int8(m, _) => {
                let mut sizes = vec![m.inputs()];
                sizes.extend(m.layers.iter().map(|l| l.outputs));
                sizes
            }
        }
    }

    fn preprocess(&self) -> Preprocess {
        match self {
            Net::F32(m) => m.preprocess,
            Net::Int8(m, _) => m.preprocess,
        }
    }
}

/// One model resident on the GPU: its layers and activation buffers
/// (`acts[l]`: output of layer `l`, `[max_batch, sizes[l + 1]]`; the last
/// holds the logits).
struct Resident {
    sizes: Vec<usize>,
    preprocess: Preprocess,
    layers: Layers,
    acts: Vec<wgpu::Buffer>,
}

/// One model, or the members of an ensemble, resident on the GPU,
/// answering [`Predictor`] calls. The members of an ensemble share the
/// raw input buffer (each applies its own preprocessing as it reads it),
/// run in one submission, and their logits come back in one readback;
/// their softmaxes are averaged on the host as
/// [`crate::infer::ensemble::EnsemblePredictor`] averages.
pub struct GpuPredictor {
    ctx: Arc<GpuContext>,
    name: String,
    inputs: usize,
    classes: usize,
    input_shape: Vec<usize>,
    max_batch: usize,
    members: Vec<Resident>,
    /// Raw input rows, `[max_batch, inputs]` f32.
    raw: wgpu::Buffer,
    /// Step parameters of the f32 kernels (all zero: no gathering offset).
    step: wgpu::Buffer,
    /// Bound as the (unused) gather index of the first f32 layer.
    no_index: wgpu::Buffer,
    /// `[members, max_batch, classes]` f32, mapped after each call (member
    /// `m`'s logits of a call of `n` rows at `m * n * classes`).
    staging: wgpu::Buffer,
    /// The members' logits of one chunk, read back (ensembles only).
    host: Vec<f32>,
    /// `plans[n - 1]`: the dispatches of a batch of `n` rows, every
    /// member's in turn, once built.
    plans: Vec<Option<Vec<Dispatch>>>,
}

impl std::fmt::Debug for GpuPredictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuPredictor")
            .field("name", &self.name)
            .field(
                "members",
                &self.members.iter().map(|m| m.sizes.clone()).collect::<Vec<_>>(),
            )
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

impl GpuPredictor {
    /// An f32 predictor of `model` for batches of up to `max_batch` rows
    /// per submission (at least 1).
    pub fn new(ctx: Arc<GpuContext>, model: &Mlp, max_batch: usize) -> Result<Self, GpuError> {
        Self::build(ctx, &model.input_shape, max_batch, vec![Net::F32(Cow::Borrowed(model))])
    }

    /// An int8 predictor of `model` (int8 weights, activations quantized
    /// per row, as [`Int8Mlp::logits`] computes them) through the adapter's
    /// best dot-product path.
    pub fn new_int8(
        ctx: Arc<GpuContext>,
        model: &Int8Mlp,
        input_shape: &[usize],
        max_batch: usize,
    ) -> Result<Self, GpuError> {
        let path = ctx.int8_path();
        Self::new_int8_with_path(ctx, model, input_shape, max_batch, path)
    }

    /// [`GpuPredictor::new_int8`] through a given dot-product path (to test
    /// both on one adapter).
    pub fn new_int8_with_path(
        ctx: Arc<GpuContext>,
        model: &Int8Mlp,
        input_shape: &[usize],
        max_batch: usize,
        path: Int8Path,
    ) -> Result<Self, GpuError> {
        Self::build(ctx, input_shape, max_batch, vec![Net::Int8(Cow::Borrowed(model), path)])
    }

    /// What runs a compressed model, chosen as
    /// [`crate::infer::cpu_predictor`] chooses: int8 kernels when every
    /// layer is int8 and the activations are int8, else f32 on the
    /// (dequantized) weights.
    fn net_of(ctx: &GpuContext, model: &CompressedMlp) -> Net<'static> {
        match (model.info.activations, model.int8_engine()) {
            (Activations::Int8, Some(engine)) => Net::Int8(Cow::Owned(engine), ctx.int8_path()),
            _ => Net::F32(Cow::Owned(model.to_mlp())),
        }
    }

    /// The predictor for a compressed model (see `net_of`).
    pub fn from_compressed(ctx: Arc<GpuContext>, model: &CompressedMlp, max_batch: usize) -> Result<Self, GpuError> {
        let net = Self::net_of(&ctx, model);
        Self::build(ctx, &model.input_shape, max_batch, vec![net])
    }

    /// The predictor for any model file; for an ensemble, every member
    /// resident at once and run in one submission.
    pub fn for_model(ctx: Arc<GpuContext>, model: &AnyModel, max_batch: usize) -> Result<Self, GpuError> {
        match model {
            AnyModel::F32(m) => Self::new(ctx, m, max_batch),
            AnyModel::Compressed(c) => Self::from_compressed(ctx, c, max_batch),
            AnyModel::Ensemble(e) => {
                let nets = e
                    .members()
                    .iter()
                    .map(|m| match &m.model {
                        AnyModel::F32(f) => Ok(Net::F32(Cow::Borrowed(f))),
                        AnyModel::Compressed(c) => Ok(Self::net_of(&ctx, c)),
                        AnyModel::Ensemble(_) => Err(GpuError::InvalidArgument(format!(
                            "ensemble member {} is an ensemble itself",
                            m.source
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Self::build(ctx, e.input_shape(), max_batch, nets)
            }
        }
    }

    /// Rows per submission; larger calls run in chunks of this many.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Models resident (1, or an ensemble's members).
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Check `nets`, compile what they need, allocate the shared buffers
    /// and upload every net, with out-of-memory and validation errors
    /// caught and returned.
    fn build(
        ctx: Arc<GpuContext>,
        input_shape: &[usize],
        max_batch: usize,
        nets: Vec<Net<'_>>,
    ) -> Result<Self, GpuError> {
        let Some(first) = nets.first() else {
            return Err(GpuError::InvalidArgument("no model to upload".into()));
        };
        let first_sizes = first.sizes();
        let (inputs, classes) = (first_sizes[0], *first_sizes.last().unwrap_or(&0));
        for net in &nets {
            let sizes = net.sizes();
            if sizes.len() < 2 || sizes.contains(&0) {
                return Err(GpuError::InvalidArgument(format!(
                    "layer sizes {sizes:?}: need at least one layer and no empty one"
                )));
            }
            if sizes[0] != inputs || sizes[sizes.len() - 1] != classes {
                return Err(GpuError::InvalidArgument(format!(
                    "ensemble members {first_sizes:?} and {sizes:?} differ in inputs or classes"
                )));
            }
            if let Net::Int8(_, path) = net {
                // Compile (or fail) before uploading anything.
                ctx.registry.get(&ctx.dev, Kernel::QuantizeRowsI8)?;
                ctx.registry.get(&ctx.dev, Kernel::LinearForwardI8(*path))?;
            }
        }
        let max_batch = max_batch.max(1);
        let device = &ctx.dev.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let built = Self::allocate(&ctx, inputs, classes, max_batch, &nets);
        let invalid = pollster::block_on(invalid.pop());
        let oom = pollster::block_on(oom.pop());
        if let Some(e) = oom {
            return Err(GpuError::Other(format!(
                "out of GPU memory while uploading the model: {e}"
            )));
        }
        if let Some(e) = invalid {
            return Err(GpuError::Other(format!("setting up the GPU predictor: {e}")));
        }
        let (members, raw, step, no_index, staging) = built?;
        let r = ctx.report();
        let kind = |m: &Resident| match &m.layers {
            Layers::F32(_) => "f32".to_string(),
            Layers::Int8 { path, .. } => format!("int8, {}", path.name()),
        };
        let name = match members.as_slice() {
            [one] => format!("gpu {} ({}, {})", kind(one), r.name, r.backend),
            many => format!(
                "gpu ensemble of {} [{}] in one submission ({}, {})",
                many.len(),
                many.iter().map(kind).collect::<Vec<_>>().join("; "),
                r.name,
                r.backend
            ),
        };
        Ok(GpuPredictor {
            name,
            ctx,
            inputs,
            classes,
            input_shape: input_shape.to_vec(),
            max_batch,
            members,
            raw,
            step,
            no_index,
            staging,
            host: Vec::new(),
            plans: (0..max_batch).map(|_| None).collect(),
        })
    }

    /// Upload one net's layers.
    fn upload(ctx: &GpuContext, net: &Net<'_>, tag: &str, rows: u64) -> Result<Layers, GpuError> {
        match net {
            Net::F32(model) => {
                let params = model
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(l, layer)| {
                        Ok((
                            ctx.dev.storage_init(
                                &format!("{tag} fc{} weight", l + 1),
                                bytemuck::cast_slice(&layer.weight),
                            )?,
                            ctx.dev
                                .storage_init(&format!("{tag} fc{} bias", l + 1), bytemuck::cast_slice(&layer.bias))?,
                        ))
                    })
                    .collect::<Result<Vec<_>, GpuError>>()?;
                Ok(Layers::F32(params))
            }
            Net::Int8(model, path) => {
                let mut layers = Vec::new();
                let (mut xq, mut x_scale) = (Vec::new(), Vec::new());
                for (l, p) in model.layers.iter().enumerate() {
                    let name = format!("{tag} fc{}", l + 1);
                    let layer = GpuI8Layer::upload(ctx, &name, p)?;
                    xq.push(
                        ctx.dev
                            .storage(&format!("{name} int8 input"), 4 * rows * layer.words as u64)?,
                    );
                    x_scale.push(ctx.dev.storage(&format!("{name} input scales"), 4 * rows)?);
                    layers.push(layer);
                }
                Ok(Layers::Int8 {
                    layers,
                    xq,
                    x_scale,
                    path: *path,
                })
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn allocate(
        ctx: &GpuContext,
        inputs: usize,
        classes: usize,
        max_batch: usize,
        nets: &[Net<'_>],
    ) -> Result<(Vec<Resident>, wgpu::Buffer, wgpu::Buffer, wgpu::Buffer, wgpu::Buffer), GpuError> {
        let rows = max_batch as u64;
        let mut members = Vec::with_capacity(nets.len());
        for (i, net) in nets.iter().enumerate() {
            let tag = if nets.len() == 1 {
                "predictor".to_string()
            } else {
                format!("predictor m{i}")
            };
            let layers = Self::upload(ctx, net, &tag, rows)?;
            let sizes = net.sizes();
            let acts = sizes[1..]
                .iter()
                .enumerate()
                .map(|(l, &n)| {
                    ctx.dev
                        .storage(&format!("{tag} fc{} output", l + 1), 4 * rows * n as u64)
                })
                .collect::<Result<Vec<_>, _>>()?;
            members.push(Resident {
                sizes,
                preprocess: net.preprocess(),
                layers,
                acts,
            });
        }
        let raw = ctx.dev.storage("predictor raw input", 4 * rows * inputs as u64)?;
        let step = ctx
            .dev
            .uniform_init("predictor step params", bytemuck::bytes_of(&StepParams::default()))?;
        let no_index = ctx.dev.storage("predictor gather index (unused)", 4)?;
        let staging = ctx.dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("predictor logits staging"),
            size: (4 * nets.len() as u64 * rows * classes as u64).max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok((members, raw, step, no_index, staging))
    }

    /// The dispatches of a forward pass over `rows` rows, every member's in
    /// turn.
    fn plan(&self, rows: usize) -> Result<Vec<Dispatch>, GpuError> {
        let ctx = &*self.ctx;
        let mut calls = Vec::new();
        let many = self.members.len() > 1;
        for (i, m) in self.members.iter().enumerate() {
            let nl = m.sizes.len() - 1;
            let s = &m.sizes;
            let tag = if many {
                format!("predict m{i} ({rows} rows)")
            } else {
                format!("predict ({rows} rows)")
            };
            match &m.layers {
                Layers::F32(params) => {
                    for (l, (w, b)) in params.iter().enumerate() {
                        let x = if l == 0 {
                            Operand::Data(DataSource {
                                data: &self.raw,
                                is_u8: false,
                                index: &self.no_index,
                                gather: false,
                                dim: s[0] as u32,
                                scale: m.preprocess.scale,
                                offset: m.preprocess.offset,
                                shift: None,
                            })
                        } else {
                            Operand::rows(&m.acts[l - 1], s[l])
                        };
                        let g = Gemm::linear_forward(x, w, b, &m.acts[l], rows, s[l], s[l + 1], l + 1 < nl);
                        let label = format!("{tag} fc{} linear_forward", l + 1);
                        calls.push(g.dispatch(ctx, &label, &self.step)?);
                    }
                }
                Layers::Int8 {
                    layers,
                    xq,
                    x_scale,
                    path,
                } => {
                    for (l, layer) in layers.iter().enumerate() {
                        let name = |k: &str| format!("{tag} fc{} {k}", l + 1);
                        let (x, pre) = if l == 0 {
                            (&self.raw, (m.preprocess.scale, m.preprocess.offset))
                        } else {
                            (&m.acts[l - 1], (1.0, 0.0))
                        };
                        calls.push(quantize_rows_i8(
                            ctx,
                            &name("quantize_rows_i8"),
                            rows,
                            s[l],
                            s[l],
                            layer.words,
                            pre,
                            x,
                            &xq[l],
                            &x_scale[l],
                        )?);
                        calls.push(linear_forward_i8(
                            ctx,
                            *path,
                            &name("linear_forward_i8"),
                            layer,
                            rows,
                            &xq[l],
                            &x_scale[l],
                            &m.acts[l],
                            s[l + 1],
                            l + 1 < nl,
                        )?);
                    }
                }
            }
        }
        Ok(calls)
    }

    /// Probabilities of `rows <= max_batch` raw rows into `out`
    /// (`[rows, classes]`): one submission (every member's forward pass and
    /// the copies of their logits), one wait, one map; then each member's
    /// softmax, averaged over the members.
    fn chunk(&mut self, raw: &[f32], rows: usize, out: &mut [f32]) -> Result<(), GpuError> {
        if self.plans[rows - 1].is_none() {
            self.plans[rows - 1] = Some(self.plan(rows)?);
        }
        let ctx = &*self.ctx;
        let plan = self.plans[rows - 1].as_deref().unwrap_or_default();
        ctx.dev.queue.write_buffer(&self.raw, 0, bytemuck::cast_slice(raw));
        let mut enc = ctx
            .dev
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("predict") });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("predict"),
                timestamp_writes: None,
            });
            for d in plan {
                d.record(&mut pass, 0);
            }
        }
        let one = 4 * out.len() as u64;
        for (i, m) in self.members.iter().enumerate() {
            let logits = m.acts.last().unwrap_or(&self.raw);
            enc.copy_buffer_to_buffer(logits, 0, &self.staging, i as u64 * one, one);
        }
        let bytes = one * self.members.len() as u64;
        let index = ctx.dev.queue.submit([enc.finish()]);
        let (tx, rx) = mpsc::channel();
        self.staging.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
            // The receiver is gone only if this function already returned.
            let _ = tx.send(r);
        });
        ctx.dev
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| GpuError::Readback(format!("waiting for the GPU: {e}")))?;
        let mapped = rx
            .recv()
            .map_err(|_| GpuError::Readback("the map callback never ran".into()))
            .and_then(|r| r.map_err(|e| GpuError::Readback(format!("mapping the logits: {e}"))));
        // A device error surfaces here, before a possibly garbage result.
        ctx.dev.check_fault()?;
        mapped?;
        let classes = self.classes;
        {
            let view = self
                .staging
                .get_mapped_range(..bytes)
                .map_err(|e| GpuError::Readback(format!("reading the logits: {e}")))?;
            if self.members.len() == 1 {
                out.copy_from_slice(bytemuck::cast_slice(&view));
            } else {
                self.host.clear();
                self.host.extend_from_slice(bytemuck::cast_slice(&view));
            }
        }
        self.staging.unmap();
        if self.members.len() == 1 {
            crate::cpu::kernels::softmax_rows(out, classes);
        } else {
            for (i, p) in self.host.chunks_exact_mut(out.len()).enumerate() {
                crate::cpu::kernels::softmax_rows(p, classes);
                add_member(out, p, i);
            }
            finish_mean(out, self.members.len());
        }
        Ok(())
    }
}

impl Predictor for GpuPredictor {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn waits_on_device(&self) -> bool {
        true
    }

    fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    fn inputs(&self) -> usize {
        self.inputs
    }

    fn classes(&self) -> usize {
        self.classes
    }

    fn probabilities_into(&mut self, raw: &[f32], out: &mut [f32]) -> Result<(), InferError> {
        let (dim, classes) = (self.inputs(), self.classes());
        if !raw.len().is_multiple_of(dim) {
            return Err(InferError::InputSize {
                source_name: "input".into(),
                expected: dim,
                found: raw.len() % dim,
                shape: self.input_shape.clone(),
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
        let mut start = 0;
        while start < rows {
            let n = self.max_batch.min(rows - start);
            self.chunk(
                &raw[start * dim..(start + n) * dim],
                n,
                &mut out[start * classes..(start + n) * classes],
            )
            .map_err(|e| InferError::Failed(e.to_string()))?;
            start += n;
        }
        Ok(())
    }
}
