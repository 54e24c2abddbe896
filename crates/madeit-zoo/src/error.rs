//! The error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while training, exporting or opening a zoo.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZooError {
    /// A file or folder could not be read, written, renamed or removed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file (manifest, stage record, configuration) is malformed.
    #[error("{path}: malformed JSON: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The zoo folder lacks files its manifest promises, or has no manifest.
    #[error("the zoo at {dir} is incomplete: missing {}", missing.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Incomplete {
        /// The zoo folder.
        dir: PathBuf,
        /// The missing files, relative to `dir`.
        missing: Vec<PathBuf>,
    },
    /// The manifest was written by an incompatible version of the format.
    #[error("{path}: zoo format `{found}`, expected `{expected}`")]
    Format {
        /// The manifest.
        path: PathBuf,
        /// The format found.
        found: String,
        /// The format this version reads.
        expected: &'static str,
    },
    /// The zoo folder was made by an earlier version of the recipe.
    #[error(
        "{path}: this zoo was built by an earlier recipe (format `{found}`, this version reads `{expected}`): rebuild it with `madeit zoo build --force`"
    )]
    OutdatedZoo {
        /// The manifest.
        path: PathBuf,
        /// The format found.
        found: String,
        /// The format this version reads.
        expected: &'static str,
    },
    /// No task of that name in the zoo.
    #[error("no task `{name}` in the zoo (tasks: {})", available.join(", "))]
    UnknownTask {
        /// The name asked for.
        name: String,
        /// The names the zoo has.
        available: Vec<String>,
    },
    /// A split that the zoo does not export (only val, seed and test are exported).
    #[error("split `{split}` is not exported by the zoo (only val, seed and test are)")]
    SplitNotExported {
        /// The split asked for.
        split: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration `{field}`: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// Training data is unusable (empty, wrong image size, labels out of range).
    #[error("invalid data for `{what}`: {reason}")]
    InvalidData {
        /// The data set or task.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The loss became NaN or infinite.
    #[error("training `{stage}` diverged at step {step}: loss {loss}")]
    Diverged {
        /// The stage (`pretrain`, `finetune:<task>`).
        stage: String,
        /// The step.
        step: usize,
        /// The loss value.
        loss: f32,
    },
    /// A parameter tensor has an unexpected name or shape.
    #[error("parameter `{name}`: {reason}")]
    Parameter {
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor could not be read back from the compute device.
    #[error("backend: {message}")]
    Backend {
        /// What failed.
        message: String,
    },
    /// An error of the data crate (fetching, reading, splitting, exporting).
    #[error(transparent)]
    Data(#[from] madeit_data::DataError),
    /// An error of the parameter crate (safetensors I/O, shapes).
    #[error(transparent)]
    Params(#[from] madeit_params::ParamsError),
    /// An error of the vision-tower crate (loading, heads).
    #[error(transparent)]
    Vit(#[from] madeit_vit::VitError),
    /// An error of the linear-algebra crate (SVD).
    #[error(transparent)]
    Linalg(#[from] madeit_linalg::LinalgError),
    /// The train split of a zoo task cannot be rebuilt: the zoo does not export it, and
    /// the data cache lacks the source it was cut from.
    #[error(
        "cannot rebuild the train split of task `{task}` from the data cache {}: {reason}; the zoo \
         does not export train splits, they are rebuilt from the cached sources the zoo was \
         built from: fetch them into the cache (the fetch step of `madeit zoo build`, \
         `madeit_data::fetch_sources`) or point to that cache ($MADEIT_CACHE_DIR, default \
         `.cache/madeit`)",
        cache_dir.display()
    )]
    TrainDataUnavailable {
        /// The task.
        task: String,
        /// The data cache searched.
        cache_dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The data given for a zoo task is not the data the zoo was built from (other split
    /// sizes, classes, split seed or seed-split images than the manifest and the exported
    /// splits record).
    #[error(
        "the data of task `{task}` is not the data the zoo was built from: {reason}; rebuild \
         the zoo from this data or use the data cache it was built from"
    )]
    TrainDataMismatch {
        /// The task.
        task: String,
        /// What differs.
        reason: String,
    },
    /// A rayon thread pool could not be built.
    #[error("thread pool: {message}")]
    ThreadPool {
        /// What rayon said.
        message: String,
    },
}

impl ZooError {
    /// An I/O error naming `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// The error of an atomic write through `madeit_params::fs`: its I/O errors keep their
    /// form (naming the file).
    pub(crate) fn from_params(e: madeit_params::ParamsError) -> Self {
        match e {
            madeit_params::ParamsError::Io { path, source } => Self::io(path, source),
            other => Self::Params(other),
        }
    }

    /// A JSON error naming `path`.
    pub(crate) fn json(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Self::Json {
            path: path.into(),
            message: e.to_string(),
        }
    }
}

/// The result type of the crate.
pub type Result<T, E = ZooError> = std::result::Result<T, E>;
