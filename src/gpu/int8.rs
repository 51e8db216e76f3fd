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
use super::dispatch::{fold, need_u32, Dispatch};
use super::registry::{Int8Path, Kernel};
use super::uniforms::{LinearI8Params, QuantParams};
use crate::error::GpuError;
use crate::infer::int8::{PackedI8Linear, K_ALIGN};

/// Rows and outputs per linear_forward_i8 workgroup (`BM` in the shader).
const LINEAR_TILE: u64 = 32;
/// u32 words per k step of linear_forward_i8 (`BKW`): rows of packed
/// values must be a multiple of it, which [`K_ALIGN`] guarantees.
const LINEAR_K_WORDS: usize = 16;
const _: () = assert!(K_ALIGN.is_multiple_of(4 * LINEAR_K_WORDS));

/// Build a quantize_rows_i8 dispatch: `rows` rows of `inputs` values of
/// `x` (rows `x_stride` values apart), each mapped through
/// `v * scale + offset`, into `xq` (rows of `words` u32) and `x_scale`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantize_rows_i8(
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
) -> Result<Dispatch, GpuError> {
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
        ..Default::default()
    };
    let groups = fold(&ctx.dev, label, rows as u64)?;
    Dispatch::new(
        ctx,
        Kernel::QuantizeRowsI8,
        label,
        bytemuck::bytes_of(&p),
        None,
        &[(1, x), (2, xq), (3, x_scale)],
        groups,
    )
}

/// Build a linear_forward_i8 dispatch: `y[rows, ldy]` (the first
/// `layer.outputs` of each row) from `xq` (`[rows, layer.stride]` bytes)
/// and `x_scale`, with the layer's buffers `w`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_forward_i8(
    ctx: &GpuContext,
    path: Int8Path,
    label: &str,
    w: &GpuI8Layer,
    rows: usize,
    xq: &wgpu::Buffer,
    x_scale: &wgpu::Buffer,
    y: &wgpu::Buffer,
    ldy: usize,
    relu: bool,
) -> Result<Dispatch, GpuError> {
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
        ..Default::default()
    };
    let groups = fold(&ctx.dev, label, tiles)?;
    Dispatch::new(
        ctx,
        Kernel::LinearForwardI8(path),
        label,
        bytemuck::bytes_of(&p),
        None,
        &[
            (1, xq),
            (2, x_scale),
            (3, &w.weight),
            (4, &w.scale),
            (5, &w.bias),
            (6, y),
        ],
        groups,
    )
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
            weight: ctx.dev.storage_init(
                &format!("{label} int8 weight"),
                bytemuck::cast_slice(&layer.packed_u32()),
            )?,
            scale: ctx
                .dev
                .storage_init(&format!("{label} weight scale"), bytemuck::cast_slice(&layer.scale))?,
            bias: ctx
                .dev
                .storage_init(&format!("{label} bias"), bytemuck::cast_slice(&layer.bias))?,
        })
    }
}
