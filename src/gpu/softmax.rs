//! The loss kernels' calls: `softmax_xent` (training: the gradient of the
//! batch's mean loss, with optional label smoothing, the batch's loss and correct count into a stats
//! slot) and `softmax_xent_eval` (evaluation: each row's arg-max and the
//! summed loss), twins of the functions of the same names in
//! [`crate::cpu::kernels`].

use super::context::GpuContext;
use super::dispatch::{need_u32, Dispatch};
use super::registry::Kernel;
use super::uniforms::SoftmaxParams;
use crate::cpu::kernels::Smoothing;
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
