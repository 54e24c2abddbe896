//! The animal silhouettes of the Python package `animal-mnist` 0.4.
//!
//! `animal_mnist/data/Animal_MNIST/animal_data_version_3.gz` is a gzipped pickle of a
//! `uint8` array of shape `(10000, 28, 28)` (white silhouettes on black) and
//! `animal_label_version_3.gz` a gzipped pickle of an `int64` array of shape `(10000,)`
//! with labels `0..10`, in the alphabetical class order of the package description (checked
//! by looking at the images: label 0 is bears, label 9 zebras). Both are read with the
//! restricted, non-executing [`pickle`](crate::readers::pickle) reader.

use crate::error::{DataError, Result};
use crate::image::ImageSet;
use crate::readers::gunzip;
use crate::readers::idx::check_labels;
use crate::readers::pickle::{NpDType, parse_ndarray_pickle};

/// Class names of the animal silhouettes, in label order.
pub const ANIMAL_CLASSES: [&str; 10] = [
    "bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra",
];

/// Reads the gzipped image pickle and the gzipped label pickle into a grey [`ImageSet`].
///
/// The images must be a `uint8` array of shape `(n, height, width)`, the labels an integer
/// array of shape `(n,)` with values in `0..10`.
///
/// # Errors
/// Any error of [`gunzip`] or [`parse_ndarray_pickle`]; [`DataError::PickleStructure`] if
/// the arrays have the wrong rank or dtype; [`DataError::CountMismatch`] if the counts
/// differ; [`DataError::LabelOutOfRange`] for a label outside the ten classes.
pub fn read_animal_mnist(
    data_gz: &[u8],
    data_file: &str,
    labels_gz: &[u8],
    labels_file: &str,
) -> Result<ImageSet> {
    let images = parse_ndarray_pickle(&gunzip(data_gz, data_file)?, data_file)?;
    let labels = parse_ndarray_pickle(&gunzip(labels_gz, labels_file)?, labels_file)?;
    let [n, h, w] = images.shape[..] else {
        return Err(DataError::PickleStructure {
            file: data_file.to_owned(),
            offset: 0,
            detail: format!("images must have shape (n, h, w), found {:?}", images.shape),
        });
    };
    if images.dtype != NpDType::U8 {
        return Err(DataError::PickleStructure {
            file: data_file.to_owned(),
            offset: 0,
            detail: format!("images must be uint8, found {:?}", images.dtype),
        });
    }
    let [n_labels] = labels.shape[..] else {
        return Err(DataError::PickleStructure {
            file: labels_file.to_owned(),
            offset: 0,
            detail: format!("labels must have shape (n,), found {:?}", labels.shape),
        });
    };
    if n_labels != n {
        return Err(DataError::CountMismatch {
            file: labels_file.to_owned(),
            what: format!("number of labels for the images in {data_file}"),
            expected: n,
            got: n_labels,
        });
    }
    let labels = check_labels(labels.to_i64(), ANIMAL_CLASSES.len(), labels_file)?;
    ImageSet::new(
        images.data,
        n,
        h,
        w,
        1,
        labels,
        ANIMAL_CLASSES.iter().map(|s| (*s).to_owned()).collect(),
    )
}
