//! The CPU backend's gradients against central finite differences of the
//! loss. The CPU path is the reference for every GPU kernel, so its
//! gradients are checked against something computed differently: the
//! forward pass alone.

use std::sync::Arc;

use wgtrain::backend::Backend;
use wgtrain::cpu::{predict_rows, CpuBackend};
use wgtrain::data::{Dataset, Preprocess, Split};
use wgtrain::model::Mlp;

fn tiny_data(n: usize, dim: usize, classes: usize) -> Dataset {
    // A deterministic pseudo-random pattern; no RNG needed.
    let features = (0..n * dim).map(|i| ((i * 7919 % 101) as f32) / 50.0 - 1.0).collect();
    let labels = (0..n).map(|i| (i * 31 % classes) as u32).collect();
    let split = Split { features, labels };
    Dataset {
        source: "tiny".into(),
        shape: vec![dim],
        classes,
        value_max: 1.0,
        train: split.clone(),
        test: split,
    }
}

/// Mean loss over the whole training split with the given model.
fn loss(m: &Mlp, d: &Dataset) -> f64 {
    predict_rows(m, &d.train.features, &d.train.labels).loss_sum / d.train.len() as f64
}

#[test]
fn gradients_match_finite_differences() {
    let (n, dim, classes) = (13, 7, 4);
    let data = Arc::new(tiny_data(n, dim, classes));
    let model = Mlp::new(&[dim, 6, 5, classes], 42, Preprocess::identity(), vec![dim]).unwrap();

    // One SGD step with lr = 1 over the whole set (one batch) leaves
    // `old - new` equal to the gradient of the mean loss.
    let mut cpu = CpuBackend::new(model.clone(), data.clone(), n).unwrap();
    cpu.begin_epoch(&(0..n as u32).collect::<Vec<_>>()).unwrap();
    cpu.train_steps(0, 1, 1.0).unwrap();
    let stepped = cpu.model().unwrap();

    let eps = 1e-3f32;
    let mut worst = 0.0f64;
    for l in 0..model.layers.len() {
        for (which, len) in [(0, model.layers[l].weight.len()), (1, model.layers[l].bias.len())] {
            for i in 0..len {
                let get = |m: &Mlp| {
                    if which == 0 {
                        m.layers[l].weight[i]
                    } else {
                        m.layers[l].bias[i]
                    }
                };
                let analytic = (get(&model) - get(&stepped)) as f64;
                let mut plus = model.clone();
                let mut minus = model.clone();
                let (p, m) = if which == 0 {
                    (&mut plus.layers[l].weight[i], &mut minus.layers[l].weight[i])
                } else {
                    (&mut plus.layers[l].bias[i], &mut minus.layers[l].bias[i])
                };
                *p += eps;
                *m -= eps;
                let numeric = (loss(&plus, &data) - loss(&minus, &data)) / (2.0 * eps as f64);
                // Central differences err by O(eps^2 * f''') plus f32 rounding
                // of the loss (~1e-7 / eps = 1e-4); a ReLU kink inside +-eps adds
                // more, so allow 2e-4 absolute plus 1% relative (measured worst: ~3e-5).
                let err = (analytic - numeric).abs();
                assert!(
                    err < 2e-4 + 0.01 * numeric.abs(),
                    "layer {l} {} [{i}]: analytic {analytic}, numeric {numeric}",
                    if which == 0 { "weight" } else { "bias" }
                );
                worst = worst.max(err);
            }
        }
    }
    eprintln!("largest |analytic - numeric| = {worst:e}");
}
