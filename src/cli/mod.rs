//! The `wgtrain` command line: one file per command, each holding its
//! arguments (the doc comments are the `--help` text) and the glue from them
//! to library calls, and `args.rs` with the argument groups several
//! commands share. This is the only code that prints results and the only
//! code that uses `anyhow`; library errors about a setting are mapped here
//! to the flag that set it.

mod args;
mod bench;
mod compress;
mod devices;
mod eval;
mod plot;
mod predict;
mod serve;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

use wgtrain::error::Setting;

/// Train multi-layer perceptrons on any GPU (Vulkan, Metal, DX12, GL) through
/// wgpu compute shaders, or on the CPU.
#[derive(Debug, Parser)]
#[command(name = "wgtrain", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model and report test accuracy; optionally save it.
    Train(train::TrainArgs),
    /// Evaluate a saved model: test loss, accuracy and confusion matrix.
    Eval(eval::EvalArgs),
    /// List the GPU adapters wgpu can see, with the limits that matter here.
    Devices(devices::DevicesArgs),
    /// Measure training speed (epoch time) and matrix-product throughput on
    /// each device: a table on stderr, JSON lines on stdout.
    Bench(bench::BenchArgs),
    /// Predict classes of images (PNG, JPEG), IDX image files or CSV rows
    /// with a saved model; prints the top-k classes and probabilities.
    Predict(predict::PredictArgs),
    /// Serve predictions over HTTP: POST /v1/predict (JSON rows or an
    /// image), GET /healthz, GET /metrics; micro-batched, bounded queue.
    Serve(serve::ServeArgs),
    /// Prune and/or quantize a trained model to int8; prints per-layer kept
    /// weights, sparsity and bytes, and test accuracy before and after.
    Compress(compress::CompressArgs),
    /// Draw loss and accuracy against the epoch (training, validation and
    /// test) from a `train --metrics-file` file, as PNG or SVG.
    Plot(plot::PlotArgs),
}

/// Parse the command line and run it.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Devices(a) => devices::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Compress(a) => compress::run(a),
        Command::Plot(a) => plot::run(a),
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(format!("wgtrain={level},warn")))
        .format_timestamp(None)
        .format_target(false)
        .init();
}

/// The flag that sets a library setting.
pub(crate) fn flag(setting: Setting) -> &'static str {
    match setting {
        Setting::LearningRate => "--lr",
        Setting::BatchSize => "--batch",
        Setting::LrStepEpochs => "--lr-step-epochs",
        Setting::LrGamma => "--lr-gamma",
        Setting::LrMin => "--lr-min",
        Setting::WarmupEpochs => "--warmup-epochs",
        Setting::WarmupSteps => "--warmup-steps",
        Setting::Momentum => "--momentum",
        Setting::Nesterov => "--nesterov",
        Setting::WeightDecay => "--weight-decay",
        Setting::Betas => "--betas",
        Setting::Eps => "--eps",
        Setting::ValSplit => "--val-split",
        Setting::EarlyStop => "--early-stop",
        Setting::Dropout => "--dropout",
        Setting::LabelSmoothing => "--label-smoothing",
        Setting::Shift => "--shift",
        Setting::ClipGradNorm => "--clip-grad-norm",
        Setting::Checkpoint => "--checkpoint-dir",
    }
}

/// A library error, with the flag behind a refused value named first.
pub(crate) fn flagged(e: wgtrain::Error) -> anyhow::Error {
    match &e {
        wgtrain::Error::Invalid { setting, .. } => {
            let f = flag(*setting);
            anyhow::Error::new(e).context(f)
        }
        wgtrain::Error::Requires { setting, needs } => {
            let (f, n) = (flag(*setting), flag(*needs));
            anyhow::Error::new(e).context(format!("{f} needs {n}"))
        }
        wgtrain::Error::Diverged { epoch, step, loss } => anyhow::anyhow!(
            "training diverged: the training loss is {loss} at step {step} (epoch {epoch}); \
             try a lower --lr; no model was written"
        ),
        _ => e.into(),
    }
}
