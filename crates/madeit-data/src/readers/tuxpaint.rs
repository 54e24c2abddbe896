//! The colour clip-art stamps of the Debian package `tuxpaint-stamps-default`.
//!
//! The package keeps its stamps under `stamps/<category>/[<sub-folders>/]<name>.png`
//! (RGBA PNGs of many sizes, most of them a few hundred pixels wide). The class of a stamp
//! is its top-level folder; only the categories of [`TUXPAINT_CATEGORIES`] are kept (the
//! others hold fewer than 30 bitmaps, or letters and symbols). Each image is composited on
//! white (as the emoji are), centred on a white square whose side is its longer side
//! (letterboxing, aspect kept), and shrunk by area averaging to
//! [`TUXPAINT_SIZE`] × `TUXPAINT_SIZE` (the few smaller stamps are centred on a white
//! canvas of that size instead). Images are ordered by path.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::image::ImageSet;
use crate::readers::emoji::{composite_on_white, decode_png_rgba};
use crate::transform::resize_area;

/// The categories used as classes (top-level folders of the stamps), in label order.
pub const TUXPAINT_CATEGORIES: [&str; 7] = [
    "animals",
    "food",
    "household",
    "plants",
    "seasonal",
    "town",
    "vehicles",
];

/// Side of the images the reader returns.
pub const TUXPAINT_SIZE: usize = 32;

/// Letterboxes one RGB image (`h × w × 3`) onto a white square and shrinks it to
/// [`TUXPAINT_SIZE`]² by area averaging (a square smaller than that is not enlarged: it is
/// centred on a white `TUXPAINT_SIZE²` canvas).
///
/// # Errors
/// [`DataError::InvalidImageSet`] for an empty image.
pub fn letterbox_rgb(rgb: &[u8], h: usize, w: usize) -> Result<Vec<u8>> {
    let side = h.max(w).max(TUXPAINT_SIZE);
    if h == 0 || w == 0 || rgb.len() != h * w * 3 {
        return Err(DataError::InvalidImageSet {
            detail: format!("{h}x{w} RGB image with {} bytes", rgb.len()),
        });
    }
    let mut square = vec![255u8; side * side * 3];
    let (top, left) = ((side - h) / 2, (side - w) / 2);
    for (y, row) in rgb.chunks_exact(w * 3).enumerate() {
        let d = ((y + top) * side + left) * 3;
        if let Some(to) = square.get_mut(d..d + w * 3) {
            to.copy_from_slice(row);
        }
    }
    if side == TUXPAINT_SIZE {
        return Ok(square);
    }
    let one = ImageSet::new(square, 1, side, side, 3, vec![0], vec!["x".into()])?;
    Ok(resize_area(&one, TUXPAINT_SIZE, TUXPAINT_SIZE)?.images)
}

/// Reads stamps given as `(path below stamps/, bytes)`; files outside the kept categories
/// are ignored. Labels follow [`TUXPAINT_CATEGORIES`].
///
/// # Errors
/// [`DataError::Png`] naming a file that does not decode; [`DataError::Malformed`] when no
/// stamp is kept.
pub fn read_tuxpaint<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<ImageSet> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (rel, bytes) in files {
        let category = rel.split('/').next().unwrap_or_default();
        let Some(label) = TUXPAINT_CATEGORIES.iter().position(|c| *c == category) else {
            continue;
        };
        let (h, w, rgba) = decode_png_rgba(bytes, rel)?;
        images.extend_from_slice(&letterbox_rgb(&composite_on_white(&rgba), h, w)?);
        labels.push(label as u32);
    }
    if labels.is_empty() {
        return Err(DataError::Malformed {
            file: "stamps".into(),
            detail: "no stamp of the kept categories".into(),
        });
    }
    let n = labels.len();
    ImageSet::new(
        images,
        n,
        TUXPAINT_SIZE,
        TUXPAINT_SIZE,
        3,
        labels,
        TUXPAINT_CATEGORIES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    )
}

/// Every `.png` below `dir` as (path relative to `dir` with `/`, full path), sorted.
///
/// # Errors
/// [`DataError::Io`] naming a folder that cannot be listed.
pub fn stamp_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = super::files_under(dir, &|rel| rel.to_ascii_lowercase().ends_with(".png"))?;
    out.sort();
    Ok(out)
}

/// Reads the stamps under `dir` ([`stamp_files`], then [`read_tuxpaint`]).
///
/// # Errors
/// As [`stamp_files`] and [`read_tuxpaint`]; [`DataError::Io`] naming an unreadable file.
pub fn read_tuxpaint_dir(dir: &Path) -> Result<ImageSet> {
    let files = stamp_files(dir)?;
    let mut contents = Vec::with_capacity(files.len());
    for (rel, path) in &files {
        if TUXPAINT_CATEGORIES
            .iter()
            .any(|c| rel.split('/').next() == Some(*c))
        {
            contents.push((
                rel.clone(),
                std::fs::read(path).map_err(|e| DataError::io(path, e))?,
            ));
        }
    }
    read_tuxpaint(contents.iter().map(|(n, b)| (n.as_str(), b.as_slice())))
}
