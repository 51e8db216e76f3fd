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
use wgtrain::model::{Activations, AnyModel, CompressedMlp, CompressionInfo, Mlp, Scope};

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
    ]
}

fn to_bytes(m: &AnyModel) -> Vec<u8> {
    match m {
        AnyModel::F32(m) => m.to_safetensors().unwrap(),
        AnyModel::Compressed(c) => c.to_safetensors().unwrap().0,
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
        let AnyModel::Compressed(c) = model else { unreachable!() };
        let (_, storage) = c.to_safetensors().unwrap();
        let want = name.trim_end_matches(".safetensors");
        assert!(storage.iter().all(|s| s.encoding == want), "{name}: {:?}", storage);
    }
}
