//! `wgtrain predict`: the top-k classes of images, IDX image files or CSV
//! rows.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::class_names::label;
use wgtrain::device::{open_predictor, DeviceChoice};
use wgtrain::infer::input::{self, CsvInputOptions};
use wgtrain::infer::{predictions, ClassProbability, DEFAULT_SPIN};

/// Rows per forward pass of `predict` (and the buffers it allocates).
const PREDICT_BATCH: usize = 256;

#[derive(Debug, Args)]
pub(crate) struct PredictArgs {
    /// The model file written by `wgtrain train --save`, `wgtrain
    /// compress` (int8 models run the int8 kernels) or `wgtrain ensemble`;
    /// several, comma-separated, answer as an ensemble (the mean of their
    /// probabilities; each member keeps its own preprocessing).
    #[arg(long, value_name = "FILE[,FILE...]", value_delimiter = ',', required = true)]
    model: Vec<PathBuf>,
    /// Inputs: PNG or JPEG images (made grayscale and resized to the
    /// model's input shape), IDX image files (every image in them), or CSV
    /// files of feature rows (a first row with text is a header). Each may
    /// be gzipped (.gz).
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// How many of the most probable classes to print per input.
    #[arg(long, default_value_t = 3, value_name = "K")]
    top_k: usize,
    /// CSV inputs: drop this column (a label) from every row, counting from
    /// 0; negative counts from the end (-1 is the last). Default: every
    /// column is a feature.
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    label_col: Option<i64>,
    /// Print one JSON object per input row on stdout.
    #[arg(long)]
    json: bool,
    /// CPU threads (0: one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// cpu (the default: a handful of inputs is answered before a GPU is
    /// even opened), auto (a hardware GPU if there is one), gpu (any
    /// adapter, software ones included), or part of an adapter's name.
    #[arg(long, default_value = "cpu", value_name = "cpu|auto|gpu|NAME")]
    device: DeviceChoice,
}

/// One line of `predict --json`.
#[derive(Serialize)]
struct PredictLine<'a> {
    input: &'a str,
    class: usize,
    /// The class's name, when the model names its classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    probabilities: &'a [f32],
    top_k: &'a [ClassProbability],
}

/// Run `wgtrain predict`.
pub(crate) fn run(a: PredictArgs) -> Result<()> {
    if a.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    let model = super::args::load_models(&a.model)?;
    let mut predictor = open_predictor(&a.device, &model, PREDICT_BATCH, a.threads, DEFAULT_SPIN)?;
    let shape = predictor.input_shape().to_vec();
    let csv = CsvInputOptions { drop_col: a.label_col };
    let classes = predictor.classes();
    let names = model.class_names().to_vec();
    let mut stdout = std::io::stdout().lock();
    for path in &a.inputs {
        let inputs = input::load_file(path, predictor.inputs(), &shape, csv)?;
        let probs = predictor.probabilities(&inputs.features)?;
        for (name, mut p) in inputs.names.iter().zip(predictions(&probs, classes, a.top_k)) {
            p.name_classes(&names);
            if a.json {
                let line = PredictLine {
                    input: name,
                    class: p.class,
                    name: p.name.as_deref(),
                    probabilities: &p.probabilities,
                    top_k: &p.top_k,
                };
                serde_json::to_writer(&mut stdout, &line)?;
                writeln!(stdout)?;
            } else {
                let top: Vec<String> = p
                    .top_k
                    .iter()
                    .map(|c| format!("{} ({:.4})", label(&names, c.class), c.probability))
                    .collect();
                writeln!(stdout, "{name}: {}", top.join("  "))?;
            }
        }
    }
    stdout.flush()?;
    Ok(())
}
