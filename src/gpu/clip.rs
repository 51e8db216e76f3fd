//! Gradient clipping's dispatches (clip_grad_norm.wgsl): the squares of
//! each layer's gradients summed into per-workgroup partials, then one
//! workgroup turning them into the step's coefficient, twins of
//! [`crate::cpu::kernels::grad_sq_sum`] and
//! [`crate::cpu::kernels::clip_coef`].

use super::context::GpuContext;
use super::dispatch::{fold, need_u32, Dispatch};
use super::registry::Kernel;
use super::uniforms::ClipParams;
use crate::error::GpuError;

/// Elements per workgroup of grad_sq_partial (`CHUNK` in clip_grad_norm.wgsl).
const CHUNK: u64 = 256 * 8;

/// The partial sums grad_sq_partial writes for a layer of `len` gradient
/// elements (weights and biases together).
pub(crate) fn partials(len: usize) -> usize {
    (len as u64).div_ceil(CHUNK) as usize
}

/// The buffers of a clipped step: the partial sums of every layer and the
/// coefficient (`[coef, norm]`) the updates read.
pub(crate) struct ClipBuffers {
    pub max_norm: f32,
    pub partials: wgpu::Buffer,
    /// `[coefficient, norm]`.
    pub coef: wgpu::Buffer,
    /// Where each layer's partial sums start, and their total.
    pub bases: Vec<usize>,
    pub count: usize,
}

impl ClipBuffers {
    /// Buffers for layers of `lens[l]` gradient elements each (weights and
    /// biases together).
    pub(crate) fn new(ctx: &GpuContext, max_norm: f32, lens: &[usize]) -> Result<Self, GpuError> {
        let mut bases = Vec::with_capacity(lens.len());
        let mut count = 0;
        for &n in lens {
            bases.push(count);
            count += partials(n);
        }
        need_u32("the partial sums of the gradient norm", count as u64)?;
        Ok(ClipBuffers {
            max_norm,
            partials: ctx.dev.storage_init(
                "gradient norm partial sums",
                bytemuck::cast_slice(&vec![0f32; count.max(1)]),
            )?,
            coef: ctx
                .dev
                .storage_init("clipping coefficient", bytemuck::cast_slice(&[1f32, 0.0]))?,
            bases,
            count,
        })
    }
}

/// A grad_sq_partial dispatch: the squares of `x[..len_x]` then
/// `y[..len_y]`, one partial sum per workgroup into `out[base..]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn grad_sq_partial(
    ctx: &GpuContext,
    label: &str,
    x: &wgpu::Buffer,
    len_x: usize,
    y: &wgpu::Buffer,
    len_y: usize,
    out: &wgpu::Buffer,
    base: usize,
) -> Result<Dispatch, GpuError> {
    let len = len_x as u64 + len_y as u64;
    let groups = len.div_ceil(CHUNK);
    // The shader indexes elements up to the folded grid's end in u32.
    need_u32(&format!("{label}: elements"), (groups + 1) * CHUNK)?;
    need_u32(&format!("{label}: partial sums"), base as u64 + groups)?;
    let p = ClipParams {
        len_x: len_x as u32,
        len_y: len_y as u32,
        base: base as u32,
        ..Default::default()
    };
    let grid = fold(&ctx.dev, label, groups)?;
    Dispatch::new(
        ctx,
        Kernel::GradSqPartial,
        label,
        bytemuck::bytes_of(&p),
        None,
        &[(1, x), (2, y), (3, out)],
        grid,
    )
}

/// A clip_coef dispatch: `out = [min(1, max_norm / (sqrt(sum) + 1e-6)),
/// sqrt(sum)]` where `sum` is the total of `partials[..count]`.
pub(crate) fn clip_coef(
    ctx: &GpuContext,
    label: &str,
    partials: &wgpu::Buffer,
    count: usize,
    max_norm: f32,
    out: &wgpu::Buffer,
) -> Result<Dispatch, GpuError> {
    need_u32(&format!("{label}: partial sums"), count as u64)?;
    let p = ClipParams {
        count: count as u32,
        max_norm,
        ..Default::default()
    };
    Dispatch::new(
        ctx,
        Kernel::ClipCoef,
        label,
        bytemuck::bytes_of(&p),
        None,
        &[(1, partials), (2, &ctx.registry.unused_ro), (3, out)],
        // One workgroup sums every partial in a fixed order.
        (1, 1),
    )
}
