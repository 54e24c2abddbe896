//! The optical-recognition digits shipped with scikit-learn.
//!
//! `sklearn/datasets/data/digits.csv.gz` has one image per line: 64 comma-separated grey
//! levels `0..=16` (an 8 × 8 image, row-major; each level counts the set pixels of a 4 × 4
//! block of a 32 × 32 bitmap) and then the digit `0..=9`. Levels are mapped to bytes by
//! `round(v · 255 / 16)` (halves rounded up), so 0 ↦ 0 and 16 ↦ 255.

use crate::error::{DataError, Result};
use crate::image::ImageSet;
use crate::readers::{digit_class_names, gunzip};

/// Side of the square optdigits images.
pub const OPTDIGITS_SIDE: usize = 8;
/// Largest grey level in the file.
pub const OPTDIGITS_MAX_LEVEL: u32 = 16;

/// Maps a grey level `0..=16` to a byte: `round(v · 255 / 16)`.
pub fn level_to_byte(v: u32) -> u8 {
    ((v * 255 + OPTDIGITS_MAX_LEVEL / 2) / OPTDIGITS_MAX_LEVEL).min(255) as u8
}

/// Parses the uncompressed CSV into a grey 8 × 8 [`ImageSet`] with classes `"0"`…`"9"`.
///
/// Blank lines are skipped.
///
/// # Errors
/// [`DataError::Malformed`] (with the line number) for a line without 65 integer fields;
/// [`DataError::InvalidValue`] for a level above 16; [`DataError::LabelOutOfRange`] for a
/// label outside `0..10`.
pub fn read_optdigits_csv(text: &[u8], file: &str) -> Result<ImageSet> {
    let text = std::str::from_utf8(text).map_err(|e| DataError::Malformed {
        file: file.to_owned(),
        detail: format!("not UTF-8: {e}"),
    })?;
    let pixels_per_image = OPTDIGITS_SIDE * OPTDIGITS_SIDE;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != pixels_per_image + 1 {
            return Err(DataError::Malformed {
                file: file.to_owned(),
                detail: format!(
                    "line {}: {} fields, expected {}",
                    line_no + 1,
                    fields.len(),
                    pixels_per_image + 1
                ),
            });
        }
        let parse = |s: &str| -> Result<i64> {
            s.trim().parse::<i64>().map_err(|_| DataError::Malformed {
                file: file.to_owned(),
                detail: format!("line {}: `{s}` is not an integer", line_no + 1),
            })
        };
        for (k, f) in fields.iter().take(pixels_per_image).enumerate() {
            let v = parse(f)?;
            if !(0..=i64::from(OPTDIGITS_MAX_LEVEL)).contains(&v) {
                return Err(DataError::InvalidValue {
                    file: file.to_owned(),
                    index: labels.len() * pixels_per_image + k,
                    value: v as f64,
                    range: "0..=16".into(),
                });
            }
            images.push(level_to_byte(v as u32));
        }
        let label = fields.last().map(|f| parse(f)).transpose()?.unwrap_or(-1);
        if !(0..10).contains(&label) {
            return Err(DataError::LabelOutOfRange {
                file: file.to_owned(),
                index: labels.len(),
                label,
                num_classes: 10,
            });
        }
        labels.push(label as u32);
    }
    let n = labels.len();
    ImageSet::new(
        images,
        n,
        OPTDIGITS_SIDE,
        OPTDIGITS_SIDE,
        1,
        labels,
        digit_class_names(),
    )
}

/// Reads the gzipped CSV (`digits.csv.gz`); see [`read_optdigits_csv`].
pub fn read_optdigits_csv_gz(bytes: &[u8], file: &str) -> Result<ImageSet> {
    read_optdigits_csv(&gunzip(bytes, file)?, file)
}
