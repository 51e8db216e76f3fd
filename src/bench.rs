//! Measurements behind `wgtrain bench`: epoch time of the training loop on
//! any backend, and matrix-product throughput. Timings synchronise with the
//! device inside the timed region (`take_stats` waits for the GPU).

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::backend::{steps_per_epoch, Backend};
use crate::data::{epoch_permutation, Dataset, Split};
use crate::error::Result;
use crate::optim::StepHyper;

/// Epoch timings of one backend at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct EpochTiming {
    pub bench: &'static str,
    pub device: String,
    pub batch: usize,
    /// Steps in a full epoch.
    pub steps_per_epoch: usize,
    /// Steps actually run per timed epoch (fewer when capped).
    pub steps_timed: usize,
    /// Seconds of the first epoch (warm-up: pipeline creation, first
    /// uploads, caches), scaled to a full epoch when capped.
    pub first_epoch_s: f64,
    /// Median seconds of the later epochs, scaled to a full epoch when capped.
    pub steady_epoch_s: f64,
    /// Examples per second in the steady state.
    pub examples_per_s: f64,
}

/// Time `epochs` epochs (at least 2: the first is reported apart) of SGD at
/// `lr`. With `max_steps`, each epoch runs at most that many steps and the
/// time is scaled to a full epoch.
pub fn epoch_time(
    backend: &mut dyn Backend,
    n_train: usize,
    epochs: usize,
    max_steps: Option<usize>,
    lr: f32,
) -> Result<EpochTiming> {
    let batch = backend.batch_size();
    let full = steps_per_epoch(n_train, batch);
    let steps = max_steps.map_or(full, |m| m.clamp(1, full));
    let scale = full as f64 / steps as f64;
    let mut times = Vec::new();
    for epoch in 0..epochs.max(2) {
        let order = epoch_permutation(n_train, 0, epoch);
        let t0 = Instant::now();
        backend.begin_epoch(&order)?;
        backend.train_steps(0, &StepHyper::constant(lr, steps))?;
        backend.take_stats()?;
        times.push(t0.elapsed().as_secs_f64() * scale);
    }
    let first = times[0];
    let steady = median(&mut times[1..].to_vec());
    Ok(EpochTiming {
        bench: "epoch",
        device: backend.name(),
        batch,
        steps_per_epoch: full,
        steps_timed: steps,
        first_epoch_s: first,
        steady_epoch_s: steady,
        examples_per_s: n_train as f64 / steady,
    })
}

/// Throughput of one matrix product shape on one device.
#[derive(Debug, Clone, Serialize)]
pub struct MatmulTiming {
    pub bench: &'static str,
    pub device: String,
    /// `nn`, `nt` or `tn`: which operand is stored transposed.
    pub variant: &'static str,
    /// GPU matmul tile variant (outputs per workgroup, and k-slices); none
    /// on the CPU.
    pub tile: Option<&'static str>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub seconds_per_call: f64,
    pub gflops: f64,
}

/// The products of one training step of the 784-500-10 MLP at batch `b`,
/// plus square sizes: `(variant, m, n, k)`.
pub fn matmul_shapes(batch: usize, square: &[usize]) -> Vec<(&'static str, usize, usize, usize)> {
    let mut v = vec![
        ("nt", batch, 500, 784), // forward, layer 1
        ("nt", batch, 10, 500),  // forward, layer 2
        ("nn", batch, 500, 10),  // input gradient, layer 2
        ("tn", 10, 500, batch),  // weight gradient, layer 2
        ("tn", 500, 784, batch), // weight gradient, layer 1
    ];
    v.extend(square.iter().map(|&s| ("nn", s, s, s)));
    v
}

/// Time a product on the CPU: repeated until about `budget_s` seconds.
pub fn cpu_matmul(variant: &'static str, m: usize, n: usize, k: usize, budget_s: f64) -> MatmulTiming {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut c = vec![0.0f32; m * n];
    let (ta, tb) = match variant {
        "nt" => (false, true),
        "tn" => (true, false),
        _ => (false, false),
    };
    let mut call = || crate::cpu::kernels::gemm(m, n, k, &a, ta, &b, tb, &mut c, 0.0, 1.0, false);
    call();
    let secs = time_repeated(&mut call, budget_s);
    MatmulTiming {
        bench: "matmul",
        device: format!("cpu ({} threads)", crate::cpu::threads()),
        variant,
        tile: None,
        m,
        n,
        k,
        seconds_per_call: secs,
        gflops: 2.0 * (m * n * k) as f64 / secs / 1e9,
    }
}

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

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Random u8 images shaped like Fashion-MNIST (60,000 train and 10,000 test
/// 28x28 images, 10 classes), for benchmarking where no real data is
/// installed. Speed does not depend on the values.
pub fn synthetic_mnist_like(seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut split = |n: usize| Split {
        features: (0..n * 784).map(|_| rng.random_range(0..=255u8) as f32).collect(),
        labels: (0..n).map(|_| rng.random_range(0..10u32)).collect(),
    };
    let train = split(60_000);
    let test = split(10_000);
    Dataset {
        source: "synthetic 28x28 images".into(),
        shape: vec![28, 28],
        classes: 10,
        value_max: 255.0,
        train,
        test,
    }
}
