//! Choosing where to run: `--device auto|cpu|gpu|NAME`.

use std::sync::Arc;

use crate::backend::Backend;
use crate::backend::TrainSpec;
use crate::cpu::CpuBackend;
use crate::data::Dataset;
use crate::error::Result;
use crate::gpu::{AdapterSelector, GpuBackend, GpuContext};
use crate::model::Mlp;

/// The user's choice of device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A hardware GPU when there is one, else the CPU. Software adapters
    /// (such as Mesa's lavapipe) are slower than the CPU path and are
    /// skipped.
    Auto,
    Cpu,
    /// Any GPU adapter, software ones included.
    Gpu,
    /// The first adapter whose name contains this text (case-insensitive).
    Named(String),
}

impl From<&str> for DeviceChoice {
    /// `auto`, `cpu` and `gpu` (any case); anything else names an adapter.
    fn from(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "gpu" => DeviceChoice::Gpu,
            _ => DeviceChoice::Named(s.to_string()),
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(DeviceChoice::from(s))
    }
}

/// Open the chosen device: a GPU context, or `None` for the CPU. With
/// `Auto`, failing to find a hardware GPU is not an error.
pub fn open_gpu(choice: &DeviceChoice) -> Result<Option<Arc<GpuContext>>> {
    let sel = match choice {
        DeviceChoice::Cpu => return Ok(None),
        DeviceChoice::Auto => AdapterSelector::Hardware,
        DeviceChoice::Gpu => AdapterSelector::Any,
        DeviceChoice::Named(n) => AdapterSelector::Named(n.clone()),
    };
    match GpuContext::open(&sel) {
        Ok(ctx) => Ok(Some(Arc::new(ctx))),
        Err(e) if *choice == DeviceChoice::Auto => {
            log::info!("no hardware GPU ({e}); using the CPU");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Build an inference predictor for a device choice: the GPU predictor on a
/// GPU, else the CPU one (`threads` workers, spinning `spin` before parking).
pub fn open_predictor(
    choice: &DeviceChoice,
    model: &crate::model::AnyModel,
    max_batch: usize,
    threads: usize,
    spin: std::time::Duration,
) -> Result<Box<dyn crate::infer::Predictor>> {
    Ok(match open_gpu(choice)? {
        Some(ctx) => Box::new(crate::gpu::GpuPredictor::for_model(ctx, model, max_batch)?),
        None => crate::infer::cpu_predictor(model, max_batch, threads, spin)?,
    })
}

/// Build the training backend for a device choice; a CPU one on `threads`
/// threads (0: one per core).
pub fn open_backend(
    choice: &DeviceChoice,
    threads: usize,
    model: Mlp,
    data: Arc<Dataset>,
    spec: TrainSpec,
) -> Result<Box<dyn Backend>> {
    Ok(match open_gpu(choice)? {
        Some(ctx) => Box::new(GpuBackend::new(ctx, model, data, spec)?),
        None => Box::new(CpuBackend::with_threads(model, data, spec, threads)?),
    })
}
