//! The search space: which training settings a study varies, and over what.
//!
//! A space file is TOML; each key is one setting of a trial, given as a
//! single value (held fixed), a list (one of these values), or a range
//! table `{ min = A, max = B, log = true, points = N }` (numeric keys only;
//! `log` draws log-uniformly and needs `min > 0`; `points` is how many
//! values the grid sampler takes from it, 3 by default). `epochs` is the
//! most epochs a trial trains (successive halving's maximum resource).
//!
//! ```toml
//! epochs = 10
//! lr = { min = 1e-3, max = 0.3, log = true }
//! optimizer = ["sgd", "momentum", "adam"]
//! weight_decay = { min = 1e-6, max = 1e-3, log = true }
//! dropout = { min = 0.0, max = 0.3 }
//! width = [128, 256, 512]
//! depth = [1, 2]
//! batch = [32, 64, 128]
//! schedule = ["constant", "cosine"]
//! momentum = 0.9
//! shift = [0, 1]          # random image shifts (image data only)
//! label_smoothing = 0.0
//! ```
//!
//! A key left out keeps `wgtrain train`'s default (lr 0.1, sgd, no weight
//! decay, dropout, shift or label smoothing, one hidden layer of 500,
//! batch 64, constant schedule, momentum 0.9 for the momentum optimizers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{Regularization, TrainSpec};
use crate::error::{Result, TuneError};
use crate::optim::{Adam, Decay, Optimizer, ScheduleSpec, Sgd, Warmup};

/// One value of a setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A number (integer settings hold whole numbers).
    Num(f64),
    /// A name (optimizer, schedule).
    Text(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Num(v) => write!(f, "{v}"),
            Value::Text(s) => write!(f, "{s}"),
        }
    }
}

/// What a study draws one setting from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Dim {
    /// Between `min` and `max` inclusive, uniform or (with `log`)
    /// log-uniform; whole numbers only with `integer`. The grid sampler
    /// takes `points` values spaced evenly (geometrically with `log`).
    Range {
        /// The smallest value.
        min: f64,
        /// The largest value.
        max: f64,
        /// Draw log-uniformly (needs `min > 0`).
        log: bool,
        /// Round draws to whole numbers.
        integer: bool,
        /// Values the grid sampler takes (at least 2 are taken).
        points: usize,
    },
    /// One of these values (a single one: the setting is fixed).
    Choice {
        /// The values, in the order the grid sampler takes them.
        values: Vec<Value>,
    },
}

impl Dim {
    /// The values the grid sampler enumerates.
    pub fn grid(&self) -> Vec<Value> {
        match self {
            Dim::Choice { values } => values.clone(),
            Dim::Range {
                min,
                max,
                log,
                integer,
                points,
            } => {
                let n = (*points).max(2);
                let mut out: Vec<Value> = Vec::new();
                for i in 0..n {
                    let t = i as f64 / (n - 1) as f64;
                    let mut v = if *log {
                        (min.ln() + t * (max.ln() - min.ln())).exp()
                    } else {
                        min + t * (max - min)
                    };
                    if i == 0 {
                        v = *min;
                    } else if i == n - 1 {
                        v = *max;
                    }
                    if *integer {
                        v = v.round();
                    }
                    if !out.contains(&Value::Num(v)) {
                        out.push(Value::Num(v));
                    }
                }
                out
            }
        }
    }
}

/// The kind of values a key takes, and which are allowed.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A real number in `[lo, hi]` (`hi` excluded when `open`).
    Float {
        lo: f64,
        hi: f64,
        open: bool,
        lo_open: bool,
    },
    /// A whole number in `[lo, hi]`.
    Int { lo: f64, hi: f64 },
    /// One of these names.
    Name(&'static [&'static str]),
}

/// The optimizers a trial may use: `momentum` and `nesterov` are SGD with
/// the `momentum` key's factor.
pub const OPTIMIZERS: &[&str] = &["sgd", "momentum", "nesterov", "adam", "adamw"];
/// The schedules a trial may use (as `wgtrain train --schedule`; `step`
/// multiplies the rate by 0.1 every third of the run).
pub const SCHEDULES: &[&str] = &["constant", "cosine", "step", "one-cycle"];

/// A fraction in `[0, 1)`: momentum, dropout, label smoothing.
const FRACTION: Kind = Kind::Float {
    lo: 0.0,
    hi: 1.0,
    open: true,
    lo_open: false,
};

/// Every key a space may hold besides `epochs`, its kind and its default.
const KEYS: &[(&str, Kind, Value)] = &[
    (
        "lr",
        Kind::Float {
            lo: 0.0,
            hi: 10.0,
            open: false,
            lo_open: true,
        },
        Value::Num(0.1),
    ),
    ("optimizer", Kind::Name(OPTIMIZERS), Value::Text(String::new())),
    (
        "weight_decay",
        Kind::Float {
            lo: 0.0,
            hi: 1.0,
            open: false,
            lo_open: false,
        },
        Value::Num(0.0),
    ),
    ("momentum", FRACTION, Value::Num(0.9)),
    ("dropout", FRACTION, Value::Num(0.0)),
    ("width", Kind::Int { lo: 1.0, hi: 65536.0 }, Value::Num(500.0)),
    ("depth", Kind::Int { lo: 1.0, hi: 16.0 }, Value::Num(1.0)),
    ("batch", Kind::Int { lo: 1.0, hi: 65536.0 }, Value::Num(64.0)),
    ("schedule", Kind::Name(SCHEDULES), Value::Text(String::new())),
    ("shift", Kind::Int { lo: 0.0, hi: 64.0 }, Value::Num(0.0)),
    ("label_smoothing", FRACTION, Value::Num(0.0)),
];

/// The default of a key (names are filled in here: a `const` cannot hold
/// an owned string).
fn default_of(key: &str) -> Value {
    match key {
        "optimizer" => Value::Text("sgd".into()),
        "schedule" => Value::Text("constant".into()),
        _ => KEYS
            .iter()
            .find(|k| k.0 == key)
            .map(|k| k.2.clone())
            .unwrap_or(Value::Num(0.0)),
    }
}

/// A search space: every key's dimension, and the most epochs of a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Space {
    /// Each key's dimension, keys in sorted order.
    pub dims: BTreeMap<String, Dim>,
    /// The most epochs a trial trains (successive halving's maximum resource).
    pub epochs: usize,
}

fn fixed(v: Value) -> Dim {
    Dim::Choice { values: vec![v] }
}

fn log_range(min: f64, max: f64) -> Dim {
    Dim::Range {
        min,
        max,
        log: true,
        integer: false,
        points: 3,
    }
}

fn choice_nums(v: &[f64]) -> Dim {
    Dim::Choice {
        values: v.iter().map(|&x| Value::Num(x)).collect(),
    }
}

fn choice_names(v: &[&str]) -> Dim {
    Dim::Choice {
        values: v.iter().map(|s| Value::Text(s.to_string())).collect(),
    }
}

impl Space {
    /// Every key fixed at its default, for `epochs` epochs.
    pub fn fixed_defaults(epochs: usize) -> Self {
        Space {
            dims: KEYS
                .iter()
                .map(|(k, _, _)| (k.to_string(), fixed(default_of(k))))
                .collect(),
            epochs,
        }
    }

    /// The space searched without `--space`: learning rate (log scale),
    /// optimizer, weight decay (log scale), dropout, width and depth, batch
    /// size and schedule, for `epochs` epochs.
    pub fn default_search(epochs: usize) -> Self {
        let mut s = Space::fixed_defaults(epochs);
        let mut set = |k: &str, d: Dim| {
            s.dims.insert(k.to_string(), d);
        };
        set("lr", log_range(3e-4, 0.3));
        set("optimizer", choice_names(&["sgd", "momentum", "adam", "adamw"]));
        set("weight_decay", log_range(1e-6, 1e-3));
        set(
            "dropout",
            Dim::Range {
                min: 0.0,
                max: 0.3,
                log: false,
                integer: false,
                points: 3,
            },
        );
        set("width", choice_nums(&[128.0, 256.0, 512.0]));
        set("depth", choice_nums(&[1.0, 2.0]));
        set("batch", choice_nums(&[32.0, 64.0, 128.0]));
        set("schedule", choice_names(&["constant", "cosine"]));
        s
    }

    /// Add every key this space lacks, fixed at its default: a space
    /// stored by a version with fewer keys then equals the same space
    /// parsed now.
    pub fn fill_defaults(&mut self) {
        for (k, _, _) in KEYS {
            self.dims.entry(k.to_string()).or_insert_with(|| fixed(default_of(k)));
        }
    }

    /// The largest number key `key` can take (`None` for an unknown key
    /// or one without numbers).
    pub fn largest(&self, key: &str) -> Option<f64> {
        match self.dims.get(key)? {
            Dim::Range { max, .. } => Some(*max),
            Dim::Choice { values } => values
                .iter()
                .filter_map(|v| match v {
                    Value::Num(x) => Some(*x),
                    Value::Text(_) => None,
                })
                .reduce(f64::max),
        }
    }

    /// Read a space file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| space_err(path, "(file)", format!("cannot read it: {e}")))?;
        Space::parse(&text, path)
    }

    /// Parse a space from TOML text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| space_err(path, "(file)", format!("not valid TOML: {}", e.message())))?;
        let mut space = Space::fixed_defaults(10);
        let mut searched = 0;
        for (key, value) in &table {
            if key == "epochs" {
                space.epochs = match value {
                    toml::Value::Integer(n) if *n >= 1 => *n as usize,
                    _ => {
                        return Err(space_err(
                            path,
                            key,
                            format!(
                            "{value} is not a positive whole number (the most epochs a trial trains; give one number)"
                        ),
                        ))
                    }
                };
                continue;
            }
            let Some(&(_, kind, _)) = KEYS.iter().find(|k| k.0 == key) else {
                let known: Vec<&str> = KEYS.iter().map(|k| k.0).chain(["epochs"]).collect();
                return Err(space_err(
                    path,
                    key,
                    format!("unknown key (known: {})", known.join(", ")),
                ));
            };
            let dim = parse_dim(kind, value).map_err(|m| space_err(path, key, m))?;
            if dim.grid().len() > 1 {
                searched += 1;
            }
            space.dims.insert(key.clone(), dim);
        }
        if searched == 0 {
            log::warn!(
                "{}: every setting is fixed; each trial trains the same configuration",
                path.display()
            );
        }
        Ok(space)
    }

    /// How many configurations the grid sampler enumerates.
    pub fn grid_size(&self) -> usize {
        self.dims.values().map(|d| d.grid().len()).product()
    }
}

fn space_err(path: &Path, key: &str, message: String) -> crate::Error {
    TuneError::Space {
        path: PathBuf::from(path),
        key: key.to_string(),
        message,
    }
    .into()
}

fn number(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// Whether `v` is allowed for a key of this kind; the message says why not.
fn check_value(kind: Kind, v: &Value) -> std::result::Result<(), String> {
    match (kind, v) {
        (Kind::Float { lo, hi, open, lo_open }, Value::Num(x)) => {
            let below = if lo_open { *x <= lo } else { *x < lo };
            let above = if open { *x >= hi } else { *x > hi };
            if !x.is_finite() || below || above {
                let l = if lo_open { "(" } else { "[" };
                let r = if open { ")" } else { "]" };
                return Err(format!("{x} is outside {l}{lo}, {hi}{r}"));
            }
            Ok(())
        }
        (Kind::Int { lo, hi }, Value::Num(x)) => {
            if x.fract() != 0.0 || *x < lo || *x > hi {
                return Err(format!("{x} is not a whole number from {lo} to {hi}"));
            }
            Ok(())
        }
        (Kind::Name(names), Value::Text(s)) => {
            if names.contains(&s.as_str()) {
                Ok(())
            } else {
                Err(format!("`{s}` is not one of {}", names.join(", ")))
            }
        }
        (Kind::Name(names), Value::Num(x)) => Err(format!("{x} is a number; expected one of {}", names.join(", "))),
        (_, Value::Text(s)) => Err(format!("`{s}` is text; expected a number")),
    }
}

fn scalar(kind: Kind, v: &toml::Value) -> std::result::Result<Value, String> {
    let value = match (kind, v) {
        (Kind::Name(_), toml::Value::String(s)) => Value::Text(s.clone()),
        (Kind::Name(names), other) => {
            return Err(format!("{other} is not a name; expected one of {}", names.join(", ")))
        }
        (_, other) => Value::Num(number(other).ok_or_else(|| format!("{other} is not a number"))?),
    };
    check_value(kind, &value)?;
    Ok(value)
}

fn parse_dim(kind: Kind, v: &toml::Value) -> std::result::Result<Dim, String> {
    match v {
        toml::Value::Array(items) => {
            if items.is_empty() {
                return Err("an empty choice list: give at least one value".into());
            }
            let values = items
                .iter()
                .map(|x| scalar(kind, x))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(Dim::Choice { values })
        }
        toml::Value::Table(t) => {
            if matches!(kind, Kind::Name(_)) {
                return Err("a range needs a numeric setting; give a list of names".into());
            }
            for k in t.keys() {
                if !["min", "max", "log", "points"].contains(&k.as_str()) {
                    return Err(format!("unknown range key `{k}` (known: min, max, log, points)"));
                }
            }
            let get = |k: &str| -> std::result::Result<f64, String> {
                let x = t.get(k).ok_or_else(|| format!("a range needs `{k}`"))?;
                number(x).ok_or_else(|| format!("range `{k}` {x} is not a number"))
            };
            let (min, max) = (get("min")?, get("max")?);
            let log = match t.get("log") {
                None => false,
                Some(toml::Value::Boolean(b)) => *b,
                Some(x) => return Err(format!("range `log` {x} is not true or false")),
            };
            let points = match t.get("points") {
                None => 3,
                Some(toml::Value::Integer(n)) if *n >= 2 => *n as usize,
                Some(x) => return Err(format!("range `points` {x} is not a whole number of at least 2")),
            };
            if min.is_nan() || max.is_nan() || min >= max {
                return Err(format!("an empty range: min {min} is not below max {max}"));
            }
            if log && min <= 0.0 {
                return Err(format!(
                    "a log range must lie above 0, but min is {min} (a log scale cannot reach 0 or negative values)"
                ));
            }
            check_value(kind, &Value::Num(min)).map_err(|m| format!("range min: {m}"))?;
            check_value(kind, &Value::Num(max)).map_err(|m| format!("range max: {m}"))?;
            Ok(Dim::Range {
                min,
                max,
                log,
                integer: matches!(kind, Kind::Int { .. }),
                points,
            })
        }
        other => Ok(fixed(scalar(kind, other)?)),
    }
}

/// The settings of one trial, drawn from a [`Space`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialConfig {
    /// The (peak) learning rate.
    pub lr: f64,
    /// One of [`OPTIMIZERS`].
    pub optimizer: String,
    /// Weight decay (L2 for SGD and Adam, decoupled for AdamW).
    pub weight_decay: f64,
    /// SGD's momentum factor (the `momentum` and `nesterov` optimizers).
    pub momentum: f64,
    /// Dropout probability after each hidden layer.
    pub dropout: f64,
    /// Units of every hidden layer.
    pub width: usize,
    /// Number of hidden layers.
    pub depth: usize,
    /// Examples per training step.
    pub batch: usize,
    /// One of [`SCHEDULES`].
    pub schedule: String,
    /// Random shifts of the training images by up to this many pixels (0:
    /// none; image data only). Absent from trials stored before it existed,
    /// which read as 0.
    #[serde(default)]
    pub shift: u32,
    /// Label smoothing of the training loss, in `[0, 1)`.
    #[serde(default)]
    pub label_smoothing: f64,
}

impl TrialConfig {
    /// A configuration from one value per key (defaults for missing keys).
    pub fn from_values(values: &BTreeMap<String, Value>) -> Self {
        let get = |k: &str| values.get(k).cloned().unwrap_or_else(|| default_of(k));
        let num = |k: &str| match get(k) {
            Value::Num(x) => x,
            Value::Text(_) => 0.0,
        };
        let text = |k: &str| match get(k) {
            Value::Text(s) => s,
            Value::Num(x) => x.to_string(),
        };
        TrialConfig {
            lr: num("lr"),
            optimizer: text("optimizer"),
            weight_decay: num("weight_decay"),
            momentum: num("momentum"),
            dropout: num("dropout"),
            width: num("width") as usize,
            depth: num("depth") as usize,
            batch: num("batch") as usize,
            schedule: text("schedule"),
            shift: num("shift") as u32,
            label_smoothing: num("label_smoothing"),
        }
    }

    /// The hidden layer widths.
    pub fn hidden(&self) -> Vec<usize> {
        vec![self.width; self.depth]
    }

    /// The backend's settings for this trial.
    pub fn spec(&self, seed: u64) -> TrainSpec {
        let wd = self.weight_decay as f32;
        let momentum = self.momentum as f32;
        let adam = Adam {
            weight_decay: wd,
            ..Adam::default()
        };
        let optimizer = match self.optimizer.as_str() {
            "momentum" | "nesterov" => Optimizer::Sgd(Sgd {
                momentum,
                nesterov: self.optimizer == "nesterov",
                weight_decay: wd,
            }),
            "adam" => Optimizer::Adam(adam),
            "adamw" => Optimizer::AdamW(adam),
            _ => Optimizer::Sgd(Sgd {
                momentum: 0.0,
                nesterov: false,
                weight_decay: wd,
            }),
        };
        TrainSpec {
            batch: self.batch,
            optimizer,
            regular: Regularization {
                dropout: self.dropout as f32,
                label_smoothing: self.label_smoothing as f32,
                shift: self.shift,
                ..Regularization::default()
            },
            seed,
            precision: crate::backend::Precision::F32,
        }
    }

    /// The learning-rate schedule of a trial of `epochs` epochs.
    pub fn schedule_spec(&self, epochs: usize) -> ScheduleSpec {
        let decay = match self.schedule.as_str() {
            "cosine" => Decay::Cosine { lr_min: 0.0 },
            "step" => Decay::Step {
                every_epochs: (epochs / 3).max(1),
                gamma: 0.1,
            },
            "one-cycle" => Decay::OneCycle,
            _ => Decay::Constant,
        };
        ScheduleSpec {
            lr: self.lr,
            decay,
            warmup: Warmup::None,
        }
    }

    /// One line: optimizer, rate, decay, dropout, layers, batch, schedule,
    /// and the shift and label smoothing when they are on.
    pub fn summary(&self) -> String {
        let hidden: Vec<String> = self.hidden().iter().map(|w| w.to_string()).collect();
        let mut line = format!(
            "{} lr {:.3e} wd {:.1e} dropout {:.2} hidden {} batch {} {}",
            self.optimizer,
            self.lr,
            self.weight_decay,
            self.dropout,
            hidden.join(","),
            self.batch,
            self.schedule
        );
        if self.shift > 0 {
            line.push_str(&format!(" shift {}", self.shift));
        }
        if self.label_smoothing > 0.0 {
            line.push_str(&format!(" smoothing {:.2}", self.label_smoothing));
        }
        line
    }
}
