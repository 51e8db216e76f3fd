//! Data-parallel training: replicas' shard gradients against one device's
//! step (the `Replica` API), and N replicas (`parallel::Replicated`) with
//! global batch B against one device with batch B over many steps.

mod common;

use std::sync::Arc;

use wgtrain::backend::{Backend, BackendState, Regularization, Replica, TrainSpec};
use wgtrain::cpu::CpuBackend;
use wgtrain::data::{epoch_permutation, Dataset, Normalize, Preprocess, Split};
use wgtrain::optim::{Adam, Optimizer, StepHyper};
use wgtrain::Mlp;

/// f32's unit roundoff.
const U: f64 = f32::EPSILON as f64 / 2.0;

/// Fixed-looking data whose label depends on the features.
fn data(n: usize, dim: usize, classes: usize) -> Arc<Dataset> {
    let features: Vec<f32> = common::random(n * dim, 11).iter().map(|v| 2.0 * v + 0.3).collect();
    let labels = (0..n)
        .map(|i| {
            let s: f32 = features[i * dim..(i + 1) * dim].iter().sum();
            ((s.abs() * 3.0) as u32) % classes as u32
        })
        .collect();
    let split = Split { features, labels };
    Arc::new(Dataset {
        source: "synthetic".into(),
        shape: vec![dim],
        classes,
        value_max: 1.0,
        train: split.clone(),
        validation: Split::default(),
        test: split,
    })
}

fn model(data: &Dataset, hidden: &[usize]) -> Mlp {
    let mut sizes = vec![data.dim()];
    sizes.extend_from_slice(hidden);
    sizes.push(data.classes);
    Mlp::new(
        &sizes,
        5,
        Preprocess::fit(Normalize::Standardize, data),
        data.shape.clone(),
    )
    .unwrap()
}

fn cpu(data: &Arc<Dataset>, m: &Mlp, spec: TrainSpec) -> CpuBackend {
    let mut b = CpuBackend::with_threads(m.clone(), data.clone(), spec, 1).unwrap();
    b.begin_epoch(&epoch_permutation(data.train.len(), 3, 1)).unwrap();
    b
}

fn packed(m: &Mlp) -> Vec<f32> {
    m.layers
        .iter()
        .flat_map(|l| l.weight.iter().chain(&l.bias))
        .copied()
        .collect()
}

/// The sum of shard gradients over a split of a batch, applied, is one step
/// of a single device, and each shard's loss adds up to the batch's.
///
/// Tolerance: a gradient entry is `sum_r t_r / B` over the batch's rows, a
/// sum that one device forms in one order and the shards in another (each
/// shard's sum, then the sum of the shards). Two orders of a sum of `B`
/// terms differ by at most `2 (B - 1) u sum_r |t_r|` (Higham, 4.3). The
/// activations and back-propagated gradients of a row are formed by products
/// whose blocking may depend on the number of rows, so each row's terms may
/// differ by a few roundings more: `F` more per layer, with `F` the largest
/// fan-in. So `|g_shards - g| <= 2 (B + F L) u S` with `S = sum_r |t_r|`,
/// which the test computes from single-row shards, and the updated weights
/// differ by `lr` times that plus one rounding of the update.
#[test]
fn shard_gradients_sum_to_one_step() {
    let d = data(45, 9, 4);
    let m = model(&d, &[13]);
    let f = 13.0;
    let cases: [(&str, Optimizer, Regularization, usize, &[usize]); 4] = [
        ("sgd", Optimizer::sgd(), Regularization::default(), 0, &[0, 5, 11, 16]),
        (
            "sgd, last partial batch",
            Optimizer::sgd(),
            Regularization::default(),
            2,
            &[0, 7, 7, 13],
        ),
        (
            "sgd, dropout and clipping",
            Optimizer::sgd(),
            Regularization {
                dropout: 0.3,
                clip_grad_norm: Some(0.05),
                ..Default::default()
            },
            1,
            &[0, 1, 9, 16],
        ),
        (
            "adamw",
            Optimizer::AdamW(Adam::default()),
            Regularization::default(),
            1,
            &[0, 8, 16],
        ),
    ];
    for (what, opt, regular, index, cuts) in cases {
        let spec = TrainSpec {
            regular,
            seed: 9,
            ..TrainSpec::new(16, opt)
        };
        let lr = 0.1f32;
        let hyper = StepHyper::constant(lr, 1)[0];
        let mut one = cpu(&d, &m, spec);
        one.train_steps(index, &[hyper]).unwrap();
        let want = one.take_stats().unwrap();

        let mut rep = cpu(&d, &m, spec);
        let n = rep.gradient_len();
        assert_eq!(n, m.parameter_count());
        let rows = *cuts.last().unwrap();
        // Single-row shards: the magnitudes of every term of the sums.
        let mut abs = vec![0.0f64; n];
        let mut g = vec![0.0f32; n];
        for r in 0..rows {
            rep.shard_gradients(index, r..r + 1, &mut g).unwrap();
            for (a, &v) in abs.iter_mut().zip(&g) {
                *a += f64::from(v).abs();
            }
        }
        rep.take_stats().unwrap();
        let mut sum = vec![0.0f32; n];
        for w in cuts.windows(2) {
            g.fill(f32::NAN);
            rep.shard_gradients(index, w[0]..w[1], &mut g).unwrap();
            for (s, &v) in sum.iter_mut().zip(&g) {
                *s += v;
            }
        }
        let mid = rep.take_stats().unwrap();
        assert_eq!(
            (mid.examples, mid.correct, mid.steps),
            (want.examples, want.correct, 0),
            "{what}"
        );
        let loss_tol = 1e-5 * want.loss_sum.abs();
        assert!(
            (mid.loss_sum - want.loss_sum).abs() <= loss_tol,
            "{what}: loss {} vs {}",
            mid.loss_sum,
            want.loss_sum
        );
        rep.apply_gradients(&sum, &hyper).unwrap();
        assert_eq!(rep.take_stats().unwrap().steps, 1, "{what}");

        let (p0, p1, p2) = (packed(&m), packed(&one.model().unwrap()), packed(&rep.model().unwrap()));
        let b = rows as f64;
        let mut moved = 0;
        for i in 0..n {
            let bound = 2.0 * (b + 2.0 * f) * U * abs[i];
            // Adam divides by the gradient's own magnitude: a relative error
            // of the gradient moves its step by `lr` times that relative error.
            let step_err = match opt {
                Optimizer::Sgd(_) => f64::from(lr) * bound,
                _ => f64::from(lr) * bound / (abs[i] / b).max(1e-8) * 4.0,
            };
            let tol = step_err + 2.0 * U * f64::from(p1[i]).abs();
            let diff = (f64::from(p1[i]) - f64::from(p2[i])).abs();
            assert!(
                diff <= tol,
                "{what}: parameter {i}: {} vs {} (tolerance {tol:e})",
                p2[i],
                p1[i]
            );
            moved += usize::from((p1[i] - p0[i]).abs() as f64 > 100.0 * tol);
        }
        assert!(
            moved > n / 4,
            "{what}: only {moved} of {n} parameters moved beyond the tolerance"
        );
    }
}

/// Shard ranges outside the batch and wrong buffer lengths are refused.
#[test]
fn replica_refuses_bad_shards() {
    let d = data(45, 9, 4);
    let m = model(&d, &[13]);
    let mut rep = cpu(&d, &m, TrainSpec::sgd(16));
    let n = rep.gradient_len();
    let mut g = vec![0.0; n];
    assert!(rep.shard_gradients(0, 0..17, &mut g).is_err());
    assert!(
        rep.shard_gradients(2, 0..14, &mut g).is_err(),
        "the last batch has 13 rows"
    );
    assert!(rep.shard_gradients(3, 0..1, &mut g).is_err(), "there are 3 batches");
    assert!(rep.shard_gradients(0, 0..4, &mut g[1..]).is_err());
    assert!(rep.apply_gradients(&g[1..], &StepHyper::constant(0.1, 1)[0]).is_err());
    rep.shard_gradients(0, 3..3, &mut g).unwrap();
    assert!(g.iter().all(|&v| v == 0.0), "an empty shard's gradient is zero");
}

use wgtrain::backend::StepStats;
use wgtrain::device::{open_training, DeviceChoice};
use wgtrain::optim::Constraint;
use wgtrain::parallel::{shard_bounds, Replicated};

const N: usize = 45;
const BATCH: usize = 16;
const LR: f32 = 0.1;

/// `epochs` epochs (3 steps each, the last of 13 rows) at a constant rate;
/// the statistics of each epoch.
fn run(b: &mut dyn Backend, epochs: usize) -> Vec<StepStats> {
    (0..epochs)
        .map(|e| {
            b.begin_epoch(&epoch_permutation(N, 3, e)).unwrap();
            b.train_steps(0, &StepHyper::constant(LR, N.div_ceil(BATCH))).unwrap();
            b.take_stats().unwrap()
        })
        .collect()
}

fn spec(opt: Optimizer, regular: Regularization) -> TrainSpec {
    TrainSpec {
        regular,
        seed: 9,
        ..TrainSpec::new(BATCH, opt)
    }
}

fn cpu_replicas(d: &Arc<Dataset>, m: &Mlp, spec: TrainSpec, n: usize) -> Vec<Box<dyn Replica>> {
    (0..n)
        .map(|_| Box::new(CpuBackend::with_threads(m.clone(), d.clone(), spec, 1).unwrap()) as Box<dyn Replica>)
        .collect()
}

/// The learning rate of the runs: Adam's steps are `lr`-sized whatever the
/// gradient's scale.
fn lr_of(opt: Optimizer) -> f32 {
    match opt {
        Optimizer::Sgd(_) => LR,
        _ => LR / 10.0,
    }
}

/// Per parameter, the bound of one step's difference between the
/// replicas' update and one device's, at the model's first step:
/// `2 (B + 2F) u S` for the gradient (see `shard_gradients_sum_to_one_step`),
/// times `lr` for SGD. Adam's step `lr m^ / (sqrt(v^) + eps)` moves by at most
/// `2 lr dg / (sqrt(v^) + eps)` for a gradient change `dg` (the derivatives
/// of `m^` and `sqrt(v^)` in the newest gradient are at most 1 after the bias
/// corrections), so there it is `2 lr dg / (min_t sqrt(v^_t) + eps)`, with the
/// smallest `v^` of the one-device run `states` over its steps.
fn step_bound(d: &Arc<Dataset>, m: &Mlp, spec: TrainSpec, fan_in: f64, states: &[BackendState]) -> Vec<f64> {
    let mut rep = CpuBackend::with_threads(m.clone(), d.clone(), spec, 1).unwrap();
    rep.begin_epoch(&epoch_permutation(N, 3, 0)).unwrap();
    let n = rep.gradient_len();
    let (mut abs, mut g) = (vec![0.0f64; n], vec![0.0f32; n]);
    for r in 0..BATCH {
        rep.shard_gradients(0, r..r + 1, &mut g).unwrap();
        for (a, &v) in abs.iter_mut().zip(&g) {
            *a += f64::from(v).abs();
        }
    }
    let lr = f64::from(lr_of(spec.optimizer));
    let dg = abs.iter().map(|&s| 2.0 * (BATCH as f64 + 2.0 * fan_in) * U * s);
    match spec.optimizer {
        Optimizer::Sgd(_) => dg.map(|e| lr * e).collect(),
        Optimizer::Adam(a) | Optimizer::AdamW(a) => {
            let mut min_v = vec![f64::INFINITY; n];
            for st in states {
                let bc = 1.0 - f64::from(a.betas.1).powi(st.updates as i32);
                let v = st.slots.iter().flat_map(|s| s.weight[1].iter().chain(&s.bias[1]));
                for (m, &v) in min_v.iter_mut().zip(v) {
                    *m = m.min((f64::from(v) / bc).sqrt());
                }
            }
            dg.zip(min_v)
                .map(|(e, v)| 2.0 * lr * e / (v + f64::from(a.eps)))
                .collect()
        }
    }
}

/// `run`, one step at a time, with the state after each step.
fn run_states(b: &mut dyn Backend, epochs: usize) -> (Vec<StepStats>, Vec<BackendState>) {
    let mut states = Vec::new();
    let lr = match b.state().unwrap().slots[0].weight.len() {
        0 => LR,
        _ => LR / 10.0,
    };
    let stats = (0..epochs)
        .map(|e| {
            b.begin_epoch(&epoch_permutation(N, 3, e)).unwrap();
            for s in 0..N.div_ceil(BATCH) {
                b.train_steps(s, &[StepHyper { lr }]).unwrap();
                states.push(b.state().unwrap());
            }
            b.take_stats().unwrap()
        })
        .collect();
    (stats, states)
}

/// N replicas with global batch B train like one device with batch B.
///
/// Tolerance. Each step, the replicated run's sums differ from one
/// device's by at most `e` per parameter (`step_bound`: the order of the
/// sums over the batch's rows). Such a difference injected at one step is
/// carried forward by the training dynamics; the test measures that
/// amplification by training one device from the start perturbed by `e`
/// (alternating signs over the parameters) and taking the largest
/// difference `D_i` of each parameter to the unperturbed run after the same
/// steps (floored at the median over the parameters, since one parameter's
/// effect may cancel by chance). Errors injected at each of `T` steps, each
/// amplified at most like the first (the longest horizon), add up to at most
/// `T D_i`; a factor 4 covers later steps whose gradients are larger than
/// the first step's, and one more rounding per parameter is added. The loss
/// of an epoch is a smooth function of the parameters (the mean loss's
/// gradient is below 10 per parameter here), so it differs by at most
/// `10 sum_i tol_i` per example.
#[test]
fn cpu_replicas_train_like_one_device() {
    let d = data(N, 9, 4);
    let m = model(&d, &[13]);
    let cases: [(&str, Optimizer, Regularization, &[f64]); 5] = [
        (
            "sgd, 2 replicas",
            Optimizer::sgd(),
            Regularization::default(),
            &[1.0, 1.0],
        ),
        (
            "sgd, 3 replicas 1:2:3, dropout, clipping",
            Optimizer::sgd(),
            regular(),
            &[1.0, 2.0, 3.0],
        ),
        ("adamw, 2 replicas", adamw(), Regularization::default(), &[1.0, 1.0]),
        (
            "adamw, 3 replicas, dropout, clipping",
            adamw(),
            regular(),
            &[1.0, 1.0, 1.0],
        ),
        ("adamw, 2 replicas 1:3", adamw(), Regularization::default(), &[1.0, 3.0]),
    ];
    for (what, opt, regular, weights) in cases {
        let spec = spec(opt, regular);
        let mut one = cpu(&d, &m, spec);
        let mut rep = Replicated::with_weights(cpu_replicas(&d, &m, spec, weights.len()), weights.to_vec()).unwrap();
        assert_eq!(rep.replicas(), weights.len());
        trains_like(what, &d, &m, spec, &mut one, &mut rep);
    }
}

/// Dropout and clipping, both on.
fn regular() -> Regularization {
    Regularization {
        dropout: 0.25,
        clip_grad_norm: Some(0.2),
        ..Default::default()
    }
}

fn adamw() -> Optimizer {
    Optimizer::AdamW(Adam {
        weight_decay: 0.01,
        eps: 1e-6,
        ..Adam::default()
    })
}

/// Train `one` (a single device) and `rep` (replicas) from `m` for 14
/// epochs (42 steps) and compare their epoch losses and final parameters
/// within the tolerance of `cpu_replicas_train_like_one_device`, measured on
/// CPU runs of the same model and data.
fn trains_like(what: &str, d: &Arc<Dataset>, m: &Mlp, spec: TrainSpec, one: &mut dyn Backend, rep: &mut dyn Backend) {
    let fan_in = 13.0;
    let epochs = 14;
    let steps = (epochs * N.div_ceil(BATCH)) as f64;
    let mut cpu_one = cpu(d, m, spec);
    let (_, states) = run_states(&mut cpu_one, epochs);
    let cpu_m = packed(&cpu_one.model().unwrap());
    let e = step_bound(d, m, spec, fan_in, &states);
    let mut perturbed = m.clone();
    let mut k = 0;
    for l in &mut perturbed.layers {
        for v in l.weight.iter_mut().chain(l.bias.iter_mut()) {
            *v += if k % 2 == 0 { e[k] as f32 } else { -e[k] as f32 };
            k += 1;
        }
    }
    let mut p = cpu(d, &perturbed, spec);
    run_states(&mut p, epochs);
    // Per parameter, what the perturbation became after the run, with
    // the median as a floor (a single parameter's effect may cancel by
    // chance).
    let amplified: Vec<f64> = packed(&p.model().unwrap())
        .iter()
        .zip(&cpu_m)
        .map(|(a, b)| f64::from((a - b).abs()))
        .collect();
    let mut sorted = amplified.clone();
    sorted.sort_by(f64::total_cmp);
    let floor = sorted[sorted.len() / 2];

    let (want, _) = run_states(one, epochs);
    let want_m = packed(&one.model().unwrap());
    let (got, _) = run_states(rep, epochs);
    let got_m = packed(&rep.model().unwrap());
    let tol: Vec<f64> = amplified
        .iter()
        .zip(&want_m)
        .map(|(&a, &w)| 4.0 * steps * (a + floor) + 2.0 * U * f64::from(w).abs())
        .collect();
    let mut worst = 0.0f64;
    for (i, ((&a, &b), &t)) in got_m.iter().zip(&want_m).zip(&tol).enumerate() {
        let diff = f64::from((a - b).abs());
        worst = worst.max(diff / t);
        assert!(diff <= t, "{what}: parameter {i}: {a} vs {b} (tolerance {t:e})");
    }
    let moved = packed(m)
        .iter()
        .zip(&want_m)
        .zip(&tol)
        .filter(|((a, b), t)| f64::from((**a - **b).abs()) > 100.0 * **t)
        .count();
    assert!(
        moved > got_m.len() / 4,
        "{what}: training moved only {moved} parameters beyond 100 times the tolerance"
    );
    let loss_tol = 10.0 * tol.iter().sum::<f64>();
    for (epoch, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!((g.examples, g.steps), (w.examples, w.steps), "{what}: epoch {epoch}");
        let (gl, wl) = (g.mean_loss(), w.mean_loss());
        assert!(
            (gl - wl).abs() <= loss_tol,
            "{what}: epoch {epoch} loss {gl} vs {wl} (tolerance {loss_tol:e})"
        );
    }
    eprintln!(
        "{what}: step bound up to {:e}, median tolerance {:e}, worst difference {worst:.3} of the tolerance",
        e.iter().cloned().fold(0.0, f64::max),
        4.0 * steps * 2.0 * floor
    );
}

/// Two replicas on one software adapter (`gpu:0,gpu:0`: two wgpu devices
/// on the adapter the test helper opens) train like one GPU device; a CPU
/// and a GPU replica together train like one CPU device.
#[test]
fn gpu_replicas_train_like_one_device() {
    let Some(ctx) = common::gpu() else { return };
    let d = data(N, 9, 4);
    let m = model(&d, &[13]);
    // The helper opens the first adapter in `wgtrain devices` order: gpu:0.
    let index = wgtrain::gpu::list_adapters()
        .iter()
        .position(|a| a.name == ctx.name())
        .expect("the helper's adapter is listed");
    let two = DeviceChoice::parse(&format!("gpu:{index},gpu:{index}")).unwrap();
    let mixed = DeviceChoice::parse(&format!("cpu,gpu:{index}")).unwrap();
    let cases = [
        ("sgd", Optimizer::sgd(), Regularization::default()),
        ("adamw, dropout, clipping", adamw(), regular()),
    ];
    for (what, opt, regular) in cases {
        let spec = spec(opt, regular);
        let mut one = wgtrain::gpu::GpuBackend::new(ctx.clone(), m.clone(), d.clone(), spec).unwrap();
        let mut rep = open_training(&two, 1, None, m.clone(), d.clone(), spec).unwrap();
        assert!(rep.name().starts_with("2 replicas"), "{}", rep.name());
        trains_like(&format!("2 GPU replicas, {what}"), &d, &m, spec, &mut one, rep.as_mut());

        // The mixed pairing runs the one recipe with every option on: a
        // software adapter is slow.
        if what.starts_with("adamw") {
            let mut one = cpu(&d, &m, spec);
            let mut rep = open_training(&mixed, 1, Some(&[1.0, 3.0]), m.clone(), d.clone(), spec).unwrap();
            trains_like(
                &format!("CPU + GPU replicas 1:3, {what}"),
                &d,
                &m,
                spec,
                &mut one,
                rep.as_mut(),
            );
        }
    }
}

/// A GPU replica's shard gradients equal the CPU's (dropout on, so the
/// draws' row offsets are checked), and its summed-gradient update the
/// CPU's, masks included.
#[test]
fn gpu_shard_gradients_match_the_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let d = data(N, 9, 4);
    let m = model(&d, &[13]);
    let reg = Regularization {
        dropout: 0.3,
        ..Default::default()
    };
    let spec = spec(adamw(), reg);
    let mut c = cpu(&d, &m, spec);
    let mut g = wgtrain::gpu::GpuBackend::new_replica(ctx.clone(), m.clone(), d.clone(), spec).unwrap();
    g.begin_epoch(&epoch_permutation(N, 3, 1)).unwrap();
    let n = c.gradient_len();
    assert_eq!(g.gradient_len(), n);
    let masks: Vec<Vec<f32>> = m
        .layers
        .iter()
        .map(|l| (0..l.weight.len()).map(|i| (i % 4 != 1) as u8 as f32).collect())
        .collect();
    let mask = Constraint::Mask(masks.clone());
    c.set_constraint(Some(&mask)).unwrap();
    g.set_constraint(Some(&mask)).unwrap();
    for (index, rows) in [(0, 0..5), (0, 5..16), (2, 7..13), (1, 3..4)] {
        let (mut gc, mut gg) = (vec![0.0f32; n], vec![f32::NAN; n]);
        c.shard_gradients(index, rows.clone(), &mut gc).unwrap();
        g.shard_gradients(index, rows.clone(), &mut gg).unwrap();
        let scale = gc.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        for (i, (a, b)) in gc.iter().zip(&gg).enumerate() {
            // Different summation orders over at most 16 rows and 13 inputs
            // per layer: a few hundred ulp of the largest entry.
            assert!(
                (a - b).abs() <= 1e-5 * scale,
                "batch {index} rows {rows:?}: gradient {i}: cpu {a}, gpu {b}"
            );
        }
        let (sc, sg) = (c.take_stats().unwrap(), g.take_stats().unwrap());
        assert_eq!((sc.examples, sc.correct), (sg.examples, sg.correct));
        assert!((sc.loss_sum - sg.loss_sum).abs() <= 1e-5 * sc.loss_sum.abs().max(1.0));
        let h = StepHyper { lr: 0.01 };
        c.apply_gradients(&gc, &h).unwrap();
        g.apply_gradients(&gc, &h).unwrap();
        let (mc, mg) = (c.model().unwrap(), g.model().unwrap());
        for ((lc, lg), mask) in mc.layers.iter().zip(&mg.layers).zip(&masks) {
            for ((a, b), &k) in lc.weight.iter().zip(&lg.weight).zip(mask) {
                assert!((a - b).abs() <= 1e-6, "weights {a} vs {b}");
                if k == 0.0 {
                    assert_eq!(*b, 0.0);
                }
            }
        }
        assert_eq!(c.take_stats().unwrap().steps, g.take_stats().unwrap().steps);
    }
}

/// The same replicas and weights give the same bits, run after run.
#[test]
fn replicated_runs_are_deterministic() {
    let d = data(N, 9, 4);
    let m = model(&d, &[13]);
    let spec = spec(Optimizer::AdamW(Adam::default()), Regularization::default());
    let mut a = Replicated::new(cpu_replicas(&d, &m, spec, 3)).unwrap();
    let mut b = Replicated::new(cpu_replicas(&d, &m, spec, 3)).unwrap();
    assert_eq!(run(&mut a, 4), run(&mut b, 4));
    assert_eq!(a.model().unwrap(), b.model().unwrap());
}

/// Masked fine-tuning through replicas: pruned weights stay exactly zero,
/// the kept ones train.
#[test]
fn replicated_keeps_the_mask() {
    let d = data(N, 9, 4);
    let m = model(&d, &[13]);
    let spec = spec(Optimizer::sgd(), Regularization::default());
    let masks: Vec<Vec<f32>> = m
        .layers
        .iter()
        .map(|l| (0..l.weight.len()).map(|i| (i % 3 != 0) as u8 as f32).collect())
        .collect();
    let mut rep = Replicated::new(cpu_replicas(&d, &m, spec, 2)).unwrap();
    rep.set_constraint(Some(&Constraint::Mask(masks.clone()))).unwrap();
    run(&mut rep, 3);
    let got = rep.model().unwrap();
    for ((l, mask), start) in got.layers.iter().zip(&masks).zip(&m.layers) {
        for ((&w, &k), &w0) in l.weight.iter().zip(mask).zip(&start.weight) {
            if k == 0.0 {
                assert_eq!(w, 0.0);
            } else {
                assert_ne!(w, w0, "a kept weight did not train");
            }
        }
    }
    // Lifting the mask lets the pruned weights train again.
    rep.set_constraint(None).unwrap();
    run(&mut rep, 1);
    assert!(rep.model().unwrap().layers[0].weight[0] != 0.0);
}

/// `state` then `restore` through `Replicated`: training on from a restored
/// state gives the bits of training on from where the state was taken,
/// on every replica.
#[test]
fn replicated_state_round_trip() {
    let d = data(N, 9, 4);
    let m = model(&d, &[13]);
    let spec = spec(Optimizer::AdamW(Adam::default()), Regularization::default());
    let mut a = Replicated::new(cpu_replicas(&d, &m, spec, 2)).unwrap();
    run(&mut a, 2);
    let saved = a.state().unwrap();
    assert_eq!(saved.updates, 6);
    let on = run(&mut a, 2);
    let want = a.model().unwrap();
    // A fresh set of replicas, restored.
    let mut b = Replicated::new(cpu_replicas(&d, &m, spec, 2)).unwrap();
    b.restore(&saved).unwrap();
    assert_eq!(b.state().unwrap(), saved);
    assert_eq!(run(&mut b, 2), on);
    assert_eq!(b.model().unwrap(), want);
    // The same replicas, restored.
    a.restore(&saved).unwrap();
    run(&mut a, 2);
    assert_eq!(a.model().unwrap(), want);
    // A state of another optimizer is refused.
    let mut c = Replicated::new(cpu_replicas(&d, &m, TrainSpec::sgd(BATCH), 2)).unwrap();
    assert!(c.restore(&saved).is_err());
}

#[test]
fn shard_bounds_follow_the_weights() {
    assert_eq!(shard_bounds(&[1.0, 1.0], 16), [0, 8, 16]);
    assert_eq!(shard_bounds(&[1.0, 3.0], 16), [0, 4, 16]);
    assert_eq!(shard_bounds(&[1.0, 2.0, 3.0], 13), [0, 2, 7, 13]);
    assert_eq!(shard_bounds(&[1.0, 1.0, 1.0], 2), [0, 1, 1, 2]);
    assert_eq!(shard_bounds(&[1.0; 4], 1), [0, 0, 1, 1, 1]);
}

#[test]
fn device_lists_parse_and_refuse() {
    use DeviceChoice::*;
    assert_eq!(DeviceChoice::parse("cpu,gpu:0").unwrap(), List(vec![Cpu, Index(0)]));
    assert_eq!(
        DeviceChoice::parse("gpu:1, GPU:0").unwrap(),
        List(vec![Index(1), Index(0)])
    );
    assert_eq!(DeviceChoice::parse("all-gpus").unwrap(), AllGpus);
    assert_eq!(DeviceChoice::parse("cpu").unwrap(), Cpu);
    assert_eq!(DeviceChoice::parse("gpu:3").unwrap(), Index(3));
    assert_eq!(DeviceChoice::parse("RTX").unwrap(), Named("RTX".into()));
    for bad in [
        "cpu,,gpu:0",
        "cpu,",
        ",cpu",
        "gpu:x",
        "gpu:-1",
        "auto,cpu",
        "cpu,all-gpus",
        "",
    ] {
        let e = DeviceChoice::parse(bad).expect_err(bad).to_string();
        assert!(!e.is_empty(), "{bad}");
    }
}

#[test]
fn open_training_builds_cpu_replicas() {
    let d = data(N, 9, 4);
    let m = model(&d, &[13]);
    let spec = TrainSpec::sgd(BATCH);
    let list = DeviceChoice::parse("cpu,cpu").unwrap();
    let b = open_training(&list, 1, Some(&[1.0, 2.0]), m.clone(), d.clone(), spec).unwrap();
    assert_eq!(b.name(), "2 replicas: cpu (1 threads) + cpu (1 threads)");
    let single = open_training(&DeviceChoice::Cpu, 1, None, m.clone(), d.clone(), spec).unwrap();
    assert_eq!(single.name(), "cpu (1 threads)");
    for (choice, weights) in [
        ("cpu,cpu", Some(&[1.0][..])),
        ("cpu,cpu", Some(&[1.0, 0.0][..])),
        ("cpu,cpu", Some(&[1.0, f64::NAN][..])),
        ("cpu", Some(&[1.0][..])),
        // No adapter has that number (or there is none at all).
        ("cpu,gpu:99", None),
    ] {
        let c = DeviceChoice::parse(choice).unwrap();
        assert!(
            open_training(&c, 1, weights, m.clone(), d.clone(), spec).is_err(),
            "{choice} {weights:?}"
        );
    }
}

fn wgtrain(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wgtrain"))
        .args(args)
        .env_remove("WGTRAIN_DATA")
        .output()
        .expect("run wgtrain")
}

/// `train --device cpu,cpu` end to end: it learns the builtin digits, with
/// unequal shards too, and a resumed run may change the devices; bad lists
/// and weights are refused naming the flag.
#[test]
fn cli_trains_on_a_device_list() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let ck = ck.to_str().unwrap();
    let o = wgtrain(&[
        "train",
        "--data",
        "builtin",
        "--device",
        "cpu,cpu",
        "--threads",
        "1",
        "--shard-weights",
        "1,3",
        "--epochs",
        "3",
        "--hidden",
        "32",
        "--json",
        "--checkpoint-dir",
        ck,
    ]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    assert!(out.contains("2 replicas"), "{out}");
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    assert!(last["test_accuracy"].as_f64().unwrap() > 0.7, "{last}");
    // Resume from the first epoch's checkpoint on one device.
    let mut files: Vec<_> = std::fs::read_dir(dir.path().join("ck"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ckpt-e")))
        .collect();
    files.sort();
    let first = files.first().expect("a checkpoint").to_str().unwrap().to_string();
    let o = wgtrain(&[
        "train",
        "--resume",
        &first,
        "--device",
        "cpu",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    for (args, says) in [
        (&["--device", "cpu,,cpu"][..], "empty entry"),
        (&["--device", "gpu:x"][..], "gpu:N"),
        (
            &["--device", "cpu,cpu", "--shard-weights", "1"][..],
            "one weight per device",
        ),
        (
            &["--device", "cpu,cpu", "--shard-weights", "1,-2"][..],
            "--shard-weights",
        ),
        (&["--device", "cpu", "--shard-weights", "1"][..], "several devices"),
    ] {
        let mut all = vec!["train", "--data", "builtin", "--epochs", "1", "--hidden", "8"];
        all.extend_from_slice(args);
        let o = wgtrain(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
