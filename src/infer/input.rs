//! Inputs for prediction: PNG and JPEG images, IDX image files and CSV files
//! of feature rows, each turned into raw feature rows (the values the
//! training data loaders produce, before the model's preprocessing).
//!
//! Images are converted to 8-bit grayscale (Rec. 709 luma) and, when their
//! size differs from the model's input shape, resized with a triangle
//! filter whose support grows with the reduction, which averages the pixels
//! each output pixel covers without the ringing of Lanczos. Pixel values
//! stay in 0..=255 like IDX bytes, so an image at the model's size gives
//! exactly the row the IDX reader gives for the same pixels. No inversion
//! is done: MNIST-style models expect a light object on a dark background.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;

use crate::error::InferError;

/// Largest image width or height accepted, and the most memory a decoder
/// may allocate: a small compressed file must not expand without bound.
const MAX_IMAGE_SIDE: u32 = 8192;
const MAX_IMAGE_ALLOC: u64 = 256 << 20;

/// What a file holds, found from its first bytes (after gunzipping) and,
/// failing that, its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A PNG image.
    Png,
    /// A JPEG image.
    Jpeg,
    /// An IDX file (plain or gzipped) of one or more examples.
    Idx,
    /// CSV rows of feature values.
    Csv,
}

/// Raw feature rows read from one input, with a name for each row.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// One per row: the file name, with `[i]` for the i-th IDX image or
    /// `:line` for a CSV row.
    pub names: Vec<String>,
    /// `[rows, inputs]` raw values.
    pub features: Vec<f32>,
}

/// How CSV inputs are read.
#[derive(Debug, Clone, Copy, Default)]
pub struct CsvInputOptions {
    /// A column to drop (a label column), counting from 0; negative counts
    /// from the end. `None`: every column is a feature.
    pub drop_col: Option<i64>,
}

/// Guess the kind of `bytes` (already decompressed) read from `path`.
pub fn sniff(bytes: &[u8], path: &Path) -> InputKind {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return InputKind::Png;
    }
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        return InputKind::Jpeg;
    }
    if bytes.len() >= 4 && bytes[0] == 0 && bytes[1] == 0 && bytes[2] == 0x08 && (2..=4).contains(&bytes[3]) {
        return InputKind::Idx;
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => InputKind::Png,
        "jpg" | "jpeg" => InputKind::Jpeg,
        _ => InputKind::Csv,
    }
}

/// Width and height of a 2-d input shape (`[rows, cols]`, or with a channel
/// dimension of 1 before or after).
pub fn image_size(shape: &[usize]) -> Option<(u32, u32)> {
    let hw = match shape {
        [h, w] | [h, w, 1] | [1, h, w] => (*h, *w),
        _ => return None,
    };
    Some((u32::try_from(hw.1).ok()?, u32::try_from(hw.0).ok()?))
}

/// Decode a PNG or JPEG into one raw row for a model whose input shape is
/// `shape`; `source_name` names the image in errors.
pub fn decode_image(bytes: &[u8], shape: &[usize], source_name: &str) -> Result<Vec<f32>, InferError> {
    let (w, h) = image_size(shape).ok_or_else(|| InferError::Input {
        source_name: source_name.to_string(),
        message: format!("the model's input shape {shape:?} is not an image (a 2-d shape such as [28, 28])"),
    })?;
    let img_err = |message: String| InferError::Image {
        source_name: source_name.to_string(),
        message,
    };
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| img_err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(img_err("not a PNG or JPEG image".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| img_err(e.to_string()))?;
    let mut gray = img.to_luma8();
    if gray.dimensions() != (w, h) {
        gray = image::imageops::resize(&gray, w, h, FilterType::Triangle);
    }
    Ok(gray.as_raw().iter().map(|&b| b as f32).collect())
}

/// Parse IDX image bytes (`[n, ...]` unsigned bytes) into raw rows of
/// `inputs` values.
pub fn parse_idx(bytes: &[u8], source_name: &str, inputs: usize, shape: &[usize]) -> Result<Inputs, InferError> {
    let ndims = bytes.get(3).copied().unwrap_or(0) as usize;
    if ndims < 2 {
        return Err(InferError::Input {
            source_name: source_name.to_string(),
            message: format!(
                "an IDX file of {ndims} dimension(s); images are [count, height, width] or [count, values]"
            ),
        });
    }
    let arr = crate::data::idx::parse(bytes, Path::new(source_name), ndims, "IDX images of unsigned bytes")?;
    let per: usize = arr.dims[1..].iter().product();
    if per != inputs {
        return Err(InferError::InputSize {
            source_name: format!("{source_name} (IDX images of {:?})", &arr.dims[1..]),
            expected: inputs,
            found: per,
            shape: shape.to_vec(),
        });
    }
    let n = arr.dims[0];
    Ok(Inputs {
        names: (0..n).map(|i| format!("{source_name}[{i}]")).collect(),
        features: arr.data.iter().map(|&b| b as f32).collect(),
    })
}

/// Parse CSV text of feature rows. A first row with a non-numeric cell is
/// a header and skipped; `opts.drop_col` drops a column (a label) from
/// every row.
pub fn parse_csv(
    text: &str,
    source_name: &str,
    inputs: usize,
    shape: &[usize],
    opts: CsvInputOptions,
) -> Result<Inputs, InferError> {
    let at = |line: usize, message: String| InferError::Input {
        source_name: format!("{source_name}:{line}"),
        message,
    };
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(::csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut out = Inputs::default();
    let mut first = true;
    for rec in reader.records() {
        let rec = rec.map_err(|e| at(e.position().map(|p| p.line() as usize).unwrap_or(0), e.to_string()))?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        if rec.iter().all(|c| c.is_empty()) {
            continue;
        }
        if std::mem::take(&mut first) && rec.iter().any(|c| c.parse::<f64>().is_err()) {
            continue;
        }
        let ncols = rec.len();
        let drop = match opts.drop_col {
            None => None,
            Some(c) => {
                let i = if c < 0 { ncols as i64 + c } else { c };
                if i < 0 || i >= ncols as i64 {
                    return Err(at(line, format!("label column {c} is outside the {ncols} columns")));
                }
                Some(i as usize)
            }
        };
        let found = ncols - drop.is_some() as usize;
        if found != inputs {
            return Err(InferError::InputSize {
                source_name: format!("{source_name}:{line}"),
                expected: inputs,
                found,
                shape: shape.to_vec(),
            });
        }
        for (j, cell) in rec.iter().enumerate() {
            if Some(j) == drop {
                continue;
            }
            let v: f32 = cell
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite())
                .ok_or_else(|| at(line, format!("column {}: `{cell}` is not a finite number", j + 1)))?;
            out.features.push(v);
        }
        out.names.push(format!("{source_name}:{line}"));
    }
    if out.names.is_empty() {
        return Err(InferError::Input {
            source_name: source_name.to_string(),
            message: "no data rows".into(),
        });
    }
    Ok(out)
}

/// Read one input file of any supported kind into raw rows for a model
/// with `inputs` values per row and input shape `shape`.
pub fn load_file(path: &Path, inputs: usize, shape: &[usize], csv: CsvInputOptions) -> Result<Inputs, InferError> {
    let name = path.display().to_string();
    let bytes = crate::data::idx::read_maybe_gz(path)?;
    match sniff(&bytes, path) {
        InputKind::Png | InputKind::Jpeg => {
            let features = decode_image(&bytes, shape, &name)?;
            if features.len() != inputs {
                return Err(InferError::InputSize {
                    source_name: name,
                    expected: inputs,
                    found: features.len(),
                    shape: shape.to_vec(),
                });
            }
            Ok(Inputs {
                names: vec![name],
                features,
            })
        }
        InputKind::Idx => parse_idx(&bytes, &name, inputs, shape),
        InputKind::Csv => {
            let text = std::str::from_utf8(&bytes).map_err(|_| InferError::Input {
                source_name: name.clone(),
                message: "not a PNG, JPEG or IDX file, and not UTF-8 CSV text".into(),
            })?;
            parse_csv(text, &name, inputs, shape, csv)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_header_drop_column_and_size_errors() {
        let t = "a,b,c\n1,2,3\n4,5,6\n";
        let o = CsvInputOptions { drop_col: Some(-1) };
        let got = parse_csv(t, "f.csv", 2, &[2], o).unwrap();
        assert_eq!(got.features, vec![1.0, 2.0, 4.0, 5.0]);
        assert_eq!(got.names, vec!["f.csv:2", "f.csv:3"]);
        let e = parse_csv(t, "f.csv", 2, &[2], CsvInputOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.csv:2") && e.contains("3 values") && e.contains("expects 2"),
            "{e}"
        );
        let e = parse_csv("1,x\n1,2\n3,zz\n", "g.csv", 2, &[2], CsvInputOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("g.csv:3") && e.contains("`zz`"), "{e}");
    }

    #[test]
    fn image_shapes() {
        assert_eq!(image_size(&[28, 28]), Some((28, 28)));
        assert_eq!(image_size(&[2, 3, 1]), Some((3, 2)));
        assert_eq!(image_size(&[64]), None);
        let e = decode_image(b"not an image", &[2, 2], "x").unwrap_err().to_string();
        assert!(e.starts_with("x: cannot decode"), "{e}");
    }
}
