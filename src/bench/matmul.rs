//! Matrix-product throughput (`wgtrain bench --matmul`): the shapes of a
//! training step, and their timing on the CPU (the GPU twin is
//! `crate::gpu::ops::bench_matmul`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::time_repeated;

/// Throughput of one matrix product shape on one device.
#[derive(Debug, Clone, Serialize)]
pub struct MatmulTiming {
    /// The benchmark's name in reports: `"matmul"`.
    pub bench: &'static str,
    /// The device, in words (for the CPU, with its thread count).
    pub device: String,
    /// `nn`, `nt` or `tn`: which operand is stored transposed.
    pub variant: &'static str,
    /// GPU matmul tile variant (outputs per workgroup, and k-slices); none
    /// on the CPU.
    pub tile: Option<&'static str>,
    /// Rows of the output.
    pub m: usize,
    /// Columns of the output.
    pub n: usize,
    /// The inner dimension, summed over.
    pub k: usize,
    /// Mean wall time of one product, seconds.
    pub seconds_per_call: f64,
    /// `2 m n k` floating-point operations per call, in GFLOP/s.
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

/// Time a product on the CPU on `threads` threads (0: one per core):
/// repeated until about `budget_s` seconds.
pub fn cpu_matmul(variant: &'static str, m: usize, n: usize, k: usize, budget_s: f64, threads: usize) -> MatmulTiming {
    let mut team = crate::cpu::Team::new(threads, crate::cpu::team::TRAIN_SPIN);
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
    let secs = team.install(|| {
        call();
        time_repeated(&mut call, budget_s)
    });
    MatmulTiming {
        bench: "matmul",
        device: crate::cpu::device_name(team.size()),
        variant,
        tile: None,
        m,
        n,
        k,
        seconds_per_call: secs,
        gflops: 2.0 * (m * n * k) as f64 / secs / 1e9,
    }
}
