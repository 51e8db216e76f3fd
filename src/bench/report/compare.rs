//! Two runs set side by side (`bench --compare A B`): lines matched on
//! their identifying keys (kind, device, model, optimizer, batch, product
//! shape and tile, predictor, replicas), and for each figure the ratio b/a
//! and the speed-up of b over a (above 1 when b is better, whichever way
//! the figure points).

use std::collections::BTreeMap;

use super::record::{Record, Run};
use super::tables::{fmt, model_name, Table};

/// One figure of one matched pair of lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    /// The line kind (`epoch`, `matmul`, ...).
    pub kind: &'static str,
    /// The identifying keys, `device=..., batch=64`.
    pub key: String,
    /// The figure compared (`steady_epoch_s`, `gflops`, ...).
    pub figure: &'static str,
    /// The figure in run a.
    pub a: f64,
    /// The figure in run b.
    pub b: f64,
    /// Throughput (higher is better) rather than time (lower is better).
    pub higher_is_better: bool,
}

impl Ratio {
    /// b / a.
    pub fn ratio(&self) -> f64 {
        self.b / self.a
    }

    /// How many times better b is than a: b/a for throughput, a/b for time.
    pub fn speedup(&self) -> f64 {
        if self.higher_is_better {
            self.b / self.a
        } else {
            self.a / self.b
        }
    }
}

/// Every matched figure of two runs, and the lines left unmatched.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Run a's label.
    pub a: String,
    /// Run b's label.
    pub b: String,
    /// Every figure of every matched pair of lines.
    pub ratios: Vec<Ratio>,
    /// Lines of run a that matched none of run b.
    pub only_a: usize,
    /// Lines of run b that matched none of run a.
    pub only_b: usize,
}

/// The keys that tell lines of one kind apart.
pub fn key(r: &Record) -> String {
    let mut k: Vec<(&str, String)> = vec![("device", r.device().to_string())];
    match r {
        Record::Epoch(e) => {
            k.push(("model", model_name(&e.sizes)));
            k.push(("optimizer", e.optimizer.clone().unwrap_or_else(|| "sgd".into())));
            k.push(("batch", e.batch.to_string()));
        }
        Record::Matmul(m) => {
            k.push(("op", m.variant.clone()));
            k.push(("shape", format!("{}x{}x{}", m.m, m.n, m.k)));
            k.push(("tile", m.tile.clone().unwrap_or_else(|| "-".into())));
        }
        Record::Inference(p) => {
            k.push(("predictor", p.predictor.clone()));
            k.push(("batch", p.batch.to_string()));
        }
        Record::Kernels(g) => k.push(("batch", g.batch.to_string())),
        Record::Parallel(p) => {
            k.push(("plain", p.plain.to_string()));
            k.push(("replicas", p.replicas.to_string()));
            k.push(("batch", p.batch.to_string()));
        }
    }
    k.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(", ")
}

/// The figures of a line: name, value, whether higher is better.
pub fn figures(r: &Record) -> Vec<(&'static str, f64, bool)> {
    match r {
        Record::Epoch(e) => vec![
            ("steady epoch (s)", e.steady_epoch_s, false),
            ("first epoch (s)", e.first_epoch_s, false),
            ("examples/s", e.examples_per_s, true),
        ],
        Record::Matmul(m) => vec![("GFLOP/s", m.gflops, true)],
        Record::Inference(p) => {
            let mut v = vec![("batch-1 p50 (us)", p.batch1_p50_us, false)];
            if let Some(p90) = p.batch1_p90_us {
                v.push(("batch-1 p90 (us)", p90, false));
            }
            v.push(("batch-1 p99 (us)", p.batch1_p99_us, false));
            v.push(("rows/s", p.rows_per_second, true));
            v
        }
        Record::Kernels(g) => vec![("step GPU time (us)", g.step_us(), false)],
        Record::Parallel(p) => vec![("step (ms)", p.step_ms, false), ("examples/s", p.examples_per_s, true)],
    }
}

/// Match the lines of `a` and `b` kind by kind and key by key (the i-th
/// line of a key in a with the i-th of the same key in b), in a's order.
pub fn compare(a: &Run, b: &Run) -> Comparison {
    let mut pool: BTreeMap<(&str, String), Vec<&Record>> = BTreeMap::new();
    for r in &b.records {
        pool.entry((r.kind(), key(r))).or_default().push(r);
    }
    for list in pool.values_mut() {
        list.reverse();
    }
    let mut ratios = Vec::new();
    let mut only_a = 0;
    for ra in &a.records {
        let k = key(ra);
        let Some(rb) = pool.get_mut(&(ra.kind(), k.clone())).and_then(Vec::pop) else {
            only_a += 1;
            continue;
        };
        for ((figure, va, higher), (_, vb, _)) in figures(ra).into_iter().zip(figures(rb)) {
            ratios.push(Ratio {
                kind: ra.kind(),
                key: k.clone(),
                figure,
                a: va,
                b: vb,
                higher_is_better: higher,
            });
        }
    }
    let only_b = pool.values().map(Vec::len).sum();
    Comparison {
        a: a.label.clone(),
        b: b.label.clone(),
        ratios,
        only_a,
        only_b,
    }
}

impl Comparison {
    /// The ratios as a table.
    pub fn table(&self) -> Table {
        Table {
            title: format!("{} against {}", self.b, self.a),
            note: format!(
                "Lines matched on their keys; b/a is {b} over {a}; the speed-up is how many times better {b} is (b/a for throughput, a/b for times; above 1: {b} is better). {} lines only in {a}, {} only in {b}.",
                self.only_a,
                self.only_b,
                a = self.a,
                b = self.b
            ),
            headers: [
                "kind",
                "line",
                "figure",
                self.a.as_str(),
                self.b.as_str(),
                "b/a",
                "speed-up of b",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            rows: self
                .ratios
                .iter()
                .map(|r| {
                    vec![
                        r.kind.to_string(),
                        r.key.clone(),
                        r.figure.to_string(),
                        fmt(r.a),
                        fmt(r.b),
                        format!("{:.3}", r.ratio()),
                        format!("{:.2}x", r.speedup()),
                    ]
                })
                .collect(),
        }
    }
}
