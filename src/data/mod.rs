//! Datasets: reading IDX and CSV files, the built-in digits, preprocessing and
//! shuffling. This module knows nothing of backends or models.

pub mod builtin;
pub mod csv;
pub mod idx;

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Error, Setting};

/// One part of a dataset (train or test): `len` examples of `dim` raw values
/// each, stored row-major, and one label per example.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// Raw feature values as read from the file (not yet preprocessed).
    pub features: Vec<f32>,
    /// One label per example, each below the dataset's class count.
    pub labels: Vec<u32>,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the split holds no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Raw values of example `i`.
    pub fn example(&self, i: usize, dim: usize) -> &[f32] {
        &self.features[i * dim..(i + 1) * dim]
    }
}

/// A labelled dataset with a train and a test split, and a validation split
/// held out of the training set when [`Dataset::hold_out_validation`] made
/// one (empty otherwise). Training never reads the validation rows: they
/// are no longer in `train`.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where it came from, for logs.
    pub source: String,
    /// Shape of one example, e.g. `[28, 28]` for MNIST or `[64]` for a CSV row.
    pub shape: Vec<usize>,
    /// Number of classes (largest label + 1).
    pub classes: usize,
    /// Largest raw value the format allows (255 for IDX u8 images); used by
    /// the default `[0, 1]` scaling.
    pub value_max: f32,
    /// The training rows (without the validation rows).
    pub train: Split,
    /// Rows taken out of the training set to choose a model by (empty: none).
    pub validation: Split,
    /// The test rows.
    pub test: Split,
}

impl Dataset {
    /// Values per example.
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when every raw value is an integer in 0..=255, so the data can be
    /// kept as bytes (on the GPU, for example).
    pub fn is_u8(&self) -> bool {
        let ok = |s: &Split| {
            s.features
                .iter()
                .all(|&v| (0.0..=255.0).contains(&v) && v.fract() == 0.0)
        };
        ok(&self.train) && ok(&self.validation) && ok(&self.test)
    }

    /// Move a seeded, class-stratified `fraction` of the training rows into
    /// [`Dataset::validation`].
    ///
    /// The rule: a class with `n` training examples gives `round(fraction *
    /// n)` of them, at least 1 when `fraction > 0` and `n >= 2`, and at most
    /// `n - 1`, so every class keeps a training example. Which rows go is a
    /// shuffle seeded by `seed`; both splits keep the rows' original order.
    /// `fraction` 0 does nothing. Refused: a fraction outside `[0, 1)`, a
    /// dataset that already has a validation split, and a split that leaves
    /// no validation rows.
    pub fn hold_out_validation(&mut self, fraction: f64, seed: u64) -> Result<(), Error> {
        check_val_split(fraction)?;
        if fraction == 0.0 {
            return Ok(());
        }
        if !self.validation.is_empty() {
            return Err(Error::Config("the dataset already has a validation split".into()));
        }
        let held = stratified_indices(&self.train.labels, fraction, seed);
        if held.is_empty() {
            return Err(Error::invalid(
                Setting::ValSplit,
                fraction,
                "a fraction that leaves at least one validation example (no class has 2 training examples)",
            ));
        }
        let dim = self.dim();
        let mut keep = vec![true; self.train.len()];
        for &i in &held {
            keep[i] = false;
        }
        let old = std::mem::take(&mut self.train);
        for (i, &label) in old.labels.iter().enumerate() {
            let to = if keep[i] { &mut self.train } else { &mut self.validation };
            to.features.extend_from_slice(old.example(i, dim));
            to.labels.push(label);
        }
        Ok(())
    }

    /// Check the invariants every loader must establish.
    pub(crate) fn validate(&self) -> Result<(), DataError> {
        let dim = self.dim();
        let src = PathBuf::from(&self.source);
        if self.train.is_empty() {
            return Err(DataError::Empty {
                path: src,
                what: "no training examples".into(),
            });
        }
        if self.test.is_empty() {
            return Err(DataError::Empty {
                path: src,
                what: "no test examples".into(),
            });
        }
        if dim == 0 {
            return Err(DataError::Empty {
                path: src,
                what: "examples have no features".into(),
            });
        }
        for s in [&self.train, &self.test] {
            debug_assert_eq!(s.features.len(), s.len() * dim);
        }
        if self.classes < 2 {
            return Err(DataError::Invalid(format!(
                "{}: only {} class found in the labels; a classifier needs at least 2",
                self.source, self.classes
            )));
        }
        Ok(())
    }
}

/// How raw values are mapped to network inputs: `x * scale + offset`, the
/// same scalars for every feature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Which preprocessing was fitted.
    pub kind: Normalize,
    /// Multiplies each raw value.
    pub scale: f32,
    /// Added after the scale.
    pub offset: f32,
}

/// The preprocessing a user can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// Divide by the largest value the format allows, giving [0, 1].
    Scale,
    /// Subtract the training set's mean and divide by its standard deviation.
    Standardize,
}

impl Normalize {
    /// The name written as the `normalize` metadata key of a model.
    pub fn as_str(self) -> &'static str {
        match self {
            Normalize::Scale => "scale",
            Normalize::Standardize => "standardize",
        }
    }
    /// The [`Normalize`] named `s` (as [`Normalize::as_str`] writes it);
    /// `None` for any other name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scale" => Some(Normalize::Scale),
            "standardize" => Some(Normalize::Standardize),
            _ => None,
        }
    }
}

impl Preprocess {
    /// Fit the preprocessing on the training split.
    pub fn fit(kind: Normalize, data: &Dataset) -> Self {
        match kind {
            Normalize::Scale => {
                let max = if data.value_max > 0.0 { data.value_max } else { 1.0 };
                Preprocess {
                    kind,
                    scale: 1.0 / max,
                    offset: 0.0,
                }
            }
            Normalize::Standardize => {
                // Two passes in f64: the sums over 47M pixels lose digits in f32.
                let xs = &data.train.features;
                let n = xs.len().max(1) as f64;
                let mean = xs.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = xs.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
                let std = var.sqrt().max(1e-12);
                Preprocess {
                    kind,
                    scale: (1.0 / std) as f32,
                    offset: (-mean / std) as f32,
                }
            }
        }
    }

    /// The identity (for tests and raw inputs).
    pub fn identity() -> Self {
        Preprocess {
            kind: Normalize::Scale,
            scale: 1.0,
            offset: 0.0,
        }
    }

    /// One raw value preprocessed: `raw * scale + offset`.
    #[inline]
    pub fn apply(&self, raw: f32) -> f32 {
        raw * self.scale + self.offset
    }

    /// Preprocess a slice of raw values into `out`.
    pub fn apply_into(&self, raw: &[f32], out: &mut [f32]) {
        for (o, &r) in out.iter_mut().zip(raw) {
            *o = self.apply(r);
        }
    }
}

/// Where the data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// The embedded digits dataset.
    Builtin,
    /// A folder of IDX files.
    IdxDir(PathBuf),
    /// A CSV file (plain or .gz).
    Csv(PathBuf),
}

/// Debian's dataset-fashion-mnist package installs here.
pub const SYSTEM_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Options for loading CSV data; IDX ignores them.
#[derive(Debug, Clone, Copy)]
pub struct CsvOptions {
    /// Column holding the label; negative counts from the end (-1 is the last).
    pub label_col: i64,
    /// Fraction of rows held out for testing.
    pub test_split: f64,
    /// Seed of the train/test split.
    pub seed: u64,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            label_col: -1,
            test_split: 0.2,
            seed: 0,
        }
    }
}

impl DataSource {
    /// Interpret a `--data` argument: `builtin`, a folder, or a file.
    pub fn from_arg(arg: &str) -> Result<Self, DataError> {
        if arg == "builtin" {
            return Ok(DataSource::Builtin);
        }
        let p = PathBuf::from(arg);
        if p.is_dir() {
            Ok(DataSource::IdxDir(p))
        } else if p.is_file() {
            Ok(DataSource::Csv(p))
        } else {
            Err(DataError::Missing {
                path: p,
                tried: "a folder of IDX files, a CSV file, or the word `builtin`".into(),
            })
        }
    }

    /// Pick a source when the user named none: `$WGTRAIN_DATA`, then the
    /// system Fashion-MNIST, then the built-in digits. Returns the source and
    /// the reason it was picked.
    pub fn resolve(arg: Option<&str>) -> Result<(Self, String), DataError> {
        if let Some(a) = arg {
            return Ok((Self::from_arg(a)?, "given by --data".into()));
        }
        if let Ok(env) = std::env::var("WGTRAIN_DATA") {
            if !env.is_empty() {
                return Ok((Self::from_arg(&env)?, "from $WGTRAIN_DATA".into()));
            }
        }
        let sys = Path::new(SYSTEM_FASHION_MNIST);
        if idx::find_file(sys, "train-images", "idx3").is_some() {
            return Ok((
                DataSource::IdxDir(sys.to_path_buf()),
                format!("no --data or $WGTRAIN_DATA; found Fashion-MNIST at {SYSTEM_FASHION_MNIST}"),
            ));
        }
        Ok((
            DataSource::Builtin,
            format!("no --data, no $WGTRAIN_DATA and nothing at {SYSTEM_FASHION_MNIST}"),
        ))
    }

    /// Load and check the dataset.
    pub fn load(&self, csv_opts: CsvOptions) -> Result<Dataset, DataError> {
        let ds = match self {
            DataSource::Builtin => builtin::load(csv_opts.test_split, csv_opts.seed)?,
            DataSource::IdxDir(dir) => idx::load_dir(dir)?,
            DataSource::Csv(path) => csv::load_file(path, csv_opts)?,
        };
        ds.validate()?;
        Ok(ds)
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSource::Builtin => write!(f, "built-in UCI digits (1,797 8x8 images)"),
            DataSource::IdxDir(p) => write!(f, "IDX folder {}", p.display()),
            DataSource::Csv(p) => write!(f, "CSV file {}", p.display()),
        }
    }
}

/// A seeded permutation of `0..n` for epoch `epoch`: every epoch reshuffles,
/// and the same seed gives the same order on every backend.
pub fn epoch_permutation(n: usize, seed: u64, epoch: usize) -> Vec<u32> {
    let mut perm: Vec<u32> = (0..n as u32).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0000_0000_0000 ^ epoch as u64);
    perm.shuffle(&mut rng);
    perm
}

/// Check a validation fraction: a number in `[0, 1)`.
pub fn check_val_split(fraction: f64) -> Result<(), Error> {
    if !(fraction.is_finite() && (0.0..1.0).contains(&fraction)) {
        return Err(Error::invalid(
            Setting::ValSplit,
            fraction,
            "a fraction from 0 (none) to below 1, e.g. 0.1",
        ));
    }
    Ok(())
}

/// The indices (ascending) of the rows a stratified hold-out of `fraction`
/// takes from `labels`; the rule is [`Dataset::hold_out_validation`]'s.
pub fn stratified_indices(labels: &[u32], fraction: f64, seed: u64) -> Vec<usize> {
    let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7a11_da7e_0000_0000);
    let mut held = Vec::new();
    for rows in &mut by_class {
        let n = rows.len();
        if n < 2 || fraction <= 0.0 {
            continue;
        }
        let k = ((fraction * n as f64).round() as usize).clamp(1, n - 1);
        rows.shuffle(&mut rng);
        held.extend_from_slice(&rows[..k]);
    }
    held.sort_unstable();
    held
}

/// Split labelled rows into train and test with a seeded shuffle.
pub(crate) fn split_rows(
    features: Vec<f32>,
    labels: Vec<u32>,
    dim: usize,
    test_split: f64,
    seed: u64,
) -> (Split, Split) {
    let n = labels.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    order.shuffle(&mut rng);
    let n_test = ((n as f64) * test_split).round() as usize;
    let n_test = n_test.min(n);
    let take = |idx: &[usize]| {
        let mut s = Split {
            features: Vec::with_capacity(idx.len() * dim),
            labels: Vec::with_capacity(idx.len()),
        };
        for &i in idx {
            s.features.extend_from_slice(&features[i * dim..(i + 1) * dim]);
            s.labels.push(labels[i]);
        }
        s
    };
    let test = take(&order[..n_test]);
    let train = take(&order[n_test..]);
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_changes_per_epoch() {
        let a = epoch_permutation(1000, 3, 0);
        let b = epoch_permutation(1000, 3, 1);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<u32>>());
        assert_ne!(a, b);
        assert_eq!(a, epoch_permutation(1000, 3, 0));
    }

    #[test]
    fn standardize_gives_zero_mean_unit_std() {
        let ds = Dataset {
            source: "t".into(),
            shape: vec![2],
            classes: 2,
            value_max: 255.0,
            train: Split {
                features: vec![0.0, 10.0, 20.0, 30.0],
                labels: vec![0, 1],
            },
            validation: Split::default(),
            test: Split::default(),
        };
        let p = Preprocess::fit(Normalize::Standardize, &ds);
        let ys: Vec<f32> = ds.train.features.iter().map(|&v| p.apply(v)).collect();
        let mean: f32 = ys.iter().sum::<f32>() / 4.0;
        let var: f32 = ys.iter().map(|y| (y - mean).powi(2)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6, "{mean}");
        assert!((var - 1.0).abs() < 1e-5, "{var}");
    }

    fn labelled(labels: &[u32]) -> Dataset {
        Dataset {
            source: "t".into(),
            shape: vec![1],
            classes: labels.iter().copied().max().map_or(0, |m| m as usize + 1),
            value_max: 255.0,
            // Each row's value is its index, so rows can be traced.
            train: Split {
                features: (0..labels.len()).map(|i| i as f32).collect(),
                labels: labels.to_vec(),
            },
            validation: Split::default(),
            test: Split::default(),
        }
    }

    #[test]
    fn validation_split_is_stratified_seeded_and_disjoint() {
        // Class sizes 100, 37, 2, 1, 10.
        let mut labels = Vec::new();
        for (c, n) in [(0u32, 100), (1, 37), (2, 2), (3, 1), (4, 10)] {
            labels.extend(std::iter::repeat_n(c, n));
        }
        // Interleave the classes so that rows of a class are not adjacent.
        let order = epoch_permutation(labels.len(), 1, 0);
        let labels: Vec<u32> = order.iter().map(|&i| labels[i as usize]).collect();
        let mut d = labelled(&labels);
        d.hold_out_validation(0.1, 5).unwrap();
        let count = |s: &Split, c: u32| s.labels.iter().filter(|&&l| l == c).count();
        // round(0.1 n), at least 1 when n >= 2, at most n - 1.
        for (c, want) in [(0u32, 10), (1, 4), (2, 1), (3, 0), (4, 1)] {
            assert_eq!(count(&d.validation, c), want, "class {c}");
        }
        assert_eq!(d.train.len() + d.validation.len(), labels.len());
        // Disjoint, and every row keeps its label.
        let mut seen = vec![0; labels.len()];
        for s in [&d.train, &d.validation] {
            for (&v, &l) in s.features.iter().zip(&s.labels) {
                seen[v as usize] += 1;
                assert_eq!(labels[v as usize], l);
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
        // Seeded: the same seed gives the same rows, another seed others.
        let mut again = labelled(&labels);
        again.hold_out_validation(0.1, 5).unwrap();
        assert_eq!(again.validation.features, d.validation.features);
        let mut other = labelled(&labels);
        other.hold_out_validation(0.1, 6).unwrap();
        assert_ne!(other.validation.features, d.validation.features);
        // A second hold-out is refused.
        assert!(d.hold_out_validation(0.1, 5).is_err());
    }

    #[test]
    fn validation_fractions_out_of_range_are_refused() {
        for f in [-0.1, 1.0, 1.5, f64::NAN, f64::INFINITY] {
            let mut d = labelled(&[0, 0, 1, 1]);
            let e = d.hold_out_validation(f, 0).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Invalid {
                        setting: Setting::ValSplit,
                        ..
                    }
                ),
                "{f}: {e}"
            );
        }
        // 0 holds nothing out; a large fraction still leaves one row a class.
        let mut d = labelled(&[0, 0, 1, 1]);
        d.hold_out_validation(0.0, 0).unwrap();
        assert!(d.validation.is_empty());
        d.hold_out_validation(0.99, 0).unwrap();
        assert_eq!((d.train.len(), d.validation.len()), (2, 2));
        // No class with two rows: nothing can be held out.
        let mut d = labelled(&[0, 1]);
        assert!(d.hold_out_validation(0.5, 0).is_err());
    }
}
