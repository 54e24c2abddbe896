//! Decoding images as people have them and CLIP's preprocessing.
//!
//! - [`decode_rgb`]: JPEG, PNG and WebP bytes to 8-bit RGB, converted as transformers'
//!   `convert_to_rgb` does: PIL's `Image.convert("RGB")` (grey replicated, palettes looked
//!   up, 16-bit grey clamped to 255 as PIL does, 16-bit colour reduced to 8 bits, CMYK
//!   JPEGs converted by the decoder), except that an image with transparency is first
//!   composited onto white. [`AlphaRule::Drop`] drops the alpha channel instead, as a
//!   plain `convert("RGB")` (and transformers before its `convert_to_rgb` composited).
//! - [`ClipPreprocess`]: transformers' `CLIPImageProcessor` as a value read from a model's
//!   `preprocessor_config.json` (or CLIP's defaults): resize the shortest side to `size`
//!   with bicubic resampling (Pillow's filter: Catmull-Rom, `a = -0.5`, widened by the
//!   scale when shrinking, so that downscaling is antialiased), center-crop to
//!   `crop_size` (padding with zeros when the image is smaller), rescale by `1/255` and
//!   normalise with CLIP's mean and std, channels first.
//!
//! The resize is [`fast_image_resize`]'s convolution, which computes Pillow's filter
//! weights; measured against transformers on real photographs and drawings in
//! `docs/real-benchmarks.md`.

use std::io::Cursor;
use std::path::Path;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions};

/// The reusable resizer [`ClipPreprocess::apply`] takes (scratch buffers kept between
/// images).
pub use fast_image_resize::Resizer;
use serde::Deserialize;

use crate::error::{DataError, Result};

/// CLIP's normalisation mean (`OPENAI_CLIP_MEAN`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's normalisation standard deviation (`OPENAI_CLIP_STD`).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Name of the preprocessing configuration file of a Hugging Face model folder.
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// Name of the processor file transformers 5 writes when it saves a whole processor (the
/// image processor's configuration is its `image_processor` object).
pub const PROCESSOR_FILE: &str = "processor_config.json";

/// Largest width or height of an image that is decoded (16,384 px).
pub const MAX_IMAGE_SIDE: u32 = 1 << 14;

/// Largest memory one image may take while decoding (256 MiB).
const MAX_DECODE_BYTES: u64 = 256 << 20;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub pixels: Vec<u8>,
}

/// What becomes of transparency when an image is converted to RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AlphaRule {
    /// Composite onto opaque white, with Pillow's `alpha_composite` arithmetic: what
    /// transformers' `convert_to_rgb` (and so `CLIPImageProcessor`) does to images with an
    /// alpha channel or a transparent palette entry.
    #[default]
    White,
    /// Drop the alpha channel, keeping the colours: PIL's plain `convert("RGB")`.
    Drop,
}

/// Decodes JPEG, PNG or WebP bytes (the format is recognised from the content) to RGB as
/// transformers' `CLIPImageProcessor` does ([`AlphaRule::White`]).
///
/// # Errors
/// As [`decode_rgb_with`].
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage> {
    decode_rgb_with(bytes, name, AlphaRule::White)
}

/// Decodes JPEG, PNG or WebP bytes to RGB, as PIL's `Image.open(f).convert("RGB")` with
/// transparency handled by `alpha`.
///
/// # Errors
/// [`DataError::Image`] naming `name` when the bytes are not a decodable image of these
/// formats, or the image is larger than [`MAX_IMAGE_SIDE`] on a side.
pub fn decode_rgb_with(bytes: &[u8], name: &str, alpha: AlphaRule) -> Result<RgbImage> {
    let err = |message: String| DataError::Image {
        file: name.to_owned(),
        message,
    };
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    match reader.format() {
        None => return Err(err("not a JPEG, PNG or WebP image".to_owned())),
        Some(image::ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            return Err(err(
                "the JPEG data is cut short (no end-of-image marker after its last scan; PIL \
                 refuses it as truncated)"
                    .to_owned(),
            ));
        }
        Some(_) => {}
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| err(e.to_string()))?;
    let (width, height) = (decoded.width() as usize, decoded.height() as usize);
    if width == 0 || height == 0 {
        return Err(err("the image is empty".to_owned()));
    }
    let pixels = match decoded {
        // PIL opens a 16-bit grey PNG in mode `I;16`, and its conversion to RGB clamps each
        // value to 255 (it does not rescale).
        image::DynamicImage::ImageLuma16(grey) => grey
            .into_raw()
            .into_iter()
            .flat_map(|v| {
                let b = u8::try_from(v).unwrap_or(u8::MAX);
                [b, b, b]
            })
            .collect(),
        other if other.color().has_alpha() && alpha == AlphaRule::White => other
            .to_rgba8()
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| {
                let a = p[3];
                [
                    over_white(p[0], a),
                    over_white(p[1], a),
                    over_white(p[2], a),
                ]
            })
            .collect(),
        other => other.to_rgb8().into_raw(),
    };
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

/// Whether JPEG data holds an end-of-image marker (`FF D9`) after its last start-of-scan
/// marker (`FF DA`). The JPEG decoder fills the rest of a file that is cut short with grey
/// and reports no error, where PIL raises `image file is truncated`; inside the
/// entropy-coded data a `FF` byte is always followed by `00` or a restart marker, so the two
/// markers cannot be mistaken for image data (an embedded thumbnail's markers come before
/// the main scan).
#[must_use]
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes
        .get(sos..)
        .is_some_and(|rest| rest.windows(2).any(|w| w == [0xFF, 0xD9]))
}

/// One channel of a pixel with alpha `a` composited onto opaque white, exactly as Pillow's
/// `Image.alpha_composite` computes it (7 fractional bits, its rounded division by 255).
#[must_use]
pub fn over_white(c: u8, a: u8) -> u8 {
    const PRECISION: u32 = 7;
    let (c, a) = (u32::from(c), u32::from(a));
    // With an opaque white destination Pillow's coefficients are `a << 7` and
    // `(255 - a) << 7`.
    let tmp = c * (a << PRECISION) + 255 * ((255 - a) << PRECISION) + (0x80 << PRECISION);
    let div255 = ((tmp >> 8) + tmp) >> 8;
    u8::try_from(div255 >> PRECISION).unwrap_or(u8::MAX)
}

/// The resampling filter of a resize (PIL's numbering in `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resample {
    /// `0`: nearest neighbour.
    Nearest,
    /// `1`: Lanczos (`a = 3`).
    Lanczos,
    /// `2`: bilinear (triangle filter).
    Bilinear,
    /// `3`: bicubic (Catmull-Rom, `a = -0.5`), CLIP's.
    Bicubic,
    /// `4`: box.
    Box,
    /// `5`: Hamming.
    Hamming,
}

impl Resample {
    /// The filter of PIL's resampling code `code`.
    #[must_use]
    pub fn from_pil(code: u64) -> Option<Self> {
        Some(match code {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            _ => return None,
        })
    }

    fn algorithm(self) -> ResizeAlg {
        match self {
            Self::Nearest => ResizeAlg::Nearest,
            Self::Lanczos => ResizeAlg::Convolution(FilterType::Lanczos3),
            Self::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
            Self::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
            Self::Box => ResizeAlg::Convolution(FilterType::Box),
            Self::Hamming => ResizeAlg::Convolution(FilterType::Hamming),
        }
    }
}

/// How an image becomes the pixel tensor of a CLIP vision tower (transformers'
/// `CLIPImageProcessor`; field names and defaults as in `preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipPreprocess {
    /// Resize at all.
    pub do_resize: bool,
    /// Target of the shorter side; the longer one becomes `int(size * long / short)`.
    pub shortest_edge: usize,
    /// The resampling filter.
    pub resample: Resample,
    /// Center-crop at all.
    pub do_center_crop: bool,
    /// `(height, width)` of the crop.
    pub crop_size: (usize, usize),
    /// Multiply by `rescale_factor` (from bytes to `[0, 1]`).
    pub do_rescale: bool,
    /// Usually `1/255`.
    pub rescale_factor: f32,
    /// Normalise with `image_mean` and `image_std`.
    pub do_normalize: bool,
    /// Per-channel mean.
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation.
    pub image_std: [f32; 3],
}

impl Default for ClipPreprocess {
    /// CLIP's preprocessing for 224-pixel towers.
    fn default() -> Self {
        Self::clip(224)
    }
}

/// `preprocessor_config.json` as written by transformers (every field optional).
#[derive(Debug, Deserialize)]
struct RawConfig {
    do_resize: Option<bool>,
    size: Option<SizeSpec>,
    resample: Option<u64>,
    do_center_crop: Option<bool>,
    crop_size: Option<SizeSpec>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f64>>,
    image_std: Option<Vec<f64>>,
}

/// A size as transformers writes it: a number, `{"shortest_edge": n}` or
/// `{"height": h, "width": w}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Scalar(usize),
    Shortest { shortest_edge: usize },
    Exact { height: usize, width: usize },
}

impl ClipPreprocess {
    /// CLIP's preprocessing for an `image_size`-pixel tower: shortest side to
    /// `image_size` (bicubic), center crop `image_size` square, rescale, normalise.
    #[must_use]
    pub fn clip(image_size: usize) -> Self {
        Self {
            do_resize: true,
            shortest_edge: image_size,
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: (image_size, image_size),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }

    /// Reads a model folder's `preprocessor_config.json` (or, without one, the
    /// `image_processor` of the `processor_config.json` transformers 5 writes for a whole
    /// processor), or returns CLIP's defaults for an `image_size`-pixel tower when the
    /// folder has neither.
    ///
    /// # Errors
    /// As [`ClipPreprocess::from_json_str`], naming the file.
    pub fn for_model(dir: &Path, image_size: usize) -> Result<Self> {
        let path = dir.join(PREPROCESSOR_FILE);
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
            return Self::from_json_str(&text, &path.display().to_string(), image_size);
        }
        let path = dir.join(PROCESSOR_FILE);
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
            let name = path.display().to_string();
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| DataError::Malformed {
                    file: name.clone(),
                    detail: e.to_string(),
                })?;
            if let Some(image) = value.get("image_processor") {
                return Self::from_json_str(&image.to_string(), &name, image_size);
            }
        }
        Ok(Self::clip(image_size))
    }

    /// Parses a `preprocessor_config.json`; missing fields take CLIP's defaults for an
    /// `image_size`-pixel tower.
    ///
    /// # Errors
    /// [`DataError::InvalidValue`] naming `file` for malformed JSON, a size of 0, an
    /// unknown resampling code, or a mean or std without three entries (or a zero std).
    pub fn from_json_str(text: &str, file: &str, image_size: usize) -> Result<Self> {
        let bad = |detail: String| DataError::Malformed {
            file: file.to_owned(),
            detail,
        };
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut p = Self::clip(image_size);
        if let Some(v) = raw.do_resize {
            p.do_resize = v;
        }
        match raw.size {
            Some(SizeSpec::Scalar(n) | SizeSpec::Shortest { shortest_edge: n }) => {
                p.shortest_edge = n;
            }
            Some(SizeSpec::Exact { height, width }) if height == width => p.shortest_edge = height,
            Some(SizeSpec::Exact { height, width }) => {
                return Err(bad(format!(
                    "`size` {height}x{width}: only a shortest edge (or a square) is supported"
                )));
            }
            None => {}
        }
        if let Some(code) = raw.resample {
            p.resample = Resample::from_pil(code)
                .ok_or_else(|| bad(format!("unknown `resample` code {code}")))?;
        }
        if let Some(v) = raw.do_center_crop {
            p.do_center_crop = v;
        }
        match raw.crop_size {
            Some(SizeSpec::Scalar(n) | SizeSpec::Shortest { shortest_edge: n }) => {
                p.crop_size = (n, n);
            }
            Some(SizeSpec::Exact { height, width }) => p.crop_size = (height, width),
            None => {}
        }
        if let Some(v) = raw.do_rescale {
            p.do_rescale = v;
        }
        if let Some(v) = raw.rescale_factor {
            p.rescale_factor = v as f32;
        }
        if let Some(v) = raw.do_normalize {
            p.do_normalize = v;
        }
        let three = |name: &str, v: Vec<f64>| -> Result<[f32; 3]> {
            match v.as_slice() {
                [a, b, c] => Ok([*a as f32, *b as f32, *c as f32]),
                _ => Err(bad(format!(
                    "`{name}` must have 3 entries, got {}",
                    v.len()
                ))),
            }
        };
        if let Some(v) = raw.image_mean {
            p.image_mean = three("image_mean", v)?;
        }
        if let Some(v) = raw.image_std {
            p.image_std = three("image_std", v)?;
        }
        p.check().map_err(bad)?;
        Ok(p)
    }

    /// Checks the sizes and the normalisation.
    fn check(&self) -> std::result::Result<(), String> {
        let max = MAX_IMAGE_SIDE as usize;
        for (name, v) in [
            ("size", self.shortest_edge),
            ("crop height", self.crop_size.0),
            ("crop width", self.crop_size.1),
        ] {
            if v == 0 || v > max {
                return Err(format!("{name} {v} is outside 1..={max}"));
            }
        }
        if self.image_std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || self.image_mean.iter().any(|m| !m.is_finite())
            || !self.rescale_factor.is_finite()
        {
            return Err(
                "`image_mean`, `image_std` and `rescale_factor` must be finite, the std non-zero"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// `(height, width)` of the output for an input of `height x width` pixels.
    #[must_use]
    pub fn output_size(&self, height: usize, width: usize) -> (usize, usize) {
        if self.do_center_crop {
            return self.crop_size;
        }
        if self.do_resize {
            resized_size(height, width, self.shortest_edge)
        } else {
            (height, width)
        }
    }

    /// Preprocesses one image into `[3, h, w]` floats, channels first (the layout of
    /// `pixel_values`); `resizer` is reused between calls.
    ///
    /// # Errors
    /// [`DataError::Image`] naming `name` if the resize fails (it does not for valid
    /// images).
    pub fn apply(&self, img: &RgbImage, name: &str, resizer: &mut Resizer) -> Result<Vec<f32>> {
        let resized;
        let img = if self.do_resize {
            let (h, w) = resized_size(img.height, img.width, self.shortest_edge);
            resized = resize(img, h, w, self.resample, name, resizer)?;
            &resized
        } else {
            img
        };
        let (ch, cw) = if self.do_center_crop {
            self.crop_size
        } else {
            (img.height, img.width)
        };
        // transformers' center_crop: offsets floor((size - crop) / 2); a crop larger than
        // the image pads with zeros, the image placed at ceil((crop - size) / 2).
        let top = offset(img.height, ch);
        let left = offset(img.width, cw);
        let mut out = vec![0.0f32; 3 * ch * cw];
        let plane = ch * cw;
        for y in 0..ch {
            let Some(sy) = source_index(top, y, img.height) else {
                continue;
            };
            for x in 0..cw {
                let Some(sx) = source_index(left, x, img.width) else {
                    continue;
                };
                let p = (sy * img.width + sx) * 3;
                for c in 0..3 {
                    let v = f32::from(img.pixels.get(p + c).copied().unwrap_or(0));
                    if let Some(o) = out.get_mut(c * plane + y * cw + x) {
                        *o = v;
                    }
                }
            }
        }
        for c in 0..3 {
            let (mean, std) = (self.image_mean[c], self.image_std[c]);
            for v in out.iter_mut().skip(c * plane).take(plane) {
                if self.do_rescale {
                    *v *= self.rescale_factor;
                }
                if self.do_normalize {
                    *v = (*v - mean) / std;
                }
            }
        }
        Ok(out)
    }
}

/// The source index of output index 0 of a center crop of `crop` from `size`, as
/// transformers' `center_crop`: `(size - crop) // 2` when the crop fits, otherwise
/// `-ceil((crop - size) / 2)` (the image is padded with zeros on both sides).
fn offset(size: usize, crop: usize) -> isize {
    let signed = |v: usize| isize::try_from(v).unwrap_or(isize::MAX);
    if crop <= size {
        signed((size - crop) / 2)
    } else {
        -signed((crop - size).div_ceil(2))
    }
}

/// The source index of output index `i` of a crop starting at `start`, if it lies inside
/// `0..size`.
fn source_index(start: isize, i: usize, size: usize) -> Option<usize> {
    let v = start.checked_add(isize::try_from(i).ok()?)?;
    usize::try_from(v).ok().filter(|&v| v < size)
}

/// `(height, width)` after resizing the shorter side to `short` as transformers does:
/// the longer side becomes `int(short * long / shorter)`.
#[must_use]
pub fn resized_size(height: usize, width: usize, short: usize) -> (usize, usize) {
    let (s, l) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let long = ((short as f64) * (l as f64) / (s.max(1) as f64)) as usize;
    let long = long.max(1);
    if width <= height {
        (long, short)
    } else {
        (short, long)
    }
}

fn resize(
    img: &RgbImage,
    height: usize,
    width: usize,
    resample: Resample,
    name: &str,
    resizer: &mut Resizer,
) -> Result<RgbImage> {
    let err = |message: String| DataError::Image {
        file: name.to_owned(),
        message,
    };
    if (height, width) == (img.height, img.width) {
        return Ok(img.clone());
    }
    let dim = |v: usize| u32::try_from(v).map_err(|_| err(format!("size {v} is too large")));
    let src = Image::from_vec_u8(
        dim(img.width)?,
        dim(img.height)?,
        img.pixels.clone(),
        PixelType::U8x3,
    )
    .map_err(|e| err(e.to_string()))?;
    let mut dst = Image::new(dim(width)?, dim(height)?, PixelType::U8x3);
    resizer
        .resize(
            &src,
            &mut dst,
            &ResizeOptions::new().resize_alg(resample.algorithm()),
        )
        .map_err(|e| err(e.to_string()))?;
    Ok(RgbImage {
        width,
        height,
        pixels: dst.into_vec(),
    })
}
