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

pub mod metrics;

use std::future::Future;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::infer::{input, predictions, Prediction, Predictor};
pub use metrics::Metrics;

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
    /// Largest request body, bytes; past that, 413.
    pub max_body_bytes: usize,
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
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_batch: 64,
            max_wait: Duration::from_micros(500),
            queue: 1024,
            max_body_bytes: 4 << 20,
            top_k: 3,
            idle_spin: Duration::ZERO,
            inline: false,
        }
    }
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid server configuration: {0}")]
    Config(String),
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the inference thread panicked")]
    WorkerPanicked,
}

/// One request's rows on their way to the inference thread.
struct Job {
    features: Vec<f32>,
    rows: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

/// The sending end of the job queue: to the inference thread, or to the
/// inline batch task.
#[derive(Clone)]
enum JobQueue {
    Thread(SyncSender<Job>),
    Inline(tokio::sync::mpsc::Sender<Job>),
}

/// Why a job was not queued.
enum QueueRefusal {
    Full,
    Closed,
}

impl JobQueue {
    fn try_send(&self, job: Job) -> Result<(), QueueRefusal> {
        match self {
            JobQueue::Thread(q) => q.try_send(job).map_err(|e| match e {
                TrySendError::Full(_) => QueueRefusal::Full,
                TrySendError::Disconnected(_) => QueueRefusal::Closed,
            }),
            JobQueue::Inline(q) => q.try_send(job).map_err(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => QueueRefusal::Full,
                tokio::sync::mpsc::error::TrySendError::Closed(_) => QueueRefusal::Closed,
            }),
        }
    }
}

#[derive(Clone)]
struct AppState {
    queue: JobQueue,
    metrics: Arc<Metrics>,
    inputs: usize,
    classes: usize,
    input_shape: Arc<Vec<usize>>,
    predictor: Arc<str>,
    top_k: usize,
    queue_bound: usize,
}

/// The JSON request body, `{"inputs": [[...], ...]}`, parsed straight into
/// one flat buffer of features with room for a row reserved before each
/// row: a `Vec<Vec<f32>>` grows one allocation per row from nothing, and
/// parsing was a quarter of the server's time per request.
struct FlatRequest {
    features: Vec<f32>,
    rows: usize,
    /// The first row whose length is not `inputs`: (row, length).
    first_bad: Option<(usize, usize)>,
}

impl FlatRequest {
    fn parse(body: &[u8], inputs: usize) -> serde_json::Result<Self> {
        use serde::de::Deserializer as _;
        let mut de = serde_json::Deserializer::from_slice(body);
        let req = de.deserialize_map(flat::Request { inputs })?;
        de.end()?;
        Ok(req)
    }
}

/// The serde visitors of [`FlatRequest`].
mod flat {
    use std::fmt;

    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;

    use super::FlatRequest;

    #[derive(Deserialize)]
    #[serde(field_identifier, rename_all = "lowercase")]
    enum Field {
        Inputs,
    }

    /// The top-level object: `inputs` and nothing else.
    pub(super) struct Request {
        pub(super) inputs: usize,
    }

    impl<'de> Visitor<'de> for Request {
        type Value = FlatRequest;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object with `inputs`")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FlatRequest, A::Error> {
            let mut req = None;
            while let Some(Field::Inputs) = map.next_key()? {
                if req.is_some() {
                    return Err(de::Error::duplicate_field("inputs"));
                }
                req = Some(map.next_value_seed(Rows { inputs: self.inputs })?);
            }
            req.ok_or_else(|| de::Error::missing_field("inputs"))
        }
    }

    /// `inputs`: rows of numbers, appended to one buffer.
    struct Rows {
        inputs: usize,
    }

    impl<'de> DeserializeSeed<'de> for Rows {
        type Value = FlatRequest;

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<FlatRequest, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Rows {
        type Value = FlatRequest;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of rows")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FlatRequest, A::Error> {
            let mut req = FlatRequest {
                features: Vec::new(),
                rows: 0,
                first_bad: None,
            };
            loop {
                req.features.reserve(self.inputs);
                let Some(len) = seq.next_element_seed(Row(&mut req.features))? else {
                    break;
                };
                if len != self.inputs && req.first_bad.is_none() {
                    req.first_bad = Some((req.rows, len));
                }
                req.rows += 1;
            }
            Ok(req)
        }
    }

    /// One row: its numbers appended to the buffer; the value is how many.
    struct Row<'a>(&'a mut Vec<f32>);

    impl<'de> DeserializeSeed<'de> for Row<'_> {
        type Value = usize;

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Row<'_> {
        type Value = usize;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of numbers")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
            let start = self.0.len();
            while let Some(v) = seq.next_element::<f32>()? {
                self.0.push(v);
            }
            Ok(self.0.len() - start)
        }
    }
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
    if config.max_batch == 0 || config.queue == 0 || config.top_k == 0 {
        return Err(ServeError::Config(format!(
            "the largest batch ({}), the queue length ({}) and top-k ({}) must each be at least 1",
            config.max_batch, config.queue, config.top_k
        )));
    }
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
        top_k: config.top_k,
        queue_bound: config.queue,
    };
    let app = router(state, config.max_body_bytes);
    // The router owns the only queue sender; when graceful shutdown has
    // drained every connection it is dropped, and the inference thread (or
    // task), having answered everything queued, sees the queue close and
    // exits.
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
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

/// What runs the forward passes.
enum Worker {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/predict", post(predict))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn healthz(State(st): State<AppState>) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "predictor": &*st.predictor,
        "inputs": st.inputs,
        "classes": st.classes,
        "input_shape": &*st.input_shape,
    }))
    .into_response()
}

async fn metrics_text(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        st.metrics.render(),
    )
        .into_response()
}

async fn predict(State(st): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
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

async fn predict_inner(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<PredictResponse, Failure> {
    let body = body.map_err(|r| (r.status(), r.body_text()))?;
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
    Ok(PredictResponse {
        predictions: predictions(&probs, st.classes, st.top_k),
    })
}

/// How [`batch_loop`] gathers batches (see [`ServeConfig`]).
#[derive(Clone, Copy)]
struct BatchLimits {
    max_batch: usize,
    max_wait: Duration,
    idle_spin: Duration,
}

/// The next job: polled for up to `spin`, then waited for. `None` when the
/// queue has closed.
fn next_job(rx: &Receiver<Job>, spin: Duration) -> Option<Job> {
    if !spin.is_zero() {
        let t0 = Instant::now();
        let mut polls = 0u32;
        loop {
            match rx.try_recv() {
                Ok(j) => return Some(j),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(32) && t0.elapsed() >= spin {
                break;
            }
            std::hint::spin_loop();
        }
    }
    rx.recv().ok()
}

/// The inference thread: gather jobs into batches and run them until the
/// queue closes.
fn batch_loop(predictor: Box<dyn Predictor>, rx: Receiver<Job>, limits: BatchLimits, metrics: &Metrics) {
    let BatchLimits {
        max_batch,
        max_wait,
        idle_spin,
    } = limits;
    let mut batch = Batch::new(predictor, max_batch);
    let mut held: Option<Job> = None;
    let take = |j: Job| {
        metrics.queue_add(-1);
        j
    };
    // Rows of the previous batch: a nearly full one means requests arrive
    // faster than batches run, and waiting for more pays off.
    let mut last_rows = 0;
    loop {
        let first = match held.take() {
            Some(j) => j,
            None => match next_job(&rx, idle_spin) {
                Some(j) => take(j),
                None => return,
            },
        };
        let deadline = first.enqueued + max_wait;
        let saturated = 2 * last_rows >= max_batch;
        let mut rows = first.rows;
        batch.jobs.push(first);
        while rows < max_batch {
            let next = match rx.try_recv() {
                Ok(j) => take(j),
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    // Nothing queued: run now unless the server is
                    // saturated, and then wait only while requests keep
                    // coming (each at most a quarter of `max_wait` apart).
                    let now = Instant::now();
                    if !saturated || now >= deadline {
                        break;
                    }
                    match rx.recv_timeout((deadline - now).min(max_wait / 4)) {
                        Ok(j) => take(j),
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            if rows + next.rows > max_batch {
                held = Some(next);
                break;
            }
            rows += next.rows;
            batch.jobs.push(next);
        }
        last_rows = rows;
        batch.run(metrics);
    }
}

/// The predictor and the jobs of the batch being gathered, with scratch
/// space for their rows, shared by both batchers.
struct Batch {
    predictor: Box<dyn Predictor>,
    jobs: Vec<Job>,
    features: Vec<f32>,
    out: Vec<f32>,
}

impl Batch {
    fn new(predictor: Box<dyn Predictor>, max_batch: usize) -> Self {
        Batch {
            features: Vec::with_capacity(max_batch * predictor.inputs()),
            out: Vec::with_capacity(max_batch * predictor.classes()),
            jobs: Vec::with_capacity(max_batch),
            predictor,
        }
    }

    /// Run the gathered jobs in one forward pass and answer each with its
    /// rows; leaves no jobs.
    fn run(&mut self, metrics: &Metrics) {
        let classes = self.predictor.classes();
        // Clients that went away need no answer.
        self.jobs.retain(|j| !j.reply.is_closed());
        let rows: usize = self.jobs.iter().map(|j| j.rows).sum();
        if rows == 0 {
            return;
        }
        self.features.clear();
        for j in &self.jobs {
            self.features.extend_from_slice(&j.features);
        }
        self.out.resize(rows * classes, 0.0);
        let result = self.predictor.probabilities_into(&self.features, &mut self.out);
        metrics.batch(rows);
        let mut at = 0;
        for j in self.jobs.drain(..) {
            let answer = match &result {
                Ok(()) => Ok(self.out[at * classes..(at + j.rows) * classes].to_vec()),
                Err(e) => Err(e.to_string()),
            };
            at += j.rows;
            // A client that left meanwhile drops its receiver; nothing to do.
            let _ = j.reply.send(answer);
        }
    }
}

/// The inline batcher (see [`ServeConfig::inline`]): a task that takes the
/// oldest job, adds whatever else is queued up to `max_batch` rows, runs
/// the batch on the runtime's thread and answers, until the queue closes.
async fn batch_task(
    predictor: Box<dyn Predictor>,
    mut rx: tokio::sync::mpsc::Receiver<Job>,
    max_batch: usize,
    metrics: Arc<Metrics>,
) {
    let mut batch = Batch::new(predictor, max_batch);
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        metrics.queue_add(-1);
        let mut rows = first.rows;
        batch.jobs.push(first);
        while rows < max_batch {
            let Ok(next) = rx.try_recv() else { break };
            if rows + next.rows > max_batch {
                held = Some(next);
                break;
            }
            metrics.queue_add(-1);
            rows += next.rows;
            batch.jobs.push(next);
        }
        batch.run(&metrics);
        // Let the connections answer and read more requests before the
        // next batch.
        tokio::task::yield_now().await;
    }
}
