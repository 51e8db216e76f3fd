//! Knowledge distillation on the CPU: the soft-target kernels against an
//! f64 formula and its finite differences, the backend against plain
//! training (alpha 0) and against a teacher that computes what the student
//! does (no gradient), and `wgtrain distill` end to end with its refusals.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use wgtrain::backend::{steps_per_epoch, Backend, Distillation, Regularization, TrainSpec};
use wgtrain::cpu::kernels::{soft_target_xent, soft_targets, SoftTarget};
use wgtrain::cpu::CpuBackend;
use wgtrain::data::{epoch_permutation, CsvOptions, DataSource, Dataset, Normalize, Preprocess};
use wgtrain::optim::{Adam, Optimizer, StepHyper};
use wgtrain::Mlp;

/// The distillation loss of one row in f64, written from its definition:
/// `(1 - a) * -sum_k q_k log softmax(z)_k + a T^2 sum_k p_k log(p_k /
/// softmax(z / T)_k)`, with `q` the label target smoothed by `s`.
fn reference_row_loss(z: &[f64], p: &[f64], label: usize, t: f64, a: f64, s: f64) -> f64 {
    let log_softmax = |scale: f64| -> Vec<f64> {
        let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v * scale));
        let lse = z.iter().map(|&v| (v * scale - m).exp()).sum::<f64>().ln() + m;
        z.iter().map(|&v| v * scale - lse).collect()
    };
    let ls = log_softmax(1.0);
    let lt = log_softmax(1.0 / t);
    let k = z.len() as f64;
    let ce: f64 = (0..z.len())
        .map(|j| {
            let q = if j == label { 1.0 - s } else { 0.0 } + s / k;
            -q * ls[j]
        })
        .sum();
    let kl: f64 = p
        .iter()
        .zip(&lt)
        .filter(|(&pj, _)| pj > 0.0)
        .map(|(&pj, &l)| pj * (pj.ln() - l))
        .sum();
    (1.0 - a) * ce + a * t * t * kl
}

/// Softmax of `z / t` in f64.
fn softened(z: &[f32], t: f64) -> Vec<f64> {
    let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64 / t));
    let e: Vec<f64> = z.iter().map(|&v| (v as f64 / t - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn labels_for(rows: usize, classes: usize, seed: u64) -> Vec<u32> {
    common::random(rows, seed)
        .iter()
        .map(|v| (((v + 1.0) / 2.0 * classes as f32) as u32).min(classes as u32 - 1))
        .collect()
}

#[test]
fn soft_targets_are_the_mean_of_the_teachers_softened_probabilities() {
    for (rows, classes) in [(1, 3), (7, 10), (33, 31)] {
        let t = 3.5f32;
        let z1: Vec<f32> = common::random(rows * classes, 10).iter().map(|v| 6.0 * v).collect();
        let z2: Vec<f32> = common::random(rows * classes, 11).iter().map(|v| 6.0 * v).collect();
        let mut p = vec![f32::NAN; rows * classes];
        soft_targets(&z1, &mut p, rows, classes, 1.0 / t, 0.5, false);
        soft_targets(&z2, &mut p, rows, classes, 1.0 / t, 0.5, true);
        for r in 0..rows {
            let row = r * classes..(r + 1) * classes;
            let (a, b) = (
                softened(&z1[row.clone()], t as f64),
                softened(&z2[row.clone()], t as f64),
            );
            for j in 0..classes {
                let want = 0.5 * (a[j] + b[j]);
                let got = p[r * classes + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * want + 1e-9,
                    "{rows}x{classes} row {r} class {j}: {got} vs {want}"
                );
            }
            let sum: f64 = p[row].iter().map(|&v| v as f64).sum();
            assert!((sum - 1.0).abs() < 1e-5, "row {r} sums to {sum}");
        }
    }
}

#[test]
fn soft_target_xent_matches_the_formula_and_its_finite_differences() {
    let cases = [
        // (rows, classes, T, alpha, smoothing)
        (1, 3, 4.0, 0.7, 0.0),
        (7, 10, 2.0, 0.5, 0.1),
        (33, 31, 4.0, 1.0, 0.0),
        (7, 3, 1.0, 0.0, 0.2),
        (33, 10, 8.0, 0.9, 0.05),
    ];
    for (c, &(rows, classes, t, alpha, s)) in cases.iter().enumerate() {
        let seed = 100 + 10 * c as u64;
        let z: Vec<f32> = common::random(rows * classes, seed).iter().map(|v| 5.0 * v).collect();
        let teacher: Vec<f32> = common::random(rows * classes, seed + 1)
            .iter()
            .map(|v| 8.0 * v)
            .collect();
        let labels = labels_for(rows, classes, seed + 2);
        let mut p = vec![0.0; rows * classes];
        soft_targets(&teacher, &mut p, rows, classes, 1.0 / t, 1.0, false);
        let k = SoftTarget::new(t, alpha, s, rows, classes);
        let mut d = vec![f32::NAN; rows * classes];
        let (loss, correct) = soft_target_xent(&z, &p, &labels, &mut d, rows, classes, &k);

        let (t64, a64, s64) = (t as f64, alpha as f64, s as f64);
        let row_loss = |zr: &[f64], r: usize| {
            let pr: Vec<f64> = p[r * classes..(r + 1) * classes].iter().map(|&v| v as f64).collect();
            reference_row_loss(zr, &pr, labels[r] as usize, t64, a64, s64)
        };
        let mut want_loss = 0.0;
        let mut want_correct = 0;
        for r in 0..rows {
            let zr: Vec<f64> = z[r * classes..(r + 1) * classes].iter().map(|&v| v as f64).collect();
            want_loss += row_loss(&zr, r);
            let best = (0..classes).fold(0, |b, j| if zr[j] > zr[b] { j } else { b });
            want_correct += (best == labels[r] as usize) as u32;
            // Central differences of the batch's mean loss.
            let h = 1e-5;
            for j in 0..classes {
                let (mut up, mut down) = (zr.clone(), zr.clone());
                up[j] += h;
                down[j] -= h;
                let fd = (row_loss(&up, r) - row_loss(&down, r)) / (2.0 * h) / rows as f64;
                let got = d[r * classes + j] as f64;
                let tol = 2e-6 * (1.0 + t64) / rows as f64 + 1e-4 * fd.abs();
                assert!(
                    (got - fd).abs() <= tol,
                    "case {c} ({rows}x{classes}, T {t}, alpha {alpha}, s {s}) row {r} class {j}: gradient {got} vs finite difference {fd}"
                );
            }
        }
        assert!(
            (loss - want_loss).abs() <= 1e-5 * (1.0 + want_loss.abs()),
            "case {c}: loss {loss} vs {want_loss}"
        );
        assert_eq!(correct, want_correct, "case {c}");
    }
}

fn digits() -> Arc<Dataset> {
    Arc::new(DataSource::Builtin.load(CsvOptions::default()).unwrap())
}

fn model(data: &Dataset, hidden: &[usize], seed: u64) -> Mlp {
    let mut sizes = vec![data.dim()];
    sizes.extend_from_slice(hidden);
    sizes.push(data.classes);
    Mlp::new(
        &sizes,
        seed,
        Preprocess::fit(Normalize::Scale, data),
        data.shape.clone(),
    )
    .unwrap()
}

/// Run `steps` steps from the start of epoch 1 on `b`.
fn run_steps(b: &mut dyn Backend, n: usize, steps: usize, lr: f32) -> f64 {
    let spe = steps_per_epoch(n, b.batch_size());
    let mut loss = 0.0;
    for global in 0..steps {
        let (epoch, step) = (global / spe, global % spe);
        if step == 0 {
            b.begin_epoch(&epoch_permutation(n, 3, epoch + 1)).unwrap();
        }
        b.train_steps(step, &StepHyper::constant(lr, 1)).unwrap();
        loss += b.take_stats().unwrap().loss_sum;
    }
    loss
}

fn bits(m: &Mlp) -> Vec<u32> {
    m.layers
        .iter()
        .flat_map(|l| l.weight.iter().chain(&l.bias))
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn alpha_zero_is_plain_training_bit_for_bit() {
    let data = digits();
    let n = data.train.len();
    let teacher = model(&data, &[40], 99);
    let regulars = [
        Regularization::default(),
        Regularization {
            label_smoothing: 0.1,
            dropout: 0.2,
            shift: 1,
            clip_grad_norm: Some(1.0),
        },
    ];
    for (i, regular) in regulars.into_iter().enumerate() {
        let optimizer = if i == 0 {
            Optimizer::sgd()
        } else {
            Optimizer::Adam(Adam::default())
        };
        let spec = TrainSpec {
            regular,
            seed: 5,
            ..TrainSpec::new(32, optimizer)
        };
        let lr = if i == 0 { 0.1 } else { 0.003 };
        let student = model(&data, &[24], 1);
        let mut plain = CpuBackend::with_threads(student.clone(), data.clone(), spec, 1).unwrap();
        let mut distilled = CpuBackend::with_threads(student, data.clone(), spec, 1).unwrap();
        distilled
            .set_distillation(Some(&Distillation {
                teachers: vec![teacher.clone()],
                temperature: 4.0,
                alpha: 0.0,
                cached: None,
            }))
            .unwrap();
        // Past an epoch's end (45 steps of 32), so the partial batch is covered.
        let a = run_steps(&mut plain, n, 50, lr);
        let b = run_steps(&mut distilled, n, 50, lr);
        assert_eq!(a.to_bits(), b.to_bits(), "case {i}: loss {a} vs {b}");
        assert_eq!(
            bits(&plain.model().unwrap()),
            bits(&distilled.model().unwrap()),
            "case {i}"
        );
        // And with the soft targets weighted, the run differs.
        let mut weighted = CpuBackend::with_threads(model(&data, &[24], 1), data.clone(), spec, 1).unwrap();
        weighted
            .set_distillation(Some(&Distillation {
                teachers: vec![teacher.clone()],
                temperature: 4.0,
                alpha: 0.5,
                cached: None,
            }))
            .unwrap();
        run_steps(&mut weighted, n, 3, lr);
        assert_ne!(bits(&weighted.model().unwrap()), bits(&plain.model().unwrap()));
    }
}

/// The largest change of any parameter between two models.
fn max_change(a: &Mlp, b: &Mlp) -> f32 {
    a.layers
        .iter()
        .zip(&b.layers)
        .flat_map(|(p, q)| {
            p.weight
                .iter()
                .zip(&q.weight)
                .chain(p.bias.iter().zip(&q.bias))
                .map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f32::max)
}

/// A teacher computing the student's own logits, with other preprocessing:
/// inputs scaled by twice the student's factor, first-layer weights halved
/// (both exact in binary floating point).
fn twin_teacher(student: &Mlp) -> Mlp {
    let mut t = student.clone();
    t.preprocess.scale *= 2.0;
    t.preprocess.offset *= 2.0;
    for w in &mut t.layers[0].weight {
        *w *= 0.5;
    }
    t
}

#[test]
fn a_teacher_that_computes_the_students_logits_gives_no_soft_gradient() {
    // With alpha 1 the gradient is T (softmax(z/T) - p_T) / rows, zero when
    // the teacher's logits are the student's: that holds only if the
    // teacher applies its own preprocessing to the student's (shifted) rows.
    let data = digits();
    let n = data.train.len();
    let spec = TrainSpec {
        regular: Regularization {
            shift: 1,
            ..Regularization::default()
        },
        seed: 11,
        ..TrainSpec::sgd(32)
    };
    let student = model(&data, &[24], 2);
    let distill = |teachers: Vec<Mlp>, alpha: f32| {
        let mut b = CpuBackend::with_threads(student.clone(), data.clone(), spec, 1).unwrap();
        b.set_distillation(Some(&Distillation {
            teachers,
            temperature: 3.0,
            alpha,
            cached: None,
        }))
        .unwrap();
        run_steps(&mut b, n, 1, 0.5);
        max_change(&b.model().unwrap(), &student)
    };
    let twin = twin_teacher(&student);
    let still = distill(vec![twin.clone(), student.clone()], 1.0);
    assert!(still < 1e-5, "the soft gradient moved a parameter by {still}");
    // The same teacher read through the student's preprocessing is another
    // model, and a hard-label step moves the weights by far more.
    let mut wrong = twin.clone();
    wrong.preprocess = student.preprocess;
    let moved = distill(vec![wrong], 1.0);
    let hard = distill(vec![twin], 0.0);
    assert!(moved > 1e-3, "{moved}");
    assert!(hard > 1e-3, "{hard}");
}

#[test]
fn distillation_refuses_bad_settings_and_teachers() {
    let data = digits();
    let student = model(&data, &[24], 2);
    let mut b = CpuBackend::with_threads(student.clone(), data.clone(), TrainSpec::sgd(32), 1).unwrap();
    let teacher = model(&data, &[8], 3);
    let mut other_classes = student.clone();
    other_classes.layers[1] = wgtrain::model::Linear {
        inputs: 24,
        outputs: 7,
        weight: vec![0.0; 24 * 7],
        bias: vec![0.0; 7],
    };
    let bad = [
        (vec![teacher.clone()], 0.0, 0.5, "temperature 0 is out of range"),
        (vec![teacher.clone()], -1.0, 0.5, "temperature -1 is out of range"),
        (vec![teacher.clone()], f32::NAN, 0.5, "temperature NaN is out of range"),
        (vec![teacher.clone()], 4.0, 1.5, "(alpha) 1.5 is out of range"),
        (vec![teacher.clone()], 4.0, -0.1, "(alpha) -0.1 is out of range"),
        (vec![], 4.0, 0.5, "distillation needs at least one teacher"),
        (vec![teacher, other_classes], 4.0, 0.5, "teacher 2 is a 64-24-7 model"),
    ];
    for (teachers, temperature, alpha, want) in bad {
        let e = b
            .set_distillation(Some(&Distillation {
                teachers,
                temperature,
                alpha,
                cached: None,
            }))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn distill_command_trains_a_student_and_refuses_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("teacher.safetensors");
    let student = dir.path().join("student.safetensors");
    let common = ["--data", "builtin", "--device", "cpu", "--threads", "1"];
    let o = wgtrain(
        &[
            &["train"][..],
            &common,
            &["--hidden", "64", "--epochs", "15", "--save", s(&teacher)],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let ck = dir.path().join("ck");
    let o = wgtrain(
        &[
            &[
                "distill",
                "--teacher",
                s(&teacher),
                "--temperature",
                "3",
                "--alpha",
                "0.8",
            ][..],
            &common,
            &[
                "--hidden",
                "16",
                "--epochs",
                "12",
                "--shift",
                "1",
                "--val-split",
                "0.1",
                "--save",
                s(&student),
                "--checkpoint-dir",
                s(&ck),
                "--keep-checkpoints",
                "12",
                "--json",
            ],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("distillation: 1 teacher(s), temperature 3, alpha 0.8"),
        "{}",
        text(&o)
    );
    let epochs: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(epochs.len(), 12);
    // (The same student trained alone reaches about 72% here, distilled 87%.)
    let acc = epochs[11]["validation_accuracy"].as_f64().unwrap();
    assert!(acc > 0.8, "student validation accuracy {acc}");
    let m = wgtrain::AnyModel::load(&student).unwrap().to_mlp().unwrap();
    assert_eq!(m.sizes(), vec![64, 16, 10]);

    // A distill checkpoint resumes only with distill, and keeps its teachers.
    let o = wgtrain(&[&["train", "--resume", s(&ck)][..], &common[4..]].concat());
    assert!(!o.status.success());
    assert!(text(&o).contains("written by wgtrain distill"), "{}", text(&o));
    let o = wgtrain(&["distill", "--resume", s(&ck), "--alpha", "0.5"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--alpha: the checkpoint"), "{}", text(&o));
    // A run resumed from the checkpoint of epoch 6 learns from the teachers
    // it stored and ends with the uninterrupted run's model, bit for bit...
    let again = dir.path().join("again.safetensors");
    let mid = ck.join("ckpt-e0006-s000021.safetensors");
    let o = wgtrain(&[
        "distill",
        "--resume",
        s(&mid),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--save",
        s(&again),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("distillation: 1 teacher(s), temperature 3, alpha 0.8"),
        "{}",
        text(&o)
    );
    let resumed = wgtrain::AnyModel::load(&again).unwrap().to_mlp().unwrap();
    assert_eq!(bits(&resumed), bits(&m), "the resumed run's model");
    // ... and refuses them once their weights changed.
    let mut changed = wgtrain::AnyModel::load(&teacher).unwrap().to_mlp().unwrap();
    changed.layers[0].bias[0] += 1.0;
    changed.save(&teacher).unwrap();
    let o = wgtrain(&["distill", "--resume", s(&ck), "--device", "cpu"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("other teachers"), "{}", text(&o));

    // A teacher of other classes and one of other inputs, named with their values.
    let seven = dir.path().join("seven.safetensors");
    Mlp::new(&[64, 8, 7], 1, Preprocess::identity(), vec![8, 8])
        .unwrap()
        .save(&seven)
        .unwrap();
    let three = dir.path().join("three.safetensors");
    Mlp::new(&[2, 4, 10], 1, Preprocess::identity(), vec![2])
        .unwrap()
        .save(&three)
        .unwrap();
    let two = format!("{},{}", s(&teacher), s(&seven));
    let bad: [(&[&str], &str); 6] = [
        (&["--teacher", &two], "seven.safetensors has 7 classes, the student 10"),
        (
            &["--teacher", s(&three)],
            "takes inputs of shape [2] (2 values), the student [8, 8] (64 values)",
        ),
        (&["--teacher", s(&teacher), "--temperature", "0"], "--temperature"),
        (
            &["--teacher", s(&teacher), "--temperature=-2"],
            "expected a positive number",
        ),
        (&["--teacher", s(&teacher), "--alpha", "1.01"], "--alpha"),
        (&[], "--teacher: give the teacher model file(s)"),
    ];
    for (flags, want) in bad {
        let o = wgtrain(&[&["distill"][..], &common, &["--epochs", "1"], flags].concat());
        assert!(!o.status.success(), "{flags:?}");
        assert!(text(&o).contains(want), "{flags:?}: {}", text(&o));
    }
    let missing = dir.path().join("missing.safetensors");
    let o = wgtrain(&[&["distill"][..], &common, &["--teacher", s(&missing)]].concat());
    assert!(text(&o).contains("--teacher: cannot load the model"), "{}", text(&o));
}

#[test]
fn cached_teacher_probabilities_train_as_the_teachers_do() {
    let data = digits();
    let n = data.train.len();
    let teachers = vec![model(&data, &[40], 31), twin_teacher(&model(&data, &[20], 32))];
    let spec = TrainSpec {
        seed: 6,
        ..TrainSpec::new(32, Optimizer::Adam(Adam::default()))
    };
    let cached = wgtrain::cpu::teacher_probabilities(&teachers, &data.train.features, 3.0);
    assert_eq!(cached.len(), n * data.classes);
    let run = |d: Distillation| {
        let mut b = CpuBackend::with_threads(model(&data, &[24], 1), data.clone(), spec, 1).unwrap();
        b.set_distillation(Some(&d)).unwrap();
        let loss = run_steps(&mut b, n, 50, 0.003);
        (loss, b.model().unwrap())
    };
    let live = run(Distillation {
        teachers: teachers.clone(),
        temperature: 3.0,
        alpha: 0.7,
        cached: None,
    });
    let from_cache = run(Distillation {
        teachers: vec![],
        temperature: 3.0,
        alpha: 0.7,
        cached: Some(Arc::new(cached.clone())),
    });
    // The teachers' forward passes over 1024-row chunks and over 32-row
    // batches round alike to within a few ulp.
    assert!(
        (live.0 - from_cache.0).abs() <= 1e-5 * live.0,
        "{} vs {}",
        live.0,
        from_cache.0
    );
    let worst = max_change(&live.1, &from_cache.1);
    assert!(worst < 1e-4, "weights differ by {worst}");
    // Refused: with shifted inputs, and of another length.
    let shifted = TrainSpec {
        regular: Regularization {
            shift: 1,
            ..Regularization::default()
        },
        ..spec
    };
    let mut b = CpuBackend::with_threads(model(&data, &[24], 1), data.clone(), shifted, 1).unwrap();
    let d = Distillation {
        teachers: vec![],
        temperature: 3.0,
        alpha: 0.7,
        cached: Some(Arc::new(cached.clone())),
    };
    let e = b.set_distillation(Some(&d)).unwrap_err().to_string();
    assert!(e.contains("cannot be used with a shift"), "{e}");
    let mut b = CpuBackend::with_threads(model(&data, &[24], 1), data.clone(), spec, 1).unwrap();
    let short = Distillation {
        cached: Some(Arc::new(cached[10..].to_vec())),
        ..d
    };
    let e = b.set_distillation(Some(&short)).unwrap_err().to_string();
    assert!(e.contains("the training split needs"), "{e}");
}

#[test]
fn teacher_cache_is_written_reused_and_refused_when_stale() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("teacher.safetensors");
    model(&digits(), &[32], 5).save(&teacher).unwrap();
    let cache = dir.path().join("probs.bin");
    let common = [
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--hidden",
        "16",
    ];
    let run = |out: &Path, extra: &[&str]| {
        wgtrain(
            &[
                &["distill", "--teacher", s(&teacher), "--epochs", "2", "--save", s(out)][..],
                &common,
                extra,
            ]
            .concat(),
        )
    };
    let (a, b, c) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
        dir.path().join("c.safetensors"),
    );
    let o = run(&a, &["--teacher-cache", s(&cache)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("written to"), "{}", text(&o));
    let o = run(&b, &["--teacher-cache", s(&cache)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("reusing"), "{}", text(&o));
    let load = |p: &Path| bits(&wgtrain::AnyModel::load(p).unwrap().to_mlp().unwrap());
    assert_eq!(load(&a), load(&b), "the same cache, the same run");
    // Without the cache the teachers run in each step: within rounding.
    let o = run(&c, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let (ma, mc) = (
        wgtrain::AnyModel::load(&a).unwrap().to_mlp().unwrap(),
        wgtrain::AnyModel::load(&c).unwrap().to_mlp().unwrap(),
    );
    assert!(max_change(&ma, &mc) < 1e-4);
    for (extra, want) in [
        (
            &["--teacher-cache", s(&cache), "--temperature", "2"][..],
            "made from other teachers",
        ),
        (
            &["--teacher-cache", s(&cache), "--shift", "1"][..],
            "cannot be used with --shift",
        ),
    ] {
        let o = run(&c, extra);
        assert!(!o.status.success(), "{extra:?}");
        assert!(text(&o).contains(want), "{extra:?}: {}", text(&o));
    }
    std::fs::write(&cache, b"wgtrain-teacher-probabilities\n{}").unwrap();
    let o = run(&c, &["--teacher-cache", s(&cache)]);
    assert!(text(&o).contains("--teacher-cache"), "{}", text(&o));
    assert!(!o.status.success());
}
