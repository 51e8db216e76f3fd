//! GPU and CPU training from the same seed follow the same trajectory.
//!
//! Both backends start from the same weights and see the same batches; only
//! the order of floating-point summation differs (tiled GEMM on the GPU, the
//! `gemm` crate on the CPU), so per-step losses agree to about 1e-7
//! relative (measured on lavapipe: at most 1.3e-7 over the first 50 steps)
//! and drift apart slowly as rounding differences feed back through the
//! updates. The per-step bound of 1e-4 relative over the
//! first 50 steps leaves two orders of magnitude of headroom for that drift
//! while catching any real difference (a wrong batch, a missing bias
//! update, a wrong scale on the last partial batch each change the loss in
//! the second or third digit).

mod common;

use std::sync::Arc;

use wgtrain::backend::{steps_per_epoch, Backend, SplitKind, StepStats, TrainSpec};
use wgtrain::cpu::CpuBackend;
use wgtrain::data::{epoch_permutation, CsvOptions, DataSource, Dataset, Normalize, Preprocess, Split};
use wgtrain::gpu::GpuBackend;
use wgtrain::optim::{Constraint, StepHyper};
use wgtrain::Mlp;

const SEED: u64 = 7;

fn digits() -> Arc<Dataset> {
    Arc::new(DataSource::Builtin.load(CsvOptions::default()).unwrap())
}

/// Non-integer features (so the GPU keeps them as f32, not bytes) with a
/// learnable label: the arg-max of a fixed projection.
fn synthetic(train: usize, test: usize, dim: usize, classes: usize) -> Arc<Dataset> {
    let proj = common::random(dim * classes, 90);
    let split = |n: usize, seed: u64| {
        let features: Vec<f32> = common::random(n * dim, seed).iter().map(|v| 3.0 * v + 0.5).collect();
        let labels = (0..n)
            .map(|i| {
                let x = &features[i * dim..(i + 1) * dim];
                let score = |c: usize| x.iter().zip(&proj[c * dim..]).map(|(a, b)| a * b).sum::<f32>();
                (0..classes).max_by(|&a, &b| score(a).total_cmp(&score(b))).unwrap_or(0) as u32
            })
            .collect();
        Split { features, labels }
    };
    Arc::new(Dataset {
        source: "synthetic".into(),
        shape: vec![dim],
        classes,
        value_max: 1.0,
        train: split(train, 91),
        validation: Split::default(),
        test: split(test, 92),
    })
}

fn model(data: &Dataset, hidden: &[usize], normalize: Normalize) -> Mlp {
    let mut sizes = vec![data.dim()];
    sizes.extend_from_slice(hidden);
    sizes.push(data.classes);
    Mlp::new(&sizes, SEED, Preprocess::fit(normalize, data), data.shape.clone()).unwrap()
}

/// Mean loss of each of the first `steps` steps, one `train_steps` and one
/// `take_stats` per step, crossing epoch boundaries as the loop does.
fn per_step_losses(b: &mut dyn Backend, n: usize, steps: usize, lr: f32) -> Vec<StepStats> {
    let spe = steps_per_epoch(n, b.batch_size());
    let mut out = Vec::new();
    for global in 0..steps {
        let (epoch, step) = (global / spe, global % spe);
        if step == 0 {
            b.begin_epoch(&epoch_permutation(n, SEED, epoch + 1)).unwrap();
        }
        b.train_steps(step, &StepHyper::constant(lr, 1)).unwrap();
        out.push(b.take_stats().unwrap());
    }
    out
}

fn assert_same_losses(what: &str, gpu: &[StepStats], cpu: &[StepStats]) {
    let worst = gpu
        .iter()
        .zip(cpu)
        .map(|(g, c)| (g.mean_loss() - c.mean_loss()).abs() / c.mean_loss().abs())
        .fold(0.0, f64::max);
    eprintln!("{what}: largest per-step relative loss difference {worst:.1e}");
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert_eq!(g.examples, c.examples, "{what}: step {i} examples");
        assert_eq!(g.steps, 1);
        let (gl, cl) = (g.mean_loss(), c.mean_loss());
        assert!(
            (gl - cl).abs() <= 1e-4 * cl.abs(),
            "{what}: step {i}: GPU loss {gl} vs CPU {cl} (relative {:e})",
            (gl - cl).abs() / cl.abs()
        );
    }
}

/// Largest difference of any parameter, relative to the largest parameter
/// of its tensor.
fn max_weight_difference(a: &Mlp, b: &Mlp) -> f64 {
    let rel = |x: &[f32], y: &[f32]| {
        let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        x.iter().zip(y).map(|(p, q)| (p - q).abs() as f64).fold(0.0, f64::max) / scale
    };
    a.layers
        .iter()
        .zip(&b.layers)
        .map(|(p, q)| rel(&p.weight, &q.weight).max(rel(&p.bias, &q.bias)))
        .fold(0.0, f64::max)
}

#[test]
fn digits_per_step_losses_and_weights_match_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let data = digits();
    let (batch, lr) = (32, 0.1);
    let n = data.train.len();
    let spe = steps_per_epoch(n, batch);
    // The epoch ends in a partial batch, within the 50 compared steps.
    assert!(!n.is_multiple_of(batch) && spe < 50, "{n} examples, batch {batch}");
    let m = model(&data, &[48], Normalize::Scale);
    let mut gpu = GpuBackend::new(ctx, m.clone(), data.clone(), TrainSpec::sgd(batch)).unwrap();
    let mut cpu = CpuBackend::new(m, data.clone(), TrainSpec::sgd(batch)).unwrap();

    let g = per_step_losses(&mut gpu, n, 50, lr);
    let c = per_step_losses(&mut cpu, n, 50, lr);
    assert_same_losses("digits 64-48-10", &g, &c);
    assert_eq!(
        g[spe - 1].examples as usize,
        n - (spe - 1) * batch,
        "partial batch kept"
    );

    // Then five more epochs, each in one call, as the training loop runs
    // without log points: many steps per submission, stats summed on the GPU.
    for epoch in 3..8 {
        for b in [&mut gpu as &mut dyn Backend, &mut cpu] {
            b.begin_epoch(&epoch_permutation(n, SEED, epoch)).unwrap();
            b.train_steps(0, &StepHyper::constant(lr, spe)).unwrap();
        }
        let (gs, cs) = (gpu.take_stats().unwrap(), cpu.take_stats().unwrap());
        assert_eq!((gs.examples, gs.steps), (cs.examples, cs.steps));
        assert!(
            (gs.mean_loss() - cs.mean_loss()).abs() <= 1e-3 * cs.mean_loss(),
            "epoch {epoch}: {} vs {}",
            gs.mean_loss(),
            cs.mean_loss()
        );
        assert!(
            gs.correct.abs_diff(cs.correct) <= 3,
            "epoch {epoch}: {} vs {}",
            gs.correct,
            cs.correct
        );
    }
    // After 275 steps the rounding drift is still small: every parameter
    // within 1e-4 of its tensor's largest magnitude (measured on lavapipe:
    // 3.3e-6), while one batch's update moves weights by lr * |grad|,
    // around 1e-2 of that scale, so a skipped or doubled update fails.
    let (gm, cm) = (gpu.model().unwrap(), cpu.model().unwrap());
    let diff = max_weight_difference(&gm, &cm);
    eprintln!(
        "digits: after {} steps, weights differ by {diff:.1e} of their scale",
        50 + 5 * spe
    );
    assert!(diff < 1e-4, "weights differ by {diff:e} of their scale");

    // Evaluation of the same weights: same classes but for near-ties, same loss.
    for split in [SplitKind::Train, SplitKind::Test] {
        let gp = gpu.predict_split(split).unwrap();
        let cp = wgtrain::cpu::predict_rows(
            &gm,
            &if split == SplitKind::Train {
                &data.train
            } else {
                &data.test
            }
            .features,
            &if split == SplitKind::Train {
                &data.train
            } else {
                &data.test
            }
            .labels,
        );
        let differ = gp.classes.iter().zip(&cp.classes).filter(|(a, b)| a != b).count();
        assert!(differ <= 2, "{split:?}: {differ} classes differ");
        assert!(
            (gp.loss_sum - cp.loss_sum).abs() <= 1e-4 * cp.loss_sum,
            "{split:?}: loss {} vs {}",
            gp.loss_sum,
            cp.loss_sum
        );
    }
}

#[test]
fn deeper_f32_model_matches_cpu() {
    let Some(ctx) = common::gpu() else { return };
    // 300 train examples at batch 16: 19 steps, the last of 12 rows.
    let data = synthetic(300, 70, 20, 5);
    let (batch, lr) = (16, 0.05);
    let n = data.train.len();
    assert!(!data.is_u8());
    let m = model(&data, &[33, 17], Normalize::Standardize);
    let mut gpu = GpuBackend::new(ctx, m.clone(), data.clone(), TrainSpec::sgd(batch)).unwrap();
    let mut cpu = CpuBackend::new(m, data.clone(), TrainSpec::sgd(batch)).unwrap();
    // linear_forward x2, linear_softmax_xent, backprop_input x2, weight_update x3.
    assert_eq!(gpu.dispatches_per_step(), 8);
    let g = per_step_losses(&mut gpu, n, 40, lr);
    let c = per_step_losses(&mut cpu, n, 40, lr);
    assert_same_losses("synthetic 20-33-17-5", &g, &c);
    let diff = max_weight_difference(&gpu.model().unwrap(), &cpu.model().unwrap());
    assert!(diff < 1e-4, "weights differ by {diff:e} of their scale");
    let (gp, cp) = (
        gpu.predict_split(SplitKind::Test).unwrap(),
        cpu.predict_split(SplitKind::Test).unwrap(),
    );
    assert_eq!(gp.classes.len(), 70);
    assert!(gp.classes.iter().zip(&cp.classes).filter(|(a, b)| a != b).count() <= 1);
    assert!((gp.loss_sum - cp.loss_sum).abs() <= 1e-4 * cp.loss_sum);
}

/// Pruned training: the same masks on both backends keep the same weights at
/// zero and give the same losses.
#[test]
fn masked_training_matches_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let data = synthetic(200, 40, 12, 4);
    let (batch, lr) = (24, 0.05);
    let n = data.train.len();
    let m = model(&data, &[20], Normalize::Standardize);
    let masks: Vec<Vec<f32>> = m
        .layers
        .iter()
        .enumerate()
        .map(|(l, layer)| {
            let r = common::random(layer.weight.len(), 40 + l as u64);
            r.iter().map(|v| (*v > -0.2) as u8 as f32).collect()
        })
        .collect();
    let mut gpu = GpuBackend::new(ctx, m.clone(), data.clone(), TrainSpec::sgd(batch)).unwrap();
    let mut cpu = CpuBackend::new(m, data.clone(), TrainSpec::sgd(batch)).unwrap();
    for b in [&mut gpu as &mut dyn Backend, &mut cpu] {
        b.set_constraint(Some(&Constraint::Mask(masks.clone()))).unwrap();
    }
    let g = per_step_losses(&mut gpu, n, 20, lr);
    let c = per_step_losses(&mut cpu, n, 20, lr);
    assert_same_losses("masked 12-20-4", &g, &c);
    let gm = gpu.model().unwrap();
    for (layer, mask) in gm.layers.iter().zip(&masks) {
        assert!(
            layer.weight.iter().zip(mask).all(|(w, k)| *k != 0.0 || *w == 0.0),
            "pruned weight moved"
        );
    }
    assert!(max_weight_difference(&gm, &cpu.model().unwrap()) < 1e-4);
    // Removing the masks lets every weight train again.
    gpu.set_constraint(None).unwrap();
    gpu.begin_epoch(&epoch_permutation(n, SEED, 9)).unwrap();
    gpu.train_steps(0, &StepHyper::constant(lr, 2)).unwrap();
    let after = gpu.model().unwrap();
    let zero_before = gm.layers[0].weight.iter().filter(|w| **w == 0.0).count();
    let zero_after = after.layers[0].weight.iter().filter(|w| **w == 0.0).count();
    assert!(
        zero_after < zero_before / 10,
        "{zero_after} of {zero_before} still zero"
    );
    assert!(
        gpu.set_constraint(Some(&Constraint::Mask(masks[..1].to_vec())))
            .is_err(),
        "wrong number of masks"
    );
}

/// The fast path stays the fast path: a step of 784-500-10 is five
/// dispatches, the loss folded into the last layer's forward pass and the
/// bias update into the weight updates; pruning adds one apply_mask after
/// each layer's update, and clearing the masks takes them out again.
#[test]
fn step_dispatches_with_and_without_masks() {
    let Some(ctx) = common::gpu() else { return };
    let data = synthetic(40, 8, 784, 10);
    let m = model(&data, &[500], Normalize::Scale);
    let masks: Vec<Vec<f32>> = m.layers.iter().map(|l| vec![1.0; l.weight.len()]).collect();
    let mut gpu = GpuBackend::new(ctx, m, data, TrainSpec::sgd(32)).unwrap();
    let plain = [
        "linear_forward",
        "linear_softmax_xent",
        "backprop_input",
        "weight_update",
        "weight_update",
    ];
    assert_eq!(gpu.step_kernels(), plain);
    gpu.set_constraint(Some(&Constraint::Mask(masks))).unwrap();
    assert_eq!(
        gpu.step_kernels(),
        [
            "linear_forward",
            "linear_softmax_xent",
            "backprop_input",
            "weight_update",
            "apply_mask",
            "weight_update",
            "apply_mask"
        ]
    );
    gpu.set_constraint(None).unwrap();
    assert_eq!(gpu.step_kernels(), plain);
}

/// Where the fused kernel does not apply the step keeps linear_forward and
/// softmax_xent: a model without a hidden layer (the fused kernel's input
/// cannot be the dataset) and more classes than the widest tile (128). Both
/// still train as the CPU does, the wide one over a partial last batch.
#[test]
fn unfused_loss_steps_match_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let unfused = ["linear_forward", "softmax_xent", "weight_update"];
    let data = synthetic(40, 8, 784, 10);
    let gpu = GpuBackend::new(
        ctx.clone(),
        model(&data, &[], Normalize::Scale),
        data,
        TrainSpec::sgd(32),
    )
    .unwrap();
    assert_eq!(gpu.step_kernels(), unfused);

    // 130 classes; 100 examples at batch 24: the last batch has 4 rows.
    let data = synthetic(100, 20, 12, 130);
    let (batch, lr, n) = (24, 0.05, data.train.len());
    for (hidden, kernels) in [
        (
            &[17][..],
            &[
                "linear_forward",
                "linear_forward",
                "softmax_xent",
                "backprop_input",
                "weight_update",
                "weight_update",
            ][..],
        ),
        (&[], &unfused[..]),
    ] {
        let m = model(&data, hidden, Normalize::Standardize);
        let mut gpu = GpuBackend::new(ctx.clone(), m.clone(), data.clone(), TrainSpec::sgd(batch)).unwrap();
        let mut cpu = CpuBackend::new(m, data.clone(), TrainSpec::sgd(batch)).unwrap();
        assert_eq!(gpu.step_kernels(), kernels, "hidden {hidden:?}");
        let g = per_step_losses(&mut gpu, n, 12, lr);
        let c = per_step_losses(&mut cpu, n, 12, lr);
        assert_same_losses(&format!("synthetic 12-{hidden:?}-130"), &g, &c);
        let diff = max_weight_difference(&gpu.model().unwrap(), &cpu.model().unwrap());
        assert!(diff < 1e-4, "weights differ by {diff:e} of their scale");
    }
}

/// A fused step's stats: one partial per row block, summed on the host,
/// give the loss and correct count of the whole batch, as the CPU's do,
/// for full and partial batches many steps to a submission (the stats
/// slots of several steps read back at once), at a batch whose row blocks
/// do not fill the stats entries a step has.
#[test]
fn fused_loss_stats_sum_to_the_batch() {
    let Some(ctx) = common::gpu() else { return };
    // 330 examples at batch 100: three full steps and one of 30 rows.
    let data = synthetic(330, 10, 20, 10);
    let (batch, lr, n) = (100, 0.05, data.train.len());
    let m = model(&data, &[33], Normalize::Standardize);
    let mut gpu = GpuBackend::new(ctx, m.clone(), data.clone(), TrainSpec::sgd(batch)).unwrap();
    let mut cpu = CpuBackend::new(m, data.clone(), TrainSpec::sgd(batch)).unwrap();
    assert_eq!(gpu.step_kernels()[1], "linear_softmax_xent");
    for epoch in 1..4 {
        for b in [&mut gpu as &mut dyn Backend, &mut cpu] {
            b.begin_epoch(&epoch_permutation(n, SEED, epoch)).unwrap();
            b.train_steps(0, &StepHyper::constant(lr, 4)).unwrap();
        }
        let (g, c) = (gpu.take_stats().unwrap(), cpu.take_stats().unwrap());
        assert_eq!((g.examples, g.steps), (330, 4));
        assert_eq!((g.examples, g.steps), (c.examples, c.steps));
        assert!(
            (g.loss_sum - c.loss_sum).abs() <= 1e-5 * c.loss_sum,
            "epoch {epoch}: loss {} vs {}",
            g.loss_sum,
            c.loss_sum
        );
        assert!(
            g.correct.abs_diff(c.correct) <= 1,
            "epoch {epoch}: correct {} vs {}",
            g.correct,
            c.correct
        );
    }
}

#[test]
fn misuse_is_an_error() {
    let Some(ctx) = common::gpu() else { return };
    let data = synthetic(40, 10, 6, 3);
    let m = model(&data, &[5], Normalize::Scale);
    let mut gpu = GpuBackend::new(ctx.clone(), m.clone(), data.clone(), TrainSpec::sgd(8)).unwrap();
    assert!(
        gpu.train_steps(0, &StepHyper::constant(0.1, 1)).is_err(),
        "before begin_epoch"
    );
    assert!(gpu.begin_epoch(&[0, 1, 2]).is_err(), "short order");
    gpu.begin_epoch(&epoch_permutation(40, 1, 1)).unwrap();
    assert!(
        gpu.train_steps(4, &StepHyper::constant(0.1, 2)).is_err(),
        "past the epoch"
    );
    assert!(GpuBackend::new(ctx, m, data, TrainSpec::sgd(0)).is_err(), "batch 0");
}

/// Gradient clipping (plain SGD on the unfused path, and Adam with L2 decay)
/// and label smoothing: the GPU follows the CPU step for step. The bound on
/// the clip is set below the gradient norm of most steps, so the scaled
/// path is the one compared.
#[test]
fn clipped_and_smoothed_training_matches_cpu() {
    use wgtrain::backend::Regularization;
    use wgtrain::optim::{Adam, Optimizer};
    let Some(ctx) = common::gpu() else { return };
    let data = synthetic(300, 70, 20, 5);
    let (batch, n) = (16, data.train.len());
    let m = model(&data, &[33, 17], Normalize::Standardize);
    let cases = [
        ("sgd+clip", Optimizer::sgd(), 0.3, 0.0, 0.05),
        ("sgd+smoothing", Optimizer::sgd(), 0.0, 0.2, 0.05),
        (
            "adam+clip+smoothing",
            Optimizer::Adam(Adam {
                weight_decay: 0.01,
                ..Adam::default()
            }),
            0.3,
            0.1,
            0.005,
        ),
    ];
    for (what, optimizer, clip, smoothing, lr) in cases {
        let spec = TrainSpec {
            regular: Regularization {
                clip_grad_norm: (clip > 0.0).then_some(clip),
                label_smoothing: smoothing,
                ..Default::default()
            },
            ..TrainSpec::new(batch, optimizer)
        };
        let mut gpu = GpuBackend::new(ctx.clone(), m.clone(), data.clone(), spec).unwrap();
        let mut cpu = CpuBackend::new(m.clone(), data.clone(), spec).unwrap();
        if clip > 0.0 {
            // 3 layers: linear_forward 2, linear_softmax_xent, backprop_input 2,
            // weight_gradient 3, grad_sq_partial 3, clip_coef, 2 updates per layer.
            assert_eq!(gpu.dispatches_per_step(), 6 * 3, "{what}");
        }
        let g = per_step_losses(&mut gpu, n, 30, lr);
        let c = per_step_losses(&mut cpu, n, 30, lr);
        assert_same_losses(what, &g, &c);
        // The regularization is in effect: without it the losses part ways.
        let mut off = CpuBackend::new(m.clone(), data.clone(), TrainSpec::new(batch, optimizer)).unwrap();
        let o = per_step_losses(&mut off, n, 30, lr);
        let apart = o
            .iter()
            .zip(&c)
            .map(|(a, b)| (a.mean_loss() - b.mean_loss()).abs() / b.mean_loss())
            .fold(0.0, f64::max);
        assert!(apart > 1e-2, "{what}: only {apart:e} from the unregularized run");
        let diff = max_weight_difference(&gpu.model().unwrap(), &cpu.model().unwrap());
        eprintln!("{what}: weights differ by {diff:.1e} of their scale");
        assert!(diff < 1e-4, "{what}: weights differ by {diff:e} of their scale");
    }
}

/// A clipped plain-SGD step of 784-500-10 runs the unfused path with the
/// norm between the gradients and the updates.
#[test]
fn clipped_step_dispatches() {
    use wgtrain::backend::Regularization;
    let Some(ctx) = common::gpu() else { return };
    let data = synthetic(40, 8, 784, 10);
    let m = model(&data, &[500], Normalize::Scale);
    let spec = TrainSpec {
        regular: Regularization {
            clip_grad_norm: Some(1.0),
            ..Default::default()
        },
        ..TrainSpec::sgd(32)
    };
    let gpu = GpuBackend::new(ctx, m, data, spec).unwrap();
    assert_eq!(
        gpu.step_kernels(),
        [
            "linear_forward",
            "linear_softmax_xent",
            "backprop_input",
            "weight_update",
            "weight_update",
            "grad_sq_partial",
            "grad_sq_partial",
            "clip_coef",
            "sgd_momentum_update",
            "sgd_momentum_update",
            "sgd_momentum_update",
            "sgd_momentum_update",
        ]
    );
}

/// `spec` with dropout `p`, a shift of `n` pixels and the draws keyed by `seed`.
fn regularized(mut spec: TrainSpec, p: f32, n: u32, seed: u64) -> TrainSpec {
    (spec.regular.dropout, spec.regular.shift, spec.seed) = (p, n, seed);
    spec
}

#[test]
fn dropout_and_shift_training_matches_cpu() {
    let Some(ctx) = common::gpu() else { return };
    // Digits (8 x 8, kept as bytes on the GPU) with plain SGD, and f32
    // features shaped [2, 4, 4] with Adam (the gradient stored unfused),
    // each over two hidden layers, across an epoch's partial last batch.
    let digits = digits();
    let mut images = (*synthetic(200, 50, 32, 5)).clone();
    images.shape = vec![2, 4, 4];
    let images = Arc::new(images);
    let adam = wgtrain::optim::Optimizer::Adam(wgtrain::optim::Adam::default());
    let cases = [
        ("digits sgd", digits, TrainSpec::sgd(32), 0.1f32, 0.25f32, 1u32),
        ("images adam", images, TrainSpec::new(24, adam), 0.01, 0.4, 1),
    ];
    for (what, data, base, lr, p, n) in cases {
        let m = model(&data, &[40, 24], Normalize::Scale);
        let spec = regularized(base, p, n, 0xdead_beef_0000_0003);
        let n_train = data.train.len();
        let mut gpu = GpuBackend::new(ctx.clone(), m.clone(), data.clone(), spec).unwrap();
        let mut cpu = CpuBackend::new(m.clone(), data.clone(), spec).unwrap();
        let steps = steps_per_epoch(n_train, base.batch) + 5;
        let g = per_step_losses(&mut gpu, n_train, steps, lr);
        let c = per_step_losses(&mut cpu, n_train, steps, lr);
        assert_same_losses(what, &g, &c);
        let (gm, cm) = (gpu.model().unwrap(), cpu.model().unwrap());
        let diff = max_weight_difference(&gm, &cm);
        eprintln!("{what}: after {steps} steps, weights differ by {diff:.1e} of their scale");
        assert!(diff < 1e-4, "{what}: weights differ by {diff:e} of their scale");

        // The draws are on: plain training takes another path.
        let mut plain = CpuBackend::new(m.clone(), data.clone(), base).unwrap();
        let pl = per_step_losses(&mut plain, n_train, steps, lr);
        let same = pl
            .iter()
            .zip(&c)
            .filter(|(a, b)| a.mean_loss() == b.mean_loss())
            .count();
        assert_eq!(same, 0, "{what}: {same} steps with the plain loss");

        // Evaluation has no dropout: the regularized backend predicts as a
        // plain one holding the same weights.
        let mut fresh = GpuBackend::new(ctx.clone(), gm, data.clone(), base).unwrap();
        let (a, b) = (
            gpu.predict_split(SplitKind::Test).unwrap(),
            fresh.predict_split(SplitKind::Test).unwrap(),
        );
        assert_eq!((a.loss_sum, a.classes), (b.loss_sum, b.classes), "{what}");
    }
}

/// Every part at once (dropout, shifts, label smoothing and clipping, with
/// AdamW's decoupled decay): the clipped path with the draws on follows the
/// CPU step for step.
#[test]
fn every_regularization_at_once_matches_cpu() {
    use wgtrain::optim::{Adam, Optimizer};
    let Some(ctx) = common::gpu() else { return };
    let data = digits();
    let adamw = Optimizer::AdamW(Adam {
        weight_decay: 0.05,
        ..Adam::default()
    });
    let mut spec = regularized(TrainSpec::new(32, adamw), 0.2, 1, 17);
    spec.regular.label_smoothing = 0.1;
    spec.regular.clip_grad_norm = Some(0.5);
    let m = model(&data, &[40, 24], Normalize::Scale);
    let n_train = data.train.len();
    let mut gpu = GpuBackend::new(ctx, m.clone(), data.clone(), spec).unwrap();
    let mut cpu = CpuBackend::new(m, data.clone(), spec).unwrap();
    let steps = steps_per_epoch(n_train, spec.batch) + 5;
    let g = per_step_losses(&mut gpu, n_train, steps, 0.01);
    let c = per_step_losses(&mut cpu, n_train, steps, 0.01);
    assert_same_losses("every regularization", &g, &c);
    let diff = max_weight_difference(&gpu.model().unwrap(), &cpu.model().unwrap());
    eprintln!("every regularization: after {steps} steps, weights differ by {diff:.1e} of their scale");
    assert!(diff < 1e-4, "weights differ by {diff:e} of their scale");
}

#[test]
fn shift_on_data_that_are_not_images_is_refused_on_the_gpu() {
    let Some(ctx) = common::gpu() else { return };
    let data = synthetic(20, 5, 12, 3);
    let m = model(&data, &[8], Normalize::Scale);
    let e = GpuBackend::new(ctx, m, data, regularized(TrainSpec::sgd(4), 0.0, 1, 0))
        .err()
        .expect("refused");
    assert!(
        matches!(
            e,
            wgtrain::Error::Invalid {
                setting: wgtrain::error::Setting::Shift,
                ..
            }
        ),
        "{e}"
    );
}
