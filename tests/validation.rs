//! The validation split end to end: early stopping, the best epoch's
//! weights, divergence, and the metrics file, through the `wgtrain` binary
//! and the library.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use wgtrain::backend::TrainSpec;
use wgtrain::cpu::{predict_rows, CpuBackend};
use wgtrain::data::{CsvOptions, DataSource, Dataset, Normalize, Preprocess};
use wgtrain::metrics::{read_metrics, Evaluation, MetricsFormat, MetricsRow, MetricsWriter};
use wgtrain::train::{train, Event, TrainConfig};
use wgtrain::Mlp;

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

/// 300 rows of 8 pseudo-random values with pseudo-random labels of 3
/// classes: nothing to learn, so a network memorises the training rows and
/// the validation loss rises after a few epochs.
fn noise_csv(path: &Path) {
    let mut x: u64 = 12345;
    let mut next = || {
        x = (x * 1_103_515_245 + 12_345) % (1 << 31);
        x
    };
    let mut s = String::new();
    for _ in 0..300 {
        for _ in 0..8 {
            s += &format!("{},", next() % 100);
        }
        s += &format!("{}\n", (next() >> 16) % 3);
    }
    std::fs::write(path, s).unwrap();
}

/// The epoch rows of a metrics file.
fn epochs(rows: &[MetricsRow]) -> Vec<&MetricsRow> {
    rows.iter().filter(|r| r.kind == "epoch").collect()
}

/// The epoch a run with `patience` stops at, worked out from the figures:
/// the first epoch `patience` epochs after the lowest loss so far.
fn expected_stop(losses: &[f64], patience: usize) -> Option<usize> {
    let mut best_at = 0;
    for i in 0..losses.len() {
        if losses[i] < losses[best_at] {
            best_at = i;
        }
        if i - best_at >= patience {
            return Some(i + 1);
        }
    }
    None
}

#[test]
fn early_stop_saves_the_best_epoch_and_the_metrics_file_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("noise.csv");
    noise_csv(&csv);
    let model = dir.path().join("m.safetensors");
    let metrics = dir.path().join("run.csv");
    let (c, m, mf) = (
        csv.to_str().unwrap(),
        model.to_str().unwrap(),
        metrics.to_str().unwrap(),
    );
    let o = wgtrain(&[
        "train",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--data",
        c,
        "--val-split",
        "0.2",
        "--early-stop",
        "3",
        "--epochs",
        "100",
        "--hidden",
        "64",
        "--lr",
        "0.5",
        "--batch",
        "16",
        "--log-every",
        "5",
        "--metrics-file",
        mf,
        "--save",
        m,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let rows = read_metrics(&metrics).unwrap();
    let ep = epochs(&rows);
    let losses: Vec<f64> = ep.iter().map(|r| r.validation_loss.unwrap()).collect();
    let stop = expected_stop(&losses, 3).expect("the validation loss rises on noise");
    assert!(stop < 100);
    assert_eq!(ep.len(), stop, "the run stops at the epoch the rule names");
    // Validation figures every epoch, the test set not (only at the end).
    assert!(ep
        .iter()
        .all(|r| r.test_loss.is_none() && r.validation_accuracy.is_some()));
    // Log points every 5 global steps: 300 rows less 60 for the test set
    // and 48 for validation leave 192 training rows, 12 steps an epoch.
    let steps: Vec<_> = rows.iter().filter(|r| r.kind == "step").collect();
    assert_eq!(steps.len(), stop * 12 / 5);
    assert!(steps.iter().all(|r| r.global_step % 5 == 0 && r.lr == 0.5));
    assert!(rows.windows(2).all(|w| w[0].seconds <= w[1].seconds));
    let best = losses.iter().copied().fold(f64::INFINITY, f64::min);
    let best_epoch = losses.iter().position(|&l| l == best).unwrap() + 1;
    assert!(
        text(&o).contains(&format!("epoch {best_epoch}: the best validation")),
        "{}",
        text(&o)
    );

    // The saved model, evaluated here on the same validation rows, has the
    // best epoch's validation loss.
    let mut data = DataSource::Csv(csv.clone())
        .load(CsvOptions {
            seed: 0,
            ..CsvOptions::default()
        })
        .unwrap();
    data.hold_out_validation(0.2, 0).unwrap();
    let saved = Mlp::load(&model).unwrap();
    let v = &data.validation;
    let e = Evaluation::new(&predict_rows(&saved, &v.features, &v.labels), &v.labels, 3);
    assert!((e.loss - best).abs() < 1e-9 * best, "saved {} vs best {best}", e.loss);
}

#[test]
fn metrics_file_as_json_lines_without_a_validation_split() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("run.jsonl");
    let o = wgtrain(&[
        "train",
        "--device",
        "cpu",
        "--data",
        "builtin",
        "--epochs",
        "2",
        "--hidden",
        "16",
        "--log-every",
        "10",
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // Each line parses as JSON on its own.
    let text_file = std::fs::read_to_string(&metrics).unwrap();
    for line in text_file.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for k in [
            "epoch",
            "global_step",
            "lr",
            "train_loss",
            "examples_per_second",
            "seconds",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {line}");
        }
    }
    let rows = read_metrics(&metrics).unwrap();
    let ep = epochs(&rows);
    assert_eq!(ep.len(), 2);
    // 1,438 training rows at 64 a step: 23 steps an epoch, log points at 10,
    // 20, 30 and 40.
    assert_eq!(rows.len(), 2 + 4);
    assert_eq!(ep[1].global_step, 46);
    // No validation split: the test set every epoch, as before.
    assert!(ep
        .iter()
        .all(|r| r.test_accuracy.is_some() && r.validation_loss.is_none()));
    assert!(ep.iter().all(|r| (r.lr - 0.1).abs() < 1e-7));
}

#[test]
fn early_stop_without_a_validation_split_is_refused() {
    let o = wgtrain(&["train", "--device", "cpu", "--data", "builtin", "--early-stop", "2"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("--early-stop") && t.contains("--val-split"), "{t}");
    let o = wgtrain(&["train", "--device", "cpu", "--data", "builtin", "--val-split", "1.5"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--val-split"), "{}", text(&o));
}

#[test]
fn divergence_fails_and_leaves_the_saved_model_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    std::fs::write(&model, b"an earlier model").unwrap();
    let o = wgtrain(&[
        "train",
        "--device",
        "cpu",
        "--data",
        "builtin",
        "--epochs",
        "3",
        "--hidden",
        "16",
        "--lr",
        "1e30",
        "--save",
        model.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("diverged") && t.contains("at step") && t.contains("--lr"),
        "{t}"
    );
    assert!(t.contains("NaN") || t.contains("inf"), "{t}");
    assert_eq!(std::fs::read(&model).unwrap(), b"an earlier model");
}

/// Tiny stratified data from the built-in digits.
fn digits_with_validation() -> Arc<Dataset> {
    let mut d = DataSource::Builtin.load(CsvOptions::default()).unwrap();
    d.hold_out_validation(0.25, 3).unwrap();
    Arc::new(d)
}

#[test]
fn the_returned_model_is_the_best_validation_epoch() {
    let data = digits_with_validation();
    let model = Mlp::new(
        &[64, 32, 10],
        1,
        Preprocess::fit(Normalize::Scale, &data),
        data.shape.clone(),
    )
    .unwrap();
    let mut cpu = CpuBackend::with_threads(model, data.clone(), TrainSpec::sgd(32), 1).unwrap();
    let mut cfg = TrainConfig::constant(6, 0.5, 0, 0);
    cfg.val_split = 0.25;
    let mut val = Vec::new();
    let mut end = None;
    let trained = train(&mut cpu, &data, &cfg, &mut |e| match e {
        Event::Epoch {
            validation_loss: Some(l),
            test_loss,
            ..
        } => {
            assert!(test_loss.is_none());
            val.push(*l)
        }
        Event::End { epoch, test_loss, .. } => end = Some((*epoch, *test_loss)),
        _ => {}
    })
    .unwrap();
    assert_eq!(val.len(), 6);
    let v = &data.validation;
    let e = Evaluation::new(&predict_rows(&trained, &v.features, &v.labels), &v.labels, 10);
    let best = val.iter().copied().fold(f64::INFINITY, f64::min);
    assert!((e.loss - best).abs() < 1e-9 * best, "{} vs {best}", e.loss);
    let (epoch, test_loss) = end.unwrap();
    assert_eq!(val[epoch - 1], best);
    // The end's test figures are the returned model's.
    let t = &data.test;
    let te = Evaluation::new(&predict_rows(&trained, &t.features, &t.labels), &t.labels, 10);
    assert!((te.loss - test_loss).abs() < 1e-6 * te.loss);
}

#[test]
fn plot_writes_png_and_svg_from_a_metrics_file() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("run.csv");
    let mut w = MetricsWriter::create(&metrics, MetricsFormat::Csv).unwrap();
    for epoch in 1..=4 {
        let e = epoch as f64;
        w.write(&MetricsRow {
            kind: "epoch".into(),
            epoch,
            global_step: 10 * epoch,
            lr: 0.1,
            train_loss: 1.0 / e,
            train_accuracy: 0.5 + 0.1 * e,
            validation_loss: Some(1.1 / e),
            validation_accuracy: Some(0.45 + 0.1 * e),
            test_loss: None,
            test_accuracy: None,
            examples_per_second: 1000.0,
            seconds: e,
        })
        .unwrap();
    }
    drop(w);
    assert_eq!(read_metrics(&metrics).unwrap().len(), 4);
    let png = dir.path().join("curves.png");
    let o = wgtrain(&["plot", metrics.to_str().unwrap(), "-o", png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!((img.width(), img.height()), (1000, 400));
    // Not a blank picture: curves and labels leave non-white pixels.
    let rgb = img.to_rgb8();
    assert!(rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 1000);

    let svg = dir.path().join("curves.svg");
    let o = wgtrain(&["plot", metrics.to_str().unwrap(), "-o", svg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(
        s.contains("<svg") && s.contains("</svg>") && s.contains("validation"),
        "{s}"
    );

    let o = wgtrain(&["plot", metrics.to_str().unwrap(), "-o", "curves.gif"]);
    assert!(!o.status.success());
    assert!(text(&o).contains(".png or .svg"), "{}", text(&o));
}
