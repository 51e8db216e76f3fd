//! The loss kernels' calls: `softmax_xent` (training: the gradient of the
//! batch's mean loss, with optional label smoothing, the batch's loss and correct count into a stats
//! slot) and `softmax_xent_eval` (evaluation: each row's arg-max and the
//! summed loss), and distillation's `soft_targets` (a teacher's
//! probabilities at a temperature) and `soft_target_xent` (the
//! distillation loss), twins of the functions of the same names in
//! [`crate::cpu::kernels`].

use super::context::GpuContext;
use super::dispatch::{need_u32, Dispatch};
use super::registry::Kernel;
use super::uniforms::{SoftTargetParams, SoftmaxParams};
use crate::cpu::kernels::{Smoothing, SoftTarget};
use crate::error::GpuError;

/// A softmax_xent dispatch: `dlogits` from `rows` rows of `classes` logits,
/// labels read through `index` (the permutation, at the step's offset),
/// with label smoothing `smoothing` (0: none).
#[allow(clippy::too_many_arguments)]
pub(crate) fn softmax_xent(
    ctx: &GpuContext,
    label: &str,
    rows: usize,
    classes: usize,
    smoothing: f32,
    logits: &wgpu::Buffer,
    labels: &wgpu::Buffer,
    index: &wgpu::Buffer,
    dlogits: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    step: &wgpu::Buffer,
) -> Result<Dispatch, GpuError> {
    softmax_xent_part(
        ctx, label, rows, rows, classes, smoothing, logits, labels, index, dlogits, stats, step,
    )
}

/// [`softmax_xent`] of `rows` rows that are part of a batch of `of_rows`:
/// the gradient of the whole batch's mean loss (the CPU twin is
/// `softmax_xent_part`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn softmax_xent_part(
    ctx: &GpuContext,
    label: &str,
    rows: usize,
    of_rows: usize,
    classes: usize,
    smoothing: f32,
    logits: &wgpu::Buffer,
    labels: &wgpu::Buffer,
    index: &wgpu::Buffer,
    dlogits: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    step: &wgpu::Buffer,
) -> Result<Dispatch, GpuError> {
    let unused = &ctx.registry.unused_rw;
    let outputs = Outputs {
        dlogits,
        predictions: unused,
        stats,
    };
    build(
        ctx,
        Kernel::SoftmaxXent,
        label,
        rows,
        of_rows,
        classes,
        smoothing,
        logits,
        labels,
        Some(index),
        outputs,
        step,
    )
}

/// A softmax_xent_eval dispatch: `predictions` (at the step's offset) from
/// `rows` rows of `classes` logits, labels read in order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn softmax_xent_eval(
    ctx: &GpuContext,
    label: &str,
    rows: usize,
    classes: usize,
    logits: &wgpu::Buffer,
    labels: &wgpu::Buffer,
    predictions: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    step: &wgpu::Buffer,
) -> Result<Dispatch, GpuError> {
    let unused = &ctx.registry.unused_rw;
    let outputs = Outputs {
        dlogits: unused,
        predictions,
        stats,
    };
    build(
        ctx,
        Kernel::SoftmaxXentEval,
        label,
        rows,
        rows,
        classes,
        0.0,
        logits,
        labels,
        None,
        outputs,
        step,
    )
}

/// The buffers a softmax kernel writes.
struct Outputs<'a> {
    dlogits: &'a wgpu::Buffer,
    predictions: &'a wgpu::Buffer,
    stats: &'a wgpu::Buffer,
}

#[allow(clippy::too_many_arguments)]
fn build(
    ctx: &GpuContext,
    kernel: Kernel,
    label: &str,
    rows: usize,
    of_rows: usize,
    classes: usize,
    smoothing: f32,
    logits: &wgpu::Buffer,
    labels: &wgpu::Buffer,
    index: Option<&wgpu::Buffer>,
    out: Outputs,
    step: &wgpu::Buffer,
) -> Result<Dispatch, GpuError> {
    need_u32(
        &format!("{label}: rows*classes elements"),
        (rows as u64) * (classes as u64),
    )?;
    let sm = Smoothing::new(smoothing, of_rows, classes);
    let p = SoftmaxParams {
        rows: rows as u32,
        classes: classes as u32,
        gather: index.is_some() as u32,
        inv_rows: 1.0 / of_rows.max(1) as f32,
        smoothing: sm.s,
        keep: sm.keep,
        per_class: sm.per_class,
        d_label: sm.d_label,
        d_class: sm.d_class,
        ..Default::default()
    };
    Dispatch::new(
        ctx,
        kernel,
        label,
        bytemuck::bytes_of(&p),
        Some(step),
        &[
            (2, logits),
            (3, labels),
            (4, index.unwrap_or(&ctx.registry.unused_ro)),
            (5, out.dlogits),
            (6, out.predictions),
            (7, out.stats),
        ],
        // One workgroup reduces the whole batch (see softmax_xent.wgsl).
        if rows == 0 { (0, 0) } else { (1, 1) },
    )
}

/// A soft_targets dispatch: `probs` (+)= `weight` * softmax(`logits` / T)
/// over `rows` rows of `classes` teacher logits (`accumulate`: add to
/// `probs`, else overwrite it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn soft_targets(
    ctx: &GpuContext,
    label: &str,
    rows: usize,
    classes: usize,
    temperature: f32,
    weight: f32,
    accumulate: bool,
    logits: &wgpu::Buffer,
    probs: &wgpu::Buffer,
    step: &wgpu::Buffer,
) -> Result<Dispatch, GpuError> {
    need_u32(
        &format!("{label}: rows*classes elements"),
        (rows as u64) * (classes as u64),
    )?;
    let k = SoftTarget::new(temperature, 0.0, 0.0, rows, classes);
    let p = SoftTargetParams {
        rows: rows as u32,
        classes: classes as u32,
        accumulate: accumulate as u32,
        weight,
        inv_t: k.inv_t,
        ..Default::default()
    };
    let reg = &ctx.registry;
    let groups = rows.div_ceil(256) as u32;
    Dispatch::new(
        ctx,
        Kernel::SoftTargets,
        label,
        bytemuck::bytes_of(&p),
        Some(step),
        &[
            (2, logits),
            (3, &reg.unused_ro),
            (4, &reg.unused_ro),
            (5, probs),
            (6, &reg.unused_rw),
            (7, &reg.unused_rw),
        ],
        (groups, 1),
    )
}

/// A soft_target_xent dispatch: `dlogits` and the batch's loss and correct
/// count (into the step's stats slot) from `rows` rows of `classes`
/// student logits and the teachers' `probs`, labels read through `index`
/// (the permutation, at the step's offset), with the scalars of
/// [`SoftTarget::new`]; with `gather_probs`, `probs` is a table of every
/// training example's probabilities, read through `index` as the labels.
#[allow(clippy::too_many_arguments)]
pub(crate) fn soft_target_xent(
    ctx: &GpuContext,
    label: &str,
    rows: usize,
    classes: usize,
    k: &SoftTarget,
    gather_probs: bool,
    logits: &wgpu::Buffer,
    probs: &wgpu::Buffer,
    labels: &wgpu::Buffer,
    index: &wgpu::Buffer,
    dlogits: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    step: &wgpu::Buffer,
) -> Result<Dispatch, GpuError> {
    need_u32(
        &format!("{label}: rows*classes elements"),
        (rows as u64) * (classes as u64),
    )?;
    let p = SoftTargetParams {
        rows: rows as u32,
        classes: classes as u32,
        accumulate: 0,
        weight: 1.0,
        inv_t: k.inv_t,
        hard: k.hard,
        kl: k.kl,
        hard_grad: k.hard_grad,
        soft_grad: k.soft_grad,
        smoothing: k.smoothing.s,
        keep: k.smoothing.keep,
        per_class: k.smoothing.per_class,
        gather_probs: gather_probs as u32,
        ..Default::default()
    };
    Dispatch::new(
        ctx,
        Kernel::SoftTargetXent,
        label,
        bytemuck::bytes_of(&p),
        Some(step),
        &[
            (2, logits),
            (3, labels),
            (4, index),
            (5, probs),
            (6, dlogits),
            (7, stats),
        ],
        // One workgroup reduces the whole batch, as softmax_xent.
        if rows == 0 { (0, 0) } else { (1, 1) },
    )
}
