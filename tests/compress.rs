//! Compression end to end on the built-in digits: masks held through
//! fine-tuning, compressed files that round-trip, `wgtrain compress` and
//! `wgtrain eval` of its output, and the errors a user sees.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use wgtrain::backend::{Backend, SplitKind, TrainSpec};
use wgtrain::compress::prune::zero_counts;
use wgtrain::compress::{magnitude_masks, prune_and_finetune, PruneConfig};
use wgtrain::cpu::CpuBackend;
use wgtrain::data::{builtin, Dataset, Normalize, Preprocess};
use wgtrain::model::{AnyModel, CompressedMlp, CompressionInfo, LayerWeights, Mlp, Scope, FORMAT_COMPRESSED};
use wgtrain::optim::StepHyper;
use wgtrain::train::{train, Event, TrainConfig};

fn digits() -> Arc<Dataset> {
    Arc::new(builtin::load(0.2, 0).unwrap())
}

/// A small model trained a few epochs on the digits.
fn trained(data: &Arc<Dataset>) -> Mlp {
    let m = Mlp::new(
        &[data.dim(), 32, data.classes],
        0,
        Preprocess::fit(Normalize::Scale, data),
        data.shape.clone(),
    )
    .unwrap();
    let mut b = CpuBackend::new(m, data.clone(), TrainSpec::sgd(32)).unwrap();
    let cfg = TrainConfig::constant(10, 0.1, 0, 0);
    train(&mut b, data, &cfg, &mut |_| {}).unwrap()
}

fn accuracy(model: &CompressedMlp, data: &Dataset) -> f64 {
    wgtrain::infer::compressed::evaluate(model, data, SplitKind::Test)
        .unwrap()
        .accuracy
}

/// Per layer, how many of the weights `masks` keeps differ between `a` and
/// `b`, and how many it keeps.
fn kept_weights_changed(a: &Mlp, b: &Mlp, masks: &[Vec<f32>]) -> Vec<(usize, usize)> {
    a.layers
        .iter()
        .zip(&b.layers)
        .zip(masks)
        .map(|((la, lb), m)| {
            let kept = m.iter().filter(|&&k| k != 0.0).count();
            let changed = la
                .weight
                .iter()
                .zip(&lb.weight)
                .zip(m)
                .filter(|((wa, wb), &k)| k != 0.0 && wa != wb)
                .count();
            (changed, kept)
        })
        .collect()
}

#[test]
fn pruned_weights_stay_exactly_zero_through_fine_tuning() {
    let data = digits();
    let base = trained(&data);
    for gradual in [false, true] {
        let mut b = CpuBackend::new(base.clone(), data.clone(), TrainSpec::sgd(16)).unwrap();
        let mut cfg = PruneConfig::new(0.8, Scope::Global, gradual).unwrap();
        cfg.update_every = 7; // several mask updates in 3 short epochs
        let tc = TrainConfig::constant(3, 0.1, 1, 0);
        let mut epochs = 0;
        let (tuned, masks) = prune_and_finetune(&mut b, &data, &cfg, &tc, &mut |e| {
            epochs += matches!(e, Event::Epoch { .. }) as usize
        })
        .unwrap();
        assert_eq!(epochs, 3);
        let n: usize = tuned.layers.iter().map(|l| l.weight.len()).sum();
        assert_eq!(
            zero_counts(&tuned).iter().sum::<usize>(),
            (0.8 * n as f64).round() as usize
        );
        for (l, m) in tuned.layers.iter().zip(&masks) {
            for (&w, &k) in l.weight.iter().zip(m) {
                if k == 0.0 {
                    assert!(w == 0.0, "a pruned weight moved to {w} (gradual {gradual})");
                    // -0.0 counts as zero
                }
            }
        }
        // The kept weights did train. Pruning alone changes only the pruned
        // ones, so compare the kept ones with the base model's, in every
        // layer; the pruned base model is the case this check must catch.
        let mut pruned = base.clone();
        wgtrain::compress::prune::apply_masks(&mut pruned, &masks).unwrap();
        for (l, (changed, kept)) in kept_weights_changed(&base, &pruned, &masks).into_iter().enumerate() {
            assert_eq!(
                changed, 0,
                "layer {l}: pruning alone moved {changed} of {kept} kept weights"
            );
        }
        for (l, (changed, kept)) in kept_weights_changed(&base, &tuned, &masks).into_iter().enumerate() {
            // (All of them move here; 90% leaves room for weights of
            // inputs that are always zero.)
            assert!(
                changed * 10 > kept * 9,
                "gradual {gradual}, layer {l}: fine-tuning moved only {changed} of {kept} kept weights"
            );
        }
        // Still a working classifier.
        let acc = accuracy(
            &CompressedMlp::from_mlp(&tuned, false, CompressionInfo::default()),
            &data,
        );
        assert!(acc > 0.8, "gradual {gradual}: accuracy {acc}");
        // Training on without new masks keeps the old ones.
        b.train_steps(0, &StepHyper::constant(0.1, 3)).unwrap();
        let again = b.model().unwrap();
        assert_eq!(zero_counts(&again), zero_counts(&tuned));
    }
}

#[test]
fn compressed_files_round_trip_in_every_encoding() {
    let data = digits();
    let base = trained(&data);
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (0.0, true, "dense-int8"),
        (0.9, true, "bitmask-int8"),
        (0.9, false, "bitmask-f32"),
        (0.0, false, "dense-f32"),
    ];
    for (s, q, enc) in cases {
        let mut m = base.clone();
        let masks = magnitude_masks(&m, s, Scope::Layer).unwrap();
        wgtrain::compress::prune::apply_masks(&mut m, &masks).unwrap();
        let info = CompressionInfo {
            target_sparsity: s,
            scope: Some(Scope::Layer),
            schedule: "one-shot".into(),
            quantization: if q { "int8" } else { "none" }.into(),
            base_model: "base.safetensors".into(),
            ..CompressionInfo::default()
        };
        let c = CompressedMlp::from_mlp(&m, q, info);
        let path = dir.path().join(format!("{enc}.safetensors"));
        let (storage, bytes) = c.save(&path).unwrap();
        assert_eq!(storage[0].encoding, enc);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, bytes);
        let back = match AnyModel::load(&path).unwrap() {
            AnyModel::Compressed(b) => b,
            other => panic!("{enc}: loaded as {}", other.describe()),
        };
        assert_eq!(back, c, "{enc}");
        assert_eq!(accuracy(&back, &data), accuracy(&c, &data));
        if q {
            assert!(matches!(back.layers[0].weights, LayerWeights::Int8(_)));
        }
    }
    // A plain model loads as one.
    let p = dir.path().join("plain.safetensors");
    base.save(&p).unwrap();
    assert_eq!(AnyModel::load(&p).unwrap(), AnyModel::F32(base));
}

#[test]
fn int8_model_keeps_the_accuracy() {
    let data = digits();
    let base = trained(&data);
    let f32_acc = accuracy(
        &CompressedMlp::from_mlp(&base, false, CompressionInfo::default()),
        &data,
    );
    let q = CompressedMlp::from_mlp(&base, true, CompressionInfo::default());
    let q_acc = accuracy(&q, &data);
    // 359 test images: a couple of flips at most.
    assert!((f32_acc - q_acc).abs() <= 3.0 / 359.0, "f32 {f32_acc} int8 {q_acc}");
}

#[test]
fn non_wgtrain_files_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    let e = AnyModel::load(&text).unwrap_err().to_string();
    assert!(e.contains("not a safetensors file"), "{e}");
    // A valid safetensors file without our metadata.
    let foreign = dir.path().join("foreign.safetensors");
    let data = [0u8; 8];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap();
    std::fs::write(&foreign, safetensors::serialize([("w", view)], None).unwrap()).unwrap();
    let e = AnyModel::load(&foreign).unwrap_err().to_string();
    assert!(e.contains("not a wgtrain model") && e.contains("wgtrain.format"), "{e}");
    let e = AnyModel::load(&dir.path().join("missing.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read"), "{e}");
    assert_eq!(FORMAT_COMPRESSED, "mlp-compressed-v1");
}

fn wgtrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgtrain"))
        .args(args)
        .env_remove("WGTRAIN_DATA")
        .output()
        .expect("run wgtrain")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn compress_and_eval_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.safetensors");
    let out = dir.path().join("small.safetensors");
    let (b, o) = (base.to_str().unwrap(), out.to_str().unwrap());
    let r = wgtrain(&[
        "train", "--data", "builtin", "--device", "cpu", "--epochs", "5", "--hidden", "32", "--save", b,
    ]);
    assert!(r.status.success(), "{}", text(&r));
    let r = wgtrain(&[
        "compress",
        "--model",
        b,
        "--out",
        o,
        "--data",
        "builtin",
        "--prune",
        "0.7",
        "--gradual",
        "--finetune-epochs",
        "2",
        "--quantize",
        "int8",
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(r.status.success(), "{}", text(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!((v["total"]["sparsity"].as_f64().unwrap() - 0.7).abs() < 0.01, "{v}");
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    assert_eq!(v["finetune"].as_array().unwrap().len(), 2);
    assert_eq!(v["compression"]["schedule"], "gradual-cubic");
    let after = v["after"]["accuracy"].as_f64().unwrap();
    assert!(v["total"]["size_ratio"].as_f64().unwrap() < 0.27, "{v}");
    assert_eq!(
        v["after"]["bytes"].as_u64().unwrap(),
        std::fs::metadata(&out).unwrap().len()
    );

    // eval of the compressed file gives the accuracy compress reported.
    let r = wgtrain(&["eval", "--model", o, "--data", "builtin", "--json"]);
    assert!(r.status.success(), "{}", text(&r));
    let e: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(e["accuracy"].as_f64().unwrap(), after);
    let r = wgtrain(&["eval", "--model", o, "--data", "builtin"]);
    assert!(text(&r).contains("int8"), "{}", text(&r));

    // Text report.
    let r = wgtrain(&[
        "compress",
        "--model",
        b,
        "--out",
        o,
        "--data",
        "builtin",
        "--quantize",
        "int8",
    ]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(
        text(&r).contains("fc1") && text(&r).contains("dense-int8"),
        "{}",
        text(&r)
    );
}

#[test]
fn bad_compress_arguments_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let o = out.to_str().unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a model").unwrap();
    let b = bad.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--prune", "1.2"], "out of range"),
        (&["--prune", "-0.1"], "out of range"),
        (&["--prune", "0.5", "--gradual"], "--finetune-epochs"),
        (&[], "nothing to do"),
        (&["--quantize", "int8"], "not a safetensors file"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["compress", "--model", b, "--out", o, "--data", "builtin"];
        args.extend_from_slice(extra);
        let r = wgtrain(&args);
        assert!(!r.status.success(), "{extra:?} succeeded");
        assert!(text(&r).contains(want), "{extra:?}: {}", text(&r));
        assert!(!Path::new(o).exists());
    }
    let r = wgtrain(&["eval", "--model", b, "--data", "builtin"]);
    assert!(
        !r.status.success() && text(&r).contains("not a safetensors file"),
        "{}",
        text(&r)
    );
}
