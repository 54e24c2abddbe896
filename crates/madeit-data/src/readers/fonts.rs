//! Digits and letters rendered from font files (the way notMNIST was made), with
//! [`ab_glyph`].
//!
//! Every font file of the Debian font packages listed in [`FONT_PACKAGES`] is parsed and
//! each character of [`FONT_CLASSES`] (`0`–`9`, then `A`–`J`) is rendered once (the
//! lower-case letters [`FONT_LOWERCASE`] are rendered the same way, as a separate set):
//!
//! * the glyph's outline is scaled so that its bounding box fits a
//!   [`GLYPH_BOX`] × `GLYPH_BOX` square (aspect kept: the longer side is `GLYPH_BOX`
//!   pixels), rasterised with exact area coverage, and centred on a black
//!   [`FONT_CANVAS`] × `FONT_CANVAS` canvas (the bounding-box centre on the canvas centre,
//!   whole pixels);
//! * a pixel is `round(255 · min(coverage, 1))`: white ink on black, as MNIST.
//!
//! A font is kept only if it has a non-empty outline for all the characters of the set (symbol,
//! dingbat and OCR fonts that lack one are left out, see [`FontSkip`]), and only if its
//! images differ from those of every font kept before it (the same face shipped as
//! both `.ttf` and `.otf`, or metric clones, would otherwise put copies of one picture on
//! both sides of a split). Files are visited in the order of their paths, so the result is
//! deterministic. A file that is not a font the parser can read is an error naming it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontRef, PxScale, point};

use crate::error::{DataError, Result};
use crate::image::ImageSet;

/// The characters rendered, in label order: the ten digits, then the letters `A`–`J`
/// (notMNIST's ten letters).
pub const FONT_CLASSES: [char; 20] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I',
    'J',
];

/// The lower-case letters `a`–`j`, rendered for the `font_lowercase` task
/// ([`SourceId::FontLowercase`](crate::SourceId::FontLowercase)).
pub const FONT_LOWERCASE: [char; 10] = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'];

/// Side of the square the glyph's bounding box is scaled into, in pixels.
pub const GLYPH_BOX: f32 = 20.0;

/// Side of the rendered image, in pixels (28, as MNIST; the task pads it to 32).
pub const FONT_CANVAS: usize = 28;

/// Why a font file contributed no images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FontSkip {
    /// The font maps the character to no glyph, or to a glyph without an outline.
    MissingGlyph(char),
    /// Its images equal those of an earlier font.
    Duplicate,
}

/// The class names of [`FONT_CLASSES`] (`"0"`, …, `"9"`, `"A"`, …, `"J"`).
pub fn font_class_names() -> Vec<String> {
    FONT_CLASSES.iter().map(|c| c.to_string()).collect()
}

/// The class names of [`FONT_LOWERCASE`]: the name of each letter, `"A"`, …, `"J"`, the
/// same names as the upper-case classes, so that a letter has one name (and one head
/// vector) whatever its case.
pub fn font_lowercase_class_names() -> Vec<String> {
    FONT_LOWERCASE
        .iter()
        .map(|c| c.to_ascii_uppercase().to_string())
        .collect()
}

/// Renders `ch` from `font` as described in the module docs: `FONT_CANVAS²` grey bytes, or
/// `None` when the font has no outline for it.
pub fn render_glyph(font: &FontRef<'_>, ch: char) -> Option<Vec<u8>> {
    let id = font.glyph_id(ch);
    if id.0 == 0 {
        return None;
    }
    // The glyph's extent in font units, from its outline drawn at one pixel per unit (the
    // bounding box stored in a font's header is not always right).
    let unit = PxScale::from(font.height_unscaled());
    let probe = font.outline_glyph(id.with_scale_and_position(unit, point(0.0, 0.0)))?;
    let b = probe.px_bounds();
    let longer = (b.max.x - b.min.x).max(b.max.y - b.min.y);
    if !(longer.is_finite() && longer > 0.0) {
        return None;
    }
    // PxScale is the pixel height of `height_unscaled` font units.
    let px_per_unit = GLYPH_BOX / longer;
    let scale = PxScale::from(px_per_unit * font.height_unscaled());
    let glyph = id.with_scale_and_position(scale, point(0.0, 0.0));
    let outlined = font.outline_glyph(glyph)?;
    let bounds = outlined.px_bounds();
    let (gw, gh) = (
        (bounds.max.x - bounds.min.x).round() as isize,
        (bounds.max.y - bounds.min.y).round() as isize,
    );
    let n = FONT_CANVAS as isize;
    let (left, top) = ((n - gw) / 2, (n - gh) / 2);
    let mut canvas = vec![0f32; FONT_CANVAS * FONT_CANVAS];
    outlined.draw(|x, y, c| {
        let (cx, cy) = (left + x as isize, top + y as isize);
        if (0..n).contains(&cx)
            && (0..n).contains(&cy)
            && let Some(p) = canvas.get_mut((cy * n + cx) as usize)
        {
            *p += c;
        }
    });
    let bytes: Vec<u8> = canvas
        .iter()
        .map(|&c| (255.0 * c.clamp(0.0, 1.0) + 0.5).floor() as u8)
        .collect();
    bytes.iter().any(|&v| v > 0).then_some(bytes)
}

/// The twenty images of one font file's bytes (in [`FONT_CLASSES`] order), or why it has
/// none.
///
/// # Errors
/// [`DataError::Font`] naming `file` when the bytes are not a font the parser reads.
pub fn render_font(bytes: &[u8], file: &str) -> Result<std::result::Result<Vec<u8>, FontSkip>> {
    render_font_chars(bytes, file, &FONT_CLASSES)
}

/// The images of `chars` (in that order) from one font file's bytes, or why it has none.
///
/// # Errors
/// [`DataError::Font`] naming `file` when the bytes are not a font the parser reads.
pub fn render_font_chars(
    bytes: &[u8],
    file: &str,
    chars: &[char],
) -> Result<std::result::Result<Vec<u8>, FontSkip>> {
    let font = FontRef::try_from_slice(bytes).map_err(|e| DataError::Font {
        file: file.to_owned(),
        message: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(chars.len() * FONT_CANVAS * FONT_CANVAS);
    for &ch in chars {
        match render_glyph(&font, ch) {
            Some(img) => out.extend_from_slice(&img),
            None => return Ok(Err(FontSkip::MissingGlyph(ch))),
        }
    }
    Ok(Ok(out))
}

/// The rendered fonts: one image per (kept font, character).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FontImages {
    /// Grey `FONT_CANVAS²` images labelled by character (in the order of the set); the
    /// images of each kept font are consecutive.
    pub set: ImageSet,
    /// The file of each kept font, in order.
    pub fonts: Vec<String>,
    /// The files that were left out, with the reason.
    pub skipped: Vec<(String, FontSkip)>,
}

/// Renders fonts given as `(file name, bytes)`, in the given order (see the module docs).
///
/// # Errors
/// [`DataError::Font`] naming the first file that does not parse;
/// [`DataError::Malformed`] when no font is kept.
pub fn read_fonts<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<FontImages> {
    read_fonts_chars(files, &FONT_CLASSES, font_class_names())
}

/// As [`read_fonts`], for the characters `chars` labelled `class_names` (one name each).
///
/// # Errors
/// As [`read_fonts`].
pub fn read_fonts_chars<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    chars: &[char],
    class_names: Vec<String>,
) -> Result<FontImages> {
    let mut images = Vec::new();
    let mut fonts = Vec::new();
    let mut skipped = Vec::new();
    let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
    for (name, bytes) in files {
        match render_font_chars(bytes, name, chars)? {
            Ok(rendered) => {
                if seen.insert(rendered.clone()) {
                    images.extend_from_slice(&rendered);
                    fonts.push(name.to_owned());
                } else {
                    skipped.push((name.to_owned(), FontSkip::Duplicate));
                }
            }
            Err(skip) => skipped.push((name.to_owned(), skip)),
        }
    }
    if fonts.is_empty() {
        return Err(DataError::Malformed {
            file: "fonts".into(),
            detail: format!("no font file has all {} characters", chars.len()),
        });
    }
    let k = chars.len();
    let n = fonts.len() * k;
    let labels: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
    let set = ImageSet::new(images, n, FONT_CANVAS, FONT_CANVAS, 1, labels, class_names)?;
    Ok(FontImages {
        set,
        fonts,
        skipped,
    })
}

/// Every file under `dir` (recursively) whose name ends in `.ttf` or `.otf` (any case),
/// sorted by path.
///
/// # Errors
/// [`DataError::Io`] naming the folder that cannot be listed.
pub fn font_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let fonts = super::files_under(dir, &|rel| {
        let name = rel.to_ascii_lowercase();
        name.ends_with(".ttf") || name.ends_with(".otf")
    })?;
    let mut out: Vec<PathBuf> = fonts.into_iter().map(|(_, path)| path).collect();
    out.sort();
    Ok(out)
}

/// Reads and renders every font file under `dir` ([`font_files`], then [`read_fonts`]);
/// file names in the result and in errors are the full paths.
///
/// # Errors
/// As [`font_files`] and [`read_fonts`]; [`DataError::Io`] naming a file that cannot be
/// read.
pub fn read_font_dir(dir: &Path) -> Result<FontImages> {
    read_font_dir_chars(dir, &FONT_CLASSES, font_class_names())
}

/// As [`read_font_dir`], for the characters `chars` labelled `class_names`.
///
/// # Errors
/// As [`read_font_dir`].
pub fn read_font_dir_chars(
    dir: &Path,
    chars: &[char],
    class_names: Vec<String>,
) -> Result<FontImages> {
    let paths = font_files(dir)?;
    let mut contents = Vec::with_capacity(paths.len());
    for p in &paths {
        contents.push((
            p.display().to_string(),
            std::fs::read(p).map_err(|e| DataError::io(p, e))?,
        ));
    }
    read_fonts_chars(
        contents.iter().map(|(n, b)| (n.as_str(), b.as_slice())),
        chars,
        class_names,
    )
}

/// The Debian packages whose fonts are rendered (Latin text faces of many designs: serif,
/// sans, monospace, handwriting, display), in the order they are fetched.
pub const FONT_PACKAGES: [&str; 92] = [
    "fonts-adf-accanthis",
    "fonts-adf-baskervald",
    "fonts-adf-berenis",
    "fonts-adf-gillius",
    "fonts-adf-ikarius",
    "fonts-adf-irianis",
    "fonts-adf-libris",
    "fonts-adf-oldania",
    "fonts-adf-romande",
    "fonts-adf-switzera",
    "fonts-adf-tribun",
    "fonts-adf-universalis",
    "fonts-adf-verana",
    "fonts-agave",
    "fonts-averia-gwf",
    "fonts-averia-sans-gwf",
    "fonts-averia-serif-gwf",
    "fonts-b612",
    "fonts-bebas-neue",
    "fonts-beteckna",
    "fonts-blankenburg",
    "fonts-breip",
    "fonts-cabin",
    "fonts-cantarell",
    "fonts-century-catalogue",
    "fonts-cmu",
    "fonts-comfortaa",
    "fonts-comic-neue",
    "fonts-croscore",
    "fonts-crosextra-caladea",
    "fonts-crosextra-carlito",
    "fonts-dejavu-core",
    "fonts-dejavu-extra",
    "fonts-dkg-handwriting",
    "fonts-dosis",
    "fonts-dustin",
    "fonts-ebgaramond",
    "fonts-ecolier-court",
    "fonts-ecolier-lignes-court",
    "fonts-f500",
    "fonts-fantasque-sans",
    "fonts-femkeklaver",
    "fonts-firacode",
    "fonts-freefont-ttf",
    "fonts-gfs-didot",
    "fonts-go",
    "fonts-goudybookletter",
    "fonts-hack",
    "fonts-hermit",
    "fonts-humor-sans",
    "fonts-inconsolata",
    "fonts-inter",
    "fonts-isabella",
    "fonts-jetbrains-mono",
    "fonts-junicode",
    "fonts-jura",
    "fonts-kristi",
    "fonts-lato",
    "fonts-league-spartan",
    "fonts-liberation2",
    "fonts-lindenhill",
    "fonts-linuxlibertine",
    "fonts-lobster",
    "fonts-manrope",
    "fonts-monoid",
    "fonts-mononoki",
    "fonts-mph-2b-damase",
    "fonts-noto-mono",
    "fonts-ocr-a",
    "fonts-ocr-b",
    "fonts-oldstandard",
    "fonts-open-sans",
    "fonts-opendyslexic",
    "fonts-oxygen",
    "fonts-paratype",
    "fonts-play",
    "fonts-prociono",
    "fonts-quicksand",
    "fonts-radisnoir",
    "fonts-roboto-unhinted",
    "fonts-rufscript",
    "fonts-sil-andika",
    "fonts-sil-charis",
    "fonts-sil-doulos",
    "fonts-sil-gentium",
    "fonts-staypuft",
    "fonts-stix",
    "fonts-tiresias",
    "fonts-tomsontalks",
    "fonts-urw-base35",
    "fonts-yanone-kaffeesatz",
    "fonts-yrsa-rasa",
];
