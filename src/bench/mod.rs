//! Measurements behind `wgtrain bench` and `wgtrain compress --bench`:
//!
//! - [`epoch`]: epoch time of the training loop on any backend.
//! - [`matmul`]: matrix-product throughput on the CPU, and the shapes a
//!   training step multiplies.
//! - [`forward`]: forward-pass throughput of the f32 and int8 CPU paths.
//! - [`inference`]: batch-1 latency and throughput of a [`crate::infer::Predictor`].
//! - [`parallel`]: a data-parallel step's phases, transfers and bytes.
//! - [`synthetic`]: random data shaped like Fashion-MNIST.
//! - [`report`]: the JSON lines of these measurements read back, compared
//!   and written as HTML or markdown reports with tables and figures.
//!
//! Everything here only measures (or reports measurements): it runs the backends, predictors and
//! engines of the rest of the crate, and nothing else in the library
//! imports it.

use std::time::Instant;

pub mod epoch;
pub mod forward;
pub mod inference;
pub mod matmul;
pub mod parallel;
pub mod report;
pub mod synthetic;

pub use epoch::{epoch_time, parameter_count, EpochTiming};
pub use forward::{bench_forward_f32, bench_forward_f32_predictor, bench_forward_int8, ForwardBench};
pub use inference::{bench_inference, BenchOptions, InferenceBench};
pub use matmul::{cpu_matmul, matmul_shapes, MatmulTiming};
pub use parallel::{bench_parallel, ParallelTiming};
pub use synthetic::synthetic_mnist_like;

/// Median seconds per call of `f`, over batches of calls filling about
/// `budget_s` seconds.
pub fn time_repeated(f: &mut dyn FnMut(), budget_s: f64) -> f64 {
    let t0 = Instant::now();
    f();
    let once = t0.elapsed().as_secs_f64().max(1e-7);
    let per_round = ((budget_s / 5.0 / once).ceil() as usize).max(1);
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..per_round {
            f();
        }
        rounds.push(t.elapsed().as_secs_f64() / per_round as f64);
    }
    median(&mut rounds)
}

/// The median of `v`, which it sorts in place (by `f64::total_cmp`): the
/// mean of the two middle values for an even length, NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
