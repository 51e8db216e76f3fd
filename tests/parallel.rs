//! Data-parallel training: replicas' shard gradients against one device's
//! step (the `Replica` API), and N replicas (`parallel::Replicated`) with
//! global batch B against one device with batch B over many steps.

mod common;

use std::sync::Arc;

use wgtrain::backend::{Backend, Regularization, Replica, TrainSpec};
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
