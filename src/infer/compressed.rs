//! A compressed model on the CPU outside the [`super::Predictor`] path:
//! loss and arg-max over a split ([`predict_rows`], [`evaluate`], what
//! `wgtrain compress` and `wgtrain eval` report), and the name of the path
//! that runs it ([`cpu_path_name`]).

use super::int8::I8Isa;
use crate::backend::SplitKind;
use crate::data::Dataset;
use crate::error::{ModelError, Result};
use crate::metrics::Evaluation;
use crate::metrics::Predictions;
use crate::model::{Activations, CompressedMlp};

/// Loss and arg-max of raw rows on the CPU: the int8 kernels when the
/// weights are int8 and the activation mode is int8, else the f32 path on
/// the (dequantized) weights.
pub fn predict_rows(model: &CompressedMlp, features: &[f32], labels: &[u32]) -> Predictions {
    match (model.info.activations, model.int8_engine()) {
        (Activations::Int8, Some(engine)) => engine.predict_rows(features, labels),
        _ => crate::cpu::predict_rows(&model.to_mlp(), features, labels),
    }
}

/// Evaluate a compressed model on a split of `data` on the CPU, on the
/// team installed on this thread (see [`predict_rows`] for which kernels
/// run), after checking that the model fits the data.
pub fn evaluate(model: &CompressedMlp, data: &Dataset, split: SplitKind) -> Result<Evaluation> {
    if model.inputs() != data.dim() {
        return Err(ModelError::InputMismatch {
            expected: model.inputs(),
            found: data.dim(),
        }
        .into());
    }
    let s = match split {
        SplitKind::Train => &data.train,
        SplitKind::Validation => &data.validation,
        SplitKind::Test => &data.test,
    };
    let max_label = s.labels.iter().copied().max().unwrap_or(0) as usize;
    if max_label >= model.classes() {
        return Err(ModelError::ClassMismatch {
            model: model.classes(),
            data: max_label,
        }
        .into());
    }
    let pred = predict_rows(model, &s.features, &s.labels);
    Ok(Evaluation::new(&pred, &s.labels, model.classes()))
}

/// What runs a compressed model's forward pass on this CPU (on the team
/// installed on this thread), for messages.
pub fn cpu_path_name(model: &CompressedMlp) -> String {
    let threads = crate::cpu::team::current_size();
    match (model.info.activations, model.is_int8()) {
        (Activations::Int8, true) => format!("cpu int8 ({}, {} threads)", I8Isa::detect().name(), threads),
        (_, true) => format!("cpu int8 weights, f32 activations ({} threads)", threads),
        _ => format!("cpu f32 ({} threads)", threads),
    }
}
