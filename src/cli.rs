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
    /// Measure training speed (epoch time) and matrix-product throughput on
    /// each device: a table on stderr, JSON lines on stdout.
    Bench(BenchArgs),
    /// Predict classes of images (PNG, JPEG), IDX image files or CSV rows
    /// with a saved model; prints the top-k classes and probabilities.
    Predict(crate::cmd_infer::PredictArgs),
    /// Serve predictions over HTTP: POST /v1/predict (JSON rows or an
    /// image), GET /healthz, GET /metrics; micro-batched, bounded queue.
    Serve(crate::cmd_infer::ServeArgs),
    /// Prune and/or quantize a trained model to int8; prints per-layer kept
    /// weights, sparsity and bytes, and test accuracy before and after.
    Compress(crate::cmd_compress::CompressArgs),
}

/// Where the data comes from and how CSV files are read.
#[derive(Debug, Args)]
pub(crate) struct DataArgs {
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
struct BenchArgs {
    /// Devices to measure, comma-separated (cpu, gpu, auto or part of an
    /// adapter name). Default: the CPU and the hardware GPU if there is one.
    #[arg(long, value_name = "LIST")]
    device: Option<String>,
    /// Batch sizes of the epoch benchmark, comma-separated.
    #[arg(long, default_value = "64,256", value_name = "LIST")]
    batch: String,
    /// Epochs per configuration; the first is reported apart (warm-up), the
    /// median of the rest is the steady epoch time.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Run at most N steps per epoch and scale the time to a full epoch
    /// (for slow devices such as software adapters).
    #[arg(long, value_name = "N")]
    max_steps: Option<usize>,
    /// Square matrix sizes for the matmul benchmark, comma-separated.
    #[arg(long, default_value = "1024,4096", value_name = "LIST")]
    square: String,
    /// Only the epoch benchmark.
    #[arg(long)]
    epoch: bool,
    /// Only the matmul benchmark.
    #[arg(long)]
    matmul: bool,
    /// Only the inference benchmark: latency (p50, p99) at batch 1 and
    /// throughput at batch 256, in process, for the f32 model and its int8
    /// version.
    #[arg(long)]
    inference: bool,
    /// Only the per-kernel GPU timings (timestamp queries) of a training
    /// step at each batch size.
    #[arg(long)]
    kernels: bool,
    /// Model for the inference benchmark (plain or compressed); default a
    /// freshly initialised 784-500-10 MLP.
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Data for the epoch benchmark; default Fashion-MNIST when installed,
    /// else random images of the same shape.
    #[arg(long, value_name = "PATH")]
    data: Option<String>,
    /// CPU threads (0: one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// Seconds spent timing each matmul shape.
    #[arg(long, default_value_t = 1.0, value_name = "S")]
    seconds: f64,
    /// GPU matmul tile variants to time at each shape, comma-separated
    /// (128x128, 64x64, 32x32, 16x16/k16, or all); default the one chosen
    /// for the shape, as training uses.
    #[arg(long, value_name = "LIST")]
    tile: Option<String>,
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
        Command::Bench(a) => bench(a),
        Command::Predict(a) => crate::cmd_infer::predict(a),
        Command::Serve(a) => crate::cmd_infer::serve(a),
        Command::Compress(a) => crate::cmd_compress::run(a),
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

pub(crate) fn load_data(args: &DataArgs, seed: u64) -> Result<Dataset> {
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

/// In-process inference figures of a model (or a fresh 784-500-10 MLP) in
/// f32 and int8 on each device (`None`: the CPU), printed as a table on
/// stderr.
fn bench_inference(
    model: Option<&Path>,
    devices: &[Option<Arc<wgtrain::gpu::GpuContext>>],
) -> Result<Vec<wgtrain::bench::InferenceBench>> {
    use wgtrain::bench::{bench_inference, BenchOptions};
    use wgtrain::infer::{CpuPredictor, Int8Predictor, Predictor};
    use wgtrain::model::{AnyModel, CompressedMlp, CompressionInfo};
    let (f32_model, int8_model) = match model {
        None => {
            let m = Mlp::new(
                &[784, 500, 10],
                0,
                Preprocess {
                    kind: Normalize::Scale,
                    scale: 1.0 / 255.0,
                    offset: 0.0,
                },
                vec![28, 28],
            )?;
            let info = CompressionInfo {
                quantization: "int8".into(),
                ..CompressionInfo::default()
            };
            let q = CompressedMlp::from_mlp(&m, true, info);
            (m, q)
        }
        Some(p) => match AnyModel::load(p).with_context(|| format!("cannot load model {}", p.display()))? {
            AnyModel::F32(m) => {
                let info = CompressionInfo {
                    quantization: "int8".into(),
                    ..CompressionInfo::default()
                };
                let q = CompressedMlp::from_mlp(&m, true, info);
                (m, q)
            }
            AnyModel::Compressed(c) => (c.to_mlp(), c),
        },
    };
    let opts = BenchOptions::default();
    // A software adapter takes milliseconds a call: fewer calls there.
    let software = BenchOptions {
        warmup: 20,
        batch1_iterations: 200,
        batch: opts.batch,
        batch_iterations: 10,
    };
    let mut predictors: Vec<(Box<dyn Predictor>, &BenchOptions)> = Vec::new();
    for dev in devices {
        match dev {
            None => {
                predictors.push((Box::new(CpuPredictor::new(&f32_model, opts.batch)), &opts));
                if let Some(p) = Int8Predictor::new(&int8_model) {
                    predictors.push((Box::new(p), &opts));
                }
            }
            Some(ctx) => {
                let o = if ctx.is_software() { &software } else { &opts };
                let f = wgtrain::gpu::GpuPredictor::new(ctx.clone(), &f32_model, opts.batch)?;
                predictors.push((Box::new(f), o));
                let q = wgtrain::gpu::GpuPredictor::from_compressed(ctx.clone(), &int8_model, opts.batch)?;
                predictors.push((Box::new(q), o));
            }
        }
    }
    let sizes = f32_model
        .sizes()
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("-");
    eprintln!("\nin-process inference, {sizes} MLP");
    eprintln!(
        "{:<40} {:>14} {:>14} {:>16}",
        "predictor", "batch-1 p50 us", "batch-1 p99 us", "rows/s at 256"
    );
    let mut out = Vec::new();
    for (p, o) in predictors.iter_mut() {
        let r = bench_inference(p.as_mut(), o)?;
        eprintln!(
            "{:<40} {:>14.1} {:>14.1} {:>16.0}",
            r.predictor, r.batch1_p50_us, r.batch1_p99_us, r.rows_per_second
        );
        out.push(r);
    }
    Ok(out)
}

/// Time one product shape on a GPU with the tile variant `tile` (the
/// automatic choice when `None`), with enough dispatches per submission to
/// fill about `budget_s` seconds.
fn gpu_matmul(
    ctx: &wgtrain::gpu::GpuContext,
    variant: &'static str,
    (m, n, k): (usize, usize, usize),
    tile: Option<wgtrain::gpu::Tile>,
    budget_s: f64,
) -> Result<wgtrain::bench::MatmulTiming> {
    let (once, _) = wgtrain::gpu::ops::bench_matmul(ctx, variant, m, n, k, 1, tile)?;
    let reps = ((budget_s / once.max(1e-7)) as usize).clamp(1, 2000);
    let (secs, used) = wgtrain::gpu::ops::bench_matmul(ctx, variant, m, n, k, reps, tile)?;
    Ok(wgtrain::bench::MatmulTiming {
        bench: "matmul",
        device: ctx.name().to_string(),
        variant,
        tile: Some(used.name()),
        m,
        n,
        k,
        seconds_per_call: secs,
        gflops: 2.0 * (m * n * k) as f64 / secs / 1e9,
    })
}

/// The `--tile` list: tile variants by size, or `all`.
fn parse_tiles(s: Option<&str>) -> Result<Vec<Option<wgtrain::gpu::Tile>>> {
    use wgtrain::gpu::Tile;
    match s {
        None => Ok(vec![None]),
        Some("all") => Ok(Tile::ALL.iter().map(|&t| Some(t)).collect()),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(|name| {
                Tile::from_name(name).map(Some).ok_or_else(|| {
                    let names: Vec<_> = Tile::ALL.iter().map(|t| t.name()).collect();
                    anyhow::anyhow!(
                        "--tile: no matmul tile {name:?}; the tiles are {} (or all)",
                        names.join(", ")
                    )
                })
            })
            .collect(),
    }
}

/// A comma-separated list of positive numbers; `what` names one in errors.
fn parse_list(flag: &str, s: &str, what: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|x| x.trim())
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<usize>()
                .ok()
                .filter(|&v| v > 0)
                .with_context(|| format!("{flag} `{s}`: `{x}` is not a positive {what}"))
        })
        .collect()
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
    let hidden = parse_list("--hidden", &a.hidden, "layer width")?;
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
    let model = match wgtrain::model::AnyModel::load(&a.model)
        .with_context(|| format!("cannot load model {}", a.model.display()))?
    {
        wgtrain::model::AnyModel::F32(m) => m,
        wgtrain::model::AnyModel::Compressed(c) => {
            return crate::cmd_compress::eval_compressed(&c, &a.model, &load_data(&a.data, a.seed)?, a.json)
        }
    };
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

fn bench(a: BenchArgs) -> Result<()> {
    use wgtrain::bench;
    wgtrain::cpu::set_threads(a.threads);
    let (run_epoch, run_matmul, run_inference, run_kernels) = match (a.epoch, a.matmul, a.inference, a.kernels) {
        (false, false, false, false) => (true, true, false, true),
        x => x,
    };
    let batches = parse_list("--batch", &a.batch, "batch size")?;
    let square = parse_list("--square", &a.square, "matrix size")?;
    let tiles = parse_tiles(a.tile.as_deref())?;
    let choices: Vec<DeviceChoice> = match &a.device {
        Some(list) => list
            .split(',')
            .map(|d| d.trim().parse().unwrap_or(DeviceChoice::Cpu))
            .collect(),
        None => vec![DeviceChoice::Cpu, DeviceChoice::Auto],
    };
    // `None` is the CPU; `auto` without a hardware GPU falls back to it, so
    // keep one CPU entry at most.
    let mut devices = Vec::new();
    for c in choices {
        match wgtrain::device::open_gpu(&c)? {
            Some(ctx) => devices.push(Some(ctx)),
            None if !devices.iter().any(Option::is_none) => devices.push(None),
            None => {}
        }
    }
    let mut out = std::io::stdout();
    let mut emit = |v: serde_json::Value| -> Result<()> { Ok(writeln!(out, "{v}")?) };
    if run_epoch {
        let data = Arc::new(match &a.data {
            Some(_) => load_data(
                &DataArgs {
                    data: a.data.clone(),
                    label_col: -1,
                    test_split: 0.2,
                },
                0,
            )?,
            None => match DataSource::resolve(None)? {
                (src @ DataSource::IdxDir(_), _) => {
                    log::info!("bench data: {src}");
                    src.load(CsvOptions::default())?
                }
                _ => {
                    log::info!("bench data: no Fashion-MNIST installed; using random 28x28 images");
                    bench::synthetic_mnist_like(0)
                }
            },
        });
        eprintln!("\nepoch time, {}-500-{} MLP, SGD lr 0.1", data.dim(), data.classes);
        eprintln!(
            "{:<40} {:>6} {:>10} {:>12} {:>12} {:>12}",
            "device", "batch", "steps", "first (s)", "steady (s)", "examples/s"
        );
        for dev in &devices {
            for &batch in &batches {
                let model = Mlp::new(
                    &[data.dim(), 500, data.classes],
                    0,
                    Preprocess::fit(Normalize::Scale, &data),
                    data.shape.clone(),
                )?;
                let mut backend: Box<dyn wgtrain::Backend> = match dev {
                    Some(ctx) => Box::new(wgtrain::gpu::GpuBackend::new(ctx.clone(), model, data.clone(), batch)?),
                    None => Box::new(wgtrain::cpu::CpuBackend::new(model, data.clone(), batch)?),
                };
                let t = bench::epoch_time(backend.as_mut(), data.train.len(), a.epochs, a.max_steps, 0.1)?;
                eprintln!(
                    "{:<40} {:>6} {:>10} {:>12.3} {:>12.3} {:>12.0}",
                    t.device,
                    t.batch,
                    if t.steps_timed < t.steps_per_epoch {
                        format!("{}/{}", t.steps_timed, t.steps_per_epoch)
                    } else {
                        t.steps_per_epoch.to_string()
                    },
                    t.first_epoch_s,
                    t.steady_epoch_s,
                    t.examples_per_s
                );
                emit(serde_json::to_value(&t)?)?;
            }
        }
    }
    if run_kernels {
        for ctx in devices.iter().flatten() {
            for &batch in &batches {
                let Some(times) = wgtrain::gpu::timing::kernel_times(ctx, &[784, 500, 10], batch, 20)? else {
                    log::info!("{}: no timestamp queries; per-kernel times unavailable", ctx.name());
                    break;
                };
                eprintln!(
                    "\nGPU time per kernel, 784-500-10 step at batch {batch}, {}",
                    ctx.name()
                );
                eprintln!("{:<28} {:>8} {:>12}", "kernel", "calls", "mean (us)");
                for t in &times {
                    eprintln!("{:<28} {:>8} {:>12.1}", t.name, t.calls, t.mean_us);
                }
                let total: f64 = times.iter().map(|t| t.mean_us).sum();
                eprintln!("{:<28} {:>8} {:>12.1}", "step (sum)", "", total);
                emit(serde_json::json!({
                    "bench": "kernels",
                    "device": ctx.name(),
                    "batch": batch,
                    "kernels": times,
                }))?;
            }
        }
    }
    if run_inference {
        for r in bench_inference(a.model.as_deref(), &devices)? {
            emit(serde_json::to_value(&r)?)?;
        }
    }
    if run_matmul {
        eprintln!("\nmatmul throughput (C = op(A) op(B), f32)");
        eprintln!(
            "{:<40} {:>4} {:>18} {:>9} {:>12} {:>10}",
            "device", "op", "m x n x k", "tile", "us/call", "GFLOP/s"
        );
        for dev in &devices {
            for (variant, m, n, k) in bench::matmul_shapes(batches.first().copied().unwrap_or(64), &square) {
                let timings = match dev {
                    Some(ctx) => {
                        let flop = 2.0 * (m * n * k) as f64;
                        if ctx.is_software() && flop > 2e10 {
                            log::info!("{}: skipping {m}x{n}x{k} on a software adapter", ctx.name());
                            continue;
                        }
                        tiles
                            .iter()
                            .map(|&tile| gpu_matmul(ctx, variant, (m, n, k), tile, a.seconds))
                            .collect::<Result<Vec<_>>>()?
                    }
                    None => vec![bench::cpu_matmul(variant, m, n, k, a.seconds)],
                };
                for t in timings {
                    let tile = t.tile.unwrap_or("-");
                    eprintln!(
                        "{:<40} {:>4} {:>18} {:>9} {:>12.1} {:>10.1}",
                        t.device,
                        t.variant,
                        format!("{m}x{n}x{k}"),
                        tile,
                        t.seconds_per_call * 1e6,
                        t.gflops
                    );
                    emit(serde_json::to_value(&t)?)?;
                }
            }
        }
    }
    Ok(())
}
