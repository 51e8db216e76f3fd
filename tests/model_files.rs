//! The bytes of model files: every format wgtrain writes is pinned by a
//! fixture in `tests/fixtures`, so files written earlier keep loading and
//! files written now are the same bytes as before.
//!
//! The fixtures were written once, by the writers as they stood when this
//! test was added, from the fixed models below (`fixture_models`). They are
//! compared up to the order of the metadata keys: safetensors writes the
//! metadata map in the order of a `HashMap`, which differs from run to run.
//! Everything else (the header's length, each tensor's name, dtype, shape
//! and offsets, every metadata value, and the tensor bytes) must be equal.
//!
//! After a deliberate format change (or a version bump, since files record
//! `wgtrain.version`), rewrite them with
//! `WGTRAIN_WRITE_FIXTURES=1 cargo test --test model_files`.

use std::path::{Path, PathBuf};

use wgtrain::compress::magnitude_masks;
use wgtrain::compress::prune::apply_masks;
use wgtrain::data::{Normalize, Preprocess};
use wgtrain::model::{Activations, AnyModel, CompressedMlp, CompressionInfo, Ensemble, Member, Mlp, Scope};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A 12-8-3 model with non-trivial preprocessing and input shape.
fn base() -> Mlp {
    let p = Preprocess {
        kind: Normalize::Standardize,
        scale: 0.123_456_79,
        offset: -3.25,
    };
    Mlp::new(&[12, 8, 3], 7, p, vec![3, 4]).unwrap()
}

/// One compressed model per weight encoding.
fn compressed(sparsity: f64, int8: bool, activations: Activations) -> CompressedMlp {
    let mut m = base();
    let masks = magnitude_masks(&m, sparsity, Scope::Layer).unwrap();
    apply_masks(&mut m, &masks).unwrap();
    let info = CompressionInfo {
        target_sparsity: sparsity,
        scope: (sparsity > 0.0).then_some(Scope::Layer),
        schedule: if sparsity > 0.0 { "one-shot" } else { "none" }.into(),
        finetune_epochs: 0,
        quantization: if int8 { "int8" } else { "none" }.into(),
        activations,
        base_model: "base.safetensors".into(),
    };
    CompressedMlp::from_mlp(&m, int8, info)
}

/// The fixture files and the models they hold.
fn fixture_models() -> Vec<(&'static str, AnyModel)> {
    vec![
        ("mlp-f32-v1.safetensors", AnyModel::F32(base())),
        (
            "dense-int8.safetensors",
            AnyModel::Compressed(compressed(0.0, true, Activations::Int8)),
        ),
        (
            "bitmask-int8.safetensors",
            AnyModel::Compressed(compressed(0.5, true, Activations::F32)),
        ),
        (
            "bitmask-f32.safetensors",
            AnyModel::Compressed(compressed(0.5, false, Activations::Int8)),
        ),
        (
            "dense-f32.safetensors",
            AnyModel::Compressed(compressed(0.0, false, Activations::Int8)),
        ),
        ("ensemble-v1.safetensors", ensemble()),
    ]
}

/// An ensemble of the f32 model and its pruned int8 version.
fn ensemble() -> AnyModel {
    let members = vec![
        Member {
            model: AnyModel::F32(base()),
            source: "base.safetensors".into(),
        },
        Member {
            model: AnyModel::Compressed(compressed(0.5, true, Activations::F32)),
            source: "bitmask-int8.safetensors".into(),
        },
    ];
    AnyModel::Ensemble(Ensemble::new(members).unwrap())
}

fn to_bytes(m: &AnyModel) -> Vec<u8> {
    match m {
        AnyModel::F32(m) => m.to_safetensors().unwrap(),
        AnyModel::Compressed(c) => c.to_safetensors().unwrap().0,
        AnyModel::Ensemble(e) => e.to_safetensors().unwrap(),
    }
}

/// The parts of a safetensors file: the header's length, the header as
/// JSON (maps compare regardless of key order), and the tensor bytes.
fn parts(bytes: &[u8]) -> (u64, serde_json::Value, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let header = &bytes[8..8 + n as usize];
    let json = serde_json::from_slice(header).unwrap();
    (n, json, &bytes[8 + n as usize..])
}

#[test]
fn files_written_now_equal_the_fixtures() {
    let write = std::env::var("WGTRAIN_WRITE_FIXTURES").is_ok_and(|v| v == "1");
    for (name, model) in fixture_models() {
        let bytes = to_bytes(&model);
        let path = fixture(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let old = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(bytes.len(), old.len(), "{name}: file length");
        let (n, header, data) = parts(&bytes);
        let (old_n, old_header, old_data) = parts(&old);
        assert_eq!(n, old_n, "{name}: header length");
        assert_eq!(header, old_header, "{name}: header");
        assert!(data == old_data, "{name}: tensor bytes differ");
    }
}

#[test]
fn fixtures_load_as_the_models_they_were_written_from() {
    for (name, model) in fixture_models() {
        let loaded = AnyModel::load(&fixture(name)).unwrap();
        assert_eq!(loaded, model, "{name}");
    }
    // Each compressed fixture uses the encoding it is named after.
    for (name, model) in fixture_models().into_iter().skip(1) {
        let AnyModel::Compressed(c) = model else { continue };
        let (_, storage) = c.to_safetensors().unwrap();
        let want = name.trim_end_matches(".safetensors");
        assert!(storage.iter().all(|s| s.encoding == want), "{name}: {:?}", storage);
    }
}

// ---------------------------------------------------------------------------
// Bad files: each built from a good fixture, each refused with the tensor or
// metadata key named.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// A file taken apart: tensors in name order and the metadata.
struct Parts {
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    meta: HashMap<String, String>,
}

impl Parts {
    fn of(name: &str) -> Parts {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (_, md) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut tensors: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Parts {
            tensors,
            meta: md.metadata().clone().unwrap(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let views: Vec<(String, TensorView)> = self
            .tensors
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, Some(self.meta.clone())).unwrap()
    }

    fn tensor(&mut self, name: &str) -> &mut (String, Dtype, Vec<usize>, Vec<u8>) {
        self.tensors.iter_mut().find(|t| t.0 == name).unwrap()
    }

    /// Set f32 value `i` of tensor `name`.
    fn poke(mut self, name: &str, i: usize, v: f32) -> Self {
        self.tensor(name).3[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        self
    }

    fn set(mut self, key: &str, value: &str) -> Self {
        self.meta.insert(key.to_string(), value.to_string());
        self
    }

    fn without(mut self, name: &str) -> Self {
        self.tensors.retain(|t| t.0 != name);
        self
    }

    fn with(mut self, name: &str, dtype: Dtype, shape: Vec<usize>) -> Self {
        let n = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        self.tensors.push((name.to_string(), dtype, shape, vec![0; n]));
        self
    }

    fn retyped(mut self, name: &str, dtype: Dtype, shape: Vec<usize>) -> Self {
        let t = self.tensor(name);
        let n = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        (t.1, t.2, t.3) = (dtype, shape, vec![0; n]);
        self
    }
}

/// The error loading `bytes` as any model file.
fn refusal(bytes: &[u8]) -> String {
    match AnyModel::from_safetensors(bytes, Path::new("bad.safetensors")) {
        Ok(_) => "loaded".into(),
        Err(e) => e.to_string(),
    }
}

fn assert_refused(what: &str, bytes: &[u8], wants: &[&str]) {
    let e = refusal(bytes);
    assert!(e.contains("bad.safetensors"), "{what}: no path in `{e}`");
    for want in wants {
        assert!(e.contains(want), "{what}: `{want}` not in `{e}`");
    }
}

/// The tensor whose data ends last, read from the header's JSON.
fn last_tensor(bytes: &[u8]) -> String {
    let (_, header, _) = parts(bytes);
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .max_by_key(|(_, t)| t["data_offsets"][1].as_u64().unwrap())
        .map(|(k, _)| k.clone())
        .unwrap()
}

#[test]
fn the_bad_files_start_from_files_that_load() {
    for (name, model) in fixture_models() {
        let rewritten = Parts::of(name).bytes();
        assert_eq!(
            AnyModel::from_safetensors(&rewritten, Path::new("m")).unwrap(),
            model,
            "{name}"
        );
    }
}

#[test]
fn truncated_or_padded_files_are_refused_naming_the_tensor() {
    for (name, _) in fixture_models() {
        let good = std::fs::read(fixture(name)).unwrap();
        let last = last_tensor(&good);
        let cut = &good[..good.len() - 3];
        assert_refused(name, cut, &["truncated", &format!("tensor `{last}`")]);
        assert_refused(name, &good[..40], &["truncated inside the header"]);
        assert_refused(name, &good[..5], &["truncated: 5 bytes"]);
        let mut long = good.clone();
        long.extend_from_slice(&[0; 4]);
        assert_refused(name, &long, &["4 bytes follow the last tensor"]);
    }
}

#[test]
fn wrong_dtypes_shapes_and_missing_or_extra_tensors_are_refused() {
    let f32_file = "mlp-f32-v1.safetensors";
    let cases: Vec<(&str, Parts, Vec<&str>)> = vec![
        (
            "bias as F64",
            Parts::of(f32_file).retyped("fc1.bias", Dtype::F64, vec![8]),
            vec!["tensor `fc1.bias` is F64 [8], expected F32 [8]"],
        ),
        (
            "weight transposed",
            Parts::of(f32_file).retyped("fc1.weight", Dtype::F32, vec![12, 8]),
            vec!["tensor `fc1.weight` is F32 [12, 8], expected F32 [8, 12]"],
        ),
        (
            "weight missing",
            Parts::of(f32_file).without("fc2.weight"),
            vec!["tensor `fc2.weight` is missing"],
        ),
        (
            "a third layer",
            Parts::of(f32_file).with("fc3.weight", Dtype::F32, vec![2, 3]),
            vec!["tensor `fc3.weight` is not part of", "2 layers"],
        ),
        (
            "an int8 tensor in an f32 file",
            Parts::of(f32_file).with("fc1.weight_q", Dtype::I8, vec![8, 12]),
            vec!["tensor `fc1.weight_q` is not part of"],
        ),
        (
            "int8 weights as U8",
            Parts::of("dense-int8.safetensors").retyped("fc2.weight_q", Dtype::U8, vec![3, 8]),
            vec!["tensor `fc2.weight_q` is U8"],
        ),
        (
            "a scale missing",
            Parts::of("bitmask-int8.safetensors").without("fc1.weight_scale"),
            vec!["tensor `fc1.weight_scale` is missing"],
        ),
        (
            "dense weights beside the bitmask",
            Parts::of("bitmask-f32.safetensors").with("fc1.weight", Dtype::F32, vec![8, 12]),
            vec!["tensor `fc1.weight` is not part of"],
        ),
        (
            "a scale for f32 weights",
            Parts::of("dense-f32.safetensors").with("fc2.weight_scale", Dtype::F32, vec![3]),
            vec!["tensor `fc2.weight_scale` is not part of"],
        ),
    ];
    for (what, file, wants) in cases {
        assert_refused(what, &file.bytes(), &wants);
    }
}

#[test]
fn layer_sizes_that_disagree_are_refused() {
    let f32_file = "mlp-f32-v1.safetensors";
    let cases: Vec<(&str, Parts, Vec<&str>)> = vec![
        (
            // fc1 has 8 outputs, fc2 takes 9 inputs: fc2 disagrees with the
            // metadata (and with fc1).
            "layers disagree with each other",
            Parts::of(f32_file).retyped("fc2.weight", Dtype::F32, vec![3, 9]),
            vec!["tensor `fc2.weight` is F32 [3, 9], expected F32 [3, 8]"],
        ),
        (
            "layers disagree with the metadata",
            Parts::of(f32_file).set("layers", "12,9,3"),
            vec!["tensor `fc1.weight` is F32 [8, 12], expected F32 [9, 12]"],
        ),
        (
            "a layer fewer in the metadata",
            Parts::of(f32_file).set("layers", "12,8"),
            vec!["tensor `fc2."],
        ),
        (
            "input shape against the first layer",
            Parts::of(f32_file).set("input_shape", "3,5"),
            vec!["`input_shape` [3, 5] holds 15 values", "12 inputs"],
        ),
        (
            "an encoding for a layer the model lacks",
            Parts::of("dense-int8.safetensors").set("fc3.encoding", "dense-int8"),
            vec!["`fc3.encoding` names a layer"],
        ),
    ];
    for (what, file, wants) in cases {
        assert_refused(what, &file.bytes(), &wants);
    }
}

#[test]
fn metadata_out_of_range_or_from_a_newer_format_is_refused() {
    let f32_file = "mlp-f32-v1.safetensors";
    let c = "bitmask-int8.safetensors";
    let cases: Vec<(&str, Parts, Vec<&str>)> = vec![
        (
            "activation",
            Parts::of(f32_file).set("activation", "tanh"),
            vec!["`activation` = `tanh`"],
        ),
        (
            "scale inf",
            Parts::of(f32_file).set("input_scale", "inf"),
            vec!["`input_scale` = inf is not finite"],
        ),
        (
            "offset NaN",
            Parts::of(c).set("input_offset", "NaN"),
            vec!["`input_offset` = NaN is not finite"],
        ),
        (
            "sparsity",
            Parts::of(c).set("compress.target_sparsity", "1.5"),
            vec!["`compress.target_sparsity` = 1.5"],
        ),
        (
            "sparsity NaN",
            Parts::of(c).set("compress.target_sparsity", "NaN"),
            vec!["`compress.target_sparsity`"],
        ),
        (
            "epochs",
            Parts::of(c).set("compress.finetune_epochs", "-1"),
            vec!["`compress.finetune_epochs` = -1"],
        ),
        (
            "epochs",
            Parts::of(c).set("compress.finetune_epochs", "2.5"),
            vec!["`compress.finetune_epochs` = 2.5"],
        ),
        (
            "scope",
            Parts::of(c).set("compress.scope", "rows"),
            vec!["`compress.scope` = `rows`"],
        ),
        (
            "activations",
            Parts::of(c).set("compress.activations", "f16"),
            vec!["`compress.activations`"],
        ),
        (
            "encoding",
            Parts::of(c).set("fc2.encoding", "bitmask-int4"),
            vec!["`bitmask-int4` of layer 2"],
        ),
        (
            "normalize",
            Parts::of(f32_file).set("normalize", "whiten"),
            vec!["`normalize`"],
        ),
        (
            "future f32 format",
            Parts::of(f32_file).set("wgtrain.format", "mlp-f32-v2"),
            vec!["format `mlp-f32-v2` is from a newer wgtrain"],
        ),
        (
            "future compressed format",
            Parts::of(c).set("wgtrain.format", "mlp-compressed-v10"),
            vec!["format `mlp-compressed-v10` is from a newer wgtrain"],
        ),
        (
            "unknown format",
            Parts::of(f32_file).set("wgtrain.format", "mlp-f16-v1"),
            vec!["unknown format `mlp-f16-v1`"],
        ),
    ];
    for (what, file, wants) in cases {
        assert_refused(what, &file.bytes(), &wants);
    }
    // A version that is not newer is not taken for one.
    let e = refusal(&Parts::of(f32_file).set("wgtrain.format", "mlp-f32-v0").bytes());
    assert!(e.contains("unknown format"), "{e}");
}

#[test]
fn non_finite_values_are_refused_naming_the_tensor() {
    let cases: Vec<(&str, Parts, &str)> = vec![
        (
            "weight NaN",
            Parts::of("mlp-f32-v1.safetensors").poke("fc1.weight", 5, f32::NAN),
            "tensor `fc1.weight` holds NaN at index 5",
        ),
        (
            "bias inf",
            Parts::of("mlp-f32-v1.safetensors").poke("fc2.bias", 2, f32::INFINITY),
            "tensor `fc2.bias` holds inf at index 2",
        ),
        (
            "compressed dense weight",
            Parts::of("dense-f32.safetensors").poke("fc2.weight", 0, f32::NEG_INFINITY),
            "tensor `fc2.weight` holds -inf at index 0",
        ),
        (
            "bitmask values",
            Parts::of("bitmask-f32.safetensors").poke("fc1.weight_values", 3, f32::NAN),
            "tensor `fc1.weight_values` holds NaN at index 3",
        ),
        (
            "int8 scale",
            Parts::of("dense-int8.safetensors").poke("fc1.weight_scale", 7, f32::NAN),
            "tensor `fc1.weight_scale` holds NaN at index 7",
        ),
        (
            "compressed bias",
            Parts::of("bitmask-int8.safetensors").poke("fc1.bias", 1, f32::INFINITY),
            "tensor `fc1.bias` holds inf at index 1",
        ),
    ];
    for (what, file, want) in cases {
        assert_refused(what, &file.bytes(), &[want]);
        // The readers of one format refuse it too.
        let bytes = file.bytes();
        let e = match Mlp::from_safetensors(&bytes, Path::new("m")) {
            Err(e) if e.to_string().contains("is not `mlp-f32-v1`") => {
                CompressedMlp::from_safetensors(&bytes, Path::new("m")).unwrap_err()
            }
            other => other.unwrap_err(),
        };
        assert!(e.to_string().contains(want), "{what}: {e}");
    }
    // A member of an ensemble file is read with the same checks.
    let file = Parts::of("ensemble-v1.safetensors").poke("m1.fc1.weight_scale", 2, f32::NAN);
    assert_refused(
        "ensemble member",
        &file.bytes(),
        &["ensemble member 1 (`m1.*`): tensor `m1.fc1.weight_scale` holds NaN at index 2"],
    );
}

/// eval, predict, serve and compress load models through the same reader:
/// none of them runs a model with a NaN weight.
#[test]
fn no_command_runs_a_model_with_a_nan_weight() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("nan.safetensors");
    let bytes = Parts::of("mlp-f32-v1.safetensors")
        .poke("fc2.weight", 4, f32::NAN)
        .bytes();
    std::fs::write(&model, bytes).unwrap();
    let m = model.to_str().unwrap();
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, "1,2,3,4,5,6,7,8,9,10,11,12\n").unwrap();
    let out = dir.path().join("out.safetensors");
    let runs: [Vec<&str>; 4] = [
        vec!["eval", "--model", m, "--data", "builtin", "--device", "cpu"],
        vec!["predict", "--model", m, "--device", "cpu", csv.to_str().unwrap()],
        vec!["serve", "--model", m, "--device", "cpu", "--addr", "127.0.0.1:0"],
        vec![
            "compress",
            "--model",
            m,
            "--data",
            "builtin",
            "--quantize",
            "int8",
            "--out",
            out.to_str().unwrap(),
        ],
    ];
    for args in runs {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_wgtrain"))
            .args(&args)
            .env_remove("WGTRAIN_DATA")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{}: ran", args[0]);
        assert!(
            stderr.contains("tensor `fc2.weight` holds NaN at index 4"),
            "{}: {stderr}",
            args[0]
        );
        assert!(!out.exists(), "compress wrote a model");
    }
}
