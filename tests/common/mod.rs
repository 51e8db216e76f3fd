//! Helpers shared by the test files: the GPU to test on, random inputs,
//! and running the `wgtrain` binary.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wgtrain::data::{CsvOptions, DataSource, Dataset, Normalize, Preprocess};
use wgtrain::gpu::{AdapterSelector, GpuContext};
use wgtrain::Mlp;

/// The GPU to test on: any adapter, software ones included, opened once per
/// test binary. Without one, the test is skipped with a message, unless
/// `WGTRAIN_REQUIRE_GPU=1` (as CI sets it), where a missing adapter fails
/// the test: a silently skipped GPU test would be a green lie. With
/// `WGTRAIN_WEBGPU_LIMITS=1` the device is opened with WebGPU's default
/// limits (`wgpu::Limits::default()`) instead of the adapter's, so the
/// kernels run as on a browser's adapter.
pub fn gpu() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Result<Arc<GpuContext>, String>> = OnceLock::new();
    let ctx = CTX.get_or_init(|| {
        let opened = if std::env::var("WGTRAIN_WEBGPU_LIMITS").is_ok_and(|v| v == "1") {
            GpuContext::open_with_limits(&AdapterSelector::Any, wgpu::Limits::default())
        } else {
            GpuContext::open(&AdapterSelector::Any)
        };
        opened.map(Arc::new).map_err(|e| e.to_string())
    });
    match ctx {
        Ok(c) => Some(c.clone()),
        Err(e) => {
            if std::env::var("WGTRAIN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("WGTRAIN_REQUIRE_GPU=1 but no GPU adapter could be opened: {e}");
            }
            eprintln!("SKIPPED: no GPU adapter ({e}); set WGTRAIN_REQUIRE_GPU=1 to make this a failure");
            None
        }
    }
}

/// `len` values uniform in `[-1, 1)` from `seed`.
pub fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Run the `wgtrain` binary of this build with `args`, without
/// `WGTRAIN_DATA` from the environment (each test names its data).
pub fn wgtrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgtrain"))
        .args(args)
        .env_remove("WGTRAIN_DATA")
        .output()
        .expect("run wgtrain")
}

/// A finished run's standard output, then its standard error.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The built-in digits, shared by the tests that train on them.
pub fn builtin_digits() -> Arc<Dataset> {
    Arc::new(
        DataSource::Builtin
            .load(CsvOptions::default())
            .expect("the built-in digits"),
    )
}

/// An MLP for `data` with these hidden widths, initialised from `seed`,
/// its inputs scaled as `train` scales them by default.
pub fn mlp_for(data: &Dataset, hidden: &[usize], seed: u64) -> Mlp {
    let mut sizes = vec![data.dim()];
    sizes.extend_from_slice(hidden);
    sizes.push(data.classes);
    Mlp::new(
        &sizes,
        seed,
        Preprocess::fit(Normalize::Scale, data),
        data.shape.clone(),
    )
    .expect("a test model")
}
