//! Dropout and shift augmentation on the CPU: the kept fraction against the
//! binomial law, the shifted gather against a reference written the other
//! way round (scattering source pixels instead of gathering them), the
//! range and coverage of the shifts, evaluation untouched by dropout, and
//! the refusals.

use std::sync::Arc;

use wgtrain::backend::{Backend, SplitKind, TrainSpec};
use wgtrain::cpu::kernels as cpu;
use wgtrain::cpu::{predict_rows, CpuBackend};
use wgtrain::data::{Dataset, Preprocess, Split};
use wgtrain::error::{Error, Setting};
use wgtrain::model::Mlp;
use wgtrain::optim::draw::{dropout_stream, Dropout, Key, Shift, SHIFT_STREAM};
use wgtrain::optim::StepHyper;

#[test]
fn kept_fraction_is_within_five_sigma_of_one_minus_p() {
    let (rows, outputs, inputs) = (64, 500, 3);
    let x = vec![1.0f32; rows * inputs];
    // Every pre-activation is positive, so a zero output is a dropped unit.
    let w = vec![0.5f32; outputs * inputs];
    let bias = vec![0.25f32; outputs];
    for p in [0.1f32, 0.5] {
        let drop = Dropout::new(p).unwrap();
        for step in [1u64, 2, 977] {
            let mut y = vec![f32::NAN; rows * outputs];
            let key = Key::new(3, step, dropout_stream(0));
            cpu::linear_forward_dropout(&x, &w, &bias, &mut y, rows, inputs, outputs, drop, key);
            let n = (rows * outputs) as f64;
            let kept = y.iter().filter(|&&v| v != 0.0).count() as f64;
            let q = 1.0 - p as f64;
            let sigma = (n * q * (1.0 - q)).sqrt();
            assert!(
                (kept - n * q).abs() <= 5.0 * sigma,
                "p={p} step {step}: kept {kept} of {n}, expected {} +- {sigma:.1}",
                n * q
            );
            // Kept units carry relu(z) / (1 - p): 1.75 * scale here.
            for &v in &y {
                assert!(v == 0.0 || v == 1.75 * drop.scale, "{v}");
            }
        }
    }
}

#[test]
fn dropout_masks_differ_between_steps_layers_and_rows() {
    let drop = Dropout::new(0.5).unwrap();
    let mask = |seed: u64, step: u64, layer: usize, row: u32| -> Vec<bool> {
        let k = Key::new(seed, step, dropout_stream(layer)).row(row);
        (0..256).map(|j| drop.keeps(k.col(j))).collect()
    };
    let base = mask(1, 1, 0, 0);
    for other in [mask(2, 1, 0, 0), mask(1, 2, 0, 0), mask(1, 1, 1, 0), mask(1, 1, 0, 1)] {
        let same = base.iter().zip(&other).filter(|(a, b)| a == b).count();
        // Independent masks agree on about half the units (128 +- 8).
        assert!((88..=168).contains(&same), "{same} of 256 agree");
    }
    assert_eq!(base, mask(1, 1, 0, 0), "the same key draws the same mask");
}

/// The shifted batch by scattering: start from background and move each
/// source pixel to where the row's offsets send it.
fn scatter_reference(
    features: &[f32],
    index: &[u32],
    shape: (usize, usize, usize),
    scale: f32,
    offset: f32,
    shift: &Shift,
    key: Key,
) -> Vec<f32> {
    let (c, h, w) = shape;
    let dim = c * h * w;
    let mut out = vec![0.0 * scale + offset; index.len() * dim];
    for (r, &i) in index.iter().enumerate() {
        let (dx, dy) = shift.offsets(key.row(r as u32));
        for ch in 0..c {
            for sy in 0..h as i32 {
                for sx in 0..w as i32 {
                    let (ty, tx) = (sy + dy, sx + dx);
                    if ty >= 0 && ty < h as i32 && tx >= 0 && tx < w as i32 {
                        let v = features[i as usize * dim + ch * h * w + (sy as usize) * w + sx as usize];
                        out[r * dim + ch * h * w + ty as usize * w + tx as usize] = v * scale + offset;
                    }
                }
            }
        }
    }
    out
}

#[test]
fn shifted_gather_matches_a_scatter_reference() {
    for (shape, max, rows) in [
        ((1, 5, 7), 2, 1),
        ((2, 4, 3), 1, 7),
        ((1, 9, 9), 3, 33),
        ((3, 6, 5), 4, 20),
    ] {
        let (c, h, w) = shape;
        let dim = c * h * w;
        let examples = rows + 3;
        let features: Vec<f32> = (0..examples * dim).map(|i| ((i * 37 + 11) % 256) as f32).collect();
        let bytes: Vec<u8> = features.iter().map(|&v| v as u8).collect();
        let index: Vec<u32> = (0..rows).map(|r| ((r * 5 + 2) % examples) as u32).collect();
        let shift = Shift::new(max, &[c, h, w]).unwrap().unwrap();
        let (scale, offset) = (1.0 / 255.0, -0.5);
        let key = Key::new(77, 12, SHIFT_STREAM);
        let want = scatter_reference(&features, &index, shape, scale, offset, &shift, key);
        let mut got = vec![f32::NAN; rows * dim];
        cpu::gather_rows_shifted(&features, &index, dim, scale, offset, &mut got, &shift, key);
        assert_eq!(got, want, "f32 features, shape {shape:?}, shift {max}");
        let mut got8 = vec![f32::NAN; rows * dim];
        cpu::gather_rows_shifted(&bytes, &index, dim, scale, offset, &mut got8, &shift, key);
        assert_eq!(got8, want, "byte features, shape {shape:?}, shift {max}");
        // A shift of at most 0 pixels is the plain gather.
        let zero = Shift { max: 0, ..shift };
        let mut plain = vec![f32::NAN; rows * dim];
        cpu::gather_rows(&features, &index, dim, scale, offset, &mut plain);
        cpu::gather_rows_shifted(&features, &index, dim, scale, offset, &mut got, &zero, key);
        assert_eq!(got, plain, "shift 0, shape {shape:?}");
    }
}

#[test]
fn each_row_moves_within_the_range_and_every_offset_occurs() {
    // Distinct pixel values, so where pixel (4, 4) of a 9 x 9 image lands
    // gives the row's offsets.
    let (h, w, max, rows) = (9usize, 9usize, 2u32, 400usize);
    let features: Vec<f32> = (1..=(h * w) as u32).map(|v| v as f32).collect();
    let index = vec![0u32; rows];
    let shift = Shift::new(max, &[h, w]).unwrap().unwrap();
    let mut x = vec![f32::NAN; rows * h * w];
    cpu::gather_rows_shifted(
        &features,
        &index,
        h * w,
        1.0,
        0.0,
        &mut x,
        &shift,
        Key::new(5, 3, SHIFT_STREAM),
    );
    let centre = features[4 * w + 4];
    let mut seen = [[false; 5]; 5];
    for r in 0..rows {
        let img = &x[r * h * w..(r + 1) * h * w];
        let at = img
            .iter()
            .position(|&v| v == centre)
            .expect("the centre pixel stays inside");
        let (dy, dx) = (at as i32 / w as i32 - 4, at as i32 % w as i32 - 4);
        assert!(
            dx.abs() <= max as i32 && dy.abs() <= max as i32,
            "row {r}: ({dx}, {dy})"
        );
        seen[(dy + 2) as usize][(dx + 2) as usize] = true;
        // The whole image moved, not just one pixel.
        assert_eq!(
            img.iter().filter(|&&v| v == 0.0).count(),
            h * w - (h - dy.unsigned_abs() as usize) * (w - dx.unsigned_abs() as usize)
        );
    }
    assert!(
        seen.iter().flatten().all(|&s| s),
        "not every (dx, dy) in [-2, 2]^2 occurred: {seen:?}"
    );
}

fn images(n: usize, h: usize, w: usize, classes: usize) -> Dataset {
    let features = (0..n * h * w).map(|i| ((i * 7919 % 97) as f32) / 96.0).collect();
    let labels = (0..n).map(|i| (i * 31 % classes) as u32).collect();
    let split = Split { features, labels };
    Dataset {
        source: "images".into(),
        shape: vec![h, w],
        classes,
        value_max: 1.0,
        train: split.clone(),
        validation: Split::default(),
        test: split,
    }
}

#[test]
fn evaluation_ignores_dropout_and_shift() {
    let data = Arc::new(images(50, 6, 5, 3));
    let model = Mlp::new(&[30, 16, 12, 3], 4, Preprocess::identity(), vec![6, 5]).unwrap();
    let mut spec = TrainSpec::sgd(8);
    spec.regular.dropout = 0.5;
    spec.regular.shift = 2;
    spec.seed = 11;
    let mut regular = CpuBackend::with_threads(model.clone(), data.clone(), spec, 1).unwrap();
    let mut plain = CpuBackend::with_threads(model.clone(), data.clone(), TrainSpec::sgd(8), 1).unwrap();
    let (r, p) = (
        regular.predict_split(SplitKind::Test).unwrap(),
        plain.predict_split(SplitKind::Test).unwrap(),
    );
    assert_eq!((r.loss_sum, r.classes), (p.loss_sum, p.classes));
    // After training with dropout, evaluation is the plain forward pass of
    // the trained parameters.
    regular.begin_epoch(&(0..50).rev().collect::<Vec<u32>>()).unwrap();
    regular.train_steps(0, &StepHyper::constant(0.1, 7)).unwrap();
    let trained = regular.model().unwrap();
    assert_ne!(trained, model);
    let (r, p) = (
        regular.predict_split(SplitKind::Test).unwrap(),
        predict_rows(&trained, &data.test.features, &data.test.labels),
    );
    assert_eq!((r.loss_sum, r.classes), (p.loss_sum, p.classes));
}

#[test]
fn dropout_and_shift_change_training_and_repeat_with_the_seed() {
    let data = Arc::new(images(40, 6, 5, 3));
    let model = Mlp::new(&[30, 16, 3], 4, Preprocess::identity(), vec![6, 5]).unwrap();
    let run = |dropout: f32, shift: u32, seed: u64| {
        let mut spec = TrainSpec::sgd(8);
        (spec.regular.dropout, spec.regular.shift, spec.seed) = (dropout, shift, seed);
        let mut b = CpuBackend::with_threads(model.clone(), data.clone(), spec, 1).unwrap();
        b.begin_epoch(&(0..40).collect::<Vec<u32>>()).unwrap();
        b.train_steps(0, &StepHyper::constant(0.1, 5)).unwrap();
        b.model().unwrap()
    };
    let plain = run(0.0, 0, 1);
    assert_eq!(run(0.0, 0, 2), plain, "the seed alone changes nothing");
    for (d, s) in [(0.3, 0), (0.0, 1), (0.3, 1)] {
        let a = run(d, s, 1);
        assert_ne!(a, plain, "dropout {d} shift {s} trained like plain SGD");
        assert_eq!(run(d, s, 1), a, "dropout {d} shift {s}: same seed, different run");
        assert_ne!(run(d, s, 2), a, "dropout {d} shift {s}: the seed keys nothing");
    }
}

#[test]
fn shift_is_refused_on_data_that_are_not_images() {
    let mut data = images(10, 4, 4, 2);
    data.shape = vec![16];
    let data = Arc::new(data);
    let model = Mlp::new(&[16, 4, 2], 1, Preprocess::identity(), vec![16]).unwrap();
    let mut spec = TrainSpec::sgd(4);
    spec.regular.shift = 1;
    let e = CpuBackend::new(model.clone(), data, spec).err().expect("refused");
    assert!(
        matches!(
            e,
            Error::Invalid {
                setting: Setting::Shift,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("[16]"), "{e}");
    let data = Arc::new(images(10, 4, 4, 2));
    spec.regular.shift = 4;
    let e = CpuBackend::new(model, data, spec).err().expect("refused");
    assert!(
        matches!(
            e,
            Error::Invalid {
                setting: Setting::Shift,
                ..
            }
        ),
        "{e}"
    );
}
