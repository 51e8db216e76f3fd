//! `wgtrain eval`: test loss, accuracy and confusion matrix of a saved
//! model (f32, compressed, or an ensemble of them).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use super::args::{load_data, load_models, show_paths, DataArgs, DeviceArgs};
use wgtrain::backend::{SplitKind, TrainSpec};
use wgtrain::cpu::team::{Team, TRAIN_SPIN};
use wgtrain::data::Dataset;
use wgtrain::device::{open_backend, open_predictor};
use wgtrain::infer::compressed::{cpu_path_name, evaluate};
use wgtrain::infer::ensemble::check_fits;
use wgtrain::metrics::Evaluation;
use wgtrain::model::{AnyModel, CompressedMlp};

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// The model file written by `wgtrain train --save`, `wgtrain compress`
    /// or `wgtrain ensemble`; several, comma-separated, are evaluated as an
    /// ensemble (the mean of their probabilities; the loss is the
    /// cross-entropy of that mean).
    #[arg(long, value_name = "FILE[,FILE...]", value_delimiter = ',', required = true)]
    model: Vec<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Seed of the CSV/builtin train/test split (use the training seed to
    /// evaluate on the same held-out rows).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object with accuracy, loss and confusion on stdout.
    #[arg(long)]
    json: bool,
}

/// Run `wgtrain eval`.
pub(crate) fn run(a: EvalArgs) -> Result<()> {
    // A compressed model's evaluation splits its products over this team.
    Team::new(a.device.threads, TRAIN_SPIN).install(|| eval(a))
}

fn eval(a: EvalArgs) -> Result<()> {
    let shown = show_paths(&a.model);
    let loaded = load_models(&a.model)?;
    let names = loaded.class_names().to_vec();
    let model = match loaded {
        AnyModel::F32(m) => m,
        AnyModel::Compressed(c) => {
            return eval_compressed(&c, Path::new(&shown), &load_data(&a.data, a.seed)?, a.json, &names)
        }
        ensemble @ AnyModel::Ensemble(_) => return eval_ensemble(&ensemble, &shown, &a, &names),
    };
    let data = Arc::new(load_data(&a.data, a.seed)?);
    let classes = model.classes();
    let mut backend = open_backend(
        &a.device.device,
        a.device.threads,
        model,
        data.clone(),
        TrainSpec::sgd(256),
    )
    .with_context(|| format!("model {shown} does not fit the data"))?;
    let mut eval = wgtrain::train::evaluate(backend.as_mut(), &data, wgtrain::backend::SplitKind::Test)?;
    eval.confusion.resize(classes.max(eval.confusion.len()), vec![]);
    for row in eval.confusion.iter_mut() {
        row.resize(classes.max(row.len()), 0);
    }
    report(&eval, &backend.name(), a.json, &names)
}

/// `wgtrain eval` of a compressed model: the same output as for an f32
/// model, computed on the CPU by the compressed model's own kernels.
fn eval_compressed(model: &CompressedMlp, path: &Path, data: &Dataset, json: bool, names: &[String]) -> Result<()> {
    let eval = evaluate(model, data, SplitKind::Test)
        .with_context(|| format!("model {} does not fit the data", path.display()))?;
    report(&eval, &cpu_path_name(model), json, names)
}

/// `wgtrain eval` of an ensemble: every member's probabilities on the
/// chosen device (on a GPU, all members in one submission per chunk),
/// averaged.
fn eval_ensemble(model: &AnyModel, shown: &str, a: &EvalArgs, names: &[String]) -> Result<()> {
    let data = load_data(&a.data, a.seed)?;
    let mut predictor = open_predictor(&a.device.device, model, ENSEMBLE_BATCH, a.device.threads, TRAIN_SPIN)?;
    check_fits(predictor.as_ref(), &data.test, data.dim())
        .with_context(|| format!("model {shown} does not fit the data"))?;
    log::info!("evaluating {}", model.describe());
    let eval = wgtrain::infer::ensemble::evaluate(predictor.as_mut(), &data.test)?;
    report(&eval, &predictor.name(), a.json, names)
}

/// Rows per forward pass of an ensemble's evaluation.
const ENSEMBLE_BATCH: usize = 256;

/// Print an evaluation: one JSON object (with `class_names` and
/// `per_class_accuracy` when the model names its classes), or a line, the
/// confusion table and, with names, the accuracy of each class.
fn report(eval: &Evaluation, ran_on: &str, json: bool, names: &[String]) -> Result<()> {
    if json {
        let mut v = serde_json::to_value(eval)?;
        if let (Some(o), false) = (v.as_object_mut(), names.is_empty()) {
            o.insert("class_names".into(), serde_json::json!(names));
            o.insert(
                "per_class_accuracy".into(),
                serde_json::json!(eval.per_class_accuracy()),
            );
        }
        outln!("{v}");
    } else {
        outln!(
            "test accuracy {:.2}% ({} examples), test loss {:.4} on {ran_on}",
            eval.accuracy * 100.0,
            eval.examples,
            eval.loss,
        );
        out!("{}", eval.confusion_table_named(names));
        if !names.is_empty() {
            outln!("accuracy per class:");
            out!("{}", eval.per_class_table(names));
        }
    }
    Ok(())
}
