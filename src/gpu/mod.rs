//! The GPU backend: wgpu compute shaders (WGSL, in `shaders/`) that train
//! the same MLP as the CPU backend, on any adapter wgpu can open (Vulkan,
//! Metal, DX12, or a software Vulkan such as Mesa's lavapipe).
//!
//! - [`context`]: finding an adapter and opening a device with its own
//!   limits; buffer creation checked against those limits; readback.
//! - `kernels`: the pipelines (one per WGSL entry point, each named like its
//!   CPU twin) and the construction of dispatches.
//! - [`trainer`]: [`GpuBackend`], which keeps parameters and data resident
//!   and records many training steps per submission.
//! - [`int8`]: the int8 inference kernels (`quantize_rows_i8`,
//!   `linear_forward_i8`) and their dot-product paths.
//! - [`predict`]: [`GpuPredictor`], the GPU implementation of
//!   [`crate::infer::Predictor`] for f32 and int8 models.
//! - [`timing`]: per-kernel GPU time of a training step from timestamp
//!   queries.
//! - [`ops`]: single kernels on host arrays, for the tests that compare each
//!   kernel with its CPU twin.
//!
//! Only this module encodes and submits GPU work, and nothing is read back
//! inside a training step.

pub mod context;
pub mod int8;
mod kernels;
pub mod ops;
pub mod predict;
pub mod timing;
pub mod trainer;

pub use context::{list_adapters, AdapterReport, AdapterSelector, GpuContext};
pub use int8::Int8Path;
pub use kernels::Tile;
pub use predict::GpuPredictor;
pub use trainer::GpuBackend;
