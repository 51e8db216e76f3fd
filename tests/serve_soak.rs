//! A bounded soak of the HTTP server on loopback: 64 clients at once for
//! a few seconds (`WGTRAIN_SOAK_SECS`, default 4), each sending a seeded
//! mix of good requests and bad ones — malformed JSON, bodies over the
//! limit, headers and bodies that stop arriving, connections abandoned
//! halfway. Every good request must get the in-process prediction bit for
//! bit, every bad one its refusal, the resident memory must stay within a
//! bound, and `/metrics` must count each kind of refusal exactly (an
//! abandoned body as 499, a header that never completes as a header
//! timeout).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{Read, Write};
use std::net::TcpStream;

use wgtrain::data::{Normalize, Preprocess};
use wgtrain::infer::{CpuPredictor, Predictor};
use wgtrain::model::Mlp;
use wgtrain::serve::{serve, ServeConfig};

const DIM: usize = 784;
const CLIENTS: usize = 64;
const PATIENCE: Duration = Duration::from_millis(400);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Good,
    Malformed,
    Oversized,
    SlowHeader,
    SlowBody,
    Abandoned,
}

impl Kind {
    fn pick(rng: &mut ChaCha8Rng) -> Kind {
        match rng.random_range(0..100) {
            0..70 => Kind::Good,
            70..82 => Kind::Malformed,
            82..88 => Kind::Oversized,
            88..92 => Kind::SlowHeader,
            92..96 => Kind::SlowBody,
            _ => Kind::Abandoned,
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    sent: [u64; 6],
    good_failed: u64,
    bad_misanswered: u64,
    problems: Vec<String>,
}

fn model() -> Mlp {
    let p = Preprocess {
        kind: Normalize::Scale,
        scale: 1.0 / 255.0,
        offset: 0.0,
    };
    Mlp::new(&[DIM, 64, 10], 11, p, vec![28, 28]).unwrap()
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn request(body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: soak\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

/// Write `bytes`, then read the answer until the server closes; the
/// status, and the body. `None`: closed without an answer.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    // The server may close before it has read everything sent.
    let _ = s.write_all(bytes);
    let mut resp = Vec::new();
    if let Err(e) = s.read_to_end(&mut resp) {
        if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut {
            return Some((0, b"no answer within 20 s".to_vec()));
        }
    }
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, resp[split + 4..].to_vec()))
}

/// One client's loop (a thread of its own, with blocking I/O).
fn client(addr: SocketAddr, seed: u64, until: Instant, m: Arc<Mlp>) -> Tally {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut local = CpuPredictor::new(&m, 4);
    let mut t = Tally::default();
    while Instant::now() < until {
        let kind = Kind::pick(&mut rng);
        t.sent[kind as usize] += 1;
        match kind {
            Kind::Good => {
                let n = rng.random_range(1..=4);
                let raw: Vec<f32> = (0..n * DIM).map(|_| rng.random_range(0..=255u8) as f32).collect();
                let inputs: Vec<&[f32]> = raw.chunks(DIM).collect();
                let body = serde_json::to_vec(&serde_json::json!({ "inputs": inputs })).unwrap();
                let r = exchange(addr, &request(&body));
                let ok = match &r {
                    Some((200, b)) => {
                        let v: serde_json::Value = serde_json::from_slice(b).unwrap_or_default();
                        (0..n).all(|i| {
                            let want = local.probabilities(&raw[i * DIM..(i + 1) * DIM]).unwrap();
                            let got: Vec<f32> = v["predictions"][i]["probabilities"]
                                .as_array()
                                .map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect())
                                .unwrap_or_default();
                            got == want
                        })
                    }
                    _ => false,
                };
                if !ok {
                    t.good_failed += 1;
                    if t.problems.len() < 3 {
                        t.problems.push(format!(
                            "good request: {:?}",
                            r.map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
                        ));
                    }
                }
            }
            Kind::Malformed => {
                let r = exchange(addr, &request(b"{\"inputs\": [[1, 2,, 3]}"));
                if r.as_ref().map(|x| x.0) != Some(400) {
                    t.bad_misanswered += 1;
                }
            }
            Kind::Oversized => {
                let body = vec![b' '; 80_000];
                let r = exchange(addr, &request(&body));
                if r.as_ref().map(|x| x.0) != Some(413) {
                    t.bad_misanswered += 1;
                }
            }
            Kind::SlowHeader => {
                let r = exchange(addr, b"POST /v1/predict HTTP/1.1\r\nHost: so");
                if r.as_ref().is_some_and(|x| x.0 != 408) {
                    t.bad_misanswered += 1;
                }
            }
            Kind::SlowBody => {
                let mut v = request(&vec![b'1'; 2000]);
                v.truncate(v.len() - 1000);
                let r = exchange(addr, &v);
                if r.as_ref().map(|x| x.0) != Some(408) {
                    t.bad_misanswered += 1;
                }
            }
            Kind::Abandoned => {
                let mut v = request(&vec![b'1'; 2000]);
                v.truncate(v.len() - 1000);
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = s.write_all(&v);
                    // Dropped with the body half sent.
                }
            }
        }
    }
    t
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l[name.len()..].trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_hostile_clients() {
    let secs: f64 = std::env::var("WGTRAIN_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let m = Arc::new(model());
    let config = ServeConfig {
        body_timeout: PATIENCE,
        header_timeout: PATIENCE,
        max_body_bytes: 64 << 10,
        max_connections: 4 * CLIENTS,
        ..ServeConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Box::new(CpuPredictor::new(&m, 64)),
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    // Warm up (allocator arenas, first connections), then measure memory.
    let mw = m.clone();
    let warm =
        tokio::task::spawn_blocking(move || client(addr, 1_000, Instant::now() + Duration::from_millis(300), mw))
            .await
            .unwrap();
    assert_eq!(warm.good_failed, 0, "{:?}", warm.problems);
    let before = resident_kib();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let m = m.clone();
            std::thread::spawn(move || client(addr, i as u64, until, m))
        })
        .collect();
    let totals =
        tokio::task::spawn_blocking(move || threads.into_iter().map(|t| t.join().unwrap()).collect::<Vec<_>>())
            .await
            .unwrap();
    let mut total = Tally::default();
    for t in totals {
        for k in 0..6 {
            total.sent[k] += t.sent[k];
        }
        total.good_failed += t.good_failed;
        total.bad_misanswered += t.bad_misanswered;
        total.problems.extend(t.problems);
    }
    for k in 0..6 {
        total.sent[k] += warm.sent[k];
    }
    // Let the abandoned and slow connections of the last moments time out.
    tokio::time::sleep(PATIENCE * 3).await;
    let after = resident_kib();
    let text = tokio::task::spawn_blocking(move || {
        exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap()
    .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
    .unwrap_or_default();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the server drains and stops")
        .unwrap()
        .unwrap();

    let [good, malformed, oversized, slow_header, slow_body, abandoned] = total.sent;
    let all: u64 = total.sent.iter().sum();
    eprintln!(
        "soak: {secs} s, {CLIENTS} clients, {all} requests ({good} good, {malformed} malformed, {oversized} over the \
         body limit, {slow_header} slow headers, {slow_body} slow bodies, {abandoned} abandoned; {:.1}% bad); good \
         requests failed: {}; bad ones misanswered: {}; resident memory {before} KiB before, {after} KiB after",
        100.0 * (all - good) as f64 / all as f64,
        total.good_failed,
        total.bad_misanswered
    );
    assert_eq!(total.good_failed, 0, "{:?}", total.problems);
    assert_eq!(total.bad_misanswered, 0);
    assert!(good > 100 && all - good > 30, "too little traffic: {all}");
    let status = |code: u16| metric(&text, &format!("wgtrain_requests_total{{status=\"{code}\"}}"));
    assert_eq!(status(200), good, "{text}");
    assert_eq!(status(400), malformed, "{text}");
    assert_eq!(status(413), oversized, "{text}");
    assert_eq!(status(408), slow_body, "{text}");
    assert_eq!(status(499), abandoned, "{text}");
    assert_eq!(metric(&text, "wgtrain_header_timeouts_total"), slow_header, "{text}");
    assert_eq!(metric(&text, "wgtrain_connections_refused_total"), 0, "{text}");
    // The server's buffers are bounded by its limits, not by the traffic.
    assert!(
        after < before + 64 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
}
