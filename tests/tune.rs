//! Hyperparameter search: successive halving's decisions on scripted
//! curves, the samplers, refused spaces, resuming a study, several workers
//! on one database, and `wgtrain tune` end to end.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use wgtrain::backend::{Backend, Regularization, TrainSpec};
use wgtrain::cpu::CpuBackend;
use wgtrain::data::{builtin, Dataset};
use wgtrain::gpu::GpuBackend;
use wgtrain::model::Mlp;
use wgtrain::tune::storage::{CurvePoint, Outcome};
use wgtrain::tune::{
    run_study, Asha, Sampler, Space, Storage, StudyOptions, StudySettings, TrialConfig, TrialEvent, TrialState,
};

fn point(epoch: usize, acc: f64) -> CurvePoint {
    CurvePoint {
        epoch,
        train_loss: 1.0,
        train_accuracy: acc,
        val_loss: 1.0 - acc,
        val_accuracy: acc,
        seconds: 0.0,
    }
}

fn settings(space: &Space, asha: Option<Asha>) -> StudySettings {
    StudySettings {
        space: space.clone(),
        sampler: Sampler::Random,
        seed: 0,
        asha,
        val_split: 0.1,
        data: "scripted".into(),
    }
}

/// Nine trials arrive one after the other at rungs 1 and 3 (grace 1, eta 3,
/// 9 epochs); each row gives its validation accuracy at epoch 1 and 3, and
/// what successive halving must do, worked out by hand from the rule: of the
/// n results at a rung so far (this one included), the best
/// max(1, floor(n / 3)) go on, ties included.
///
/// | trial | acc@1 | results at rung 1 so far, sorted      | k | acc@3 | rung 3 so far     | k | outcome        |
/// |-------|-------|---------------------------------------|---|-------|-------------------|---|----------------|
/// | 0     | .50   | .50                                   | 1 | .60   | .60               | 1 | complete (9)   |
/// | 1     | .40   | .50 .40                               | 1 |       |                   |   | pruned at 1    |
/// | 2     | .70   | .70 .50 .40                           | 1 | .55   | .60 .55           | 1 | pruned at 3    |
/// | 3     | .60   | .70 .60 .50 .40                       | 1 |       |                   |   | pruned at 1    |
/// | 4     | .65   | .70 .65 .60 .50 .40                   | 1 |       |                   |   | pruned at 1    |
/// | 5     | .62   | .70 .65 .62 .60 .50 .40               | 2 |       |                   |   | pruned at 1    |
/// | 6     | .66   | .70 .66 .65 .62 .60 .50 .40           | 2 | .65   | .65 .60 .55       | 1 | complete (9)   |
/// | 7     | .65   | .70 .66 .65 .65 .62 .60 .50 .40       | 2 |       |                   |   | pruned at 1    |
/// | 8     | .90   | .90 .70 .66 .65 .65 .62 .60 .50 .40   | 3 | .61   | .65 .61 .60 .55   | 1 | pruned at 3    |
#[test]
fn successive_halving_promotes_the_top_third_of_each_rung_so_far() {
    let script: [(f64, f64); 9] = [
        (0.50, 0.60),
        (0.40, 0.0),
        (0.70, 0.55),
        (0.60, 0.0),
        (0.65, 0.0),
        (0.62, 0.0),
        (0.66, 0.65),
        (0.65, 0.0),
        (0.90, 0.61),
    ];
    let expected: [(usize, TrialState); 9] = [
        (9, TrialState::Complete),
        (1, TrialState::Pruned),
        (3, TrialState::Pruned),
        (1, TrialState::Pruned),
        (1, TrialState::Pruned),
        (1, TrialState::Pruned),
        (9, TrialState::Complete),
        (1, TrialState::Pruned),
        (3, TrialState::Pruned),
    ];
    let dir = tempfile::tempdir().unwrap();
    let asha = Asha::new(1, 3, 9).unwrap();
    assert_eq!(asha.rungs(), vec![1, 3]);
    let space = Space::fixed_defaults(9);
    let mut db = Storage::open(&dir.path().join("s.db")).unwrap();
    db.init_study(&settings(&space, Some(asha))).unwrap();
    let config = TrialConfig::from_values(&BTreeMap::new());
    for (i, &(a1, a3)) in script.iter().enumerate() {
        let (number, _) = db
            .claim("w", 100, 60.0, &|_| Some(config.clone()))
            .unwrap()
            .expect("a trial");
        assert_eq!(number, i);
        let mut state = TrialState::Complete;
        for epoch in 1..=9 {
            // Between the rungs the curve holds its last rung's value.
            let acc = if epoch < 3 { a1 } else { a3 };
            if !db.report(number, "w", &point(epoch, acc), Some(&asha)).unwrap() {
                state = TrialState::Pruned;
                break;
            }
        }
        let o = Outcome {
            state,
            model: None,
            message: None,
        };
        assert!(db.finish(number, "w", &o).unwrap());
    }
    let got: Vec<(usize, TrialState)> = db.trials().unwrap().iter().map(|t| (t.epochs, t.state)).collect();
    assert_eq!(got, expected);
    // The best epoch's figures are kept (trial 0 peaks at 0.60 from epoch 3).
    let t0 = &db.trials().unwrap()[0];
    assert_eq!((t0.best_epoch, t0.val_accuracy), (Some(3), Some(0.60)));
    assert_eq!(db.curve(2).unwrap().len(), 3);
}

fn parse(text: &str) -> wgtrain::Result<Space> {
    Space::parse(text, Path::new("space.toml"))
}

#[test]
fn the_grid_sampler_enumerates_the_product_of_the_keys_values() {
    let space = parse(
        r#"
        epochs = 2
        optimizer = ["sgd", "adam"]
        width = [16, 32, 64]
        lr = { min = 0.01, max = 1.0, log = true, points = 3 }
        "#,
    )
    .unwrap();
    assert_eq!(space.epochs, 2);
    assert_eq!(space.grid_size(), 18);
    let mut seen = BTreeSet::new();
    for n in 0..18 {
        let c = Sampler::Grid.sample(&space, 0, n).unwrap();
        seen.insert((c.optimizer.clone(), c.width, format!("{:.6}", c.lr)));
        // The fixed keys keep their defaults.
        assert_eq!((c.depth, c.batch, c.schedule.as_str()), (1, 64, "constant"));
    }
    let mut product = BTreeSet::new();
    for o in ["sgd", "adam"] {
        for w in [16, 32, 64] {
            // Three points spaced geometrically from 0.01 to 1.
            for lr in [0.01, 0.1, 1.0] {
                product.insert((o.to_string(), w, format!("{lr:.6}")));
            }
        }
    }
    assert_eq!(seen, product);
    assert!(Sampler::Grid.sample(&space, 0, 18).is_none());
    assert_eq!(Sampler::Grid.limit(&space), Some(18));
}

#[test]
fn the_random_sampler_is_seeded_and_draws_log_uniformly_within_the_ranges() {
    let space = parse(
        r#"
        lr = { min = 0.001, max = 0.1, log = true }
        dropout = { min = 0.1, max = 0.5 }
        width = { min = 8, max = 64 }
        batch = [16, 32]
        "#,
    )
    .unwrap();
    let draws: Vec<TrialConfig> = (0..400)
        .map(|n| Sampler::Random.sample(&space, 7, n).unwrap())
        .collect();
    let again: Vec<TrialConfig> = (0..400)
        .map(|n| Sampler::Random.sample(&space, 7, n).unwrap())
        .collect();
    assert_eq!(draws, again);
    let other: Vec<TrialConfig> = (0..400)
        .map(|n| Sampler::Random.sample(&space, 8, n).unwrap())
        .collect();
    assert_ne!(draws, other);
    for c in &draws {
        assert!((0.001..=0.1).contains(&c.lr), "lr {}", c.lr);
        assert!((0.1..=0.5).contains(&c.dropout), "dropout {}", c.dropout);
        assert!((8..=64).contains(&c.width), "width {}", c.width);
        assert!(c.batch == 16 || c.batch == 32);
    }
    // Log-uniform: half the draws below the geometric middle (0.01), where
    // a uniform draw would put 9%.
    let below = draws.iter().filter(|c| c.lr < 0.01).count() as f64 / 400.0;
    assert!((0.4..0.6).contains(&below), "{below} of the draws below 0.01");
    // Each decade holds about a half.
    let top = draws.iter().filter(|c| c.lr > 0.05).count() as f64 / 400.0;
    assert!(top < 0.25, "{top} above 0.05");
    let ends = draws.iter().filter(|c| c.width == 8 || c.width == 64).count();
    assert!(ends > 0, "the range's ends are drawn");
}

#[test]
fn bad_spaces_are_refused_with_the_key_and_the_reason() {
    let cases = [
        ("lr = { min = 0.1, max = 0.1 }", "lr", "an empty range"),
        ("dropout = { min = 0.4, max = 0.2 }", "dropout", "an empty range"),
        ("learning_rate = 0.1", "learning_rate", "unknown key"),
        (
            "lr = { min = 0.0, max = 0.1, log = true }",
            "lr",
            "a log range must lie above 0",
        ),
        (
            "weight_decay = { min = -1e-3, max = 1e-3, log = true }",
            "weight_decay",
            "a log range must lie above 0",
        ),
        ("optimizer = []", "optimizer", "an empty choice list"),
        ("optimizer = [\"sgd\", \"lbfgs\"]", "optimizer", "`lbfgs` is not one of"),
        (
            "lr = { min = 0.01, max = 0.1, step = 2 }",
            "lr",
            "unknown range key `step`",
        ),
        ("lr = { max = 0.1 }", "lr", "a range needs `min`"),
        ("dropout = 1.5", "dropout", "outside [0, 1)"),
        ("width = [64, 0]", "width", "not a whole number"),
        ("epochs = [3, 5]", "epochs", "not a positive whole number"),
        (
            "schedule = { min = 1, max = 2 }",
            "schedule",
            "a range needs a numeric setting",
        ),
        ("lr = [", "(file)", "not valid TOML"),
        ("shift = [0, 1.5]", "shift", "not a whole number"),
        ("label_smoothing = 1.0", "label_smoothing", "outside [0, 1)"),
    ];
    for (text, key, why) in cases {
        let e = parse(text).expect_err(text).to_string();
        assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        assert!(e.contains(why), "{text}: {e}");
        assert!(e.starts_with("space.toml"), "{text}: {e}");
    }
}

fn digits() -> Dataset {
    let mut d = builtin::load(0.2, 0).unwrap();
    d.hold_out_validation(0.2, 0).unwrap();
    d
}

fn tiny_space() -> Space {
    parse(
        r#"
        epochs = 3
        lr = { min = 0.02, max = 0.3, log = true }
        width = [8, 16]
        batch = 128
        "#,
    )
    .unwrap()
}

fn options(dir: &Path, trials: usize) -> StudyOptions {
    StudyOptions {
        trials,
        sampler: Sampler::Random,
        seed: 3,
        asha: Some(Asha::new(1, 2, 3).unwrap()),
        parallel: 1,
        out: dir.to_path_buf(),
        storage: dir.join("study.db"),
        stale_after: Duration::from_secs(3),
        val_split: 0.2,
        class_names: Vec::new(),
    }
}

fn cpu(m: Mlp, d: Arc<Dataset>, s: TrainSpec) -> wgtrain::Result<Box<dyn Backend>> {
    Ok(Box::new(CpuBackend::with_threads(m, d, s, 1)?))
}

fn quiet(_: &TrialEvent) {}

#[test]
fn shift_and_label_smoothing_reach_the_trials_training_settings() {
    let space = parse("shift = 2\nlabel_smoothing = 0.1\nlr = 0.05").unwrap();
    let config = Sampler::Random.sample(&space, 1, 0).unwrap();
    let spec = config.spec(7);
    assert_eq!(spec.regular.shift, 2);
    assert!((spec.regular.label_smoothing - 0.1).abs() < 1e-7);
    assert!(
        config.summary().ends_with("shift 2 smoothing 0.10"),
        "{}",
        config.summary()
    );
    // Left out, both are off, as in `wgtrain train`.
    let plain = Sampler::Random.sample(&parse("lr = 0.05").unwrap(), 1, 0).unwrap();
    assert_eq!(plain.spec(7).regular, Regularization::default());
}

#[test]
fn a_study_stored_before_the_shift_keys_existed_continues() {
    let dir = tempfile::tempdir().unwrap();
    let space = parse("lr = { min = 0.01, max = 0.1, log = true }").unwrap();
    let mut older = space.clone();
    older.dims.remove("shift");
    older.dims.remove("label_smoothing");
    assert_ne!(older, space);
    let mut db = Storage::open(&dir.path().join("study.db")).unwrap();
    db.init_study(&settings(&older, None)).unwrap();
    db.init_study(&settings(&space, None))
        .expect("the same space with the new keys at their defaults");
    // A new key drawn from a range is another space.
    let shifted = parse("lr = { min = 0.01, max = 0.1, log = true }\nshift = [0, 1]").unwrap();
    let e = db.init_study(&settings(&shifted, None)).unwrap_err().to_string();
    assert!(e.contains("the search space"), "{e}");
}

#[test]
fn a_shift_the_images_cannot_take_is_refused_before_any_trial() {
    let dir = tempfile::tempdir().unwrap();
    // The built-in digits are 8 x 8: a shift of 8 reaches across them.
    let space = parse("epochs = 1\nshift = [0, 8]\nwidth = 8").unwrap();
    let e = match run_study(&space, digits(), &options(dir.path(), 2), &cpu, &quiet) {
        Ok(_) => panic!("a study with shifts of 8 on 8 x 8 images ran"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("shift") && e.contains("8 x 8"), "{e}");
    assert!(!dir.path().join("study.db").exists(), "the study started: {e}");
}

#[test]
fn a_resumed_study_repeats_no_finished_trial_and_reruns_a_dead_processs_trial() {
    let dir = tempfile::tempdir().unwrap();
    let space = tiny_space();
    let first = run_study(&space, digits(), &options(dir.path(), 2), &cpu, &quiet).unwrap();
    assert_eq!(first.ran, vec![0, 1]);
    assert!(first.best.is_some());
    let curve_of_1 = Storage::open(&dir.path().join("study.db")).unwrap().curve(1).unwrap();
    // A process claims trial 2 and dies without a word.
    {
        let mut db = Storage::open(&dir.path().join("study.db")).unwrap();
        let sample = |n: usize| Sampler::Random.sample(&space, 3, n);
        let (n, _) = db.claim("dead", 3, 3.0, &sample).unwrap().unwrap();
        assert_eq!(n, 2);
    }
    // Too soon: the trial still counts as running, so the study adds trial 3
    // and leaves trial 2 alone, with no best yet.
    let second = run_study(&space, digits(), &options(dir.path(), 4), &cpu, &quiet).unwrap();
    assert_eq!(second.ran, vec![3]);
    assert!(second.best.is_none());
    std::thread::sleep(Duration::from_millis(3100));
    let third = run_study(&space, digits(), &options(dir.path(), 4), &cpu, &quiet).unwrap();
    assert_eq!(third.ran, vec![2], "only the dead process's trial runs again");
    let db = Storage::open(&dir.path().join("study.db")).unwrap();
    let trials = db.trials().unwrap();
    assert_eq!(trials.len(), 4);
    assert!(trials.iter().all(|t| t.state.is_finished()));
    let attempts: Vec<i64> = trials.iter().map(|t| t.attempts).collect();
    assert_eq!(attempts, vec![1, 1, 2, 1]);
    assert_eq!(
        db.curve(1).unwrap(),
        curve_of_1,
        "a finished trial's curve is untouched"
    );
    assert!(third.best.is_some());
    assert!(dir.path().join("best.safetensors").is_file());
    // A study with other settings is refused.
    let mut other = options(dir.path(), 4);
    other.seed = 4;
    let e = run_study(&space, digits(), &other, &cpu, &quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("other settings") && e.contains("the seed"), "{e}");
}

#[test]
fn workers_sharing_one_database_run_disjoint_trials() {
    let dir = tempfile::tempdir().unwrap();
    let space = tiny_space();
    let mut opts = options(dir.path(), 8);
    opts.parallel = 2;
    // Two studies at once on one database (separate connections, as two
    // processes have), each with two trials at a time.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run_study(&space, digits(), &opts, &cpu, &quiet).unwrap());
        let b = s.spawn(|| run_study(&space, digits(), &opts, &cpu, &quiet).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    let sa: BTreeSet<usize> = a.ran.iter().copied().collect();
    let sb: BTreeSet<usize> = b.ran.iter().copied().collect();
    assert!(sa.is_disjoint(&sb), "{sa:?} and {sb:?}");
    assert_eq!(sa.union(&sb).copied().collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    let trials = Storage::open(&dir.path().join("study.db")).unwrap().trials().unwrap();
    assert!(trials.iter().all(|t| t.attempts == 1 && t.state.is_finished()));
}

#[test]
fn wgtrain_tune_runs_a_small_study_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("study");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_wgtrain"))
            .args(args)
            .env_remove("WGTRAIN_DATA")
            .output()
            .expect("run wgtrain");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    };
    let out_s = out.to_str().unwrap();
    let (ok, text) = run(&[
        "tune",
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--trials",
        "4",
        "--epochs",
        "3",
        "--out",
        out_s,
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("ran 4 trial(s)"), "{text}");
    assert!(text.contains("best: trial"), "{text}");
    assert!(out.join("best.safetensors").is_file());
    let db = out.join("study.db");
    let (ok, text) = run(&["tune", "--report", db.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("4 trials:"), "{text}");
    let rows = text
        .lines()
        .filter(|l| l.contains(" lr ") && l.contains(" batch "))
        .count();
    assert_eq!(rows, 4, "{text}");
    // A bad space file is refused before any data is read.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "lr = { min = 0.0, max = 1.0, log = true }\n").unwrap();
    let (ok, text) = run(&[
        "tune",
        "--space",
        bad.to_str().unwrap(),
        "--data",
        "/nonexistent",
        "--out",
        out_s,
    ]);
    assert!(!ok);
    assert!(
        text.contains("`lr`") && text.contains("a log range must lie above 0"),
        "{text}"
    );
}

/// Two trials at once on one GPU (two backends sharing the device, their
/// submissions interleaved in its queue) train as the CPU trains them.
#[test]
fn gpu_trials_share_one_device_and_match_the_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let space = tiny_space();
    let gpu_dir = tempfile::tempdir().unwrap();
    let cpu_dir = tempfile::tempdir().unwrap();
    let mut opts = options(gpu_dir.path(), 2);
    opts.parallel = 2;
    opts.asha = None;
    let make = |m: Mlp, d: Arc<Dataset>, s: TrainSpec| -> wgtrain::Result<Box<dyn Backend>> {
        Ok(Box::new(GpuBackend::new(ctx.clone(), m, d, s)?))
    };
    let on_gpu = run_study(&space, digits(), &opts, &make, &quiet).unwrap();
    let mut cpu_opts = options(cpu_dir.path(), 2);
    cpu_opts.asha = None;
    run_study(&space, digits(), &cpu_opts, &cpu, &quiet).unwrap();
    assert_eq!(on_gpu.ran, vec![0, 1]);
    let g = Storage::open(&gpu_dir.path().join("study.db")).unwrap();
    let c = Storage::open(&cpu_dir.path().join("study.db")).unwrap();
    for n in 0..2 {
        let (gc, cc) = (g.curve(n).unwrap(), c.curve(n).unwrap());
        assert_eq!(gc.len(), 3);
        assert_eq!(gc.len(), cc.len());
        for (a, b) in gc.iter().zip(&cc) {
            // 288 validation examples: the two devices' rounding may move
            // one or two of them.
            assert!(
                (a.val_accuracy - b.val_accuracy).abs() <= 0.011,
                "trial {n} epoch {}: GPU {} CPU {}",
                a.epoch,
                a.val_accuracy,
                b.val_accuracy
            );
            assert!(
                (a.val_loss - b.val_loss).abs() <= 1e-2 * b.val_loss.max(1.0),
                "trial {n}: {a:?} {b:?}"
            );
        }
    }
}

/// The spaces the README runs (scripts/*.toml) load, with the keys and
/// epochs it quotes.
#[test]
fn the_spaces_in_scripts_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let fashion = Space::load(&root.join("tune-fashion.toml")).unwrap();
    assert_eq!(fashion.epochs, 81);
    assert_eq!(fashion.largest("shift"), Some(1.0));
    let seed = Space::load(&root.join("tune-throughput.toml")).unwrap();
    assert_eq!(seed.epochs, 2);
    assert_eq!(seed.grid_size(), 3, "one range (3 grid points), every other key fixed");
}
