//! Command-line definitions (the doc comments are the `--help` text) and the
//! code that turns them into library calls.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use wgtrain::backend::steps_per_epoch;
use wgtrain::data::builtin::SOURCE as BUILTIN_SOURCE;
use wgtrain::data::{CsvOptions, DataSource, Dataset, Normalize, Preprocess};
use wgtrain::device::{open_backend, DeviceChoice};
use wgtrain::model::Mlp;
use wgtrain::train::{Event, TrainConfig};

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
    Train(TrainArgs),
    /// Evaluate a saved model: test loss, accuracy and confusion matrix.
    Eval(EvalArgs),
    /// List the GPU adapters wgpu can see, with the limits that matter here.
    Devices(DevicesArgs),
}

/// Where the data comes from and how CSV files are read.
#[derive(Debug, Args)]
struct DataArgs {
    /// A folder of IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
    /// t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz),
    /// a CSV file, or `builtin` (the embedded 8x8 digits). Default:
    /// $WGTRAIN_DATA, then /usr/share/datasets/fashion-mnist, then builtin.
    #[arg(long, value_name = "PATH|builtin")]
    data: Option<String>,
    /// CSV: the column holding the label, counting from 0; negative counts
    /// from the end (-1 is the last column).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "N")]
    label_col: i64,
    /// CSV and builtin: the fraction of rows held out as the test set
    /// (a seeded shuffle, see --seed).
    #[arg(long, default_value_t = 0.2, value_name = "FRACTION")]
    test_split: f64,
}

/// Which device runs the work.
#[derive(Debug, Args)]
struct DeviceArgs {
    /// auto (a hardware GPU if there is one, else the CPU), cpu, gpu (any
    /// adapter, software ones such as lavapipe included), or part of an
    /// adapter's name as `wgtrain devices` prints it.
    #[arg(long, default_value = "auto", value_name = "auto|cpu|gpu|NAME")]
    device: DeviceChoice,
    /// CPU threads (0: one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
}

#[derive(Debug, Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Hidden layer widths, comma-separated: `500`, or `512,256` for two
    /// hidden layers.
    #[arg(long, default_value = "500", value_name = "N[,N...]")]
    hidden: String,
    /// Learning rate of plain SGD.
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    /// Examples per step (the last, partial batch of an epoch is kept).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Passes over the training set [default: 10, or 30 for the built-in
    /// digits, whose 1,437 training images make only 23 steps an epoch].
    #[arg(long, value_name = "N")]
    epochs: Option<usize>,
    /// Seed of the initial weights, the shuffles and the CSV split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Input preprocessing, recorded in the model file so that eval and
    /// predict apply the same.
    #[arg(long, value_enum, default_value_t = Normalize::Scale)]
    normalize: Normalize,
    /// Log training loss and accuracy every N steps (0: only per epoch).
    #[arg(long, default_value_t = 100, value_name = "N")]
    log_every: usize,
    /// Save the trained model here (safetensors, loadable by PyTorch).
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Print one JSON object per epoch on stdout (logs stay on stderr).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct EvalArgs {
    /// The model file written by `wgtrain train --save`.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
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

#[derive(Debug, Args)]
struct DevicesArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Parse the command line and run it.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match cli.command {
        Command::Train(a) => train(a),
        Command::Eval(a) => eval(a),
        Command::Devices(a) => devices(a),
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

fn load_data(args: &DataArgs, seed: u64) -> Result<Dataset> {
    let (source, why) = DataSource::resolve(args.data.as_deref())?;
    log::info!("data: {source} ({why})");
    let opts = CsvOptions {
        label_col: args.label_col,
        test_split: args.test_split,
        seed,
    };
    let ds = source
        .load(opts)
        .with_context(|| format!("cannot load the dataset from {source}"))?;
    log::info!(
        "{} training and {} test examples of shape {:?}, {} classes",
        ds.train.len(),
        ds.test.len(),
        ds.shape,
        ds.classes
    );
    Ok(ds)
}

fn parse_hidden(s: &str) -> Result<Vec<usize>> {
    let sizes = s
        .split(',')
        .map(|x| x.trim())
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<usize>()
                .ok()
                .filter(|&v| v > 0)
                .with_context(|| format!("--hidden `{s}`: `{x}` is not a positive layer width"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(sizes)
}

/// Fail before training, not after, when the model cannot be saved there.
fn check_writable(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("--save {}: folder {} does not exist", path.display(), dir.display());
    }
    if path.is_dir() {
        bail!(
            "--save {}: is a folder; give a file name such as model.safetensors",
            path.display()
        );
    }
    Ok(())
}

fn train(a: TrainArgs) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        bail!("--lr must be a positive number, got {}", a.lr);
    }
    if let Some(p) = &a.save {
        check_writable(p)?;
    }
    wgtrain::cpu::set_threads(a.device.threads);
    let hidden = parse_hidden(&a.hidden)?;
    let data = Arc::new(load_data(&a.data, a.seed)?);
    let epochs = a.epochs.unwrap_or(if data.source == BUILTIN_SOURCE { 30 } else { 10 });
    let preprocess = Preprocess::fit(a.normalize, &data);
    let mut sizes = vec![data.dim()];
    sizes.extend(&hidden);
    sizes.push(data.classes);
    let model = Mlp::new(&sizes, a.seed, preprocess, data.shape.clone())?;
    let mut backend = open_backend(&a.device.device, model, data.clone(), a.batch)?;
    log::info!(
        "model {} ({} parameters) on {}; batch {}, lr {}, {} epochs",
        sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("-"),
        sizes.windows(2).map(|w| w[0] * w[1] + w[1]).sum::<usize>(),
        backend.name(),
        a.batch,
        a.lr,
        epochs
    );
    let steps = steps_per_epoch(data.train.len(), a.batch);
    let bar = if std::io::stderr().is_terminal() && !a.json {
        let b = ProgressBar::new(steps as u64);
        b.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} steps {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let cfg = TrainConfig {
        epochs,
        lr: a.lr,
        seed: a.seed,
        log_every: a.log_every,
    };
    let mut stdout = std::io::stdout();
    let mut json_err = None;
    let mut on_event = |e: &Event| {
        let line = match e {
            Event::Step {
                epoch,
                step,
                global_step,
                loss,
                accuracy,
            } => {
                if let Some(b) = &bar {
                    b.set_prefix(epoch.to_string());
                    b.set_position(*step as u64);
                }
                format!(
                    "epoch {epoch} step {step:>5}/{steps} (global {global_step:>6}) | loss {loss:.4} | acc {:.2}%",
                    accuracy * 100.0
                )
            }
            Event::Epoch {
                epoch,
                train_loss,
                train_accuracy,
                test_loss,
                test_accuracy,
                seconds,
            } => {
                if let Some(b) = &bar {
                    b.set_position(0);
                }
                if a.json {
                    if let Err(err) = serde_json::to_writer(&mut stdout, e)
                        .map_err(std::io::Error::from)
                        .and_then(|_| writeln!(stdout))
                    {
                        json_err = Some(err);
                    }
                }
                format!(
                    "epoch {epoch} done in {seconds:.2}s | train loss {train_loss:.4} acc {:.2}% | test loss {test_loss:.4} acc {:.2}%",
                    train_accuracy * 100.0,
                    test_accuracy * 100.0
                )
            }
        };
        match &bar {
            Some(b) => b.suspend(|| log::info!("{line}")),
            None => log::info!("{line}"),
        }
    };
    let trained = wgtrain::train::train(backend.as_mut(), &data, &cfg, &mut on_event)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(e) = json_err {
        return Err(e).context("cannot write JSON to stdout");
    }
    let eval = wgtrain::train::evaluate(backend.as_mut(), &data, wgtrain::backend::SplitKind::Test)?;
    log::info!(
        "test accuracy {:.2}% ({} examples), test loss {:.4}",
        eval.accuracy * 100.0,
        eval.examples,
        eval.loss
    );
    if let Some(p) = &a.save {
        trained
            .save(p)
            .with_context(|| format!("cannot save the model to {}", p.display()))?;
        log::info!("saved model to {}", p.display());
    }
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    wgtrain::cpu::set_threads(a.device.threads);
    let model = Mlp::load(&a.model).with_context(|| format!("cannot load model {}", a.model.display()))?;
    let data = Arc::new(load_data(&a.data, a.seed)?);
    let classes = model.classes();
    let mut backend = open_backend(&a.device.device, model, data.clone(), 256)
        .with_context(|| format!("model {} does not fit the data", a.model.display()))?;
    let mut eval = wgtrain::train::evaluate(backend.as_mut(), &data, wgtrain::backend::SplitKind::Test)?;
    eval.confusion.resize(classes.max(eval.confusion.len()), vec![]);
    for row in eval.confusion.iter_mut() {
        row.resize(classes.max(row.len()), 0);
    }
    if a.json {
        println!("{}", serde_json::to_string(&eval)?);
    } else {
        println!(
            "test accuracy {:.2}% ({} examples), test loss {:.4} on {}",
            eval.accuracy * 100.0,
            eval.examples,
            eval.loss,
            backend.name()
        );
        print!("{}", eval.confusion_table());
    }
    Ok(())
}

fn devices(a: DevicesArgs) -> Result<()> {
    let adapters = wgtrain::gpu::list_adapters();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&adapters)?);
        return Ok(());
    }
    if adapters.is_empty() {
        println!("no GPU adapters found; `--device auto` will use the CPU");
    }
    for (i, ad) in adapters.iter().enumerate() {
        println!("[{i}] {ad}");
    }
    println!(
        "cpu: {} threads (always available as --device cpu)",
        wgtrain::cpu::threads()
    );
    Ok(())
}
