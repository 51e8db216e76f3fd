//! The optimizer updates of the unfused rules (optim_update.wgsl): the
//! buffers a layer needs for them, and one dispatch per tensor, twins of
//! [`crate::cpu::optim`]'s kernels. Plain SGD gets here only when the
//! step clips its gradients; otherwise it stays fused into weight_update.

use super::context::GpuContext;
use super::dispatch::{fold, need_u32, Dispatch};
use super::registry::Kernel;
use super::uniforms::OptimParams;
use crate::error::GpuError;
use crate::optim::Optimizer;

/// Invocations per workgroup (`THREADS` in optim_update.wgsl).
const THREADS: u64 = 64;

/// The gradient buffers and the optimizer state of one layer, on the GPU.
pub(crate) struct LayerOptim {
    /// `[outputs, inputs]` and `[outputs]`, written by weight_gradient.
    pub gw: wgpu::Buffer,
    pub gb: wgpu::Buffer,
    /// [`Optimizer::state_slots`] buffers per tensor, zeroed.
    pub w_state: Vec<wgpu::Buffer>,
    pub b_state: Vec<wgpu::Buffer>,
}

impl LayerOptim {
    /// Zeroed buffers for layer `l` of `weights` weights and `biases` biases.
    pub(crate) fn new(
        ctx: &GpuContext,
        optimizer: &Optimizer,
        l: usize,
        weights: usize,
        biases: usize,
    ) -> Result<Self, GpuError> {
        let zeros = |label: String, len: usize| ctx.dev.storage_init(&label, bytemuck::cast_slice(&vec![0f32; len]));
        let slots = optimizer.state_slots();
        Ok(LayerOptim {
            gw: zeros(format!("fc{} weight gradient", l + 1), weights)?,
            gb: zeros(format!("fc{} bias gradient", l + 1), biases)?,
            w_state: (0..slots)
                .map(|s| zeros(format!("fc{} weight state {s}", l + 1), weights))
                .collect::<Result<_, _>>()?,
            b_state: (0..slots)
                .map(|s| zeros(format!("fc{} bias state {s}", l + 1), biases))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// A clipping coefficient of 1, bound where a step does not clip.
pub(crate) fn unit_coef(ctx: &GpuContext) -> Result<wgpu::Buffer, GpuError> {
    ctx.dev
        .storage_init("no clipping (coefficient 1)", bytemuck::cast_slice(&[1f32, 0.0]))
}

/// One element buffers bound where an optimizer keeps fewer than two
/// state buffers (the kernels do not touch them then).
pub(crate) fn spares(ctx: &GpuContext) -> Result<[wgpu::Buffer; 2], GpuError> {
    Ok([
        ctx.dev
            .storage_init("unused optimizer state 0", bytemuck::cast_slice(&[0f32]))?,
        ctx.dev
            .storage_init("unused optimizer state 1", bytemuck::cast_slice(&[0f32]))?,
    ])
}

/// The update of one tensor `p` of `len` elements from its gradient `g`,
/// with state `s0` (momentum buffer, or Adam's m) and `s1` (Adam's v);
/// the gradient is scaled by `coef[0]` (the step's clipping coefficient,
/// or [`unit_coef`]); the per-step scalars are read from `step`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn optim_update(
    ctx: &GpuContext,
    label: &str,
    optimizer: &Optimizer,
    len: usize,
    g: &wgpu::Buffer,
    p: &wgpu::Buffer,
    s0: &wgpu::Buffer,
    s1: &wgpu::Buffer,
    coef: &wgpu::Buffer,
    step: &wgpu::Buffer,
) -> Result<Dispatch, GpuError> {
    need_u32(&format!("{label}: elements"), len as u64)?;
    let (kernel, params) = match optimizer {
        Optimizer::Sgd(s) => (
            Kernel::SgdMomentumUpdate,
            OptimParams {
                len: len as u32,
                variant: u32::from(s.nesterov),
                beta1: s.momentum,
                weight_decay: s.weight_decay,
                ..Default::default()
            },
        ),
        Optimizer::Adam(a) | Optimizer::AdamW(a) => (
            Kernel::AdamUpdate,
            OptimParams {
                len: len as u32,
                variant: u32::from(matches!(optimizer, Optimizer::AdamW(_))),
                beta1: a.betas.0,
                beta2: a.betas.1,
                eps: a.eps,
                weight_decay: a.weight_decay,
                one_minus_beta1: a.complements().0,
                one_minus_beta2: a.complements().1,
            },
        ),
    };
    let groups = fold(&ctx.dev, label, (len as u64).div_ceil(THREADS))?;
    Dispatch::new(
        ctx,
        kernel,
        label,
        bytemuck::bytes_of(&params),
        Some(step),
        &[(2, g), (3, p), (4, s0), (5, s1), (6, coef)],
        groups,
    )
}
