//! Single kernels on host arrays, for tests and experiments: upload the
//! inputs, run one dispatch, read the output back. Each function mirrors its
//! CPU twin in [`crate::cpu::kernels`] (same name, same argument order, the
//! output returned instead of written into a slice).
//!
//! Outputs that a kernel fully overwrites are poisoned first (NaN for f32,
//! `u32::MAX` for classes), so an element the kernel fails to write shows up
//! in the comparison instead of passing as a stale zero.
//!
//! These build their dispatch from the same `Gemm` constructors the trainer
//! uses, so a passing test here covers the trainer's kernel calls.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::clip;
use super::context::GpuContext;
use super::dispatch::Dispatch;
use super::gemm::{DataSource, Gemm, LayerDropout, Operand, XentLoss};
use super::int8::{self, GpuI8Layer};
use super::optim;
use super::registry::{GemmKernel, Int8Path, Kernel};
use super::resident::upload_features;
use super::softmax;
use super::tile::Tile;
use super::uniforms::{Stat, StepParams, STAT_BYTES};
use super::vector;
use crate::backend::Precision;
use crate::cpu::optim::{AdamScalars, SgdScalars};
use crate::error::GpuError;
use crate::infer::int8::PackedI8Linear;
use crate::optim::draw::{Dropout, Shift};
use crate::optim::{Adam, Optimizer, Sgd};

/// The input of a layer: a dense matrix, or raw rows of a dataset gathered
/// by index and preprocessed inside the kernel (as the first layer reads
/// the resident training set).
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Row-major `[rows, inputs]`, already preprocessed.
    Dense(&'a [f32]),
    /// Row `r` is `features[index[r] * inputs ..][.. inputs] * scale + offset`.
    Gathered {
        /// The dataset's raw rows, `inputs` values each.
        features: &'a [f32],
        /// The dataset row of each batch row.
        index: &'a [u32],
        /// Multiplies each raw value (the preprocessing's scale).
        scale: f32,
        /// Added after the scale (the preprocessing's offset).
        offset: f32,
        /// Keep the features as bytes on the GPU (they must be integers in 0..=255).
        as_u8: bool,
    },
}

/// The tile variant the matrix products use for an `m` x `n` output (plus
/// one column for a fused bias) with inner dimension `k`, so that tests can
/// cover every variant.
pub fn gemm_tile(m: usize, n: usize, k: usize) -> Tile {
    Tile::for_shape(m as u64, n as u64, k as u64)
}

fn check_len(what: &str, got: usize, want: usize) -> Result<(), GpuError> {
    if got < want {
        return Err(GpuError::InvalidArgument(format!(
            "{what} holds {got} values but the shapes need {want}"
        )));
    }
    Ok(())
}

fn poisoned(ctx: &GpuContext, label: &str, len: usize) -> Result<wgpu::Buffer, GpuError> {
    ctx.dev.storage_init(label, bytemuck::cast_slice(&vec![f32::NAN; len]))
}

fn upload_f32(ctx: &GpuContext, label: &str, v: &[f32]) -> Result<wgpu::Buffer, GpuError> {
    ctx.dev.storage_init(label, bytemuck::cast_slice(v))
}

fn upload_u32(ctx: &GpuContext, label: &str, v: &[u32]) -> Result<wgpu::Buffer, GpuError> {
    ctx.dev.storage_init(label, bytemuck::cast_slice(v))
}

/// A stats slot poisoned with a NaN loss and an impossible count.
fn poisoned_stat(ctx: &GpuContext) -> Result<wgpu::Buffer, GpuError> {
    let poison = Stat {
        loss: f32::NAN,
        correct: u32::MAX,
    };
    ctx.dev.storage_init("stats", bytemuck::bytes_of(&poison))
}

/// A step buffer holding one [`StepParams`] with learning rate `lr`.
fn step_buffer(ctx: &GpuContext, lr: f32) -> Result<wgpu::Buffer, GpuError> {
    step_buffer_at(ctx, lr, 0)
}

/// [`step_buffer`] for the draws of step `draw_step`.
fn step_buffer_at(ctx: &GpuContext, lr: f32, draw_step: u64) -> Result<wgpu::Buffer, GpuError> {
    let p = StepParams {
        index_off: 0,
        slot: 0,
        lr,
        draw_step: draw_step as u32,
        ..Default::default()
    };
    ctx.dev.uniform_init("single-step params", bytemuck::bytes_of(&p))
}

/// The random draws of one training step (`crate::optim::draw`): the run's
/// seed, the step key, and what the kernel draws for.
#[derive(Debug, Clone, Copy)]
pub struct StepDraws {
    /// The run's seed.
    pub seed: u64,
    /// The step key: the backend's update count plus one.
    pub step: u64,
    /// Dropout after the ReLU, from this stream.
    pub dropout: Option<(Dropout, u32)>,
    /// The shift of a gathered input's images.
    pub shift: Option<Shift>,
}

/// Record dispatches in one pass, in order, and submit them (reads come
/// after them in queue order).
fn run(ctx: &GpuContext, ds: &[&Dispatch]) {
    let label = ds.first().map_or("no kernel", |d| d.kernel().name());
    let mut enc = ctx
        .dev
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: None,
        });
        for d in ds {
            d.record(&mut pass, 0);
        }
    }
    ctx.dev.queue.submit([enc.finish()]);
}

/// Keeps the buffers of an [`Input`] alive while its operand is in use.
enum InputBuffers {
    Dense(wgpu::Buffer),
    Gathered {
        data: wgpu::Buffer,
        index: wgpu::Buffer,
        dim: u32,
        scale: f32,
        offset: f32,
        is_u8: bool,
    },
}

impl InputBuffers {
    fn upload(ctx: &GpuContext, x: &Input, rows: usize, inputs: usize) -> Result<Self, GpuError> {
        Ok(match *x {
            Input::Dense(v) => {
                check_len("x", v.len(), rows * inputs)?;
                InputBuffers::Dense(upload_f32(ctx, "x", v)?)
            }
            Input::Gathered {
                features,
                index,
                scale,
                offset,
                as_u8,
            } => {
                check_len("index", index.len(), rows)?;
                let examples = features.len() / inputs.max(1);
                if let Some(&bad) = index[..rows].iter().find(|&&i| i as usize >= examples) {
                    return Err(GpuError::InvalidArgument(format!(
                        "index {bad} is past the {examples} examples in features"
                    )));
                }
                InputBuffers::Gathered {
                    data: upload_features(ctx, "features", features, as_u8)?,
                    index: upload_u32(ctx, "index", index)?,
                    dim: inputs as u32,
                    scale,
                    offset,
                    is_u8: as_u8,
                }
            }
        })
    }

    fn operand(&self, inputs: usize) -> Operand<'_> {
        match self {
            InputBuffers::Dense(b) => Operand::rows(b, inputs),
            InputBuffers::Gathered {
                data,
                index,
                dim,
                scale,
                offset,
                is_u8,
            } => Operand::Data(DataSource {
                data,
                is_u8: *is_u8,
                index,
                gather: true,
                dim: *dim,
                scale: *scale,
                offset: *offset,
                shift: None,
            }),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn matmul(
    ctx: &GpuContext,
    kernel: GemmKernel,
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    tile: Option<Tile>,
    precision: Precision,
) -> Result<Vec<f32>, GpuError> {
    check_len("a", a.len(), m * k)?;
    check_len("b", b.len(), k * n)?;
    let (ab, bb) = (upload_f32(ctx, "a", a)?, upload_f32(ctx, "b", b)?);
    let c = poisoned(ctx, "c", m * n)?;
    let g = Gemm::plain(kernel, &ab, &bb, &c, m, n, k).with_precision(precision);
    let step = step_buffer(ctx, 0.0)?;
    let tile = tile.unwrap_or_else(|| Tile::choose(m as u64, n as u64, k as u64, ctx.is_software()));
    run(ctx, &[&g.dispatch_with_tile(ctx, kernel.name(), &step, tile)?]);
    ctx.dev.read_f32(&c, m * n)
}

/// `c[m,n] = a[m,k] * b[k,n]`.
pub fn matmul_nn(ctx: &GpuContext, a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>, GpuError> {
    matmul(ctx, GemmKernel::MatmulNn, a, b, m, n, k, None, Precision::F32)
}

/// `c[m,n] = a[m,k] * b[n,k]^T`.
pub fn matmul_nt(ctx: &GpuContext, a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>, GpuError> {
    matmul(ctx, GemmKernel::MatmulNt, a, b, m, n, k, None, Precision::F32)
}

/// `c[m,n] = a[k,m]^T * b[k,n]`.
pub fn matmul_tn(ctx: &GpuContext, a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>, GpuError> {
    matmul(ctx, GemmKernel::MatmulTn, a, b, m, n, k, None, Precision::F32)
}

/// `matmul_nn`, `matmul_nt` or `matmul_tn` (by `variant`) with the tile
/// variant `tile` rather than the one chosen for the shape, so that tests
/// can run every variant on every shape.
#[allow(clippy::too_many_arguments)]
pub fn matmul_with_tile(
    ctx: &GpuContext,
    variant: &str,
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    tile: Tile,
) -> Result<Vec<f32>, GpuError> {
    matmul(ctx, matmul_entry(variant)?, a, b, m, n, k, Some(tile), Precision::F32)
}

/// [`matmul_with_tile`] at `precision`: with [`Precision::F16Mixed`] the
/// product reads every operand rounded to f16 and accumulates in f32 (the
/// training products of `--precision f16-mixed`; needs
/// [`GpuContext::supports_f16`]).
#[allow(clippy::too_many_arguments)]
pub fn matmul_with_precision(
    ctx: &GpuContext,
    variant: &str,
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    tile: Tile,
    precision: Precision,
) -> Result<Vec<f32>, GpuError> {
    matmul(ctx, matmul_entry(variant)?, a, b, m, n, k, Some(tile), precision)
}

/// The entry point of a plain product by its variant: `nn`, `nt` or `tn`.
fn matmul_entry(variant: &str) -> Result<GemmKernel, GpuError> {
    match variant {
        "nn" => Ok(GemmKernel::MatmulNn),
        "nt" => Ok(GemmKernel::MatmulNt),
        "tn" => Ok(GemmKernel::MatmulTn),
        _ => Err(GpuError::Other(format!("no matmul variant {variant:?} (nn, nt or tn)"))),
    }
}

/// `y[rows, outputs] = x[rows, inputs] * w[outputs, inputs]^T + bias`, then
/// ReLU when `relu`.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    ctx: &GpuContext,
    x: Input,
    w: &[f32],
    bias: &[f32],
    rows: usize,
    inputs: usize,
    outputs: usize,
    relu: bool,
) -> Result<Vec<f32>, GpuError> {
    check_len("w", w.len(), outputs * inputs)?;
    check_len("bias", bias.len(), outputs)?;
    let xb = InputBuffers::upload(ctx, &x, rows, inputs)?;
    let (wb, bb) = (upload_f32(ctx, "w", w)?, upload_f32(ctx, "bias", bias)?);
    let y = poisoned(ctx, "y", rows * outputs)?;
    let g = Gemm::linear_forward(xb.operand(inputs), &wb, &bb, &y, rows, inputs, outputs, relu);
    let step = step_buffer(ctx, 0.0)?;
    run(ctx, &[&g.dispatch(ctx, "linear_forward", &step)?]);
    ctx.dev.read_f32(&y, rows * outputs)
}

/// [`linear_forward`] as a training step runs it, with the step's `draws`:
/// inverted dropout after the ReLU, and a gathered input's images shifted
/// (the twins of `cpu::kernels::linear_forward_dropout` and
/// `gather_rows_shifted`).
#[allow(clippy::too_many_arguments)]
pub fn linear_forward_train(
    ctx: &GpuContext,
    x: Input,
    w: &[f32],
    bias: &[f32],
    rows: usize,
    inputs: usize,
    outputs: usize,
    relu: bool,
    draws: &StepDraws,
) -> Result<Vec<f32>, GpuError> {
    check_len("w", w.len(), outputs * inputs)?;
    check_len("bias", bias.len(), outputs)?;
    let xb = InputBuffers::upload(ctx, &x, rows, inputs)?;
    let (wb, bb) = (upload_f32(ctx, "w", w)?, upload_f32(ctx, "bias", bias)?);
    let y = poisoned(ctx, "y", rows * outputs)?;
    let mut xo = xb.operand(inputs);
    if let (Operand::Data(d), Some(shift)) = (&mut xo, draws.shift) {
        d.shift = Some((shift, draws.seed));
    }
    let dropout = draws.dropout.map(|(drop, stream)| LayerDropout {
        drop,
        seed: draws.seed,
        stream,
    });
    let g = Gemm::linear_forward(xo, &wb, &bb, &y, rows, inputs, outputs, relu).with_dropout(dropout);
    let step = step_buffer_at(ctx, 0.0, draws.step)?;
    run(ctx, &[&g.dispatch(ctx, "linear_forward", &step)?]);
    ctx.dev.read_f32(&y, rows * outputs)
}

/// [`backprop_input`] through a layer whose input went through dropout:
/// the kept units' gradients times `drop.scale`.
#[allow(clippy::too_many_arguments)]
pub fn backprop_input_dropout(
    ctx: &GpuContext,
    dy: &[f32],
    w: &[f32],
    x: &[f32],
    rows: usize,
    inputs: usize,
    outputs: usize,
    drop: Dropout,
) -> Result<Vec<f32>, GpuError> {
    check_len("dy", dy.len(), rows * outputs)?;
    check_len("w", w.len(), outputs * inputs)?;
    check_len("x", x.len(), rows * inputs)?;
    let (dyb, wb, xb) = (
        upload_f32(ctx, "dy", dy)?,
        upload_f32(ctx, "w", w)?,
        upload_f32(ctx, "x", x)?,
    );
    let dx = poisoned(ctx, "dx", rows * inputs)?;
    let dropout = LayerDropout {
        drop,
        seed: 0,
        stream: 0,
    };
    let g = Gemm::backprop_input(&dyb, &wb, &xb, &dx, rows, inputs, outputs).with_dropout(Some(dropout));
    let step = step_buffer(ctx, 0.0)?;
    run(ctx, &[&g.dispatch(ctx, "backprop_input", &step)?]);
    ctx.dev.read_f32(&dx, rows * inputs)
}

/// `dx[rows, inputs] = (dy[rows, outputs] * w[outputs, inputs]) * (x > 0)`.
#[allow(clippy::too_many_arguments)]
pub fn backprop_input(
    ctx: &GpuContext,
    dy: &[f32],
    w: &[f32],
    x: &[f32],
    rows: usize,
    inputs: usize,
    outputs: usize,
) -> Result<Vec<f32>, GpuError> {
    check_len("dy", dy.len(), rows * outputs)?;
    check_len("w", w.len(), outputs * inputs)?;
    check_len("x", x.len(), rows * inputs)?;
    let (dyb, wb, xb) = (
        upload_f32(ctx, "dy", dy)?,
        upload_f32(ctx, "w", w)?,
        upload_f32(ctx, "x", x)?,
    );
    let dx = poisoned(ctx, "dx", rows * inputs)?;
    let g = Gemm::backprop_input(&dyb, &wb, &xb, &dx, rows, inputs, outputs);
    let step = step_buffer(ctx, 0.0)?;
    run(ctx, &[&g.dispatch(ctx, "backprop_input", &step)?]);
    ctx.dev.read_f32(&dx, rows * inputs)
}

/// `w[outputs, inputs] - lr * dy[rows, outputs]^T * x[rows, inputs]`, and
/// with a bias also `bias[outputs] - lr * colsum(dy)` (bias_update fused in
/// as an extra column of ones), in one weight_update dispatch. Returns the
/// new weights and bias.
#[allow(clippy::too_many_arguments)]
pub fn weight_update(
    ctx: &GpuContext,
    w: &[f32],
    bias: Option<&[f32]>,
    dy: &[f32],
    x: Input,
    rows: usize,
    inputs: usize,
    outputs: usize,
    lr: f32,
) -> Result<(Vec<f32>, Option<Vec<f32>>), GpuError> {
    update(ctx, w, bias, None, dy, x, rows, inputs, outputs, lr)
}

/// The whole SGD update of a layer as a training step runs it: the
/// weight_update dispatch with the bias (`w -= lr * dy^T x`,
/// `b -= lr * colsum(dy)`), then, when there is a mask, an apply_mask
/// dispatch (`w *= mask`), in one submission. Returns the new `(w, b)`.
#[allow(clippy::too_many_arguments)]
pub fn sgd_update(
    ctx: &GpuContext,
    w: &[f32],
    b: &[f32],
    mask: Option<&[f32]>,
    dy: &[f32],
    x: Input,
    rows: usize,
    inputs: usize,
    outputs: usize,
    lr: f32,
) -> Result<(Vec<f32>, Vec<f32>), GpuError> {
    let (w, b) = update(ctx, w, Some(b), mask, dy, x, rows, inputs, outputs, lr)?;
    Ok((w, b.unwrap_or_default()))
}

/// weight_update (with `bias` when given), then apply_mask (with `mask`).
#[allow(clippy::too_many_arguments)]
fn update(
    ctx: &GpuContext,
    w: &[f32],
    bias: Option<&[f32]>,
    mask: Option<&[f32]>,
    dy: &[f32],
    x: Input,
    rows: usize,
    inputs: usize,
    outputs: usize,
    lr: f32,
) -> Result<(Vec<f32>, Option<Vec<f32>>), GpuError> {
    check_len("w", w.len(), outputs * inputs)?;
    check_len("dy", dy.len(), rows * outputs)?;
    if let Some(b) = bias {
        check_len("bias", b.len(), outputs)?;
    }
    if let Some(m) = mask {
        check_len("mask", m.len(), outputs * inputs)?;
    }
    let xb = InputBuffers::upload(ctx, &x, rows, inputs)?;
    let (wb, dyb) = (upload_f32(ctx, "w", w)?, upload_f32(ctx, "dy", dy)?);
    let bb = bias.map(|b| upload_f32(ctx, "bias", b)).transpose()?;
    let mb = mask.map(|m| upload_f32(ctx, "mask", m)).transpose()?;
    let g = Gemm::weight_update(&wb, bb.as_ref(), &dyb, xb.operand(inputs), rows, inputs, outputs);
    let step = step_buffer(ctx, lr)?;
    let mut plan = vec![g.dispatch(ctx, "weight_update", &step)?];
    if let Some(mb) = &mb {
        plan.push(vector::apply_mask(ctx, "apply_mask", outputs * inputs, mb, &wb, &step)?);
    }
    run(ctx, &plan.iter().collect::<Vec<_>>());
    let mut ranges = vec![(&wb, 0, 4 * (outputs * inputs) as u64)];
    if let Some(bb) = &bb {
        ranges.push((bb, 0, 4 * outputs as u64));
    }
    let bytes = ctx.dev.read_back(None, &ranges)?;
    Ok((
        bytemuck::pod_collect_to_vec(&bytes[0]),
        bytes.get(1).map(|b| bytemuck::pod_collect_to_vec(b)),
    ))
}

/// `w * mask`, element by element.
pub fn apply_mask(ctx: &GpuContext, w: &[f32], mask: &[f32]) -> Result<Vec<f32>, GpuError> {
    check_len("mask", mask.len(), w.len())?;
    let (wb, mb) = (upload_f32(ctx, "w", w)?, upload_f32(ctx, "mask", mask)?);
    let step = step_buffer(ctx, 0.0)?;
    run(
        ctx,
        &[&vector::apply_mask(ctx, "apply_mask", w.len(), &mb, &wb, &step)?],
    );
    ctx.dev.read_f32(&wb, w.len())
}

/// `b[outputs] - lr * (sum over rows of dy[rows, outputs])`.
pub fn bias_update(
    ctx: &GpuContext,
    b: &[f32],
    dy: &[f32],
    rows: usize,
    outputs: usize,
    lr: f32,
) -> Result<Vec<f32>, GpuError> {
    check_len("b", b.len(), outputs)?;
    check_len("dy", dy.len(), rows * outputs)?;
    let (bb, dyb) = (upload_f32(ctx, "b", b)?, upload_f32(ctx, "dy", dy)?);
    let step = step_buffer(ctx, lr)?;
    run(
        ctx,
        &[&vector::bias_update(
            ctx,
            "bias_update",
            rows,
            outputs,
            &dyb,
            &bb,
            &step,
        )?],
    );
    ctx.dev.read_f32(&bb, outputs)
}

/// [`crate::cpu::optim::sgd_momentum_update`] on the GPU: the updated
/// parameters and momentum buffer (empty when `s.momentum == 0`).
pub fn sgd_momentum_update(
    ctx: &GpuContext,
    p: &[f32],
    g: &[f32],
    buf: &[f32],
    s: SgdScalars,
) -> Result<(Vec<f32>, Vec<f32>), GpuError> {
    check_len("g", g.len(), p.len())?;
    let with_buf = s.momentum != 0.0;
    if with_buf {
        check_len("buf", buf.len(), p.len())?;
    }
    let opt = Optimizer::Sgd(Sgd {
        momentum: s.momentum,
        nesterov: s.nesterov,
        weight_decay: s.weight_decay,
    });
    let (pb, gb) = (upload_f32(ctx, "p", p)?, upload_f32(ctx, "g", g)?);
    let [spare0, spare1] = optim::spares(ctx)?;
    let bb = if with_buf { upload_f32(ctx, "buf", buf)? } else { spare0 };
    let step = step_buffer(ctx, s.lr)?;
    let one = optim::unit_coef(ctx)?;
    let d = optim::optim_update(
        ctx,
        "sgd_momentum_update",
        &opt,
        p.len(),
        &gb,
        &pb,
        &bb,
        &spare1,
        &one,
        &step,
    )?;
    run(ctx, &[&d]);
    let b = if with_buf {
        ctx.dev.read_f32(&bb, p.len())?
    } else {
        Vec::new()
    };
    Ok((ctx.dev.read_f32(&pb, p.len())?, b))
}

/// The updated parameters, `m` and `v` of an Adam step.
pub type AdamOut = (Vec<f32>, Vec<f32>, Vec<f32>);

/// [`crate::cpu::optim::adam_update`] on the GPU: the updated parameters,
/// `m` and `v`.
pub fn adam_update(
    ctx: &GpuContext,
    p: &[f32],
    g: &[f32],
    m: &[f32],
    v: &[f32],
    s: AdamScalars,
) -> Result<AdamOut, GpuError> {
    for (what, x) in [("g", g), ("m", m), ("v", v)] {
        check_len(what, x.len(), p.len())?;
    }
    let a = Adam {
        betas: (s.beta1, s.beta2),
        eps: s.eps,
        weight_decay: s.weight_decay,
    };
    let opt = if s.decoupled {
        Optimizer::AdamW(a)
    } else {
        Optimizer::Adam(a)
    };
    let (pb, gb) = (upload_f32(ctx, "p", p)?, upload_f32(ctx, "g", g)?);
    let (mb, vb) = (upload_f32(ctx, "m", m)?, upload_f32(ctx, "v", v)?);
    let sp = StepParams {
        lr: s.lr,
        step_size: s.step_size,
        bc2_sqrt: s.bc2_sqrt,
        ..Default::default()
    };
    let step = ctx.dev.uniform_init("single-step params", bytemuck::bytes_of(&sp))?;
    let one = optim::unit_coef(ctx)?;
    let d = optim::optim_update(ctx, "adam_update", &opt, p.len(), &gb, &pb, &mb, &vb, &one, &step)?;
    run(ctx, &[&d]);
    let n = p.len();
    Ok((
        ctx.dev.read_f32(&pb, n)?,
        ctx.dev.read_f32(&mb, n)?,
        ctx.dev.read_f32(&vb, n)?,
    ))
}

fn check_labels(labels: &[u32], rows: usize, classes: usize) -> Result<(), GpuError> {
    check_len("labels", labels.len(), rows)?;
    match labels[..rows].iter().find(|&&l| l as usize >= classes) {
        Some(l) => Err(GpuError::InvalidArgument(format!(
            "label {l} is not below {classes} classes"
        ))),
        None => Ok(()),
    }
}

/// Softmax cross-entropy forward and backward with label smoothing
/// `smoothing` (0: none): `dlogits = (softmax - q) / rows`, the summed
/// loss, and the number of rows whose arg-max is the label.
pub fn softmax_xent(
    ctx: &GpuContext,
    logits: &[f32],
    labels: &[u32],
    rows: usize,
    classes: usize,
    smoothing: f32,
) -> Result<(Vec<f32>, f64, u32), GpuError> {
    check_len("logits", logits.len(), rows * classes)?;
    check_labels(labels, rows, classes)?;
    let zb = upload_f32(ctx, "logits", logits)?;
    let lb = upload_u32(ctx, "labels", labels)?;
    // Gather through the identity, as a training step gathers through the permutation.
    let identity: Vec<u32> = (0..rows as u32).collect();
    let ib = upload_u32(ctx, "index", &identity)?;
    let d = poisoned(ctx, "dlogits", rows * classes)?;
    let stats = poisoned_stat(ctx)?;
    let step = step_buffer(ctx, 0.0)?;
    let disp = softmax::softmax_xent(
        ctx,
        "softmax_xent",
        rows,
        classes,
        smoothing,
        &zb,
        &lb,
        &ib,
        &d,
        &stats,
        &step,
    )?;
    run(ctx, &[&disp]);
    let bytes = ctx
        .dev
        .read_back(None, &[(&d, 0, 4 * (rows * classes) as u64), (&stats, 0, STAT_BYTES)])?;
    let s: Stat = bytemuck::pod_read_unaligned(&bytes[1]);
    Ok((bytemuck::pod_collect_to_vec(&bytes[0]), s.loss as f64, s.correct))
}

/// What [`linear_softmax_xent`] computed, read back.
#[derive(Debug, Clone)]
pub struct LinearXent {
    /// `[rows, classes]`: `x w^T + bias`.
    pub logits: Vec<f32>,
    /// `[rows, classes]`: `(softmax - q) / of_rows`.
    pub dlogits: Vec<f32>,
    /// The step's stats entries summed in f64, as the trainer sums them.
    pub loss: f64,
    /// The step's correct counts summed.
    pub correct: u32,
    /// Every entry of the stats buffer, `(loss, correct)`: the dispatch
    /// writes slot 1 (entries `stride..2 * stride`: a partial per row
    /// block, then zeros); the slots before and after it start poisoned
    /// (NaN, `u32::MAX`) and must stay so.
    pub stats: Vec<(f32, u32)>,
    /// Stats entries per slot: the row blocks plus two, so the zeroing of
    /// the unused ones is seen.
    pub stride: usize,
    /// The tile variant the dispatch ran with.
    pub tile: Tile,
}

/// The last layer's forward pass with the training loss in its epilogue,
/// one dispatch (twin of [`crate::cpu::kernels::linear_softmax_xent`]):
/// the logits `x w^T + bias`, `dlogits = (softmax - q) / of_rows` with label
/// smoothing `smoothing`, and the loss and correct count of the rows. The
/// labels are read through a permutation (reversed), as a training step
/// reads them.
#[allow(clippy::too_many_arguments)]
pub fn linear_softmax_xent(
    ctx: &GpuContext,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    labels: &[u32],
    rows: usize,
    inputs: usize,
    classes: usize,
    smoothing: f32,
    of_rows: usize,
) -> Result<LinearXent, GpuError> {
    linear_softmax_xent_with(
        ctx,
        x,
        w,
        bias,
        labels,
        rows,
        inputs,
        classes,
        smoothing,
        of_rows,
        None,
        Precision::F32,
    )
}

/// [`linear_softmax_xent`] with the tile variant `tile` (`None`: the one
/// the trainer would choose) at `precision` (f16-mixed rounds `x` and `w`
/// as they are loaded; needs [`GpuContext::supports_f16`]).
#[allow(clippy::too_many_arguments)]
pub fn linear_softmax_xent_with(
    ctx: &GpuContext,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    labels: &[u32],
    rows: usize,
    inputs: usize,
    classes: usize,
    smoothing: f32,
    of_rows: usize,
    tile: Option<Tile>,
    precision: Precision,
) -> Result<LinearXent, GpuError> {
    check_len("x", x.len(), rows * inputs)?;
    check_len("w", w.len(), classes * inputs)?;
    check_len("bias", bias.len(), classes)?;
    check_labels(labels, rows, classes)?;
    if of_rows < rows {
        return Err(GpuError::InvalidArgument(format!(
            "{rows} rows of a batch of {of_rows}"
        )));
    }
    let (xb, wb, bb) = (
        upload_f32(ctx, "x", x)?,
        upload_f32(ctx, "w", w)?,
        upload_f32(ctx, "bias", bias)?,
    );
    // Row r's example is index[r] = rows - 1 - r, whose label is labels[r].
    let reversed: Vec<u32> = labels[..rows].iter().rev().copied().collect();
    let index: Vec<u32> = (0..rows as u32).rev().collect();
    let (lb, ib) = (upload_u32(ctx, "labels", &reversed)?, upload_u32(ctx, "index", &index)?);
    let logits = poisoned(ctx, "logits", rows * classes)?;
    let dlogits = poisoned(ctx, "dlogits", rows * classes)?;
    let blocks = rows.div_ceil(Tile::narrowest() as usize);
    let stride = blocks + 2;
    let poison = Stat {
        loss: f32::NAN,
        correct: u32::MAX,
    };
    let stats = ctx
        .dev
        .storage_init("stats", bytemuck::cast_slice(&vec![poison; 3 * stride]))?;
    let p = StepParams {
        slot: 1,
        ..Default::default()
    };
    let step = ctx.dev.uniform_init("single-step params", bytemuck::bytes_of(&p))?;
    let loss = XentLoss {
        labels: &lb,
        index: &ib,
        gather: true,
        dlogits: &dlogits,
        stats: &stats,
        stat_stride: stride,
        of_rows,
        smoothing,
    };
    let g = Gemm::linear_softmax_xent(&xb, &wb, &bb, &logits, rows, inputs, classes, loss).with_precision(precision);
    let d = match tile {
        Some(t) => g.dispatch_with_tile(ctx, "linear_softmax_xent", &step, t)?,
        None => g.dispatch(ctx, "linear_softmax_xent", &step)?,
    };
    let Kernel::Gemm(_, tile, _) = d.kernel() else {
        return Err(GpuError::Other("linear_softmax_xent is not a GEMM kernel".into()));
    };
    run(ctx, &[&d]);
    let n = 4 * (rows * classes) as u64;
    let bytes = ctx.dev.read_back(
        None,
        &[
            (&logits, 0, n),
            (&dlogits, 0, n),
            (&stats, 0, STAT_BYTES * 3 * stride as u64),
        ],
    )?;
    let all: Vec<Stat> = bytemuck::pod_collect_to_vec(&bytes[2]);
    let slot = &all[stride..2 * stride];
    Ok(LinearXent {
        logits: bytemuck::pod_collect_to_vec(&bytes[0]),
        dlogits: bytemuck::pod_collect_to_vec(&bytes[1]),
        loss: slot.iter().map(|s| f64::from(s.loss)).sum(),
        correct: slot.iter().map(|s| s.correct).fold(0u32, u32::wrapping_add),
        stats: all.iter().map(|s| (s.loss, s.correct)).collect(),
        stride,
        tile,
    })
}

/// Twin of [`crate::cpu::kernels::soft_targets`]: `weight * softmax(logits
/// / T)` per row, added to `probs` when `accumulate` (else `probs` is only
/// its shape and the output is poisoned first).
#[allow(clippy::too_many_arguments)]
pub fn soft_targets(
    ctx: &GpuContext,
    logits: &[f32],
    probs: &[f32],
    rows: usize,
    classes: usize,
    temperature: f32,
    weight: f32,
    accumulate: bool,
) -> Result<Vec<f32>, GpuError> {
    check_len("logits", logits.len(), rows * classes)?;
    check_len("probs", probs.len(), rows * classes)?;
    let zb = upload_f32(ctx, "teacher logits", logits)?;
    let pb = match accumulate {
        true => upload_f32(ctx, "probs", probs)?,
        false => poisoned(ctx, "probs", rows * classes)?,
    };
    let step = step_buffer(ctx, 0.0)?;
    let disp = softmax::soft_targets(
        ctx,
        "soft_targets",
        rows,
        classes,
        temperature,
        weight,
        accumulate,
        &zb,
        &pb,
        &step,
    )?;
    run(ctx, &[&disp]);
    ctx.dev.read_f32(&pb, rows * classes)
}

/// Twin of [`crate::cpu::kernels::soft_target_xent`]: the distillation
/// loss's gradient with respect to the student's logits, the summed loss,
/// and the number of rows whose arg-max is the label. With `index`, row
/// `r`'s label and probabilities are row `index[r]` of `labels` and
/// `probs` (tables of every example's, as a step reads cached ones); the
/// twin is then those rows gathered first.
#[allow(clippy::too_many_arguments)]
pub fn soft_target_xent(
    ctx: &GpuContext,
    logits: &[f32],
    probs: &[f32],
    labels: &[u32],
    rows: usize,
    classes: usize,
    k: &crate::cpu::kernels::SoftTarget,
    index: Option<&[u32]>,
) -> Result<(Vec<f32>, f64, u32), GpuError> {
    check_len("logits", logits.len(), rows * classes)?;
    let identity: Vec<u32> = (0..rows as u32).collect();
    let idx = index.unwrap_or(&identity);
    check_len("index", idx.len(), rows)?;
    let table = labels.len();
    if let Some(&bad) = idx[..rows].iter().find(|&&i| i as usize >= table) {
        return Err(GpuError::InvalidArgument(format!(
            "index {bad} is not below {table} rows"
        )));
    }
    check_len("probs", probs.len(), table * classes)?;
    check_labels(labels, table, classes)?;
    let zb = upload_f32(ctx, "logits", logits)?;
    let pb = upload_f32(ctx, "probs", probs)?;
    let lb = upload_u32(ctx, "labels", labels)?;
    let ib = upload_u32(ctx, "index", idx)?;
    let d = poisoned(ctx, "dlogits", rows * classes)?;
    let stats = poisoned_stat(ctx)?;
    let step = step_buffer(ctx, 0.0)?;
    let disp = softmax::soft_target_xent(
        ctx,
        "soft_target_xent",
        rows,
        classes,
        k,
        index.is_some(),
        &zb,
        &pb,
        &lb,
        &ib,
        &d,
        &stats,
        &step,
    )?;
    run(ctx, &[&disp]);
    let bytes = ctx
        .dev
        .read_back(None, &[(&d, 0, 4 * (rows * classes) as u64), (&stats, 0, STAT_BYTES)])?;
    let s: Stat = bytemuck::pod_read_unaligned(&bytes[1]);
    Ok((bytemuck::pod_collect_to_vec(&bytes[0]), s.loss as f64, s.correct))
}

/// Twin of [`crate::cpu::kernels::clip_coef`]: the global L2 norm of
/// `tensors` and the clipping coefficient for `max_norm`, through
/// grad_sq_partial (one dispatch per pair of tensors, as a step runs one
/// per layer: weight and bias) and clip_coef.
pub fn clip_coef(ctx: &GpuContext, tensors: &[&[f32]], max_norm: f32) -> Result<crate::cpu::kernels::Clip, GpuError> {
    let pairs: Vec<(&[f32], &[f32])> = tensors
        .chunks(2)
        .map(|c| (c[0], c.get(1).copied().unwrap_or_default()))
        .collect();
    let lens: Vec<usize> = pairs.iter().map(|(x, y)| x.len() + y.len()).collect();
    let bufs = clip::ClipBuffers::new(ctx, max_norm, &lens)?;
    // Poisoned, so a partial sum the kernel fails to write shows up.
    ctx.dev.queue.write_buffer(
        &bufs.partials,
        0,
        bytemuck::cast_slice(&vec![f32::NAN; bufs.count.max(1)]),
    );
    ctx.dev
        .queue
        .write_buffer(&bufs.coef, 0, bytemuck::cast_slice(&[f32::NAN, f32::NAN]));
    // A binding holds at least one element.
    let upload = |label: &str, v: &[f32]| upload_f32(ctx, label, if v.is_empty() { &[0.0] } else { v });
    let mut held = Vec::new();
    let mut ds = Vec::new();
    for (i, (x, y)) in pairs.iter().enumerate() {
        let (xb, yb) = (upload("x", x)?, upload("y", y)?);
        ds.push(clip::grad_sq_partial(
            ctx,
            "grad_sq_partial",
            &xb,
            x.len(),
            &yb,
            y.len(),
            &bufs.partials,
            bufs.bases[i],
        )?);
        held.push((xb, yb));
    }
    ds.push(clip::clip_coef(
        ctx,
        "clip_coef",
        &bufs.partials,
        bufs.count,
        max_norm,
        &bufs.coef,
    )?);
    run(ctx, &ds.iter().collect::<Vec<_>>());
    let out = ctx.dev.read_f32(&bufs.coef, 2)?;
    Ok(crate::cpu::kernels::Clip {
        coef: out[0],
        norm: out[1],
    })
}

/// Per-row arg-max and the summed softmax cross-entropy loss (evaluation).
pub fn softmax_xent_eval(
    ctx: &GpuContext,
    logits: &[f32],
    labels: &[u32],
    rows: usize,
    classes: usize,
) -> Result<(Vec<u32>, f64), GpuError> {
    check_len("logits", logits.len(), rows * classes)?;
    check_labels(labels, rows, classes)?;
    let zb = upload_f32(ctx, "logits", logits)?;
    let lb = upload_u32(ctx, "labels", labels)?;
    let pred = upload_u32(ctx, "predictions", &vec![u32::MAX; rows])?;
    let stats = poisoned_stat(ctx)?;
    let step = step_buffer(ctx, 0.0)?;
    let disp = softmax::softmax_xent_eval(ctx, "softmax_xent_eval", rows, classes, &zb, &lb, &pred, &stats, &step)?;
    run(ctx, &[&disp]);
    let bytes = ctx
        .dev
        .read_back(None, &[(&pred, 0, 4 * rows as u64), (&stats, 0, STAT_BYTES)])?;
    let s: Stat = bytemuck::pod_read_unaligned(&bytes[1]);
    Ok((bytemuck::pod_collect_to_vec(&bytes[0]), s.loss as f64))
}

/// Seconds per call of one product `C = op(A) op(B)` (`variant` is `nn`,
/// `nt` or `tn`: which operand is stored transposed) on random inputs,
/// `reps` dispatches in one submission, with the tile variant `tile` (the
/// automatic choice when `None`). Returns the time and the tile used.
pub fn bench_matmul(
    ctx: &GpuContext,
    variant: &str,
    m: usize,
    n: usize,
    k: usize,
    reps: usize,
    tile: Option<Tile>,
) -> Result<(f64, Tile), GpuError> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut random = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let a = upload_f32(ctx, "bench a", &random(m * k))?;
    let b = upload_f32(ctx, "bench b", &random(k * n))?;
    let c = ctx.dev.storage("bench c", 4 * (m * n) as u64)?;
    let g = Gemm::plain(matmul_entry(variant)?, &a, &b, &c, m, n, k);
    let step = step_buffer(ctx, 0.0)?;
    let tile = tile.unwrap_or_else(|| Tile::choose(m as u64, n as u64, k as u64, ctx.is_software()));
    let d = g.dispatch_with_tile(ctx, "bench matmul", &step, tile)?;
    let record = |count: usize| {
        let mut enc = ctx.dev.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("bench matmul"),
        });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("bench matmul"),
                timestamp_writes: None,
            });
            for _ in 0..count {
                d.record(&mut pass, 0);
            }
        }
        enc
    };
    // Warm-up: first-use costs (driver compilation, memory residency).
    ctx.dev.read_back(Some(record(1)), &[(&c, 0, 4)])?;
    let reps = reps.max(1);
    let enc = record(reps);
    let t = std::time::Instant::now();
    ctx.dev.read_back(Some(enc), &[(&c, 0, 4)])?;
    Ok((t.elapsed().as_secs_f64() / reps as f64, tile))
}

/// A byte value `quantize_rows_i8` never writes (it clamps to -127..=127),
/// so an unwritten byte of a poisoned output shows up as -128.
const I8_POISON: u32 = 0x8080_8080;

/// Twin of [`crate::infer::int8::quantize_rows_i8`]: `rows` rows of
/// `inputs` values into `[rows, stride]` int8 values (zeros past `inputs`)
/// and one scale per row. `stride` must be a multiple of 4 (the GPU packs
/// four values to a word).
pub fn quantize_rows_i8(
    ctx: &GpuContext,
    x: &[f32],
    rows: usize,
    inputs: usize,
    stride: usize,
) -> Result<(Vec<i8>, Vec<f32>), GpuError> {
    check_len("x", x.len(), rows * inputs)?;
    if !stride.is_multiple_of(4) || stride < inputs {
        return Err(GpuError::InvalidArgument(format!(
            "stride {stride} is not a multiple of 4 at least {inputs}"
        )));
    }
    let words = stride / 4;
    let xb = upload_f32(ctx, "x", x)?;
    let xq = upload_u32(ctx, "xq", &vec![I8_POISON; rows * words])?;
    let xs = poisoned(ctx, "x_scale", rows)?;
    let d = int8::quantize_rows_i8(
        ctx,
        "quantize_rows_i8",
        rows,
        inputs,
        inputs,
        words,
        (1.0, 0.0),
        &xb,
        &xq,
        &xs,
    )?;
    run(ctx, &[&d]);
    let bytes = ctx
        .dev
        .read_back(None, &[(&xq, 0, 4 * (rows * words) as u64), (&xs, 0, 4 * rows as u64)])?;
    Ok((
        bytes[0].iter().map(|&b| b as i8).collect(),
        bytemuck::pod_collect_to_vec(&bytes[1]),
    ))
}

/// Twin of [`crate::infer::int8::linear_forward_i8`] through the
/// dot-product `path`: `[rows, layer.outputs]` outputs from stride-padded
/// activations `xq` (`[rows, layer.stride]`) with per-row scales.
pub fn linear_forward_i8(
    ctx: &GpuContext,
    path: Int8Path,
    layer: &PackedI8Linear,
    xq: &[i8],
    x_scale: &[f32],
    rows: usize,
    relu: bool,
) -> Result<Vec<f32>, GpuError> {
    check_len("xq", xq.len(), rows * layer.stride)?;
    check_len("x_scale", x_scale.len(), rows)?;
    let w = GpuI8Layer::upload(ctx, "layer", layer)?;
    let words: Vec<u32> = xq[..rows * layer.stride]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]))
        .collect();
    let xb = upload_u32(ctx, "xq", &words)?;
    let sb = upload_f32(ctx, "x_scale", x_scale)?;
    let y = poisoned(ctx, "y", rows * layer.outputs)?;
    let d = int8::linear_forward_i8(
        ctx,
        path,
        "linear_forward_i8",
        &w,
        rows,
        &xb,
        &sb,
        &y,
        layer.outputs,
        relu,
    )?;
    run(ctx, &[&d]);
    ctx.dev.read_f32(&y, rows * layer.outputs)
}
