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
//!
//! # Example
//!
//! Train a small MLP on the built-in digits (8x8 images, 10 classes) on
//! the CPU, evaluate it on the test split, save it, load it back and
//! predict one row:
//!
//! ```
//! use std::sync::Arc;
//!
//! use wgtrain::backend::{SplitKind, TrainSpec};
//! use wgtrain::cpu::CpuBackend;
//! use wgtrain::data::{builtin, Normalize, Preprocess};
//! use wgtrain::train::{evaluate, train, TrainConfig};
//! use wgtrain::Mlp;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // 20% of the rows held out as the test split, shuffled with seed 0.
//! let data = Arc::new(builtin::load(0.2, 0)?);
//! let preprocess = Preprocess::fit(Normalize::Scale, &data);
//! let model = Mlp::new(&[data.dim(), 32, data.classes], 0, preprocess, data.shape.clone())?;
//!
//! // Plain SGD, 32 examples a step, two epochs at a learning rate of 0.1.
//! let mut backend = CpuBackend::new(model, data.clone(), TrainSpec::sgd(32))?;
//! let config = TrainConfig::constant(2, 0.1, 0, 0);
//! let trained = train(&mut backend, &data, &config, &mut |_event| {})?;
//! let test = evaluate(&mut backend, &data, SplitKind::Test)?;
//! assert!(test.accuracy > 0.5, "test accuracy {}", test.accuracy);
//!
//! // Save as safetensors, load it back, predict the first test row.
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("digits.safetensors");
//! trained.save(&path)?;
//! let loaded = Mlp::load(&path)?;
//! let row = data.test.example(0, data.dim());
//! let probabilities = wgtrain::cpu::probabilities(&loaded, row);
//! let best = wgtrain::infer::top_k(&probabilities, 1)[0].class;
//! println!("row 0: class {best} (label {})", data.test.labels[0]);
//! # Ok(())
//! # }
//! ```
//!
//! `examples/` holds three short programs: training and saving
//! (`train_and_save`), predicting from an image file (`predict_image`),
//! and embedding the HTTP predictor in an axum application
//! (`embed_server`, through [`serve::router`]).

#![warn(missing_docs)]

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
pub mod resources;
pub mod serve;
pub mod train;
pub mod tune;

pub use backend::Backend;
pub use error::{Error, Result};
pub use model::{AnyModel, CompressedMlp, Mlp};
