//! Argument groups and parsers that several commands share.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use wgtrain::data::{CsvOptions, DataSource, Dataset, Normalize};
use wgtrain::device::DeviceChoice;
use wgtrain::model::{AnyModel, Ensemble, Member};

/// Where the data comes from and how CSV files are read.
#[derive(Debug, Args)]
pub(crate) struct DataArgs {
    /// A folder of IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
    /// t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz),
    /// a CSV file, or `builtin` (the embedded 8x8 digits). Default:
    /// $WGTRAIN_DATA, then /usr/share/datasets/fashion-mnist, then builtin.
    #[arg(long, value_name = "PATH|builtin")]
    pub(crate) data: Option<String>,
    /// CSV: the column holding the label, counting from 0; negative counts
    /// from the end (-1 is the last column).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "N")]
    pub(crate) label_col: i64,
    /// CSV and builtin: the fraction of rows held out as the test set
    /// (a seeded shuffle, see --seed).
    #[arg(long, default_value_t = 0.2, value_name = "FRACTION")]
    pub(crate) test_split: f64,
}

/// Which device runs the work.
#[derive(Debug, Args)]
pub(crate) struct DeviceArgs {
    /// auto (a hardware GPU if there is one, else the CPU), cpu, gpu (any
    /// adapter, software ones such as lavapipe included), gpu:N (the
    /// adapter numbered N by `wgtrain devices`), or part of an adapter's
    /// name. Training also takes several devices, trained data-parallel
    /// (each holds the model; every batch is split between them): all-gpus
    /// (every hardware GPU) or a list such as gpu:0,gpu:1, cpu,gpu:0 or
    /// cpu,cpu (see --shard-weights).
    #[arg(long, default_value = "auto", value_name = "auto|cpu|gpu|gpu:N|NAME|LIST")]
    pub(crate) device: DeviceChoice,
    /// CPU threads (0: one per core); with a device list, the threads of
    /// each CPU device (0: the cores divided among them).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) threads: usize,
}

pub(crate) fn load_data(args: &DataArgs, seed: u64) -> Result<Dataset> {
    if !(0.0..1.0).contains(&args.test_split) {
        bail!("--test-split {}: expected a fraction in [0, 1)", args.test_split);
    }
    let (source, why) = DataSource::resolve(args.data.as_deref())?;
    log::info!("data: {source} ({why})");
    let opts = CsvOptions {
        label_col: args.label_col,
        test_split: args.test_split,
        seed,
    };
    let ds = source
        .load(opts)
        .with_context(|| format!("cannot load the dataset from {source}"))?;
    log::info!(
        "{} training and {} test examples of shape {:?}, {} classes",
        ds.train.len(),
        ds.test.len(),
        ds.shape,
        ds.classes
    );
    Ok(ds)
}

/// A comma-separated list of positive numbers; `what` names one in errors.
pub(crate) fn parse_list(flag: &str, s: &str, what: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|x| x.trim())
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<usize>()
                .ok()
                .filter(|&v| v > 0)
                .with_context(|| format!("{flag} `{s}`: `{x}` is not a positive {what}"))
        })
        .collect()
}

/// Fail before training, not after, when the model cannot be saved there.
pub(crate) fn check_writable(path: &Path) -> Result<()> {
    check_writable_as("--save", path)
}

/// [`check_writable`] for the file of `flag`.
pub(crate) fn check_writable_as(flag: &str, path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("{flag} {}: folder {} does not exist", path.display(), dir.display());
    }
    if path.is_dir() {
        bail!(
            "{flag} {}: is a folder; give a file name such as model.safetensors",
            path.display()
        );
    }
    Ok(())
}

/// The values of `--normalize` (the library's `Normalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum NormalizeArg {
    /// Divide by the largest value the format allows, giving [0, 1].
    Scale,
    /// Subtract the training set's mean and divide by its standard deviation.
    Standardize,
}

impl From<NormalizeArg> for Normalize {
    fn from(a: NormalizeArg) -> Self {
        match a {
            NormalizeArg::Scale => Normalize::Scale,
            NormalizeArg::Standardize => Normalize::Standardize,
        }
    }
}

/// The model of `--model FILE[,FILE...]`: one file (a single model or an
/// ensemble file) as it is, several as an ensemble of them (each an f32 or
/// compressed model; same inputs, classes and input shape).
pub(crate) fn load_models(paths: &[PathBuf]) -> Result<AnyModel> {
    let load = |p: &PathBuf| AnyModel::load(p).with_context(|| format!("cannot load model {}", p.display()));
    match paths {
        [] => bail!("--model needs at least one file"),
        [one] => load(one),
        many => {
            let members = many
                .iter()
                .map(|p| {
                    Ok(Member {
                        model: load(p)?,
                        source: p.display().to_string(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(AnyModel::Ensemble(Ensemble::new(members)?))
        }
    }
}

/// `--model` paths for messages: `a.safetensors,b.safetensors`.
pub(crate) fn show_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",")
}
