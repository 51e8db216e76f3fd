//! The GPU backend: wgpu compute shaders (WGSL, in `shaders/`) that train
//! the same MLP as the CPU backend, on any adapter wgpu can open (Vulkan,
//! Metal, DX12, or a software Vulkan such as Mesa's lavapipe).
//!
//! From the bottom up (each file uses only those above it):
//!
//! - [`adapter`]: the adapters wgpu sees, the one an [`AdapterSelector`]
//!   picks, and what `wgtrain devices` reports about them.
//! - `device`: an open device and queue with the adapter's limits;
//!   limit-checked buffer creation, blocking readback, wgpu's errors.
//! - [`Tile`] (`tile`): the GEMM tile variants and which one a shape uses.
//! - `uniforms`: the host side of every struct the shaders read from a
//!   uniform buffer, checked against the WGSL by a test.
//! - `shaders`: the WGSL sources as compiled, per tile and per int8 path.
//! - `registry`: the pipeline key (`Kernel`: every entry point, GEMM ones
//!   per tile, linear_forward_i8 per [`Int8Path`]), each family's bind
//!   group layout, and the pipelines, compiled on first use.
//! - [`context`]: [`GpuContext`], an open device with its registry.
//! - `dispatch`: `Dispatch`, one kernel call of any family ready to record
//!   (pipeline, bind group, grid), and the checks all builders share.
//! - The dispatch builders, one per kernel family, each named like its CPU
//!   twin: `gemm` (matmul_nn/nt/tn, linear_forward, backprop_input,
//!   weight_update, linear_softmax_xent), `softmax` (softmax_xent,
//!   softmax_xent_eval, soft_targets, soft_target_xent), `vector`
//!   (bias_update, apply_mask), `optim` (the stateful optimizers'
//!   updates), `clip` (grad_sq_partial, clip_coef: gradient clipping's
//!   norm) and [`int8`] (quantize_rows_i8, linear_forward_i8).
//! - `resident`: datasets uploaded once and read by the first layer.
//! - `plan`: the dispatch lists of a training step and of an evaluation.
//! - [`trainer`]: [`GpuBackend`], which keeps parameters and data resident
//!   and records many training steps per submission.
//! - [`predict`]: [`GpuPredictor`], the GPU implementation of
//!   [`crate::infer::Predictor`] for f32 and int8 models.
//! - [`timing`]: per-kernel GPU time of a training step from timestamp
//!   queries.
//! - [`ops`]: single kernels on host arrays, for the tests that compare each
//!   kernel with its CPU twin.
//!
//! Only this module encodes and submits GPU work, and nothing is read back
//! inside a training step.

pub mod adapter;
mod clip;
pub mod context;
mod device;
mod dispatch;
mod gemm;
pub mod int8;
#[cfg(test)]
mod layout_tests;
pub mod ops;
mod optim;
mod plan;
#[cfg(test)]
mod portability_tests;
pub mod predict;
mod registry;
mod resident;
mod shaders;
mod softmax;
mod tile;
pub mod timing;
pub mod trainer;
mod uniforms;
mod vector;

pub use adapter::{list_adapters, AdapterReport, AdapterSelector};
pub use context::GpuContext;
pub use predict::GpuPredictor;
pub use registry::Int8Path;
pub use tile::Tile;
pub use trainer::GpuBackend;
