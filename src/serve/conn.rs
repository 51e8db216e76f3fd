//! The accept loop of [`super::serve`]: HTTP/1.1 connections with bounded
//! patience and a bounded count, and a graceful stop.
//!
//! Every connection is served by hyper with a deadline for each request's
//! header (a client that trickles its header, or holds an idle
//! keep-alive connection open, is dropped when it passes) and a cap on the
//! header's size (431 past it). At most `max_connections` are open at
//! once: one more is closed as soon as it is accepted and counted, so a
//! flood of idle connections cannot exhaust the process's file
//! descriptors or memory. The request body's own deadline and size limit
//! are the router's (see `read_body` in the parent module), so they hold
//! for an embedded [`super::router`] too.
//!
//! With TLS, each connection's handshake must also finish within the
//! header deadline (a failed or late one is counted) before HTTP starts.
//!
//! On shutdown the listener closes, every connection is told to finish
//! the request in flight and close (idle ones close at once), and the loop
//! returns when the last one has.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::tls::TlsConfig;
use super::Metrics;

/// The connection-level limits of [`serve_connections`].
#[derive(Debug, Clone)]
pub(super) struct ConnLimits {
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// Serve TLS with this configuration (`None`: plain HTTP).
    pub tls: Option<TlsConfig>,
}

/// Accept connections on `listener` and serve `app` on each until
/// `shutdown` completes; then drain (see the module docs).
pub(super) async fn serve_connections<F>(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Reap finished connections so the set holds only open ones.
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors or a connection reset before it
                // was accepted: neither stops the server. Wait a moment so
                // that a lack of descriptors does not spin the loop.
                log::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connection_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let http = http.clone();
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let metrics = metrics.clone();
        let tls = limits.tls.clone();
        let header_timeout = limits.header_timeout;
        tasks.spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_one(&http, stream, app, &mut stop, &metrics).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server);
                    // The handshake, like a header, must finish in time.
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_one(&http, s, app, &mut stop, &metrics).await,
                        Ok(Err(e)) => {
                            log::debug!("TLS handshake failed: {e}");
                            metrics.tls_handshake_failed();
                        }
                        Err(_) => metrics.tls_handshake_failed(),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Serve HTTP/1.1 on one connection until it ends, or until the stop flag
/// is set and the request in flight is answered.
async fn serve_one<IO>(http: &http1::Builder, io: IO, app: Router, stop: &mut watch::Receiver<bool>, metrics: &Metrics)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics.header_timeout();
        } else {
            log::debug!("connection ended with an error: {e}");
        }
    }
}

/// Completes once the stop flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
