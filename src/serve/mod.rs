//! The HTTP prediction server: axum on tokio in front of one inference
//! thread that gathers concurrent requests into micro-batches.
//!
//! A request is parsed and checked on the tokio side, then handed to the
//! inference thread through a bounded queue. When the queue is full the
//! request is answered 503 at once instead of waiting without bound. The
//! inference thread takes the oldest request, gathers more until the batch
//! holds `max_batch` rows or the queue is empty, runs one forward pass and
//! sends each request its rows. It waits for more requests to join a batch
//! only when the server is saturated (the previous batch was at least half
//! full), and then only while they keep arriving, for at most `max_wait`
//! after the oldest: below saturation a wait only adds latency, since the
//! next batch starts as soon as this one ends anyway. Because the predictor
//! computes every row the same way in any batch (see
//! [`crate::infer::kernels`]), an answer does not depend on what it was
//! batched with: it equals the in-process prediction bit for bit.
//!
//! The queue and the batch loop are plain threads and a `std` channel:
//! `recv_timeout` waits with microsecond precision, where tokio's timers
//! tick in milliseconds.
//!
//! Routes: `POST /v1/predict` (JSON `{"inputs": [[...], ...]}`, or an
//! `image/png` / `image/jpeg` body), `GET /healthz`, `GET /metrics`.
//!
//! Limits against slow, large and many clients: a request's body must
//! arrive within [`ServeConfig::body_timeout`] (408 otherwise) and is
//! counted against [`ServeConfig::max_body_bytes`] as it arrives (413);
//! [`serve`] also bounds each request header's time and size and the open
//! connections (see `conn.rs`). With [`ServeConfig::token`] every route
//! but `/healthz` needs `Authorization: Bearer <token>` (401 otherwise;
//! compared in constant time).

mod auth;
mod batch;
mod conn;
pub mod metrics;
mod request;
mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::infer::{input, predictions, Prediction, Predictor};
use batch::{batch_loop, batch_task, BatchLimits, Job, JobQueue, QueueRefusal};
pub use metrics::Metrics;
use request::FlatRequest;
pub use tls::TlsConfig;

/// How the server batches and bounds its work.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Most rows in one forward pass (a single larger request runs alone).
    pub max_batch: usize,
    /// Longest the oldest request in a batch waits for others to join it,
    /// when the server is saturated (see the module docs). Zero: run
    /// whatever is queued as soon as the inference thread is free.
    pub max_wait: Duration,
    /// Requests that may wait for the inference thread; past that, 503.
    pub queue: usize,
    /// Largest request body, bytes, counted as it arrives; past that, 413.
    pub max_body_bytes: usize,
    /// Longest a request's body may take to arrive once its header has;
    /// past that, 408 and the connection closes.
    pub body_timeout: Duration,
    /// Longest a request's header may take to arrive (and an idle
    /// keep-alive connection may wait for the next one); past that the
    /// connection is dropped. Applies in [`serve`] (an application that
    /// embeds [`router`] sets its own).
    pub header_timeout: Duration,
    /// Largest request header, bytes; past that, 431. Applies in [`serve`].
    pub max_header_bytes: usize,
    /// Most connections open at once; one more is closed as soon as it is
    /// accepted (counted in `/metrics`). Applies in [`serve`].
    pub max_connections: usize,
    /// The bearer token every route but `/healthz` requires (`None`: no
    /// authorization).
    pub token: Option<String>,
    /// Serve HTTPS with this certificate and key ([`TlsConfig::from_pem_files`]);
    /// `None`: plain HTTP. Applies in [`serve`] (an application that
    /// embeds [`router`] terminates TLS itself).
    pub tls: Option<TlsConfig>,
    /// Classes listed in each prediction's `top_k`.
    pub top_k: usize,
    /// How long the idle inference thread polls the queue before it
    /// sleeps: under steady load the next request comes within
    /// microseconds, and polling saves the sleep and the wake-up.
    pub idle_spin: Duration,
    /// Run the forward passes as a task of the async runtime instead of on
    /// an inference thread of their own. Meant for a single-threaded
    /// runtime on a machine with few cores: HTTP and inference then take
    /// turns on one thread, with no hand-over between threads and no
    /// thread competing for a core. A batch is whatever arrived while the
    /// previous one ran (`max_wait` does not apply).
    pub inline: bool,
    /// The model in words, reported by `GET /healthz` as `model` (e.g.
    /// `ensemble of 3 (f32 784-500-10, ...)`); empty: not reported.
    pub model: String,
    /// The model's class names, one per class (empty: none): each
    /// prediction gives its class's `name` beside `class`, and `GET
    /// /healthz` lists them as `class_names`.
    pub class_names: Vec<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_batch: 64,
            max_wait: Duration::from_micros(500),
            queue: 1024,
            max_body_bytes: 4 << 20,
            body_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 << 10,
            max_connections: 512,
            token: None,
            tls: None,
            top_k: 3,
            idle_spin: Duration::ZERO,
            inline: false,
            model: String::new(),
            class_names: Vec::new(),
        }
    }
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting of [`ServeConfig`] is out of range; the message names it.
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// Binding, accepting or serving a connection, or starting the
    /// inference thread, failed.
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS certificate or key cannot be used; the message names the
    /// file.
    #[error("TLS: {0}")]
    Tls(String),
    /// The inference thread (or task) panicked; requests still queued were
    /// not answered.
    #[error("the inference thread panicked")]
    WorkerPanicked,
}

#[derive(Clone)]
struct AppState {
    queue: JobQueue,
    metrics: Arc<Metrics>,
    inputs: usize,
    classes: usize,
    input_shape: Arc<Vec<usize>>,
    predictor: Arc<str>,
    model: Arc<str>,
    class_names: Arc<Vec<String>>,
    top_k: usize,
    queue_bound: usize,
    max_body_bytes: usize,
    body_timeout: Duration,
}

/// The JSON answer.
#[derive(Serialize)]
struct PredictResponse {
    predictions: Vec<Prediction>,
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

type Failure = (StatusCode, String);

fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

/// Serve `predictor` on `listener` until `shutdown` completes, then stop
/// accepting, answer every request already received, and return.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    predictor: Box<dyn Predictor>,
    config: ServeConfig,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (app, worker, metrics) = start(predictor, &config)?;
    // The router owns the only queue sender; when graceful shutdown has
    // drained every connection it is dropped, and the inference thread (or
    // task), having answered everything queued, sees the queue close and
    // exits.
    let limits = conn::ConnLimits {
        header_timeout: config.header_timeout,
        max_header_bytes: config.max_header_bytes,
        max_connections: config.max_connections,
        tls: config.tls.clone(),
    };
    let served = conn::serve_connections(listener, app, limits, metrics, shutdown).await;
    let joined = match worker {
        Worker::Thread(thread) => tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|_| ServeError::WorkerPanicked)?
            .map_err(|_| ServeError::WorkerPanicked),
        Worker::Task(task) => task.await.map_err(|_| ServeError::WorkerPanicked),
    };
    served?;
    joined
}

/// The routes of [`serve`] (`POST /v1/predict`, `GET /healthz`,
/// `GET /metrics`) as an [`axum::Router`], to merge into or nest under an
/// existing application (`Router::nest("/wgtrain", router)`), with the
/// same batching, limits and answers as `wgtrain serve`.
///
/// The forward passes run on an inference thread started here (or, with
/// [`ServeConfig::inline`], on a task of the current tokio runtime, so
/// the call must then be made inside one). That thread answers everything
/// queued and exits once the router and all its clones are dropped.
///
/// # Errors
///
/// [`ServeError::Config`] when a setting is out of range (see [`serve`]);
/// [`ServeError::Io`] when the inference thread cannot be started.
pub fn router(predictor: Box<dyn Predictor>, config: &ServeConfig) -> Result<Router, ServeError> {
    let (app, _worker, _metrics) = start(predictor, config)?;
    Ok(app)
}

/// Check `config`, start the inference thread (or task) and build the
/// router that feeds it.
fn start(predictor: Box<dyn Predictor>, config: &ServeConfig) -> Result<(Router, Worker, Arc<Metrics>), ServeError> {
    check(config)?;
    let metrics = Arc::new(Metrics::default());
    let limits = BatchLimits {
        max_batch: config.max_batch,
        max_wait: config.max_wait,
        idle_spin: config.idle_spin,
    };
    let inputs = predictor.inputs();
    let classes = predictor.classes();
    let input_shape = Arc::new(predictor.input_shape().to_vec());
    let predictor_name: Arc<str> = predictor.name().into();
    let (queue, worker) = if config.inline {
        let (tx, rx) = tokio::sync::mpsc::channel::<Job>(config.queue);
        let task = tokio::spawn(batch_task(predictor, rx, config.max_batch, metrics.clone()));
        (JobQueue::Inline(tx), Worker::Task(task))
    } else {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(config.queue);
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("wgtrain-infer".into())
            .spawn(move || batch_loop(predictor, rx, limits, &m))?;
        (JobQueue::Thread(tx), Worker::Thread(thread))
    };
    let state = AppState {
        queue,
        metrics: metrics.clone(),
        inputs,
        classes,
        input_shape,
        predictor: predictor_name,
        model: config.model.as_str().into(),
        class_names: Arc::new(config.class_names.clone()),
        top_k: config.top_k,
        queue_bound: config.queue,
        max_body_bytes: config.max_body_bytes,
        body_timeout: config.body_timeout,
    };
    let token = config.token.as_deref().map(|t| auth::Token::new(t, metrics.clone()));
    Ok((routes(state, token), worker, metrics))
}

/// Refuse settings out of range, naming them.
fn check(config: &ServeConfig) -> Result<(), ServeError> {
    if config.max_batch == 0 || config.queue == 0 || config.top_k == 0 {
        return Err(ServeError::Config(format!(
            "the largest batch ({}), the queue length ({}) and top-k ({}) must each be at least 1",
            config.max_batch, config.queue, config.top_k
        )));
    }
    if config.max_connections == 0 {
        return Err(ServeError::Config("the connection limit must be at least 1".into()));
    }
    if config.body_timeout.is_zero() || config.header_timeout.is_zero() {
        return Err(ServeError::Config(format!(
            "the header and body timeouts ({:?}, {:?}) must be longer than zero",
            config.header_timeout, config.body_timeout
        )));
    }
    // hyper reads a header into a buffer of at least 8 KiB and keeps its
    // size within `max_header_bytes` beside that.
    if config.max_header_bytes < 1024 {
        return Err(ServeError::Config(format!(
            "the header size limit ({} bytes) must be at least 1024 bytes",
            config.max_header_bytes
        )));
    }
    if let Some(t) = &config.token {
        auth::check_token(t).map_err(ServeError::Config)?;
    }
    Ok(())
}

/// What runs the forward passes.
enum Worker {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

fn routes(state: AppState, token: Option<auth::Token>) -> Router {
    let guarded = Router::new()
        .route("/v1/predict", post(predict))
        .route("/metrics", get(metrics_text));
    let guarded = match token {
        Some(t) => guarded.route_layer(axum::middleware::from_fn_with_state(t, auth::require)),
        None => guarded,
    };
    guarded
        .route("/healthz", get(healthz))
        // The body is read by `read_body` with its own limit.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn healthz(State(st): State<AppState>) -> Response {
    let mut v = serde_json::json!({
        "status": "ok",
        "predictor": &*st.predictor,
        "inputs": st.inputs,
        "classes": st.classes,
        "input_shape": &*st.input_shape,
    });
    if !st.model.is_empty() {
        v["model"] = serde_json::Value::from(&*st.model);
    }
    if !st.class_names.is_empty() {
        v["class_names"] = serde_json::json!(&*st.class_names);
    }
    Json(v).into_response()
}

async fn metrics_text(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        st.metrics.render(),
    )
        .into_response()
}

async fn predict(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let t0 = Instant::now();
    let response = match predict_inner(&st, &headers, body).await {
        Ok(r) => Json(r).into_response(),
        Err((status, message)) => error_response(status, message),
    };
    st.metrics
        .request(response.status().as_u16(), t0.elapsed().as_secs_f64());
    response
}

/// Parse the body into raw rows: JSON, or one image.
fn parse_body(st: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(Vec<f32>, usize), Failure> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    match ctype.as_str() {
        "image/png" | "image/jpeg" | "image/jpg" => {
            let row = input::decode_image(body, &st.input_shape, "request body").map_err(|e| {
                let status = match e {
                    crate::error::InferError::Input { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                    _ => StatusCode::BAD_REQUEST,
                };
                (status, e.to_string())
            })?;
            Ok((row, 1))
        }
        "application/json" | "" => {
            let req = FlatRequest::parse(body, st.inputs)
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("malformed JSON request: {e}")))?;
            if req.rows == 0 {
                return Err((StatusCode::BAD_REQUEST, "`inputs` is empty".into()));
            }
            if let Some((i, len)) = req.first_bad {
                return Err((
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "inputs[{i}] has {len} values, but the model expects {} (input shape {:?})",
                        st.inputs, st.input_shape
                    ),
                ));
            }
            if let Some(at) = req.features.iter().position(|v| !v.is_finite()) {
                return Err((
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "inputs[{}][{}] is not a finite number",
                        at / st.inputs.max(1),
                        at % st.inputs.max(1)
                    ),
                ));
            }
            Ok((req.features, req.rows))
        }
        other => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type `{other}` is not supported; send application/json, image/png or image/jpeg"),
        )),
    }
}

/// The whole body of a request, within the size limit (counted as the
/// bytes arrive, and checked first against a declared Content-Length) and
/// the time limit.
async fn read_body(st: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, Failure> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {} bytes", st.max_body_bytes),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.max_body_bytes as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(st.body_timeout, axum::body::to_bytes(body, st.max_body_bytes)).await {
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {:.1} s",
                st.body_timeout.as_secs_f64()
            ),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.downcast_ref::<http_body_util::LengthLimitError>().is_some());
            if over {
                Err(too_large())
            } else {
                // The client went away (or broke the framing) halfway: 499,
                // nginx's "client closed request", which no client receives
                // but /metrics counts apart from requests that were bad.
                let closed = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
                Err((closed, format!("the request body ended early: {e}")))
            }
        }
    }
}

async fn predict_inner(st: &AppState, headers: &HeaderMap, body: Body) -> Result<PredictResponse, Failure> {
    let body = read_body(st, headers, body).await?;
    let (features, rows) = parse_body(st, headers, &body)?;
    let (reply, answer) = oneshot::channel();
    let job = Job {
        features,
        rows,
        enqueued: Instant::now(),
        reply,
    };
    st.metrics.queue_add(1);
    if let Err(e) = st.queue.try_send(job) {
        st.metrics.queue_add(-1);
        let message = match e {
            QueueRefusal::Full => format!(
                "server overloaded: {} requests are already waiting; retry later",
                st.queue_bound
            ),
            QueueRefusal::Closed => "server is shutting down".into(),
        };
        return Err((StatusCode::SERVICE_UNAVAILABLE, message));
    }
    let probs = answer
        .await
        .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "the inference thread stopped".into()))?
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let mut predictions = predictions(&probs, st.classes, st.top_k);
    for p in &mut predictions {
        p.name_classes(&st.class_names);
    }
    Ok(PredictResponse { predictions })
}
