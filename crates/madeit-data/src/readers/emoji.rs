//! The Noto emoji images of the npm package `emoji-datasource-google` 16.0.0.
//!
//! `emoji.json` lists every emoji with its `image` file name (under `img/google/64/`, a
//! 64 × 64 RGBA PNG), its Unicode `category` and `subcategory`, a global `sort_order`, and
//! its skin-tone variants under `skin_variations`. The reader keeps the *base* emoji that
//! have a Google image (the skin-tone variants are near-duplicates of their base and would
//! leak between splits), drops the `Component` category (five skin-tone swatches and hair
//! pieces, not pictures), and labels each image with one of the nine remaining categories
//! ([`EMOJI_CATEGORIES`]). Images are ordered by `sort_order`.
//!
//! Transparency: every PNG is decoded to RGBA and composited on a white background,
//! `c' = round((c · a + 255 · (255 − a)) / 255)`, giving RGB images; this is how emoji are
//! seen on a page, and it gives the network the same three channels as every other task.

use std::io::Cursor;
use std::path::Path;

use serde::Deserialize;

use crate::error::{DataError, Result};
use crate::image::ImageSet;

/// The nine emoji categories used as classes, in Unicode order.
pub const EMOJI_CATEGORIES: [&str; 9] = [
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
];

/// The category that is not a class (skin-tone and hair components).
pub const EMOJI_SKIPPED_CATEGORY: &str = "Component";

/// Folder of the 64 × 64 images inside the package.
pub const EMOJI_IMAGE_DIR: &str = "img/google/64";

/// Folder of the 64 × 64 images inside the Twitter package.
pub const TWEMOJI_IMAGE_DIR: &str = "img/twitter/64";

/// Whose artwork: the `emoji-datasource-<vendor>` packages share `emoji.json` and differ in
/// their images and in the `has_img_<vendor>` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmojiVendor {
    /// Noto emoji (`emoji-datasource-google`, `has_img_google`).
    Google,
    /// Twemoji (`emoji-datasource-twitter`, `has_img_twitter`).
    Twitter,
}

/// One base emoji of `emoji.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmojiEntry {
    /// Image file name inside [`EMOJI_IMAGE_DIR`].
    pub image: String,
    /// Short name (`grinning`, ...).
    pub short_name: String,
    /// Unicode category.
    pub category: String,
    /// Unicode subcategory.
    pub subcategory: String,
    /// Position in the Unicode ordering.
    pub sort_order: i64,
    /// Image file names of the skin-tone variants.
    pub skin_variants: Vec<String>,
}

#[derive(Deserialize)]
struct RawEntry {
    image: String,
    #[serde(default)]
    short_name: String,
    category: String,
    subcategory: String,
    sort_order: i64,
    #[serde(default)]
    has_img_google: bool,
    #[serde(default)]
    has_img_twitter: bool,
    #[serde(default)]
    skin_variations: Option<std::collections::BTreeMap<String, RawVariant>>,
}

#[derive(Deserialize)]
struct RawVariant {
    image: String,
    #[serde(default)]
    has_img_google: bool,
    #[serde(default)]
    has_img_twitter: bool,
}

fn check_file_name(name: &str, file: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(DataError::Malformed {
            file: file.to_owned(),
            detail: format!("image name `{name}` is not a plain file name"),
        });
    }
    Ok(())
}

/// Parses `emoji.json`, returning the base emoji that have a Google image, sorted by
/// `sort_order` (all categories, `Component` included).
///
/// # Errors
/// [`DataError::Malformed`] if the JSON does not have the expected fields or an image name
/// is not a plain file name.
pub fn parse_emoji_index(json: &[u8], file: &str) -> Result<Vec<EmojiEntry>> {
    parse_emoji_index_of(json, file, EmojiVendor::Google)
}

/// As [`parse_emoji_index`], for the images of `vendor`.
///
/// # Errors
/// As [`parse_emoji_index`].
pub fn parse_emoji_index_of(
    json: &[u8],
    file: &str,
    vendor: EmojiVendor,
) -> Result<Vec<EmojiEntry>> {
    let has = |google: bool, twitter: bool| match vendor {
        EmojiVendor::Google => google,
        EmojiVendor::Twitter => twitter,
    };
    let raw: Vec<RawEntry> = serde_json::from_slice(json).map_err(|e| DataError::Malformed {
        file: file.to_owned(),
        detail: e.to_string(),
    })?;
    let mut out = Vec::new();
    for e in raw
        .into_iter()
        .filter(|e| has(e.has_img_google, e.has_img_twitter))
    {
        check_file_name(&e.image, file)?;
        let mut skin_variants = Vec::new();
        for v in e.skin_variations.into_iter().flat_map(|m| m.into_values()) {
            if has(v.has_img_google, v.has_img_twitter) {
                check_file_name(&v.image, file)?;
                skin_variants.push(v.image);
            }
        }
        out.push(EmojiEntry {
            image: e.image,
            short_name: e.short_name,
            category: e.category,
            subcategory: e.subcategory,
            sort_order: e.sort_order,
            skin_variants,
        });
    }
    out.sort_by_key(|e| e.sort_order);
    Ok(out)
}

/// Decodes a PNG of any colour type and bit depth to 8-bit RGBA: returns
/// `(height, width, pixels)`.
///
/// # Errors
/// [`DataError::Png`] naming `file` if the data is not a decodable PNG.
pub fn decode_png_rgba(bytes: &[u8], file: &str) -> Result<(usize, usize, Vec<u8>)> {
    let png_err = |e: png::DecodingError| DataError::Png {
        file: file.to_owned(),
        message: e.to_string(),
    };
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(png_err)?;
    let size = reader.output_buffer_size().ok_or_else(|| DataError::Png {
        file: file.to_owned(),
        message: "image too large".into(),
    })?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(png_err)?;
    let (w, h) = (info.width as usize, info.height as usize);
    buf.truncate(info.buffer_size());
    let stride = info.line_size;
    let rgba_of = |px: &[u8]| -> [u8; 4] {
        match *px {
            [g] => [g, g, g, 255],
            [g, a] => [g, g, g, a],
            [r, g, b] => [r, g, b, 255],
            [r, g, b, a] => [r, g, b, a],
            _ => [0, 0, 0, 0],
        }
    };
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(DataError::Png {
                file: file.to_owned(),
                message: "palette not expanded".into(),
            });
        }
    };
    if info.bit_depth != png::BitDepth::Eight || stride < w * channels {
        return Err(DataError::Png {
            file: file.to_owned(),
            message: format!("unexpected output format {:?}", info.bit_depth),
        });
    }
    let mut out = Vec::with_capacity(w * h * 4);
    for row in buf.chunks(stride).take(h) {
        for px in row
            .get(..w * channels)
            .unwrap_or_default()
            .chunks_exact(channels)
        {
            out.extend_from_slice(&rgba_of(px));
        }
    }
    if out.len() != w * h * 4 {
        return Err(DataError::Png {
            file: file.to_owned(),
            message: "decoded buffer is shorter than the image".into(),
        });
    }
    Ok((h, w, out))
}

/// Composites 8-bit RGBA pixels on white: `c' = round((c · a + 255 · (255 − a)) / 255)`.
pub fn composite_on_white(rgba: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgba.len() / 4 * 3);
    for px in rgba.chunks_exact(4) {
        let a = u32::from(px[3]);
        for &c in &px[..3] {
            let v = (u32::from(c) * a + 255 * (255 - a) + 127) / 255;
            out.push(v as u8);
        }
    }
    out
}

/// The base emoji with their category labels and subcategories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmojiImages {
    /// RGB images (composited on white) labelled by category ([`EMOJI_CATEGORIES`]).
    pub set: ImageSet,
    /// Index into `subcategory_names` of each image.
    pub subcategory: Vec<u32>,
    /// Subcategory names, in order of first appearance.
    pub subcategory_names: Vec<String>,
    /// The image file name of each image.
    pub files: Vec<String>,
}

/// Reads the base emoji of `emoji.json`, loading each image with `load_png(file_name)`.
///
/// All images must have the size of the first one.
///
/// # Errors
/// Errors of [`parse_emoji_index`], of `load_png`, and of [`decode_png_rgba`];
/// [`DataError::UnknownClass`] for a category outside [`EMOJI_CATEGORIES`] (other than
/// `Component`); [`DataError::ImageSizeMismatch`] for an image of another size.
pub fn read_emoji(
    json: &[u8],
    json_file: &str,
    load_png: impl FnMut(&str) -> Result<Vec<u8>>,
) -> Result<EmojiImages> {
    read_emoji_of(json, json_file, EmojiVendor::Google, load_png)
}

/// As [`read_emoji`], for the images of `vendor`.
///
/// # Errors
/// As [`read_emoji`].
pub fn read_emoji_of(
    json: &[u8],
    json_file: &str,
    vendor: EmojiVendor,
    mut load_png: impl FnMut(&str) -> Result<Vec<u8>>,
) -> Result<EmojiImages> {
    let entries = parse_emoji_index_of(json, json_file, vendor)?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut subcategory = Vec::new();
    let mut subcategory_names: Vec<String> = Vec::new();
    let mut files = Vec::new();
    let mut size: Option<(usize, usize)> = None;
    for e in entries {
        if e.category == EMOJI_SKIPPED_CATEGORY {
            continue;
        }
        let label = EMOJI_CATEGORIES
            .iter()
            .position(|c| *c == e.category)
            .ok_or_else(|| DataError::UnknownClass {
                file: json_file.to_owned(),
                name: e.category.clone(),
            })?;
        let bytes = load_png(&e.image)?;
        let (h, w, rgba) = decode_png_rgba(&bytes, &e.image)?;
        let (eh, ew) = *size.get_or_insert((h, w));
        if (h, w) != (eh, ew) {
            return Err(DataError::ImageSizeMismatch {
                file: e.image.clone(),
                expected_height: eh,
                expected_width: ew,
                got_height: h,
                got_width: w,
            });
        }
        images.extend_from_slice(&composite_on_white(&rgba));
        labels.push(label as u32);
        let sub = match subcategory_names.iter().position(|s| *s == e.subcategory) {
            Some(i) => i,
            None => {
                subcategory_names.push(e.subcategory.clone());
                subcategory_names.len() - 1
            }
        };
        subcategory.push(sub as u32);
        files.push(e.image);
    }
    let (h, w) = size.ok_or_else(|| DataError::Malformed {
        file: json_file.to_owned(),
        detail: "no emoji with an image".into(),
    })?;
    let n = labels.len();
    let set = ImageSet::new(
        images,
        n,
        h,
        w,
        3,
        labels,
        EMOJI_CATEGORIES.iter().map(|s| (*s).to_owned()).collect(),
    )?;
    Ok(EmojiImages {
        set,
        subcategory,
        subcategory_names,
        files,
    })
}

/// Reads `emoji.json` and the images under `image_dir` from disk; see [`read_emoji`].
pub fn read_emoji_dir(emoji_json: &Path, image_dir: &Path) -> Result<EmojiImages> {
    read_emoji_dir_of(emoji_json, image_dir, EmojiVendor::Google)
}

/// As [`read_emoji_dir`], for the images of `vendor`.
///
/// # Errors
/// As [`read_emoji`]; [`DataError::Io`] naming a file that cannot be read.
pub fn read_emoji_dir_of(
    emoji_json: &Path,
    image_dir: &Path,
    vendor: EmojiVendor,
) -> Result<EmojiImages> {
    let json = std::fs::read(emoji_json).map_err(|e| DataError::io(emoji_json, e))?;
    read_emoji_of(&json, &emoji_json.display().to_string(), vendor, |name| {
        let p = image_dir.join(name);
        std::fs::read(&p).map_err(|e| DataError::io(p, e))
    })
}
