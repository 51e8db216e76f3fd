//! `wgtrain compress`: prune and/or quantize a trained model, report sizes
//! and accuracies, and write the compressed model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::args::{load_data, DataArgs};
use super::flagged;
use wgtrain::backend::{SplitKind, TrainSpec};
use wgtrain::bench::{bench_forward_f32, bench_forward_f32_predictor, bench_forward_int8, ForwardBench};
use wgtrain::compress::prune::{apply_masks, check_sparsity};
use wgtrain::compress::{self, LayerReport, PruneConfig};
use wgtrain::cpu::team::{Team, TRAIN_SPIN};
use wgtrain::device::{open_backend, DeviceChoice};
use wgtrain::infer::compressed::{cpu_path_name, evaluate};
use wgtrain::metrics::Evaluation;
use wgtrain::model::{Activations, AnyModel, CompressedMlp, CompressionInfo, Scope};
use wgtrain::train::{Event, TrainConfig};

/// Weight quantization schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Quantize {
    /// Symmetric int8, one scale per output channel.
    Int8,
}

/// The values of `--prune-scope` (the library's `Scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ScopeArg {
    /// One magnitude threshold across all weight matrices: layers with many
    /// small weights (the first) lose more.
    Global,
    /// Every weight matrix pruned to the same sparsity.
    Layer,
}

impl From<ScopeArg> for Scope {
    fn from(a: ScopeArg) -> Self {
        match a {
            ScopeArg::Global => Scope::Global,
            ScopeArg::Layer => Scope::Layer,
        }
    }
}

/// The values of `--activations` (the library's `Activations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ActivationsArg {
    /// Quantized to int8 per row at run time; integer dot products.
    Int8,
    /// Kept in f32; only the weights are int8.
    F32,
}

impl From<ActivationsArg> for Activations {
    fn from(a: ActivationsArg) -> Self {
        match a {
            ActivationsArg::Int8 => Activations::Int8,
            ActivationsArg::F32 => Activations::F32,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct CompressArgs {
    /// The f32 model to compress (written by `wgtrain train --save`).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Where to write the compressed model (safetensors).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Prune this fraction of the weights (0 to 0.99), smallest magnitudes
    /// first; biases are kept.
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    prune: Option<f64>,
    /// global: one magnitude threshold across all layers; layer: every layer
    /// pruned to the same sparsity.
    #[arg(long, value_enum, default_value_t = ScopeArg::Global)]
    prune_scope: ScopeArg,
    /// Raise the sparsity gradually over the fine-tuning steps along the
    /// cubic schedule of Zhu and Gupta (2017), recomputing the masks every
    /// 100 steps over the first 75% of the steps; the rest fine-tunes at the
    /// final sparsity.
    #[arg(long)]
    gradual: bool,
    /// Epochs of fine-tuning after pruning, with the pruned weights held at
    /// zero.
    #[arg(long, default_value_t = 0, value_name = "N")]
    finetune_epochs: usize,
    /// Quantize the weights.
    #[arg(long, value_enum)]
    quantize: Option<Quantize>,
    /// How the int8 model treats activations: int8 (quantized per row at run
    /// time, integer dot products; faster) or f32 (weights-only int8).
    #[arg(long, value_enum, default_value_t = ActivationsArg::Int8)]
    activations: ActivationsArg,
    /// The data: its test split gives the accuracies, its train split the
    /// fine-tuning.
    #[command(flatten)]
    data: DataArgs,
    /// Device for fine-tuning: auto, cpu, gpu or part of an adapter name.
    #[arg(long, default_value = "auto", value_name = "auto|cpu|gpu|NAME")]
    device: DeviceChoice,
    /// CPU threads (0: one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// Learning rate of the fine-tuning SGD.
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// Examples per fine-tuning step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seed of the fine-tuning shuffles and of the CSV/builtin split (use
    /// the training seed to evaluate on the same held-out rows).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also time the CPU forward pass at batch 256, f32 against int8.
    #[arg(long)]
    bench: bool,
    /// Print one JSON object on stdout instead of the tables.
    #[arg(long)]
    json: bool,
}

/// Accuracy, loss and size of one model.
#[derive(Debug, Serialize)]
struct ModelFigures {
    accuracy: f64,
    loss: f64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct Totals {
    weights: usize,
    kept: usize,
    sparsity: f64,
    bytes: u64,
    /// Compressed file size over the base file size.
    size_ratio: f64,
    /// Test accuracy lost, in percentage points.
    accuracy_drop_points: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    base_model: String,
    out: String,
    before: ModelFigures,
    /// Test accuracy of the pruned (and fine-tuned) f32 weights, before
    /// quantization.
    #[serde(skip_serializing_if = "Option::is_none")]
    pruned_f32_accuracy: Option<f64>,
    after: ModelFigures,
    layers: Vec<LayerReport>,
    total: Totals,
    compression: CompressionInfo,
    /// Where fine-tuning ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    finetune_device: Option<String>,
    /// Test figures after each fine-tuning epoch.
    finetune: Vec<Event>,
    /// Evaluated with.
    eval_path: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bench: Vec<ForwardBench>,
}

fn check_out(path: &Path, model: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("--out {}: folder {} does not exist", path.display(), dir.display());
    }
    if path.is_dir() {
        bail!("--out {}: is a folder; give a file name", path.display());
    }
    if path == model {
        bail!("--out is the same file as --model; give a new file name");
    }
    Ok(())
}

/// Run `wgtrain compress`.
pub(crate) fn run(a: CompressArgs) -> Result<()> {
    // Validate everything cheap before loading anything.
    let sparsity = a.prune.map(check_sparsity).transpose()?;
    if a.prune.is_none() && a.quantize.is_none() {
        bail!("nothing to do: give --prune S and/or --quantize int8");
    }
    if a.gradual && a.finetune_epochs == 0 {
        bail!("--gradual spreads the sparsity over the fine-tuning steps: give --finetune-epochs 1 or more");
    }
    if a.finetune_epochs > 0 && a.prune.is_none() {
        bail!("--finetune-epochs fine-tunes a pruned model: give --prune S as well");
    }
    let spec = TrainSpec::sgd(a.batch);
    spec.check().map_err(flagged)?;
    let tc = TrainConfig::constant(a.finetune_epochs, f64::from(a.lr), a.seed, 0);
    tc.check().map_err(flagged)?;
    check_out(&a.out, &a.model)?;
    // The evaluations split their products over this team; fine-tuning
    // runs on its backend's own.
    Team::new(a.threads, TRAIN_SPIN).install(|| compress(a, sparsity, spec, tc))
}

fn compress(a: CompressArgs, sparsity: Option<f64>, spec: TrainSpec, tc: TrainConfig) -> Result<()> {
    let base = match AnyModel::load(&a.model).with_context(|| format!("cannot load model {}", a.model.display()))? {
        AnyModel::F32(m) => m,
        AnyModel::Compressed(_) => bail!(
            "{} is already compressed; compress the f32 model it was made from",
            a.model.display()
        ),
        AnyModel::Ensemble(_) => bail!(
            "{} is an ensemble; compress each member, then `wgtrain ensemble` the compressed files",
            a.model.display()
        ),
    };
    let base_bytes = std::fs::metadata(&a.model)
        .with_context(|| format!("cannot read {}", a.model.display()))?
        .len();
    let data = Arc::new(load_data(&a.data, a.seed)?);
    wgtrain::cpu::check_fit(&base, &data)
        .with_context(|| format!("model {} does not fit the data", a.model.display()))?;
    let test = &data.test;
    let before = Evaluation::new(
        &wgtrain::cpu::predict_rows(&base, &test.features, &test.labels),
        &test.labels,
        base.classes(),
    );
    log::info!("base model: test accuracy {:.2}%", before.accuracy * 100.0);

    let mut model = base.clone();
    let mut finetune = Vec::new();
    let mut finetune_device = None;
    if let Some(s) = sparsity {
        let cfg = PruneConfig::new(s, a.prune_scope.into(), a.gradual)?;
        if a.finetune_epochs == 0 {
            let masks = compress::magnitude_masks(&model, s, a.prune_scope.into())?;
            apply_masks(&mut model, &masks)?;
        } else {
            let mut backend = open_backend(&a.device, a.threads, model, data.clone(), spec)?;
            finetune_device = Some(backend.name());
            log::info!(
                "pruning to {:.1}% ({}{}) and fine-tuning {} epochs on {}, lr {}, batch {}",
                s * 100.0,
                Scope::from(a.prune_scope).as_str(),
                if a.gradual { ", gradual" } else { "" },
                a.finetune_epochs,
                backend.name(),
                a.lr,
                a.batch
            );
            let mut on_event = |e: &Event| {
                if let Event::Epoch {
                    epoch,
                    test_accuracy: Some(test_accuracy),
                    seconds,
                    ..
                } = e
                {
                    log::info!(
                        "fine-tuning epoch {epoch} done in {seconds:.2}s | test acc {:.2}%",
                        test_accuracy * 100.0
                    );
                }
                if matches!(e, Event::Epoch { .. }) {
                    finetune.push(e.clone());
                }
            };
            let (tuned, _) = compress::prune_and_finetune(backend.as_mut(), &data, &cfg, &tc, &mut on_event)
                .with_context(|| format!("cannot fine-tune the pruned model on {}", backend.name()))?;
            model = tuned;
        }
    }
    let pruned_f32_accuracy = sparsity.map(|_| {
        let p = wgtrain::cpu::predict_rows(&model, &test.features, &test.labels);
        Evaluation::new(&p, &test.labels, model.classes()).accuracy
    });

    let info = CompressionInfo {
        target_sparsity: sparsity.unwrap_or(0.0),
        scope: sparsity.map(|_| a.prune_scope.into()),
        schedule: match (sparsity, a.gradual) {
            (None, _) => "none",
            (Some(_), false) => "one-shot",
            (Some(_), true) => "gradual-cubic",
        }
        .into(),
        finetune_epochs: a.finetune_epochs,
        quantization: if a.quantize.is_some() { "int8" } else { "none" }.into(),
        activations: a.activations.into(),
        base_model: a
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let compressed = CompressedMlp::from_mlp(&model, a.quantize.is_some(), info);
    let after = evaluate(&compressed, &data, SplitKind::Test)?;
    let (storage, out_bytes) = compressed
        .save(&a.out)
        .with_context(|| format!("cannot save the compressed model to {}", a.out.display()))?;
    let layers = compress::layer_reports(&compressed, &storage);
    let weights: usize = layers.iter().map(|l| l.weights).sum();
    let kept: usize = layers.iter().map(|l| l.kept).sum();
    let mut bench = Vec::new();
    if a.bench {
        bench.push(bench_forward_f32(&base, 256, 1.0));
        bench.push(bench_forward_f32_predictor(&base, 256, 1.0));
        if let Some(engine) = compressed.int8_engine() {
            bench.push(bench_forward_int8(&engine, 256, 1.0));
        }
    }
    let report = Report {
        base_model: a.model.display().to_string(),
        out: a.out.display().to_string(),
        before: ModelFigures {
            accuracy: before.accuracy,
            loss: before.loss,
            bytes: base_bytes,
        },
        pruned_f32_accuracy,
        after: ModelFigures {
            accuracy: after.accuracy,
            loss: after.loss,
            bytes: out_bytes as u64,
        },
        total: Totals {
            weights,
            kept,
            sparsity: 1.0 - kept as f64 / weights.max(1) as f64,
            bytes: out_bytes as u64,
            size_ratio: out_bytes as f64 / base_bytes.max(1) as f64,
            accuracy_drop_points: (before.accuracy - after.accuracy) * 100.0,
        },
        layers,
        eval_path: cpu_path_name(&compressed),
        compression: compressed.info.clone(),
        finetune_device,
        finetune,
        bench,
    };
    if a.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report)?;
    }
    Ok(())
}

fn print_report(r: &Report) -> Result<()> {
    outln!(
        "{:<6} {:>11} {:>10} {:>10} {:>9} {:<13} {:>10} {:>10}",
        "layer",
        "shape",
        "weights",
        "kept",
        "sparsity",
        "encoding",
        "bytes",
        "f32 bytes"
    );
    for l in &r.layers {
        outln!(
            "{:<6} {:>11} {:>10} {:>10} {:>8.2}% {:<13} {:>10} {:>10}",
            l.layer,
            format!("{}x{}", l.shape[0], l.shape[1]),
            l.weights,
            l.kept,
            l.sparsity * 100.0,
            l.encoding,
            l.bytes,
            l.f32_bytes
        );
    }
    let t = &r.total;
    outln!(
        "{:<6} {:>11} {:>10} {:>10} {:>8.2}% {:<13} {:>10} {:>10}",
        "total",
        "",
        t.weights,
        t.kept,
        t.sparsity * 100.0,
        "(file)",
        t.bytes,
        r.before.bytes
    );
    outln!(
        "file: {} bytes -> {} bytes ({:.1}% of the f32 file)",
        r.before.bytes,
        r.after.bytes,
        t.size_ratio * 100.0
    );
    if let Some(p) = r.pruned_f32_accuracy {
        outln!("pruned f32 weights: test accuracy {:.2}%", p * 100.0);
    }
    outln!(
        "test accuracy: {:.2}% before, {:.2}% after ({:+.2} points; {})",
        r.before.accuracy * 100.0,
        r.after.accuracy * 100.0,
        -t.accuracy_drop_points,
        r.eval_path
    );
    for b in &r.bench {
        outln!(
            "forward at batch {}: {:<24} {:>8.3} ms/batch {:>12.0} rows/s",
            b.batch,
            b.path,
            b.batch_p50_ms,
            b.rows_per_second
        );
    }
    outln!("saved {}", r.out);
    Ok(())
}
