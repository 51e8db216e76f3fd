//! The IDX format of MNIST and Fashion-MNIST: a big-endian header (magic
//! number, then one u32 per dimension) followed by the values. Only unsigned
//! byte data (type code 0x08) is accepted. Files may be gzip-compressed.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Dataset, Split};
use crate::error::DataError;

/// Type code of unsigned bytes in the third byte of the magic number.
const U8_TYPE: u8 = 0x08;

/// A parsed IDX file.
#[derive(Debug, Clone)]
pub struct IdxArray {
    /// The size of each dimension, outermost first (e.g. `[n, 28, 28]`).
    pub dims: Vec<usize>,
    /// The values, row-major: the product of `dims` bytes.
    pub data: Vec<u8>,
}

fn io_err(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Read a whole file, decompressing it when its name ends in `.gz`.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| io_err(path, e))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| io_err(path, e))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parse IDX bytes holding `ndims` dimensions of u8 values.
pub fn parse(bytes: &[u8], path: &Path, ndims: usize, what: &'static str) -> Result<IdxArray, DataError> {
    let expected_magic = (U8_TYPE as u32) << 8 | ndims as u32;
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: 4,
            found: bytes.len(),
        });
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != expected_magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
            expected: expected_magic,
            what,
        });
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header,
            found: bytes.len(),
        });
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::Invalid(format!("{}: dimensions {:?} overflow", path.display(), dims)))?;
    let body = &bytes[header..];
    if body.len() < count {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: count,
            found: body.len(),
        });
    }
    Ok(IdxArray {
        dims,
        data: body[..count].to_vec(),
    })
}

/// Find `<stem>-<kind>-ubyte` or `<stem>.<kind>-ubyte`, plain or `.gz`, in `dir`.
pub fn find_file(dir: &Path, stem: &str, kind: &str) -> Option<PathBuf> {
    candidates(dir, stem, kind).into_iter().find(|p| p.is_file())
}

fn candidates(dir: &Path, stem: &str, kind: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for sep in ["-", "."] {
        for gz in ["", ".gz"] {
            v.push(dir.join(format!("{stem}{sep}{kind}-ubyte{gz}")));
        }
    }
    v
}

fn require(dir: &Path, stem: &str, kind: &str) -> Result<PathBuf, DataError> {
    find_file(dir, stem, kind).ok_or_else(|| DataError::Missing {
        path: dir.join(format!("{stem}-{kind}-ubyte")),
        tried: candidates(dir, stem, kind)
            .iter()
            .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Load one images file and its labels file into a split; returns the split
/// and the shape of one image.
pub fn load_pair(images: &Path, labels: &Path) -> Result<(Split, Vec<usize>), DataError> {
    let img_bytes = read_maybe_gz(images)?;
    // Images are usually 3-d (N, rows, cols); accept any rank >= 2 by reading
    // the rank from the magic number's last byte.
    let ndims = img_bytes.get(3).copied().unwrap_or(3).max(2) as usize;
    let img = parse(&img_bytes, images, ndims, "IDX images of unsigned bytes")?;
    let lab = parse(&read_maybe_gz(labels)?, labels, 1, "IDX labels of unsigned bytes")?;
    let n_images = img.dims[0];
    let n_labels = lab.dims[0];
    if n_images != n_labels {
        return Err(DataError::CountMismatch {
            images: images.to_path_buf(),
            n_images,
            labels: labels.to_path_buf(),
            n_labels,
        });
    }
    if n_images == 0 {
        return Err(DataError::Empty {
            path: images.to_path_buf(),
            what: "header says 0 images".into(),
        });
    }
    let shape = img.dims[1..].to_vec();
    Ok((
        Split {
            features: img.data.iter().map(|&b| b as f32).collect(),
            labels: lab.data.iter().map(|&b| b as u32).collect(),
        },
        shape,
    ))
}

/// Load a folder holding the four MNIST-style files.
pub fn load_dir(dir: &Path) -> Result<Dataset, DataError> {
    let train_images = require(dir, "train-images", "idx3")?;
    let train_labels = require(dir, "train-labels", "idx1")?;
    let test_images = require(dir, "t10k-images", "idx3")?;
    let test_labels = require(dir, "t10k-labels", "idx1")?;
    let (train, shape) = load_pair(&train_images, &train_labels)?;
    let (test, test_shape) = load_pair(&test_images, &test_labels)?;
    if shape != test_shape {
        return Err(DataError::ShapeMismatch {
            what: format!("{}", dir.display()),
            train: shape.iter().product(),
            test: test_shape.iter().product(),
        });
    }
    let classes = train.labels.iter().copied().max().unwrap_or(0) as usize + 1;
    if let Some((index, &label)) = test.labels.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
        return Err(DataError::LabelOutOfRange {
            path: test_labels,
            index,
            label: label as i64,
            max: classes,
        });
    }
    Ok(Dataset {
        source: dir.display().to_string(),
        shape,
        classes,
        value_max: 255.0,
        train,
        validation: Split::default(),
        test,
    })
}

/// Write u8 images and labels as IDX files (used by tests and tools).
pub fn write_pair(
    images: &Path,
    labels: &Path,
    shape: &[usize],
    pixels: &[u8],
    label_values: &[u8],
) -> std::io::Result<()> {
    let n = label_values.len();
    let mut img = Vec::with_capacity(16 + pixels.len());
    img.extend_from_slice(&((U8_TYPE as u32) << 8 | (shape.len() as u32 + 1)).to_be_bytes());
    img.extend_from_slice(&(n as u32).to_be_bytes());
    for &d in shape {
        img.extend_from_slice(&(d as u32).to_be_bytes());
    }
    img.extend_from_slice(pixels);
    let mut lab = Vec::with_capacity(8 + n);
    lab.extend_from_slice(&((U8_TYPE as u32) << 8 | 1).to_be_bytes());
    lab.extend_from_slice(&(n as u32).to_be_bytes());
    lab.extend_from_slice(label_values);
    std::fs::write(images, img)?;
    std::fs::write(labels, lab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_and_body() {
        let mut b = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3];
        b.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let a = parse(&b, Path::new("x"), 3, "t").unwrap();
        assert_eq!(a.dims, vec![2, 1, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn rejects_truncated_body() {
        let b = vec![0, 0, 8, 1, 0, 0, 0, 5, 1, 2];
        let e = parse(&b, Path::new("lab"), 1, "t").unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("5 bytes"), "{e}");
    }
}
