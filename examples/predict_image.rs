//! Load a model file and classify one PNG or JPEG image, printing the most
//! likely classes.
//!
//! Run: `cargo run --release --example predict_image -- MODEL IMAGE`
//! (MODEL from `wgtrain train --save` or the `train_and_save` example;
//! the image is converted to grey and resized to the model's input shape,
//! as `wgtrain predict` does).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use wgtrain::infer::{cpu_predictor, input, top_k};
use wgtrain::AnyModel;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_path, image_path] = args.as_slice() else {
        bail!("usage: predict_image MODEL IMAGE");
    };
    let (model_path, image_path) = (PathBuf::from(model_path), PathBuf::from(image_path));

    let model = AnyModel::load(&model_path).with_context(|| format!("loading {}", model_path.display()))?;
    // One row at a time, one thread, no spinning.
    let mut predictor = cpu_predictor(&model, 1, 1, Duration::ZERO)?;

    let bytes = std::fs::read(&image_path).with_context(|| format!("reading {}", image_path.display()))?;
    let row = input::decode_image(&bytes, predictor.input_shape(), &image_path.display().to_string())?;
    let probabilities = predictor.probabilities(&row)?;
    for c in top_k(&probabilities, 3) {
        println!("class {}: {:.2}%", c.class, 100.0 * c.probability);
    }
    Ok(())
}
