//! Bad input gives an error that names the file and the problem.

use std::path::Path;

use wgtrain::data::idx::write_pair;
use wgtrain::data::{CsvOptions, DataSource};

fn load_dir(dir: &Path) -> String {
    DataSource::IdxDir(dir.to_path_buf())
        .load(CsvOptions::default())
        .expect_err("loading should fail")
        .to_string()
}

fn load_csv(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.csv");
    std::fs::write(&p, text).unwrap();
    DataSource::Csv(p)
        .load(CsvOptions::default())
        .expect_err("loading should fail")
        .to_string()
}

/// A valid 4-file IDX folder: `n` 3x2 images with labels `i % classes`.
fn good_idx(dir: &Path, n: usize, classes: u8) {
    let pixels: Vec<u8> = (0..n * 6).map(|i| (i * 37 % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| i as u8 % classes).collect();
    for stem in ["train", "t10k"] {
        write_pair(
            &dir.join(format!("{stem}-images-idx3-ubyte")),
            &dir.join(format!("{stem}-labels-idx1-ubyte")),
            &[3, 2],
            &pixels,
            &labels,
        )
        .unwrap();
    }
}

#[test]
fn good_idx_folder_loads_with_shape_and_classes_from_the_files() {
    let d = tempfile::tempdir().unwrap();
    good_idx(d.path(), 10, 3);
    let ds = DataSource::IdxDir(d.path().into()).load(CsvOptions::default()).unwrap();
    assert_eq!(ds.shape, vec![3, 2]);
    assert_eq!(ds.classes, 3);
    assert_eq!(ds.train.len(), 10);
    assert_eq!(ds.train.features[7], (7 * 37 % 256) as f32); // pixel 7 as written by good_idx
}

#[test]
fn gzipped_idx_loads_like_plain() {
    let d = tempfile::tempdir().unwrap();
    good_idx(d.path(), 10, 3);
    for f in ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        let raw = std::fs::read(d.path().join(f)).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        std::fs::write(d.path().join(format!("{f}.gz")), gz.finish().unwrap()).unwrap();
        std::fs::remove_file(d.path().join(f)).unwrap();
    }
    let ds = DataSource::IdxDir(d.path().into()).load(CsvOptions::default()).unwrap();
    assert_eq!(ds.train.len(), 10);
    assert_eq!(ds.train.features[7], (7 * 37 % 256) as f32); // pixel 7 as written by good_idx
}

#[test]
fn missing_file_is_named() {
    let d = tempfile::tempdir().unwrap();
    good_idx(d.path(), 10, 3);
    std::fs::remove_file(d.path().join("t10k-labels-idx1-ubyte")).unwrap();
    let e = load_dir(d.path());
    assert!(e.contains("t10k-labels-idx1-ubyte") && e.contains("not found"), "{e}");
}

#[test]
fn wrong_magic_is_reported() {
    let d = tempfile::tempdir().unwrap();
    good_idx(d.path(), 10, 3);
    let p = d.path().join("train-images-idx3-ubyte");
    let mut b = std::fs::read(&p).unwrap();
    b[2] = 0x0D; // float data instead of unsigned bytes
    std::fs::write(&p, b).unwrap();
    let e = load_dir(d.path());
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("magic number 0x00000d03"),
        "{e}"
    );
}

#[test]
fn truncated_images_are_reported() {
    let d = tempfile::tempdir().unwrap();
    good_idx(d.path(), 10, 3);
    let p = d.path().join("t10k-images-idx3-ubyte");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 5]).unwrap();
    let e = load_dir(d.path());
    // 10 images of 3x2 = 60 bytes promised, 55 present.
    assert!(
        e.contains("t10k-images") && e.contains("truncated") && e.contains("60 bytes") && e.contains("55"),
        "{e}"
    );
}

#[test]
fn count_mismatch_is_reported() {
    let d = tempfile::tempdir().unwrap();
    good_idx(d.path(), 10, 3);
    write_pair(
        &d.path().join("x"),
        &d.path().join("train-labels-idx1-ubyte"),
        &[3, 2],
        &[0; 54],
        &[0, 1, 2, 0, 1, 2, 0, 1, 2],
    )
    .unwrap();
    let e = load_dir(d.path());
    assert!(e.contains("10 images") && e.contains("9 labels"), "{e}");
}

#[test]
fn test_label_outside_training_classes_is_reported() {
    let d = tempfile::tempdir().unwrap();
    good_idx(d.path(), 10, 3);
    let labels = [0, 1, 2, 0, 1, 7, 0, 1, 2, 0];
    write_pair(
        &d.path().join("t10k-images-idx3-ubyte"),
        &d.path().join("t10k-labels-idx1-ubyte"),
        &[3, 2],
        &[0; 60],
        &labels,
    )
    .unwrap();
    let e = load_dir(d.path());
    assert!(e.contains("label 7 at index 5") && e.contains("0..3"), "{e}");
}

#[test]
fn empty_idx_is_reported() {
    let d = tempfile::tempdir().unwrap();
    good_idx(d.path(), 10, 3);
    write_pair(
        &d.path().join("train-images-idx3-ubyte"),
        &d.path().join("train-labels-idx1-ubyte"),
        &[3, 2],
        &[],
        &[],
    )
    .unwrap();
    let e = load_dir(d.path());
    assert!(e.contains("empty") && e.contains("0 images"), "{e}");
}

#[test]
fn csv_non_numeric_cell_names_line_and_column() {
    let e = load_csv("f1,f2,label\n1,2,0\n3,4,1\n5,abc,1\n");
    assert!(
        e.contains("bad.csv:4") && e.contains("column 2") && e.contains("`abc`"),
        "{e}"
    );
}

#[test]
fn csv_negative_or_fractional_label_is_named_with_its_line_and_text() {
    let e = load_csv("1,2,0\n3,4,-1\n");
    assert!(
        e.contains("bad.csv:2") && e.contains("`-1`") && e.contains("class index"),
        "{e}"
    );
    let e = load_csv("1,2,0\n3,4,1\n5,6,0.5\n");
    assert!(
        e.contains("bad.csv:3") && e.contains("column 3") && e.contains("`0.5`"),
        "{e}"
    );
}

#[test]
fn csv_ragged_rows_and_empty_files_are_reported() {
    let e = load_csv("1,2,0\n3,1\n");
    assert!(
        e.contains("bad.csv:2") && e.contains("3 fields") || e.contains("expected 3 columns"),
        "{e}"
    );
    let e = load_csv("a,b,label\n");
    assert!(e.contains("empty") && e.contains("no data rows"), "{e}");
}

#[test]
fn csv_single_class_is_rejected() {
    let e = load_csv("1,2,0\n3,4,0\n5,6,0\n7,8,0\n9,9,0\n");
    assert!(e.contains("only 1 class"), "{e}");
}

#[test]
fn missing_data_path_is_named() {
    let e = DataSource::from_arg("/no/such/place").unwrap_err().to_string();
    assert!(e.contains("/no/such/place") && e.contains("not found"), "{e}");
}
