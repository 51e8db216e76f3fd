//! `wgtrain export`: a model in another format (ONNX) for other runtimes.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use super::args::{check_writable_as, load_models, show_paths};
use wgtrain::onnx::{self, ExportOptions, DEFAULT_OPSET};

/// The formats `wgtrain export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExportFormat {
    /// ONNX: input `input` [batch, inputs] raw values, output `logits` (or
    /// `probabilities`) [batch, classes].
    Onnx,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The model file (of `wgtrain train --save`, `wgtrain compress` or
    /// `wgtrain ensemble`); several, comma-separated, export as one
    /// ensemble graph averaging their probabilities.
    #[arg(long, value_name = "FILE[,FILE...]", value_delimiter = ',', required = true)]
    model: Vec<PathBuf>,
    /// The format to write.
    #[arg(long, value_enum, default_value = "onnx")]
    format: ExportFormat,
    /// Where to write the exported model (e.g. model.onnx).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: PathBuf,
    /// End the graph with a softmax: the output is `probabilities` instead
    /// of `logits` (an ensemble's output always is).
    #[arg(long)]
    probabilities: bool,
    /// The ONNX operator set version (17 to 21).
    #[arg(long, default_value_t = DEFAULT_OPSET, value_name = "N")]
    opset: i64,
}

/// Run `wgtrain export`.
pub(crate) fn run(a: ExportArgs) -> Result<()> {
    check_writable_as("--out", &a.out)?;
    let model = load_models(&a.model)?;
    match a.format {
        ExportFormat::Onnx => {
            let opts = ExportOptions {
                probabilities: a.probabilities,
                opset: a.opset,
                // The model's own names, if it has any.
                class_names: None,
            };
            let bytes = onnx::write(&model, &opts, &a.out)
                .with_context(|| format!("cannot export {} to ONNX", show_paths(&a.model)))?;
            outln!(
                "wrote {} ({bytes} bytes, ONNX opset {}): {}, input `{}` [batch, {}], output `{}` [batch, {}]",
                a.out.display(),
                a.opset,
                model.describe(),
                onnx::INPUT_NAME,
                model.inputs(),
                onnx::output_name(&model, &opts),
                model.classes()
            );
        }
    }
    Ok(())
}
