//! wgtrain: train multi-layer perceptrons on any GPU through wgpu compute
//! shaders, or on the CPU.
//!
//! Data flows one way: a [`data::Dataset`] is loaded and checked, a
//! [`backend::Backend`] (the [`cpu`] or the [`gpu`] one) takes the model and
//! the data, [`train::train`] runs the epochs, and the result is a
//! [`model::Mlp`] saved as safetensors.
//!
//! Models have one home: [`model`] holds the f32 and the compressed model,
//! ensembles of them, their shared [`model::Header`], and the one reader
//! and writer of their files ([`model::AnyModel`] loads any of them); it
//! depends on nothing
//! but [`data`] and [`error`]. [`compress`] makes compressed models
//! (pruning, fine-tuning, reports), [`infer`] runs models for predict and
//! serve (the f32 predictor and the int8 engine, [`infer::int8`]), and
//! [`bench`](mod@bench) measures all of them.

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod compress;
pub mod cpu;
pub mod data;
pub mod device;
pub mod error;
pub mod gpu;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod optim;
pub mod parallel;
pub mod serve;
pub mod train;
pub mod tune;

pub use backend::Backend;
pub use error::{Error, Result};
pub use model::{AnyModel, CompressedMlp, Mlp};
