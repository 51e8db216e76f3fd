//! Datasets resident on the GPU: features uploaded once, as f32 or as bytes
//! packed four to a word, with their labels, and read by the first layer's
//! GEMM as a [`DataSource`] (gathered through the epoch's permutation and
//! preprocessed inside the kernel).

use super::context::GpuContext;
use super::gemm::DataSource;
use crate::data::{Preprocess, Split};
use crate::error::GpuError;

/// Upload raw features, as bytes packed four to a u32 word (little-endian,
/// so byte `i` of the flat array is byte `i % 4` of word `i / 4`) when
/// `as_u8`, else as f32.
pub(crate) fn upload_features(
    ctx: &GpuContext,
    label: &str,
    features: &[f32],
    as_u8: bool,
) -> Result<wgpu::Buffer, GpuError> {
    if !as_u8 {
        return ctx.dev.storage_init(label, bytemuck::cast_slice(features));
    }
    if let Some(v) = features
        .iter()
        .find(|v| !(0.0..=255.0).contains(*v) || v.fract() != 0.0)
    {
        return Err(GpuError::InvalidArgument(format!(
            "{label}: value {v} cannot be stored as a byte"
        )));
    }
    let words: Vec<u32> = features
        .chunks(4)
        .map(|c| c.iter().enumerate().fold(0u32, |w, (i, &v)| w | (v as u32) << (8 * i)))
        .collect();
    ctx.dev.storage_init(label, bytemuck::cast_slice(&words))
}

/// A split resident on the GPU.
pub(crate) struct ResidentSplit {
    data: wgpu::Buffer,
    is_u8: bool,
    dim: usize,
    pub(crate) labels: wgpu::Buffer,
    pub(crate) len: usize,
}

impl ResidentSplit {
    pub(crate) fn upload(ctx: &GpuContext, name: &str, s: &Split, dim: usize, as_u8: bool) -> Result<Self, GpuError> {
        // The shaders address values as u32 (example * dim + feature).
        let values = (s.len() as u64) * (dim as u64);
        if values > u64::from(u32::MAX) {
            return Err(GpuError::Limit {
                what: format!("the {name} split ({} examples of {dim} values)", s.len()),
                needed: values,
                limit: u32::MAX.into(),
                limit_name: "u32 indexing in the shaders, values",
            });
        }
        Ok(ResidentSplit {
            data: upload_features(ctx, &format!("{name} features"), &s.features, as_u8)?,
            is_u8: as_u8,
            dim,
            labels: ctx
                .dev
                .storage_init(&format!("{name} labels"), bytemuck::cast_slice(&s.labels))?,
            len: s.len(),
        })
    }

    /// Bytes the split holds on the device (features and labels).
    pub(crate) fn bytes(&self) -> u64 {
        self.data.size() + self.labels.size()
    }

    /// The split as the first layer's input: through `index` when
    /// `gather` (training), else in order (evaluation).
    pub(crate) fn source<'a>(&'a self, index: &'a wgpu::Buffer, gather: bool, p: Preprocess) -> DataSource<'a> {
        DataSource {
            data: &self.data,
            is_u8: self.is_u8,
            index,
            gather,
            dim: self.dim as u32,
            scale: p.scale,
            offset: p.offset,
            shift: None,
        }
    }
}
