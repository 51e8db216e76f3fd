//! CSV datasets: numeric rows, one of whose columns holds the class label.
//! A first row with any non-numeric cell is taken as a header. The rows are
//! split into train and test with a seeded shuffle.

use std::path::Path;

use super::{split_rows, CsvOptions, Dataset, Split};
use crate::error::DataError;

/// Load a CSV file (plain, or gzipped when the name ends in `.gz`).
pub fn load_file(path: &Path, opts: CsvOptions) -> Result<Dataset, DataError> {
    let bytes = super::idx::read_maybe_gz(path)?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::Csv {
        path: path.to_path_buf(),
        line: 1,
        message: format!("not UTF-8 text ({e}); is this really a CSV file?"),
    })?;
    parse_str(&text, path, opts)
}

fn csv_err(path: &Path, line: usize, message: impl Into<String>) -> DataError {
    DataError::Csv {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// Parse CSV text; `path` is only used in messages.
pub fn parse_str(text: &str, path: &Path, opts: CsvOptions) -> Result<Dataset, DataError> {
    if !(0.0..1.0).contains(&opts.test_split) {
        return Err(DataError::Invalid(format!(
            "the test split must be a fraction in [0, 1), got {}",
            opts.test_split
        )));
    }
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(::csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut ncols = 0usize;
    let mut label_idx = 0usize;
    let mut first = true;
    for rec in reader.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
            csv_err(path, line, e.to_string())
        })?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        if rec.iter().all(|c| c.is_empty()) {
            continue;
        }
        if first {
            first = false;
            ncols = rec.len();
            if ncols < 2 {
                return Err(csv_err(
                    path,
                    line,
                    format!("a row needs a label and at least one feature, found {ncols} column"),
                ));
            }
            let li = if opts.label_col < 0 {
                ncols as i64 + opts.label_col
            } else {
                opts.label_col
            };
            if li < 0 || li >= ncols as i64 {
                return Err(DataError::Invalid(format!(
                    "{}: label column {} is outside the {ncols} columns",
                    path.display(),
                    opts.label_col
                )));
            }
            label_idx = li as usize;
            if rec.iter().any(|c| c.parse::<f64>().is_err()) {
                log::debug!("{}: line {line} taken as a header", path.display());
                continue;
            }
        }
        if rec.len() != ncols {
            return Err(csv_err(
                path,
                line,
                format!("expected {ncols} columns, found {}", rec.len()),
            ));
        }
        for (j, cell) in rec.iter().enumerate() {
            let v: f64 = cell
                .parse()
                .map_err(|_| csv_err(path, line, format!("column {}: `{cell}` is not a number", j + 1)))?;
            if !v.is_finite() {
                return Err(csv_err(path, line, format!("column {}: `{cell}` is not finite", j + 1)));
            }
            if j == label_idx {
                if v < 0.0 || v.fract() != 0.0 {
                    return Err(csv_err(
                        path,
                        line,
                        format!(
                            "column {}: label `{cell}` is not a class index; labels are whole numbers 0, 1, 2, ...",
                            j + 1
                        ),
                    ));
                }
                if v >= 65536.0 {
                    return Err(csv_err(
                        path,
                        line,
                        format!("label {v} is too large; labels are class indices 0, 1, 2, ..."),
                    ));
                }
                labels.push(v as u32);
            } else {
                features.push(v as f32);
            }
        }
    }
    if labels.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            what: "no data rows".into(),
        });
    }
    let dim = ncols - 1;
    let classes = *labels.iter().max().unwrap_or(&0) as usize + 1;
    let value_max = features.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (train, test) = split_rows(features, labels, dim, opts.test_split, opts.seed);
    Ok(Dataset {
        source: path.display().to_string(),
        shape: vec![dim],
        classes,
        value_max,
        train,
        validation: Split::default(),
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> CsvOptions {
        CsvOptions {
            label_col: -1,
            test_split: 0.5,
            seed: 1,
        }
    }

    #[test]
    fn header_is_detected_and_label_column_chosen() {
        let t = "a,b,label\n1,2,0\n3,4,1\n5,6,1\n7,8,0\n";
        let ds = parse_str(t, Path::new("t.csv"), opts()).unwrap();
        assert_eq!(ds.train.len() + ds.test.len(), 4);
        assert_eq!(ds.dim(), 2);
        assert_eq!(ds.classes, 2);
        let first = CsvOptions { label_col: 0, ..opts() };
        let ds = parse_str("0,1,2\n1,3,4\n", Path::new("t.csv"), first).unwrap();
        assert_eq!(ds.classes, 2);
    }

    #[test]
    fn non_numeric_cell_names_its_line() {
        let t = "1,2,0\n3,x,1\n";
        let e = parse_str(t, Path::new("t.csv"), opts()).unwrap_err().to_string();
        assert!(e.contains("t.csv:2") && e.contains("`x` is not a number"), "{e}");
    }
}
