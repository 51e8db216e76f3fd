//! What a model file says besides its tensors: the [`Header`] every model
//! shares (layer widths, input shape, preprocessing), and [`Metadata`], the
//! one writer and parser of the safetensors metadata keys.
//!
//! Every file has `wgtrain.format` ([`FORMAT_KEY`]), `wgtrain.version`,
//! `layers` (the widths, comma-separated), `activation` (`relu`),
//! `input_shape` (comma-separated, may be empty), `normalize`,
//! `input_scale` and `input_offset` (f32 in `{:e}` notation), and, when the
//! model has class names, `class_names` ([`CLASS_NAMES_KEY`], a JSON array
//! of strings, one per class; no key when it has none). A plain f32
//! file adds `format = pt`, so PyTorch tools take it for theirs; a
//! compressed one adds the `compress.*` keys of [`CompressionInfo`] and
//! `fcN.encoding` naming each layer's weight encoding.

use std::collections::HashMap;
use std::path::Path;

use super::info::{Activations, CompressionInfo, Scope};
use crate::data::{Normalize, Preprocess};
use crate::error::ModelError;

/// Metadata key naming the file's format.
pub const FORMAT_KEY: &str = "wgtrain.format";
/// Value of [`FORMAT_KEY`] for a plain f32 MLP.
pub const FORMAT_MLP: &str = "mlp-f32-v1";
/// Value of [`FORMAT_KEY`] for a compressed MLP.
pub const FORMAT_COMPRESSED: &str = "mlp-compressed-v1";
/// Value of [`FORMAT_KEY`] for an ensemble of models (see [`super::file`]);
/// [`Metadata`] describes one model and refuses it.
pub const FORMAT_ENSEMBLE: &str = "ensemble-v1";
/// Metadata key of the class names: a JSON array of strings, one per
/// class in class order; absent when the model has none.
pub const CLASS_NAMES_KEY: &str = "class_names";

/// Two models that name their classes differently: each with its label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NamesMismatch<'a, L> {
    /// The first model that has names.
    pub first: (L, &'a [String]),
    /// The first later one whose names differ.
    pub other: (L, &'a [String]),
}

/// The class names that the models with names among `models` (label,
/// names; empty: none) share: `Ok(None)` when none has names, else the
/// first that has them with its label, or the first disagreement. Models
/// without names agree with any.
pub fn shared_class_names<'a, L: Copy>(
    models: impl IntoIterator<Item = (L, &'a [String])>,
) -> Result<Option<(L, &'a [String])>, NamesMismatch<'a, L>> {
    let mut named = models.into_iter().filter(|(_, n)| !n.is_empty());
    let Some(first) = named.next() else {
        return Ok(None);
    };
    match named.find(|(_, n)| *n != first.1) {
        Some(other) => Err(NamesMismatch { first, other }),
        None => Ok(Some(first)),
    }
}

/// Check class names for a model of `classes` classes: one per class, each
/// non-empty, without line breaks or surrounding white space, none twice.
/// An empty list (no names) always passes. The message says what is wrong
/// and, for a bad name, gives its position (from 1).
pub fn check_class_names(names: &[String], classes: usize) -> Result<(), String> {
    if names.is_empty() {
        return Ok(());
    }
    if names.len() != classes {
        return Err(format!(
            "{} class names for a model of {classes} classes (give one name per class)",
            names.len()
        ));
    }
    for (i, n) in names.iter().enumerate() {
        let at = i + 1;
        if n.trim().is_empty() {
            return Err(format!("class name {at} is empty"));
        }
        if n.trim() != n {
            return Err(format!("class name {at} `{n}` begins or ends with white space"));
        }
        if n.chars().any(char::is_control) {
            return Err(format!(
                "class name {at} {n:?} holds a control character (a line break?)"
            ));
        }
        if let Some(j) = names[..i].iter().position(|m| m == n) {
            return Err(format!("class name {at} `{n}` is also class name {}", j + 1));
        }
    }
    Ok(())
}

/// The description every model carries besides its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Layer widths, inputs first, classes last: at least two, none zero
    /// in a model that was built or loaded.
    pub sizes: Vec<usize>,
    /// Shape of one input example (e.g. `[28, 28]`), for predict.
    pub input_shape: Vec<usize>,
    /// How raw inputs are mapped before the first layer.
    pub preprocess: Preprocess,
    /// The name of each class, in class order (see
    /// [`check_class_names`]); empty when the model has none.
    pub class_names: Vec<String>,
}

impl Header {
    /// Values per input row.
    pub fn inputs(&self) -> usize {
        self.sizes.first().copied().unwrap_or(0)
    }

    /// Number of classes (outputs of the last layer).
    pub fn classes(&self) -> usize {
        if self.sizes.len() < 2 {
            return 0;
        }
        self.sizes.last().copied().unwrap_or(0)
    }

    /// `(inputs, outputs)` of each layer, first layer first.
    pub fn layers(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.sizes.windows(2).map(|w| (w[0], w[1]))
    }

    /// The name of class `class`, when the model has names.
    pub fn class_name(&self, class: usize) -> Option<&str> {
        self.class_names.get(class).map(String::as_str)
    }
}

/// What a file's format adds to the [`Header`].
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// [`FORMAT_MLP`]: dense f32 weights.
    F32,
    /// [`FORMAT_COMPRESSED`]: how the model was made, and the weight
    /// encoding of each layer (`dense-f32`, `dense-int8`, `bitmask-f32`,
    /// `bitmask-int8`; see [`super::file`]).
    Compressed {
        /// How the model was made.
        info: CompressionInfo,
        /// Each layer's weight encoding, input layer first.
        encodings: Vec<String>,
    },
}

/// The metadata of one model file.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// Layer widths, input shape, preprocessing and class names.
    pub header: Header,
    /// The file's format and what it adds.
    pub format: Format,
}

/// Whether `format` names a later version of one of the formats, e.g.
/// `mlp-f32-v2`.
fn newer_format(format: &str) -> bool {
    [FORMAT_MLP, FORMAT_COMPRESSED, FORMAT_ENSEMBLE].iter().any(|known| {
        let (stem, ours) = known.rsplit_once("-v").unwrap_or((known, "1"));
        let ours: u32 = ours.parse().unwrap_or(1);
        format
            .strip_prefix(stem)
            .and_then(|r| r.strip_prefix("-v"))
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|v| v > ours)
    })
}

fn join(v: &[usize]) -> String {
    v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")
}

impl Metadata {
    /// The key-value pairs written into the file.
    pub fn to_map(&self) -> HashMap<String, String> {
        let h = &self.header;
        let p = &h.preprocess;
        let format = match self.format {
            Format::F32 => FORMAT_MLP,
            Format::Compressed { .. } => FORMAT_COMPRESSED,
        };
        let mut m = HashMap::from([
            (FORMAT_KEY.to_string(), format.to_string()),
            ("wgtrain.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("layers".to_string(), join(&h.sizes)),
            ("activation".to_string(), "relu".to_string()),
            ("input_shape".to_string(), join(&h.input_shape)),
            ("normalize".to_string(), p.kind.as_str().to_string()),
            ("input_scale".to_string(), format!("{:e}", p.scale)),
            ("input_offset".to_string(), format!("{:e}", p.offset)),
        ]);
        if !h.class_names.is_empty() {
            // A list of strings always serialises.
            let names = serde_json::to_string(&h.class_names).unwrap_or_default();
            m.insert(CLASS_NAMES_KEY.to_string(), names);
        }
        match &self.format {
            Format::F32 => {
                m.insert("format".to_string(), "pt".to_string());
            }
            Format::Compressed { info: i, encodings } => {
                m.extend([
                    ("compress.target_sparsity".to_string(), i.target_sparsity.to_string()),
                    (
                        "compress.scope".to_string(),
                        i.scope.map(Scope::as_str).unwrap_or("none").to_string(),
                    ),
                    ("compress.schedule".to_string(), i.schedule.clone()),
                    ("compress.finetune_epochs".to_string(), i.finetune_epochs.to_string()),
                    ("compress.quantization".to_string(), i.quantization.clone()),
                    ("compress.activations".to_string(), i.activations.as_str().to_string()),
                    ("compress.base_model".to_string(), i.base_model.clone()),
                ]);
                for (n, e) in encodings.iter().enumerate() {
                    m.insert(format!("fc{}.encoding", n + 1), e.clone());
                }
            }
        }
        m
    }

    /// Parse the metadata of the file at `path` (used only in messages).
    pub fn parse(md: &HashMap<String, String>, path: &Path) -> Result<Self, ModelError> {
        let not_ours = |m: String| ModelError::NotWgtrain {
            path: path.to_path_buf(),
            message: m,
        };
        let get = |k: &str| {
            md.get(k)
                .cloned()
                .ok_or_else(|| not_ours(format!("metadata has no `{k}`")))
        };
        let list = |k: &str| -> Result<Vec<usize>, ModelError> {
            let s = get(k)?;
            if s.is_empty() {
                return Ok(vec![]);
            }
            s.split(',')
                .map(|x| {
                    x.trim()
                        .parse::<usize>()
                        .map_err(|_| not_ours(format!("metadata `{k}` = `{s}` is not a list of sizes")))
                })
                .collect()
        };
        let f32_value = |k: &str| -> Result<f32, ModelError> {
            get(k)?
                .parse::<f32>()
                .map_err(|_| not_ours(format!("metadata `{k}` is not a number")))
        };
        let f64_value = |k: &str| -> Result<f64, ModelError> {
            get(k)?
                .parse::<f64>()
                .map_err(|_| not_ours(format!("metadata `{k}` is not a number")))
        };

        let compressed = match md.get(FORMAT_KEY).map(String::as_str) {
            Some(FORMAT_MLP) => false,
            Some(FORMAT_COMPRESSED) => true,
            Some(FORMAT_ENSEMBLE) => {
                return Err(not_ours(format!(
                    "format `{FORMAT_ENSEMBLE}` is an ensemble of several models, not one model"
                )))
            }
            Some(other) if newer_format(other) => {
                return Err(not_ours(format!(
                    "format `{other}` is from a newer wgtrain (this one reads `{FORMAT_MLP}` and `{FORMAT_COMPRESSED}`)"
                )))
            }
            Some(other) => {
                return Err(not_ours(format!(
                    "unknown format `{other}` (expected `{FORMAT_MLP}`, `{FORMAT_COMPRESSED}` or `{FORMAT_ENSEMBLE}`)"
                )))
            }
            None => {
                return Err(not_ours(format!(
                    "metadata has no `{FORMAT_KEY}`; was it written by `wgtrain train --save` or `wgtrain compress`?"
                )))
            }
        };
        let sizes = list("layers")?;
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(not_ours(format!(
                "`layers` {sizes:?} needs at least two non-zero sizes"
            )));
        }
        let activation = get("activation")?;
        if activation != "relu" {
            return Err(not_ours(format!(
                "metadata `activation` = `{activation}` is not `relu`, the only activation wgtrain runs"
            )));
        }
        let input_shape = list("input_shape")?;
        let values: usize = input_shape.iter().product();
        if !input_shape.is_empty() && values != sizes[0] {
            return Err(not_ours(format!(
                "metadata `input_shape` {input_shape:?} holds {values} values but `layers` starts with {} inputs",
                sizes[0]
            )));
        }
        let finite = |k: &str| -> Result<f32, ModelError> {
            let v = f32_value(k)?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(not_ours(format!("metadata `{k}` = {v} is not finite")))
            }
        };
        let preprocess = Preprocess {
            kind: Normalize::parse(&get("normalize")?).ok_or_else(|| not_ours("unknown `normalize`".into()))?,
            scale: finite("input_scale")?,
            offset: finite("input_offset")?,
        };
        let class_names = match md.get(CLASS_NAMES_KEY) {
            None => vec![],
            Some(v) => {
                let names: Vec<String> = serde_json::from_str(v).map_err(|e| {
                    not_ours(format!(
                        "metadata `{CLASS_NAMES_KEY}` is not a JSON array of strings ({e})"
                    ))
                })?;
                if names.is_empty() {
                    return Err(not_ours(format!(
                        "metadata `{CLASS_NAMES_KEY}` is an empty list (a model without names has no such key)"
                    )));
                }
                check_class_names(&names, sizes[sizes.len() - 1])
                    .map_err(|m| not_ours(format!("metadata `{CLASS_NAMES_KEY}`: {m}")))?;
                names
            }
        };
        let format = if compressed {
            let target_sparsity = f64_value("compress.target_sparsity")?;
            if !(0.0..=1.0).contains(&target_sparsity) {
                return Err(not_ours(format!(
                    "metadata `compress.target_sparsity` = {target_sparsity} is not a fraction from 0 to 1"
                )));
            }
            let epochs = f64_value("compress.finetune_epochs")?;
            if !(epochs >= 0.0 && epochs.fract() == 0.0 && epochs <= u32::MAX as f64) {
                return Err(not_ours(format!(
                    "metadata `compress.finetune_epochs` = {epochs} is not a whole number of epochs"
                )));
            }
            let scope = match get("compress.scope")?.as_str() {
                "none" => None,
                other => Some(Scope::parse(other).ok_or_else(|| {
                    not_ours(format!(
                        "metadata `compress.scope` = `{other}` is not `none`, `global` or `layer`"
                    ))
                })?),
            };
            // An encoding for a layer the model does not have.
            if let Some(k) = md.keys().find(|k| {
                k.strip_prefix("fc")
                    .and_then(|r| r.strip_suffix(".encoding"))
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n == 0 || n >= sizes.len())
            }) {
                return Err(not_ours(format!(
                    "metadata `{k}` names a layer the model does not have (`layers` has {} layers)",
                    sizes.len() - 1
                )));
            }
            let info = CompressionInfo {
                target_sparsity,
                scope,
                schedule: get("compress.schedule")?,
                finetune_epochs: epochs as usize,
                quantization: get("compress.quantization")?,
                activations: Activations::parse(&get("compress.activations")?)
                    .ok_or_else(|| not_ours("unknown `compress.activations`".into()))?,
                base_model: md.get("compress.base_model").cloned().unwrap_or_default(),
            };
            let encodings = (1..sizes.len())
                .map(|n| get(&format!("fc{n}.encoding")))
                .collect::<Result<_, _>>()?;
            Format::Compressed { info, encodings }
        } else {
            Format::F32
        };
        Ok(Metadata {
            header: Header {
                sizes,
                input_shape,
                preprocess,
                class_names,
            },
            format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            sizes: vec![6, 4, 3],
            input_shape: vec![2, 3],
            preprocess: Preprocess {
                kind: Normalize::Standardize,
                scale: 0.3,
                offset: -1.5e-7,
            },
            class_names: vec![],
        }
    }

    /// [`header`] with names for its three classes, one not ASCII and one
    /// with a quote, which the JSON must escape.
    fn named() -> Header {
        Header {
            class_names: vec!["T-shirt/top".into(), "Ankle \"boot\"".into(), "Größe".into()],
            ..header()
        }
    }

    #[test]
    fn metadata_round_trips_for_both_formats() {
        let info = CompressionInfo {
            target_sparsity: 0.85,
            scope: Some(Scope::Global),
            schedule: "gradual-cubic".into(),
            finetune_epochs: 3,
            quantization: "int8".into(),
            activations: Activations::F32,
            base_model: "b.safetensors".into(),
        };
        for format in [
            Format::F32,
            Format::Compressed {
                info,
                encodings: vec!["bitmask-int8".into(), "dense-int8".into()],
            },
        ] {
            let m = Metadata {
                header: header(),
                format,
            };
            assert_eq!(Metadata::parse(&m.to_map(), Path::new("m")).unwrap(), m);
        }
    }

    #[test]
    fn class_names_round_trip_as_a_json_array() {
        for format in [
            Format::F32,
            Format::Compressed {
                info: CompressionInfo::default(),
                encodings: vec!["dense-f32".into(), "dense-int8".into()],
            },
        ] {
            let m = Metadata {
                header: named(),
                format,
            };
            let map = m.to_map();
            // The value as written by hand: a JSON array, the quote escaped.
            assert_eq!(map[CLASS_NAMES_KEY], r#"["T-shirt/top","Ankle \"boot\"","Größe"]"#);
            assert_eq!(Metadata::parse(&map, Path::new("m")).unwrap(), m);
        }
        // A model without names writes no key, as before names existed.
        let plain = Metadata {
            header: header(),
            format: Format::F32,
        };
        assert!(!plain.to_map().contains_key(CLASS_NAMES_KEY));
    }

    #[test]
    fn bad_class_names_are_refused_naming_the_key_and_file() {
        let good = Metadata {
            header: named(),
            format: Format::F32,
        }
        .to_map();
        let cases = [
            (r#"["a","b"]"#, "2 class names for a model of 3 classes"),
            (r#"["a","b","c","d"]"#, "4 class names for a model of 3 classes"),
            (r#"["a","b","a"]"#, "class name 3 `a` is also class name 1"),
            (r#"["a","","c"]"#, "class name 2 is empty"),
            (r#"["a"," b","c"]"#, "white space"),
            (r#"["a","b\nc","d"]"#, "control character"),
            ("a,b,c", "is not a JSON array of strings"),
            ("[1,2,3]", "is not a JSON array of strings"),
            ("[]", "is an empty list"),
        ];
        for (value, want) in cases {
            let mut md = good.clone();
            md.insert(CLASS_NAMES_KEY.to_string(), value.to_string());
            let e = Metadata::parse(&md, Path::new("m.safetensors"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(want) && e.contains("`class_names`") && e.contains("m.safetensors"),
                "{value}: {e}"
            );
        }
    }

    #[test]
    fn bad_metadata_names_the_key() {
        let good = Metadata {
            header: header(),
            format: Format::F32,
        }
        .to_map();
        let cases: [(&str, Option<&str>, &str); 6] = [
            (FORMAT_KEY, None, "was it written by"),
            (FORMAT_KEY, Some("mlp-f16"), "unknown format `mlp-f16`"),
            ("layers", Some("6"), "at least two non-zero sizes"),
            ("layers", Some("6,0,3"), "at least two non-zero sizes"),
            (
                "input_shape",
                Some("2,x"),
                "`input_shape` = `2,x` is not a list of sizes",
            ),
            ("input_scale", Some("big"), "`input_scale` is not a number"),
        ];
        for (key, value, want) in cases {
            let mut md = good.clone();
            match value {
                Some(v) => md.insert(key.to_string(), v.to_string()),
                None => md.remove(key),
            };
            let e = Metadata::parse(&md, Path::new("m.safetensors"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("m.safetensors"), "{key}: {e}");
        }
        let mut md = good;
        md.insert(FORMAT_KEY.to_string(), FORMAT_COMPRESSED.to_string());
        let e = Metadata::parse(&md, Path::new("m")).unwrap_err().to_string();
        assert!(e.contains("compress."), "{e}");
    }
}
