//! The JSON lines of `wgtrain bench` read back as typed records, one run
//! file at a time. A line that is not JSON, or a known kind missing a
//! field, is an error naming the file and line; a kind this reader does not
//! know is skipped and counted; blank lines are ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ReportError;

/// One `bench: "epoch"` line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Epoch {
    /// The device, as every line kind spells it (`cpu (2 threads)`, `NVIDIA H200 (Vulkan, DiscreteGpu)`).
    pub device: String,
    /// Layer widths, inputs first; empty in lines older than `--hidden`.
    #[serde(default)]
    pub sizes: Vec<usize>,
    /// Weights and biases of the model; absent in older lines.
    #[serde(default)]
    pub parameters: Option<usize>,
    /// The optimizer (`sgd`, `adamw`, ...); absent in older lines.
    #[serde(default)]
    pub optimizer: Option<String>,
    /// Examples per step.
    pub batch: usize,
    /// Steps of a full epoch.
    pub steps_per_epoch: usize,
    /// Steps run per timed epoch (fewer when capped).
    pub steps_timed: usize,
    /// Seconds of the first epoch (warm-up), scaled to a full epoch.
    pub first_epoch_s: f64,
    /// Median seconds of the later epochs, scaled to a full epoch.
    pub steady_epoch_s: f64,
    /// Training examples per second in the steady state.
    pub examples_per_s: f64,
}

/// One `bench: "matmul"` line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Matmul {
    /// The device, as every line kind spells it.
    pub device: String,
    /// `nn`, `nt` or `tn`: which operand is stored transposed.
    pub variant: String,
    /// The GPU tile variant; absent on the CPU.
    #[serde(default)]
    pub tile: Option<String>,
    /// Rows of the output.
    pub m: usize,
    /// Columns of the output.
    pub n: usize,
    /// The inner dimension.
    pub k: usize,
    /// Median seconds of one product.
    pub seconds_per_call: f64,
    /// 2mnk / seconds, in GFLOP/s.
    pub gflops: f64,
}

/// One inference line (`bench: "inference"`, or an older line with a
/// `predictor` and no `bench` key).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Inference {
    /// Absent from lines older than the `device` field.
    #[serde(default)]
    pub device: Option<String>,
    /// The predictor (f32 or int8, and where it runs).
    pub predictor: String,
    /// Median latency of one row, µs.
    pub batch1_p50_us: f64,
    /// Absent from lines older than the p90.
    #[serde(default)]
    pub batch1_p90_us: Option<f64>,
    /// 99th percentile of the same, µs.
    pub batch1_p99_us: f64,
    /// Rows per call of the throughput measurement.
    pub batch: usize,
    /// Absent from lines transcribed from text logs, which do not show it.
    #[serde(default)]
    pub batch_p50_ms: Option<f64>,
    /// Rows per second at `batch` rows a call.
    pub rows_per_second: f64,
}

/// One kernel of a `bench: "kernels"` line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Kernel {
    /// The kernel (and its layer).
    pub name: String,
    /// Dispatches of it per step.
    pub calls: usize,
    /// Mean GPU time of one step's dispatches of it, µs.
    pub mean_us: f64,
}

/// One `bench: "kernels"` line: the GPU time of each kernel of a step.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Kernels {
    /// The device, as every line kind spells it.
    pub device: String,
    /// Examples per step.
    pub batch: usize,
    /// Every kernel of the step.
    pub kernels: Vec<Kernel>,
}

impl Kernels {
    /// The step's GPU time: the kernels' mean times summed, µs.
    pub fn step_us(&self) -> f64 {
        self.kernels.iter().map(|k| k.mean_us).sum()
    }
}

/// One `bench: "parallel"` line (a plain backend or replicas).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Parallel {
    /// The device or devices, as the line names them.
    pub device: String,
    /// A plain backend rather than replicas.
    #[serde(default)]
    pub plain: bool,
    /// Replicas in the configuration.
    pub replicas: usize,
    /// The global batch.
    pub batch: usize,
    /// Milliseconds per step.
    pub step_ms: f64,
    /// Of which computing the shard gradients and updates, ms.
    #[serde(default)]
    pub compute_ms: Option<f64>,
    /// Of which GPU readback and upload, ms.
    #[serde(default)]
    pub transfer_ms: Option<f64>,
    /// Of which the host sum, ms.
    #[serde(default)]
    pub reduce_ms: Option<f64>,
    /// Training examples per second.
    pub examples_per_s: f64,
}

/// One benchmark line of a known kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A `bench: "epoch"` line.
    Epoch(Epoch),
    /// A `bench: "matmul"` line.
    Matmul(Matmul),
    /// An inference line.
    Inference(Inference),
    /// A `bench: "kernels"` line.
    Kernels(Kernels),
    /// A `bench: "parallel"` line.
    Parallel(Parallel),
}

impl Record {
    /// The line's `bench` kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Epoch(_) => "epoch",
            Record::Matmul(_) => "matmul",
            Record::Inference(_) => "inference",
            Record::Kernels(_) => "kernels",
            Record::Parallel(_) => "parallel",
        }
    }

    /// The device the line measured (`?` for inference lines older than
    /// the field).
    pub fn device(&self) -> &str {
        match self {
            Record::Epoch(r) => &r.device,
            Record::Matmul(r) => &r.device,
            Record::Inference(r) => r.device.as_deref().unwrap_or("?"),
            Record::Kernels(r) => &r.device,
            Record::Parallel(r) => &r.device,
        }
    }

    /// Read one line: blank, a known record, or a kind this reader does not
    /// know; the error says what is wrong with the line.
    fn parse(line: &str) -> Result<Parsed, String> {
        if line.trim().is_empty() {
            return Ok(Parsed::Blank);
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not a JSON line: {e}"))?;
        let Some(obj) = v.as_object() else {
            return Err("not a JSON object".into());
        };
        let kind = match obj.get("bench") {
            Some(serde_json::Value::String(k)) => k.clone(),
            Some(other) => return Err(format!("`bench` is {other}, not a string")),
            // Inference lines older than their `bench` key.
            None if obj.contains_key("predictor") => "inference".into(),
            None => return Err("no `bench` key: not a line of `wgtrain bench`".into()),
        };
        fn typed<T: serde::de::DeserializeOwned>(kind: &str, v: serde_json::Value) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| format!("a `{kind}` line, but {e}"))
        }
        Ok(Parsed::Record(match kind.as_str() {
            "epoch" => Record::Epoch(typed(&kind, v)?),
            "matmul" => Record::Matmul(typed(&kind, v)?),
            "inference" => Record::Inference(typed(&kind, v)?),
            "kernels" => Record::Kernels(typed(&kind, v)?),
            "parallel" => Record::Parallel(typed(&kind, v)?),
            _ => return Ok(Parsed::Unknown(kind)),
        }))
    }
}

enum Parsed {
    Blank,
    Record(Record),
    Unknown(String),
}

/// The benchmark lines of one input file, under the label the report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The label the report shows for the run.
    pub label: String,
    /// The file read.
    pub path: PathBuf,
    /// Its lines of known kinds, in file order.
    pub records: Vec<Record>,
    /// Lines of kinds this reader does not know, counted by kind.
    pub skipped: BTreeMap<String, usize>,
}

impl Run {
    /// Parse the text of `path`, labelled `label`.
    pub fn parse(label: &str, path: &Path, text: &str) -> Result<Run, ReportError> {
        let mut records = Vec::new();
        let mut skipped = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            match Record::parse(line) {
                Ok(Parsed::Blank) => {}
                Ok(Parsed::Record(r)) => records.push(r),
                Ok(Parsed::Unknown(kind)) => *skipped.entry(kind).or_insert(0) += 1,
                Err(message) => {
                    return Err(ReportError::Line {
                        path: path.to_path_buf(),
                        line: i + 1,
                        message,
                    })
                }
            }
        }
        if records.is_empty() {
            let what = if skipped.is_empty() {
                "the file is empty".to_string()
            } else {
                let kinds: Vec<String> = skipped.iter().map(|(k, n)| format!("{n} `{k}`")).collect();
                format!("only lines of kinds the report does not know: {}", kinds.join(", "))
            };
            return Err(ReportError::Empty {
                path: path.to_path_buf(),
                what,
            });
        }
        Ok(Run {
            label: label.to_string(),
            path: path.to_path_buf(),
            records,
            skipped,
        })
    }

    /// Read and parse `path`, labelled `label`.
    pub fn read(label: &str, path: &Path) -> Result<Run, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Run::parse(label, path, &text)
    }

    /// The records of one kind, in file order.
    pub fn epochs(&self) -> impl Iterator<Item = &Epoch> {
        self.records.iter().filter_map(|r| match r {
            Record::Epoch(e) => Some(e),
            _ => None,
        })
    }

    /// The `matmul` records, in file order.
    pub fn matmuls(&self) -> impl Iterator<Item = &Matmul> {
        self.records.iter().filter_map(|r| match r {
            Record::Matmul(e) => Some(e),
            _ => None,
        })
    }

    /// The `inference` records, in file order.
    pub fn inferences(&self) -> impl Iterator<Item = &Inference> {
        self.records.iter().filter_map(|r| match r {
            Record::Inference(e) => Some(e),
            _ => None,
        })
    }

    /// The `kernels` records, in file order.
    pub fn kernels(&self) -> impl Iterator<Item = &Kernels> {
        self.records.iter().filter_map(|r| match r {
            Record::Kernels(e) => Some(e),
            _ => None,
        })
    }

    /// The `parallel` records, in file order.
    pub fn parallels(&self) -> impl Iterator<Item = &Parallel> {
        self.records.iter().filter_map(|r| match r {
            Record::Parallel(e) => Some(e),
            _ => None,
        })
    }
}

/// A run argument: `NAME=PATH`, or a path labelled by its file name less
/// the extension. An existing file is always a path, `=` or not.
pub fn split_label(arg: &str) -> (String, PathBuf) {
    let whole = Path::new(arg);
    if !whole.exists() {
        if let Some((name, path)) = arg.split_once('=') {
            if !name.is_empty() && !path.is_empty() {
                return (name.to_string(), PathBuf::from(path));
            }
        }
    }
    let label = whole
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| arg.to_string());
    (label, whole.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Run, ReportError> {
        Run::parse("t", Path::new("t.jsonl"), text)
    }

    #[test]
    fn each_kind_is_read_into_its_record() {
        let text = [
            r#"{"bench":"epoch","device":"cpu (2 threads)","sizes":[784,16,10],"parameters":12730,"batch":32,"steps_per_epoch":1875,"steps_timed":3,"first_epoch_s":1.5,"steady_epoch_s":1.25,"examples_per_s":48000.0,"optimizer":"SGD"}"#,
            r#"{"bench":"matmul","device":"cpu (2 threads)","variant":"nn","tile":null,"m":64,"n":64,"k":64,"seconds_per_call":1e-5,"gflops":52.4}"#,
            r#"{"bench":"inference","device":"cpu (2 threads)","predictor":"cpu f32","batch1_p50_us":9.0,"batch1_p90_us":10.0,"batch1_p99_us":12.0,"batch1_mean_us":9.5,"batch":256,"batch_p50_ms":1.2,"rows_per_second":200000.0}"#,
            r#"{"predictor":"old","batch1_p50_us":9.0,"batch1_p99_us":12.0,"batch1_mean_us":9.5,"batch":256,"batch_p50_ms":1.2,"rows_per_second":200000.0}"#,
            r#"{"bench":"kernels","device":"gpu","batch":64,"kernels":[{"name":"a","calls":20,"total_us":40.0,"mean_us":2.0},{"name":"b","calls":20,"total_us":60.0,"mean_us":3.0}]}"#,
            r#"{"bench":"parallel","device":"cpu (2 threads)","plain":true,"replicas":1,"batch":64,"step_ms":1.5,"examples_per_s":42000.0}"#,
            "",
            r#"{"bench":"future","x":1}"#,
        ]
        .join("\n");
        let run = parse(&text).expect("parses");
        let kinds: Vec<&str> = run.records.iter().map(Record::kind).collect();
        assert_eq!(
            kinds,
            ["epoch", "matmul", "inference", "inference", "kernels", "parallel"]
        );
        assert_eq!(run.skipped.get("future"), Some(&1));
        let e = run.epochs().next().expect("an epoch");
        assert_eq!(e.sizes, [784, 16, 10]);
        assert_eq!(e.parameters, Some(784 * 16 + 16 + 16 * 10 + 10));
        let old = run.inferences().nth(1).expect("the old line");
        assert_eq!((old.device.as_deref(), old.batch1_p90_us), (None, None));
        let k = run.kernels().next().expect("kernels");
        assert_eq!(k.step_us(), 2.0 + 3.0);
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        for (text, line, words) in [
            ("\n{\"bench\":\"matmul\"", 2, "not a JSON line"),
            ("[1,2]", 1, "not a JSON object"),
            ("{\"x\":1}", 1, "no `bench` key"),
            (
                "{\"bench\":\"unknown\"}\n{\"bench\":\"epoch\",\"device\":\"d\"}",
                2,
                "`epoch` line",
            ),
            ("{\"bench\":3}", 1, "not a string"),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.starts_with(&format!("t.jsonl:{line}: ")), "{e}");
            assert!(e.contains(words), "{e}");
        }
    }

    #[test]
    fn empty_input_is_an_error() {
        for text in ["", "\n\n", "{\"bench\":\"future\"}"] {
            let e = parse(text).expect_err(text);
            assert!(matches!(e, ReportError::Empty { .. }), "{e}");
        }
    }

    #[test]
    fn run_arguments_take_a_label_or_the_file_name() {
        assert_eq!(
            split_label("h200=/no/such/dir/run.jsonl"),
            ("h200".to_string(), PathBuf::from("/no/such/dir/run.jsonl"))
        );
        assert_eq!(
            split_label("/no/such/dir/cpu-2core.jsonl"),
            ("cpu-2core".to_string(), PathBuf::from("/no/such/dir/cpu-2core.jsonl"))
        );
    }
}
