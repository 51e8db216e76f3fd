//! `wgtrain average`: the arithmetic mean of the weights of f32 models of
//! one architecture ("model soups").

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::args::check_writable_as;
use wgtrain::model::average::average;
use wgtrain::model::AnyModel;

#[derive(Debug, Args)]
pub(crate) struct AverageArgs {
    /// Where to write the averaged model (an f32 model file, written
    /// atomically).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// f32 model files (`wgtrain train --save`) of one architecture: the
    /// same layer widths, input shape and preprocessing, e.g. fine-tuned
    /// from one start. Each tensor of the output is the mean of theirs
    /// (summed in f64). Compressed models and ensembles are refused.
    #[arg(required = true, num_args = 2.., value_name = "MODEL")]
    models: Vec<PathBuf>,
}

/// Run `wgtrain average`.
pub(crate) fn run(a: AverageArgs) -> Result<()> {
    check_writable_as("--out", &a.out)?;
    let mut named = Vec::with_capacity(a.models.len());
    for p in &a.models {
        let m = match AnyModel::load(p).with_context(|| format!("cannot load model {}", p.display()))? {
            AnyModel::F32(m) => m,
            other @ AnyModel::Compressed(_) => bail!(
                "{} is compressed ({}); average the f32 models it was made from, then compress the average",
                p.display(),
                other.describe()
            ),
            AnyModel::Ensemble(_) => bail!("{} is an ensemble; average its members' f32 files instead", p.display()),
        };
        named.push((p.display().to_string(), m));
    }
    let avg = average(&named)?;
    avg.save(&a.out)
        .with_context(|| format!("cannot save the model to {}", a.out.display()))?;
    outln!(
        "wrote {}: the mean of {} models ({})",
        a.out.display(),
        named.len(),
        AnyModel::F32(avg).describe()
    );
    Ok(())
}
