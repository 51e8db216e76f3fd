//! The built-in dataset: the UCI optical recognition of handwritten digits
//! (E. Alpaydin and C. Kaynak, 1998; CC BY 4.0), 1,797 8x8 images with pixel
//! values 0..16, as a gzipped CSV with the label in the last column. It is
//! embedded so that training works offline on any machine.

use std::path::Path;

use super::{csv, Dataset};
use crate::error::DataError;

/// The `Dataset::source` of the built-in digits.
pub const SOURCE: &str = "builtin digits";

const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../assets/digits.csv.gz");

/// Load the digits, split into train and test with a seeded shuffle.
pub fn load(test_split: f64, seed: u64) -> Result<Dataset, DataError> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(DIGITS_CSV_GZ), &mut text).map_err(|e| {
        DataError::Io {
            path: "builtin digits".into(),
            source: e,
        }
    })?;
    let opts = super::CsvOptions {
        label_col: -1,
        test_split,
        seed,
    };
    let mut ds = csv::parse_str(&text, Path::new("builtin digits"), opts)?;
    ds.source = SOURCE.into();
    ds.shape = vec![8, 8];
    ds.value_max = 16.0;
    Ok(ds)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loads_all_digits() {
        let ds = super::load(0.2, 0).unwrap();
        assert_eq!(ds.train.len() + ds.test.len(), 1797);
        assert_eq!(ds.test.len(), 359);
        assert_eq!(ds.classes, 10);
        assert_eq!(ds.dim(), 64);
        assert!(ds.is_u8());
    }
}
