//! One SGD step of the 784-500-10 MLP on random 28x28 images, on the CPU and
//! on every GPU adapter wgpu finds (software ones included, so expect
//! lavapipe to be slow).
//!
//!     cargo bench --bench train_step
//!
//! `optimizer_step` times one CPU step at batch 64 with each optimizer
//! (plain SGD, SGD with momentum 0.9, AdamW, and plain SGD with gradient
//! clipping, which takes the unfused path), one after the other; run it
//! a few times and compare medians, as the machine's load drifts:
//!
//!     cargo bench --bench train_step -- optimizer_step
//!
//! A GPU step is timed including the wait for the GPU (`take_stats`), so the
//! figure is the step's latency, not just its recording time; `wgtrain bench`
//! gives the throughput with many steps per submit.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgtrain::backend::{steps_per_epoch, Backend, TrainSpec};
use wgtrain::data::{epoch_permutation, Normalize, Preprocess};
use wgtrain::model::Mlp;
use wgtrain::optim::StepHyper;

fn bench(c: &mut Criterion) {
    let data = Arc::new(wgtrain::bench::synthetic_mnist_like(0));
    let order = epoch_permutation(data.train.len(), 0, 0);
    let mut g = c.benchmark_group("train_step");
    for batch in [64usize, 256] {
        let model = Mlp::new(
            &[784, 500, 10],
            0,
            Preprocess::fit(Normalize::Scale, &data),
            vec![28, 28],
        )
        .unwrap();
        let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(
            wgtrain::cpu::CpuBackend::new(model.clone(), data.clone(), TrainSpec::sgd(batch)).unwrap(),
        )];
        if let Ok(Some(ctx)) = wgtrain::device::open_gpu(&wgtrain::device::DeviceChoice::Gpu) {
            if let Ok(gpu) = wgtrain::gpu::GpuBackend::new(ctx, model, data.clone(), TrainSpec::sgd(batch)) {
                backends.push(Box::new(gpu));
            }
        }
        g.throughput(Throughput::Elements(batch as u64));
        let steps = steps_per_epoch(data.train.len(), batch);
        for be in backends.iter_mut() {
            be.begin_epoch(&order).unwrap();
            let mut i = 0;
            g.bench_function(BenchmarkId::new(be.name(), batch), |b| {
                b.iter(|| {
                    be.train_steps(i % (steps - 1), &StepHyper::constant(0.01, 1)).unwrap();
                    be.take_stats().unwrap();
                    i += 1;
                })
            });
        }
    }
    g.finish();
}

/// CPU steps with each optimizer, at the seed shape.
fn optimizer_step(c: &mut Criterion) {
    use wgtrain::backend::Regularization;
    use wgtrain::optim::{Adam, Optimizer, Sgd};
    let data = Arc::new(wgtrain::bench::synthetic_mnist_like(0));
    let order = epoch_permutation(data.train.len(), 0, 0);
    let batch = 64;
    let steps = steps_per_epoch(data.train.len(), batch);
    let model = Mlp::new(
        &[784, 500, 10],
        0,
        Preprocess::fit(Normalize::Scale, &data),
        vec![28, 28],
    )
    .unwrap();
    let clip = Regularization {
        clip_grad_norm: Some(1.0),
        ..Regularization::default()
    };
    let optimizers = [
        ("sgd", Optimizer::sgd(), Regularization::default()),
        (
            "momentum",
            Optimizer::Sgd(Sgd {
                momentum: 0.9,
                ..Sgd::default()
            }),
            Regularization::default(),
        ),
        (
            "adamw",
            Optimizer::AdamW(Adam {
                weight_decay: 0.01,
                ..Adam::default()
            }),
            Regularization::default(),
        ),
        ("sgd+clip", Optimizer::sgd(), clip),
    ];
    let mut g = c.benchmark_group("optimizer_step");
    g.throughput(Throughput::Elements(batch as u64));
    for (name, optimizer, regular) in optimizers {
        let spec = TrainSpec {
            regular,
            ..TrainSpec::new(batch, optimizer)
        };
        let mut be = wgtrain::cpu::CpuBackend::new(model.clone(), data.clone(), spec).unwrap();
        be.begin_epoch(&order).unwrap();
        let mut i = 0;
        g.bench_function(BenchmarkId::new(name, batch), |b| {
            b.iter(|| {
                be.train_steps(i % (steps - 1), &StepHyper::constant(0.001, 1)).unwrap();
                be.take_stats().unwrap();
                i += 1;
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench, optimizer_step
}
criterion_main!(benches);
