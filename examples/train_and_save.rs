//! Train an MLP on the CPU and save it as safetensors.
//!
//! Run: `cargo run --release --example train_and_save -- [DATA] [OUT]`
//! where DATA is `builtin` (the default: the embedded 8x8 digits), a
//! folder of IDX files (e.g. /usr/share/datasets/fashion-mnist) or a CSV
//! file, and OUT the model file (default `model.safetensors`). The saved
//! model works with `wgtrain eval`, `predict` and `serve`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use wgtrain::backend::{SplitKind, TrainSpec};
use wgtrain::cpu::CpuBackend;
use wgtrain::data::{CsvOptions, DataSource, Normalize, Preprocess};
use wgtrain::train::{evaluate, train, Event, TrainConfig};
use wgtrain::Mlp;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let data_arg = args.next().unwrap_or_else(|| "builtin".into());
    let out = PathBuf::from(args.next().unwrap_or_else(|| "model.safetensors".into()));

    let source = DataSource::from_arg(&data_arg)?;
    let data = Arc::new(
        source
            .load(CsvOptions::default())
            .with_context(|| format!("loading {source}"))?,
    );
    let preprocess = Preprocess::fit(Normalize::Scale, &data);
    let model = Mlp::new(&[data.dim(), 128, data.classes], 0, preprocess, data.shape.clone())?;

    let mut backend = CpuBackend::new(model, data.clone(), TrainSpec::sgd(64))?;
    let config = TrainConfig::constant(5, 0.1, 0, 0);
    let trained = train(&mut backend, &data, &config, &mut |event| {
        if let Event::Epoch { epoch, train_loss, .. } = event {
            eprintln!("epoch {epoch}: training loss {train_loss:.4}");
        }
    })?;
    let test = evaluate(&mut backend, &data, SplitKind::Test)?;
    println!(
        "test accuracy {:.2}% on {} examples",
        100.0 * test.accuracy,
        test.examples
    );

    trained
        .save(&out)
        .with_context(|| format!("saving the model to {}", out.display()))?;
    println!("saved {}", out.display());
    Ok(())
}
