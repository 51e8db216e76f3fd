//! Label smoothing and gradient clipping on the CPU against hand
//! computations in f64: the smoothed softmax cross-entropy against torch's
//! formula, and a clipped step against the gradients of
//! `CpuBackend::gradients` scaled and applied by hand.

mod common;

use std::sync::Arc;

use wgtrain::backend::{Backend, Regularization, TrainSpec};
use wgtrain::cpu::kernels;
use wgtrain::cpu::CpuBackend;
use wgtrain::data::{epoch_permutation, Dataset, Normalize, Preprocess, Split};
use wgtrain::optim::{Adam, Optimizer, StepHyper};
use wgtrain::Mlp;

/// torch's `CrossEntropyLoss(label_smoothing=s, reduction='sum')` and the
/// gradient of its mean, in f64: `q = (1 - s) onehot + s / K`,
/// `loss = -sum_k q_k log p_k`, `d = (p - q) / rows`.
fn reference(z: &[f32], labels: &[u32], rows: usize, classes: usize, s: f64) -> (f64, Vec<f64>) {
    let mut loss = 0.0;
    let mut d = vec![0.0; rows * classes];
    for r in 0..rows {
        let row: Vec<f64> = z[r * classes..(r + 1) * classes]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
        for k in 0..classes {
            let q = (1.0 - s) * f64::from(u8::from(k == labels[r] as usize)) + s / classes as f64;
            let log_p = row[k] - lse;
            loss -= q * log_p;
            d[r * classes + k] = (log_p.exp() - q) / rows as f64;
        }
    }
    (loss, d)
}

fn labels_for(rows: usize, classes: usize, seed: u64) -> Vec<u32> {
    common::random(rows, seed)
        .iter()
        .map(|v| (((v + 1.0) / 2.0 * classes as f32) as u32).min(classes as u32 - 1))
        .collect()
}

#[test]
fn smoothed_softmax_xent_matches_the_formula() {
    for (c, &(rows, classes)) in [(1, 3), (7, 10), (33, 37), (7, 3), (33, 10), (1, 37)]
        .iter()
        .enumerate()
    {
        for s in [0.1f32, 0.35] {
            let seed = 40 + 10 * c as u64;
            let z: Vec<f32> = common::random(rows * classes, seed).iter().map(|v| 4.0 * v).collect();
            let labels = labels_for(rows, classes, seed + 1);
            let mut d = vec![f32::NAN; rows * classes];
            let (loss, correct) = kernels::softmax_xent(&z, &labels, &mut d, rows, classes, s);
            let (rloss, rd) = reference(&z, &labels, rows, classes, f64::from(s));
            let what = format!("{rows}x{classes} s={s}");
            // f32 exp/log and sums of `classes` terms: ~(classes + 8) ulp of
            // each row's loss (at most ~log K + 8 here).
            let bound = (classes as f64 + 8.0) * 6e-8 * rows as f64 * (rloss / rows as f64 + 8.0);
            assert!((loss - rloss).abs() <= bound, "{what}: loss {loss} vs {rloss}");
            for (i, (&g, &r)) in d.iter().zip(&rd).enumerate() {
                let tol = (classes as f64 + 8.0) * 6e-8 / rows as f64;
                assert!((f64::from(g) - r).abs() <= tol, "{what}: dlogits[{i}] {g} vs {r}");
            }
            // Accuracy is the arg-max against the label, as without smoothing.
            let mut d0 = vec![0.0; rows * classes];
            let (_, correct0) = kernels::softmax_xent(&z, &labels, &mut d0, rows, classes, 0.0);
            assert_eq!(correct, correct0, "{what}");
        }
    }
}

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

fn backend(data: &Arc<Dataset>, optimizer: Optimizer, regular: Regularization) -> CpuBackend {
    let sizes = [data.dim(), 13, data.classes];
    let m = Mlp::new(
        &sizes,
        5,
        Preprocess::fit(Normalize::Standardize, data),
        data.shape.clone(),
    )
    .unwrap();
    let spec = TrainSpec {
        regular,
        ..TrainSpec::new(16, optimizer)
    };
    let mut b = CpuBackend::with_threads(m, data.clone(), spec, 1).unwrap();
    b.begin_epoch(&epoch_permutation(data.train.len(), 3, 1)).unwrap();
    b
}

fn clip(c: f32) -> Regularization {
    Regularization {
        clip_grad_norm: Some(c),
        ..Default::default()
    }
}

/// The global norm of a batch's gradients in f64.
fn norm(grads: &[(Vec<f32>, Vec<f32>)]) -> f64 {
    grads
        .iter()
        .flat_map(|(w, b)| w.iter().chain(b))
        .map(|&g| f64::from(g) * f64::from(g))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn clipped_sgd_step_is_the_hand_computation() {
    let d = data(48, 9, 4);
    let lr = 0.2f32;
    let (g, start) = {
        let mut b = backend(&d, Optimizer::sgd(), Regularization::default());
        (b.gradients(1).unwrap(), b.model().unwrap())
    };
    let total = norm(&g);
    assert!(total > 0.1, "norm {total}");
    // Below the norm the step is scaled; above it, it is plain SGD.
    for (c, clips) in [(total as f32 / 4.0, true), (total as f32 * 4.0, false)] {
        let mut b = backend(&d, Optimizer::sgd(), clip(c));
        b.train_steps(1, &StepHyper::constant(lr, 1)).unwrap();
        let got = b.model().unwrap();
        let coef = (f64::from(c) / (total + 1e-6)).min(1.0);
        assert_eq!(coef < 1.0, clips);
        for (l, ((gw, gb), (s, n))) in g.iter().zip(start.layers.iter().zip(&got.layers)).enumerate() {
            for (what, grad, p0, p1) in [("weight", gw, &s.weight, &n.weight), ("bias", gb, &s.bias, &n.bias)] {
                for i in 0..grad.len() {
                    let want = f64::from(p0[i]) - f64::from(lr) * coef * f64::from(grad[i]);
                    let tol = 1e-6 * (f64::from(p0[i]).abs() + 1e-3);
                    assert!(
                        (f64::from(p1[i]) - want).abs() <= tol,
                        "C={c} fc{} {what}[{i}]: {} vs {want}",
                        l + 1,
                        p1[i]
                    );
                }
            }
        }
    }
}

/// Adam with L2 weight decay: the gradient is clipped first, the decay added
/// inside the update (torch's order), the bias correction of step 1.
#[test]
fn clipped_adam_adds_weight_decay_after_clipping() {
    let d = data(48, 9, 4);
    let adam = Adam {
        weight_decay: 0.5,
        ..Adam::default()
    };
    let lr = 0.01f32;
    let (g, start) = {
        let mut b = backend(&d, Optimizer::Adam(adam), Regularization::default());
        (b.gradients(0).unwrap(), b.model().unwrap())
    };
    let total = norm(&g);
    let c = total as f32 / 10.0;
    let coef = f64::from(c) / (total + 1e-6);
    let mut b = backend(&d, Optimizer::Adam(adam), clip(c));
    b.train_steps(0, &StepHyper::constant(lr, 1)).unwrap();
    let got = b.model().unwrap();
    let (b1, b2) = (f64::from(adam.betas.0), f64::from(adam.betas.1));
    let (wd, eps, lr) = (f64::from(adam.weight_decay), f64::from(adam.eps), f64::from(lr));
    let mut moved_by_decay = 0;
    for ((gw, gb), (s, n)) in g.iter().zip(start.layers.iter().zip(&got.layers)) {
        for (grad, p0, p1) in [(gw, &s.weight, &n.weight), (gb, &s.bias, &n.bias)] {
            for i in 0..grad.len() {
                let p = f64::from(p0[i]);
                let dg = f64::from(grad[i]) * coef + wd * p;
                let (m, v) = ((1.0 - b1) * dg, (1.0 - b2) * dg * dg);
                let want = p - lr / (1.0 - b1) * m / (v.sqrt() / (1.0 - b2).sqrt() + eps);
                assert!(
                    (f64::from(p1[i]) - want).abs() <= 1e-5 * lr + 1e-6 * p.abs(),
                    "{} vs {want}",
                    p1[i]
                );
                // Where decay and the clipped gradient disagree in sign, the
                // other order (decay, then clipping) would step the other way.
                let other = f64::from(grad[i]) + wd * p;
                moved_by_decay += usize::from(dg.signum() != other.signum());
            }
        }
    }
    assert!(moved_by_decay > 0, "the case does not tell the orders apart");
}

#[test]
fn clipping_and_smoothing_train_deterministically() {
    let d = data(48, 9, 4);
    let regular = Regularization {
        label_smoothing: 0.2,
        clip_grad_norm: Some(0.3),
        ..Default::default()
    };
    let run = || {
        let mut b = backend(&d, Optimizer::sgd(), regular);
        b.train_steps(0, &StepHyper::constant(0.1, 3)).unwrap();
        (b.take_stats().unwrap(), b.model().unwrap())
    };
    let (s1, m1) = run();
    let (s2, m2) = run();
    assert_eq!(s1, s2);
    assert_eq!(m1.layers[0].weight, m2.layers[0].weight);
    // The smoothed loss is reported: it differs from the plain loss of the
    // same step, while the count of correct arg-maxes does not.
    let mut plain = backend(
        &d,
        Optimizer::sgd(),
        Regularization {
            label_smoothing: 0.0,
            ..regular
        },
    );
    plain.train_steps(0, &StepHyper::constant(0.1, 1)).unwrap();
    let mut smooth = backend(&d, Optimizer::sgd(), regular);
    smooth.train_steps(0, &StepHyper::constant(0.1, 1)).unwrap();
    let (p, s) = (plain.take_stats().unwrap(), smooth.take_stats().unwrap());
    assert_eq!(p.correct, s.correct, "accuracy does not depend on smoothing");
    assert!(
        (p.loss_sum - s.loss_sum).abs() > 1e-6,
        "{} vs {}",
        p.loss_sum,
        s.loss_sum
    );
}
