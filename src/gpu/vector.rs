//! The kernels that run one thread per element of a parameter vector:
//! `bias_update` (SGD on a bias) and `apply_mask` (the pruning constraint,
//! `w *= mask`), twins of the functions of the same names in
//! [`crate::cpu::kernels`].

use super::context::GpuContext;
use super::dispatch::{fold, need_u32, Dispatch};
use super::registry::Kernel;
use super::uniforms::{BiasParams, MaskParams};
use crate::error::GpuError;

/// Invocations per workgroup (`THREADS` in bias_update.wgsl and apply_mask.wgsl).
const THREADS: u64 = 64;

/// A bias_update dispatch: `bias[outputs] -= lr * colsum(dy[rows, outputs])`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bias_update(
    ctx: &GpuContext,
    label: &str,
    rows: usize,
    outputs: usize,
    dy: &wgpu::Buffer,
    bias: &wgpu::Buffer,
    step: &wgpu::Buffer,
) -> Result<Dispatch, GpuError> {
    need_u32(
        &format!("{label}: rows*outputs elements"),
        (rows as u64) * (outputs as u64),
    )?;
    let p = BiasParams {
        rows: rows as u32,
        outputs: outputs as u32,
        ..Default::default()
    };
    let groups = fold(&ctx.dev, label, (outputs as u64).div_ceil(THREADS))?;
    Dispatch::new(
        ctx,
        Kernel::BiasUpdate,
        label,
        bytemuck::bytes_of(&p),
        Some(step),
        &[(2, dy), (3, bias)],
        groups,
    )
}

/// An apply_mask dispatch: `w[i] *= mask[i]` for `len` elements.
pub(crate) fn apply_mask(
    ctx: &GpuContext,
    label: &str,
    len: usize,
    mask: &wgpu::Buffer,
    w: &wgpu::Buffer,
    step: &wgpu::Buffer,
) -> Result<Dispatch, GpuError> {
    need_u32(&format!("{label}: elements"), len as u64)?;
    let p = MaskParams {
        len: len as u32,
        ..Default::default()
    };
    let groups = fold(&ctx.dev, label, (len as u64).div_ceil(THREADS))?;
    Dispatch::new(
        ctx,
        Kernel::ApplyMask,
        label,
        bytemuck::bytes_of(&p),
        Some(step),
        &[(2, mask), (3, w)],
        groups,
    )
}
