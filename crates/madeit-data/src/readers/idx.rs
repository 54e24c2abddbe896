//! The IDX format of MNIST and Fashion-MNIST.
//!
//! An IDX file is a 4-byte magic number `00 00 TT DD` (`TT` = element type, `0x08` for
//! unsigned bytes; `DD` = number of dimensions), then `DD` big-endian `u32` sizes, then the
//! elements in row-major order. Image files have 3 dimensions (`n, rows, cols`, magic
//! `0x00000803`), label files 1 (`n`, magic `0x00000801`).

use crate::error::{DataError, Result, check_exact_len};
use crate::image::ImageSet;
use crate::readers::gunzip;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Sizes of the dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Parses an (uncompressed) IDX file of unsigned bytes with `ndim` dimensions.
///
/// # Errors
/// [`DataError::BadMagic`] if the magic is not `00 00 08 ndim`; [`DataError::Truncated`] if
/// the header or the data is shorter than announced; [`DataError::TrailingData`] if bytes
/// follow the data.
pub fn parse_idx(bytes: &[u8], ndim: u8, file: &str) -> Result<IdxArray> {
    let expected_magic = [0u8, 0, 0x08, ndim];
    let Some(magic) = bytes.get(..4) else {
        return Err(DataError::Truncated {
            file: file.to_owned(),
            expected: 4,
            got: bytes.len(),
        });
    };
    if magic != expected_magic {
        return Err(DataError::BadMagic {
            file: file.to_owned(),
            expected: hex(&expected_magic),
            got: hex(magic),
        });
    }
    let header_len = 4 + 4 * usize::from(ndim);
    let header = bytes.get(4..header_len).ok_or(DataError::Truncated {
        file: file.to_owned(),
        expected: header_len,
        got: bytes.len(),
    })?;
    let dims: Vec<usize> = header
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::Malformed {
            file: file.to_owned(),
            detail: format!("dimensions {dims:?} overflow"),
        })?;
    let body = bytes.get(header_len..).unwrap_or_default();
    check_exact_len(file, count, body.len())?;
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// Parses an uncompressed IDX image file: returns `(n, rows, cols, pixels)`.
pub fn read_idx_images(bytes: &[u8], file: &str) -> Result<(usize, usize, usize, Vec<u8>)> {
    let a = parse_idx(bytes, 3, file)?;
    match a.dims[..] {
        [n, h, w] => Ok((n, h, w, a.data)),
        _ => Err(DataError::Malformed {
            file: file.to_owned(),
            detail: "an image file needs 3 dimensions".into(),
        }),
    }
}

/// Parses an uncompressed IDX label file.
pub fn read_idx_labels(bytes: &[u8], file: &str) -> Result<Vec<u8>> {
    Ok(parse_idx(bytes, 1, file)?.data)
}

/// Reads a gzipped IDX image file and its gzipped IDX label file into a grey [`ImageSet`].
///
/// # Errors
/// Everything [`parse_idx`] and [`gunzip`] report, plus [`DataError::CountMismatch`] if the
/// two files announce different numbers of items and [`DataError::LabelOutOfRange`] if a
/// label is not below `class_names.len()`.
pub fn read_idx_gz(
    images_gz: &[u8],
    images_file: &str,
    labels_gz: &[u8],
    labels_file: &str,
    class_names: &[String],
) -> Result<ImageSet> {
    let (n, h, w, pixels) = read_idx_images(&gunzip(images_gz, images_file)?, images_file)?;
    let raw_labels = read_idx_labels(&gunzip(labels_gz, labels_file)?, labels_file)?;
    if raw_labels.len() != n {
        return Err(DataError::CountMismatch {
            file: labels_file.to_owned(),
            what: format!("number of labels for the images in {images_file}"),
            expected: n,
            got: raw_labels.len(),
        });
    }
    let labels = check_labels(
        raw_labels.iter().map(|&l| i64::from(l)),
        class_names.len(),
        labels_file,
    )?;
    ImageSet::new(pixels, n, h, w, 1, labels, class_names.to_vec())
}

/// Converts raw labels to `u32`, checking each is in `0..num_classes`.
pub(crate) fn check_labels(
    raw: impl IntoIterator<Item = i64>,
    num_classes: usize,
    file: &str,
) -> Result<Vec<u32>> {
    raw.into_iter()
        .enumerate()
        .map(|(index, label)| {
            if label >= 0 && (label as u64) < num_classes as u64 {
                Ok(label as u32)
            } else {
                Err(DataError::LabelOutOfRange {
                    file: file.to_owned(),
                    index,
                    label,
                    num_classes,
                })
            }
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Encodes bytes as an IDX file (used to build test fixtures and by round-trip tests).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}
