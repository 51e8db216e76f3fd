//! Model files: the one writer and the one reader of every safetensors file
//! wgtrain writes, and [`AnyModel`], which loads either format.
//!
//! The metadata is [`Metadata`] (see [`super::header`]). A plain f32 file
//! ([`FORMAT_MLP`]) holds `fcN.weight` (F32 `[out, in]`, the layout of
//! PyTorch's `nn.Linear.weight`) and `fcN.bias` (F32 `[out]`), so PyTorch
//! loads it. A compressed file ([`FORMAT_COMPRESSED`]) holds `fcN.bias` and
//! each layer's weights in the smallest of these encodings, named by the
//! metadata `fcN.encoding`:
//!
//! | encoding       | tensors                                                                         |
//! |----------------|---------------------------------------------------------------------------------|
//! | `dense-f32`    | `fcN.weight` F32 `[out, in]`                                                    |
//! | `dense-int8`   | `fcN.weight_q` I8 `[out, in]`, `fcN.weight_scale` F32 `[out]`                   |
//! | `bitmask-f32`  | `fcN.weight_mask` U8 `[out, ceil(in/8)]`, `fcN.weight_values` F32 `[nnz]`       |
//! | `bitmask-int8` | `fcN.weight_mask`, `fcN.weight_values` I8 `[nnz]`, `fcN.weight_scale` F32 `[out]` |
//!
//! The bitmask is described in [`super::sparse`].
//!
//! An ensemble file ([`FORMAT_ENSEMBLE`]) holds its members' files in one:
//! member `N`'s tensors prefixed `mN.` (`m0.fc1.weight`, ...), its metadata
//! keys prefixed the same way (`m0.layers`, `m0.wgtrain.format`, ...) with
//! `mN.source` naming the file it came from, and `ensemble.members`, the
//! count. Each member is read with every check of its own format, and a
//! tensor or key of no member is refused. Files are written atomically
//! ([`write_atomic`]).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::Serialize;

use super::compressed::{CompressedLinear, CompressedMlp, LayerWeights};
use super::ensemble::{AnyModel, Ensemble, Member};
use super::header::{Format, Header, Metadata, FORMAT_COMPRESSED, FORMAT_ENSEMBLE, FORMAT_KEY, FORMAT_MLP};
use super::int8::QuantizedWeights;
use super::mlp::{Linear, Mlp};
use super::sparse;
use crate::error::ModelError;

/// How one layer of a compressed model was stored.
#[derive(Debug, Clone, Serialize)]
pub struct LayerStorage {
    /// `dense-f32`, `dense-int8`, `bitmask-f32` or `bitmask-int8`.
    pub encoding: &'static str,
    /// Bytes of the layer's tensors (weights, scales, bias), without the
    /// file header.
    pub tensor_bytes: usize,
}

/// Tensors of one file, owned, before serialisation.
struct Tensors(Vec<(String, Dtype, Vec<usize>, Vec<u8>)>);

impl Tensors {
    /// Add a tensor; returns its size in bytes.
    fn push(&mut self, name: String, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> usize {
        let n = data.len();
        self.0.push((name, dtype, shape, data));
        n
    }

    /// The file: the tensors with `meta`.
    fn serialize(&self, meta: &Metadata) -> Result<Vec<u8>, ModelError> {
        self.serialize_map(meta.to_map())
    }

    /// The file: the tensors with the metadata `map`.
    fn serialize_map(&self, map: HashMap<String, String>) -> Result<Vec<u8>, ModelError> {
        let views = self
            .0
            .iter()
            .map(|(n, d, s, b)| {
                TensorView::new(*d, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| ModelError::Invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize(views, Some(map)).map_err(|e| ModelError::Invalid(e.to_string()))
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice::<f32, u8>(v).to_vec()
}

fn i8_bytes(v: &[i8]) -> Vec<u8> {
    bytemuck::cast_slice::<i8, u8>(v).to_vec()
}

/// Tensor `name` of layer `i` (0-based): `fc{i+1}.{name}`.
fn layer_tensor(i: usize, name: &str) -> String {
    format!("fc{}.{name}", i + 1)
}

/// The weights of one compressed layer in the smallest encoding: pushed
/// into `t`; returns the encoding and the bytes pushed.
fn push_weights(t: &mut Tensors, i: usize, l: &CompressedLinear) -> (&'static str, usize) {
    let name = |s: &str| layer_tensor(i, s);
    let (n, rb) = (l.inputs * l.outputs, sparse::row_bytes(l.inputs));
    let nnz = l.nonzeros();
    let mut bytes = 0;
    let mask = |t: &mut Tensors, nonzero: &dyn Fn(usize) -> bool| {
        t.push(
            name("weight_mask"),
            Dtype::U8,
            vec![l.outputs, rb],
            sparse::encode(l.inputs, l.outputs, nonzero),
        )
    };
    let encoding = match &l.weights {
        LayerWeights::F32(w) => {
            if rb * l.outputs + 4 * nnz < 4 * n {
                bytes += mask(t, &|j| w[j] != 0.0);
                let vals: Vec<f32> = w.iter().copied().filter(|&v| v != 0.0).collect();
                bytes += t.push(name("weight_values"), Dtype::F32, vec![nnz], f32_bytes(&vals));
                "bitmask-f32"
            } else {
                bytes += t.push(name("weight"), Dtype::F32, vec![l.outputs, l.inputs], f32_bytes(w));
                "dense-f32"
            }
        }
        LayerWeights::Int8(q) => {
            let enc = if rb * l.outputs + nnz < n {
                bytes += mask(t, &|j| q.q[j] != 0);
                let vals: Vec<i8> = q.q.iter().copied().filter(|&v| v != 0).collect();
                bytes += t.push(name("weight_values"), Dtype::I8, vec![nnz], i8_bytes(&vals));
                "bitmask-int8"
            } else {
                bytes += t.push(name("weight_q"), Dtype::I8, vec![l.outputs, l.inputs], i8_bytes(&q.q));
                "dense-int8"
            };
            bytes += t.push(name("weight_scale"), Dtype::F32, vec![l.outputs], f32_bytes(&q.scale));
            enc
        }
    };
    (encoding, bytes)
}

/// The safetensors container of `bytes` and its metadata map, after
/// checking that the bytes hold exactly what the header lays out; `path`
/// is only used in messages.
fn open<'a>(bytes: &'a [u8], path: &Path) -> Result<(SafeTensors<'a>, HashMap<String, String>), ModelError> {
    let fmt_err = |e: safetensors::SafeTensorError| ModelError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    check_extent(bytes).map_err(|message| ModelError::Format {
        path: path.to_path_buf(),
        message,
    })?;
    let (_, md) = SafeTensors::read_metadata(bytes).map_err(fmt_err)?;
    let st = SafeTensors::deserialize(bytes).map_err(fmt_err)?;
    Ok((st, md.metadata().clone().unwrap_or_default()))
}

/// One model of a file being read: its parsed metadata and the file's
/// tensors, of which it owns those named `prefix` + a model tensor's name
/// (every tensor for a single-model file, `mN.*` for an ensemble's member
/// `N`).
struct Reader<'a> {
    path: &'a Path,
    meta: Metadata,
    st: &'a SafeTensors<'a>,
    prefix: String,
}

impl<'a> Reader<'a> {
    /// The model described by the metadata `md` whose tensors are `prefix`
    /// + their names in `st`; `path` is only used in messages.
    fn new(
        st: &'a SafeTensors<'a>,
        md: &HashMap<String, String>,
        path: &'a Path,
        prefix: String,
    ) -> Result<Self, ModelError> {
        let meta = Metadata::parse(md, path)?;
        Ok(Reader { path, meta, st, prefix })
    }

    fn not_ours(&self, message: String) -> ModelError {
        ModelError::NotWgtrain {
            path: self.path.to_path_buf(),
            message,
        }
    }

    /// The error for a file of the other format.
    fn wrong_format(&self, want: &str) -> ModelError {
        let found = match self.meta.format {
            Format::F32 => FORMAT_MLP,
            Format::Compressed { .. } => FORMAT_COMPRESSED,
        };
        self.not_ours(format!("format `{found}` is not `{want}`"))
    }

    /// The bytes of tensor `name`, which must have `dtype` and `shape`.
    fn tensor(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&'a [u8], ModelError> {
        let t = self.view(name)?;
        let name = format!("{}{name}", self.prefix);
        if t.dtype() != dtype || t.shape() != shape {
            return Err(self.not_ours(format!(
                "tensor `{name}` is {:?} {:?}, expected {dtype:?} {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data())
    }

    /// Tensor `name` (without the prefix) of this model.
    fn view(&self, name: &str) -> Result<TensorView<'a>, ModelError> {
        let full = format!("{}{name}", self.prefix);
        self.st
            .tensor(&full)
            .map_err(|_| self.not_ours(format!("tensor `{full}` is missing")))
    }

    /// An F32 tensor, every value of which must be finite.
    fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let v: Vec<f32> = self
            .tensor(name, Dtype::F32, shape)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(self.not_ours(format!("tensor `{}{name}` holds {x} at index {i}", self.prefix)));
        }
        Ok(v)
    }

    /// Refuse a tensor the layers did not read: `expected` names every one
    /// they did.
    fn no_other_tensors(&self, expected: &[String]) -> Result<(), ModelError> {
        let mut names: Vec<&str> = self
            .st
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix(self.prefix.as_str()))
            .collect();
        names.sort();
        match names.into_iter().find(|n| !expected.iter().any(|e| e == *n)) {
            Some(extra) => Err(self.not_ours(format!(
                "tensor `{}{extra}` is not part of the model the metadata describes (`{}layers` has {} layers)",
                self.prefix,
                self.prefix,
                self.meta.header.sizes.len() - 1
            ))),
            None => Ok(()),
        }
    }

    fn i8s(&self, name: &str, shape: &[usize]) -> Result<Vec<i8>, ModelError> {
        Ok(self.tensor(name, Dtype::I8, shape)?.iter().map(|&v| v as i8).collect())
    }

    /// The weights of a plain f32 file.
    fn mlp(self) -> Result<Mlp, ModelError> {
        if self.meta.format != Format::F32 {
            return Err(self.wrong_format(FORMAT_MLP));
        }
        let h = &self.meta.header;
        let mut layers = Vec::new();
        for (i, (inputs, outputs)) in h.layers().enumerate() {
            layers.push(Linear {
                inputs,
                outputs,
                weight: self.f32s(&layer_tensor(i, "weight"), &[outputs, inputs])?,
                bias: self.f32s(&layer_tensor(i, "bias"), &[outputs])?,
            });
        }
        let expected: Vec<String> = (0..layers.len())
            .flat_map(|i| [layer_tensor(i, "weight"), layer_tensor(i, "bias")])
            .collect();
        self.no_other_tensors(&expected)?;
        let Header {
            input_shape,
            preprocess,
            class_names,
            ..
        } = self.meta.header;
        Ok(Mlp {
            layers,
            preprocess,
            input_shape,
            class_names,
        })
    }

    /// The set positions of layer `i`'s bitmask, which must number as many
    /// as the values the layer stores (`weight_values`, of `dtype`).
    fn mask(&self, i: usize, inputs: usize, outputs: usize) -> Result<Vec<usize>, ModelError> {
        let values = layer_tensor(i, "weight_values");
        let nnz: usize = self.view(&values)?.shape().iter().product();
        let mask_name = layer_tensor(i, "weight_mask");
        let m = self.tensor(&mask_name, Dtype::U8, &[outputs, sparse::row_bytes(inputs)])?;
        let pos = sparse::positions(m, inputs, outputs);
        if pos.len() != nnz {
            let p = &self.prefix;
            return Err(self.not_ours(format!(
                "`{p}{mask_name}` has {} set bits but `{p}{values}` holds {nnz} values",
                pos.len()
            )));
        }
        Ok(pos)
    }

    /// The weights of layer `i` of a compressed file, stored as `encoding`.
    fn layer_weights(
        &self,
        i: usize,
        encoding: &str,
        inputs: usize,
        outputs: usize,
    ) -> Result<LayerWeights, ModelError> {
        let name = |s: &str| layer_tensor(i, s);
        let int8 = |q: Vec<i8>| -> Result<LayerWeights, ModelError> {
            Ok(LayerWeights::Int8(QuantizedWeights {
                inputs,
                outputs,
                q,
                scale: self.f32s(&name("weight_scale"), &[outputs])?,
            }))
        };
        match encoding {
            "dense-f32" => Ok(LayerWeights::F32(self.f32s(&name("weight"), &[outputs, inputs])?)),
            "dense-int8" => int8(self.i8s(&name("weight_q"), &[outputs, inputs])?),
            "bitmask-f32" => {
                let pos = self.mask(i, inputs, outputs)?;
                let vals = self.f32s(&name("weight_values"), &[pos.len()])?;
                Ok(LayerWeights::F32(sparse::scatter(inputs * outputs, &pos, &vals)))
            }
            "bitmask-int8" => {
                let pos = self.mask(i, inputs, outputs)?;
                let vals = self.i8s(&name("weight_values"), &[pos.len()])?;
                int8(sparse::scatter(inputs * outputs, &pos, &vals))
            }
            other => Err(self.not_ours(format!(
                "unknown weight encoding `{other}` of layer {} (`{}fc{}.encoding`)",
                i + 1,
                self.prefix,
                i + 1
            ))),
        }
    }

    /// The layers of a compressed file.
    fn compressed(self) -> Result<CompressedMlp, ModelError> {
        let Format::Compressed { info, encodings } = &self.meta.format else {
            return Err(self.wrong_format(FORMAT_COMPRESSED));
        };
        let mut layers = Vec::new();
        let mut expected = Vec::new();
        for (i, ((inputs, outputs), encoding)) in self.meta.header.layers().zip(encodings).enumerate() {
            let names: &[&str] = match encoding.as_str() {
                "dense-f32" => &["weight"],
                "dense-int8" => &["weight_q", "weight_scale"],
                "bitmask-f32" => &["weight_mask", "weight_values"],
                _ => &["weight_mask", "weight_values", "weight_scale"],
            };
            expected.extend(names.iter().chain(&["bias"]).map(|n| layer_tensor(i, n)));
            layers.push(CompressedLinear {
                inputs,
                outputs,
                weights: self.layer_weights(i, encoding, inputs, outputs)?,
                bias: self.f32s(&layer_tensor(i, "bias"), &[outputs])?,
            });
        }
        self.no_other_tensors(&expected)?;
        let info = info.clone();
        let Header {
            input_shape,
            preprocess,
            class_names,
            ..
        } = self.meta.header;
        Ok(CompressedMlp {
            layers,
            preprocess,
            input_shape,
            class_names,
            info,
        })
    }
}

/// Check that `bytes` hold exactly the tensor data their safetensors
/// header lays out, naming the first tensor a truncated file cuts short.
/// A header that does not parse is left to the safetensors reader.
fn check_extent(bytes: &[u8]) -> Result<(), String> {
    let Some(len) = bytes.get(..8) else {
        return Err(format!(
            "truncated: {} bytes, fewer than the 8 of the header's length",
            bytes.len()
        ));
    };
    let n = u64::from_le_bytes(len.try_into().unwrap_or_default());
    let rest = (bytes.len() - 8) as u64;
    if n > rest {
        return Err(format!(
            "truncated inside the header: it is {n} bytes long but the file holds {rest} after its length"
        ));
    }
    let (header, data) = bytes[8..].split_at(n as usize);
    let Ok(serde_json::Value::Object(header)) = serde_json::from_slice::<serde_json::Value>(header) else {
        return Ok(());
    };
    // (start, end, name) of every tensor, in file order.
    let mut extents: Vec<(u64, u64, &str)> = header
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .filter_map(|(name, t)| {
            let o = t.get("data_offsets")?.as_array()?;
            Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?, name.as_str()))
        })
        .collect();
    extents.sort();
    let data_len = data.len() as u64;
    if let Some((start, end, name)) = extents.iter().find(|(_, end, _)| *end > data_len) {
        return Err(format!(
            "truncated: tensor `{name}` needs bytes {start}..{end} of the tensor data, the file holds {data_len}"
        ));
    }
    let last = extents.iter().map(|e| e.1).max().unwrap_or(0);
    if last < data_len {
        return Err(format!(
            "{} bytes follow the last tensor's data (the header lays out {last} of {data_len})",
            data_len - last
        ));
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Write `bytes` to `path` through a temporary file in the same folder,
/// synced to disk, then renamed (and the folder synced), so neither a
/// failure nor a crash leaves a partial file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let io = |e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let written = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })?;
    // The rename itself is durable once the folder is synced (where the
    // platform can open a folder for that).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl Mlp {
    /// Serialise to safetensors bytes: `fc1.weight`, `fc1.bias`, ... in
    /// `[out, in]` layout, f32 little-endian.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ModelError> {
        let (t, meta) = self.parts();
        t.serialize(&meta)
    }

    /// The tensors and metadata of the file.
    fn parts(&self) -> (Tensors, Metadata) {
        let mut t = Tensors(Vec::new());
        for (i, l) in self.layers.iter().enumerate() {
            t.push(
                layer_tensor(i, "weight"),
                Dtype::F32,
                vec![l.outputs, l.inputs],
                f32_bytes(&l.weight),
            );
            t.push(layer_tensor(i, "bias"), Dtype::F32, vec![l.outputs], f32_bytes(&l.bias));
        }
        let meta = Metadata {
            header: self.header(),
            format: Format::F32,
        };
        (t, meta)
    }

    /// Write the model atomically ([`write_atomic`]).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        write_atomic(path, &self.to_safetensors()?)
    }

    /// Parse a plain f32 model file; `path` is only used in messages.
    pub fn from_safetensors(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        let (st, md) = open(bytes, path)?;
        Reader::new(&st, &md, path, String::new())?.mlp()
    }

    /// Load a plain f32 model file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::from_safetensors(&read_file(path)?, path)
    }
}

impl CompressedMlp {
    /// Serialise, choosing for each layer the smallest encoding; returns
    /// the bytes and how each layer was stored.
    pub fn to_safetensors(&self) -> Result<(Vec<u8>, Vec<LayerStorage>), ModelError> {
        let (t, storage, meta) = self.parts();
        Ok((t.serialize(&meta)?, storage))
    }

    /// The tensors, storage and metadata of the file.
    fn parts(&self) -> (Tensors, Vec<LayerStorage>, Metadata) {
        let mut t = Tensors(Vec::new());
        let mut storage = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let (encoding, weight_bytes) = push_weights(&mut t, i, l);
            let bias_bytes = t.push(layer_tensor(i, "bias"), Dtype::F32, vec![l.outputs], f32_bytes(&l.bias));
            storage.push(LayerStorage {
                encoding,
                tensor_bytes: weight_bytes + bias_bytes,
            });
        }
        let meta = Metadata {
            header: self.header(),
            format: Format::Compressed {
                info: self.info.clone(),
                encodings: storage.iter().map(|s| s.encoding.to_string()).collect(),
            },
        };
        (t, storage, meta)
    }

    /// Write atomically; returns how each layer was stored and the file size.
    pub fn save(&self, path: &Path) -> Result<(Vec<LayerStorage>, usize), ModelError> {
        let (bytes, storage) = self.to_safetensors()?;
        write_atomic(path, &bytes)?;
        Ok((storage, bytes.len()))
    }

    /// Parse a compressed model file; `path` is only used in messages.
    pub fn from_safetensors(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        let (st, md) = open(bytes, path)?;
        Reader::new(&st, &md, path, String::new())?.compressed()
    }

    /// Load a compressed model file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::from_safetensors(&read_file(path)?, path)
    }
}

/// The metadata key of an ensemble file holding its member count.
const MEMBERS_KEY: &str = "ensemble.members";

/// The most members an ensemble file may declare (a guard against a
/// damaged count, far above any useful ensemble).
const MAX_MEMBERS: usize = 4096;

/// The prefix of member `i`'s tensors and keys.
fn member_prefix(i: usize) -> String {
    format!("m{i}.")
}

/// The member a tensor or key `name` of an ensemble file belongs to: `N`
/// of `mN.` (written without leading zeros).
fn member_of(name: &str) -> Option<usize> {
    let (n, _) = name.strip_prefix('m')?.split_once('.')?;
    let i: usize = n.parse().ok()?;
    (i.to_string() == n).then_some(i)
}

impl AnyModel {
    /// Read a model file of any format, by its `wgtrain.format`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::from_safetensors(&read_file(path)?, path)
    }

    /// Parse a model file of any format; `path` is only used in messages.
    pub fn from_safetensors(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        let (st, md) = open(bytes, path)?;
        if md.get(FORMAT_KEY).map(String::as_str) == Some(FORMAT_ENSEMBLE) {
            return Ok(AnyModel::Ensemble(read_ensemble(&st, &md, path)?));
        }
        let r = Reader::new(&st, &md, path, String::new())?;
        match r.meta.format {
            Format::F32 => Ok(AnyModel::F32(r.mlp()?)),
            Format::Compressed { .. } => Ok(AnyModel::Compressed(r.compressed()?)),
        }
    }
}

/// The members of an ensemble file, each read with every check of its own
/// format.
fn read_ensemble(st: &SafeTensors<'_>, md: &HashMap<String, String>, path: &Path) -> Result<Ensemble, ModelError> {
    let not_ours = |message: String| ModelError::NotWgtrain {
        path: path.to_path_buf(),
        message,
    };
    let count = md
        .get(MEMBERS_KEY)
        .ok_or_else(|| not_ours(format!("metadata has no `{MEMBERS_KEY}`")))?;
    let n: usize = count
        .parse()
        .ok()
        .filter(|n| (super::ensemble::MIN_MEMBERS..=MAX_MEMBERS).contains(n))
        .ok_or_else(|| {
            not_ours(format!(
                "metadata `{MEMBERS_KEY}` = `{count}` is not a member count from {} to {MAX_MEMBERS}",
                super::ensemble::MIN_MEMBERS
            ))
        })?;
    let mut tensors = st.names();
    tensors.sort();
    if let Some(t) = tensors.iter().find(|t| member_of(t).is_none_or(|i| i >= n)) {
        return Err(not_ours(format!(
            "tensor `{t}` belongs to no member (`{MEMBERS_KEY}` is {n})"
        )));
    }
    let mut keys: Vec<&String> = md.keys().collect();
    keys.sort();
    let top = [FORMAT_KEY, "wgtrain.version", MEMBERS_KEY];
    if let Some(k) = keys
        .iter()
        .find(|k| !top.contains(&k.as_str()) && member_of(k).is_none_or(|i| i >= n))
    {
        return Err(not_ours(format!(
            "metadata `{k}` belongs to no member (`{MEMBERS_KEY}` is {n})"
        )));
    }
    let mut members = Vec::with_capacity(n);
    for i in 0..n {
        let prefix = member_prefix(i);
        let sub: HashMap<String, String> = md
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix.as_str())?.to_string(), v.clone())))
            .collect();
        if sub.get(FORMAT_KEY).map(String::as_str) == Some(FORMAT_ENSEMBLE) {
            return Err(not_ours(format!(
                "member {i} is an ensemble itself; ensembles do not nest"
            )));
        }
        let in_member = |e: ModelError| match e {
            ModelError::NotWgtrain { path, message } => ModelError::NotWgtrain {
                path,
                message: format!("ensemble member {i} (`{prefix}*`): {message}"),
            },
            other => other,
        };
        let r = Reader::new(st, &sub, path, prefix.clone()).map_err(in_member)?;
        let model = match r.meta.format {
            Format::F32 => AnyModel::F32(r.mlp().map_err(in_member)?),
            Format::Compressed { .. } => AnyModel::Compressed(r.compressed().map_err(in_member)?),
        };
        let source = sub.get("source").cloned().unwrap_or_else(|| format!("member {i}"));
        members.push(Member { model, source });
    }
    Ensemble::new(members)
}

impl Ensemble {
    /// Serialise every member into one file (see the module docs).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ModelError> {
        let mut all = Tensors(Vec::new());
        let mut map = HashMap::from([
            (FORMAT_KEY.to_string(), FORMAT_ENSEMBLE.to_string()),
            ("wgtrain.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            (MEMBERS_KEY.to_string(), self.members().len().to_string()),
        ]);
        for (i, m) in self.members().iter().enumerate() {
            let (t, meta) = match &m.model {
                AnyModel::F32(f) => f.parts(),
                AnyModel::Compressed(c) => {
                    let (t, _, meta) = c.parts();
                    (t, meta)
                }
                AnyModel::Ensemble(_) => {
                    return Err(ModelError::Ensemble(format!(
                        "{} is an ensemble itself; ensembles do not nest",
                        m.source
                    )))
                }
            };
            let prefix = member_prefix(i);
            for (name, dtype, shape, data) in t.0 {
                all.push(format!("{prefix}{name}"), dtype, shape, data);
            }
            map.extend(meta.to_map().into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
            map.insert(format!("{prefix}source"), m.source.clone());
        }
        all.serialize_map(map)
    }

    /// Write the ensemble atomically ([`write_atomic`]); returns the file
    /// size.
    pub fn save(&self, path: &Path) -> Result<usize, ModelError> {
        let bytes = self.to_safetensors()?;
        write_atomic(path, &bytes)?;
        Ok(bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Normalize, Preprocess};
    use crate::model::CompressionInfo;

    fn model() -> Mlp {
        let p = Preprocess {
            kind: Normalize::Standardize,
            scale: 3.5,
            offset: -0.25,
        };
        Mlp::new(&[5, 4, 3, 2], 7, p, vec![5]).unwrap()
    }

    #[test]
    fn safetensors_round_trip() {
        let m = model();
        let bytes = m.to_safetensors().unwrap();
        let back = Mlp::from_safetensors(&bytes, Path::new("m")).unwrap();
        assert_eq!(m, back);
    }

    fn names(prefix: &str) -> Vec<String> {
        vec![format!("{prefix} a"), format!("{prefix} b")]
    }

    #[test]
    fn class_names_survive_every_file_format() {
        let m = model().with_class_names(names("x")).unwrap();
        let back = Mlp::from_safetensors(&m.to_safetensors().unwrap(), Path::new("m")).unwrap();
        assert_eq!(back.class_names, names("x"));
        let c = CompressedMlp::from_mlp(&m, true, CompressionInfo::default());
        assert_eq!(c.class_names, names("x"));
        let (bytes, _) = c.to_safetensors().unwrap();
        let back = CompressedMlp::from_safetensors(&bytes, Path::new("m")).unwrap();
        assert_eq!(back.class_names, names("x"));
        assert_eq!(back.to_mlp().class_names, names("x"));
        // An ensemble of a named and an unnamed member carries the names.
        let members = vec![
            Member {
                model: AnyModel::F32(m.clone()),
                source: "a".into(),
            },
            Member {
                model: AnyModel::F32(model()),
                source: "b".into(),
            },
        ];
        let e = Ensemble::new(members).unwrap();
        let back = AnyModel::from_safetensors(&e.to_safetensors().unwrap(), Path::new("e")).unwrap();
        assert_eq!(back.class_names(), &names("x")[..]);
        // Members that name their classes otherwise are refused, naming both.
        let other = model().with_class_names(names("y")).unwrap();
        let members = [m, model(), other].into_iter().enumerate().map(|(i, m)| Member {
            model: AnyModel::F32(m),
            source: format!("m{i}.safetensors"),
        });
        let err = Ensemble::new(members.collect()).unwrap_err().to_string();
        assert!(
            err.contains("m0.safetensors") && err.contains("m2.safetensors"),
            "{err}"
        );
        // A wrong count is refused before a file is written.
        let err = model().with_class_names(vec!["only".into()]).unwrap_err().to_string();
        assert!(err.contains("1 class names for a model of 2 classes"), "{err}");
    }

    #[test]
    fn each_reader_refuses_the_other_format() {
        let f32_file = model().to_safetensors().unwrap();
        let c = CompressedMlp::from_mlp(&model(), true, CompressionInfo::default());
        let (compressed_file, _) = c.to_safetensors().unwrap();
        let e = CompressedMlp::from_safetensors(&f32_file, Path::new("m")).unwrap_err();
        assert!(e.to_string().contains("`mlp-f32-v1` is not `mlp-compressed-v1`"), "{e}");
        let e = Mlp::from_safetensors(&compressed_file, Path::new("m")).unwrap_err();
        assert!(e.to_string().contains("`mlp-compressed-v1` is not `mlp-f32-v1`"), "{e}");
        assert_eq!(
            AnyModel::from_safetensors(&compressed_file, Path::new("m")).unwrap(),
            AnyModel::Compressed(c)
        );
    }
}
