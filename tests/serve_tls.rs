//! HTTPS in the server: a self-signed certificate made for the test, a
//! client that trusts only it gets the same answers as over plain HTTP; a
//! plain-HTTP client on the TLS port gets nothing and is counted as a
//! failed handshake; certificate and key files that cannot be used are
//! refused naming the file.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use wgtrain::data::{Normalize, Preprocess};
use wgtrain::infer::{CpuPredictor, Predictor};
use wgtrain::model::Mlp;
use wgtrain::serve::{serve, ServeConfig, TlsConfig};

const DIM: usize = 784;

fn model() -> Mlp {
    let p = Preprocess {
        kind: Normalize::Scale,
        scale: 1.0 / 255.0,
        offset: 0.0,
    };
    Mlp::new(&[DIM, 16, 10], 2, p, vec![28, 28]).unwrap()
}

/// One request over TLS with a client trusting only `cert_pem`; the status
/// and the body.
fn https(addr: SocketAddr, cert_pem: &str, request: &[u8]) -> (u16, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request).unwrap();
    let mut resp = Vec::new();
    // The server closes with a close_notify after `Connection: close`.
    let _ = tls.read_to_end(&mut resp);
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("an answer");
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        resp[split + 4..].to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_answers_like_http_and_counts_failed_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let tls = TlsConfig::from_pem_files(&cert, &key).unwrap();

    let m = model();
    let config = ServeConfig {
        tls: Some(tls),
        header_timeout: Duration::from_millis(500),
        ..ServeConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Box::new(CpuPredictor::new(&m, 8)),
        config,
        async move {
            let _ = stopped.await;
        },
    ));

    let raw: Vec<f32> = (0..DIM).map(|i| (i * 37 % 256) as f32).collect();
    let body = serde_json::to_vec(&serde_json::json!({ "inputs": [raw.clone()] })).unwrap();
    let mut req = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let pem = cert_pem.clone();
    let (status, answer) = tokio::task::spawn_blocking(move || https(addr, &pem, &req))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let got: Vec<f32> = v["predictions"][0]["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let want = CpuPredictor::new(&m, 1).probabilities(&raw).unwrap();
    assert_eq!(got, want, "bit for bit, as over plain HTTP");

    // Plain HTTP on the TLS port: no HTTP answer, one failed handshake.
    let plain = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        resp
    })
    .await
    .unwrap();
    assert!(!plain.starts_with(b"HTTP/1.1 200"), "plain HTTP served on the TLS port");

    let pem = cert_pem.clone();
    let (_, metrics) = tokio::task::spawn_blocking(move || {
        https(
            addr,
            &pem,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(metrics.contains("wgtrain_tls_handshake_failures_total 1"), "{metrics}");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[test]
fn unusable_certificate_and_key_files_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let a = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("cert.pem"), a.cert.pem()).unwrap();
    std::fs::write(p("key.pem"), a.signing_key.serialize_pem()).unwrap();
    std::fs::write(p("other-key.pem"), b.signing_key.serialize_pem()).unwrap();
    std::fs::write(p("junk.pem"), "not a pem file\n").unwrap();
    let cases = [
        ("missing.pem", "key.pem", "missing.pem"),
        ("junk.pem", "key.pem", "no certificate"),
        ("cert.pem", "junk.pem", "no PEM private key"),
        ("cert.pem", "other-key.pem", "does not fit"),
    ];
    for (c, k, want) in cases {
        let e = TlsConfig::from_pem_files(&p(c), &p(k)).unwrap_err().to_string();
        assert!(e.contains(want), "{c} {k}: {e}");
    }
    assert!(TlsConfig::from_pem_files(&p("cert.pem"), &p("key.pem")).is_ok());
}
