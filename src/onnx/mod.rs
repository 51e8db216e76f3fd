//! Export to ONNX: any model wgtrain reads (f32, pruned, int8, ensembles)
//! as an ONNX graph that ONNX Runtime, tract, TensorRT or OpenVINO run and
//! that computes what `wgtrain predict` computes on the CPU.
//!
//! The graph (see the `export` module's source for each node) has one input,
//! `input`, `[batch, inputs]` f32 raw values (before preprocessing, as
//! predict takes them; `batch` is a symbolic dimension), and one output,
//! `logits` `[batch, classes]`, or `probabilities` (a final `Softmax`) with
//! [`ExportOptions::probabilities`] and always for an ensemble, whose
//! output is the mean of its members' probabilities. The model's metadata
//! (`metadata_props`) names the producer, the preprocessing, the input
//! shape and, when given, the class names.
//!
//! - [`proto`]: the ONNX messages the file is made of (prost).
//! - `graph`: nodes and constant tensors under unique names.
//! - `export`: the layers of a model as nodes.
//!
//! This module reads models from [`crate::model`] and their preprocessing
//! from [`crate::data`]; it runs nothing.

mod export;
mod graph;
pub mod proto;

use std::path::Path;

use prost::Message;

use crate::error::{ExportError, ModelError};
use crate::model::{write_atomic, AnyModel};
use export::Exporter;
use graph::GraphBuilder;
use proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto};

/// The operator set written when none is asked for.
pub const DEFAULT_OPSET: i64 = 17;
/// The oldest operator set the exporter writes.
pub const MIN_OPSET: i64 = 17;
/// The newest operator set the exporter writes.
pub const MAX_OPSET: i64 = 21;

/// The name of the graph's input.
pub const INPUT_NAME: &str = "input";
/// The name of the graph's output without a softmax.
pub const LOGITS_NAME: &str = "logits";
/// The name of the graph's output with a softmax (and of an ensemble's).
pub const PROBABILITIES_NAME: &str = "probabilities";

/// How a model is exported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExportOptions<'a> {
    /// End the graph with `Softmax` and name its output `probabilities`
    /// (an ensemble's graph always does).
    pub probabilities: bool,
    /// The ONNX operator set version, [`MIN_OPSET`] to [`MAX_OPSET`].
    pub opset: i64,
    /// One name per class, stored in the metadata as `class_names` (a JSON
    /// list); `None` stores the model's own names (`AnyModel::class_names`),
    /// if it has any.
    pub class_names: Option<&'a [String]>,
}

impl Default for ExportOptions<'_> {
    fn default() -> Self {
        ExportOptions {
            probabilities: false,
            opset: DEFAULT_OPSET,
            class_names: None,
        }
    }
}

/// The ONNX IR version that goes with an operator set (as onnx's
/// `helper.VERSION_TABLE` pairs them).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// The name of the output of `model`'s graph under `opts`.
pub fn output_name(model: &AnyModel, opts: &ExportOptions) -> &'static str {
    if opts.probabilities || matches!(model, AnyModel::Ensemble(_)) {
        PROBABILITIES_NAME
    } else {
        LOGITS_NAME
    }
}

/// `v` joined with commas.
fn join(v: &[usize]) -> String {
    v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")
}

/// The `metadata_props` of `model`'s file.
fn metadata(model: &AnyModel, opts: &ExportOptions, output: &str) -> Vec<(String, String)> {
    let mut md = vec![
        ("producer".to_string(), format!("wgtrain {}", env!("CARGO_PKG_VERSION"))),
        ("wgtrain.model".to_string(), model.describe()),
        ("input".to_string(), INPUT_NAME.to_string()),
        ("output".to_string(), output.to_string()),
        ("inputs".to_string(), model.inputs().to_string()),
        ("classes".to_string(), model.classes().to_string()),
        ("input_shape".to_string(), join(model.input_shape())),
    ];
    let preprocess = |prefix: &str, model: &AnyModel, md: &mut Vec<(String, String)>| {
        if let Some(h) = model.header() {
            let p = h.preprocess;
            md.extend([
                (format!("{prefix}layers"), join(&h.sizes)),
                (format!("{prefix}normalize"), p.kind.as_str().to_string()),
                (format!("{prefix}input_scale"), format!("{:e}", p.scale)),
                (format!("{prefix}input_offset"), format!("{:e}", p.offset)),
                (
                    format!("{prefix}preprocessing"),
                    format!("x * {:e} + {:e} on the raw input, inside the graph", p.scale, p.offset),
                ),
            ]);
        }
    };
    match model {
        AnyModel::Ensemble(e) => {
            md.push(("members".to_string(), e.members().len().to_string()));
            for (i, m) in e.members().iter().enumerate() {
                preprocess(&format!("m{i}."), &m.model, &mut md);
            }
        }
        _ => preprocess("", model, &mut md),
    }
    if let Some(names) = class_names(model, opts) {
        md.push((
            "class_names".to_string(),
            serde_json::Value::from(names.to_vec()).to_string(),
        ));
    }
    md
}

/// The class names the export stores: those of `opts`, else the model's.
fn class_names<'a>(model: &'a AnyModel, opts: &ExportOptions<'a>) -> Option<&'a [String]> {
    opts.class_names
        .or_else(|| Some(model.class_names()).filter(|n| !n.is_empty()))
}

/// `model` as an ONNX model under `opts`: refuses an operator set outside
/// [`MIN_OPSET`]..=[`MAX_OPSET`] and class names that are not one per
/// class.
pub fn to_model_proto(model: &AnyModel, opts: &ExportOptions) -> Result<ModelProto, ExportError> {
    if !(MIN_OPSET..=MAX_OPSET).contains(&opts.opset) {
        return Err(ExportError::Opset {
            found: opts.opset,
            min: MIN_OPSET,
            max: MAX_OPSET,
        });
    }
    if let Some(names) = class_names(model, opts) {
        if names.len() != model.classes() {
            return Err(ExportError::ClassNames {
                found: names.len(),
                classes: model.classes(),
            });
        }
    }
    let output = output_name(model, opts);
    let mut g = GraphBuilder::default();
    Exporter {
        g: &mut g,
        opset: opts.opset,
    }
    .model(model, INPUT_NAME, opts.probabilities, output);
    let graph = g.finish("wgtrain", (INPUT_NAME, model.inputs()), (output, model.classes()));
    Ok(ModelProto {
        ir_version: ir_version(opts.opset),
        producer_name: "wgtrain".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: format!("{} exported by wgtrain", model.describe()),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opts.opset,
        }],
        metadata_props: metadata(model, opts, output)
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key, value })
            .collect(),
    })
}

/// `model` as the bytes of an `.onnx` file (see [`to_model_proto`]).
pub fn to_bytes(model: &AnyModel, opts: &ExportOptions) -> Result<Vec<u8>, ExportError> {
    Ok(to_model_proto(model, opts)?.encode_to_vec())
}

/// Write `model` as an `.onnx` file at `path` (atomically: a temporary
/// file, then a rename); returns the bytes written.
pub fn write(model: &AnyModel, opts: &ExportOptions, path: &Path) -> Result<usize, ExportError> {
    let bytes = to_bytes(model, opts)?;
    write_atomic(path, &bytes).map_err(|e| ExportError::Write {
        path: path.to_path_buf(),
        source: match e {
            ModelError::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        },
    })?;
    Ok(bytes.len())
}
