//! The memory a backend reports holding for a run (`Backend::memory`, the
//! line the train log and `wgtrain bench` print before the first step),
//! against the sizes the layer widths, the optimizer and the data imply,
//! counted here from the model and the dataset rather than from the
//! backend's buffers.

mod common;

use std::sync::Arc;

use wgtrain::backend::{Backend, TrainSpec};
use wgtrain::cpu::CpuBackend;
use wgtrain::data::Dataset;
use wgtrain::gpu::GpuBackend;
use wgtrain::optim::{Adam, Optimizer, Sgd};
use wgtrain::resources::Need;
use wgtrain::Mlp;

fn digits() -> Arc<Dataset> {
    common::builtin_digits()
}

fn model(data: &Dataset, hidden: &[usize]) -> Mlp {
    common::mlp_for(data, hidden, 3)
}

fn part(n: &Need, name: &str) -> u64 {
    n.parts
        .iter()
        .find(|(p, _)| *p == name)
        .map(|(_, b)| *b)
        .unwrap_or_else(|| panic!("no part {name} in {n:?}"))
}

/// Weights and biases of layer widths `sizes`, counted layer by layer.
fn parameters(sizes: &[usize]) -> u64 {
    let mut p = 0;
    for l in 0..sizes.len() - 1 {
        p += sizes[l] * sizes[l + 1] + sizes[l + 1];
    }
    p as u64
}

fn adam() -> Optimizer {
    Optimizer::Adam(Adam::default())
}

#[test]
fn cpu_memory_counts_parameters_state_activations_and_data() {
    let data = digits();
    let sizes = [data.dim(), 48, 24, data.classes];
    let p = parameters(&sizes);
    let batch = 32;
    let units: u64 = sizes.iter().map(|&s| s as u64).sum();
    for (optimizer, slots) in [(Optimizer::Sgd(Sgd::default()), 0), (adam(), 2)] {
        let b = CpuBackend::with_threads(
            model(&data, &sizes[1..3]),
            data.clone(),
            TrainSpec::new(batch, optimizer),
            1,
        )
        .unwrap();
        let m = b.memory();
        assert_eq!(part(&m, "parameters"), 4 * p, "{m:?}");
        // Plain SGD updates in the product's epilogue: no stored gradient.
        let stored = if slots == 0 { 0 } else { 4 * p };
        assert_eq!(part(&m, "gradients"), stored, "{m:?}");
        assert_eq!(part(&m, "optimizer state"), 4 * p * slots, "{m:?}");
        // Each layer's batch of outputs and of their gradients, at least.
        let acts = part(&m, "activations");
        assert!(acts >= 2 * 4 * batch as u64 * units, "{acts} {m:?}");
        assert!(acts <= 4 * 4 * batch as u64 * units, "{acts} {m:?}");
        // The features as f32 and their labels, for every split.
        let n = (data.train.len() + data.test.len() + data.validation.len()) as u64;
        let data_bytes = part(&m, "data");
        assert!(data_bytes >= n * (4 * data.dim() as u64 + 4), "{data_bytes}");
        assert_eq!(part(&m, "teachers"), 0);
        assert_eq!(m.total(), m.parts.iter().map(|(_, b)| b).sum::<u64>());
        let line = m.used();
        assert!(
            line.starts_with(&format!("training 64-48-24-10 on {}", b.name())) && line.contains(" uses "),
            "{line}"
        );
    }
}

#[test]
fn gpu_memory_is_the_buffers_of_the_run() {
    let Some(ctx) = common::gpu() else { return };
    let data = digits();
    let sizes = [data.dim(), 40, data.classes];
    let p = parameters(&sizes);
    let batch = 16;
    let b = GpuBackend::new(
        ctx,
        model(&data, &sizes[1..2]),
        data.clone(),
        TrainSpec::new(batch, adam()),
    )
    .unwrap();
    let m = b.memory();
    assert_eq!(part(&m, "parameters"), 4 * p, "{m:?}");
    assert_eq!(part(&m, "gradients"), 4 * p, "{m:?}");
    assert_eq!(part(&m, "optimizer state"), 2 * 4 * p, "{m:?}");
    // Activations are sized for an evaluation chunk, gradients for a batch.
    let outputs: u64 = sizes[1..].iter().map(|&s| s as u64).sum();
    let acts = part(&m, "activations");
    assert!(acts >= 4 * outputs * 2 * batch as u64, "{acts}");
    // The digits are bytes: resident four to a word, plus labels and the
    // epoch permutation.
    let n = (data.train.len() + data.test.len() + data.validation.len()) as u64;
    let data_bytes = part(&m, "data");
    let dim = data.dim() as u64;
    assert!(data_bytes >= n * (dim + 4), "{data_bytes}");
    assert!(
        data_bytes <= n * (dim + 3 + 4) + 4 * data.train.len() as u64 + 64,
        "{data_bytes}"
    );
    assert!(part(&m, "other") > 0, "{m:?}");
}

#[test]
fn bench_model_widths_time_one_model_and_report_its_memory() {
    let o = common::wgtrain(&[
        "bench", "--model", "32,16", "--device", "cpu", "--data", "builtin", "--epochs", "2", "--batch", "32",
    ]);
    let t = common::text(&o);
    assert!(o.status.success(), "{t}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    // Only the epoch benchmark, for the one model 64-32-16-10.
    assert_eq!(lines.len(), 1, "{t}");
    assert_eq!(lines[0]["bench"], "epoch");
    assert_eq!(lines[0]["sizes"], serde_json::json!([64, 32, 16, 10]));
    assert_eq!(lines[0]["precision"], "f32");
    assert!(lines[0]["memory_bytes"].as_u64().unwrap() > 4 * parameters(&[64, 32, 16, 10]));
    assert!(t.contains("training 64-32-16-10 on cpu") && t.contains(" uses "), "{t}");
    // Widths are for the epoch benchmark; a bad width is named.
    let t = common::text(&common::wgtrain(&["bench", "--model", "32,0", "--device", "cpu"]));
    assert!(t.contains("`0` is not a hidden width"), "{t}");
    let t = common::text(&common::wgtrain(&[
        "bench",
        "--model",
        "32",
        "--inference",
        "--device",
        "cpu",
    ]));
    assert!(t.contains("the inference benchmark takes a model file"), "{t}");
}

#[test]
fn the_train_log_reports_the_memory_before_training() {
    let o = common::wgtrain(&[
        "train", "--data", "builtin", "--device", "cpu", "--epochs", "1", "--hidden", "20",
    ]);
    let t = common::text(&o);
    assert!(o.status.success(), "{t}");
    let used = t.find("training 64-20-10 on cpu").expect("the memory line");
    let first_epoch = t.find("epoch 1").expect("an epoch line");
    assert!(used < first_epoch, "{t}");
    assert!(t[used..].lines().next().unwrap().contains("parameters 6.0 kB"), "{t}");
}
