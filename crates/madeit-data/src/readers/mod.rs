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
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// Every regular file below `dir` (recursively, in listing order) whose path relative to
/// `dir` passes `keep`, as (that relative path with `/`, full path).
///
/// # Errors
/// [`DataError::Io`] naming a folder that cannot be listed.
pub(crate) fn files_under(
    dir: &Path,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<(String, PathBuf)>> {
    fn walk(
        root: &Path,
        dir: &Path,
        keep: &dyn Fn(&str) -> bool,
        out: &mut Vec<(String, PathBuf)>,
    ) -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DataError::io(dir, e))?;
            let path = entry.path();
            let ty = entry.file_type().map_err(|e| DataError::io(&path, e))?;
            if ty.is_dir() {
                walk(root, &path, keep, out)?;
            } else if ty.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .map(|r| {
                        r.components()
                            .map(|c| c.as_os_str().to_string_lossy().into_owned())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_default();
                if keep(&rel) {
                    out.push((rel, path));
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, keep, &mut out)?;
    Ok(out)
}

/// Largest decompressed size [`gunzip`] accepts (1 GiB; the largest packaged file, the
/// Fashion-MNIST training images, is 47 MB).
pub const MAX_GUNZIP_BYTES: u64 = 1 << 30;

/// Decompresses a whole gzip stream of at most [`MAX_GUNZIP_BYTES`] decompressed bytes.
///
/// # Errors
/// [`DataError::Gzip`] naming `file` if the stream is not gzip, is corrupt, fails its CRC
/// check, is truncated or decompresses to more than [`MAX_GUNZIP_BYTES`].
pub fn gunzip(bytes: &[u8], file: &str) -> Result<Vec<u8>> {
    let gz_err = |source| DataError::Gzip {
        file: file.to_owned(),
        source,
    };
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(4).min(1 << 26));
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_GUNZIP_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(gz_err)?;
    if out.len() as u64 > MAX_GUNZIP_BYTES {
        return Err(gz_err(std::io::Error::other(format!(
            "decompresses to more than {MAX_GUNZIP_BYTES} bytes"
        ))));
    }
    Ok(out)
}

/// Class names `"0"`, `"1"`, …, `"9"` of the digit data sets.
pub fn digit_class_names() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}
