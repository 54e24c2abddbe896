//! Pure readers: bytes in, [`ImageSet`](crate::ImageSet) out.
//!
//! Every reader takes the name of the file it is reading so that errors can name it, and
//! never panics on bad input.

pub mod animal;
pub mod emoji;
pub mod fonts;
pub mod idx;
pub mod mnist_json;
pub mod optdigits;
pub mod pickle;
pub mod tuxpaint;

use std::io::Read;

use crate::error::{DataError, Result};

/// Decompresses a whole gzip stream.
///
/// # Errors
/// [`DataError::Gzip`] naming `file` if the stream is not gzip, is corrupt, fails its CRC
/// check or is truncated.
pub fn gunzip(bytes: &[u8], file: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(4));
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|source| DataError::Gzip {
            file: file.to_owned(),
            source,
        })?;
    Ok(out)
}

/// Class names `"0"`, `"1"`, …, `"9"` of the digit data sets.
pub fn digit_class_names() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}
