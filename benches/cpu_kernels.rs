//! CPU kernel throughput at the shapes of one training step of the
//! 784-500-10 MLP at batch 64 and 256.
//!
//!     cargo bench --bench cpu_kernels
//!
//! Reports time per call and elements (multiply-adds for the products) per
//! second. Set the thread count with WGTRAIN_THREADS (default: all cores).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use wgtrain::cpu::kernels;
use wgtrain::cpu::team::{self, Team};

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32 - 0.5)
        .collect()
}

fn bench(c: &mut Criterion) {
    let threads = std::env::var("WGTRAIN_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    Team::new(threads, team::TRAIN_SPIN).install(|| bench_on_team(c));
}

fn bench_on_team(c: &mut Criterion) {
    let (inp, hid, out) = (784, 500, 10);
    let mut g = c.benchmark_group("cpu");
    for batch in [64usize, 256] {
        let x = data(batch * inp, 1);
        let w1 = data(hid * inp, 2);
        let b1 = data(hid, 3);
        let w2 = data(out * hid, 4);
        let mut h = vec![0.0; batch * hid];
        let mut dh = vec![0.0; batch * hid];
        let dz = data(batch * out, 5);
        let dy = data(batch * hid, 6);
        let mut w1m = w1.clone();
        g.throughput(Throughput::Elements((batch * hid * inp) as u64));
        g.bench_function(BenchmarkId::new("linear_forward relu 784->500", batch), |b| {
            b.iter(|| kernels::linear_forward(black_box(&x), &w1, &b1, &mut h, batch, inp, hid, true))
        });
        g.bench_function(BenchmarkId::new("weight_update 500x784", batch), |b| {
            b.iter(|| kernels::weight_update(&mut w1m, None, black_box(&dy), &x, batch, inp, hid, 1e-6))
        });
        g.throughput(Throughput::Elements((batch * hid * out) as u64));
        g.bench_function(BenchmarkId::new("backprop_input 10->500", batch), |b| {
            b.iter(|| kernels::backprop_input(black_box(&dz), &w2, &h, &mut dh, batch, hid, out))
        });
        g.throughput(Throughput::Elements((batch * out) as u64));
        let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
        let logits = data(batch * out, 7);
        let mut dl = vec![0.0; batch * out];
        g.bench_function(BenchmarkId::new("softmax_xent", batch), |b| {
            b.iter(|| kernels::softmax_xent(black_box(&logits), &labels, &mut dl, batch, out, 0.0))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
