//! End-to-end runs of the `wgtrain` binary: train, save, eval, and the errors
//! a user sees.

use std::path::Path;
use std::process::{Command, Output};

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
fn train_save_eval_round_trip_on_builtin_digits() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    let m = model.to_str().unwrap();
    let o = wgtrain(&[
        "train", "--data", "builtin", "--device", "cpu", "--epochs", "5", "--hidden", "64", "--save", m, "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // One JSON object per epoch on stdout.
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each stdout line is JSON"))
        .collect();
    assert_eq!(lines.len(), 5);
    let last_acc = lines[4]["test_accuracy"].as_f64().unwrap();
    assert!(last_acc > 0.8, "{last_acc}");
    for k in ["epoch", "train_loss", "test_loss", "seconds"] {
        assert!(lines[4].get(k).is_some(), "missing {k}");
    }

    let o = wgtrain(&["eval", "--model", m, "--data", "builtin", "--device", "cpu", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Same split (same seed), same weights: the same accuracy as training reported.
    assert!((v["accuracy"].as_f64().unwrap() - last_acc).abs() < 1e-9, "{v}");
    let confusion = v["confusion"].as_array().unwrap();
    assert_eq!(confusion.len(), 10);
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(total, 359);
    assert!(v["loss"].as_f64().unwrap() > 0.0);

    let o = wgtrain(&["eval", "--model", m, "--data", "builtin", "--device", "cpu"]);
    assert!(text(&o).contains("test accuracy"), "{}", text(&o));
}

#[test]
fn bad_data_fails_cleanly_and_leaves_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("d.csv");
    std::fs::write(&csv, "1,2,0\n3,4,1\n5,oops,1\n").unwrap();
    let model = dir.path().join("m.safetensors");
    let o = wgtrain(&[
        "train",
        "--data",
        csv.to_str().unwrap(),
        "--save",
        model.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("d.csv:3") && t.contains("`oops` is not a number"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    assert!(!model.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no stray files");
}

#[test]
fn unsaveable_path_fails_before_training() {
    let o = wgtrain(&["train", "--data", "builtin", "--save", "/no/such/dir/m.safetensors"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("/no/such/dir") && t.contains("does not exist"), "{t}");
    assert!(!t.contains("epoch 1"), "{t}");
}

#[test]
fn eval_rejects_files_that_are_not_models() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "hello").unwrap();
    let o = wgtrain(&["eval", "--model", p.to_str().unwrap(), "--data", "builtin"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("notes.txt") && t.contains("not a safetensors file"), "{t}");
    let o = wgtrain(&["eval", "--model", "/no/model.safetensors", "--data", "builtin"]);
    assert!(text(&o).contains("/no/model.safetensors"), "{}", text(&o));
}

#[test]
fn eval_rejects_a_model_that_does_not_fit_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("d.csv");
    let rows: String = (0..20).map(|i| format!("{},{},{}\n", i, i * 2, i % 2)).collect();
    std::fs::write(&csv, rows).unwrap();
    let model = dir.path().join("m.safetensors");
    let o = wgtrain(&[
        "train",
        "--data",
        csv.to_str().unwrap(),
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--save",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(Path::new(&model).exists());
    let o = wgtrain(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        "builtin",
        "--device",
        "cpu",
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("expects 2 input values") && t.contains("64"), "{t}");
}

#[test]
fn bad_arguments_are_explained() {
    let t = text(&wgtrain(&["train", "--data", "builtin", "--hidden", "500,x"]));
    assert!(t.contains("`x` is not a positive layer width"), "{t}");
    let t = text(&wgtrain(&["train", "--data", "builtin", "--batch", "0"]));
    assert!(
        t.contains("--batch: batch size 0 is out of range: expected at least 1"),
        "{t}"
    );
    let t = text(&wgtrain(&["train", "--data", "builtin", "--lr=-1"]));
    assert!(
        t.contains("--lr: learning rate -1 is out of range: expected a positive number"),
        "{t}"
    );
    // Checked before any device is opened, so no GPU is needed here.
    let o = wgtrain(&["bench", "--matmul", "--device", "cpu", "--tile", "48x48"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("no matmul tile \"48x48\"") && t.contains("16x16/k16"), "{t}");
    let t = text(&wgtrain(&["serve", "--model", "m.safetensors", "--batcher", "fast"]));
    assert!(t.contains("invalid value 'fast'") && t.contains("inline"), "{t}");
}

/// The epoch lines of a `--json` run, without their timings.
fn epochs_json(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("each stdout line is JSON");
            let o = v.as_object_mut().unwrap();
            for timing in ["seconds", "elapsed", "examples_per_second"] {
                o.remove(timing);
            }
            v
        })
        .collect()
}

#[test]
fn learning_rate_schedules_run_and_bad_ones_are_refused_by_flag() {
    let run = |extra: &[&str]| {
        let mut args = vec![
            "train", "--data", "builtin", "--device", "cpu", "--epochs", "2", "--hidden", "16", "--json",
        ];
        args.extend(extra);
        let o = wgtrain(&args);
        assert!(o.status.success(), "{extra:?}: {}", text(&o));
        o
    };
    let o = run(&["--schedule", "cosine", "--warmup-steps", "5"]);
    assert_eq!(epochs_json(&o).len(), 2);
    assert!(
        text(&o).contains("learning rate: linear warm-up over 5 steps, then cosine from 0.1 to 0"),
        "{}",
        text(&o)
    );
    // The default is the constant rate, which a step schedule that never
    // steps within the run reproduces bit for bit; a cosine one differs.
    let constant = epochs_json(&run(&[]));
    assert_eq!(constant, epochs_json(&run(&["--schedule", "constant"])));
    assert_eq!(
        constant,
        epochs_json(&run(&[
            "--schedule",
            "step",
            "--lr-step-epochs",
            "2",
            "--lr-gamma",
            "0.5"
        ]))
    );
    assert_ne!(constant, epochs_json(&run(&["--schedule", "one-cycle"])));

    let refused = |extra: &[&str], wants: &[&str]| {
        let mut args = vec!["train", "--data", "builtin", "--device", "cpu", "--epochs", "2"];
        args.extend(extra);
        let o = wgtrain(&args);
        let t = text(&o);
        assert!(!o.status.success(), "{extra:?}: {t}");
        assert!(!t.contains("panicked"), "{t}");
        for w in wants {
            assert!(t.contains(w), "{extra:?}: no {w:?} in {t}");
        }
    };
    refused(
        &["--schedule", "step", "--lr-step-epochs", "1", "--lr-gamma", "0"],
        &["--lr-gamma: learning-rate step factor 0 is out of range"],
    );
    refused(
        &["--schedule", "step", "--lr-step-epochs", "0"],
        &["--lr-step-epochs: "],
    );
    refused(&["--schedule", "step"], &["--lr-step-epochs"]);
    refused(
        &["--warmup-steps", "5", "--warmup-epochs", "1"],
        &["--warmup-steps", "--warmup-epochs"],
    );
    refused(
        &["--schedule", "cosine", "--lr-min", "0.5"],
        &["--lr-min: final learning rate 0.5"],
    );
    refused(&["--lr-min", "0.01"], &["--lr-min applies only to --schedule cosine"]);
    refused(
        &["--schedule", "cosine", "--lr-gamma", "0.5"],
        &["--lr-gamma applies only to --schedule step"],
    );
    // Known only once the data gives the run's length: 2 epochs of 23 steps.
    refused(
        &["--warmup-epochs", "2"],
        &["--warmup-epochs: warm-up epochs 2 (of a run of 2)"],
    );
    refused(
        &["--warmup-steps", "46"],
        &["--warmup-steps: warm-up steps 46 (of a run of 46)"],
    );
    // The other values are checked before the data is read.
    let o = wgtrain(&[
        "train",
        "--data",
        "/nonexistent",
        "--schedule",
        "step",
        "--lr-step-epochs",
        "1",
        "--lr-gamma",
        "2",
    ]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("--lr-gamma") && !t.contains("nonexistent"),
        "{t}"
    );
}

#[test]
fn bad_optimizer_settings_name_their_flag() {
    let refused = |args: &[&str], want: &str| {
        let mut all = vec!["train", "--data", "builtin", "--device", "cpu", "--epochs", "1"];
        all.extend_from_slice(args);
        let o = wgtrain(&all);
        let t = text(&o);
        assert!(!o.status.success() && t.contains(want), "{args:?}: {t}");
    };
    refused(&["--nesterov"], "--nesterov: Nesterov momentum");
    refused(&["--momentum=-0.5"], "--momentum: momentum -0.5 is out of range");
    refused(
        &["--optimizer", "adam", "--betas", "0.9,1"],
        "--betas: Adam betas 0.9,1 is out of range",
    );
    refused(
        &["--optimizer", "adam", "--betas", "0.9"],
        "--betas: expected two numbers",
    );
    refused(
        &["--optimizer", "adamw", "--eps=-1"],
        "--eps: Adam epsilon -1 is out of range",
    );
    refused(
        &["--weight-decay=-1"],
        "--weight-decay: weight decay -1 is out of range",
    );
    refused(
        &["--optimizer", "adam", "--momentum", "0.9"],
        "apply to --optimizer sgd only",
    );
}

#[test]
fn adamw_trains_the_builtin_digits_on_the_cpu() {
    let o = wgtrain(&[
        "train",
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--hidden",
        "32",
        "--optimizer",
        "adamw",
        "--lr",
        "0.003",
        "--weight-decay",
        "0.01",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("adamw lr 0.003"), "{t}");
}

#[test]
fn label_smoothing_and_clipping_train_and_bad_values_name_their_flag() {
    let run = |extra: &[&str]| {
        let mut all = vec![
            "train", "--data", "builtin", "--device", "cpu", "--epochs", "3", "--hidden", "32", "--json",
        ];
        all.extend_from_slice(extra);
        wgtrain(&all)
    };
    let plain = run(&[]);
    let o = run(&["--label-smoothing", "0.1", "--clip-grad-norm", "0.5"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let (p, r) = (epochs_json(&plain), epochs_json(&o));
    let acc = r[2]["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.7, "{acc}");
    // The smoothed, clipped run is a different run.
    assert_ne!(p[2]["train_loss"], r[2]["train_loss"]);
    for (args, want) in [
        (["--label-smoothing", "1"], "--label-smoothing"),
        (["--clip-grad-norm", "0"], "--clip-grad-norm"),
    ] {
        let o = run(&args);
        let t = text(&o);
        assert!(!o.status.success() && t.contains(want), "{args:?}: {t}");
    }
}

#[test]
fn shift_on_csv_data_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("d.csv");
    let rows: String = (0..20)
        .map(|i| format!("{},{},{},{}\n", i, i * 2, i % 3, i % 2))
        .collect();
    std::fs::write(&csv, rows).unwrap();
    let o = wgtrain(&[
        "train",
        "--data",
        csv.to_str().unwrap(),
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--shift",
        "1",
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("--shift") && t.contains("[3]") && !t.contains("panicked"),
        "{t}"
    );
}

#[test]
fn dropout_and_shift_train_on_builtin_digits() {
    let o = wgtrain(&[
        "train",
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--hidden",
        "32",
        "--dropout",
        "0.2",
        "--shift",
        "1",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("test accuracy"), "{t}");
}

/// `--init` starts from a saved model's weights: one epoch at a tiny
/// learning rate from a trained model keeps its accuracy, where the same
/// epoch from a fresh initialisation is far below it; the architecture
/// comes from the file, so --hidden with --init is refused.
#[test]
fn init_fine_tunes_a_saved_model_and_refuses_a_second_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.safetensors");
    let common = ["train", "--data", "builtin", "--device", "cpu", "--json"];
    let mut args = common.to_vec();
    args.extend(["--hidden", "24", "--epochs", "20", "--save", base.to_str().unwrap()]);
    let o = wgtrain(&args);
    assert!(o.status.success(), "{}", text(&o));
    let trained = epochs_json(&o).last().unwrap()["test_accuracy"].as_f64().unwrap();

    let mut args = common.to_vec();
    args.extend(["--epochs", "1", "--lr", "1e-6", "--init", base.to_str().unwrap()]);
    let o = wgtrain(&args);
    assert!(o.status.success(), "{}", text(&o));
    let tuned = epochs_json(&o)[0]["test_accuracy"].as_f64().unwrap();
    assert!((tuned - trained).abs() < 0.01, "from {trained} to {tuned}");

    let mut args = common.to_vec();
    args.extend(["--hidden", "24", "--epochs", "1", "--lr", "1e-6"]);
    let fresh = epochs_json(&wgtrain(&args))[0]["test_accuracy"].as_f64().unwrap();
    assert!(fresh < trained - 0.2, "fresh {fresh} vs trained {trained}");

    let mut args = common.to_vec();
    args.extend(["--hidden", "30", "--init", base.to_str().unwrap()]);
    let o = wgtrain(&args);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("--hidden") && t.contains("--init"),
        "{t}"
    );
}

/// With `XDG_RUNTIME_DIR` unset, enumerating adapters prints nothing about
/// it (Mesa's Vulkan drivers probe libwayland, which complains when it is
/// unset), and the private folder the binary makes for the run is gone
/// afterwards. Without an adapter nothing is probed, so under
/// `WGTRAIN_REQUIRE_GPU=1` an adapter must be listed.
#[test]
fn listing_adapters_without_xdg_runtime_dir_prints_no_complaint() {
    let child = Command::new(env!("CARGO_BIN_EXE_wgtrain"))
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run wgtrain");
    let pid = child.id();
    let o = child.wait_with_output().expect("wait for wgtrain");
    assert!(o.status.success(), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
    let dir = std::env::temp_dir().join(format!("wgtrain-runtime-{pid}"));
    assert!(!dir.exists(), "{} was left behind", dir.display());
    if std::env::var("WGTRAIN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            stdout.lines().any(|l| l.starts_with("[0]")),
            "no adapter listed:\n{stdout}"
        );
    }
}

/// Without the cargo feature `mpi`, `--distributed` names the feature and
/// how to build with it, and trains nothing.
#[cfg(not(feature = "mpi"))]
#[test]
fn distributed_without_the_mpi_feature_says_how_to_build_it() {
    let o = wgtrain(&[
        "train",
        "--distributed",
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--epochs",
        "1",
    ]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("--features mpi") && t.contains("libopenmpi-dev"), "{t}");
    assert!(!t.contains("epoch 1 done"), "{t}");
}

fn eval_json(model: &str) -> serde_json::Value {
    let o = wgtrain(&[
        "eval", "--model", model, "--data", "builtin", "--device", "cpu", "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `eval --model a,b` and `wgtrain ensemble` (f32 and int8 members): the
/// file evaluates as the list does, the ensemble beats neither member by
/// chance alone but is a valid evaluation; mismatched and nested members
/// are refused naming the files; `predict` takes the list too.
#[test]
fn ensembles_evaluate_from_a_list_or_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    for (seed, hidden) in [("1", "32"), ("2", "20")] {
        let out = path(&format!("m{seed}.safetensors"));
        let o = wgtrain(&[
            "train", "--data", "builtin", "--device", "cpu", "--epochs", "4", "--hidden", hidden, "--seed", seed,
            "--save", &out,
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let (m1, m2, q2) = (path("m1.safetensors"), path("m2.safetensors"), path("q2.safetensors"));
    let o = wgtrain(&[
        "compress",
        "--model",
        &m2,
        "--out",
        &q2,
        "--quantize",
        "int8",
        "--device",
        "cpu",
        "--data",
        "builtin",
    ]);
    assert!(o.status.success(), "{}", text(&o));

    let list = eval_json(&format!("{m1},{q2}"));
    assert_eq!(list["examples"].as_u64(), Some(359));
    let e = path("e.safetensors");
    let o = wgtrain(&["ensemble", "--out", &e, &m1, &q2]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ensemble of 2"), "{}", text(&o));
    let file = eval_json(&e);
    assert_eq!(file["accuracy"], list["accuracy"]);
    assert_eq!(file["loss"], list["loss"]);
    assert_eq!(file["confusion"], list["confusion"]);
    // Not either member's figures: the mean of their probabilities.
    let (a1, a2) = (eval_json(&m1), eval_json(&q2));
    assert!(
        list["loss"] != a1["loss"] && list["loss"] != a2["loss"],
        "{list} {a1} {a2}"
    );
    let o = wgtrain(&["eval", "--model", &e, "--data", "builtin", "--device", "cpu"]);
    assert!(text(&o).contains("on ensemble of 2"), "{}", text(&o));

    // predict: the same classes from the list as from the file.
    let csv = path("x.csv");
    let row: Vec<String> = (0..64).map(|i| ((i * 5) % 17).to_string()).collect();
    std::fs::write(&csv, format!("{}\n", row.join(","))).unwrap();
    let pl = wgtrain(&["predict", "--model", &format!("{m1},{q2}"), "--json", &csv]);
    let pf = wgtrain(&["predict", "--model", &e, "--json", &csv]);
    assert!(pl.status.success(), "{}", text(&pl));
    assert_eq!(pl.stdout, pf.stdout);

    // A model of other inputs: refused, naming both files and values.
    let csv_data = path("d.csv");
    std::fs::write(&csv_data, "1,2,0\n3,4,1\n5,6,1\n7,8,0\n1,1,1\n").unwrap();
    let small = path("small.safetensors");
    let o = wgtrain(&[
        "train", "--data", &csv_data, "--device", "cpu", "--epochs", "1", "--hidden", "4", "--save", &small,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = wgtrain(&["ensemble", "--out", &path("bad.safetensors"), &m1, &small]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("m1.safetensors takes 64") && t.contains("small.safetensors takes 2"),
        "{t}"
    );
    assert!(!dir.path().join("bad.safetensors").exists());
    let o = wgtrain(&[
        "eval",
        "--model",
        &format!("{m1},{small}"),
        "--data",
        "builtin",
        "--device",
        "cpu",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("small.safetensors"),
        "{}",
        text(&o)
    );
    // Ensembles do not nest.
    let o = wgtrain(&["ensemble", "--out", &path("nested.safetensors"), &e, &m1]);
    assert!(
        !o.status.success() && text(&o).contains("ensembles do not nest"),
        "{}",
        text(&o)
    );
    // One member is no ensemble.
    let o = wgtrain(&["ensemble", "--out", &path("one.safetensors"), &m1]);
    assert!(!o.status.success());
}

/// `wgtrain average` writes a model that evaluates; compressed members and
/// other architectures are refused naming the file; `train --swa-from`
/// saves the average and says so, and bad values name the flag.
#[test]
fn average_and_swa_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    for (seed, hidden) in [("1", "32"), ("2", "32"), ("3", "20")] {
        let out = path(&format!("m{seed}.safetensors"));
        let o = wgtrain(&[
            "train", "--data", "builtin", "--device", "cpu", "--epochs", "3", "--hidden", hidden, "--seed", seed,
            "--save", &out,
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let avg = path("avg.safetensors");
    let o = wgtrain(&[
        "average",
        "--out",
        &avg,
        &path("m1.safetensors"),
        &path("m2.safetensors"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let a = wgtrain::Mlp::load(std::path::Path::new(&avg)).unwrap();
    let m1 = wgtrain::Mlp::load(std::path::Path::new(&path("m1.safetensors"))).unwrap();
    let m2 = wgtrain::Mlp::load(std::path::Path::new(&path("m2.safetensors"))).unwrap();
    let hand = (m1.layers[1].weight[7] + m2.layers[1].weight[7]) / 2.0;
    assert!((a.layers[1].weight[7] - hand).abs() < 1e-7);
    assert!(eval_json(&avg)["accuracy"].as_f64().unwrap() > 0.0);
    let o = wgtrain(&[
        "average",
        "--out",
        &path("x.safetensors"),
        &path("m1.safetensors"),
        &path("m3.safetensors"),
    ]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("m3.safetensors has [64, 20, 10]"),
        "{t}"
    );
    let q = path("q.safetensors");
    let o = wgtrain(&[
        "compress",
        "--model",
        &path("m1.safetensors"),
        "--out",
        &q,
        "--quantize",
        "int8",
        "--device",
        "cpu",
        "--data",
        "builtin",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = wgtrain(&["average", "--out", &path("x.safetensors"), &path("m2.safetensors"), &q]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("q.safetensors is compressed"), "{t}");

    let s = path("swa.safetensors");
    let o = wgtrain(&[
        "train",
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--epochs",
        "4",
        "--hidden",
        "32",
        "--swa-from",
        "2",
        "--val-split",
        "0.1",
        "--save",
        &s,
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("weight average of epochs 2 to 4"), "{t}");
    assert!(eval_json(&s)["accuracy"].as_f64().unwrap() > 0.5);
    for bad in ["0", "5"] {
        let o = wgtrain(&[
            "train",
            "--data",
            "builtin",
            "--device",
            "cpu",
            "--epochs",
            "4",
            "--swa-from",
            bad,
        ]);
        let t = text(&o);
        assert!(!o.status.success() && t.contains("--swa-from"), "{bad}: {t}");
    }
}

/// A 64-8-10 model of one epoch on the built-in digits, saved in `dir`.
fn tiny_model(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("m.safetensors");
    let o = wgtrain(&[
        "train",
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--save",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    model
}

/// A reader that goes away (`wgtrain eval ... | head -1`) ends the command
/// quietly with success: no panic, no error message. The pipe's read end
/// is closed before the command starts, so every write to it fails.
#[test]
fn closed_stdout_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let idx = dir.path().join("x.idx");
    let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 8, 0, 0, 0, 8];
    bytes.extend((0..128).map(|i| i as u8));
    std::fs::write(&idx, bytes).unwrap();
    let x = idx.to_str().unwrap();
    let runs: [&[&str]; 4] = [
        &["eval", "--model", m, "--data", "builtin", "--device", "cpu"],
        &["eval", "--model", m, "--data", "builtin", "--device", "cpu", "--json"],
        &["predict", "--model", m, "--device", "cpu", x],
        &["predict", "--model", m, "--device", "cpu", "--json", x],
    ];
    for args in runs {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(env!("CARGO_BIN_EXE_wgtrain"))
            .args(args)
            .env_remove("WGTRAIN_DATA")
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{args:?}: {:?} {err}", o.status);
        assert!(!err.contains("panicked") && !err.contains("error"), "{args:?}: {err}");
    }
}

/// `serve` refuses to listen beyond loopback without a token, and refuses
/// an empty or weak token file, before it serves anything.
#[test]
fn serve_needs_a_token_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let o = wgtrain(&["serve", "--model", m, "--addr", "0.0.0.0:0", "--device", "cpu"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--token-file"), "{}", text(&o));
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let weak = dir.path().join("weak");
    std::fs::write(&weak, "abc\n").unwrap();
    for (file, msg) in [
        (&empty, "empty"),
        (&weak, "at least 16"),
        (&dir.path().join("none"), "cannot read"),
    ] {
        let o = wgtrain(&[
            "serve",
            "--model",
            m,
            "--addr",
            "127.0.0.1:0",
            "--device",
            "cpu",
            "--token-file",
            file.to_str().unwrap(),
        ]);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(text(&o).contains(msg), "{msg}: {}", text(&o));
    }
    let o = wgtrain(&["serve", "--model", m, "--body-timeout", "0", "--device", "cpu"]);
    assert!(
        !o.status.success() && text(&o).contains("--body-timeout"),
        "{}",
        text(&o)
    );
}

/// A run too large for the host is refused before anything is allocated,
/// with what it needs, what the host has and what to change (before: the
/// allocator aborted with a backtrace).
#[test]
fn a_run_too_large_for_the_host_is_refused_with_both_figures() {
    for (hidden, device) in [
        ("3000000000", "cpu"),
        ("30000000,30000000", "cpu"),
        ("3000000000", "auto"),
    ] {
        let o = wgtrain(&[
            "train", "--data", "builtin", "--device", device, "--hidden", hidden, "--epochs", "1",
        ]);
        let t = text(&o);
        assert!(!o.status.success(), "{hidden}: {t}");
        assert!(t.contains("needs about") && t.contains("--hidden"), "{hidden}: {t}");
        assert!(!t.contains("panicked") && !t.contains("backtrace"), "{hidden}: {t}");
    }
}
