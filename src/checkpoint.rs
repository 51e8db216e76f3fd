//! Checkpoints of a training run: the backend's state (parameters,
//! optimizer state, update count), the loop's position and trackers, the
//! best-validation model so far, and a fingerprint of the data and the
//! configuration, in one safetensors file.
//!
//! Tensors: `fcN.weight` and `fcN.bias` (the current parameters),
//! `fcN.weight.stateK` and `fcN.bias.stateK` (the optimizer's slots), and
//! `best.fcN.weight`, `best.fcN.bias` when a best model is kept,
//! `swa.fcN.weight`, `swa.fcN.bias` when a weight average is. The
//! metadata holds [`FORMAT`], the layer sizes and preprocessing, the
//! class names when the model has them (`class_names`, as in a model file), the
//! [`LoopState`] and [`Fingerprint`] as JSON, the caller's own JSON
//! (`extra`), and a checksum of every tensor's bytes, so a truncated or
//! altered file is refused. Files are named `ckpt-eEEEE-sSSSSSS.safetensors`
//! (epoch, steps done in it), written atomically, and the newest `keep`
//! are kept.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::backend::{join_sizes, BackendState, LayerSlots, StepStats};
use crate::data::{Dataset, Preprocess};
use crate::error::{Error, Result};
use crate::model::{write_atomic, Linear, Mlp, CLASS_NAMES_KEY};

/// The `format` metadata of a checkpoint file.
pub const FORMAT: &str = "wgtrain-checkpoint-v1";

/// Where the training loop stands, and what it has tracked so far. Floats
/// are kept as their bits so that a resumed run compares exactly as the
/// uninterrupted one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LoopState {
    /// The epoch under way (from 1).
    pub epoch: usize,
    /// Steps of it done.
    pub step: usize,
    /// Whether the epoch's end (evaluation, best model) is done too.
    pub epoch_complete: bool,
    /// Steps done in the run (across epochs).
    pub global_step: usize,
    /// Epochs finished.
    pub epochs_run: usize,
    /// Whether early stopping has ended the run.
    pub stopped_early: bool,
    /// The best epoch and its figure's bits.
    pub best: Option<(usize, u64)>,
    /// Epochs since the best one.
    pub since: usize,
    /// Validation loss and accuracy bits of the best model (stored as
    /// `best.*` tensors).
    pub best_figures: Option<(u64, u64)>,
    /// The epoch's training figures so far, and those not yet logged.
    pub epoch_stats: Stats,
    /// The training figures since the last log point.
    pub pending_stats: Stats,
    /// Epochs in the weight average (stored as `swa.*` tensors); 0: none
    /// (and in checkpoints written before weight averaging existed).
    #[serde(default)]
    pub swa_count: usize,
}

/// [`StepStats`] with the loss sum as bits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Stats {
    /// The sum of the examples' losses, as `f64` bits.
    pub loss_sum_bits: u64,
    /// Examples whose arg-max was the label.
    pub correct: u64,
    /// Examples seen.
    pub examples: u64,
    /// Steps run.
    pub steps: u64,
}

impl From<StepStats> for Stats {
    fn from(s: StepStats) -> Self {
        Stats {
            loss_sum_bits: s.loss_sum.to_bits(),
            correct: s.correct,
            examples: s.examples,
            steps: s.steps,
        }
    }
}

impl From<Stats> for StepStats {
    fn from(s: Stats) -> Self {
        StepStats {
            loss_sum: f64::from_bits(s.loss_sum_bits),
            correct: s.correct,
            examples: s.examples,
            steps: s.steps,
        }
    }
}

/// Readable fields naming the data and every setting a resumed run must
/// share with the run that wrote the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Fingerprint(pub BTreeMap<String, String>);

impl Fingerprint {
    /// Set field `name` to `value`.
    pub fn set(&mut self, name: &str, value: impl std::fmt::Display) {
        self.0.insert(name.to_string(), value.to_string());
    }

    /// Refuse a checkpoint (`saved`, read from `path`) whose fields differ
    /// from these, naming each field and both values.
    pub fn check(&self, saved: &Fingerprint, path: &Path) -> Result<()> {
        let none = "(none)".to_string();
        let diffs: Vec<String> = self
            .0
            .keys()
            .chain(saved.0.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter_map(|k| {
                let (s, c) = (saved.0.get(k).unwrap_or(&none), self.0.get(k).unwrap_or(&none));
                (s != c).then(|| format!("{k}: the checkpoint was written with {s}, this run has {c}"))
            })
            .collect();
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(checkpoint_error(
                path,
                format!("does not match this run: {}", diffs.join("; ")),
            ))
        }
    }
}

/// A 64-bit hash of bytes, in four lanes of eight bytes (not
/// cryptographic: it tells files and datasets apart and finds damaged
/// bytes; about 40 ms for Fashion-MNIST's 220 MB of features).
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, w: u64| (h.rotate_left(23) ^ w).wrapping_mul(K);
    let word = |c: &[u8]| c.iter().rev().fold(0u64, |w, &b| (w << 8) | u64::from(b));
    let mut lanes = [seed, seed ^ 0x243f_6a88, seed ^ 0x85a3_08d3, seed ^ 0x1319_8a2e];
    let mut blocks = bytes.chunks_exact(32);
    for b in &mut blocks {
        lanes[0] = mix(
            lanes[0],
            u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        );
        lanes[1] = mix(
            lanes[1],
            u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        );
        lanes[2] = mix(
            lanes[2],
            u64::from_le_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]),
        );
        lanes[3] = mix(
            lanes[3],
            u64::from_le_bytes([b[24], b[25], b[26], b[27], b[28], b[29], b[30], b[31]]),
        );
    }
    let mut h = lanes.iter().fold(bytes.len() as u64, |h, &l| mix(h, l));
    for c in blocks.remainder().chunks(8) {
        h = mix(h, word(c) ^ ((c.len() as u64) << 56));
    }
    mix(h ^ (h >> 29), seed)
}

/// The hash of every split's features and labels, the classes and the
/// shape of `data`, as hex.
pub fn data_hash(data: &Dataset) -> String {
    let mut h = data.classes as u64;
    for s in [&data.train, &data.validation, &data.test] {
        h = hash_bytes(h, bytemuck::cast_slice(&s.features));
        h = hash_bytes(h, bytemuck::cast_slice(&s.labels));
    }
    for &d in &data.shape {
        h = hash_bytes(h, &(d as u64).to_le_bytes());
    }
    format!("{h:016x}")
}

/// A checkpoint read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The file read.
    pub path: PathBuf,
    /// The backend's parameters, optimizer state and update count.
    pub state: BackendState,
    /// Where the loop stood.
    pub loop_state: LoopState,
    /// The best-validation model so far.
    pub best: Option<Mlp>,
    /// The weight average so far (`loop_state.swa_count` epochs).
    pub swa: Option<Mlp>,
    /// The data and settings of the run that wrote it.
    pub fingerprint: Fingerprint,
    /// The caller's JSON, as written.
    pub extra: String,
}

fn checkpoint_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The file name of the checkpoint after `step` steps of `epoch`.
pub fn file_name(epoch: usize, step: usize) -> String {
    format!("ckpt-e{epoch:04}-s{step:06}.safetensors")
}

/// `(epoch, step)` of a checkpoint file name, `None` for any other name.
fn parse_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("ckpt-e")?.strip_suffix(".safetensors")?;
    let (e, s) = rest.split_once("-s")?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !(digits(e) && digits(s) && e.len() >= 4 && s.len() >= 6) {
        return None;
    }
    Some((e.parse().ok()?, s.parse().ok()?))
}

/// The checkpoint files of `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| checkpoint_error(dir, format!("cannot read the folder: {e}")))?;
    let mut found: Vec<((usize, usize), PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            Some((parse_name(&name)?, e.path()))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// The newest checkpoint of `dir`, or `path` itself when it is a file.
pub fn latest(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    list(path)?
        .pop()
        .ok_or_else(|| checkpoint_error(path, "holds no checkpoint (ckpt-e*-s*.safetensors)"))
}

/// What [`write()`] stores.
pub struct Contents<'a> {
    /// The backend's parameters, optimizer state and update count.
    pub state: &'a BackendState,
    /// Where the loop stands.
    pub loop_state: &'a LoopState,
    /// The best-validation model so far.
    pub best: Option<&'a Mlp>,
    /// The weight average (its count is `loop_state.swa_count`).
    pub swa: Option<&'a Mlp>,
    /// The data and settings a resumed run must share.
    pub fingerprint: &'a Fingerprint,
    /// The caller's JSON (the binary's arguments), stored as written.
    pub extra: &'a str,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice::<f32, u8>(v).to_vec()
}

/// Write a checkpoint into `dir` (created if need be) atomically, then
/// delete all but the newest `keep` checkpoint files there; returns the
/// file written.
pub fn write(dir: &Path, c: &Contents<'_>, keep: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| checkpoint_error(dir, format!("cannot create the folder: {e}")))?;
    let path = dir.join(file_name(c.loop_state.epoch, c.loop_state.step));
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let push_model = |t: &mut Vec<(String, Vec<usize>, Vec<u8>)>, prefix: &str, m: &Mlp| {
        for (i, l) in m.layers.iter().enumerate() {
            let n = i + 1;
            t.push((
                format!("{prefix}fc{n}.weight"),
                vec![l.outputs, l.inputs],
                f32_bytes(&l.weight),
            ));
            t.push((format!("{prefix}fc{n}.bias"), vec![l.outputs], f32_bytes(&l.bias)));
        }
    };
    push_model(&mut tensors, "", &c.state.model);
    for (i, (s, l)) in c.state.slots.iter().zip(&c.state.model.layers).enumerate() {
        let n = i + 1;
        for (k, w) in s.weight.iter().enumerate() {
            tensors.push((
                format!("fc{n}.weight.state{k}"),
                vec![l.outputs, l.inputs],
                f32_bytes(w),
            ));
        }
        for (k, b) in s.bias.iter().enumerate() {
            tensors.push((format!("fc{n}.bias.state{k}"), vec![l.outputs], f32_bytes(b)));
        }
    }
    if let Some(b) = c.best {
        push_model(&mut tensors, "best.", b);
    }
    if let Some(a) = c.swa {
        push_model(&mut tensors, "swa.", a);
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let checksum = tensors.iter().fold(0u64, |h, (name, _, bytes)| {
        hash_bytes(hash_bytes(h, name.as_bytes()), bytes)
    });
    let json = |v: &dyn erased::Json| v.json().map_err(|e| checkpoint_error(&path, e));
    let m = &c.state.model;
    let meta: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("sizes", join_sizes(&m.sizes())),
        ("input_shape", json(&m.input_shape)?),
        ("preprocess", json(&m.preprocess)?),
        ("updates", c.state.updates.to_string()),
        ("slots", c.state.slots.first().map_or(0, |s| s.weight.len()).to_string()),
        ("loop", json(c.loop_state)?),
        ("fingerprint", json(c.fingerprint)?),
        ("extra", c.extra.to_string()),
        ("checksum", format!("{checksum:016x}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut meta = meta;
    if !m.class_names.is_empty() {
        meta.insert(CLASS_NAMES_KEY.to_string(), json(&m.class_names)?);
    }
    let views = tensors
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| checkpoint_error(&path, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| checkpoint_error(&path, e.to_string()))?;
    write_atomic(&path, &bytes)?;
    let files = list(dir)?;
    for old in files.iter().take(files.len().saturating_sub(keep.max(1))) {
        if old != &path {
            std::fs::remove_file(old)
                .map_err(|e| checkpoint_error(old, format!("cannot delete an old checkpoint: {e}")))?;
        }
    }
    Ok(path)
}

/// JSON of any serializable value (a small object-safe shim).
mod erased {
    pub trait Json {
        fn json(&self) -> Result<String, String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Result<String, String> {
            serde_json::to_string(self).map_err(|e| e.to_string())
        }
    }
}

/// Read and check a checkpoint file: its container, format, checksum and
/// tensor shapes.
pub fn read(path: &Path) -> Result<Checkpoint> {
    parse(path, &read_bytes(path)?)
}

/// The bytes of a checkpoint file, unchecked (for [`parse`] elsewhere: a
/// distributed run's rank 0 reads the file and sends the bytes to the
/// other ranks).
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| checkpoint_error(path, format!("cannot read: {e}")))
}

/// [`read`] from the bytes of the file at `path`.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let bad = |m: String| checkpoint_error(path, m);
    let (_, md) =
        SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a checkpoint (truncated or damaged?): {e}")))?;
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a checkpoint (truncated or damaged?): {e}")))?;
    let meta = md.metadata().clone().unwrap_or_default();
    let get = |k: &str| meta.get(k).ok_or_else(|| bad(format!("metadata `{k}` is missing")));
    if get("format")? != FORMAT {
        return Err(bad(format!("format `{}` is not `{FORMAT}`", get("format")?)));
    }
    let parse_json = |k: &str| -> Result<serde_json::Value> {
        serde_json::from_str(get(k)?).map_err(|e| bad(format!("metadata `{k}`: {e}")))
    };
    let typed = |k: &str| -> Result<serde_json::Value> { parse_json(k) };
    let loop_state: LoopState =
        serde_json::from_value(typed("loop")?).map_err(|e| bad(format!("metadata `loop`: {e}")))?;
    let fingerprint: Fingerprint =
        serde_json::from_value(typed("fingerprint")?).map_err(|e| bad(format!("metadata `fingerprint`: {e}")))?;
    let preprocess: Preprocess =
        serde_json::from_value(typed("preprocess")?).map_err(|e| bad(format!("metadata `preprocess`: {e}")))?;
    let input_shape: Vec<usize> =
        serde_json::from_value(typed("input_shape")?).map_err(|e| bad(format!("metadata `input_shape`: {e}")))?;
    let class_names: Vec<String> = match meta.get(CLASS_NAMES_KEY) {
        None => vec![],
        Some(v) => serde_json::from_str(v).map_err(|e| bad(format!("metadata `{CLASS_NAMES_KEY}`: {e}")))?,
    };
    let num = |k: &str| -> Result<u64> { get(k)?.parse().map_err(|e| bad(format!("metadata `{k}`: {e}"))) };
    let updates = num("updates")?;
    let slots = num("slots")? as usize;
    let sizes: Vec<usize> = get("sizes")?
        .split('-')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("metadata `sizes`: {e}")))?;
    if sizes.len() < 2 || sizes.contains(&0) {
        return Err(bad(format!("metadata `sizes` {sizes:?} names no model")));
    }
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut checksum = 0u64;
    for n in &names {
        let t = st.tensor(n).map_err(|e| bad(e.to_string()))?;
        checksum = hash_bytes(hash_bytes(checksum, n.as_bytes()), t.data());
    }
    if format!("{checksum:016x}") != *get("checksum")? {
        return Err(bad(
            "the tensor bytes do not match the stored checksum (damaged file)".into()
        ));
    }
    let f32s = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = st
            .tensor(name)
            .map_err(|_| bad(format!("tensor `{name}` is missing")))?;
        if t.dtype() != Dtype::F32 || t.shape() != shape {
            return Err(bad(format!(
                "tensor `{name}` is {:?} {:?}, expected F32 {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(bytemuck::pod_collect_to_vec(t.data()))
    };
    let model_of = |prefix: &str| -> Result<Mlp> {
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                Ok(Linear {
                    inputs: w[0],
                    outputs: w[1],
                    weight: f32s(&format!("{prefix}fc{}.weight", i + 1), &[w[1], w[0]])?,
                    bias: f32s(&format!("{prefix}fc{}.bias", i + 1), &[w[1]])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Mlp {
            layers,
            preprocess,
            input_shape: input_shape.clone(),
            class_names: vec![],
        }
        .with_class_names(class_names.clone())
        .map_err(|e| bad(format!("metadata `{CLASS_NAMES_KEY}`: {e}")))
    };
    let model = model_of("")?;
    let slots = model
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let n = i + 1;
            Ok(LayerSlots {
                weight: (0..slots)
                    .map(|k| f32s(&format!("fc{n}.weight.state{k}"), &[l.outputs, l.inputs]))
                    .collect::<Result<_>>()?,
                bias: (0..slots)
                    .map(|k| f32s(&format!("fc{n}.bias.state{k}"), &[l.outputs]))
                    .collect::<Result<_>>()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let best = match loop_state.best_figures {
        Some(_) => Some(model_of("best.")?),
        None => None,
    };
    let swa = match loop_state.swa_count {
        0 => None,
        _ => Some(model_of("swa.")?),
    };
    Ok(Checkpoint {
        path: path.to_path_buf(),
        state: BackendState { model, slots, updates },
        loop_state,
        best,
        swa,
        fingerprint,
        extra: get("extra")?.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_epoch_and_step() {
        assert_eq!(parse_name(&file_name(3, 120)), Some((3, 120)));
        assert_eq!(parse_name(&file_name(12345, 1234567)), Some((12345, 1234567)));
        assert_eq!(parse_name("ckpt-e3-s1.safetensors"), None);
        assert_eq!(parse_name("model.safetensors"), None);
    }

    #[test]
    fn hash_tells_one_changed_byte() {
        let a: Vec<u8> = (0..1001u32).map(|i| (i * 7 % 251) as u8).collect();
        let h = hash_bytes(0, &a);
        for at in [0, 5, 31, 32, 500, 999, 1000] {
            let mut b = a.clone();
            b[at] ^= 1;
            assert_ne!(hash_bytes(0, &b), h, "byte {at}");
        }
        for len in [0, 1, 8, 31, 32, 33, 1000] {
            assert_ne!(hash_bytes(0, &a[..len]), h, "length {len}");
        }
        assert_ne!(hash_bytes(1, &a), h);
        assert_eq!(hash_bytes(0, &a.clone()), h);
    }

    #[test]
    fn class_names_come_back_with_the_model_and_the_best_one() {
        let named = Mlp::new(&[4, 3], 1, Preprocess::identity(), vec![])
            .unwrap()
            .with_class_names(vec!["x".into(), "y".into(), "z".into()])
            .unwrap();
        let dir = std::env::temp_dir().join(format!("wgtrain-ck-names-{}", std::process::id()));
        let loop_state = LoopState {
            epoch: 1,
            best_figures: Some((0, 0)),
            ..LoopState::default()
        };
        let write_one = |model: &Mlp| {
            let state = BackendState {
                model: model.clone(),
                slots: vec![LayerSlots {
                    weight: vec![],
                    bias: vec![],
                }],
                updates: 0,
            };
            let c = Contents {
                state: &state,
                loop_state: &loop_state,
                best: Some(model),
                swa: None,
                fingerprint: &Fingerprint::default(),
                extra: "{}",
            };
            read(&write(&dir, &c, 1).unwrap()).unwrap()
        };
        let back = write_one(&named);
        assert_eq!(back.state.model, named);
        assert_eq!(back.best.as_ref(), Some(&named));
        // Without names the file has no key and reads back without names.
        let plain = Mlp {
            class_names: vec![],
            ..named
        };
        let back = write_one(&plain);
        assert!(back.state.model.class_names.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
