//! Samplers: which configuration trial number `n` of a study trains.
//!
//! Both samplers are functions of the study's seed and the trial number
//! alone, so every process working on a study draws the same configuration
//! for the same number, and a resumed study draws what it would have.
//!
//! - `random`: each key independently, uniform over a choice list or a
//!   range, log-uniform over a `log` range (whole numbers rounded), from a
//!   ChaCha8 generator seeded by `(seed, n)`.
//! - `grid`: the product of every key's grid values (a choice list's
//!   values, `points` values of a range) in a fixed order, keys
//!   alphabetical, the last key changing fastest; a study of more trials
//!   than the grid holds stops at the grid's size.
//!
//! TPE (Bergstra et al., 2011) is not offered: the `tpe` crate (0.3) is
//! built on rand 0.10, while wgtrain uses rand 0.9, and its model is fitted
//! on finished trials, which would make a trial's configuration depend on
//! the order in which processes finished theirs.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::space::{Dim, Space, TrialConfig, Value};

/// How a study picks configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    /// Independent draws per key, seeded by the study's seed and the trial
    /// number (log-uniform over log ranges).
    Random,
    /// Every combination of the keys' grid values, in order.
    Grid,
}

impl Sampler {
    /// The configuration of trial `number`, or `None` past the end of a
    /// grid.
    pub fn sample(self, space: &Space, seed: u64, number: usize) -> Option<TrialConfig> {
        match self {
            Sampler::Random => Some(random(space, seed, number)),
            Sampler::Grid => grid(space, number),
        }
    }

    /// The most trials this sampler gives for `space` (`None`: no limit).
    pub fn limit(self, space: &Space) -> Option<usize> {
        match self {
            Sampler::Random => None,
            Sampler::Grid => Some(space.grid_size()),
        }
    }
}

/// The generator of trial `number`'s draws.
fn rng_of(seed: u64, number: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(number as u64 + 1);
    rng
}

/// One draw from a dimension.
pub fn draw(dim: &Dim, rng: &mut impl Rng) -> Value {
    match dim {
        Dim::Choice { values } => values[rng.random_range(0..values.len())].clone(),
        Dim::Range {
            min, max, log, integer, ..
        } => {
            let u: f64 = rng.random();
            let (lo, hi) = if *integer {
                // Whole numbers: each of min..=max equally likely (on the
                // log scale for log ranges).
                (*min - 0.5, *max + 0.5)
            } else {
                (*min, *max)
            };
            let v = if *log {
                let (a, b) = (lo.max(min * 0.5).ln(), hi.ln());
                (a + u * (b - a)).exp()
            } else {
                lo + u * (hi - lo)
            };
            let v = if *integer { v.round() } else { v };
            Value::Num(v.clamp(*min, *max))
        }
    }
}

fn random(space: &Space, seed: u64, number: usize) -> TrialConfig {
    let mut rng = rng_of(seed, number);
    let values: BTreeMap<String, Value> = space.dims.iter().map(|(k, d)| (k.clone(), draw(d, &mut rng))).collect();
    TrialConfig::from_values(&values)
}

/// The values of grid point `number` (mixed radix, last key fastest).
pub fn grid_values(space: &Space, number: usize) -> Option<BTreeMap<String, Value>> {
    if number >= space.grid_size() {
        return None;
    }
    let mut rest = number;
    let mut values = BTreeMap::new();
    for (k, d) in space.dims.iter().rev() {
        let g = d.grid();
        values.insert(k.clone(), g[rest % g.len()].clone());
        rest /= g.len();
    }
    Some(values)
}

fn grid(space: &Space, number: usize) -> Option<TrialConfig> {
    grid_values(space, number).map(|v| TrialConfig::from_values(&v))
}
