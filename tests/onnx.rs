//! ONNX export checked by an independent runtime: every exported graph is
//! parsed and run by tract (a Rust ONNX runtime that shares no code with
//! wgtrain) on the built-in digits' test set, and its output is compared
//! with what wgtrain's own CPU predictors answer for the same raw rows: f32
//! and pruned models within 1e-5 in every probability, int8 models the
//! same class on at least 99.9% of the rows, ensembles within 1e-5. The
//! binary's `export` command is run the same way, and its refusals are
//! checked for what they say.

use std::path::Path;
mod common;

use common::{text, wgtrain};
use std::time::Duration;

use tract_onnx::prelude::*;
use wgtrain::data::{builtin, Dataset, Normalize, Preprocess};
use wgtrain::infer::cpu_predictor;
use wgtrain::model::{Activations, AnyModel, CompressedMlp, CompressionInfo, Ensemble, Member, Mlp};
use wgtrain::onnx::{self, ExportOptions};

fn data() -> Dataset {
    builtin::load(0.3, 7).unwrap()
}

fn mlp(ds: &Dataset, sizes: &[usize], seed: u64) -> Mlp {
    let mut s = vec![ds.dim()];
    s.extend_from_slice(sizes);
    s.push(ds.classes);
    Mlp::new(&s, seed, Preprocess::fit(Normalize::Standardize, ds), ds.shape.clone()).unwrap()
}

/// The graph in `bytes` run by tract on `rows` raw rows: its one output,
/// row-major.
fn tract_run(bytes: &[u8], raw: &[f32], inputs: usize) -> Vec<f32> {
    let rows = raw.len() / inputs;
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("tract parses the graph")
        .with_input_fact(0, f32::fact([rows, inputs]).into())
        .unwrap()
        .into_optimized()
        .expect("tract types and optimizes the graph")
        .into_runnable()
        .unwrap();
    let input = Tensor::from_shape(&[rows, inputs], raw).unwrap();
    let out = model.run(tvec!(input.into())).expect("tract runs the graph");
    out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
}

/// Row-wise softmax in f64 (a second implementation beside wgtrain's).
fn softmax(logits: &[f32], classes: usize) -> Vec<f32> {
    logits
        .chunks(classes)
        .flat_map(|r| {
            let m = r.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
            let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| (v / s) as f32)
        })
        .collect()
}

fn wgtrain_probabilities(model: &AnyModel, raw: &[f32]) -> Vec<f32> {
    let mut p = cpu_predictor(model, 64, 1, Duration::ZERO).unwrap();
    p.probabilities(raw).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(p: &[f32], classes: usize) -> Vec<usize> {
    p.chunks(classes)
        .map(|r| (0..classes).fold(0, |b, c| if r[c] > r[b] { c } else { b }))
        .collect()
}

/// Export `model`, run it in tract on the test set, and return (tract's
/// probabilities, wgtrain's) on the same rows.
fn both(model: &AnyModel, ds: &Dataset, probabilities: bool, opset: i64) -> (Vec<f32>, Vec<f32>) {
    let opts = ExportOptions {
        probabilities,
        opset,
        ..ExportOptions::default()
    };
    let bytes = onnx::to_bytes(model, &opts).unwrap();
    let raw = &ds.test.features;
    let out = tract_run(&bytes, raw, model.inputs());
    let ours = wgtrain_probabilities(model, raw);
    let theirs = if onnx::output_name(model, &opts) == onnx::PROBABILITIES_NAME {
        out
    } else {
        softmax(&out, model.classes())
    };
    (theirs, ours)
}

#[test]
fn f32_model_matches_the_cpu_predictor_within_1e_5() {
    let ds = data();
    let m = AnyModel::F32(mlp(&ds, &[40, 20], 1));
    for (probabilities, opset) in [(false, 17), (true, 17), (true, 18)] {
        let (t, w) = both(&m, &ds, probabilities, opset);
        let d = max_diff(&t, &w);
        eprintln!("f32 probabilities={probabilities} opset={opset}: max |diff| {d:e}");
        assert!(d <= 1e-5, "max |diff| {d}");
        assert_eq!(argmax(&t, ds.classes), argmax(&w, ds.classes));
    }
}

fn pruned(m: &Mlp) -> CompressedMlp {
    let mut p = m.clone();
    for l in &mut p.layers {
        for (i, w) in l.weight.iter_mut().enumerate() {
            if i % 5 != 0 {
                *w = 0.0;
            }
        }
    }
    CompressedMlp::from_mlp(
        &p,
        false,
        CompressionInfo {
            target_sparsity: 0.8,
            ..CompressionInfo::default()
        },
    )
}

fn int8(m: &Mlp, activations: Activations) -> CompressedMlp {
    CompressedMlp::from_mlp(
        m,
        true,
        CompressionInfo {
            quantization: "int8".into(),
            activations,
            ..CompressionInfo::default()
        },
    )
}

#[test]
fn pruned_model_exports_dense_and_matches_within_1e_5() {
    let ds = data();
    let m = AnyModel::Compressed(pruned(&mlp(&ds, &[30], 2)));
    let (t, w) = both(&m, &ds, true, 17);
    let d = max_diff(&t, &w);
    eprintln!("pruned: max |diff| {d:e}");
    assert!(d <= 1e-5, "max |diff| {d}");
}

#[test]
fn int8_models_give_the_same_classes() {
    let ds = data();
    let base = mlp(&ds, &[48, 24], 3);
    for (activations, opset) in [(Activations::Int8, 17), (Activations::Int8, 18), (Activations::F32, 17)] {
        let m = AnyModel::Compressed(int8(&base, activations));
        let (t, w) = both(&m, &ds, false, opset);
        let (a, b) = (argmax(&t, ds.classes), argmax(&w, ds.classes));
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
        let d = max_diff(&t, &w);
        eprintln!(
            "int8 activations={} opset={opset}: {:.2}% same class, max |diff| {d:e}",
            activations.as_str(),
            same * 100.0
        );
        assert!(same >= 0.999, "{same}");
        // The graph mirrors the arithmetic, so the probabilities agree
        // closely too, not only the classes.
        assert!(d <= 1e-4, "max |diff| {d}");
    }
}

#[test]
fn int8_activation_graph_follows_the_engine_not_the_weight_only_path() {
    // Identity preprocessing and all-zero rows: the first layer quantizes
    // rows whose largest magnitude is 0 (scale 0 in the engine), and
    // negative biases leave hidden rows all dead (zero after ReLU); the
    // answers must stay finite and equal the engine's. (tract's Clip maps
    // a NaN to a bound, so it would not show a NaN from 0 * inf there;
    // scripts/check_onnx.py runs ONNX Runtime on real dead rows.)
    let ds = data();
    let mut base = mlp(&ds, &[16], 10);
    base.preprocess = Preprocess::identity();
    for b in &mut base.layers[0].bias {
        *b = -b.abs() - 0.05;
    }
    let full = AnyModel::Compressed(int8(&base, Activations::Int8));
    let weights_only = AnyModel::Compressed(int8(&base, Activations::F32));
    let mut raw = vec![0.0; 3 * ds.dim()];
    raw.extend_from_slice(&ds.test.features);
    let bytes = onnx::to_bytes(&full, &ExportOptions::default()).unwrap();
    let t = softmax(&tract_run(&bytes, &raw, ds.dim()), ds.classes);
    let engine = wgtrain_probabilities(&full, &raw);
    let weight_only = wgtrain_probabilities(&weights_only, &raw);
    assert!(t.iter().all(|v| v.is_finite()));
    let d = max_diff(&t, &engine);
    assert!(d <= 1e-5, "graph against the int8 engine: max |diff| {d}");
    // The quantization of the activations is really in the graph: the
    // weight-only path answers measurably differently.
    let other = max_diff(&t, &weight_only);
    assert!(other > 10.0 * d.max(1e-7), "weight-only {other}, engine {d}");
}

#[test]
fn ensemble_exports_as_one_graph_averaging_its_members() {
    let ds = data();
    let a = mlp(&ds, &[32], 4);
    let b = mlp(&ds, &[16, 12], 5);
    let c = mlp(&ds, &[20], 6);
    let members = vec![
        Member {
            model: AnyModel::F32(a),
            source: "a".into(),
        },
        Member {
            model: AnyModel::Compressed(int8(&b, Activations::Int8)),
            source: "b".into(),
        },
        Member {
            model: AnyModel::Compressed(pruned(&c)),
            source: "c".into(),
        },
    ];
    let m = AnyModel::Ensemble(Ensemble::new(members).unwrap());
    let (t, w) = both(&m, &ds, false, 17);
    let d = max_diff(&t, &w);
    eprintln!("ensemble: max |diff| {d:e}");
    assert!(d <= 1e-5, "max |diff| {d}");
}

#[test]
fn graph_declares_a_dynamic_batch_names_and_metadata() {
    let ds = data();
    let m = AnyModel::F32(mlp(&ds, &[10], 8));
    let names: Vec<String> = (0..ds.classes).map(|c| format!("digit {c}")).collect();
    let opts = ExportOptions {
        probabilities: true,
        class_names: Some(&names),
        ..ExportOptions::default()
    };
    let bytes = onnx::to_bytes(&m, &opts).unwrap();
    // Decoded by tract's own protobuf reader.
    let p = tract_onnx::onnx().proto_model_for_read(&mut &bytes[..]).unwrap();
    assert_eq!(p.opset_import[0].version, 17);
    let g = p.graph.as_ref().unwrap();
    assert_eq!(g.input[0].name, "input");
    assert_eq!(g.output[0].name, "probabilities");
    let dims = format!("{:?}", g.input[0].r#type);
    assert!(
        dims.contains("\"batch\"") && dims.contains(&ds.dim().to_string()),
        "{dims}"
    );
    let md: std::collections::HashMap<_, _> = p
        .metadata_props
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    let json: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    assert_eq!(json, names);
    assert!(md["producer"].starts_with("wgtrain"));
    assert!(md.contains_key("input_scale") && md.contains_key("input_shape"));
    // The same graph at two batch sizes (the batch dimension is free).
    for rows in [1, 5] {
        let raw = &ds.test.features[..rows * ds.dim()];
        assert_eq!(tract_run(&bytes, raw, ds.dim()).len(), rows * ds.classes);
    }
    // Refusals.
    let bad = ExportOptions {
        opset: 12,
        ..ExportOptions::default()
    };
    assert!(onnx::to_bytes(&m, &bad).unwrap_err().to_string().contains("opset 12"));
    let few = ExportOptions {
        class_names: Some(&names[..3]),
        ..ExportOptions::default()
    };
    assert!(onnx::to_bytes(&m, &few)
        .unwrap_err()
        .to_string()
        .contains("3 class names"));
}

#[test]
fn export_stores_the_model_s_own_class_names() {
    let ds = data();
    let names: Vec<String> = (0..ds.classes).map(|c| format!("class {c}")).collect();
    let named = mlp(&ds, &[10], 9).with_class_names(names.clone()).unwrap();
    let metadata = |m: &AnyModel| -> std::collections::HashMap<String, String> {
        let bytes = onnx::to_bytes(m, &ExportOptions::default()).unwrap();
        let p = tract_onnx::onnx().proto_model_for_read(&mut &bytes[..]).unwrap();
        p.metadata_props
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    };
    let md = metadata(&AnyModel::F32(named));
    let json: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    assert_eq!(json, names);
    // A model without names stores no key.
    assert!(!metadata(&AnyModel::F32(mlp(&ds, &[10], 9))).contains_key("class_names"));
}

#[test]
fn export_command_writes_a_graph_tract_runs_and_refuses_bad_use() {
    let ds = data();
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("m.safetensors");
    let mlp = mlp(&ds, &[24], 9);
    mlp.save(&model_path).unwrap();
    let onnx_path = dir.path().join("m.onnx");
    let (m, o) = (model_path.to_str().unwrap(), onnx_path.to_str().unwrap());
    let out = wgtrain(&["export", "--model", m, "--format", "onnx", "-o", o, "--probabilities"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("probabilities"), "{}", text(&out));
    let bytes = std::fs::read(&onnx_path).unwrap();
    let raw = &ds.test.features;
    let t = tract_run(&bytes, raw, ds.dim());
    let w = wgtrain_probabilities(&AnyModel::F32(mlp), raw);
    assert!(max_diff(&t, &w) <= 1e-5);

    let fail = |args: &[&str], want: &str| {
        let out = wgtrain(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let t = text(&out);
        assert!(t.contains(want), "{args:?}: {t}");
    };
    fail(&["export", "--model", m, "--format", "tflite", "-o", o], "tflite");
    let missing = dir.path().join("none.safetensors");
    fail(
        &["export", "--model", missing.to_str().unwrap(), "-o", o],
        "none.safetensors",
    );
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a model").unwrap();
    fail(
        &["export", "--model", junk.to_str().unwrap(), "-o", o],
        "junk.safetensors",
    );
    let nowhere = dir.path().join("no/such/dir/m.onnx");
    fail(
        &["export", "--model", m, "-o", nowhere.to_str().unwrap()],
        "does not exist",
    );
    fail(&["export", "--model", m, "-o", o, "--opset", "9"], "opset 9");
    assert!(Path::new(o).exists());
}
