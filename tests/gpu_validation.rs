//! The GPU backend evaluates the validation split as the CPU twin does.

mod common;

use std::sync::Arc;

use wgtrain::backend::{Backend, SplitKind, TrainSpec};
use wgtrain::cpu::predict_rows;
use wgtrain::data::{CsvOptions, DataSource, Normalize, Preprocess};
use wgtrain::gpu::GpuBackend;
use wgtrain::Mlp;

#[test]
fn gpu_validation_predictions_match_the_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let mut data = DataSource::Builtin.load(CsvOptions::default()).unwrap();
    data.hold_out_validation(0.1, 4).unwrap();
    let data = Arc::new(data);
    let model = Mlp::new(
        &[64, 16, 10],
        2,
        Preprocess::fit(Normalize::Scale, &data),
        data.shape.clone(),
    )
    .unwrap();
    let mut gpu = GpuBackend::new(ctx.clone(), model.clone(), data.clone(), TrainSpec::sgd(32)).unwrap();
    for (kind, split) in [(SplitKind::Validation, &data.validation), (SplitKind::Test, &data.test)] {
        let g = gpu.predict_split(kind).unwrap();
        let c = predict_rows(&model, &split.features, &split.labels);
        assert_eq!(g.classes.len(), split.len(), "{kind:?}");
        let differ = g.classes.iter().zip(&c.classes).filter(|(a, b)| a != b).count();
        assert!(differ <= 1, "{kind:?}: {differ} predictions differ");
        assert!(
            (g.loss_sum - c.loss_sum).abs() <= 1e-4 * c.loss_sum,
            "{kind:?}: GPU loss {} vs CPU {}",
            g.loss_sum,
            c.loss_sum
        );
    }

    // Without a validation split, asking for one is an error.
    let plain = Arc::new(DataSource::Builtin.load(CsvOptions::default()).unwrap());
    let mut gpu = GpuBackend::new(ctx, model, plain, TrainSpec::sgd(32)).unwrap();
    assert!(gpu.predict_split(SplitKind::Validation).is_err());
}
