//! The GPU backend (placeholder until the wgpu implementation lands).

use std::sync::Arc;

use crate::backend::{Backend, Predictions, SplitKind, StepStats};
use crate::data::Dataset;
use crate::error::{GpuError, Result};
use crate::model::Mlp;

/// Which adapter to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterSelector {
    Hardware,
    Any,
    Named(String),
}

pub struct GpuContext;

impl GpuContext {
    pub fn open(_sel: &AdapterSelector) -> Result<Self, GpuError> {
        Err(GpuError::NoAdapter(String::new()))
    }
}

pub struct GpuBackend;

impl GpuBackend {
    pub fn new(_ctx: Arc<GpuContext>, _model: Mlp, _data: Arc<Dataset>, _batch: usize) -> Result<Self> {
        Err(GpuError::NoAdapter(String::new()).into())
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        unreachable!()
    }
    fn batch_size(&self) -> usize {
        unreachable!()
    }
    fn begin_epoch(&mut self, _order: &[u32]) -> Result<()> {
        unreachable!()
    }
    fn train_steps(&mut self, _first: usize, _steps: usize, _lr: f32) -> Result<()> {
        unreachable!()
    }
    fn take_stats(&mut self) -> Result<StepStats> {
        unreachable!()
    }
    fn predict_split(&mut self, _split: SplitKind) -> Result<Predictions> {
        unreachable!()
    }
    fn model(&mut self) -> Result<Mlp> {
        unreachable!()
    }
}

/// A GPU adapter as `wgtrain devices` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterReport {
    pub name: String,
}

impl std::fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)
    }
}

/// Every adapter wgpu can see.
pub fn list_adapters() -> Vec<AdapterReport> {
    Vec::new()
}
