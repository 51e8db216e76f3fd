//! The CPU int8 inference engine.
//!
//! Weights are int8 with one scale per output channel
//! ([`crate::model::QuantizedWeights`]). Activations (the default mode,
//! [`crate::model::Activations::Int8`]) are quantized dynamically per row
//! the same way ([`quantize_rows_i8`]), then
//! `y[r,o] = acc * (x_scale[r] * scale[o]) + bias[o]` where `acc` is the
//! exact i32 sum of `x_q * W_q` ([`linear_forward_i8`]). The i32 sums are
//! exact in every kernel variant, and the f32 epilogue is the one function
//! [`dequantize_acc`], so the fast kernels agree with the scalar reference
//! [`linear_forward_i8_ref`] bit for bit, and a GPU twin can too: the GPU
//! int8 path (`crate::gpu::int8`) reads the rows of [`PackedI8Linear`] as
//! the words of [`PackedI8Linear::packed_u32`] for WGSL's `dot4I8Packed`,
//! and its results agree with these kernels up to the f32 epilogue.
//!
//! [`crate::model::Activations::F32`] keeps the activations in f32 and
//! only the weights in int8 (dequantized once when the model is loaded,
//! then the f32 predictor): the accuracy of weight-only quantization, the
//! speed of f32; that mode does not use this engine.
//!
//! - `pack`: the padded layout of a layer ([`PackedI8Linear`], [`K_ALIGN`]).
//! - `kernels`: activation quantization, the layer product per instruction
//!   set ([`I8Isa`]), the scalar reference and the epilogue.
//! - `vnni`: the AVX-512 VNNI variants (x86-64).
//! - `engine`: [`Int8Mlp`], a whole model, rows split over the CPU team.

mod engine;
mod kernels;
mod pack;
#[cfg(target_arch = "x86_64")]
mod vnni;

pub use engine::Int8Mlp;
pub use kernels::{dequantize_acc, linear_forward_i8, linear_forward_i8_ref, quantize_rows_i8, I8Isa};
pub use pack::{PackedI8Linear, K_ALIGN, MR, NR};
