//! Synthetic data for benchmarks where no real data is installed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::{Dataset, Split};

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
        validation: Split::default(),
        test,
    }
}
