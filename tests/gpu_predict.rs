//! `GpuPredictor` against the CPU predictors: the same probabilities within
//! a tolerance, the same arg-max except where the top two are within that
//! tolerance of a tie, for f32 and int8 models and an ensemble of both
//! (every member in one submission), at batch sizes below, at
//! and above the predictor's `max_batch` (so the chunking and the per-size
//! dispatch cache are exercised), and row by row.
//!
//! Tolerances: the f32 GPU path sums in a different order than the CPU
//! kernels and may contract multiply-adds, so probabilities agree to 1e-5
//! at these sizes. The int8 path's integer sums are exact, but its
//! preprocessing (`raw * scale + offset`) and epilogue may be contracted
//! into fused multiply-adds on the GPU and its per-row scale comes from a
//! division WGSL lets be a little inexact, so a value at a rounding tie
//! may quantize one step apart: probabilities agree to 1e-3.

mod common;

use std::sync::Arc;

use wgtrain::data::{Normalize, Preprocess};
use wgtrain::gpu::{GpuPredictor, Int8Path};
use wgtrain::infer::int8::Int8Mlp;
use wgtrain::infer::{cpu_predictor, CpuPredictor, Int8Predictor, Predictor};
use wgtrain::model::{Activations, AnyModel, CompressedMlp, CompressionInfo, Ensemble, Member, Mlp};

const SIZES: [usize; 4] = [70, 33, 9, 5];

fn model() -> Mlp {
    let p = Preprocess {
        kind: Normalize::Scale,
        scale: 1.0 / 255.0,
        offset: -0.1,
    };
    Mlp::new(&SIZES, 3, p, vec![7, 10]).unwrap()
}

fn raw(rows: usize) -> Vec<f32> {
    (0..rows * SIZES[0]).map(|i| ((i * 37 + i / 7) % 256) as f32).collect()
}

/// Assert `got` and `want` (`[rows, classes]`) agree within `tol`, and their
/// arg-maxes agree unless the reference's top two are within `2 tol`.
fn assert_agree(what: &str, got: &[f32], want: &[f32], classes: usize, tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (r, (g, w)) in got.chunks_exact(classes).zip(want.chunks_exact(classes)).enumerate() {
        for (c, (a, b)) in g.iter().zip(w).enumerate() {
            assert!((a - b).abs() <= tol, "{what}: row {r} class {c}: GPU {a} vs CPU {b}");
        }
        let best = |v: &[f32]| wgtrain::cpu::kernels::argmax(v).0;
        let mut sorted = w.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 2.0 * tol {
            assert_eq!(best(g), best(w), "{what}: row {r}: arg-max");
        }
    }
}

fn check(what: &str, gpu: &mut dyn Predictor, cpu: &mut dyn Predictor, tol: f32) {
    assert_eq!(gpu.inputs(), cpu.inputs());
    assert_eq!(gpu.classes(), cpu.classes());
    assert_eq!(gpu.input_shape(), cpu.input_shape());
    let classes = cpu.classes();
    // max_batch is 8: 1 row, a partial chunk, exactly one chunk, several chunks.
    for rows in [1, 3, 8, 29] {
        let x = raw(rows);
        let want = cpu.probabilities(&x).unwrap();
        let got = gpu.probabilities(&x).unwrap();
        assert_agree(&format!("{what}, {rows} rows"), &got, &want, classes, tol);
        if rows == 29 {
            // Row by row through the cached one-row plan: the same answers.
            for r in 0..rows {
                let one = gpu.probabilities(&x[r * SIZES[0]..(r + 1) * SIZES[0]]).unwrap();
                assert_agree(
                    &format!("{what}, row {r} alone"),
                    &one,
                    &got[r * classes..(r + 1) * classes],
                    classes,
                    tol,
                );
            }
        }
    }
}

#[test]
fn f32_predictions_match_the_cpu_predictor() {
    let Some(ctx) = common::gpu() else { return };
    let m = model();
    let mut gpu = GpuPredictor::new(ctx, &m, 8).unwrap();
    assert!(gpu.name().starts_with("gpu f32"), "{}", gpu.name());
    check("f32", &mut gpu, &mut CpuPredictor::new(&m, 8), 1e-5);
}

#[test]
fn int8_predictions_match_the_cpu_int8_predictor_on_both_paths() {
    let Some(ctx) = common::gpu() else { return };
    let c = CompressedMlp::from_mlp(&model(), true, CompressionInfo::default());
    let engine: Int8Mlp = c.int8_engine().unwrap();
    let mut paths = vec![Int8Path::Unpacked];
    if ctx.supports_dot4_i8() {
        paths.push(Int8Path::Dot4);
    }
    for path in paths {
        let mut gpu = GpuPredictor::new_int8_with_path(ctx.clone(), &engine, &c.input_shape, 8, path).unwrap();
        let mut cpu = Int8Predictor::new(&c).unwrap();
        check(&format!("int8 {path:?}"), &mut gpu, &mut cpu, 1e-3);
    }
}

#[test]
fn compressed_and_any_models_choose_like_the_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let m = model();
    let int8 = CompressedMlp::from_mlp(&m, true, CompressionInfo::default());
    let p = GpuPredictor::for_model(ctx.clone(), &AnyModel::Compressed(int8.clone()), 4).unwrap();
    assert!(p.name().starts_with("gpu int8"), "{}", p.name());
    // Int8 weights with f32 activations: the f32 kernels on the dequantized weights.
    let weight_only = CompressedMlp {
        info: CompressionInfo {
            activations: Activations::F32,
            ..CompressionInfo::default()
        },
        ..int8
    };
    let mut p = GpuPredictor::from_compressed(ctx.clone(), &weight_only, 4).unwrap();
    assert!(p.name().starts_with("gpu f32"), "{}", p.name());
    let x = raw(5);
    let want = CpuPredictor::new(&weight_only.to_mlp(), 4).probabilities(&x).unwrap();
    assert_agree("weight-only int8", &p.probabilities(&x).unwrap(), &want, SIZES[3], 1e-5);
    let p = GpuPredictor::for_model(ctx, &AnyModel::F32(m), 4).unwrap();
    assert!(p.name().starts_with("gpu f32"), "{}", p.name());
}

#[test]
fn bad_sizes_are_errors_not_panics() {
    let Some(ctx) = common::gpu() else { return };
    let mut p = GpuPredictor::new(Arc::clone(&ctx), &model(), 4).unwrap();
    assert!(p.probabilities(&[0.0; 71]).is_err());
    let mut out = vec![0.0; 3];
    assert!(p.probabilities_into(&raw(1), &mut out).is_err());
    assert!(p.probabilities(&[]).unwrap().is_empty());
}

/// Three members of 70 inputs and 5 classes: f32 70-33-9-5, int8 70-20-5
/// (int8 activations) and f32 70-12-5, each with its own preprocessing.
fn ensemble() -> AnyModel {
    let other = |sizes: &[usize], seed, scale| {
        let p = Preprocess {
            kind: Normalize::Scale,
            scale,
            offset: 0.0,
        };
        Mlp::new(sizes, seed, p, vec![7, 10]).unwrap()
    };
    let int8 = CompressedMlp::from_mlp(&other(&[70, 20, 5], 5, 1.0 / 64.0), true, CompressionInfo::default());
    let members = vec![
        AnyModel::F32(model()),
        AnyModel::Compressed(int8),
        AnyModel::F32(other(&[70, 12, 5], 6, 1.0 / 512.0)),
    ];
    let members = members
        .into_iter()
        .enumerate()
        .map(|(i, model)| Member {
            model,
            source: format!("m{i}"),
        })
        .collect();
    AnyModel::Ensemble(Ensemble::new(members).unwrap())
}

#[test]
fn ensemble_runs_in_one_predictor_and_matches_the_cpu_ensemble() {
    let Some(ctx) = common::gpu() else { return };
    let e = ensemble();
    let mut gpu = GpuPredictor::for_model(ctx.clone(), &e, 8).unwrap();
    assert_eq!(gpu.members(), 3);
    assert!(gpu.name().starts_with("gpu ensemble of 3"), "{}", gpu.name());
    let mut cpu = cpu_predictor(&e, 8, 1, std::time::Duration::from_micros(50)).unwrap();
    // The int8 member's tolerance (see the top of the file).
    check("ensemble", &mut gpu, cpu.as_mut(), 1e-3);
    // The mean of the members, each run on its own GPU predictor.
    let AnyModel::Ensemble(members) = &e else {
        unreachable!()
    };
    for rows in [1, 7, 33] {
        let x = raw(rows);
        let got = gpu.probabilities(&x).unwrap();
        let each: Vec<Vec<f32>> = members
            .members()
            .iter()
            .map(|m| {
                GpuPredictor::for_model(ctx.clone(), &m.model, 8)
                    .unwrap()
                    .probabilities(&x)
                    .unwrap()
            })
            .collect();
        let mean: Vec<f32> = (0..got.len())
            .map(|i| (each.iter().map(|v| f64::from(v[i])).sum::<f64>() / 3.0) as f32)
            .collect();
        assert_agree(&format!("ensemble of GPU members, {rows} rows"), &got, &mean, 5, 1e-6);
    }
}
