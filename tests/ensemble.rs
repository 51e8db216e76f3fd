//! Ensembles and weight averaging on the CPU: an ensemble's probabilities
//! against the mean of its members' computed one by one, its loss against
//! the cross-entropy of that mean by hand, the ensemble file's round trip
//! and refusals, `average` against the hand-computed mean, and stochastic
//! weight averaging against the mean of the weights saved at each epoch's
//! end (read back from the run's checkpoints).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wgtrain::backend::TrainSpec;
use wgtrain::checkpoint;
use wgtrain::cpu::CpuBackend;
use wgtrain::data::{builtin, Dataset, Normalize, Preprocess, Split};
use wgtrain::infer::ensemble::{evaluate, EnsemblePredictor};
use wgtrain::infer::{cpu_predictor, Predictor};
use wgtrain::model::average::average;
use wgtrain::model::{Activations, AnyModel, CompressedMlp, CompressionInfo, Ensemble, Member, Mlp};
use wgtrain::train::{fingerprint, train, train_resumable, Checkpointing, Event, TrainConfig};
use wgtrain::Error;

const SPIN: Duration = Duration::from_micros(50);

fn pre(scale: f32, offset: f32) -> Preprocess {
    Preprocess {
        kind: Normalize::Scale,
        scale,
        offset,
    }
}

/// Three members of 70 inputs and 5 classes with different architectures,
/// preprocessing and storage: f32 70-33-5, int8 (int8 activations)
/// 70-9-5, and a pruned f32 70-20-12-5 stored as a bitmask.
fn members() -> Vec<Member> {
    let a = Mlp::new(&[70, 33, 5], 1, pre(1.0 / 255.0, -0.1), vec![7, 10]).unwrap();
    let b = Mlp::new(&[70, 9, 5], 2, pre(1.0 / 128.0, -1.0), vec![7, 10]).unwrap();
    let int8 = CompressedMlp::from_mlp(
        &b,
        true,
        CompressionInfo {
            quantization: "int8".into(),
            activations: Activations::Int8,
            ..CompressionInfo::default()
        },
    );
    let mut c = Mlp::new(&[70, 20, 12, 5], 3, pre(0.01, 0.0), vec![]).unwrap();
    for (i, w) in c.layers[0].weight.iter_mut().enumerate() {
        if i % 3 != 0 {
            *w = 0.0;
        }
    }
    let pruned = CompressedMlp::from_mlp(
        &c,
        false,
        CompressionInfo {
            target_sparsity: 0.66,
            ..CompressionInfo::default()
        },
    );
    vec![
        Member {
            model: AnyModel::F32(a),
            source: "a.safetensors".into(),
        },
        Member {
            model: AnyModel::Compressed(int8),
            source: "b-int8.safetensors".into(),
        },
        Member {
            model: AnyModel::Compressed(pruned),
            source: "c-pruned.safetensors".into(),
        },
    ]
}

fn raw(rows: usize) -> Vec<f32> {
    (0..rows * 70).map(|i| ((i * 37 + i / 7) % 256) as f32).collect()
}

#[test]
fn ensemble_probabilities_are_the_mean_of_its_members() {
    let ms = members();
    let e = AnyModel::Ensemble(Ensemble::new(ms.clone()).unwrap());
    let mut p = cpu_predictor(&e, 8, 1, SPIN).unwrap();
    assert_eq!((p.inputs(), p.classes(), p.input_shape()), (70, 5, &[7usize, 10][..]));
    assert!(p.name().starts_with("ensemble of 3"), "{}", p.name());
    for rows in [1, 7, 33] {
        let x = raw(rows);
        let got = p.probabilities(&x).unwrap();
        // Each member on its own, then the mean in f64.
        let each: Vec<Vec<f32>> = ms
            .iter()
            .map(|m| cpu_predictor(&m.model, 4, 1, SPIN).unwrap().probabilities(&x).unwrap())
            .collect();
        for (i, g) in got.iter().enumerate() {
            let want = each.iter().map(|v| f64::from(v[i])).sum::<f64>() / 3.0;
            assert!(
                (f64::from(*g) - want).abs() < 1e-6,
                "{rows} rows, value {i}: {g} vs {want}"
            );
        }
        for row in got.chunks_exact(5) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        // The members really differ, so the mean is not any one of them.
        assert!(each.iter().all(|v| v != &got));
    }
}

#[test]
fn ensemble_loss_is_the_cross_entropy_of_the_mean() {
    let ms = members();
    let rows = 300;
    let split = Split {
        features: raw(rows),
        labels: (0..rows as u32).map(|i| (i * 7) % 5).collect(),
    };
    let mut preds: Vec<Box<dyn Predictor>> = ms
        .iter()
        .map(|m| cpu_predictor(&m.model, 16, 1, SPIN).unwrap())
        .collect();
    let each: Vec<Vec<f32>> = preds
        .iter_mut()
        .map(|p| p.probabilities(&split.features).unwrap())
        .collect();
    let mut loss = 0.0;
    let mut correct = 0;
    for (r, &label) in split.labels.iter().enumerate() {
        let mean: Vec<f64> = (0..5)
            .map(|c| each.iter().map(|v| f64::from(v[r * 5 + c])).sum::<f64>() / 3.0)
            .collect();
        loss -= mean[label as usize].ln();
        let best = (0..5).fold(0, |b, c| if mean[c] > mean[b] { c } else { b });
        correct += usize::from(best == label as usize);
    }
    let mut e = EnsemblePredictor::new(preds).unwrap();
    let ev = evaluate(&mut e, &split).unwrap();
    assert_eq!(ev.examples, rows);
    assert!(
        (ev.loss - loss / rows as f64).abs() < 1e-5,
        "{} vs {}",
        ev.loss,
        loss / rows as f64
    );
    assert!((ev.accuracy - correct as f64 / rows as f64).abs() < 1e-12);
}

#[test]
fn ensemble_file_round_trips_mixed_members() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.safetensors");
    let e = Ensemble::new(members()).unwrap();
    let bytes = e.save(&path).unwrap();
    assert_eq!(bytes as u64, std::fs::metadata(&path).unwrap().len());
    let back = AnyModel::load(&path).unwrap();
    assert_eq!(back, AnyModel::Ensemble(e.clone()));
    // Prefixed tensors, member metadata, and the count.
    let file = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    let names = st.names();
    assert!(names.contains(&"m0.fc1.weight"));
    assert!(names.contains(&"m1.fc1.weight_q"));
    assert!(names.contains(&"m2.fc1.weight_mask"));
    let (_, md) = safetensors::SafeTensors::read_metadata(&file).unwrap();
    let md = md.metadata().clone().unwrap();
    assert_eq!(md["wgtrain.format"], "ensemble-v1");
    assert_eq!(md["ensemble.members"], "3");
    assert_eq!(md["m1.source"], "b-int8.safetensors");
    assert_eq!(md["m0.layers"], "70,33,5");
    // The single-model readers refuse it, saying what it is.
    let err = Mlp::load(&path).unwrap_err().to_string();
    assert!(err.contains("ensemble"), "{err}");
    let err = CompressedMlp::load(&path).unwrap_err().to_string();
    assert!(err.contains("ensemble"), "{err}");
    // Loaded from the file, it predicts as the one built in memory.
    let x = raw(9);
    let want = cpu_predictor(&AnyModel::Ensemble(e), 4, 1, SPIN)
        .unwrap()
        .probabilities(&x)
        .unwrap();
    let got = cpu_predictor(&back, 4, 1, SPIN).unwrap().probabilities(&x).unwrap();
    assert_eq!(got, want);
}

#[test]
fn mismatched_or_nested_members_are_refused_naming_both() {
    let with = |m: Member| {
        let mut v = members();
        v.push(m);
        Ensemble::new(v).unwrap_err().to_string()
    };
    let other_inputs = Mlp::new(&[64, 5, 5], 0, pre(1.0, 0.0), vec![8, 8]).unwrap();
    let e = with(Member {
        model: AnyModel::F32(other_inputs),
        source: "wide.safetensors".into(),
    });
    assert!(
        e.contains("a.safetensors takes 70 input values but wide.safetensors takes 64"),
        "{e}"
    );
    let other_classes = Mlp::new(&[70, 5, 3], 0, pre(1.0, 0.0), vec![]).unwrap();
    let e = with(Member {
        model: AnyModel::F32(other_classes),
        source: "three.safetensors".into(),
    });
    assert!(
        e.contains("a.safetensors has 5 classes but three.safetensors has 3"),
        "{e}"
    );
    let other_shape = Mlp::new(&[70, 5, 5], 0, pre(1.0, 0.0), vec![10, 7]).unwrap();
    let e = with(Member {
        model: AnyModel::F32(other_shape),
        source: "t.safetensors".into(),
    });
    assert!(
        e.contains("input shape [7, 10]") && e.contains("t.safetensors has [10, 7]"),
        "{e}"
    );
    let nested = AnyModel::Ensemble(Ensemble::new(members()).unwrap());
    let e = with(Member {
        model: nested,
        source: "e.safetensors".into(),
    });
    assert!(e.contains("e.safetensors is an ensemble itself"), "{e}");
    let one = Ensemble::new(members()[..1].to_vec()).unwrap_err().to_string();
    assert!(one.contains("at least 2"), "{one}");
}

/// A change to a file's tensors and metadata.
type Edit = dyn Fn(&mut Vec<(String, safetensors::tensor::TensorView)>, &mut std::collections::HashMap<String, String>);

#[test]
fn damaged_ensemble_files_are_refused_naming_the_member() {
    let file = Ensemble::new(members()).unwrap().to_safetensors().unwrap();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    let (_, md) = safetensors::SafeTensors::read_metadata(&file).unwrap();
    let md = md.metadata().clone().unwrap();
    // Rewrite the file with `edit` applied to its tensors and metadata.
    let rewrite = |edit: &Edit| {
        let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = st
            .names()
            .into_iter()
            .map(|n| (n.to_string(), st.tensor(n).unwrap()))
            .collect();
        let mut meta = md.clone();
        edit(&mut tensors, &mut meta);
        let bytes = safetensors::serialize(tensors, Some(meta)).unwrap();
        AnyModel::from_safetensors(&bytes, Path::new("e.safetensors"))
            .unwrap_err()
            .to_string()
    };
    let e = rewrite(&|t, _| t.retain(|(n, _)| n != "m1.fc2.bias"));
    assert!(
        e.contains("e.safetensors") && e.contains("member 1") && e.contains("`m1.fc2.bias` is missing"),
        "{e}"
    );
    let e = rewrite(&|_, m| {
        m.insert("ensemble.members".into(), "2".into());
    });
    assert!(e.contains("belongs to no member"), "{e}");
    let e = rewrite(&|_, m| {
        m.remove("ensemble.members");
    });
    assert!(e.contains("`ensemble.members`"), "{e}");
    let e = rewrite(&|_, m| {
        m.insert("m0.layers".into(), "70,34,5".into());
    });
    assert!(e.contains("member 0") && e.contains("m0.fc1.weight"), "{e}");
    let e = rewrite(&|_, m| {
        m.insert("m1.wgtrain.format".into(), "ensemble-v1".into());
    });
    assert!(e.contains("do not nest"), "{e}");
}

#[test]
fn average_of_three_models_is_the_mean_of_every_tensor() {
    let p = pre(1.0 / 255.0, 0.0);
    let ms: Vec<(String, Mlp)> = (0..3)
        .map(|s| {
            (
                format!("m{s}.safetensors"),
                Mlp::new(&[13, 6, 4], s, p, vec![13]).unwrap(),
            )
        })
        .collect();
    let avg = average(&ms).unwrap();
    assert_eq!(avg.sizes(), vec![13, 6, 4]);
    assert_eq!((avg.preprocess, avg.input_shape.clone()), (p, vec![13]));
    for (l, layer) in avg.layers.iter().enumerate() {
        for (i, &v) in layer.weight.iter().enumerate() {
            let hand = (ms[0].1.layers[l].weight[i] + ms[1].1.layers[l].weight[i] + ms[2].1.layers[l].weight[i]) / 3.0;
            assert!((v - hand).abs() < 1e-6, "layer {l} weight {i}: {v} vs {hand}");
        }
        for (i, &v) in layer.bias.iter().enumerate() {
            let hand = (ms[0].1.layers[l].bias[i] + ms[1].1.layers[l].bias[i] + ms[2].1.layers[l].bias[i]) / 3.0;
            assert!((v - hand).abs() < 1e-6, "layer {l} bias {i}");
        }
    }
    let mut bad = ms.clone();
    bad.push((
        "wide.safetensors".into(),
        Mlp::new(&[13, 7, 4], 0, p, vec![13]).unwrap(),
    ));
    let e = average(&bad).unwrap_err().to_string();
    assert!(
        e.contains("m0.safetensors has layers [13, 6, 4] but wide.safetensors has [13, 7, 4]"),
        "{e}"
    );
    let mut bad = ms;
    bad.push((
        "std.safetensors".into(),
        Mlp::new(&[13, 6, 4], 0, pre(2.0, 1.0), vec![13]).unwrap(),
    ));
    let e = average(&bad).unwrap_err().to_string();
    assert!(e.contains("std.safetensors") && e.contains("preprocess"), "{e}");
}

fn digits(val: bool) -> Arc<Dataset> {
    let mut d = builtin::load(0.2, 0).unwrap();
    if val {
        d.hold_out_validation(0.1, 0).unwrap();
    }
    Arc::new(d)
}

fn model(d: &Dataset) -> Mlp {
    Mlp::new(
        &[d.dim(), 24, d.classes],
        0,
        Preprocess::fit(Normalize::Scale, d),
        d.shape.clone(),
    )
    .unwrap()
}

fn cpu(d: &Arc<Dataset>) -> CpuBackend {
    CpuBackend::with_threads(model(d), d.clone(), TrainSpec::sgd(64), 1).unwrap()
}

#[test]
fn swa_is_the_mean_of_the_weights_at_the_epoch_ends() {
    for val in [false, true] {
        let data = digits(val);
        let mut cfg = TrainConfig::constant(5, 0.1, 3, 0);
        cfg.swa_from = Some(3);
        if val {
            cfg.val_split = 0.1;
        }
        // The run, writing a checkpoint at each epoch end: its parameters
        // are the weights at that epoch's end.
        let dir = tempfile::tempdir().unwrap();
        let ck = Checkpointing {
            dir: dir.path().to_path_buf(),
            each_epoch: true,
            every_steps: None,
            keep: 100,
            fingerprint: fingerprint(&data, &model(&data), &TrainSpec::sgd(64), &cfg),
            extra: "{}".into(),
            stop: None,
            resume: None,
        };
        let mut end = None;
        let swa = train_resumable(&mut cpu(&data), &data, &cfg, &ck, &mut |e| {
            if let Event::End { .. } = e {
                end = Some(e.clone());
            }
        })
        .unwrap();
        let files = checkpoint::list(dir.path()).unwrap();
        assert_eq!(files.len(), 5);
        let saved: Vec<(String, Mlp)> = files[2..]
            .iter()
            .map(|f| (f.display().to_string(), checkpoint::read(f).unwrap().state.model))
            .collect();
        let mean = average(&saved).unwrap();
        let mut worst = 0f32;
        for (a, m) in swa.layers.iter().zip(&mean.layers) {
            for (x, y) in a.weight.iter().zip(&m.weight).chain(a.bias.iter().zip(&m.bias)) {
                worst = worst.max((x - y).abs());
            }
        }
        assert!(worst < 1e-6, "SWA differs from the mean of epochs 3-5 by {worst}");
        // Not the last epoch's weights.
        assert_ne!(swa, saved[2].1);
        match end {
            Some(Event::End {
                chosen,
                averaged_from,
                epoch,
                validation_loss,
                test_accuracy,
                ..
            }) => {
                assert_eq!(chosen, wgtrain::train::Chosen::Average);
                assert_eq!((averaged_from, epoch), (Some(3), 5));
                assert_eq!(validation_loss.is_some(), val);
                // The test figures are the average's.
                let pred = wgtrain::cpu::predict_rows(&swa, &data.test.features, &data.test.labels);
                let ev = wgtrain::metrics::Evaluation::new(&pred, &data.test.labels, data.classes);
                assert!((test_accuracy - ev.accuracy).abs() < 1e-12);
            }
            other => panic!("no end event: {other:?}"),
        }
        // Without checkpoints, the same average.
        let plain = train(&mut cpu(&data), &data, &cfg, &mut |_| {}).unwrap();
        assert_eq!(plain, swa);
    }
}

#[test]
fn swa_from_out_of_range_is_refused() {
    let data = digits(false);
    for from in [0, 6] {
        let mut cfg = TrainConfig::constant(5, 0.1, 3, 0);
        cfg.swa_from = Some(from);
        let e = train(&mut cpu(&data), &data, &cfg, &mut |_| {}).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Invalid {
                    setting: wgtrain::error::Setting::SwaFrom,
                    ..
                }
            ),
            "{from}: {e}"
        );
    }
}

/// Early stopping with weight averaging: at a learning rate too small to
/// move any weight, every validation loss ties the first, so patience 1
/// stops the run after epoch 2. Averaging from epoch 3 never starts (the
/// best epoch is returned, as without averaging); from epoch 1 it holds
/// epochs 1 and 2.
#[test]
fn early_stopping_ends_the_average_or_precedes_it() {
    let data = digits(true);
    for (from, chosen, epoch, averaged_from) in [
        (3, wgtrain::train::Chosen::BestValidation, 1, None),
        (1, wgtrain::train::Chosen::Average, 2, Some(1)),
    ] {
        let mut cfg = TrainConfig::constant(6, 1e-30, 3, 0);
        cfg.val_split = 0.1;
        cfg.early_stop = Some(1);
        cfg.swa_from = Some(from);
        let mut end = None;
        let m = train(&mut cpu(&data), &data, &cfg, &mut |e| {
            if let Event::End { .. } = e {
                end = Some(e.clone());
            }
        })
        .unwrap();
        let Some(Event::End {
            chosen: c,
            epoch: e,
            averaged_from: a,
            stopped_early,
            epochs_run,
            ..
        }) = end
        else {
            panic!("no end event")
        };
        assert_eq!(
            (c, e, a, stopped_early, epochs_run),
            (chosen, epoch, averaged_from, true, 2),
            "from {from}"
        );
        // No weight moved: the model is the initial one either way.
        assert_eq!(m, model(&data), "from {from}");
    }
}
