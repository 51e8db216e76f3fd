//! Checkpoints and resume: a run stopped at any checkpoint (epoch ends and
//! mid-epoch ones) and resumed into a fresh backend ends with the same
//! model, bit for bit on the CPU, as one never interrupted; mismatched,
//! truncated and damaged checkpoints are refused; and through the binary,
//! SIGTERM and SIGKILL followed by `--resume` give the uninterrupted run's
//! model file.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use wgtrain::backend::{Backend, TrainSpec};
use wgtrain::checkpoint::{self, Fingerprint};
use wgtrain::cpu::CpuBackend;
use wgtrain::data::{builtin, Dataset, Normalize, Preprocess};
use wgtrain::optim::{Adam, Optimizer, Sgd};
use wgtrain::train::{fingerprint, train, train_resumable, Checkpointing, TrainConfig};
use wgtrain::{Error, Mlp};

/// The built-in digits, with a validation split when `val`.
fn digits(val: bool) -> Arc<Dataset> {
    let mut d = builtin::load(0.2, 0).unwrap();
    if val {
        d.hold_out_validation(0.1, 0).unwrap();
    }
    Arc::new(d)
}

fn model(d: &Dataset, hidden: usize, seed: u64) -> Mlp {
    let p = Preprocess::fit(Normalize::Scale, d);
    Mlp::new(&[d.dim(), hidden, d.classes], seed, p, d.shape.clone()).unwrap()
}

/// Every parameter's bits.
fn bits(m: &Mlp) -> Vec<u32> {
    m.layers
        .iter()
        .flat_map(|l| l.weight.iter().chain(&l.bias).map(|v| v.to_bits()))
        .collect()
}

fn cpu(m: Mlp, d: &Arc<Dataset>, spec: TrainSpec) -> CpuBackend {
    CpuBackend::with_threads(m, d.clone(), spec, 1).unwrap()
}

fn policy<'a>(dir: &Path, f: Fingerprint, every: Option<usize>) -> Checkpointing<'a> {
    Checkpointing {
        dir: dir.to_path_buf(),
        each_epoch: true,
        every_steps: every,
        keep: 1000,
        fingerprint: f,
        extra: "{}".into(),
        stop: None,
        resume: None,
    }
}

fn adam() -> Optimizer {
    Optimizer::Adam(Adam {
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.01,
    })
}

/// Train uninterrupted; train again writing checkpoints (every epoch and
/// every `every` steps); then resume from each checkpoint into a fresh
/// backend (other initial weights) and finish: every result has the
/// uninterrupted run's bits.
fn resume_matches_uninterrupted(spec: TrainSpec, mut cfg: TrainConfig, val: bool, every: usize) {
    let data = digits(val);
    if val {
        cfg.val_split = 0.1;
    }
    let full = train(&mut cpu(model(&data, 24, 0), &data, spec), &data, &cfg, &mut |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fp = fingerprint(&data, &model(&data, 24, 0), &spec, &cfg);
    let ck = policy(dir.path(), fp.clone(), Some(every));
    let with_ck = train_resumable(
        &mut cpu(model(&data, 24, 0), &data, spec),
        &data,
        &cfg,
        &ck,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(bits(&with_ck), bits(&full), "writing checkpoints changes nothing");
    let files = checkpoint::list(dir.path()).unwrap();
    let steps = data.train.len().div_ceil(spec.batch);
    let mid = files
        .iter()
        .filter(|p| !p.to_string_lossy().ends_with(&format!("-s{steps:06}.safetensors")))
        .count();
    assert_eq!(files.len() - mid, cfg.epochs, "one checkpoint per epoch end");
    assert!(mid >= cfg.epochs, "and mid-epoch ones: {files:?}");
    for f in &files {
        let saved = checkpoint::read(f).unwrap();
        if val && saved.loop_state.epochs_run > 0 {
            assert!(saved.best.is_some(), "{} keeps the best model", f.display());
        }
        let averaged = cfg
            .swa_from
            .map_or(0, |from| (saved.loop_state.epochs_run + 1).saturating_sub(from));
        assert_eq!(saved.swa.is_some(), averaged > 0, "{}", f.display());
        assert_eq!(saved.loop_state.swa_count, averaged, "{}", f.display());
        let mut fresh = cpu(model(&data, 24, 77), &data, spec);
        let mut events = 0;
        let resumed = Checkpointing {
            resume: Some(&saved),
            ..policy(&dir.path().join("again"), fp.clone(), None)
        };
        let m = train_resumable(&mut fresh, &data, &cfg, &resumed, &mut |_| events += 1).unwrap();
        assert_eq!(bits(&m), bits(&full), "resumed from {}", f.display());
        assert!(events >= 1);
    }
}

#[test]
fn resuming_adam_with_a_validation_split_from_any_checkpoint_is_exact() {
    let mut cfg = TrainConfig::constant(5, 0.005, 3, 4);
    cfg.early_stop = Some(50);
    resume_matches_uninterrupted(TrainSpec::new(64, adam()), cfg, true, 7);
}

#[test]
fn resuming_a_weight_averaged_run_from_any_checkpoint_is_exact() {
    // The average starts at epoch 2, so checkpoints before, at and after
    // its start (and mid-epoch ones) all resume to the same average.
    let mut cfg = TrainConfig::constant(4, 0.05, 2, 0);
    cfg.swa_from = Some(2);
    resume_matches_uninterrupted(TrainSpec::sgd(64), cfg, true, 9);
}

#[test]
fn resuming_momentum_sgd_on_a_cosine_schedule_from_any_checkpoint_is_exact() {
    let spec = TrainSpec::new(
        50,
        Optimizer::Sgd(Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
        }),
    );
    let mut cfg = TrainConfig::constant(4, 0.05, 1, 0);
    let steps = digits(false).train.len().div_ceil(50);
    let spec_sched = wgtrain::optim::ScheduleSpec {
        lr: 0.05,
        decay: wgtrain::optim::Decay::Cosine { lr_min: 0.001 },
        warmup: wgtrain::optim::Warmup::Steps(5),
    };
    cfg.schedule = wgtrain::optim::LrSchedule::new(&spec_sched, steps, 4).unwrap();
    resume_matches_uninterrupted(spec, cfg, false, 5);
}

#[test]
fn plain_sgd_resumes_exactly_and_old_checkpoints_are_pruned() {
    let data = digits(false);
    let spec = TrainSpec::sgd(64);
    let cfg = TrainConfig::constant(3, 0.1, 0, 0);
    let full = train(&mut cpu(model(&data, 16, 0), &data, spec), &data, &cfg, &mut |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fp = fingerprint(&data, &model(&data, 16, 0), &spec, &cfg);
    let ck = Checkpointing {
        keep: 2,
        ..policy(dir.path(), fp.clone(), Some(4))
    };
    // A file of another name in the folder is left alone.
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    train_resumable(
        &mut cpu(model(&data, 16, 0), &data, spec),
        &data,
        &cfg,
        &ck,
        &mut |_| {},
    )
    .unwrap();
    let files = checkpoint::list(dir.path()).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(dir.path().join("notes.txt").exists());
    let latest = checkpoint::latest(dir.path()).unwrap();
    assert_eq!(latest, files[1]);
    let saved = checkpoint::read(&files[0]).unwrap();
    let resumed = Checkpointing {
        resume: Some(&saved),
        ..policy(&dir.path().join("b"), fp, None)
    };
    let m = train_resumable(
        &mut cpu(model(&data, 16, 5), &data, spec),
        &data,
        &cfg,
        &resumed,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(bits(&m), bits(&full));
}

/// A checkpoint of a short Adam run on the digits, its data and settings.
fn one_checkpoint(dir: &Path) -> (std::path::PathBuf, Arc<Dataset>, TrainSpec, TrainConfig) {
    let data = digits(false);
    let spec = TrainSpec::new(64, adam());
    let cfg = TrainConfig::constant(1, 0.01, 0, 0);
    let fp = fingerprint(&data, &model(&data, 16, 0), &spec, &cfg);
    train_resumable(
        &mut cpu(model(&data, 16, 0), &data, spec),
        &data,
        &cfg,
        &policy(dir, fp, None),
        &mut |_| {},
    )
    .unwrap();
    (checkpoint::latest(dir).unwrap(), data, spec, cfg)
}

#[test]
fn a_checkpoint_of_other_data_architecture_or_optimizer_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (file, data, spec, cfg) = one_checkpoint(dir.path());
    let saved = checkpoint::read(&file).unwrap();
    let refused = |data: &Arc<Dataset>, hidden: usize, spec: TrainSpec, what: &str| {
        let fp = fingerprint(data, &model(data, hidden, 0), &spec, &cfg);
        let ck = Checkpointing {
            resume: Some(&saved),
            ..policy(&dir.path().join("x"), fp, None)
        };
        let mut b = cpu(model(data, hidden, 0), data, spec);
        let e = train_resumable(&mut b, data, &cfg, &ck, &mut |_| {}).unwrap_err();
        assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("{what}: the checkpoint was written with")),
            "{msg}"
        );
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        msg
    };
    let msg = refused(&data, 16, TrainSpec::new(64, Optimizer::sgd()), "optimizer");
    assert!(msg.contains("Adam") && msg.contains("Sgd"), "both values named: {msg}");
    let msg = refused(&data, 20, spec, "architecture");
    assert!(msg.contains("64-16-10") && msg.contains("64-20-10"), "{msg}");
    let mut other = (*data).clone();
    other.train.labels[0] = (other.train.labels[0] + 1) % 10;
    refused(&Arc::new(other), 16, spec, "data");
    // The backend itself refuses a state of other shapes.
    let mut b = cpu(model(&data, 20, 0), &data, spec);
    assert!(b.restore(&saved.state).is_err());
    let mut b = cpu(model(&data, 16, 0), &data, TrainSpec::sgd(64));
    assert!(b.restore(&saved.state).is_err(), "Adam's moments do not fit plain SGD");
}

#[test]
fn truncated_or_damaged_checkpoints_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (file, ..) = one_checkpoint(dir.path());
    let bytes = std::fs::read(&file).unwrap();
    for (name, damaged) in [
        ("truncated.safetensors", bytes[..bytes.len() - 100].to_vec()),
        ("header-only.safetensors", bytes[..bytes.len() / 50].to_vec()),
        ("flipped.safetensors", {
            let mut b = bytes.clone();
            let at = b.len() - 10;
            b[at] ^= 0x40;
            b
        }),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, damaged).unwrap();
        let e = checkpoint::read(&p).unwrap_err();
        assert!(e.to_string().contains(name), "{e}");
        if name == "flipped.safetensors" {
            assert!(e.to_string().contains("checksum"), "{e}");
        }
    }
    assert!(checkpoint::read(&file).is_ok());
    let e = checkpoint::latest(&dir.path().join("empty-nothing")).unwrap_err();
    assert!(e.to_string().contains("empty-nothing"), "{e}");
}

/// A checkpoint written before weight averaging existed (no `swa_count` in
/// its loop state) still reads, with no average; a run with `swa_from`
/// refuses it, naming the setting.
#[test]
fn checkpoints_from_before_weight_averaging_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let (file, data, spec, cfg) = one_checkpoint(dir.path());
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = md.metadata().clone().unwrap();
    let mut ls: serde_json::Value = serde_json::from_str(&meta["loop"]).unwrap();
    assert!(ls.as_object_mut().unwrap().remove("swa_count").is_some());
    meta.insert("loop".into(), ls.to_string());
    let tensors: Vec<_> = st
        .names()
        .into_iter()
        .map(|n| (n.to_string(), st.tensor(n).unwrap()))
        .collect();
    let old = dir.path().join("old.safetensors");
    std::fs::write(&old, safetensors::serialize(tensors, Some(meta)).unwrap()).unwrap();
    let saved = checkpoint::read(&old).unwrap();
    assert_eq!((saved.swa.is_none(), saved.loop_state.swa_count), (true, 0));
    let mut with_swa = cfg.clone();
    with_swa.swa_from = Some(1);
    let fp = fingerprint(&data, &model(&data, 16, 0), &spec, &with_swa);
    let ck = Checkpointing {
        resume: Some(&saved),
        ..policy(&dir.path().join("x"), fp, None)
    };
    let e = train_resumable(
        &mut cpu(model(&data, 16, 0), &data, spec),
        &data,
        &with_swa,
        &ck,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("swa_from"), "{e}");
}

#[test]
fn gpu_state_round_trips_and_a_resumed_gpu_run_matches() {
    let Some(ctx) = common::gpu() else { return };
    let data = digits(false);
    let spec = TrainSpec::new(32, adam());
    let cfg = TrainConfig::constant(2, 0.01, 0, 0);
    let gpu = |m: Mlp| wgtrain::gpu::GpuBackend::new(ctx.clone(), m, data.clone(), spec).unwrap();
    let full = train(&mut gpu(model(&data, 16, 0)), &data, &cfg, &mut |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fp = fingerprint(&data, &model(&data, 16, 0), &spec, &cfg);
    let mut first = gpu(model(&data, 16, 0));
    train_resumable(
        &mut first,
        &data,
        &cfg,
        &policy(dir.path(), fp.clone(), Some(13)),
        &mut |_| {},
    )
    .unwrap();
    // state() of one backend restored into another reads back the same.
    let s = first.state().unwrap();
    assert_eq!(s.slots.len(), 2);
    assert!(s.slots.iter().all(|l| l.weight.len() == 2 && l.bias.len() == 2));
    let mut other = gpu(model(&data, 16, 9));
    other.restore(&s).unwrap();
    assert_eq!(other.state().unwrap(), s);
    // The GPU state resumes on the CPU too (the same file format): CPU and
    // GPU agree within the usual tolerance, and GPU->GPU resume is checked
    // against the uninterrupted GPU run.
    for f in checkpoint::list(dir.path()).unwrap() {
        let saved = checkpoint::read(&f).unwrap();
        let resumed = Checkpointing {
            resume: Some(&saved),
            ..policy(&dir.path().join("again"), fp.clone(), None)
        };
        let m = train_resumable(&mut gpu(model(&data, 16, 3)), &data, &cfg, &resumed, &mut |_| {}).unwrap();
        let worst = full
            .layers
            .iter()
            .zip(&m.layers)
            .flat_map(|(a, b)| a.weight.iter().zip(&b.weight))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-4,
            "resumed from {}: max weight difference {worst}",
            f.display()
        );
    }
}

// ---------------------------------------------------------------- binary

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

/// The tensors of a model file, by name, as bytes.
fn tensors(p: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort();
    v
}

/// A run long enough to be stopped while it goes: 150 epochs of the
/// digits, momentum SGD on a cosine schedule with a validation split.
const RUN: &[&str] = &[
    "train",
    "--data",
    "builtin",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--hidden",
    "24",
    "--epochs",
    "150",
    "--optimizer",
    "sgd",
    "--momentum",
    "0.9",
    "--lr",
    "0.02",
    "--schedule",
    "cosine",
    "--val-split",
    "0.1",
    "-q",
];

/// Start the long run writing checkpoints every 5 steps into `ck`, send
/// `signal` once one exists, and return its exit output.
#[cfg(unix)]
fn stopped_run(ck: &Path, save: &Path, metrics: &Path, signal: &str) -> Output {
    let mut args: Vec<&str> = RUN.to_vec();
    args.extend([
        "--checkpoint-dir",
        ck.to_str().unwrap(),
        "--checkpoint-every",
        "5",
        "--save",
        save.to_str().unwrap(),
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]);
    let child = Command::new(env!("CARGO_BIN_EXE_wgtrain"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while checkpoint::list(ck).map_or(true, |f| f.is_empty()) {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let st = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    child.wait_with_output().unwrap()
}

#[cfg(unix)]
#[test]
fn sigterm_and_sigkill_then_resume_give_the_uninterrupted_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let mut args: Vec<&str> = RUN.to_vec();
    let full = d("full.safetensors");
    args.extend(["--save", full.to_str().unwrap()]);
    let o = wgtrain(&args);
    assert!(o.status.success(), "{}", text(&o));

    for signal in ["-TERM", "-KILL"] {
        let (ck, save, metrics) = (
            d(&format!("ck{signal}")),
            d(&format!("m{signal}.safetensors")),
            d(&format!("run{signal}.csv")),
        );
        let o = stopped_run(&ck, &save, &metrics, signal);
        assert!(!o.status.success(), "{signal}: the run must be stopped: {}", text(&o));
        assert!(!save.exists(), "{signal}: no model before the run ends");
        if signal == "-TERM" {
            let t = text(&o);
            assert!(
                t.contains(&format!("resume with: wgtrain train --resume {}", ck.display())),
                "{t}"
            );
            assert!(t.contains("interrupted at epoch"), "{t}");
        }
        // Resume with the folder alone: the stored settings, --save included.
        let o = wgtrain(&["train", "--resume", ck.to_str().unwrap(), "-q"]);
        assert!(o.status.success(), "{signal}: {}", text(&o));
        assert_eq!(tensors(&save), tensors(&full), "{signal}: resumed model differs");
        // The metrics file was appended to: every epoch once, in order.
        let rows = wgtrain::metrics::read_metrics(&metrics).unwrap();
        let epochs: Vec<usize> = rows.iter().filter(|r| r.kind == "epoch").map(|r| r.epoch).collect();
        if signal == "-TERM" {
            assert_eq!(epochs, (1..=150).collect::<Vec<_>>());
        } else {
            // A kill loses the epochs logged after the newest checkpoint.
            assert!(epochs.windows(2).all(|w| w[1] <= w[0] + 1) && epochs.last() == Some(&150));
        }
    }
}

#[test]
fn resume_refuses_other_settings_naming_the_flag_and_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let c = ck.to_str().unwrap();
    let o = wgtrain(&[
        "train",
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--hidden",
        "16",
        "--optimizer",
        "adamw",
        "--lr",
        "0.01",
        "--checkpoint-dir",
        c,
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for (flag, value, said) in [
        ("--hidden", "32", "written with 16, this run asks for 32"),
        ("--optimizer", "sgd", "written with adamw, this run asks for sgd"),
        ("--test-split", "0.3", "written with 0.2, this run asks for 0.3"),
        ("--epochs", "3", "written with 2, this run asks for 3"),
    ] {
        let o = wgtrain(&["train", "--resume", c, flag, value]);
        let t = text(&o);
        assert!(!o.status.success(), "{t}");
        assert!(
            t.contains(&format!("{flag}: the checkpoint")) && t.contains(said),
            "{flag}: {t}"
        );
    }
    // Repeating a stored value, or changing a flag that does not alter
    // the model, is fine.
    let o = wgtrain(&["train", "--resume", c, "--hidden", "16", "--threads", "1", "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = wgtrain(&["train", "--resume", c, "--init", "x.safetensors"]);
    assert!(!o.status.success() && text(&o).contains("--init"), "{}", text(&o));
    // Other data under the same flags: the fingerprint names it.
    let csv = dir.path().join("d.csv");
    let rows = |k: u32| {
        (0..60)
            .map(|i| format!("{},{},{}\n", i % 7, (i * k) % 5, i % 3))
            .collect::<String>()
    };
    std::fs::write(&csv, rows(3)).unwrap();
    let ck2 = dir.path().join("ck2");
    let o = wgtrain(&[
        "train",
        "--data",
        csv.to_str().unwrap(),
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--hidden",
        "4",
        "--checkpoint-dir",
        ck2.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(&csv, rows(4)).unwrap();
    let o = wgtrain(&["train", "--resume", ck2.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("data: the checkpoint was written with"),
        "{}",
        text(&o)
    );
    // A truncated newest checkpoint is refused, naming it.
    let newest = checkpoint::latest(&ck).unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let o = wgtrain(&["train", "--resume", c]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains(&newest.display().to_string()), "{t}");
}
