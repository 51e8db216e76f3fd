//! `wgtrain predict` and the input readers: images give the same rows as the
//! IDX path, CSV and IDX inputs agree, and inputs that cannot fit the model
//! fail with a message naming the file and the sizes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wgtrain::data::{Normalize, Preprocess};
use wgtrain::infer::input::{self, CsvInputOptions};
use wgtrain::infer::{CpuPredictor, Int8Predictor, Predictor};
use wgtrain::model::{AnyModel, CompressedMlp, CompressionInfo, Mlp};

const SIDE: usize = 28;
const DIM: usize = SIDE * SIDE;

fn wgtrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgtrain"))
        .args(args)
        .output()
        .expect("run wgtrain")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A 784-32-10 model with the `[0, 1]` scaling training would record.
fn model(dir: &Path) -> (Mlp, PathBuf) {
    let p = Preprocess {
        kind: Normalize::Scale,
        scale: 1.0 / 255.0,
        offset: 0.0,
    };
    let m = Mlp::new(&[DIM, 32, 10], 11, p, vec![SIDE, SIDE]).unwrap();
    let path = dir.join("m.safetensors");
    m.save(&path).unwrap();
    (m, path)
}

/// Three pseudo-random 28x28 images as bytes.
fn pixels() -> Vec<u8> {
    (0..3 * DIM).map(|i| ((i * 7919 + i / 13) % 256) as u8).collect()
}

fn write_idx(dir: &Path, px: &[u8]) -> PathBuf {
    let images = dir.join("imgs-idx3-ubyte");
    let n = px.len() / DIM;
    idx_write(&images, px, n);
    images
}

fn idx_write(images: &Path, px: &[u8], n: usize) {
    let labels = images.with_extension("labels");
    wgtrain::data::idx::write_pair(images, &labels, &[SIDE, SIDE], px, &vec![0; n]).unwrap();
}

fn write_png(path: &Path, px: &[u8], w: u32, h: u32) {
    image::GrayImage::from_raw(w, h, px.to_vec())
        .unwrap()
        .save(path)
        .unwrap();
}

#[test]
fn png_at_model_size_gives_the_idx_row_and_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let (m, mp) = model(dir.path());
    let px = pixels();
    let idx = write_idx(dir.path(), &px);
    let png = dir.path().join("one.png");
    write_png(&png, &px[DIM..2 * DIM], SIDE as u32, SIDE as u32);

    let none = CsvInputOptions::default();
    let from_idx = input::load_file(&idx, DIM, &m.input_shape, none).unwrap();
    let from_png = input::load_file(&png, DIM, &m.input_shape, none).unwrap();
    assert_eq!(from_idx.names.len(), 3);
    assert_eq!(from_png.features, from_idx.features[DIM..2 * DIM], "same raw tensor");

    // Through the binary: the image's line equals the IDX file's second line.
    let o = wgtrain(&[
        "predict",
        "--model",
        mp.to_str().unwrap(),
        "--json",
        "--top-k",
        "10",
        idx.to_str().unwrap(),
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[1]["probabilities"], lines[3]["probabilities"]);
    assert_eq!(lines[1]["class"], lines[3]["class"]);
    assert!(lines[1]["input"].as_str().unwrap().ends_with("imgs-idx3-ubyte[1]"));
    assert_eq!(lines[3]["top_k"].as_array().unwrap().len(), 10);

    // And equal to the training code's forward pass on the same pixels.
    let raw: Vec<f32> = px[DIM..2 * DIM].iter().map(|&b| b as f32).collect();
    let want = wgtrain::cpu::probabilities(&m, &raw);
    for (g, w) in lines[3]["probabilities"].as_array().unwrap().iter().zip(&want) {
        assert!((g.as_f64().unwrap() - *w as f64).abs() < 1e-5);
    }
}

#[test]
fn larger_images_are_resized_and_jpeg_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (m, mp) = model(dir.path());
    // A flat 56x56 image stays flat after resizing to 28x28.
    let big = dir.path().join("big.png");
    write_png(&big, &vec![200; 56 * 56], 56, 56);
    let got = input::load_file(&big, DIM, &m.input_shape, CsvInputOptions::default()).unwrap();
    assert_eq!(got.features, vec![200.0; DIM]);

    let jpg = dir.path().join("x.jpg");
    image::GrayImage::from_raw(40, 30, vec![90; 1200])
        .unwrap()
        .save(&jpg)
        .unwrap();
    let o = wgtrain(&["predict", "--model", mp.to_str().unwrap(), jpg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with(&format!("{}: ", jpg.display())), "{out}");
    assert_eq!(out.matches('(').count(), 3, "top 3 by default: {out}");
}

#[test]
fn csv_rows_predict_like_idx_images() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = model(dir.path());
    let px = pixels();
    let idx = write_idx(dir.path(), &px);
    // A header and a label column last, dropped with --label-col -1.
    let mut csv = (0..DIM).map(|i| format!("p{i}")).collect::<Vec<_>>().join(",") + ",label\n";
    for row in px.chunks(DIM) {
        let cells: Vec<String> = row.iter().map(|b| b.to_string()).collect();
        csv += &format!("{},7\n", cells.join(","));
    }
    let csv_path = dir.path().join("rows.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let from_csv = input::load_file(&csv_path, DIM, &m.input_shape, CsvInputOptions { drop_col: Some(-1) }).unwrap();
    let from_idx = input::load_file(&idx, DIM, &m.input_shape, CsvInputOptions::default()).unwrap();
    assert_eq!(from_csv.features, from_idx.features);
    assert_eq!(from_csv.names[0], format!("{}:2", csv_path.display()));
    let mut p = CpuPredictor::new(&m, 2);
    assert_eq!(
        p.probabilities(&from_csv.features).unwrap(),
        p.probabilities(&from_idx.features).unwrap()
    );

    // Without --label-col the label column is a feature: one too many.
    let o = wgtrain(&[
        "predict",
        "--model",
        dir.path().join("m.safetensors").to_str().unwrap(),
        csv_path.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("rows.csv:2") && t.contains("785 values") && t.contains("expects 784"),
        "{t}"
    );
}

/// Probabilities of `raw` rows through the int8 engine in process: logits,
/// then the same softmax the predictors use.
fn int8_probabilities(c: &CompressedMlp, raw: &[f32]) -> Vec<f32> {
    let e = c.int8_engine().unwrap();
    let rows = raw.len() / DIM;
    let mut out = vec![0.0; rows * e.classes()];
    e.logits(raw, rows, &mut out);
    wgtrain::cpu::kernels::softmax_rows(&mut out, e.classes());
    out
}

fn json_probabilities(stdout: &[u8]) -> Vec<Vec<f32>> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

#[test]
fn compressed_models_predict_like_their_in_process_engines() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = model(dir.path());
    let px = pixels();
    let idx = write_idx(dir.path(), &px);
    let raw: Vec<f32> = px.iter().map(|&b| b as f32).collect();

    // int8 weights and activations: the int8 kernels, bit for bit.
    let info = CompressionInfo {
        quantization: "int8".into(),
        ..CompressionInfo::default()
    };
    let c = CompressedMlp::from_mlp(&m, true, info);
    let cp = dir.path().join("int8.safetensors");
    c.save(&cp).unwrap();
    let loaded = match AnyModel::load(&cp).unwrap() {
        AnyModel::Compressed(c) => c,
        other => panic!("a compressed file loads as compressed, not {}", other.describe()),
    };
    let want = int8_probabilities(&loaded, &raw);
    let mut p = Int8Predictor::new(&loaded).unwrap();
    assert!(p.name().contains("int8"), "{}", p.name());
    assert_eq!(p.probabilities(&raw).unwrap(), want);
    // Row by row, the same bits as in the batch.
    for r in 0..3 {
        assert_eq!(
            p.probabilities(&raw[r * DIM..(r + 1) * DIM]).unwrap(),
            want[r * 10..(r + 1) * 10]
        );
    }
    let o = wgtrain(&[
        "predict",
        "--model",
        cp.to_str().unwrap(),
        "--json",
        idx.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let got = json_probabilities(&o.stdout);
    assert_eq!(got.len(), 3);
    for (r, g) in got.iter().enumerate() {
        // JSON prints the shortest string that reads back as the same f32.
        assert_eq!(g[..], want[r * 10..(r + 1) * 10], "row {r}");
    }
    // Close to the f32 model: int8 changes probabilities only a little.
    let f = wgtrain::cpu::probabilities(&m, &raw);
    assert!(f.iter().zip(&want).all(|(a, b)| (a - b).abs() < 0.05));

    // A compressed file with f32 weights (pruned, not quantized) runs the
    // f32 predictor on its weights.
    let pruned = CompressedMlp::from_mlp(&m, false, CompressionInfo::default());
    let pp = dir.path().join("f32c.safetensors");
    pruned.save(&pp).unwrap();
    let o = wgtrain(&[
        "predict",
        "--model",
        pp.to_str().unwrap(),
        "--json",
        idx.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let want = CpuPredictor::new(&pruned.to_mlp(), 4).probabilities(&raw).unwrap();
    let got: Vec<f32> = json_probabilities(&o.stdout).concat();
    assert_eq!(got, want);
}

#[test]
fn inputs_that_cannot_fit_the_model_name_the_file_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mp) = model(dir.path());
    let mp = mp.to_str().unwrap();

    // IDX images of 8x8 for a 784-input model.
    let small = dir.path().join("small-idx3-ubyte");
    wgtrain::data::idx::write_pair(&small, &dir.path().join("l"), &[8, 8], &[1; 128], &[0, 0]).unwrap();
    let o = wgtrain(&["predict", "--model", mp, small.to_str().unwrap()]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("small-idx3-ubyte") && t.contains("64 values") && t.contains("expects 784"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");

    // An image for a model whose input is not 2-d.
    let flat = Mlp::new(&[64, 8, 3], 0, Preprocess::identity(), vec![64]).unwrap();
    let fp = dir.path().join("flat.safetensors");
    flat.save(&fp).unwrap();
    let png = dir.path().join("a.png");
    write_png(&png, &[0; 64], 8, 8);
    let o = wgtrain(&["predict", "--model", fp.to_str().unwrap(), png.to_str().unwrap()]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("a.png") && t.contains("[64]") && t.contains("not an image"),
        "{t}"
    );

    // A file that is nothing we read.
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let o = wgtrain(&["predict", "--model", mp, junk.to_str().unwrap()]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("junk.png") && t.contains("cannot decode"), "{t}");

    let missing = dir.path().join("nope.csv");
    let o = wgtrain(&["predict", "--model", mp, missing.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("nope.csv"), "{}", text(&o));
}
