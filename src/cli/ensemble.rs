//! `wgtrain ensemble`: one file holding several models, which loads like
//! any model (eval, predict, serve average its members' probabilities).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::args::{check_writable_as, load_models};
use wgtrain::model::AnyModel;

#[derive(Debug, Args)]
pub(crate) struct EnsembleArgs {
    /// Where to write the ensemble file (safetensors, written atomically:
    /// member N's tensors and metadata prefixed `mN.`).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The members, at least two: files of `wgtrain train --save` or
    /// `wgtrain compress` (f32, int8, pruned; any architectures) with the
    /// same inputs, classes and input shape. An ensemble file is refused
    /// (ensembles do not nest: list its members' files instead).
    #[arg(required = true, num_args = 2.., value_name = "MODEL")]
    models: Vec<PathBuf>,
}

/// Run `wgtrain ensemble`.
pub(crate) fn run(a: EnsembleArgs) -> Result<()> {
    check_writable_as("--out", &a.out)?;
    let AnyModel::Ensemble(e) = load_models(&a.models)? else {
        anyhow::bail!("an ensemble needs at least two models");
    };
    let bytes = e
        .save(&a.out)
        .with_context(|| format!("cannot write the ensemble to {}", a.out.display()))?;
    outln!(
        "wrote {} ({bytes} bytes): {}",
        a.out.display(),
        AnyModel::Ensemble(e).describe()
    );
    Ok(())
}
