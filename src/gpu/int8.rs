//! The int8 inference kernels: `quantize_rows_i8` (dynamic per-row
//! quantization of activations, packed four to a u32) and
//! `linear_forward_i8` (packed int8 rows times packed int8 weights, exact
//! i32 sums, f32 epilogue), twins of the functions of the same names in
//! [`crate::infer::int8`].
//!
//! The dot product of four packed bytes comes in two paths ([`Int8Path`]):
//! WGSL's `dot4I8Packed`, available when the shader compiler has the
//! `packed_4x8_integer_dot_product` language extension (wgpu's own compiler
//! always does, and lowers it to one instruction where the device has
//! integer dot products), and a hand-written unpack for compilers without
//! it. Both give the same exact integer sums, and the tests run both.

use super::context::GpuContext;
use crate::error::GpuError;
use crate::infer::int8::{PackedI8Linear, K_ALIGN};

const QUANTIZE_WGSL: &str = include_str!("../../shaders/quantize_rows_i8.wgsl");
const LINEAR_WGSL: &str = include_str!("../../shaders/linear_forward_i8.wgsl");
const DOT4_PACKED_WGSL: &str = include_str!("../../shaders/dot4_i8_packed.wgsl");
const DOT4_UNPACKED_WGSL: &str = include_str!("../../shaders/dot4_i8_unpacked.wgsl");

/// Rows and outputs per linear_forward_i8 workgroup (`BM` in the shader).
const LINEAR_TILE: u64 = 32;
/// u32 words per k step of linear_forward_i8 (`BKW`): rows of packed
/// values must be a multiple of it, which [`K_ALIGN`] guarantees.
const LINEAR_K_WORDS: usize = 16;
const _: () = assert!(K_ALIGN.is_multiple_of(4 * LINEAR_K_WORDS));

/// How `linear_forward_i8` multiplies four packed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Int8Path {
    /// WGSL's `dot4I8Packed` (the `packed_4x8_integer_dot_product` extension).
    Dot4 = 0,
    /// Sign-extending shifts and four multiply-adds, for compilers without
    /// the extension.
    Unpacked = 1,
}

impl Int8Path {
    pub fn name(self) -> &'static str {
        match self {
            Int8Path::Dot4 => "dot4I8Packed",
            Int8Path::Unpacked => "unpacked",
        }
    }
}

/// `Quant` in quantize_rows_i8.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct QuantParams {
    rows: u32,
    inputs: u32,
    x_stride: u32,
    words: u32,
    scale: f32,
    offset: f32,
    pad: [u32; 2],
}

/// `LinearI8` in linear_forward_i8.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct LinearI8Params {
    rows: u32,
    outputs: u32,
    words: u32,
    ldy: u32,
    relu: u32,
    tiles_n: u32,
    pad: [u32; 2],
}

/// An int8 kernel call ready to record any number of times; the bind group
/// keeps its buffers alive.
pub(crate) struct I8Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
}

impl I8Dispatch {
    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        if self.groups.0 == 0 {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.groups.0, self.groups.1, 1);
    }
}

/// The two int8 pipelines of one [`Int8Path`] and their layouts.
pub(crate) struct Int8Kernels {
    quantize_layout: wgpu::BindGroupLayout,
    linear_layout: wgpu::BindGroupLayout,
    quantize: wgpu::ComputePipeline,
    linear: wgpu::ComputePipeline,
}

fn entry(binding: u32, ty: wgpu::BufferBindingType, min: u64) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: wgpu::BufferSize::new(min),
        },
        count: None,
    }
}

fn uniform(binding: u32, size: usize) -> wgpu::BindGroupLayoutEntry {
    entry(binding, wgpu::BufferBindingType::Uniform, size as u64)
}

fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    entry(binding, wgpu::BufferBindingType::Storage { read_only }, 4)
}

fn need_u32(what: &str, v: u64) -> Result<(), GpuError> {
    if v > u64::from(u32::MAX) {
        return Err(GpuError::Limit {
            what: what.to_string(),
            needed: v,
            limit: u32::MAX.into(),
            limit_name: "u32 indexing in the shaders",
        });
    }
    Ok(())
}

/// Spread `total` workgroups over x and y within the adapter's
/// per-dimension limit; the shaders linearise `wid.x + wid.y * nwg.x` and
/// skip the surplus.
fn fold(ctx: &GpuContext, what: &str, total: u64) -> Result<(u32, u32), GpuError> {
    let max = u64::from(ctx.limits().max_compute_workgroups_per_dimension.max(1));
    if total == 0 {
        return Ok((0, 0));
    }
    let x = total.min(max);
    let y = total.div_ceil(x);
    if y > max {
        return Err(GpuError::Limit {
            what: what.to_string(),
            needed: y,
            limit: max,
            limit_name: "max_compute_workgroups_per_dimension (after folding into two dimensions)",
        });
    }
    Ok((x as u32, y as u32))
}

impl Int8Kernels {
    /// Compile both pipelines for `path`; shader errors are returned, not
    /// left to wgpu's panicking default handler.
    pub(crate) fn new(ctx: &GpuContext, path: Int8Path) -> Result<Self, GpuError> {
        let device = &ctx.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let prelude = match path {
            Int8Path::Dot4 => DOT4_PACKED_WGSL,
            Int8Path::Unpacked => DOT4_UNPACKED_WGSL,
        };
        let linear_src = format!("{prelude}\n{LINEAR_WGSL}");
        let quantize_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("quantize_rows_i8.wgsl"),
            source: wgpu::ShaderSource::Wgsl(QUANTIZE_WGSL.into()),
        });
        let linear_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&format!("linear_forward_i8.wgsl ({})", path.name())),
            source: wgpu::ShaderSource::Wgsl(linear_src.into()),
        });
        let quantize_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("quantize_rows_i8 bind group layout"),
            entries: &[
                uniform(0, std::mem::size_of::<QuantParams>()),
                storage(1, true),
                storage(2, false),
                storage(3, false),
            ],
        });
        let linear_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("linear_forward_i8 bind group layout"),
            entries: &[
                uniform(0, std::mem::size_of::<LinearI8Params>()),
                storage(1, true),
                storage(2, true),
                storage(3, true),
                storage(4, true),
                storage(5, true),
                storage(6, false),
            ],
        });
        let pipeline = |label: &str, layout: &wgpu::BindGroupLayout, module: &wgpu::ShaderModule, name: &str| {
            let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&format!("{label} pipeline layout")),
                bind_group_layouts: &[Some(layout)],
                immediate_size: 0,
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&pl),
                module,
                entry_point: Some(name),
                // Both kernels write their workgroup memory before reading it.
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        };
        let quantize = pipeline(
            "quantize_rows_i8",
            &quantize_layout,
            &quantize_module,
            "quantize_rows_i8",
        );
        let linear = pipeline(
            &format!("linear_forward_i8 ({})", path.name()),
            &linear_layout,
            &linear_module,
            "linear_forward_i8",
        );
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Other(format!(
                "building the int8 pipelines ({}): {e}",
                path.name()
            )));
        }
        Ok(Int8Kernels {
            quantize_layout,
            linear_layout,
            quantize,
            linear,
        })
    }

    fn bind_group(
        ctx: &GpuContext,
        label: &str,
        layout: &wgpu::BindGroupLayout,
        params: &wgpu::Buffer,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = std::iter::once(params)
            .chain(buffers.iter().copied())
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout,
            entries: &entries,
        })
    }

    /// Build a quantize_rows_i8 dispatch: `rows` rows of `inputs` values of
    /// `x` (rows `x_stride` values apart), each mapped through
    /// `v * scale + offset`, into `xq` (rows of `words` u32) and `x_scale`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn quantize(
        &self,
        ctx: &GpuContext,
        label: &str,
        rows: usize,
        inputs: usize,
        x_stride: usize,
        words: usize,
        (scale, offset): (f32, f32),
        x: &wgpu::Buffer,
        xq: &wgpu::Buffer,
        x_scale: &wgpu::Buffer,
    ) -> Result<I8Dispatch, GpuError> {
        if 4 * words < inputs || x_stride < inputs {
            return Err(GpuError::InvalidArgument(format!(
                "{label}: rows of {inputs} values do not fit {words} words or a stride of {x_stride}"
            )));
        }
        need_u32(
            &format!("{label}: rows*stride values"),
            (rows * x_stride.max(words)) as u64,
        )?;
        let p = QuantParams {
            rows: rows as u32,
            inputs: inputs as u32,
            x_stride: x_stride as u32,
            words: words as u32,
            scale,
            offset,
            pad: [0; 2],
        };
        let params = ctx.uniform_init(&format!("{label} params"), bytemuck::bytes_of(&p))?;
        let bind_group = Self::bind_group(ctx, label, &self.quantize_layout, &params, &[x, xq, x_scale]);
        Ok(I8Dispatch {
            pipeline: self.quantize.clone(),
            bind_group,
            groups: fold(ctx, label, rows as u64)?,
        })
    }

    /// Build a linear_forward_i8 dispatch: `y[rows, ldy]` (the first
    /// `layer.outputs` of each row) from `xq` (`[rows, layer.stride]` bytes)
    /// and `x_scale`, with the layer's buffers `w`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear(
        &self,
        ctx: &GpuContext,
        label: &str,
        w: &GpuI8Layer,
        rows: usize,
        xq: &wgpu::Buffer,
        x_scale: &wgpu::Buffer,
        y: &wgpu::Buffer,
        ldy: usize,
        relu: bool,
    ) -> Result<I8Dispatch, GpuError> {
        if ldy < w.outputs {
            return Err(GpuError::InvalidArgument(format!(
                "{label}: output rows of {ldy} values cannot hold {} outputs",
                w.outputs
            )));
        }
        need_u32(&format!("{label}: rows*stride words"), (rows * w.words) as u64)?;
        need_u32(&format!("{label}: rows*ldy outputs"), (rows * ldy) as u64)?;
        let tiles_n = (w.outputs as u64).div_ceil(LINEAR_TILE).max(1);
        let tiles = (rows as u64).div_ceil(LINEAR_TILE) * tiles_n;
        let p = LinearI8Params {
            rows: rows as u32,
            outputs: w.outputs as u32,
            words: w.words as u32,
            ldy: ldy as u32,
            relu: relu as u32,
            tiles_n: tiles_n as u32,
            pad: [0; 2],
        };
        let params = ctx.uniform_init(&format!("{label} params"), bytemuck::bytes_of(&p))?;
        let bind_group = Self::bind_group(
            ctx,
            label,
            &self.linear_layout,
            &params,
            &[xq, x_scale, &w.weight, &w.scale, &w.bias, y],
        );
        Ok(I8Dispatch {
            pipeline: self.linear.clone(),
            bind_group,
            groups: fold(ctx, label, tiles)?,
        })
    }
}

/// A [`PackedI8Linear`] uploaded: weights as packed u32 rows of `words`
/// words, per-output scales and the bias (padded like the weights' rows).
pub(crate) struct GpuI8Layer {
    pub outputs: usize,
    /// u32 words per packed row (`stride / 4`).
    pub words: usize,
    weight: wgpu::Buffer,
    scale: wgpu::Buffer,
    bias: wgpu::Buffer,
}

impl GpuI8Layer {
    pub(crate) fn upload(ctx: &GpuContext, label: &str, layer: &PackedI8Linear) -> Result<Self, GpuError> {
        if !layer.stride.is_multiple_of(4 * LINEAR_K_WORDS) || layer.stride < layer.inputs {
            return Err(GpuError::InvalidArgument(format!(
                "{label}: packed rows of {} bytes for {} inputs (need a multiple of {})",
                layer.stride,
                layer.inputs,
                4 * LINEAR_K_WORDS
            )));
        }
        let padded = layer.padded_outputs();
        if layer.weight.len() != padded * layer.stride || layer.bias.len() < padded || padded < layer.outputs {
            return Err(GpuError::InvalidArgument(format!(
                "{label}: packed layer of {} weight bytes, {} scales and {} biases is not [{padded}, {}]",
                layer.weight.len(),
                layer.scale.len(),
                layer.bias.len(),
                layer.stride
            )));
        }
        Ok(GpuI8Layer {
            outputs: layer.outputs,
            words: layer.stride / 4,
            weight: ctx.storage_init(
                &format!("{label} int8 weight"),
                bytemuck::cast_slice(&layer.packed_u32()),
            )?,
            scale: ctx.storage_init(&format!("{label} weight scale"), bytemuck::cast_slice(&layer.scale))?,
            bias: ctx.storage_init(&format!("{label} bias"), bytemuck::cast_slice(&layer.bias))?,
        })
    }
}
