//! `wgtrain bench`: epoch time, matrix-product throughput, per-kernel GPU
//! times and in-process inference figures on each device.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::args::{load_data, parse_list, DataArgs};
use wgtrain::backend::TrainSpec;
use wgtrain::data::{CsvOptions, DataSource, Normalize, Preprocess};
use wgtrain::device::DeviceChoice;
use wgtrain::model::Mlp;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Devices to measure, comma-separated (cpu, gpu, auto or part of an
    /// adapter name). Default: the CPU and the hardware GPU if there is one.
    #[arg(long, value_name = "LIST")]
    device: Option<String>,
    /// Batch sizes of the epoch benchmark, comma-separated.
    #[arg(long, default_value = "64,256", value_name = "LIST")]
    batch: String,
    /// Hidden layers of the epoch benchmark's models, comma-separated: one
    /// model per entry, each entry one hidden width (`128,500,1024`: three
    /// models of one hidden layer) or several joined by `x` or `-`
    /// (`500x500`: one model of two hidden layers of 500).
    #[arg(long, default_value = "500", value_name = "LIST")]
    hidden: String,
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
    /// Only the data-parallel benchmark: the --device list (default
    /// cpu,cpu) as replicas, time per step split into compute, host
    /// transfer (GPU readback and upload) and the host sum, and the bytes
    /// moved per step, for the first device alone (as one plain backend and
    /// as one replica) and for all of them; --max-steps steps (default 100)
    /// at each --batch, --threads threads per CPU replica.
    #[arg(long)]
    parallel: bool,
    /// A model file for the inference benchmark (plain or compressed;
    /// default a freshly initialised 784-500-10 MLP), or the hidden widths
    /// of one model for the epoch benchmark, comma-separated:
    /// `--model 4096,4096,4096` times training a 784-4096-4096-4096-10 MLP
    /// (37 million parameters; only the epoch benchmark unless another is
    /// asked for). Each epoch configuration first logs the memory it holds
    /// on its device.
    #[arg(long, value_name = "FILE|W,W,...")]
    model: Option<String>,
    /// Arithmetic of the epoch benchmark's training products, as `train
    /// --precision`: f32 or f16-mixed.
    #[arg(long, default_value = "f32", value_name = "f32|f16-mixed")]
    precision: String,
    /// Data for the epoch benchmark; default Fashion-MNIST when installed,
    /// else random images of the same shape.
    #[arg(long, value_name = "PATH")]
    data: Option<String>,
    /// CPU threads (0: one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// The epoch benchmark's optimizer: the same flags as `train`'s, so
    /// that a stateful optimizer's step cost can be set against SGD's.
    #[command(flatten)]
    optim: super::train::OptimArgs,
    /// Seconds spent timing each matmul shape.
    #[arg(long, default_value_t = 1.0, value_name = "S")]
    seconds: f64,
    /// GPU matmul tile variants to time at each shape, comma-separated
    /// (128x128, 64x64, 32x32, 16x16/k16, or all); default the one chosen
    /// for the shape, as training uses.
    #[arg(long, value_name = "LIST")]
    tile: Option<String>,
    /// Measure nothing: write a report of the RUNS (JSON lines saved from
    /// `wgtrain bench > run.jsonl`, one file per machine or device) to
    /// OUT: one self-contained .html file with inline SVG figures, or a
    /// .md file with its PNG figures beside it (report.md ->
    /// report-epoch-batch.png, ...). Tables of every kind of line; figures
    /// of epoch time against batch and against model size, matmul GFLOP/s
    /// against arithmetic intensity under the device's roofline (where its
    /// peaks are known, or given by --peak), and batch-1 latency
    /// percentiles per predictor.
    #[arg(long, value_name = "OUT", help_heading = "Reports")]
    report: Option<PathBuf>,
    /// Measure nothing: match the lines of the two RUNS A and B on their
    /// keys (kind, device, model, optimizer, batch, shape, tile, predictor)
    /// and give B/A of each figure and B's speed-up over A (above 1: B is
    /// better); a markdown table on stdout, or a table in the --report.
    #[arg(long, help_heading = "Reports")]
    compare: bool,
    /// The f32 peak GFLOP/s and memory GB/s of a device not in the built-in
    /// table (H200, H100, A100, RTX 4090), NAME being part of its adapter
    /// name as the lines spell it, e.g. --peak "RTX 3080=29770,760".
    /// Repeatable; the first match wins, before the built-in table.
    #[arg(long, value_name = "NAME=GFLOPS,GBPS", help_heading = "Reports")]
    peak: Vec<String>,
    /// Also write the report's tables into this markdown file (README.md),
    /// between the lines <!-- bench-report:begin --> and
    /// <!-- bench-report:end -->, which must be there already.
    #[arg(long, value_name = "FILE.md", requires = "report", help_heading = "Reports")]
    readme: Option<PathBuf>,
    /// A TrueType font for the figures' labels [default: DejaVu Sans or
    /// Liberation Sans from the system's font folders].
    #[arg(long, value_name = "FILE.ttf", help_heading = "Reports")]
    font: Option<PathBuf>,
    /// The runs of --report and --compare: FILE.jsonl, labelled by its file
    /// name less the extension, or NAME=FILE.jsonl.
    #[arg(value_name = "RUNS", help_heading = "Reports")]
    runs: Vec<String>,
}

/// In-process inference figures of a model (or a fresh 784-500-10 MLP) in
/// f32 and int8 on each device (`None`: the CPU, on `threads` threads), printed as a table on
/// stderr.
fn bench_inference(
    model: Option<&Path>,
    devices: &[Option<Arc<wgtrain::gpu::GpuContext>>],
    threads: usize,
) -> Result<Vec<wgtrain::bench::InferenceBench>> {
    use wgtrain::bench::{bench_inference, BenchOptions};
    use wgtrain::infer::{CpuPredictor, Int8Predictor, Predictor, DEFAULT_SPIN};
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
            AnyModel::Ensemble(_) => anyhow::bail!(
                "{} is an ensemble; bench measures one model (give one member's file)",
                p.display()
            ),
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
    // Each predictor with its device, spelt as the epoch and matmul lines spell it.
    let mut predictors: Vec<(Box<dyn Predictor>, String, &BenchOptions)> = Vec::new();
    for dev in devices {
        match dev {
            None => {
                let cpu = wgtrain::cpu::device_name(threads);
                predictors.push((
                    Box::new(CpuPredictor::with_threads(
                        &f32_model,
                        opts.batch,
                        threads,
                        DEFAULT_SPIN,
                    )),
                    cpu.clone(),
                    &opts,
                ));
                if let Some(p) = Int8Predictor::with_threads(&int8_model, threads, DEFAULT_SPIN) {
                    predictors.push((Box::new(p), cpu, &opts));
                }
            }
            Some(ctx) => {
                let o = if ctx.is_software() { &software } else { &opts };
                let f = wgtrain::gpu::GpuPredictor::new(ctx.clone(), &f32_model, opts.batch)?;
                predictors.push((Box::new(f), ctx.label(), o));
                let q = wgtrain::gpu::GpuPredictor::from_compressed(ctx.clone(), &int8_model, opts.batch)?;
                predictors.push((Box::new(q), ctx.label(), o));
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
        "{:<40} {:>14} {:>14} {:>14} {:>16}",
        "predictor", "batch-1 p50 us", "batch-1 p90 us", "batch-1 p99 us", "rows/s at 256"
    );
    let mut out = Vec::new();
    for (p, device, o) in predictors.iter_mut() {
        let r = bench_inference(p.as_mut(), device, o)?;
        eprintln!(
            "{:<40} {:>14.1} {:>14.1} {:>14.1} {:>16.0}",
            r.predictor, r.batch1_p50_us, r.batch1_p90_us, r.batch1_p99_us, r.rows_per_second
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
        device: ctx.label(),
        variant,
        tile: Some(used.name()),
        m,
        n,
        k,
        seconds_per_call: secs,
        gflops: 2.0 * (m * n * k) as f64 / secs / 1e9,
    })
}

/// What `--model` names: a model file, or one model's hidden widths.
enum ModelArg {
    File(PathBuf),
    Widths(Vec<usize>),
}

/// `--model`: an existing file is a file; a list of numbers (`4096,4096`)
/// is the hidden widths of one model; anything else a file to load (whose
/// absence the loader reports).
fn model_arg(s: Option<&str>) -> Result<Option<ModelArg>> {
    let Some(s) = s else { return Ok(None) };
    let path = PathBuf::from(s);
    let numeric = !s.trim().is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == ',' || c == ' ');
    if path.exists() || !numeric {
        return Ok(Some(ModelArg::File(path)));
    }
    let widths = s
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.parse::<usize>().ok().filter(|&v| v > 0).with_context(|| {
                format!("--model `{s}`: `{w}` is not a hidden width (give widths such as 4096,4096 or a model file)")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if widths.is_empty() {
        bail!("--model `{s}`: give hidden widths such as 4096,4096 or a model file");
    }
    Ok(Some(ModelArg::Widths(widths)))
}

/// The `--hidden` list: the hidden widths of each model.
fn parse_hidden(s: &str) -> Result<Vec<Vec<usize>>> {
    let models: Vec<Vec<usize>> = s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|entry| {
            entry
                .split(['x', 'X', '-'])
                .map(|w| {
                    w.trim().parse::<usize>().ok().filter(|&v| v > 0).with_context(|| {
                        format!("--hidden `{s}`: `{entry}` is not a hidden width or widths such as 500 or 500x500")
                    })
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    if models.is_empty() {
        bail!("--hidden `{s}`: give at least one hidden width, e.g. 500");
    }
    Ok(models)
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

/// `wgtrain bench --report` and `--compare`: every argument checked
/// before any file is read.
fn report(a: &BenchArgs) -> Result<()> {
    use wgtrain::bench::report::{self, markdown, Format, Peak, Peaks, Report, Run};
    if let Some(out) = &a.report {
        if Format::of(out).is_none() {
            bail!("--report {}: give a name ending in .html or .md", out.display());
        }
        super::args::check_writable_as("--report", out)?;
    }
    if let Some(readme) = &a.readme {
        if !readme.is_file() {
            bail!("--readme {}: no such file", readme.display());
        }
    }
    let peaks = Peaks {
        user: a
            .peak
            .iter()
            .map(|p| Peak::parse(p).context("--peak"))
            .collect::<Result<_>>()?,
    };
    match (a.compare, a.runs.len()) {
        (_, 0) => bail!("--report/--compare: give the JSON-lines files of the runs (wgtrain bench > run.jsonl)"),
        (true, n) if n != 2 => bail!("--compare: give exactly two runs, A and B (got {n})"),
        _ => {}
    }
    let specs: Vec<(String, PathBuf)> = a.runs.iter().map(|r| report::split_label(r)).collect();
    for (_, path) in &specs {
        if !path.is_file() {
            bail!("{}: no such file (a run of --report/--compare)", path.display());
        }
    }
    let runs = specs
        .iter()
        .map(|(label, path)| Run::read(label, path).map_err(anyhow::Error::new))
        .collect::<Result<Vec<_>>>()?;
    let rep = Report::new(runs, peaks, a.compare);
    let Some(out) = &a.report else {
        // --compare alone: the ratios on stdout.
        if let Some(c) = &rep.comparison {
            print!("{}", markdown::table(&c.table(), 2));
        }
        return Ok(());
    };
    super::plot::register_font(a.font.as_deref())?;
    let written = report::write(&rep, out).with_context(|| format!("--report {}", out.display()))?;
    for p in &written {
        log::info!("wrote {}", p.display());
    }
    if let Some(readme) = &a.readme {
        let text = std::fs::read_to_string(readme)
            .with_context(|| format!("--readme {}: cannot read it", readme.display()))?;
        let command = format!(
            "wgtrain bench --report {} --readme {} {}",
            out.display(),
            readme.display(),
            a.runs.join(" ")
        );
        let new = markdown::replace_section(&text, &markdown::section(&rep, &command)).with_context(|| {
            format!(
                "--readme {}: no {} ... {} lines to put the tables between",
                readme.display(),
                markdown::BEGIN,
                markdown::END
            )
        })?;
        std::fs::write(readme, new).with_context(|| format!("--readme {}: cannot write it", readme.display()))?;
        log::info!("wrote the tables into {}", readme.display());
    }
    Ok(())
}

/// Run `wgtrain bench`.
pub(crate) fn run(a: BenchArgs) -> Result<()> {
    use wgtrain::bench;
    if a.report.is_some() || a.compare {
        return report(&a);
    }
    if !a.runs.is_empty() {
        bail!(
            "bench: {} given without --report or --compare; run files are only read by those",
            a.runs.join(" ")
        );
    }
    let model = model_arg(a.model.as_deref())?;
    let (run_epoch, run_matmul, run_inference, run_kernels) = match (a.epoch, a.matmul, a.inference, a.kernels) {
        (false, false, false, false) if matches!(model, Some(ModelArg::Widths(_))) => (true, false, false, false),
        (false, false, false, false) => (true, true, false, true),
        x => x,
    };
    let batches = parse_list("--batch", &a.batch, "batch size")?;
    let hidden = match &model {
        Some(ModelArg::Widths(w)) => vec![w.clone()],
        _ => parse_hidden(&a.hidden)?,
    };
    let precision: wgtrain::backend::Precision = a.precision.parse().map_err(super::flagged)?;
    if a.parallel {
        return bench_parallel(&a, &batches);
    }
    let square = parse_list("--square", &a.square, "matrix size")?;
    let tiles = parse_tiles(a.tile.as_deref())?;
    let choices: Vec<DeviceChoice> = match &a.device {
        Some(list) => list
            .split(',')
            .map(|d| {
                DeviceChoice::parse(d.trim())
                    .map_err(anyhow::Error::new)
                    .context("--device")
            })
            .collect::<Result<_>>()?,
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
        let data = bench_data(&a)?;
        let optimizer = super::train::optimizer_of(&a.optim)?;
        // Adam's usual rate; SGD's that the seed recipe uses.
        let lr = if matches!(optimizer, wgtrain::optim::Optimizer::Sgd(_)) {
            0.1
        } else {
            0.001
        };
        eprintln!("\nepoch time, {} lr {lr}", optimizer.name());
        eprintln!(
            "{:<40} {:>14} {:>6} {:>10} {:>12} {:>12} {:>12}",
            "device", "model", "batch", "steps", "first (s)", "steady (s)", "examples/s"
        );
        for dev in &devices {
            for widths in &hidden {
                let mut sizes = vec![data.dim()];
                sizes.extend(widths);
                sizes.push(data.classes);
                for &batch in &batches {
                    let model = Mlp::new(&sizes, 0, Preprocess::fit(Normalize::Scale, &data), data.shape.clone())?;
                    let mut spec = TrainSpec::new(batch, optimizer);
                    spec.precision = precision;
                    let mut backend: Box<dyn wgtrain::Backend> = match dev {
                        Some(ctx) => Box::new(wgtrain::gpu::GpuBackend::new(ctx.clone(), model, data.clone(), spec)?),
                        None => Box::new(wgtrain::cpu::CpuBackend::with_threads(
                            model,
                            data.clone(),
                            spec,
                            a.threads,
                        )?),
                    };
                    log::info!("{}", backend.memory().used());
                    let t = bench::epoch_time(backend.as_mut(), &sizes, data.train.len(), a.epochs, a.max_steps, lr)?;
                    eprintln!(
                        "{:<40} {:>14} {:>6} {:>10} {:>12.3} {:>12.3} {:>12.0}",
                        t.device,
                        wgtrain::backend::join_sizes(&t.sizes),
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
                    let mut v = serde_json::to_value(&t)?;
                    if let Some(o) = v.as_object_mut() {
                        o.insert("optimizer".into(), optimizer.name().into());
                        o.insert("precision".into(), precision.name().into());
                    }
                    emit(v)?;
                }
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
                    "device": ctx.label(),
                    "batch": batch,
                    "kernels": times,
                }))?;
            }
        }
    }
    if run_inference {
        let file = match &model {
            Some(ModelArg::File(p)) => Some(p.as_path()),
            Some(ModelArg::Widths(_)) => bail!(
                "--model {}: the inference benchmark takes a model file; hidden widths are for the epoch benchmark",
                a.model.as_deref().unwrap_or_default()
            ),
            None => None,
        };
        for r in bench_inference(file, &devices, a.threads)? {
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
                    None => vec![bench::cpu_matmul(variant, m, n, k, a.seconds, a.threads)],
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

/// The epoch benchmarks' data: `--data`, else Fashion-MNIST when installed,
/// else random images of its shape.
fn bench_data(a: &BenchArgs) -> Result<Arc<wgtrain::data::Dataset>> {
    Ok(Arc::new(match &a.data {
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
                wgtrain::bench::synthetic_mnist_like(0)
            }
        },
    }))
}

/// `wgtrain bench --parallel`.
fn bench_parallel(a: &BenchArgs, batches: &[usize]) -> Result<()> {
    use wgtrain::device::{list_entries, open_gpu, open_replicas};
    let list = a.device.as_deref().unwrap_or("cpu,cpu");
    let choice = DeviceChoice::parse(list)
        .map_err(anyhow::Error::new)
        .context("--device")?;
    let entries = list_entries(&choice)?;
    let data = bench_data(a)?;
    let optimizer = super::train::optimizer_of(&a.optim)?;
    let lr = if matches!(optimizer, wgtrain::optim::Optimizer::Sgd(_)) {
        0.1
    } else {
        0.001
    };
    let steps = a.max_steps.unwrap_or(100);
    // Every entry but the CPU is a GPU (auto only when it finds one).
    let on_bus = |e: &[DeviceChoice]| -> Result<usize> {
        let mut n = 0;
        for c in e {
            n += usize::from(match c {
                DeviceChoice::Cpu => false,
                DeviceChoice::Auto => open_gpu(c)?.is_some(),
                _ => true,
            });
        }
        Ok(n)
    };
    let cpus = entries.iter().filter(|e| **e == DeviceChoice::Cpu).count();
    let cpu_threads = match a.threads {
        0 => (wgtrain::cpu::cores() / cpus.max(1)).max(1),
        t => t,
    };
    eprintln!(
        "\ndata-parallel step, {}-500-{} MLP, {} lr {lr}, {steps} steps",
        data.dim(),
        data.classes,
        optimizer.name()
    );
    eprintln!(
        "{:<48} {:>6} {:>9} {:>11} {:>12} {:>10} {:>10} {:>12}",
        "devices", "batch", "step (ms)", "compute", "transfer", "reduce", "bus MB", "examples/s"
    );
    let mut out = std::io::stdout();
    for &batch in batches {
        let model = Mlp::new(
            &[data.dim(), 500, data.classes],
            0,
            Preprocess::fit(Normalize::Scale, &data),
            data.shape.clone(),
        )?;
        let spec = TrainSpec::new(batch, optimizer);
        // The first device alone, as a plain backend: the CPU with every
        // thread the replicas use together.
        let first = &entries[0];
        let mut plain: Box<dyn wgtrain::Backend> = match open_gpu(first)? {
            Some(ctx) => Box::new(wgtrain::gpu::GpuBackend::new(ctx, model.clone(), data.clone(), spec)?),
            None => Box::new(wgtrain::cpu::CpuBackend::with_threads(
                model.clone(),
                data.clone(),
                spec,
                cpu_threads * cpus.max(1),
            )?),
        };
        let t = wgtrain::bench::epoch_time(plain.as_mut(), &model.sizes(), data.train.len(), 3, Some(steps), lr)?;
        let plain_ms = t.steady_epoch_s * 1e3 / t.steps_per_epoch as f64;
        eprintln!(
            "{:<48} {:>6} {:>9.3} {:>11} {:>12} {:>10} {:>10} {:>12.0}",
            format!("{} (plain)", t.device),
            batch,
            plain_ms,
            "-",
            "-",
            "-",
            "0",
            t.examples_per_s
        );
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "bench": "parallel",
                "device": t.device,
                "plain": true,
                "replicas": 1,
                "batch": batch,
                "step_ms": plain_ms,
                "examples_per_s": t.examples_per_s,
            })
        )?;
        let configs: Vec<&[DeviceChoice]> = if entries.len() > 1 {
            vec![&entries[..1], &entries[..]]
        } else {
            vec![&entries[..]]
        };
        for e in configs {
            let replicas = open_replicas(e, cpu_threads, model.clone(), data.clone(), spec)?;
            let weights = vec![1.0; e.len()];
            let r = wgtrain::bench::bench_parallel(replicas, weights, on_bus(e)?, data.train.len(), 5, steps, lr)?;
            eprintln!(
                "{:<48} {:>6} {:>9.3} {:>11.3} {:>12.3} {:>10.3} {:>10.2} {:>12.0}",
                r.device,
                r.batch,
                r.step_ms,
                r.compute_ms,
                r.transfer_ms,
                r.reduce_ms,
                r.bus_bytes as f64 / 1e6,
                r.examples_per_s
            );
            writeln!(out, "{}", serde_json::to_value(&r)?)?;
        }
    }
    Ok(())
}
