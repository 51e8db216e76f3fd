//! The `wgtrain` command line: one file per command, each holding its
//! arguments (the doc comments are the `--help` text) and the glue from them
//! to library calls, and `args.rs` with the argument groups several
//! commands share. This is the only code that prints results and the only
//! code that uses `anyhow`; library errors about a setting are mapped here
//! to the flag that set it.

/// `println!` that returns the write's error instead of panicking (a
/// closed pipe, as in `wgtrain eval ... | head -1`); `main` ends quietly
/// on a broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `print!` that returns the write's error, as [`outln!`] does.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod args;
mod average;
mod bench;
mod class_names;
mod compress;
mod devices;
mod distill;
mod distributed;
mod ensemble;
mod eval;
mod export;
mod plot;
mod predict;
mod runtime_dir;
mod serve;
mod train;
mod tune;

use anyhow::Result;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

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
    Train(Box<train::TrainArgs>),
    /// Evaluate a saved model: test loss, accuracy and confusion matrix.
    Eval(eval::EvalArgs),
    /// List the GPU adapters wgpu can see, with the limits that matter here.
    Devices(devices::DevicesArgs),
    /// Measure training speed (epoch time) and matrix-product throughput on
    /// each device: a table on stderr, JSON lines on stdout. With --report
    /// or --compare, measure nothing: turn saved JSON lines into a report.
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
    /// Search hyperparameters: trials drawn from a space (random or grid),
    /// pruned by successive halving on a validation split, kept in a SQLite
    /// study several processes may share; `--report` prints the leaderboard.
    Tune(Box<tune::TuneArgs>),
    /// Train a student model from teacher models (knowledge distillation):
    /// every flag of train, plus --teacher, --temperature and --alpha.
    Distill(Box<distill::DistillArgs>),
    /// Write one file holding several models (an ensemble: their probabilities are averaged).
    Ensemble(ensemble::EnsembleArgs),
    /// Average the weights of f32 models of one architecture (model soups).
    Average(average::AverageArgs),
    /// Export a model (f32, pruned, int8 or an ensemble) to ONNX for other
    /// runtimes (ONNX Runtime, TensorRT, OpenVINO, browsers).
    Export(export::ExportArgs),
}

/// Parse the command line and run it.
pub fn run() -> Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging(cli.verbose, cli.quiet);
    // Before any thread starts (see runtime_dir).
    let _runtime_dir = runtime_dir::ensure();
    match cli.command {
        Command::Train(a) => {
            let given = matches
                .subcommand_matches("train")
                .map(|m| given_args(m, &train_command()))
                .unwrap_or_default();
            train::run(*a, given)
        }
        Command::Eval(a) => eval::run(a),
        Command::Devices(a) => devices::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Compress(a) => compress::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Tune(a) => tune::run(*a),
        Command::Distill(a) => {
            let given = matches
                .subcommand_matches("distill")
                .map(|m| given_args(m, &subcommand("distill")))
                .unwrap_or_default();
            distill::run(*a, given)
        }
        Command::Ensemble(a) => ensemble::run(a),
        Command::Average(a) => average::run(a),
        Command::Export(a) => export::run(a),
    }
}

/// A subcommand's definition.
fn subcommand(name: &'static str) -> clap::Command {
    let mut cli = Cli::command();
    cli.build();
    cli.find_subcommand(name)
        .cloned()
        .unwrap_or_else(|| clap::Command::new(name))
}

/// The `train` subcommand's definition.
fn train_command() -> clap::Command {
    let mut cli = Cli::command();
    cli.build();
    cli.find_subcommand("train")
        .cloned()
        .unwrap_or_else(|| clap::Command::new("train"))
}

/// Arguments by id, with their raw values.
pub(crate) type GivenArgs = Vec<(String, Vec<String>)>;

/// The arguments given on the command line, by id, with their raw values
/// (the global ones and help aside).
pub(crate) fn given_args(m: &ArgMatches, cmd: &clap::Command) -> GivenArgs {
    cmd.get_arguments()
        .map(|a| a.get_id().as_str())
        .filter(|id| !matches!(*id, "help" | "version" | "verbose" | "quiet"))
        .filter(|id| m.value_source(id) == Some(ValueSource::CommandLine))
        .map(|id| {
            let vals = m
                .get_raw(id)
                .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            (id.to_string(), vals)
        })
        .collect()
}

/// Parse `train` arguments given by id and raw values (as
/// [`given_args`] returns them): the arguments and their matches.
pub(crate) fn parse_train(args: &[(String, Vec<String>)]) -> Result<(train::TrainArgs, ArgMatches)> {
    let cmd = train_command();
    let mut argv = vec!["train".to_string()];
    for (id, vals) in args {
        let Some(arg) = cmd.get_arguments().find(|a| a.get_id().as_str() == id) else {
            anyhow::bail!("unknown argument `{id}`");
        };
        let long = arg.get_long().unwrap_or(id);
        if arg.get_action().takes_values() {
            argv.extend(vals.iter().map(|v| format!("--{long}={v}")));
        } else if vals.iter().any(|v| v == "true") {
            argv.push(format!("--{long}"));
        }
    }
    let m = cmd.try_get_matches_from(argv)?;
    let a = train::TrainArgs::from_arg_matches(&m)?;
    Ok((a, m))
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
        Setting::SwaFrom => "--swa-from",
        Setting::Precision => "--precision",
        Setting::Checkpoint => "--checkpoint-dir",
        Setting::ShardWeights => "--shard-weights",
        Setting::Temperature => "--temperature",
        Setting::DistillAlpha => "--alpha",
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
        wgtrain::Error::Interrupted {
            epoch,
            step,
            checkpoint,
        } => anyhow::anyhow!(
            "interrupted at epoch {epoch} step {step}; checkpoint written to {}; resume with: wgtrain train --resume {}",
            checkpoint.display(),
            checkpoint.parent().unwrap_or(std::path::Path::new(".")).display()
        ),
        wgtrain::Error::Diverged { epoch, step, loss } => anyhow::anyhow!(
            "training diverged: the training loss is {loss} at step {step} (epoch {epoch}); \
             try a lower --lr; no model was written"
        ),
        _ => e.into(),
    }
}
