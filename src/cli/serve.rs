//! `wgtrain serve`: predictions over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use wgtrain::device::{open_predictor, DeviceChoice};
use wgtrain::serve::ServeConfig;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The model file written by `wgtrain train --save`, `wgtrain
    /// compress` (int8 models run the int8 kernels) or `wgtrain ensemble`;
    /// several, comma-separated, answer as an ensemble (the mean of their
    /// probabilities; each member keeps its own preprocessing).
    #[arg(long, value_name = "FILE[,FILE...]", value_delimiter = ',', required = true)]
    model: Vec<PathBuf>,
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
    /// Largest request body in bytes, counted as it arrives; past that the
    /// server answers 413.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    max_body_bytes: usize,
    /// Seconds a request's body may take to arrive; past that, 408.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    body_timeout: f64,
    /// Seconds a request's header may take to arrive, and an idle
    /// keep-alive connection may wait for its next request; past that the
    /// connection is dropped (a client sending a byte a second is).
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    header_timeout: f64,
    /// Largest request header in bytes; past that, 431.
    #[arg(long, default_value_t = 16 << 10, value_name = "BYTES")]
    max_header_bytes: usize,
    /// Most connections open at once; more are closed on arrival (counted
    /// in /metrics as wgtrain_connections_refused_total). Keep it below
    /// the process's open-file limit (`ulimit -n`).
    #[arg(long, default_value_t = 512, value_name = "N")]
    max_connections: usize,
    /// A file holding the bearer token (its first line, at least 16
    /// printable characters, e.g. from `openssl rand -hex 32`): every
    /// route but /healthz then needs `Authorization: Bearer <token>`, and
    /// answers 401 without it.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM, the server's
    /// certificate first); needs --tls-key.
    #[arg(long, value_name = "FILE.pem", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE.pem", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Listen on an address other than loopback without --token-file:
    /// anyone who can reach the address may then use the server.
    #[arg(long)]
    insecure: bool,
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
pub(crate) fn run(a: ServeArgs) -> Result<()> {
    let token = match &a.token_file {
        Some(p) => Some(read_token(p)?),
        None => None,
    };
    if token.is_none() && !a.addr.ip().is_loopback() && !a.insecure {
        anyhow::bail!(
            "--addr {}: a server reachable from other machines needs --token-file FILE \
             (or --insecure to serve everyone who can reach it)",
            a.addr
        );
    }
    let seconds = |flag: &str, s: f64| -> Result<Duration> {
        Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| format!("{flag} {s}: give a positive number of seconds"))
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(wgtrain::serve::TlsConfig::from_pem_files(c, k).context("--tls-cert/--tls-key")?),
        _ => None,
    };
    let body_timeout = seconds("--body-timeout", a.body_timeout)?;
    let header_timeout = seconds("--header-timeout", a.header_timeout)?;
    let model = super::args::load_models(&a.model)?;
    let described = model.describe();
    let http_threads = match a.threads {
        0 => wgtrain::cpu::cores().saturating_sub(1).max(1),
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
        Some(0) => wgtrain::cpu::cores(),
        Some(n) => n,
        None if maybe_inline => wgtrain::cpu::cores(),
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
        body_timeout,
        header_timeout,
        max_header_bytes: a.max_header_bytes,
        max_connections: a.max_connections,
        token,
        tls,
        top_k: a.top_k,
        idle_spin: Duration::from_micros(a.spin_us),
        inline: false,
        model: described.clone(),
        class_names: model.class_names().to_vec(),
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
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        log::info!(
            "serving {} ({described}) on {scheme}://{local} with {}: POST /v1/predict, GET /healthz, GET /metrics",
            super::args::show_paths(&a.model),
            predictor.name()
        );
        wgtrain::serve::serve(listener, predictor, config, shutdown_signal()).await?;
        log::info!("drained; stopped");
        Ok(())
    })
}

/// The bearer token: the first line of `path`, without surrounding
/// whitespace.
fn read_token(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file {}: cannot read it as text", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        anyhow::bail!(
            "--token-file {}: the file is empty; put the token on its first line",
            path.display()
        );
    }
    Ok(token)
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
