//! The models and their files, at the bottom of the crate (they know only
//! [`crate::data::Preprocess`] and [`crate::error`]):
//!
//! - [`header`]: the [`Header`] every model shares (layer widths, input
//!   shape, preprocessing) and [`Metadata`], the one writer and parser of
//!   the metadata keys of a model file.
//! - [`mlp`]: the f32 [`Mlp`] and its [`Linear`] layers in PyTorch's
//!   `nn.Linear` layout, with the seeded Kaiming-uniform initialisation.
//! - [`int8`]: int8 weights ([`QuantizedWeights`]) and the quantization
//!   scheme they share with the activations of the int8 engine.
//! - [`sparse`]: the bitmask storage of pruned weight matrices.
//! - [`info`]: how a compressed model was made ([`CompressionInfo`]).
//! - [`compressed`]: the pruned and/or int8 [`CompressedMlp`].
//! - [`ensemble`]: [`AnyModel`] (a model of any kind) and [`Ensemble`],
//!   several models whose probabilities are averaged.
//! - [`average`]: weight averaging of f32 models of one architecture (model
//!   soups, stochastic weight averaging).
//! - [`file`](mod@file): the reader and writer of every model file; it
//!   loads any of them as an [`AnyModel`].
//!
//! Running a model is elsewhere: training in [`crate::cpu`] and
//! [`crate::gpu`], inference in [`crate::infer`]; making a compressed model
//! (pruning, fine-tuning) in [`crate::compress`].

pub mod average;
pub mod compressed;
pub mod ensemble;
pub mod file;
pub mod header;
pub mod info;
pub mod int8;
pub mod mlp;
pub mod sparse;

pub use compressed::{CompressedLinear, CompressedMlp, LayerWeights};
pub use ensemble::{AnyModel, Ensemble, Member};
pub use file::{write_atomic, LayerStorage};
pub use header::{
    check_class_names, shared_class_names, Format, Header, Metadata, NamesMismatch, CLASS_NAMES_KEY, FORMAT_COMPRESSED,
    FORMAT_ENSEMBLE, FORMAT_KEY, FORMAT_MLP,
};
pub use info::{Activations, CompressionInfo, Scope};
pub use int8::QuantizedWeights;
pub use mlp::{Linear, Mlp};
