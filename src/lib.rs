//! wgtrain: train multi-layer perceptrons on any GPU through wgpu compute
//! shaders, or on the CPU.
//!
//! Data flows one way: a [`data::Dataset`] is loaded and checked, a
//! [`backend::Backend`] (the [`cpu`] or the [`gpu`] one) takes the model and
//! the data, [`train::train`] runs the epochs, and the result is a
//! [`model::Mlp`] saved as safetensors.

pub mod backend;
pub mod bench;
pub mod compress;
pub mod cpu;
pub mod data;
pub mod device;
pub mod error;
pub mod gpu;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod serve;
pub mod train;

pub use backend::Backend;
pub use error::{Error, Result};
pub use model::Mlp;
