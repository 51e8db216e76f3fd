//! [`Dispatch`]: one kernel call ready to record any number of times (its
//! pipeline, its bind group, which keeps its buffers alive, and its grid),
//! for every kernel family, f32 and int8; and the checks every dispatch
//! builder shares (u32 indexing, folding a grid into two dimensions).
//!
//! Sizes reach the shaders through a small uniform per dispatch, written
//! once when the dispatch is built. The f32 kernels also read a per-step
//! uniform ([`super::uniforms::StepParams`]) bound at a dynamic offset, so
//! a whole epoch of steps can be recorded against the same bind groups.

use super::context::GpuContext;
use super::device::{need, GpuDevice};
use super::registry::Kernel;
use super::uniforms::STEP_BYTES;
use crate::error::GpuError;

/// A kernel call ready to record.
pub(crate) struct Dispatch {
    kernel: Kernel,
    /// The label it was built with (also its bind group's).
    label: String,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    /// Whether the bind group takes a step offset.
    has_step: bool,
    groups: (u32, u32),
}

impl Dispatch {
    /// Build a dispatch of `kernel` over `groups` workgroups: `params` (the
    /// kernel's uniform struct, as bytes) at binding 0, then, for the
    /// kernels that read one, `step` at binding 1 (a buffer of
    /// [`super::uniforms::StepParams`], bound at a dynamic offset), then
    /// `buffers` at their bindings.
    pub(crate) fn new(
        ctx: &GpuContext,
        kernel: Kernel,
        label: &str,
        params: &[u8],
        step: Option<&wgpu::Buffer>,
        buffers: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32),
    ) -> Result<Self, GpuError> {
        let has_step = kernel.family().has_step();
        if step.is_some() != has_step {
            return Err(GpuError::Other(format!(
                "{label}: {} {} a step buffer",
                kernel.label(),
                if has_step { "needs" } else { "takes no" }
            )));
        }
        let (pipeline, layout) = ctx.registry.get(&ctx.dev, kernel)?;
        let params = ctx.dev.uniform_init(&format!("{label} params"), params)?;
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: params.as_entire_binding(),
        }];
        if let Some(step) = step {
            entries.push(wgpu::BindGroupEntry {
                binding: 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: step,
                    offset: 0,
                    size: wgpu::BufferSize::new(STEP_BYTES),
                }),
            });
        }
        entries.extend(buffers.iter().map(|&(binding, b)| wgpu::BindGroupEntry {
            binding,
            resource: b.as_entire_binding(),
        }));
        let bind_group = ctx.dev.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout,
            entries: &entries,
        });
        Ok(Dispatch {
            kernel,
            label: label.to_string(),
            pipeline: pipeline.clone(),
            bind_group,
            has_step,
            groups,
        })
    }

    /// Record the dispatch; a kernel that reads step parameters reads them
    /// at `step_offset` bytes into the step buffer it was built with (the
    /// others ignore it).
    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>, step_offset: u32) {
        if self.groups.0 == 0 {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        let offsets: &[u32] = if self.has_step { &[step_offset] } else { &[] };
        pass.set_bind_group(0, &self.bind_group, offsets);
        pass.dispatch_workgroups(self.groups.0, self.groups.1, 1);
    }

    pub(crate) fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }
}

/// Fail unless `v` elements can be indexed with the shaders' u32 indices.
pub(crate) fn need_u32(what: &str, v: u64) -> Result<(), GpuError> {
    need(what, v, u32::MAX.into(), "u32 indexing in the shaders")
}

/// Spread `total` workgroups over x and y, each at most the adapter's
/// per-dimension limit; the kernels linearise `wid.x + wid.y * nwg.x` and
/// ignore the surplus of the last row.
pub(crate) fn fold(dev: &GpuDevice, what: &str, total: u64) -> Result<(u32, u32), GpuError> {
    let max = u64::from(dev.limits.max_compute_workgroups_per_dimension.max(1));
    if total == 0 {
        return Ok((0, 0));
    }
    let x = total.min(max);
    let y = total.div_ceil(x);
    need(
        what,
        y,
        max,
        "max_compute_workgroups_per_dimension (after folding into two dimensions)",
    )?;
    Ok((x as u32, y as u32))
}
