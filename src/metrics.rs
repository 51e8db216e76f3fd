//! Accuracy, loss and the confusion matrix, computed from predictions the
//! same way for every backend.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Per-example results of a forward pass over a whole split.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    /// Sum of per-example cross-entropy losses.
    pub loss_sum: f64,
    /// Arg-max class of each example, in the split's order.
    pub classes: Vec<u32>,
}

/// The result of evaluating a model on a labelled split.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Examples evaluated.
    pub examples: usize,
    /// Mean cross-entropy loss.
    pub loss: f64,
    /// Fraction of examples classified correctly.
    pub accuracy: f64,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

impl Evaluation {
    /// The evaluation of `pred` against `labels` over `classes` classes.
    /// Every label and predicted class must be below `classes`.
    pub fn new(pred: &Predictions, labels: &[u32], classes: usize) -> Self {
        let mut confusion = vec![vec![0u64; classes]; classes];
        let mut correct = 0usize;
        for (&p, &l) in pred.classes.iter().zip(labels) {
            confusion[l as usize][p as usize] += 1;
            correct += (p == l) as usize;
        }
        let n = labels.len();
        Evaluation {
            examples: n,
            loss: pred.loss_sum / n.max(1) as f64,
            accuracy: correct as f64 / n.max(1) as f64,
            confusion,
        }
    }

    /// The confusion matrix as aligned text, rows true classes, columns
    /// predictions.
    pub fn confusion_table(&self) -> String {
        self.confusion_table_named(&[])
    }

    /// [`Self::confusion_table`] with each row labelled by its class index
    /// and name (names longer than [`NAME_WIDTH`] characters cut short,
    /// ending in `.`); the columns keep the indices, which the rows name.
    /// Without names it is [`Self::confusion_table`].
    pub fn confusion_table_named(&self, names: &[String]) -> String {
        let w = self
            .confusion
            .iter()
            .flatten()
            .max()
            .map(|m| m.to_string().len())
            .unwrap_or(1)
            .max(3);
        let label = |i: usize| match names.get(i) {
            Some(n) => format!("{i:>2} {:<NAME_WIDTH$}", abbreviate(n)),
            None => i.to_string(),
        };
        let lw = if names.is_empty() { 6 } else { NAME_WIDTH + 3 };
        let mut s = format!("{:>lw$} |", "true");
        for j in 0..self.confusion.len() {
            s += &format!(" {j:>w$}");
        }
        s += "  <- predicted\n";
        s += &format!("{}\n", "-".repeat(lw + 2 + (w + 1) * self.confusion.len()));
        for (i, row) in self.confusion.iter().enumerate() {
            s += &format!("{:>lw$} |", label(i));
            for v in row {
                s += &format!(" {v:>w$}");
            }
            s += "\n";
        }
        s
    }

    /// The accuracy on each class's examples (the diagonal of the
    /// confusion matrix over its row's sum; `None` for a class without
    /// examples).
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let n: u64 = row.iter().sum();
                (n > 0).then(|| row.get(i).copied().unwrap_or(0) as f64 / n as f64)
            })
            .collect()
    }

    /// One line per class: index, name (when given, in full) and accuracy
    /// with the class's example count.
    pub fn per_class_table(&self, names: &[String]) -> String {
        let nw = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        let mut s = String::new();
        for (i, (acc, row)) in self.per_class_accuracy().iter().zip(&self.confusion).enumerate() {
            let name = names.get(i).map(String::as_str).unwrap_or("");
            let n: u64 = row.iter().sum();
            let acc = acc.map_or("-".to_string(), |a| format!("{:.2}%", a * 100.0));
            s += &format!("{i:>6} {name:<nw$} {acc:>8} of {n}\n");
        }
        s
    }
}

/// The most characters of a class name a confusion table row shows.
pub const NAME_WIDTH: usize = 12;

/// `name` cut to [`NAME_WIDTH`] characters, the last a `.` when cut.
fn abbreviate(name: &str) -> String {
    if name.chars().count() <= NAME_WIDTH {
        return name.to_string();
    }
    let mut s: String = name.chars().take(NAME_WIDTH - 1).collect();
    s.push('.');
    s
}

/// One line of a metrics file: a log point (`kind` "step") or an epoch end
/// (`kind` "epoch"). Figures not measured at that point are `None` (null in
/// JSON lines, an empty field in CSV).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// `"step"` or `"epoch"`.
    pub kind: String,
    /// The epoch (1-based).
    pub epoch: usize,
    /// Steps done in the run.
    pub global_step: usize,
    /// The learning rate of the last step.
    pub lr: f64,
    /// Mean training loss since the previous row (epoch rows: over the epoch).
    pub train_loss: f64,
    /// Training accuracy, a fraction, over the same examples.
    pub train_accuracy: f64,
    /// Mean loss on the validation split.
    pub validation_loss: Option<f64>,
    /// Accuracy on the validation split (a fraction).
    pub validation_accuracy: Option<f64>,
    /// Mean loss on the test split.
    pub test_loss: Option<f64>,
    /// Accuracy on the test split (a fraction).
    pub test_accuracy: Option<f64>,
    /// Training examples per second (wall clock).
    pub examples_per_second: f64,
    /// Seconds since the run started.
    pub seconds: f64,
}

/// The columns of a CSV metrics file, in order.
pub const METRICS_COLUMNS: [&str; 12] = [
    "kind",
    "epoch",
    "global_step",
    "lr",
    "train_loss",
    "train_accuracy",
    "validation_loss",
    "validation_accuracy",
    "test_loss",
    "test_accuracy",
    "examples_per_second",
    "seconds",
];

/// The format of a metrics file, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsFormat {
    /// One JSON object a line (`.jsonl`, `.json`, `.ndjson`).
    JsonLines,
    /// A header line then one row a line (`.csv`).
    Csv,
}

impl MetricsFormat {
    /// The format a file name asks for; `None` for an unknown extension.
    pub fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "jsonl" | "json" | "ndjson" => Some(MetricsFormat::JsonLines),
            "csv" => Some(MetricsFormat::Csv),
            _ => None,
        }
    }
}

/// Writes [`MetricsRow`]s as they come, flushing each line, so a run that
/// stops half-way leaves every line written so far.
pub struct MetricsWriter {
    out: std::io::BufWriter<std::fs::File>,
    format: MetricsFormat,
}

impl MetricsWriter {
    /// Create (truncate) `path`; writes the CSV header at once.
    pub fn create(path: &Path, format: MetricsFormat) -> std::io::Result<Self> {
        let mut w = MetricsWriter {
            out: std::io::BufWriter::new(std::fs::File::create(path)?),
            format,
        };
        if format == MetricsFormat::Csv {
            writeln!(w.out, "{}", METRICS_COLUMNS.join(","))?;
            w.out.flush()?;
        }
        Ok(w)
    }

    /// Append to `path` (a resumed run), creating it with the CSV header
    /// when it is missing or empty.
    pub fn append(path: &Path, format: MetricsFormat) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().append(true).create(true).open(path)?;
        let empty = file.metadata()?.len() == 0;
        let mut w = MetricsWriter {
            out: std::io::BufWriter::new(file),
            format,
        };
        if format == MetricsFormat::Csv && empty {
            writeln!(w.out, "{}", METRICS_COLUMNS.join(","))?;
            w.out.flush()?;
        }
        Ok(w)
    }

    /// Append one row and flush it.
    pub fn write(&mut self, r: &MetricsRow) -> std::io::Result<()> {
        match self.format {
            MetricsFormat::JsonLines => {
                serde_json::to_writer(&mut self.out, r)?;
                writeln!(self.out)?;
            }
            MetricsFormat::Csv => {
                let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
                writeln!(
                    self.out,
                    "{},{},{},{},{},{},{},{},{},{},{},{}",
                    r.kind,
                    r.epoch,
                    r.global_step,
                    r.lr,
                    r.train_loss,
                    r.train_accuracy,
                    opt(r.validation_loss),
                    opt(r.validation_accuracy),
                    opt(r.test_loss),
                    opt(r.test_accuracy),
                    r.examples_per_second,
                    r.seconds
                )?;
            }
        }
        self.out.flush()
    }
}

/// Read a metrics file [`MetricsWriter`] wrote (format from the extension;
/// unknown extensions are tried as JSON lines).
pub fn read_metrics(path: &Path) -> std::io::Result<Vec<MetricsRow>> {
    let text = std::fs::read_to_string(path)?;
    let bad = |line: usize, m: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}:{line}: {m}", path.display()),
        )
    };
    let mut rows = Vec::new();
    match MetricsFormat::of(path).unwrap_or(MetricsFormat::JsonLines) {
        MetricsFormat::JsonLines => {
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                rows.push(serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?);
            }
        }
        MetricsFormat::Csv => {
            let mut lines = text.lines().enumerate();
            let header: Vec<&str> = lines.next().map(|(_, h)| h.split(',').collect()).unwrap_or_default();
            if header != METRICS_COLUMNS {
                return Err(bad(1, format!("expected the header {}", METRICS_COLUMNS.join(","))));
            }
            for (i, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
                let f: Vec<&str> = line.split(',').collect();
                if f.len() != METRICS_COLUMNS.len() {
                    return Err(bad(
                        i + 1,
                        format!("{} fields, expected {}", f.len(), METRICS_COLUMNS.len()),
                    ));
                }
                let num = |j: usize| -> std::io::Result<f64> {
                    f[j].trim()
                        .parse::<f64>()
                        .map_err(|_| bad(i + 1, format!("{}: `{}` is not a number", METRICS_COLUMNS[j], f[j])))
                };
                let opt = |j: usize| -> std::io::Result<Option<f64>> {
                    if f[j].trim().is_empty() {
                        Ok(None)
                    } else {
                        num(j).map(Some)
                    }
                };
                let int = |j: usize| -> std::io::Result<usize> {
                    f[j].trim()
                        .parse::<usize>()
                        .map_err(|_| bad(i + 1, format!("{}: `{}` is not a count", METRICS_COLUMNS[j], f[j])))
                };
                rows.push(MetricsRow {
                    kind: f[0].to_string(),
                    epoch: int(1)?,
                    global_step: int(2)?,
                    lr: num(3)?,
                    train_loss: num(4)?,
                    train_accuracy: num(5)?,
                    validation_loss: opt(6)?,
                    validation_accuracy: opt(7)?,
                    test_loss: opt(8)?,
                    test_accuracy: opt(9)?,
                    examples_per_second: num(10)?,
                    seconds: num(11)?,
                });
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_counts_and_accuracy() {
        let p = Predictions {
            loss_sum: 2.0,
            classes: vec![0, 1, 1, 2],
        };
        let e = Evaluation::new(&p, &[0, 1, 2, 2], 3);
        assert_eq!(e.accuracy, 0.75); // 3 of 4
        assert_eq!(e.loss, 0.5); // 2.0 / 4
        assert_eq!(e.confusion[2], vec![0, 1, 1]);
    }
}
