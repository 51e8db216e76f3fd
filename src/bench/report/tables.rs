//! The report's tables: one per kind of line, a row per line, labelled by
//! run, with the figures formatted for reading (the JSON lines keep every
//! digit).

use super::record::Run;
use super::roofline::{intensity, Peaks};
use crate::backend::join_sizes;

/// A table, rendered by the HTML and markdown writers alike.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The table's title.
    pub title: String,
    /// A sentence under the title: what the figures are.
    pub note: String,
    /// Column headers.
    pub headers: Vec<String>,
    /// Rows of cells, as text.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    fn new(title: &str, note: &str, headers: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            note: note.to_string(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }
}

/// A figure with three significant digits, thousands grouped by commas:
/// `0.0712`, `1.25`, `83.9`, `839,767`.
pub fn fmt(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let a = x.abs();
    if a >= 1000.0 {
        let digits = format!("{:.0}", a);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        return if x < 0.0 { format!("-{out}") } else { out };
    }
    if a == 0.0 {
        return "0".into();
    }
    let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
    format!("{x:.decimals$}")
}

/// The runs' label column only when there are several runs.
fn with_run(runs: &[Run], headers: &[&str]) -> Vec<String> {
    let mut h: Vec<String> = Vec::new();
    if runs.len() > 1 {
        h.push("run".into());
    }
    h.extend(headers.iter().map(|s| s.to_string()));
    h
}

fn row(runs: &[Run], run: &Run, cells: Vec<String>) -> Vec<String> {
    let mut r = Vec::new();
    if runs.len() > 1 {
        r.push(run.label.clone());
    }
    r.extend(cells);
    r
}

/// The model of an epoch line: its sizes, or `?` for older lines.
pub fn model_name(sizes: &[usize]) -> String {
    if sizes.is_empty() {
        "?".into()
    } else {
        join_sizes(sizes)
    }
}

/// Every table with at least one row, in the report's order.
pub fn tables(runs: &[Run], peaks: &Peaks) -> Vec<Table> {
    let mut out = Vec::new();

    let mut t = Table::new(
        "Epoch time",
        "One training epoch of the model (SGD unless said); steady is the median of the epochs after the first, scaled to a full epoch when the steps were capped.",
        &[],
    );
    t.headers = with_run(
        runs,
        &[
            "device",
            "model",
            "parameters",
            "optimizer",
            "batch",
            "steps timed",
            "first (s)",
            "steady (s)",
            "examples/s",
        ],
    );
    for run in runs {
        for e in run.epochs() {
            let cells = vec![
                e.device.clone(),
                model_name(&e.sizes),
                e.parameters.map_or("?".into(), |p| fmt(p as f64)),
                e.optimizer.clone().unwrap_or_else(|| "sgd".into()),
                e.batch.to_string(),
                format!("{}/{}", e.steps_timed, e.steps_per_epoch),
                fmt(e.first_epoch_s),
                fmt(e.steady_epoch_s),
                fmt(e.examples_per_s),
            ];
            t.rows.push(row(runs, run, cells));
        }
    }
    out.push(t);

    let mut t = Table::new(
        "Matrix products",
        "f32 C = op(A) op(B); intensity is 2mnk FLOP over 4(mk + kn + mn) bytes; the roof is min(peak, intensity × bandwidth) where the device's peaks are known.",
        &[],
    );
    t.headers = with_run(
        runs,
        &[
            "device",
            "op",
            "m x n x k",
            "tile",
            "FLOP/byte",
            "GFLOP/s",
            "roof GFLOP/s",
            "of roof",
        ],
    );
    for run in runs {
        for m in run.matmuls() {
            let i = intensity(m.m, m.n, m.k);
            let roof = peaks.lookup(&m.device).map(|p| p.attainable(i));
            let cells = vec![
                m.device.clone(),
                m.variant.clone(),
                format!("{}x{}x{}", m.m, m.n, m.k),
                m.tile.clone().unwrap_or_else(|| "-".into()),
                fmt(i),
                fmt(m.gflops),
                roof.map_or("-".into(), fmt),
                roof.map_or("-".into(), |r| format!("{:.0}%", 100.0 * m.gflops / r)),
            ];
            t.rows.push(row(runs, run, cells));
        }
    }
    out.push(t);

    let mut t = Table::new(
        "Inference",
        "In process, fixed inputs: latency of one row (preprocessing, forward pass, softmax) and rows a second at the larger batch.",
        &[],
    );
    t.headers = with_run(
        runs,
        &[
            "device",
            "predictor",
            "batch-1 p50 (us)",
            "p90 (us)",
            "p99 (us)",
            "batch",
            "rows/s",
        ],
    );
    for run in runs {
        for p in run.inferences() {
            let cells = vec![
                p.device.clone().unwrap_or_else(|| "?".into()),
                p.predictor.clone(),
                fmt(p.batch1_p50_us),
                p.batch1_p90_us.map_or("-".into(), fmt),
                fmt(p.batch1_p99_us),
                p.batch.to_string(),
                fmt(p.rows_per_second),
            ];
            t.rows.push(row(runs, run, cells));
        }
    }
    out.push(t);

    let mut t = Table::new(
        "GPU kernels",
        "GPU time of one training step from timestamp queries: the kernels' mean times summed, and the slowest kernel.",
        &[],
    );
    t.headers = with_run(
        runs,
        &["device", "batch", "kernels", "step (us)", "slowest", "its time (us)"],
    );
    for run in runs {
        for k in run.kernels() {
            let slowest = k.kernels.iter().max_by(|a, b| a.mean_us.total_cmp(&b.mean_us));
            let cells = vec![
                k.device.clone(),
                k.batch.to_string(),
                k.kernels.len().to_string(),
                fmt(k.step_us()),
                slowest.map_or("-".into(), |s| s.name.clone()),
                slowest.map_or("-".into(), |s| fmt(s.mean_us)),
            ];
            t.rows.push(row(runs, run, cells));
        }
    }
    out.push(t);

    let mut t = Table::new(
        "Data-parallel steps",
        "Time of one step of the replicas (or of the first device as one plain backend), and its parts.",
        &[],
    );
    t.headers = with_run(
        runs,
        &[
            "devices",
            "replicas",
            "batch",
            "step (ms)",
            "compute (ms)",
            "transfer (ms)",
            "reduce (ms)",
            "examples/s",
        ],
    );
    for run in runs {
        for p in run.parallels() {
            let opt = |v: Option<f64>| v.map_or("-".into(), fmt);
            let cells = vec![
                if p.plain {
                    format!("{} (plain)", p.device)
                } else {
                    p.device.clone()
                },
                p.replicas.to_string(),
                p.batch.to_string(),
                fmt(p.step_ms),
                opt(p.compute_ms),
                opt(p.transfer_ms),
                opt(p.reduce_ms),
                fmt(p.examples_per_s),
            ];
            t.rows.push(row(runs, run, cells));
        }
    }
    out.push(t);

    out.retain(|t| !t.rows.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_keep_three_significant_digits() {
        for (x, s) in [
            (0.0712345, "0.0712"),
            (1.25, "1.25"),
            (83.94, "83.9"),
            (999.4, "999"),
            (839_767.2, "839,767"),
            (1_795_929.0, "1,795,929"),
            (0.0, "0"),
            (-2.5, "-2.50"),
        ] {
            assert_eq!(fmt(x), s, "{x}");
        }
    }
}
