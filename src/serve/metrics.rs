//! The server's metrics in the Prometheus text exposition format (0.0.4).
//!
//! Written directly rather than with the `prometheus` or `metrics` crates:
//! four fixed series need a few atomics and a hundred lines, where those
//! crates bring registries, label maps and (for the exporter) an HTTP stack
//! of their own. Every update is a relaxed atomic add: no lock on the
//! request path.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Upper bounds of the request latency buckets, seconds.
const LATENCY_BOUNDS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Upper bounds of the batch size buckets, rows.
const BATCH_BOUNDS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// A cumulative histogram with fixed bounds.
struct Histogram<const N: usize> {
    bounds: [f64; N],
    /// Per bucket (not cumulative); the last is +Inf.
    counts: [AtomicU64; 65],
    /// Sum in micro-units, so it fits an integer atomic.
    sum_micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: [f64; N]) -> Self {
        assert!(N < 65);
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: f64) {
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(N);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((v * 1e6).round() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[N].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cum}");
    }
}

/// Everything `/metrics` reports.
pub struct Metrics {
    /// Requests to /v1/predict by HTTP status (index = status code).
    status: Box<[AtomicU64; 600]>,
    latency: Histogram<14>,
    batch: Histogram<10>,
    queue_depth: AtomicI64,
    rows: AtomicU64,
    /// Connections closed as soon as they were accepted (the cap was reached).
    refused_connections: AtomicU64,
    /// Connections dropped because a request header did not arrive in time.
    header_timeouts: AtomicU64,
    /// TLS handshakes that failed or did not finish in time.
    tls_failures: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            status: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            latency: Histogram::new(LATENCY_BOUNDS),
            batch: Histogram::new(BATCH_BOUNDS),
            queue_depth: AtomicI64::new(0),
            rows: AtomicU64::new(0),
            refused_connections: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// One finished /v1/predict request.
    pub fn request(&self, status: u16, seconds: f64) {
        if let Some(c) = self.status.get(status as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.observe(seconds);
    }

    /// One forward pass over `rows` rows.
    pub fn batch(&self, rows: usize) {
        self.batch.observe(rows as f64);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// One connection closed at once because the connection cap was reached.
    pub fn connection_refused(&self) {
        self.refused_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// One connection dropped because a request header did not arrive in time.
    pub fn header_timeout(&self) {
        self.header_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// One TLS handshake that failed or did not finish in time.
    pub fn tls_handshake_failed(&self) {
        self.tls_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n` (negative: remove) to the count of requests waiting for the inference thread.
    pub fn queue_add(&self, n: i64) {
        self.queue_depth.fetch_add(n, Ordering::Relaxed);
    }

    /// Requests waiting for the inference thread now (`wgtrain_queue_depth`).
    pub fn queue_depth(&self) -> i64 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP wgtrain_requests_total Requests to /v1/predict by HTTP status (and 401 refusals on any guarded route).\n\
             # TYPE wgtrain_requests_total counter\n",
        );
        for (code, c) in self.status.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "wgtrain_requests_total{{status=\"{code}\"}} {n}");
            }
        }
        self.latency.render(
            &mut out,
            "wgtrain_request_duration_seconds",
            "Time from a /v1/predict request's arrival to its answer.",
        );
        self.batch.render(
            &mut out,
            "wgtrain_batch_size",
            "Rows per forward pass of the micro-batcher.",
        );
        let _ = writeln!(
            out,
            "# HELP wgtrain_queue_depth Requests waiting for the inference thread.\n\
             # TYPE wgtrain_queue_depth gauge\nwgtrain_queue_depth {}",
            self.queue_depth()
        );
        let _ = writeln!(
            out,
            "# HELP wgtrain_predicted_rows_total Input rows predicted.\n\
             # TYPE wgtrain_predicted_rows_total counter\nwgtrain_predicted_rows_total {}",
            self.rows.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP wgtrain_connections_refused_total Connections closed on arrival: the connection cap was reached.\n\
             # TYPE wgtrain_connections_refused_total counter\nwgtrain_connections_refused_total {}",
            self.refused_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP wgtrain_header_timeouts_total Connections dropped: a request header did not arrive in time.\n\
             # TYPE wgtrain_header_timeouts_total counter\nwgtrain_header_timeouts_total {}",
            self.header_timeouts.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP wgtrain_tls_handshake_failures_total TLS handshakes that failed or did not finish in time.\n\
             # TYPE wgtrain_tls_handshake_failures_total counter\nwgtrain_tls_handshake_failures_total {}",
            self.tls_failures.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let m = Metrics::default();
        m.request(200, 0.000_3);
        m.request(200, 0.003);
        m.request(503, 10.0);
        m.batch(3);
        let t = m.render();
        assert!(t.contains("wgtrain_requests_total{status=\"200\"} 2\n"), "{t}");
        assert!(t.contains("wgtrain_requests_total{status=\"503\"} 1\n"), "{t}");
        assert!(
            t.contains("wgtrain_request_duration_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("wgtrain_request_duration_seconds_bucket{le=\"5\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("wgtrain_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{t}"
        );
        assert!(t.contains("wgtrain_batch_size_bucket{le=\"2\"} 0\n"), "{t}");
        assert!(t.contains("wgtrain_batch_size_bucket{le=\"4\"} 1\n"), "{t}");
        assert!(t.contains("wgtrain_queue_depth 0\n"), "{t}");
    }
}
