//! Deterministic image preprocessing: rotation, mirroring, padding, resizing, channel conversion, and
//! the common format every task is brought to.
//!
//! All functions work on 8-bit [`ImageSet`]s and round once, at the end, with
//! `round(v) = ⌊v + ½⌋` clamped to `0..=255`; intermediate values are `f64`, so results do
//! not depend on the platform.

use crate::error::{DataError, Result};
use crate::image::ImageSet;
use crate::readers::emoji::composite_on_white;

/// Side of the square images every task is brought to.
pub const IMAGE_SIZE: usize = 32;
/// Channels of the common format (RGB; grey images are replicated).
pub const CHANNELS: usize = 3;
/// Per-channel mean used to normalise `x = byte / 255`: `(x − mean) / std`.
///
/// `0.5` and `0.5` map `[0, 1]` onto `[−1, 1]`. The tasks mix black-background grey images
/// with white-background colour images, so no single data statistic is meaningful for all
/// of them; a fixed symmetric map keeps every task on the same scale.
pub const NORM_MEAN: [f32; CHANNELS] = [0.5; CHANNELS];
/// Per-channel standard deviation of the normalisation (see [`NORM_MEAN`]).
pub const NORM_STD: [f32; CHANNELS] = [0.5; CHANNELS];

/// How a source's images are brought to [`IMAGE_SIZE`] × [`IMAGE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Centre the image on a black (zero) canvas: exact, no interpolation. For images no
    /// larger than the target (28 × 28 → 32 × 32, as LeNet-5 padded MNIST).
    Pad,
    /// Area (box) averaging: each output pixel is the overlap-weighted mean of the input
    /// pixels its footprint covers. For shrinking (64 × 64 → 32 × 32 averages 2 × 2 blocks).
    Area,
    /// Bilinear interpolation with half-pixel centres (`align_corners = False`, no
    /// antialiasing), as `torch.nn.functional.interpolate(mode="bilinear")`. For enlarging
    /// (8 × 8 → 32 × 32).
    Bilinear,
}

fn round_byte(v: f64) -> u8 {
    (v + 0.5).floor().clamp(0.0, 255.0) as u8
}

/// Rotates every image by `quarter_turns × 90°` counter-clockwise, as `numpy.rot90`:
/// for one turn, `out[i][j] = in[j][w − 1 − i]` and the output is `w × h`.
pub fn rotate90(set: &ImageSet, quarter_turns: u8) -> ImageSet {
    let (h, w, c) = (set.height, set.width, set.channels);
    let k = quarter_turns % 4;
    let (oh, ow) = if k % 2 == 1 { (w, h) } else { (h, w) };
    set.map_images(oh, ow, c, |src, dst| {
        for i in 0..oh {
            for j in 0..ow {
                let (si, sj) = match k {
                    0 => (i, j),
                    1 => (j, w - 1 - i),
                    2 => (h - 1 - i, w - 1 - j),
                    _ => (h - 1 - j, i),
                };
                let s = (si * w + sj) * c;
                let d = (i * ow + j) * c;
                if let (Some(from), Some(to)) = (src.get(s..s + c), dst.get_mut(d..d + c)) {
                    to.copy_from_slice(from);
                }
            }
        }
    })
}

/// Mirrors every image left to right: `out[i][j] = in[i][w − 1 − j]`.
pub fn mirror(set: &ImageSet) -> ImageSet {
    let (h, w, c) = (set.height, set.width, set.channels);
    set.map_images(h, w, c, |src, dst| {
        for i in 0..h {
            for j in 0..w {
                let s = (i * w + (w - 1 - j)) * c;
                let d = (i * w + j) * c;
                if let (Some(from), Some(to)) = (src.get(s..s + c), dst.get_mut(d..d + c)) {
                    to.copy_from_slice(from);
                }
            }
        }
    })
}

/// Centres every image on a zero canvas of `out_h × out_w` (the extra rows and columns are
/// split evenly, the odd one going below and to the right).
///
/// # Errors
/// [`DataError::InvalidResize`] if the canvas is smaller than the images.
pub fn pad_center(set: &ImageSet, out_h: usize, out_w: usize) -> Result<ImageSet> {
    let (h, w, c) = (set.height, set.width, set.channels);
    if out_h < h || out_w < w {
        return Err(DataError::InvalidResize {
            method: "pad",
            from_height: h,
            from_width: w,
            to_height: out_h,
            to_width: out_w,
        });
    }
    let (top, left) = ((out_h - h) / 2, (out_w - w) / 2);
    Ok(set.map_images(out_h, out_w, c, |src, dst| {
        for (y, row) in src.chunks_exact(w * c).enumerate() {
            let d = ((y + top) * out_w + left) * c;
            if let Some(to) = dst.get_mut(d..d + w * c) {
                to.copy_from_slice(row);
            }
        }
    }))
}

/// Interpolation weights along one axis: for each output index, `(input index, weight)`.
type AxisWeights = Vec<Vec<(usize, f64)>>;

/// Area weights: output `o` covers `[o·s, (o+1)·s)` with `s = n_in / n_out ≥ 1`; input
/// pixel `i` gets weight `|[i, i+1) ∩ [o·s, (o+1)·s)| / s`.
fn area_weights(n_in: usize, n_out: usize) -> AxisWeights {
    let s = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let (a, b) = (o as f64 * s, (o + 1) as f64 * s);
            let first = a.floor() as usize;
            let last = (b.ceil() as usize).min(n_in);
            (first..last)
                .filter_map(|i| {
                    let overlap = (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0);
                    (overlap > 0.0).then_some((i, overlap / s))
                })
                .collect()
        })
        .collect()
}

/// Bilinear weights with half-pixel centres: `x = max((o + ½)·n_in/n_out − ½, 0)`,
/// `i₀ = ⌊x⌋`, `i₁ = min(i₀ + 1, n_in − 1)`, weights `1 − (x − i₀)` and `x − i₀`.
fn bilinear_weights(n_in: usize, n_out: usize) -> AxisWeights {
    let s = n_in as f64 / n_out as f64;
    let last = n_in.saturating_sub(1);
    (0..n_out)
        .map(|o| {
            let x = ((o as f64 + 0.5) * s - 0.5).max(0.0);
            let i0 = (x.floor() as usize).min(last);
            let i1 = (i0 + 1).min(last);
            let t = (x - i0 as f64).clamp(0.0, 1.0);
            if i0 == i1 {
                vec![(i0, 1.0)]
            } else {
                vec![(i0, 1.0 - t), (i1, t)]
            }
        })
        .collect()
}

/// Separable resampling with per-axis weights; rounds once at the end.
fn resample(set: &ImageSet, wy: &AxisWeights, wx: &AxisWeights) -> ImageSet {
    let (w, c) = (set.width, set.channels);
    let (oh, ow) = (wy.len(), wx.len());
    set.map_images(oh, ow, c, |src, dst| {
        // Horizontal pass: every input row to ow columns.
        let mut tmp = vec![0f64; set.height * ow * c];
        for (y, row) in src.chunks_exact(w * c).enumerate() {
            for (ox, ws) in wx.iter().enumerate() {
                for ch in 0..c {
                    let v: f64 = ws
                        .iter()
                        .map(|&(i, wt)| wt * f64::from(row.get(i * c + ch).copied().unwrap_or(0)))
                        .sum();
                    if let Some(t) = tmp.get_mut((y * ow + ox) * c + ch) {
                        *t = v;
                    }
                }
            }
        }
        // Vertical pass.
        for (oy, ws) in wy.iter().enumerate() {
            for ox in 0..ow {
                for ch in 0..c {
                    let v: f64 = ws
                        .iter()
                        .map(|&(i, wt)| {
                            wt * tmp.get((i * ow + ox) * c + ch).copied().unwrap_or(0.0)
                        })
                        .sum();
                    if let Some(d) = dst.get_mut((oy * ow + ox) * c + ch) {
                        *d = round_byte(v);
                    }
                }
            }
        }
    })
}

/// Shrinks every image to `out_h × out_w` by area averaging (see [`Resize::Area`]).
///
/// # Errors
/// [`DataError::InvalidResize`] if the target is larger than the images or empty.
pub fn resize_area(set: &ImageSet, out_h: usize, out_w: usize) -> Result<ImageSet> {
    let (h, w) = (set.height, set.width);
    let fits = out_h > 0 && out_w > 0 && out_h <= h && out_w <= w;
    check_resize(set, out_h, out_w, "area-resize", fits)?;
    Ok(resample(
        set,
        &area_weights(h, out_h),
        &area_weights(w, out_w),
    ))
}

/// [`DataError::InvalidResize`] of `method` from `set`'s size to `out_h × out_w`, unless the
/// target `fits`.
fn check_resize(
    set: &ImageSet,
    out_h: usize,
    out_w: usize,
    method: &'static str,
    fits: bool,
) -> Result<()> {
    if fits {
        return Ok(());
    }
    Err(DataError::InvalidResize {
        method,
        from_height: set.height,
        from_width: set.width,
        to_height: out_h,
        to_width: out_w,
    })
}

/// Resizes every image to `out_h × out_w` by bilinear interpolation (see
/// [`Resize::Bilinear`]).
///
/// # Errors
/// [`DataError::InvalidResize`] if the target is empty.
pub fn resize_bilinear(set: &ImageSet, out_h: usize, out_w: usize) -> Result<ImageSet> {
    let (h, w) = (set.height, set.width);
    check_resize(set, out_h, out_w, "bilinear-resize", out_h > 0 && out_w > 0)?;
    Ok(resample(
        set,
        &bilinear_weights(h, out_h),
        &bilinear_weights(w, out_w),
    ))
}

/// Converts to 3-channel RGB: grey is replicated, grey+alpha and RGBA are composited on
/// white (see [`composite_on_white`]), RGB is kept.
///
/// # Errors
/// [`DataError::UnsupportedChannels`] for other channel counts.
pub fn to_rgb(set: &ImageSet) -> Result<ImageSet> {
    match set.channels {
        1 => Ok(set.map_images(set.height, set.width, 3, |src, dst| {
            for (&g, px) in src.iter().zip(dst.chunks_exact_mut(3)) {
                px.fill(g);
            }
        })),
        2 => Ok(set.map_images(set.height, set.width, 3, |src, dst| {
            let rgba: Vec<u8> = src
                .chunks_exact(2)
                .flat_map(|ga| [ga[0], ga[0], ga[0], ga[1]])
                .collect();
            dst.copy_from_slice(&composite_on_white(&rgba));
        })),
        3 => Ok(set.clone()),
        4 => Ok(set.map_images(set.height, set.width, 3, |src, dst| {
            dst.copy_from_slice(&composite_on_white(src));
        })),
        channels => Err(DataError::UnsupportedChannels { channels }),
    }
}

/// Brings a set to the common format: [`IMAGE_SIZE`] × [`IMAGE_SIZE`] × [`CHANNELS`],
/// resizing with `method` (skipped if the size already matches) and then converting to RGB.
///
/// # Errors
/// Those of [`pad_center`], [`resize_area`], [`resize_bilinear`] and [`to_rgb`].
pub fn to_common(set: &ImageSet, method: Resize) -> Result<ImageSet> {
    let sized = if (set.height, set.width) == (IMAGE_SIZE, IMAGE_SIZE) {
        set.clone()
    } else {
        match method {
            Resize::Pad => pad_center(set, IMAGE_SIZE, IMAGE_SIZE)?,
            Resize::Area => resize_area(set, IMAGE_SIZE, IMAGE_SIZE)?,
            Resize::Bilinear => resize_bilinear(set, IMAGE_SIZE, IMAGE_SIZE)?,
        }
    };
    to_rgb(&sized)
}
