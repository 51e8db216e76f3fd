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
//! - [`ops`]: single kernels on host arrays, for the tests that compare each
//!   kernel with its CPU twin.
//!
//! Only this module encodes and submits GPU work, and nothing is read back
//! inside a training step.

pub mod context;
mod kernels;
pub mod ops;
pub mod trainer;

pub use context::{list_adapters, AdapterReport, AdapterSelector, GpuContext};
pub use trainer::GpuBackend;
