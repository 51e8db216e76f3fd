//! The HTTP server in process on 127.0.0.1, port 0: good requests answer
//! exactly what the in-process predictor answers, every kind of bad request
//! gets a 4xx with a JSON message, a full queue answers 503, and shutdown
//! drains a request in flight. Overload and drain are made deterministic
//! with a predictor that blocks until the test releases it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use wgtrain::data::{Normalize, Preprocess};
use wgtrain::error::InferError;
use wgtrain::infer::{CpuPredictor, Predictor};
use wgtrain::model::Mlp;
use wgtrain::serve::{serve, ServeConfig, ServeError};

const DIM: usize = 784;
/// Bound on every wait, so a broken server fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(20);

fn model() -> Mlp {
    let p = Preprocess {
        kind: Normalize::Scale,
        scale: 1.0 / 255.0,
        offset: 0.0,
    };
    Mlp::new(&[DIM, 32, 10], 5, p, vec![28, 28]).unwrap()
}

fn rows(n: usize) -> Vec<f32> {
    (0..n * DIM).map(|i| ((i * 131 + i / 7) % 256) as f32).collect()
}

/// A predictor that reports each batch it starts and waits for the test to
/// release it.
struct Gated {
    inner: CpuPredictor,
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

impl Predictor for Gated {
    fn name(&self) -> String {
        "gated".into()
    }
    fn input_shape(&self) -> &[usize] {
        self.inner.input_shape()
    }
    fn inputs(&self) -> usize {
        self.inner.inputs()
    }
    fn classes(&self) -> usize {
        self.inner.classes()
    }
    fn probabilities_into(&mut self, raw: &[f32], out: &mut [f32]) -> Result<(), InferError> {
        let _ = self.entered.send(());
        self.release
            .recv_timeout(LIMIT)
            .map_err(|_| InferError::Failed("test never released the gate".into()))?;
        self.inner.probabilities_into(raw, out)
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

async fn start(predictor: Box<dyn Predictor>, config: ServeConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, predictor, config, async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

impl Server {
    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), made
/// with blocking std I/O on a blocking-pool thread.
async fn http(addr: SocketAddr, method: &str, path: &str, ctype: Option<&str>, body: &[u8]) -> Reply {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(c) = ctype {
        req += &format!("Content-Type: {c}\r\n");
    }
    req += "\r\n";
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.set_write_timeout(Some(LIMIT)).unwrap();
        s.write_all(&bytes).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("a header");
        let head = String::from_utf8_lossy(&resp[..split]).into_owned();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
            "{head}"
        );
        Reply {
            status,
            body: resp[split + 4..].to_vec(),
        }
    })
    .await
    .unwrap()
}

fn json_rows(raw: &[f32]) -> Vec<u8> {
    let inputs: Vec<&[f32]> = raw.chunks(DIM).collect();
    serde_json::to_vec(&serde_json::json!({ "inputs": inputs })).unwrap()
}

fn probabilities(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

async fn wait_for_metric(addr: SocketAddr, line: &str) {
    for _ in 0..400 {
        if http(addr, "GET", "/metrics", None, b"").await.text().contains(line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("metrics never showed `{line}`");
}

/// Wait (off the async threads) for the gated predictor to start a batch.
async fn entered(rx: mpsc::Receiver<()>) -> mpsc::Receiver<()> {
    tokio::task::spawn_blocking(move || {
        rx.recv_timeout(LIMIT).expect("a batch started");
        rx
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_in_process_predictions() {
    answers_equal_in_process_predictions_with(false).await;
}

/// The same with the inline batcher: forward passes as a task of the
/// runtime instead of on an inference thread, on a single-threaded runtime
/// as `wgtrain serve` runs it.
#[tokio::test(flavor = "current_thread")]
async fn answers_equal_in_process_predictions_inline() {
    answers_equal_in_process_predictions_with(true).await;
}

async fn answers_equal_in_process_predictions_with(inline: bool) {
    let m = model();
    let config = ServeConfig {
        inline,
        ..ServeConfig::default()
    };
    let server = start(Box::new(CpuPredictor::new(&m, 64)), config).await;
    let raw = rows(3);
    let mut local = CpuPredictor::new(&m, 1);

    let r = http(
        server.addr,
        "POST",
        "/v1/predict",
        Some("application/json"),
        &json_rows(&raw),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let got = probabilities(&v);
    assert_eq!(got.len(), 3);
    for (i, g) in got.iter().enumerate() {
        // Bit for bit: f32 survives JSON's shortest round-trip printing.
        let want = local.probabilities(&raw[i * DIM..(i + 1) * DIM]).unwrap();
        assert_eq!(g, &want, "row {i}");
        let p = &v["predictions"][i];
        let top = p["top_k"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(p["class"], top[0]["class"]);
        let best = wgtrain::cpu::kernels::argmax(&want).0;
        assert_eq!(p["class"].as_u64().unwrap() as usize, best);
    }

    // An image body: the same answer as the same pixels as a JSON row.
    let px: Vec<u8> = raw[DIM..2 * DIM].iter().map(|&v| v as u8).collect();
    let mut png = Vec::new();
    image::GrayImage::from_raw(28, 28, px)
        .unwrap()
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let r = http(server.addr, "POST", "/v1/predict", Some("image/png"), &png).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(probabilities(&r.json())[0], got[1]);

    // Many concurrent single-row requests, batched together, still answer
    // each row exactly as alone.
    let many = rows(40);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let body = json_rows(&many[i * DIM..(i + 1) * DIM]);
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            http(addr, "POST", "/v1/predict", None, &body).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let want = local.probabilities(&many[i * DIM..(i + 1) * DIM]).unwrap();
        assert_eq!(probabilities(&r.json())[0], want, "request {i}");
    }

    let h = http(server.addr, "GET", "/healthz", None, b"").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(h.json()["inputs"], DIM);

    let m = http(server.addr, "GET", "/metrics", None, b"").await;
    assert_eq!(m.status, 200);
    let t = m.text();
    for want in [
        "# TYPE wgtrain_requests_total counter",
        "wgtrain_requests_total{status=\"200\"} 42",
        "# TYPE wgtrain_request_duration_seconds histogram",
        "wgtrain_request_duration_seconds_bucket{le=\"+Inf\"} 42",
        "# TYPE wgtrain_batch_size histogram",
        "# TYPE wgtrain_queue_depth gauge",
        "wgtrain_queue_depth 0",
        "wgtrain_predicted_rows_total 44",
    ] {
        assert!(t.contains(want), "missing `{want}` in\n{t}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_with_a_message() {
    let config = ServeConfig {
        max_body_bytes: 2048,
        ..ServeConfig::default()
    };
    let server = start(Box::new(CpuPredictor::new(&model(), 8)), config).await;
    let a = server.addr;
    let mut overflow = vec!["0"; DIM];
    overflow[5] = "1e39";
    let overflow = format!("{{\"inputs\": [[{}]]}}", overflow.join(","));
    let cases: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
        (
            Some("application/json"),
            b"{\"inputs\": [[1, 2,".to_vec(),
            400,
            "malformed JSON",
        ),
        (
            Some("application/json"),
            b"{\"inputs\": [[1]], \"inputs\": [[2]]}".to_vec(),
            400,
            "duplicate field `inputs`",
        ),
        (
            Some("application/json"),
            b"[[1, 2]]".to_vec(),
            400,
            "expected an object with `inputs`",
        ),
        (
            Some("application/json"),
            b"{\"inputs\": [[1, \"2\"]]}".to_vec(),
            400,
            "malformed JSON",
        ),
        // Too large for an f32.
        (
            Some("application/json"),
            overflow.into_bytes(),
            422,
            "inputs[0][5] is not a finite number",
        ),
        (
            Some("application/json"),
            b"{\"rows\": []}".to_vec(),
            400,
            "unknown field `rows`, expected `inputs`",
        ),
        (Some("application/json"), b"{\"inputs\": []}".to_vec(), 400, "empty"),
        (
            Some("application/json"),
            b"{\"inputs\": [[1, 2, 3]]}".to_vec(),
            422,
            "inputs[0] has 3 values, but the model expects 784",
        ),
        (
            Some("image/png"),
            b"this is not a picture".to_vec(),
            400,
            "cannot decode",
        ),
        (Some("text/plain"), b"hello".to_vec(), 415, "not supported"),
        // 4 KiB against a 2 KiB limit.
        (Some("application/json"), vec![b' '; 4096], 413, "larger than"),
    ];
    for (ctype, body, status, msg) in cases {
        let r = http(a, "POST", "/v1/predict", ctype, &body).await;
        assert_eq!(r.status, status, "{ctype:?}: {}", r.text());
        let e = r.json()["error"].as_str().unwrap().to_string();
        assert!(e.contains(msg), "{ctype:?}: `{e}` lacks `{msg}`");
    }
    // Still serving (a row of zeros fits in 2 KiB).
    let zeros = format!("{{\"inputs\": [[{}]]}}", vec!["0"; DIM].join(","));
    let ok = http(a, "POST", "/v1/predict", None, zeros.as_bytes()).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let t = http(a, "GET", "/metrics", None, b"").await.text();
    for code in ["400\"} 7", "413\"} 1", "415\"} 1", "422\"} 2", "200\"} 1"] {
        assert!(
            t.contains(&format!("wgtrain_requests_total{{status=\"{code}")),
            "{code}: {t}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_at_once() {
    full_queue_answers_503_at_once_with(false).await;
}

/// The same with the inline batcher: forward passes as a task of the
/// runtime instead of on an inference thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_at_once_inline() {
    full_queue_answers_503_at_once_with(true).await;
}

async fn full_queue_answers_503_at_once_with(inline: bool) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let gated = Gated {
        inner: CpuPredictor::new(&model(), 1),
        entered: entered_tx,
        release: release_rx,
    };
    let config = ServeConfig {
        max_batch: 1,
        max_wait: Duration::ZERO,
        queue: 1,
        inline,
        ..ServeConfig::default()
    };
    let server = start(Box::new(gated), config).await;
    let a = server.addr;
    let body = json_rows(&rows(1));
    // A is taken by the inference thread, which blocks in the predictor...
    let (b1, b2) = (body.clone(), body.clone());
    let first = tokio::spawn(async move { http(a, "POST", "/v1/predict", None, &b1).await });
    let entered_rx = entered(entered_rx).await;
    // ...B fills the one-place queue...
    let second = tokio::spawn(async move { http(a, "POST", "/v1/predict", None, &b2).await });
    wait_for_metric(a, "wgtrain_queue_depth 1\n").await;
    // ...so C is refused at once.
    let t0 = std::time::Instant::now();
    let c = http(a, "POST", "/v1/predict", None, &body).await;
    assert_eq!(c.status, 503, "{}", c.text());
    assert!(c.json()["error"].as_str().unwrap().contains("overloaded"));
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Release both: A and B are answered.
    release_tx.send(()).unwrap();
    release_tx.send(()).unwrap();
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);
    drop(entered_rx);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_request_in_flight() {
    shutdown_drains_the_request_in_flight_with(false).await;
}

/// The same with the inline batcher: forward passes as a task of the
/// runtime instead of on an inference thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_request_in_flight_inline() {
    shutdown_drains_the_request_in_flight_with(true).await;
}

async fn shutdown_drains_the_request_in_flight_with(inline: bool) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let m = model();
    let gated = Gated {
        inner: CpuPredictor::new(&m, 4),
        entered: entered_tx,
        release: release_rx,
    };
    let config = ServeConfig {
        inline,
        ..ServeConfig::default()
    };
    let mut server = start(Box::new(gated), config).await;
    let a = server.addr;
    let raw = rows(1);
    let body = json_rows(&raw);
    let inflight = tokio::spawn(async move { http(a, "POST", "/v1/predict", None, &body).await });
    let _entered = entered(entered_rx).await;

    // Signal shutdown while the request is inside the predictor.
    server.stop.take().unwrap().send(()).unwrap();
    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..200 {
        if TcpStream::connect(a).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "still accepting after shutdown");
    assert!(!server.task.is_finished(), "stopped before draining");

    release_tx.send(()).unwrap();
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let want = CpuPredictor::new(&m, 1).probabilities(&raw).unwrap();
    assert_eq!(probabilities(&r.json())[0], want);
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ServeConfig {
        queue: 0,
        ..ServeConfig::default()
    };
    let e = serve(listener, Box::new(CpuPredictor::new(&model(), 1)), config, async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("the queue length (0)"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_int8_model_answers_like_its_in_process_engine() {
    let info = wgtrain::model::CompressionInfo {
        quantization: "int8".into(),
        ..Default::default()
    };
    let c = wgtrain::model::CompressedMlp::from_mlp(&model(), true, info);
    let predictor = wgtrain::infer::Int8Predictor::new(&c).unwrap();
    let server = start(Box::new(predictor), ServeConfig::default()).await;
    let n = 24;
    let raw = rows(n);
    let engine = c.int8_engine().unwrap();
    let mut want = vec![0.0; n * 10];
    engine.logits(&raw, n, &mut want);
    wgtrain::cpu::kernels::softmax_rows(&mut want, 10);

    // Concurrent single-row requests (batched together by the server) and
    // one request with every row: the engine's bits each time.
    let mut tasks = Vec::new();
    for i in 0..n {
        let body = json_rows(&raw[i * DIM..(i + 1) * DIM]);
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            http(addr, "POST", "/v1/predict", None, &body).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(probabilities(&r.json())[0], want[i * 10..(i + 1) * 10], "request {i}");
    }
    let r = http(server.addr, "POST", "/v1/predict", None, &json_rows(&raw)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(probabilities(&r.json()).concat(), want);
    let h = http(server.addr, "GET", "/healthz", None, b"").await;
    assert!(h.json()["predictor"].as_str().unwrap().contains("int8"));
    server.shutdown().await;
}

/// An ensemble answers with the mean of its members' probabilities, and
/// `/healthz` names it (the predictor and the model).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_answers_with_the_mean_of_its_members() {
    let other = Mlp::new(&[DIM, 16, 10], 9, Preprocess::identity(), vec![28, 28]).unwrap();
    let members: Vec<Box<dyn Predictor>> = vec![
        Box::new(CpuPredictor::new(&model(), 8)),
        Box::new(CpuPredictor::new(&other, 8)),
    ];
    let predictor = wgtrain::infer::ensemble::EnsemblePredictor::new(members).unwrap();
    let config = ServeConfig {
        model: "ensemble of 2 (f32 784-32-10, f32 784-16-10)".into(),
        ..ServeConfig::default()
    };
    let server = start(Box::new(predictor), config).await;
    let raw = rows(5);
    let a = CpuPredictor::new(&model(), 8).probabilities(&raw).unwrap();
    let b = CpuPredictor::new(&other, 8).probabilities(&raw).unwrap();
    let r = http(server.addr, "POST", "/v1/predict", None, &json_rows(&raw)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (i, g) in probabilities(&r.json()).concat().iter().enumerate() {
        let want = (a[i] + b[i]) / 2.0;
        assert!((g - want).abs() < 1e-6, "value {i}: {g} vs {want}");
    }
    let h = http(server.addr, "GET", "/healthz", None, b"").await;
    assert!(
        h.json()["predictor"].as_str().unwrap().starts_with("ensemble of 2"),
        "{}",
        h.text()
    );
    assert!(
        h.json()["model"].as_str().unwrap().starts_with("ensemble of 2 ("),
        "{}",
        h.text()
    );
    server.shutdown().await;
}

/// With class names, each prediction and each top-k entry gives the name
/// of its class beside the index, `/healthz` lists the names, and the
/// probabilities are those of the same model without names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_classes_answer_with_their_names() {
    let names: Vec<String> = (0..10).map(|i| format!("class {}", (b'a' + i) as char)).collect();
    let config = ServeConfig {
        class_names: names.clone(),
        top_k: 3,
        ..ServeConfig::default()
    };
    let server = start(Box::new(CpuPredictor::new(&model(), 8)), config).await;
    let raw = rows(4);
    let want = CpuPredictor::new(&model(), 8).probabilities(&raw).unwrap();
    let r = http(server.addr, "POST", "/v1/predict", None, &json_rows(&raw)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(probabilities(&v).concat(), want);
    for p in v["predictions"].as_array().unwrap() {
        let class = p["class"].as_u64().unwrap() as usize;
        // The name is looked up here independently: index `c` is `class <c-th letter>`.
        assert_eq!(p["name"], format!("class {}", (b'a' + class as u8) as char), "{p}");
        let top = p["top_k"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        for t in top {
            assert_eq!(
                t["name"].as_str().unwrap(),
                names[t["class"].as_u64().unwrap() as usize]
            );
        }
    }
    let h = http(server.addr, "GET", "/healthz", None, b"").await;
    assert_eq!(h.json()["class_names"], serde_json::json!(names), "{}", h.text());
    server.shutdown().await;

    // Without names the answers carry no `name` at all, as before.
    let server = start(Box::new(CpuPredictor::new(&model(), 8)), ServeConfig::default()).await;
    let r = http(server.addr, "POST", "/v1/predict", None, &json_rows(&raw)).await;
    let v = r.json();
    assert!(v["predictions"][0].get("name").is_none(), "{v}");
    assert!(v["predictions"][0]["top_k"][0].get("name").is_none(), "{v}");
    let h = http(server.addr, "GET", "/healthz", None, b"").await;
    assert!(h.json().get("class_names").is_none(), "{}", h.text());
    server.shutdown().await;
}

/// `serve::router` nested under a prefix of an application with a route of
/// its own: the application's route still answers, the prediction routes
/// answer under the prefix as the in-process predictor does (bit for bit),
/// and not at the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_nests_under_a_prefix_of_another_app() {
    let m = model();
    let routes = wgtrain::serve::router(Box::new(CpuPredictor::new(&m, 64)), &ServeConfig::default()).unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "the app" }))
        .nest("/wgtrain", routes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });

    let root = http(addr, "GET", "/", None, b"").await;
    assert_eq!((root.status, root.text().as_str()), (200, "the app"));
    let raw = rows(2);
    let r = http(
        addr,
        "POST",
        "/wgtrain/v1/predict",
        Some("application/json"),
        &json_rows(&raw),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = probabilities(&r.json());
    let mut local = CpuPredictor::new(&m, 1);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(
            g,
            &local.probabilities(&raw[i * DIM..(i + 1) * DIM]).unwrap(),
            "row {i}"
        );
    }
    assert_eq!(got.len(), 2);
    assert_eq!(http(addr, "GET", "/wgtrain/healthz", None, b"").await.status, 200);
    assert_eq!(
        http(addr, "POST", "/v1/predict", Some("application/json"), &json_rows(&raw))
            .await
            .status,
        404
    );

    let _ = stop.send(());
    tokio::time::timeout(LIMIT, task).await.unwrap().unwrap().unwrap();
}

/// Send `bytes` on a fresh connection and read until the server closes it;
/// `None` when it closed without an answer.
async fn raw_exchange(addr: SocketAddr, bytes: Vec<u8>) -> Option<Reply> {
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        // The server may close before it has read everything sent.
        let _ = s.write_all(&bytes);
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&resp[..split]).into_owned();
        Some(Reply {
            status: head.split(' ').nth(1)?.parse().ok()?,
            body: resp[split + 4..].to_vec(),
        })
    })
    .await
    .unwrap()
}

/// A request with extra header lines.
fn request_bytes(method: &str, path: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req += h;
        req += "\r\n";
    }
    req += "\r\n";
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_route_but_healthz() {
    let token = "0123456789abcdef0123456789abcdef";
    let config = ServeConfig {
        token: Some(token.into()),
        ..ServeConfig::default()
    };
    let m = model();
    let server = start(Box::new(CpuPredictor::new(&m, 8)), config).await;
    let a = server.addr;
    let body = json_rows(&rows(1));
    let good = format!("Authorization: Bearer {token}");
    let cases: [(&str, &str, Vec<String>, u16); 7] = [
        ("POST", "/v1/predict", vec![], 401),
        (
            "POST",
            "/v1/predict",
            vec![format!("Authorization: Bearer {}x", token)],
            401,
        ),
        (
            "POST",
            "/v1/predict",
            vec![format!("Authorization: Basic {token}")],
            401,
        ),
        ("GET", "/metrics", vec![], 401),
        ("GET", "/healthz", vec![], 200),
        ("POST", "/v1/predict", vec![good.clone()], 200),
        ("GET", "/metrics", vec![good.clone()], 200),
    ];
    for (method, path, headers, status) in cases {
        let b = if method == "POST" { &body[..] } else { b"" };
        let r = raw_exchange(a, request_bytes(method, path, &headers, b)).await.unwrap();
        assert_eq!(r.status, status, "{method} {path} {headers:?}: {}", r.text());
        if status == 401 {
            assert!(r.json()["error"].as_str().unwrap().contains("Bearer"), "{}", r.text());
        }
    }
    let t = raw_exchange(a, request_bytes("GET", "/metrics", &[good], b""))
        .await
        .unwrap()
        .text();
    assert!(t.contains("wgtrain_requests_total{status=\"401\"} 4"), "{t}");
    server.shutdown().await;

    // A short token is refused before anything is served.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ServeConfig {
        token: Some("short".into()),
        ..ServeConfig::default()
    };
    let e = serve(listener, Box::new(CpuPredictor::new(&m, 1)), config, async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 16"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let config = ServeConfig {
        body_timeout: Duration::from_millis(300),
        header_timeout: Duration::from_millis(300),
        ..ServeConfig::default()
    };
    let server = start(Box::new(CpuPredictor::new(&model(), 8)), config).await;
    let a = server.addr;
    let t0 = std::time::Instant::now();
    // A body that stops arriving: 408 with a message.
    let mut partial = request_bytes("POST", "/v1/predict", &[], &json_rows(&rows(1)));
    partial.truncate(partial.len() - 100);
    let r = raw_exchange(a, partial).await.expect("an answer");
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("did not arrive"));
    // A header that stops arriving: the connection is dropped.
    let r = raw_exchange(a, b"POST /v1/predict HTTP/1.1\r\nHost: te".to_vec()).await;
    assert!(r.is_none_or(|r| r.status == 408), "a reply to half a header");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    wait_for_metric(a, "wgtrain_header_timeouts_total 1").await;
    wait_for_metric(a, "wgtrain_requests_total{status=\"408\"} 1").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_bodies_are_refused() {
    let config = ServeConfig {
        max_header_bytes: 2048,
        max_body_bytes: 4096,
        ..ServeConfig::default()
    };
    let server = start(Box::new(CpuPredictor::new(&model(), 8)), config).await;
    let a = server.addr;
    let pad = format!("X-Pad: {}", "a".repeat(8192));
    let r = raw_exchange(a, request_bytes("GET", "/healthz", &[pad], b"")).await;
    assert!(r.is_none_or(|r| r.status == 431), "a large header was served");
    // A body longer than its declared length is cut at the limit as it
    // arrives: declared as chunked, with no length up front.
    let mut chunked =
        b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"800\r\n");
        chunked.extend_from_slice(&[b' '; 0x800]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = raw_exchange(a, chunked).await.expect("an answer");
    assert_eq!(r.status, 413, "{}", r.text());
    // Still serving.
    let r = http(a, "GET", "/healthz", None, b"").await;
    assert_eq!(r.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_and_counted() {
    let config = ServeConfig {
        max_connections: 2,
        header_timeout: Duration::from_secs(30),
        ..ServeConfig::default()
    };
    let server = start(Box::new(CpuPredictor::new(&model(), 8)), config).await;
    let a = server.addr;
    // Two idle connections take both slots.
    let idle1 = TcpStream::connect(a).await.unwrap();
    let idle2 = TcpStream::connect(a).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third is closed without an answer.
    let r = raw_exchange(a, request_bytes("GET", "/healthz", &[], b"")).await;
    assert!(r.is_none(), "served past the cap");
    drop((idle1, idle2));
    // Once they close, the slots are free again.
    let mut served = false;
    for _ in 0..200 {
        if raw_exchange(a, request_bytes("GET", "/healthz", &[], b""))
            .await
            .is_some()
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "slots never freed");
    let t = http(a, "GET", "/metrics", None, b"").await.text();
    assert!(!t.contains("wgtrain_connections_refused_total 0"), "{t}");
    server.shutdown().await;
}
