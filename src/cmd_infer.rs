//! The `predict` and `serve` commands: their arguments (the doc comments
//! are the `--help` text) and the code that runs them.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use wgtrain::device::{open_predictor, DeviceChoice};
use wgtrain::infer::input::{self, CsvInputOptions};
use wgtrain::infer::{predictions, ClassProbability, DEFAULT_SPIN};
use wgtrain::model::AnyModel;
use wgtrain::serve::ServeConfig;

/// Rows per forward pass of `predict` (and the buffers it allocates).
const PREDICT_BATCH: usize = 256;

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The model file written by `wgtrain train --save` or `wgtrain
    /// compress` (int8 models run the int8 kernels).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
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
    probabilities: &'a [f32],
    top_k: &'a [ClassProbability],
}

/// Run `wgtrain predict`.
pub fn predict(a: PredictArgs) -> Result<()> {
    if a.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    wgtrain::cpu::set_threads(a.threads);
    let model = AnyModel::load(&a.model).with_context(|| format!("cannot load model {}", a.model.display()))?;
    let mut predictor = open_predictor(&a.device, &model, PREDICT_BATCH, wgtrain::cpu::threads(), DEFAULT_SPIN)?;
    let shape = predictor.input_shape().to_vec();
    let csv = CsvInputOptions { drop_col: a.label_col };
    let classes = predictor.classes();
    let mut stdout = std::io::stdout().lock();
    for path in &a.inputs {
        let inputs = input::load_file(path, predictor.inputs(), &shape, csv)?;
        let probs = predictor.probabilities(&inputs.features)?;
        for (name, p) in inputs.names.iter().zip(predictions(&probs, classes, a.top_k)) {
            if a.json {
                let line = PredictLine {
                    input: name,
                    class: p.class,
                    probabilities: &p.probabilities,
                    top_k: &p.top_k,
                };
                serde_json::to_writer(&mut stdout, &line)?;
                writeln!(stdout)?;
            } else {
                let top: Vec<String> = p
                    .top_k
                    .iter()
                    .map(|c| format!("{} ({:.4})", c.class, c.probability))
                    .collect();
                writeln!(stdout, "{name}: {}", top.join("  "))?;
            }
        }
    }
    stdout.flush()?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The model file written by `wgtrain train --save` or `wgtrain
    /// compress` (int8 models run the int8 kernels).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    addr: SocketAddr,
    /// Most rows in one forward pass of the micro-batcher.
    #[arg(long, default_value_t = 64, value_name = "ROWS")]
    max_batch: usize,
    /// Longest a request waits for others to share its batch, microseconds;
    /// only when the server is saturated (the previous batch was at least
    /// half full) and while requests keep arriving (0: never wait).
    #[arg(long, default_value_t = 500, value_name = "US")]
    max_wait_us: u64,
    /// Requests that may wait for the inference thread; past that the
    /// server answers 503 at once.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    queue: usize,
    /// Largest request body in bytes; past that the server answers 413.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    max_body_bytes: usize,
    /// Classes listed in each prediction's `top_k`.
    #[arg(long, default_value_t = 3, value_name = "K")]
    top_k: usize,
    /// Threads for HTTP (0: one per core but one, which the inference
    /// thread needs; at least one).
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// Threads one forward pass is split over: the thread that runs it and
    /// N - 1 helpers (0: one per core). Default: one per core with the
    /// inline batcher, whose passes alternate with HTTP; 1 with an
    /// inference thread, leaving the other cores to HTTP, which costs more
    /// than the forward pass of a small batch.
    #[arg(long, value_name = "N")]
    infer_threads: Option<usize>,
    /// How long the inference thread (and its helpers) poll for the next
    /// batch before they sleep, microseconds.
    /// Polling pays only when a core is free for it; on 2 cores shared
    /// with HTTP it slows the server down.
    #[arg(long, default_value_t = 0, value_name = "US")]
    spin_us: u64,
    /// auto (a hardware GPU if there is one, else the CPU), cpu, gpu (any
    /// adapter, software ones included), or part of an adapter's name. On a
    /// GPU each micro-batch is one submission.
    #[arg(long, default_value = "auto", value_name = "auto|cpu|gpu|NAME")]
    device: DeviceChoice,
    /// Where forward passes run: `thread`, an inference thread of their own
    /// fed through a queue (micro-batches wait up to --max-wait-us); `inline`,
    /// on the HTTP thread between requests (one HTTP thread; a batch is what
    /// arrived during the previous one). `auto`: inline when HTTP gets one
    /// thread (machines with 2 cores or fewer) and the model runs on the
    /// CPU, else thread.
    #[arg(long, default_value = "auto", value_name = "auto|thread|inline")]
    batcher: Batcher,
}

/// `--batcher`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Batcher {
    Auto,
    Thread,
    Inline,
}

/// Run `wgtrain serve` until SIGINT or SIGTERM, then drain and exit.
pub fn serve(a: ServeArgs) -> Result<()> {
    wgtrain::cpu::set_threads(a.threads);
    let model = AnyModel::load(&a.model).with_context(|| format!("cannot load model {}", a.model.display()))?;
    let sizes = match &model {
        AnyModel::F32(m) => m.sizes(),
        AnyModel::Compressed(m) => m.sizes(),
    };
    let http_threads = match a.threads {
        0 => wgtrain::cpu::threads().saturating_sub(1).max(1),
        n => n,
    };
    // Inline unless told otherwise when HTTP has a single thread; whether
    // the model runs on a GPU is known once the predictor exists.
    let maybe_inline = match a.batcher {
        Batcher::Inline => true,
        Batcher::Thread => false,
        Batcher::Auto => http_threads == 1,
    };
    let infer_threads = match a.infer_threads {
        Some(0) => wgtrain::cpu::threads(),
        Some(n) => n,
        None if maybe_inline => wgtrain::cpu::threads(),
        None => 1,
    };
    let predictor = open_predictor(
        &a.device,
        &model,
        a.max_batch.max(1),
        infer_threads,
        Duration::from_micros(a.spin_us),
    )?;
    log::info!("inference on {}", predictor.name());
    let config = ServeConfig {
        max_batch: a.max_batch,
        max_wait: Duration::from_micros(a.max_wait_us),
        queue: a.queue,
        max_body_bytes: a.max_body_bytes,
        top_k: a.top_k,
        idle_spin: Duration::from_micros(a.spin_us),
        inline: false,
    };
    let inline = match a.batcher {
        Batcher::Auto => maybe_inline && !predictor.waits_on_device(),
        _ => maybe_inline,
    };
    if inline && http_threads > 1 {
        log::warn!("--batcher inline runs HTTP on one thread; --threads {http_threads} is ignored");
    }
    let config = ServeConfig { inline, ..config };
    log::info!(
        "forward passes {}",
        if inline {
            "inline on the HTTP thread"
        } else {
            "on an inference thread"
        }
    );
    // Inline, HTTP and inference take turns on one thread: a runtime of
    // one thread whose woken tasks queue behind the ready ones, so requests
    // that arrive during a batch are read before the next batch starts.
    let rt = if inline {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(http_threads)
            .enable_all()
            .build()
    };
    let rt = rt.context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.addr)
            .await
            .with_context(|| format!("cannot listen on {}", a.addr))?;
        let local = listener.local_addr()?;
        log::info!(
            "serving {} ({}) on http://{local} with {}: POST /v1/predict, GET /healthz, GET /metrics",
            a.model.display(),
            sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("-"),
            predictor.name()
        );
        wgtrain::serve::serve(listener, predictor, config, shutdown_signal()).await?;
        log::info!("drained; stopped");
        Ok(())
    })
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            log::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                log::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    log::info!("shutdown signal received: no new connections; draining in-flight requests");
}
