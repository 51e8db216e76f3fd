//! The stateful optimizers against PyTorch: tests/fixtures/optim_trajectories.json
//! (written by scripts/optim_fixtures.py with torch.optim) holds a fixed
//! 6-5-3 MLP, 8 fixed examples, and for each optimizer (some with label
//! smoothing or `clip_grad_norm_`) the mean loss of
//! each of 100 full-batch steps and the parameters after steps 1, 10 and
//! 100. Each backend replays them from the same start.
//!
//! Tolerance. Both sides compute the same formulas in f32, in different
//! orders (matrix products, sums, fused multiply-adds on the GPU), so each
//! step's update differs by a few units of roundoff u = 2^-24 ~ 6e-8
//! relative to the parameters' magnitudes (below 2 here), i.e. ~1e-7 per
//! step; over 100 steps that drift adds up to ~1e-5 when the trajectory
//! neither amplifies nor damps it. The fixture records how far rounding
//! alone moves each trajectory (`spread_f32_f64`: torch's f32 run against
//! its f64 run, at most ~1e-6 for these cases), and the bound below is
//! `TOL_ABS + 10 * spread` (~2e-5) absolute on every parameter, and 1e-4
//! relative on each step's loss (measured: CPU within 4e-7 of torch): tight enough that a wrong formula (a
//! missing bias correction, weight decay coupled instead of decoupled, the
//! first momentum step dampened) fails by orders of magnitude, which
//! `a_wrong_rule_is_far_outside_the_tolerance` checks.

mod common;

/// The absolute part of the parameter bound: 100 steps of ~1e-7 drift.
const TOL_ABS: f64 = 1e-5;

use std::sync::Arc;

use serde_json::Value;
use wgtrain::backend::{Backend, Regularization, TrainSpec};
use wgtrain::cpu::CpuBackend;
use wgtrain::data::{Dataset, Preprocess, Split};
use wgtrain::model::Mlp;
use wgtrain::optim::{Adam, Optimizer, Sgd, StepHyper};

/// The parameters after a step: `(step, [w1, b1, w2, b2])`.
type Snapshot = (usize, [Vec<f64>; 4]);

const FIXTURE: &str = include_str!("fixtures/optim_trajectories.json");

struct Case {
    name: String,
    optimizer: Optimizer,
    /// Label smoothing and gradient clipping (torch's `label_smoothing`
    /// and `clip_grad_norm_`), off in the plain cases.
    regular: Regularization,
    lr: f32,
    losses: Vec<f64>,
    params: Vec<Snapshot>,
    spread: f64,
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    floats(v).into_iter().map(|x| x as f32).collect()
}

fn tensors(v: &Value) -> [Vec<f64>; 4] {
    ["w1", "b1", "w2", "b2"].map(|k| floats(&v[k]))
}

fn optimizer(kind: &str, o: &Value) -> Optimizer {
    let get = |k: &str, d: f64| o.get(k).and_then(Value::as_f64).unwrap_or(d) as f32;
    match kind {
        "sgd" => Optimizer::Sgd(Sgd {
            momentum: get("momentum", 0.0),
            nesterov: o.get("nesterov").and_then(Value::as_bool).unwrap_or(false),
            weight_decay: get("weight_decay", 0.0),
        }),
        "adam" | "adamw" => {
            let betas = o.get("betas").map(floats).unwrap_or(vec![0.9, 0.999]);
            let a = Adam {
                betas: (betas[0] as f32, betas[1] as f32),
                eps: get("eps", 1e-8),
                // torch.optim.AdamW's default weight decay is 0.01.
                weight_decay: get("weight_decay", if kind == "adamw" { 0.01 } else { 0.0 }),
            };
            if kind == "adam" {
                Optimizer::Adam(a)
            } else {
                Optimizer::AdamW(a)
            }
        }
        other => panic!("unknown optimizer {other}"),
    }
}

/// The fixture's model, data and cases.
fn fixture() -> (Mlp, Arc<Dataset>, Vec<Case>) {
    let f: Value = serde_json::from_str(FIXTURE).expect("fixture JSON");
    let sizes: Vec<usize> = f["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let mut model = Mlp::new(&sizes, 0, Preprocess::identity(), vec![sizes[0]]).unwrap();
    let init = &f["init"];
    model.layers[0].weight = f32s(&init["w1"]);
    model.layers[0].bias = f32s(&init["b1"]);
    model.layers[1].weight = f32s(&init["w2"]);
    model.layers[1].bias = f32s(&init["b2"]);
    let split = Split {
        features: f32s(&f["features"]),
        labels: f["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect(),
    };
    let data = Dataset {
        source: "optim fixture".into(),
        shape: vec![sizes[0]],
        classes: sizes[2],
        value_max: 1.0,
        train: split.clone(),
        validation: Split::default(),
        test: split,
    };
    let cases = f["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let o = &c["options"];
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                optimizer: optimizer(c["optimizer"].as_str().unwrap(), o),
                regular: Regularization {
                    label_smoothing: o.get("label_smoothing").and_then(Value::as_f64).unwrap_or(0.0) as f32,
                    clip_grad_norm: o.get("clip_grad_norm").and_then(Value::as_f64).map(|c| c as f32),
                    ..Regularization::default()
                },
                lr: o["lr"].as_f64().unwrap() as f32,
                losses: floats(&c["losses"]),
                params: c["params"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.parse().unwrap(), tensors(v)))
                    .collect(),
                spread: c["spread_f32_f64"].as_f64().unwrap(),
            }
        })
        .collect();
    (model, Arc::new(data), cases)
}

/// Replay `case` on `backend`: the loss of every step, and the parameters
/// after each snapshot step.
fn replay(backend: &mut dyn Backend, case: &Case, n: usize) -> (Vec<f64>, Vec<Snapshot>) {
    backend.begin_epoch(&(0..n as u32).collect::<Vec<_>>()).unwrap();
    let last = case.params.iter().map(|p| p.0).max().unwrap();
    let mut losses = Vec::new();
    let mut snaps = Vec::new();
    for step in 1..=last {
        backend.train_steps(0, &[StepHyper { lr: case.lr }]).unwrap();
        losses.push(backend.take_stats().unwrap().mean_loss());
        if case.params.iter().any(|p| p.0 == step) {
            let m = backend.model().unwrap();
            let t = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            snaps.push((
                step,
                [
                    t(&m.layers[0].weight),
                    t(&m.layers[0].bias),
                    t(&m.layers[1].weight),
                    t(&m.layers[1].bias),
                ],
            ));
        }
    }
    (losses, snaps)
}

/// The largest parameter difference from the fixture over every snapshot.
fn worst_difference(case: &Case, snaps: &[Snapshot]) -> f64 {
    let mut worst = 0.0f64;
    for (step, want) in &case.params {
        let (_, got) = snaps.iter().find(|s| s.0 == *step).expect("snapshot");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.len(), w.len());
            for (a, b) in g.iter().zip(w) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    worst
}

fn check_backend(what: &str, make: &dyn Fn(Mlp, Arc<Dataset>, TrainSpec) -> Box<dyn Backend>) {
    let (model, data, cases) = fixture();
    let n = data.train.len();
    assert!(cases.len() >= 9, "fixture cases");
    assert!(cases
        .iter()
        .any(|c| c.regular.clip_grad_norm.is_some() && c.optimizer.is_fused()));
    for case in &cases {
        let spec = TrainSpec {
            regular: case.regular,
            ..TrainSpec::new(n, case.optimizer)
        };
        let mut b = make(model.clone(), data.clone(), spec);
        let (losses, snaps) = replay(b.as_mut(), case, n);
        for (i, (got, want)) in losses.iter().zip(&case.losses).enumerate() {
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1e-3),
                "{what} {}: loss of step {} is {got}, torch {want}",
                case.name,
                i + 1
            );
        }
        let tol = TOL_ABS + 10.0 * case.spread;
        let worst = worst_difference(case, &snaps);
        eprintln!(
            "{what} {}: largest parameter difference {worst:.2e} (bound {tol:.2e})",
            case.name
        );
        assert!(
            worst <= tol,
            "{what} {}: parameters {worst:e} from torch's (bound {tol:e})",
            case.name
        );
    }
}

#[test]
fn cpu_follows_torch_optim() {
    check_backend("cpu", &|m, d, s| {
        Box::new(CpuBackend::with_threads(m, d, s, 1).unwrap())
    });
}

#[test]
fn gpu_follows_torch_optim() {
    let Some(ctx) = common::gpu() else { return };
    check_backend("gpu", &|m, d, s| {
        Box::new(wgtrain::gpu::GpuBackend::new(ctx.clone(), m, d, s).unwrap())
    });
}

/// An unfused rule's step: each weight_update becomes the same kernel
/// writing the gradient, then one update per tensor (5 dispatches a layer
/// instead of 3, one less for the loss folded into the last layer's
/// forward pass); plain SGD keeps its 5 for two layers.
#[test]
fn gpu_step_dispatches_per_optimizer() {
    let Some(ctx) = common::gpu() else { return };
    let (model, data, cases) = fixture();
    let n = data.train.len();
    let kernels = |optimizer| {
        let spec = TrainSpec::new(n, optimizer);
        wgtrain::gpu::GpuBackend::new(ctx.clone(), model.clone(), data.clone(), spec)
            .unwrap()
            .step_kernels()
    };
    let forward = ["linear_forward", "linear_softmax_xent", "backprop_input"];
    assert_eq!(kernels(Optimizer::sgd())[3..], ["weight_update", "weight_update"]);
    assert_eq!(kernels(Optimizer::sgd()).len(), 5);
    for case in cases.iter().filter(|c| !c.optimizer.is_fused()) {
        let update = match case.optimizer {
            Optimizer::Sgd(_) => "sgd_momentum_update",
            _ => "adam_update",
        };
        let got = kernels(case.optimizer);
        assert_eq!(got[..3], forward, "{}", case.name);
        assert_eq!(
            got[3..],
            ["weight_update", update, update, "weight_update", update, update],
            "{}",
            case.name
        );
    }
}

/// The regularized cases without their regularization (or with the clip
/// loosened tenfold) miss the fixture by far: the tolerance sees both.
#[test]
fn missing_regularization_is_far_outside_the_tolerance() {
    let (model, data, cases) = fixture();
    let n = data.train.len();
    let mut checked = 0;
    for case in cases.iter().filter(|c| c.regular != Regularization::default()) {
        let variants = [
            Regularization {
                label_smoothing: 0.0,
                ..case.regular
            },
            Regularization {
                clip_grad_norm: case.regular.clip_grad_norm.map(|c| 10.0 * c),
                ..case.regular
            },
        ];
        for wrong in variants.into_iter().filter(|w| *w != case.regular) {
            let spec = TrainSpec {
                regular: wrong,
                ..TrainSpec::new(n, case.optimizer)
            };
            let mut b = CpuBackend::with_threads(model.clone(), data.clone(), spec, 1).unwrap();
            let (_, snaps) = replay(&mut b, case, n);
            let worst = worst_difference(case, &snaps);
            let tol = TOL_ABS + 10.0 * case.spread;
            assert!(worst > 10.0 * tol, "{}: {wrong:?} is only {worst:e} away", case.name);
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked} variants checked");
}

#[test]
fn a_wrong_rule_is_far_outside_the_tolerance() {
    // Adam run as AdamW (same weight decay, decoupled instead of L2) and
    // momentum without Nesterov: each must miss its fixture by far more
    // than the bound, or the tolerance would not tell the rules apart.
    let (model, data, cases) = fixture();
    let n = data.train.len();
    for case in &cases {
        let wrong = match case.optimizer {
            Optimizer::Adam(a) if a.weight_decay > 0.0 => Optimizer::AdamW(a),
            Optimizer::Sgd(s) if s.nesterov => Optimizer::Sgd(Sgd { nesterov: false, ..s }),
            Optimizer::AdamW(a) => Optimizer::AdamW(Adam { weight_decay: 0.0, ..a }),
            _ => continue,
        };
        let spec = TrainSpec {
            regular: case.regular,
            ..TrainSpec::new(n, wrong)
        };
        let mut b = CpuBackend::with_threads(model.clone(), data.clone(), spec, 1).unwrap();
        let (_, snaps) = replay(&mut b, case, n);
        let worst = worst_difference(case, &snaps);
        let tol = TOL_ABS + 10.0 * case.spread;
        assert!(worst > 10.0 * tol, "{}: a wrong rule is only {worst:e} away", case.name);
    }
}
