//! The images of one task split, as the evaluator and the test-time methods read them.
//!
//! - [`TaskImages::Packed`]: 8-bit images already at the tower's size (the zoo layout,
//!   [`madeit_data::read_split`]), normalised with madeit-data's [`NORM_MEAN`] /
//!   [`NORM_STD`] batch by batch.
//! - [`TaskImages::Streamed`]: a labelled [`Dataset`] on disk (an image folder or Hugging
//!   Face `datasets` Parquet files). Only its file list and labels are held; every pass
//!   decodes and preprocesses the images on worker threads into a bounded queue
//!   ([`BatchStream`]), so a split is never held decoded in memory.
//!
//! [`ImagesRef`] borrows either (or a bare [`ImageSet`]) for the evaluation functions.

use madeit_data::dataset::Dataset;
use madeit_data::preprocess::{AlphaRule, ClipPreprocess};
use madeit_data::stream::{BatchStream, StreamOptions};
use madeit_data::{ImageSet, NORM_MEAN, NORM_STD};
use madeit_vit::ClipVisionConfig;

use crate::error::RunError;

/// A dataset on disk read through CLIP's preprocessing (see the module docs).
#[derive(Debug, Clone)]
pub struct StreamedImages {
    dataset: Dataset,
    preprocess: ClipPreprocess,
    alpha: AlphaRule,
    workers: Option<usize>,
}

impl StreamedImages {
    /// `dataset` preprocessed by `preprocess`, transparency converted by `alpha`, decoded
    /// on one thread per available core.
    #[must_use]
    pub fn new(dataset: Dataset, preprocess: ClipPreprocess, alpha: AlphaRule) -> Self {
        Self {
            dataset,
            preprocess,
            alpha,
            workers: None,
        }
    }

    /// The same images decoded on `workers` threads (at least one).
    #[must_use]
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers.max(1));
        self
    }

    /// The dataset.
    #[must_use]
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// The preprocessing.
    #[must_use]
    pub fn preprocess(&self) -> &ClipPreprocess {
        &self.preprocess
    }

    /// How transparency becomes RGB.
    #[must_use]
    pub fn alpha(&self) -> AlphaRule {
        self.alpha
    }

    /// `[n, 3, h, w]` batches of `batch` images in dataset order, decoded ahead on worker
    /// threads. At most two batches are in flight beyond the one handed out.
    #[must_use]
    pub fn batches(&self, batch: usize) -> BatchStream {
        let mut options = StreamOptions::new(batch);
        options.queue = 2 * options.batch;
        if let Some(w) = self.workers {
            options.workers = w;
        }
        BatchStream::with_alpha(&self.dataset, &self.preprocess, options, self.alpha)
    }

    /// The images at `indices` (dataset positions, increasing), preprocessed, concatenated.
    ///
    /// # Errors
    /// [`RunError::Data`] for an index past the end or an image that does not decode.
    pub fn pixels(&self, indices: &[usize]) -> Result<Vec<f32>, RunError> {
        let picked = Self {
            dataset: self.dataset.select(indices)?,
            ..self.clone()
        };
        let mut out = Vec::new();
        for b in picked.batches(64) {
            out.extend(b?.pixels);
        }
        Ok(out)
    }
}

/// The images of one task split (see the module docs).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TaskImages {
    /// 8-bit images at the tower's size (the zoo layout).
    Packed(ImageSet),
    /// A dataset on disk, decoded and preprocessed as it is read.
    Streamed(StreamedImages),
}

impl From<ImageSet> for TaskImages {
    fn from(set: ImageSet) -> Self {
        Self::Packed(set)
    }
}

impl From<StreamedImages> for TaskImages {
    fn from(s: StreamedImages) -> Self {
        Self::Streamed(s)
    }
}

impl TaskImages {
    /// A borrowed view.
    #[must_use]
    pub fn as_ref(&self) -> ImagesRef<'_> {
        match self {
            Self::Packed(s) => ImagesRef::Packed(s),
            Self::Streamed(s) => ImagesRef::Streamed(s),
        }
    }

    /// Number of images.
    #[must_use]
    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    /// Whether there is no image.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The class of every image, in order.
    #[must_use]
    pub fn labels(&self) -> Vec<u32> {
        self.as_ref().labels()
    }

    /// Number of classes.
    #[must_use]
    pub fn num_classes(&self) -> usize {
        self.as_ref().num_classes()
    }

    /// The images at `indices` (distinct, increasing for a streamed split), with their
    /// labels and classes.
    ///
    /// # Errors
    /// [`RunError::Data`] for an index past the end.
    pub fn subset(&self, indices: &[usize]) -> Result<Self, RunError> {
        Ok(match self {
            Self::Packed(s) => Self::Packed(s.subset(indices)?),
            Self::Streamed(s) => Self::Streamed(StreamedImages {
                dataset: s.dataset.select(indices)?,
                ..s.clone()
            }),
        })
    }

    /// The images at `indices`, normalised for the tower and concatenated
    /// (`[indices.len(), C, H, W]`, row-major).
    ///
    /// # Errors
    /// [`RunError::Data`] for an index past the end or an image that does not decode.
    pub fn pixels(&self, indices: &[usize]) -> Result<Vec<f32>, RunError> {
        match self {
            Self::Packed(s) => Ok(s.normalized_nchw(indices, &NORM_MEAN, &NORM_STD)?),
            Self::Streamed(s) => s.pixels(indices),
        }
    }
}

/// A borrowed split: what the evaluation functions take.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum ImagesRef<'a> {
    /// 8-bit images at the tower's size.
    Packed(&'a ImageSet),
    /// A dataset streamed through CLIP's preprocessing.
    Streamed(&'a StreamedImages),
}

impl<'a> From<&'a ImageSet> for ImagesRef<'a> {
    fn from(s: &'a ImageSet) -> Self {
        Self::Packed(s)
    }
}

impl<'a> From<&'a StreamedImages> for ImagesRef<'a> {
    fn from(s: &'a StreamedImages) -> Self {
        Self::Streamed(s)
    }
}

impl<'a> From<&'a TaskImages> for ImagesRef<'a> {
    fn from(s: &'a TaskImages) -> Self {
        s.as_ref()
    }
}

impl ImagesRef<'_> {
    /// Number of images.
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Self::Packed(s) => s.n,
            Self::Streamed(s) => s.dataset.len(),
        }
    }

    /// Whether there is no image.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The class of every image, in order.
    #[must_use]
    pub fn labels(&self) -> Vec<u32> {
        match self {
            Self::Packed(s) => s.labels.clone(),
            Self::Streamed(s) => s.dataset.labels(),
        }
    }

    /// Number of classes.
    #[must_use]
    pub fn num_classes(&self) -> usize {
        match self {
            Self::Packed(s) => s.class_names.len(),
            Self::Streamed(s) => s.dataset.classes().len(),
        }
    }

    /// Why these images cannot feed a tower of `config` (`None` when they can): the image
    /// size and channels (of the preprocessing's output, for a streamed split).
    #[must_use]
    pub fn shape_problem(&self, config: &ClipVisionConfig) -> Option<String> {
        let want = (config.num_channels, config.image_size, config.image_size);
        match self {
            Self::Packed(s) => {
                if (s.channels, s.height, s.width) != want {
                    return Some(format!(
                        "test images are {}x{}x{} (channels x height x width), the model \
                         takes {}x{}x{}",
                        s.channels, s.height, s.width, want.0, want.1, want.2
                    ));
                }
                (s.channels != NORM_MEAN.len()).then(|| {
                    format!(
                        "{} channels, the normalisation has {}",
                        s.channels,
                        NORM_MEAN.len()
                    )
                })
            }
            Self::Streamed(s) => {
                let p = &s.preprocess;
                if !p.do_center_crop {
                    return Some(
                        "the preprocessing does not center-crop, so images keep their own \
                         sizes; the model takes square images (set `do_center_crop`)"
                            .to_owned(),
                    );
                }
                let (h, w) = p.crop_size;
                ((3, h, w) != want).then(|| {
                    format!(
                        "the preprocessing gives 3x{h}x{w} images (channels x height x \
                         width), the model takes {}x{}x{}",
                        want.0, want.1, want.2
                    )
                })
            }
        }
    }
}
