//! Knowledge distillation on the GPU: soft_targets and soft_target_xent
//! against their CPU twins on ragged shapes (NaN-poisoned outputs), and a
//! distilling GPU backend against the CPU one step by step.

mod common;

use std::sync::Arc;

use wgtrain::backend::{steps_per_epoch, Backend, Distillation, Regularization, StepStats, TrainSpec};
use wgtrain::cpu::kernels::{self as cpu, SoftTarget};
use wgtrain::cpu::CpuBackend;
use wgtrain::data::{epoch_permutation, CsvOptions, DataSource, Dataset, Normalize, Preprocess};
use wgtrain::gpu::{ops, GpuBackend};
use wgtrain::optim::{Adam, Optimizer, StepHyper};
use wgtrain::Mlp;

/// The shapes: rows 1, 7 and 33 (the kernels loop a thread over rows),
/// classes 3, 10 and 31.
const SHAPES: [(usize, usize); 5] = [(1, 3), (7, 10), (33, 31), (33, 3), (1, 31)];

/// exp and log are accurate to a few ulp on every backend WGSL targets;
/// each value sums `classes` terms. Relative to an f32 ulp.
const U: f64 = 1.0 / (1u64 << 24) as f64;

fn labels_for(rows: usize, classes: usize, seed: u64) -> Vec<u32> {
    common::random(rows, seed)
        .iter()
        .map(|v| (((v + 1.0) / 2.0 * classes as f32) as u32).min(classes as u32 - 1))
        .collect()
}

#[test]
fn soft_targets_match_cpu_twin() {
    let Some(ctx) = common::gpu() else { return };
    for (s, &(rows, classes)) in SHAPES.iter().enumerate() {
        let seed = 40 + 10 * s as u64;
        let z: Vec<f32> = common::random(rows * classes, seed).iter().map(|v| 8.0 * v).collect();
        let prior: Vec<f32> = common::random(rows * classes, seed + 1)
            .iter()
            .map(|v| 0.25 + 0.2 * v)
            .collect();
        for (t, weight, accumulate) in [(4.0f32, 1.0f32, false), (1.0, 0.5, true), (0.5, 0.25, true)] {
            let got = ops::soft_targets(&ctx, &z, &prior, rows, classes, t, weight, accumulate).unwrap();
            let mut twin = if accumulate {
                prior.clone()
            } else {
                vec![f32::NAN; rows * classes]
            };
            let inv_t = SoftTarget::new(t, 0.0, 0.0, rows, classes).inv_t;
            cpu::soft_targets(&z, &mut twin, rows, classes, inv_t, weight, accumulate);
            for (i, (g, w)) in got.iter().zip(&twin).enumerate() {
                let bound = (classes as f64 + 24.0) * U * w.abs() as f64 + 1e-12;
                assert!(
                    (*g as f64 - *w as f64).abs() <= bound,
                    "soft_targets {rows}x{classes} T {t} weight {weight} accumulate {accumulate} [{i}]: GPU {g} vs CPU {w}"
                );
            }
        }
    }
}

#[test]
fn soft_target_xent_matches_cpu_twin() {
    let Some(ctx) = common::gpu() else { return };
    let settings = [
        (4.0f32, 0.7f32, 0.0f32),
        (2.0, 0.3, 0.1),
        (1.0, 1.0, 0.0),
        (8.0, 0.0, 0.2),
    ];
    for (s, &(rows, classes)) in SHAPES.iter().enumerate() {
        for (c, &(t, alpha, smoothing)) in settings.iter().enumerate() {
            let seed = 300 + 40 * s as u64 + 4 * c as u64;
            let z: Vec<f32> = common::random(rows * classes, seed).iter().map(|v| 5.0 * v).collect();
            let teacher: Vec<f32> = common::random(rows * classes, seed + 1)
                .iter()
                .map(|v| 8.0 * v)
                .collect();
            let labels = labels_for(rows, classes, seed + 2);
            let k = SoftTarget::new(t, alpha, smoothing, rows, classes);
            let mut p = vec![0.0; rows * classes];
            cpu::soft_targets(&teacher, &mut p, rows, classes, k.inv_t, 1.0, false);
            let (d, loss, correct) = ops::soft_target_xent(&ctx, &z, &p, &labels, rows, classes, &k, None).unwrap();
            let mut twin = vec![f32::NAN; rows * classes];
            let (twin_loss, twin_correct) = cpu::soft_target_xent(&z, &p, &labels, &mut twin, rows, classes, &k);
            let what = format!("soft_target_xent {rows}x{classes} T {t} alpha {alpha} s {smoothing}");
            // Each gradient element is at most (1 + T) / rows in size.
            let elem = (classes as f64 + 24.0) * U * (1.0 + t as f64) / rows as f64;
            for (i, (g, w)) in d.iter().zip(&twin).enumerate() {
                assert!(
                    (*g as f64 - *w as f64).abs() <= elem,
                    "{what} [{i}]: GPU {g} vs CPU {w} (bound {elem:e})"
                );
            }
            // The loss: per row log-sum-exps of logits up to 5 (scaled by
            // 1/T) and a KL of probabilities, weighted by up to T^2.
            let scale = twin_loss.abs() + rows as f64 * 8.0 * (1.0 + (t * t) as f64);
            let bound = (classes as f64 + 24.0 + rows as f64) * U * scale;
            assert!(
                (loss - twin_loss).abs() <= bound,
                "{what}: loss GPU {loss} vs CPU {twin_loss}"
            );
            assert_eq!(correct, twin_correct, "{what}: correct");
        }
    }
}

fn digits() -> Arc<Dataset> {
    Arc::new(DataSource::Builtin.load(CsvOptions::default()).unwrap())
}

fn model(data: &Dataset, hidden: &[usize], seed: u64, normalize: Normalize) -> Mlp {
    let mut sizes = vec![data.dim()];
    sizes.extend_from_slice(hidden);
    sizes.push(data.classes);
    Mlp::new(&sizes, seed, Preprocess::fit(normalize, data), data.shape.clone()).unwrap()
}

fn per_step(b: &mut dyn Backend, n: usize, steps: usize, lr: f32) -> Vec<StepStats> {
    let spe = steps_per_epoch(n, b.batch_size());
    let mut out = Vec::new();
    for global in 0..steps {
        let (epoch, step) = (global / spe, global % spe);
        if step == 0 {
            b.begin_epoch(&epoch_permutation(n, 9, epoch + 1)).unwrap();
        }
        b.train_steps(step, &StepHyper::constant(lr, 1)).unwrap();
        out.push(b.take_stats().unwrap());
    }
    out
}

#[test]
fn distilling_gpu_backend_matches_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let data = digits();
    let n = data.train.len();
    // Two teachers of other widths, one with other preprocessing; shifted
    // inputs and dropout in the student, as a distillation run with every
    // recipe flag would be.
    let teachers = vec![
        model(&data, &[40], 21, Normalize::Scale),
        model(&data, &[33, 17], 22, Normalize::Standardize),
    ];
    let cases = [
        (Optimizer::sgd(), Regularization::default(), 0.1f32),
        (
            Optimizer::Adam(Adam::default()),
            Regularization {
                shift: 1,
                dropout: 0.1,
                label_smoothing: 0.1,
                clip_grad_norm: None,
            },
            0.003,
        ),
    ];
    for (i, (optimizer, regular, lr)) in cases.into_iter().enumerate() {
        let spec = TrainSpec {
            regular,
            seed: 4,
            ..TrainSpec::new(32, optimizer)
        };
        let d = Distillation {
            teachers: teachers.clone(),
            temperature: 3.0,
            alpha: 0.7,
            cached: None,
        };
        let student = model(&data, &[24], 1, Normalize::Scale);
        let mut gpu = GpuBackend::new(ctx.clone(), student.clone(), data.clone(), spec).unwrap();
        gpu.set_distillation(Some(&d)).unwrap();
        let mut cpu = CpuBackend::with_threads(student, data.clone(), spec, 1).unwrap();
        cpu.set_distillation(Some(&d)).unwrap();
        // 50 steps cross the end of the first epoch (45 steps, the last partial).
        let g = per_step(&mut gpu, n, 50, lr);
        let c = per_step(&mut cpu, n, 50, lr);
        for (s, (g, c)) in g.iter().zip(&c).enumerate() {
            assert_eq!(g.examples, c.examples, "case {i} step {s}");
            let (gl, cl) = (g.mean_loss(), c.mean_loss());
            assert!(
                (gl - cl).abs() <= 1e-4 * cl.abs(),
                "case {i} step {s}: GPU loss {gl} vs CPU {cl}"
            );
        }
        let (gm, cm) = (gpu.model().unwrap(), cpu.model().unwrap());
        for (l, (a, b)) in gm.layers.iter().zip(&cm.layers).enumerate() {
            let scale = b.weight.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let worst = a
                .weight
                .iter()
                .zip(&b.weight)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(worst <= 1e-3 * scale, "case {i} fc{}: weights differ by {worst}", l + 1);
        }
        // The distillation loss differs from plain training's.
        let mut plain =
            CpuBackend::with_threads(model(&data, &[24], 1, Normalize::Scale), data.clone(), spec, 1).unwrap();
        let p = per_step(&mut plain, n, 1, lr);
        assert!((p[0].mean_loss() - c[0].mean_loss()).abs() > 1e-3, "case {i}");
    }
}

#[test]
fn soft_target_xent_reads_cached_rows_through_the_index() {
    let Some(ctx) = common::gpu() else { return };
    let (table, classes) = (40, 10);
    let teacher: Vec<f32> = common::random(table * classes, 70).iter().map(|v| 8.0 * v).collect();
    let all_labels = labels_for(table, classes, 71);
    for (rows, seed) in [(1, 72), (7, 73), (33, 74)] {
        let index: Vec<u32> = common::random(rows, seed)
            .iter()
            .map(|v| (((v + 1.0) / 2.0 * table as f32) as u32).min(table as u32 - 1))
            .collect();
        let z: Vec<f32> = common::random(rows * classes, seed + 10)
            .iter()
            .map(|v| 5.0 * v)
            .collect();
        let k = SoftTarget::new(4.0, 0.7, 0.1, rows, classes);
        let mut p = vec![0.0; table * classes];
        cpu::soft_targets(&teacher, &mut p, table, classes, k.inv_t, 1.0, false);
        let (d, loss, correct) =
            ops::soft_target_xent(&ctx, &z, &p, &all_labels, rows, classes, &k, Some(&index)).unwrap();
        let rows_p: Vec<f32> = index
            .iter()
            .flat_map(|&i| p[i as usize * classes..(i as usize + 1) * classes].to_vec())
            .collect();
        let labels: Vec<u32> = index.iter().map(|&i| all_labels[i as usize]).collect();
        let mut twin = vec![f32::NAN; rows * classes];
        let (twin_loss, twin_correct) = cpu::soft_target_xent(&z, &rows_p, &labels, &mut twin, rows, classes, &k);
        let elem = (classes as f64 + 24.0) * U * 5.0 / rows as f64;
        for (i, (g, w)) in d.iter().zip(&twin).enumerate() {
            assert!(
                (*g as f64 - *w as f64).abs() <= elem,
                "{rows} rows [{i}]: GPU {g} vs CPU {w}"
            );
        }
        let bound = (classes as f64 + 24.0 + rows as f64) * U * (twin_loss.abs() + rows as f64 * 8.0 * 17.0);
        assert!(
            (loss - twin_loss).abs() <= bound,
            "{rows} rows: loss {loss} vs {twin_loss}"
        );
        assert_eq!(correct, twin_correct);
    }
}

#[test]
fn gpu_backend_with_cached_probabilities_matches_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let data = digits();
    let n = data.train.len();
    let teachers = vec![model(&data, &[40], 21, Normalize::Standardize)];
    let cached = Arc::new(wgtrain::cpu::teacher_probabilities(
        &teachers,
        &data.train.features,
        2.0,
    ));
    let d = Distillation {
        teachers: vec![],
        temperature: 2.0,
        alpha: 0.6,
        cached: Some(cached),
    };
    let spec = TrainSpec {
        seed: 8,
        ..TrainSpec::sgd(32)
    };
    let student = model(&data, &[24], 1, Normalize::Scale);
    let mut gpu = GpuBackend::new(ctx, student.clone(), data.clone(), spec).unwrap();
    gpu.set_distillation(Some(&d)).unwrap();
    let mut cpu = CpuBackend::with_threads(student, data.clone(), spec, 1).unwrap();
    cpu.set_distillation(Some(&d)).unwrap();
    let g = per_step(&mut gpu, n, 50, 0.1);
    let c = per_step(&mut cpu, n, 50, 0.1);
    for (s, (g, c)) in g.iter().zip(&c).enumerate() {
        let (gl, cl) = (g.mean_loss(), c.mean_loss());
        assert!(
            (gl - cl).abs() <= 1e-4 * cl.abs(),
            "step {s}: GPU loss {gl} vs CPU {cl}"
        );
    }
}

/// Turning distillation on and off between steps whose stats are still on
/// the GPU: the fused loss writes a partial per row block, soft_target_xent
/// one entry, so the backend reads the pending steps back in the layout
/// they were written in before it switches. The totals equal the CPU's.
#[test]
fn switching_distillation_keeps_pending_stats() {
    let Some(ctx) = common::gpu() else { return };
    let data = digits();
    let n = data.train.len();
    let d = Distillation {
        teachers: vec![model(&data, &[40], 31, Normalize::Scale)],
        temperature: 2.0,
        alpha: 0.5,
        cached: None,
    };
    let student = model(&data, &[24], 1, Normalize::Scale);
    let spec = TrainSpec::sgd(32);
    let mut gpu = GpuBackend::new(ctx, student.clone(), data.clone(), spec).unwrap();
    let mut cpu = CpuBackend::with_threads(student, data.clone(), spec, 1).unwrap();
    let fused = gpu.step_kernels();
    assert_eq!(fused[1], "linear_softmax_xent");
    let order = epoch_permutation(n, 9, 1);
    for b in [&mut gpu as &mut dyn Backend, &mut cpu] {
        b.begin_epoch(&order).unwrap();
        b.train_steps(0, &StepHyper::constant(0.1, 3)).unwrap();
        b.set_distillation(Some(&d)).unwrap();
        b.train_steps(3, &StepHyper::constant(0.1, 3)).unwrap();
        b.set_distillation(None).unwrap();
        b.train_steps(6, &StepHyper::constant(0.1, 3)).unwrap();
    }
    assert_eq!(gpu.step_kernels(), fused);
    let (g, c) = (gpu.take_stats().unwrap(), cpu.take_stats().unwrap());
    assert_eq!((g.examples, g.steps), (9 * 32, 9));
    assert_eq!((g.examples, g.steps), (c.examples, c.steps));
    assert!(
        (g.loss_sum - c.loss_sum).abs() <= 1e-4 * c.loss_sum,
        "loss {} vs {}",
        g.loss_sum,
        c.loss_sum
    );
    assert!(
        g.correct.abs_diff(c.correct) <= 1,
        "correct {} vs {}",
        g.correct,
        c.correct
    );
}
