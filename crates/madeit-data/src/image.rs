//! [`ImageSet`]: a labelled batch of 8-bit images.

use crate::error::{DataError, Result};

/// A labelled set of `n` images of equal size, stored as 8-bit values.
///
/// `images` holds `n × height × width × channels` bytes in that order (each image row-major,
/// channels interleaved, as image files store them). `labels[i] < class_names.len()` is the
/// class of image `i`. [`ImageSet::validate`] checks these invariants; every function of
/// this crate that returns an `ImageSet` returns a valid one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// Pixel bytes, `n × height × width × channels`, image-major, channels last.
    pub images: Vec<u8>,
    /// Number of images.
    pub n: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Channels per pixel (1 grey, 3 RGB, 4 RGBA).
    pub channels: usize,
    /// Class index of each image.
    pub labels: Vec<u32>,
    /// Class names; `labels` index into this list.
    pub class_names: Vec<String>,
}

impl ImageSet {
    /// Builds a set and checks its invariants (see [`ImageSet::validate`]).
    pub fn new(
        images: Vec<u8>,
        n: usize,
        height: usize,
        width: usize,
        channels: usize,
        labels: Vec<u32>,
        class_names: Vec<String>,
    ) -> Result<Self> {
        let set = Self {
            images,
            n,
            height,
            width,
            channels,
            labels,
            class_names,
        };
        set.validate()?;
        Ok(set)
    }

    /// Checks that `images.len() == n·height·width·channels`, `labels.len() == n`,
    /// every label is below `class_names.len()`, and no dimension is zero.
    pub fn validate(&self) -> Result<()> {
        if self.height == 0 || self.width == 0 || self.channels == 0 {
            return Err(DataError::InvalidImageSet {
                detail: format!(
                    "zero-sized images ({}x{}x{})",
                    self.height, self.width, self.channels
                ),
            });
        }
        let expected =
            self.n
                .checked_mul(self.image_len())
                .ok_or_else(|| DataError::InvalidImageSet {
                    detail: "image buffer size overflows".into(),
                })?;
        if self.images.len() != expected {
            return Err(DataError::InvalidImageSet {
                detail: format!(
                    "{} images of {}x{}x{} need {expected} bytes, got {}",
                    self.n,
                    self.height,
                    self.width,
                    self.channels,
                    self.images.len()
                ),
            });
        }
        if self.labels.len() != self.n {
            return Err(DataError::InvalidImageSet {
                detail: format!("{} images but {} labels", self.n, self.labels.len()),
            });
        }
        let k = self.class_names.len();
        if let Some((i, &l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= k)
        {
            return Err(DataError::InvalidImageSet {
                detail: format!("label {l} of image {i} is outside the {k} classes"),
            });
        }
        Ok(())
    }

    /// Bytes per image: `height · width · channels`.
    pub fn image_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Number of classes, `class_names.len()`.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The bytes of image `i` (`height × width × channels`), or `None` if `i >= n`.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let len = self.image_len();
        self.images
            .get(i.checked_mul(len)?..(i + 1).checked_mul(len)?)
    }

    /// Number of images of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.class_names.len()];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// The images at `indices` (in that order), with their labels and the same classes.
    pub fn subset(&self, indices: &[usize]) -> Result<ImageSet> {
        let len = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * len);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let (img, &label) =
                self.image(i)
                    .zip(self.labels.get(i))
                    .ok_or(DataError::IndexOutOfRange {
                        index: i,
                        n: self.n,
                    })?;
            images.extend_from_slice(img);
            labels.push(label);
        }
        Ok(ImageSet {
            images,
            n: indices.len(),
            height: self.height,
            width: self.width,
            channels: self.channels,
            labels,
            class_names: self.class_names.clone(),
        })
    }

    /// Appends the images of `other`, which must have the same image size, channels and
    /// class names.
    pub fn extend(&mut self, other: &ImageSet) -> Result<()> {
        if (other.height, other.width, other.channels) != (self.height, self.width, self.channels) {
            return Err(DataError::InvalidImageSet {
                detail: format!(
                    "cannot append {}x{}x{} images to {}x{}x{} images",
                    other.height,
                    other.width,
                    other.channels,
                    self.height,
                    self.width,
                    self.channels
                ),
            });
        }
        if other.class_names != self.class_names {
            return Err(DataError::InvalidImageSet {
                detail: "cannot append images with different class names".into(),
            });
        }
        self.images.extend_from_slice(&other.images);
        self.labels.extend_from_slice(&other.labels);
        self.n += other.n;
        Ok(())
    }

    /// Applies `f(src, dst)` to every image, producing `out_h × out_w × out_c` images.
    ///
    /// `f` receives one source image and a zeroed destination buffer of the output size.
    pub(crate) fn map_images(
        &self,
        out_h: usize,
        out_w: usize,
        out_c: usize,
        mut f: impl FnMut(&[u8], &mut [u8]),
    ) -> ImageSet {
        let in_len = self.image_len();
        let out_len = out_h * out_w * out_c;
        let mut images = vec![0u8; self.n * out_len];
        if in_len > 0 && out_len > 0 {
            for (src, dst) in self
                .images
                .chunks_exact(in_len)
                .zip(images.chunks_exact_mut(out_len))
            {
                f(src, dst);
            }
        }
        ImageSet {
            images,
            n: self.n,
            height: out_h,
            width: out_w,
            channels: out_c,
            labels: self.labels.clone(),
            class_names: self.class_names.clone(),
        }
    }

    /// The pixels in `[n, channels, height, width]` order (channels first, as PyTorch
    /// tensors are laid out).
    pub fn to_nchw(&self) -> Vec<u8> {
        let (h, w, c) = (self.height, self.width, self.channels);
        let hw = h * w;
        let mut out = vec![0u8; self.images.len()];
        let len = self.image_len();
        if len == 0 {
            return out;
        }
        for (src, dst) in self.images.chunks_exact(len).zip(out.chunks_exact_mut(len)) {
            for (p, px) in src.chunks_exact(c).enumerate() {
                for (ch, &v) in px.iter().enumerate() {
                    if let Some(d) = dst.get_mut(ch * hw + p) {
                        *d = v;
                    }
                }
            }
        }
        out
    }

    /// Builds a set from pixels in `[n, channels, height, width]` order (the inverse of
    /// [`ImageSet::to_nchw`]), checking the invariants.
    pub fn from_nchw(
        nchw: &[u8],
        n: usize,
        channels: usize,
        height: usize,
        width: usize,
        labels: Vec<u32>,
        class_names: Vec<String>,
    ) -> Result<ImageSet> {
        let len = height * width * channels;
        if Some(nchw.len()) != n.checked_mul(len) {
            return Err(DataError::InvalidImageSet {
                detail: format!(
                    "{n} images of {channels}x{height}x{width} need {} bytes, got {}",
                    n.saturating_mul(len),
                    nchw.len()
                ),
            });
        }
        let hw = height * width;
        let mut images = vec![0u8; nchw.len()];
        if len > 0 {
            for (src, dst) in nchw.chunks_exact(len).zip(images.chunks_exact_mut(len)) {
                for (p, px) in dst.chunks_exact_mut(channels).enumerate() {
                    for (ch, v) in px.iter_mut().enumerate() {
                        if let Some(&s) = src.get(ch * hw + p) {
                            *v = s;
                        }
                    }
                }
            }
        }
        ImageSet::new(images, n, height, width, channels, labels, class_names)
    }

    /// The images at `indices` as normalised `f32` in `[len, channels, height, width]` order:
    /// `x = (byte / 255 − mean[ch]) / std[ch]`.
    ///
    /// `mean` and `std` need one entry per channel (see [`crate::NORM_MEAN`] and
    /// [`crate::NORM_STD`] for the constants used by the zoo).
    pub fn normalized_nchw(
        &self,
        indices: &[usize],
        mean: &[f32],
        std: &[f32],
    ) -> Result<Vec<f32>> {
        let c = self.channels;
        if mean.len() != c || std.len() != c {
            return Err(DataError::InvalidImageSet {
                detail: format!(
                    "normalisation needs {c} means and deviations, got {} and {}",
                    mean.len(),
                    std.len()
                ),
            });
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(DataError::InvalidImageSet {
                detail: format!("normalisation deviation {s} is not positive"),
            });
        }
        let hw = self.height * self.width;
        let mut out = vec![0f32; indices.len() * self.image_len()];
        let len = self.image_len();
        for (k, &i) in indices.iter().enumerate() {
            let img = self.image(i).ok_or(DataError::IndexOutOfRange {
                index: i,
                n: self.n,
            })?;
            let dst = out
                .get_mut(k * len..(k + 1) * len)
                .ok_or(DataError::IndexOutOfRange {
                    index: k,
                    n: indices.len(),
                })?;
            for (p, px) in img.chunks_exact(c).enumerate() {
                for ((ch, &v), (m, s)) in px.iter().enumerate().zip(mean.iter().zip(std)) {
                    if let Some(d) = dst.get_mut(ch * hw + p) {
                        *d = (f32::from(v) / 255.0 - m) / s;
                    }
                }
            }
        }
        Ok(out)
    }
}
