//! The error type of the evaluation run loop (loading, evaluating, merging, saving).

use std::path::PathBuf;

use madeit_params::ParamsError;

use crate::EvalError;

/// Everything that can go wrong while running the continual evaluation: reading a benchmark,
/// evaluating a model, feeding a merger, saving or resuming a stream, parsing an experiment.
///
/// Variants about one file name it; variants about one tensor name it (directly or through
/// the wrapped [`ParamsError`]); variants about one task name the task.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A file or folder could not be read, written, renamed or created.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A fine-tuned checkpoint does not have the pretrained model's tensor names, shapes and
    /// dtypes (the wrapped error names the tensor).
    #[error(
        "fine-tuned checkpoint of task `{task}` ({path}) does not match the pretrained model: {source}"
    )]
    CheckpointMismatch {
        /// The task.
        task: String,
        /// The checkpoint file.
        path: PathBuf,
        /// What differs, naming the tensor.
        #[source]
        source: Box<ParamsError>,
    },
    /// A model file could not be read (the wrapped error names the file or tensor).
    #[error("cannot read model weights {path}: {source}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<ParamsError>,
    },
    /// A checkpoint that is not a CLIP vision tower of the benchmark's shape (the wrapped
    /// error names the tensors: missing, unexpected, mis-shaped, non-finite).
    #[error("{}: not a vision tower of the benchmark's shape: {source}", .path.display())]
    Checkpoint {
        /// The checkpoint file or folder.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: Box<madeit_vit::VitError>,
    },
    /// A benchmark file that cannot be used: a key, a path that does not resolve, a dataset,
    /// head or checkpoint that does not fit (the message names the file at fault).
    #[error("{}: {message}", .file.display())]
    Benchmark {
        /// The benchmark file.
        file: PathBuf,
        /// What is wrong, naming the task, key and file involved.
        message: String,
    },
    /// A test split cannot be used with the model or its head.
    #[error("task `{task}`: {reason}")]
    InvalidTask {
        /// The task.
        task: String,
        /// What is wrong.
        reason: String,
    },
    /// A task name that the benchmark does not have.
    #[error("no task `{name}` in the benchmark (tasks: {})", available.join(", "))]
    UnknownTask {
        /// The name asked for.
        name: String,
        /// The names the benchmark has.
        available: Vec<String>,
    },
    /// A task order that is not a permutation of the benchmark's tasks.
    #[error("invalid task order {order:?} for {n_tasks} tasks: {reason}")]
    InvalidOrder {
        /// The order (0-based task indices).
        order: Vec<usize>,
        /// Number of tasks of the benchmark.
        n_tasks: usize,
        /// What is wrong.
        reason: String,
    },
    /// An experiment configuration that cannot be parsed or is out of range (unknown key,
    /// unknown method, empty list, ...).
    #[error("invalid experiment configuration: {message}")]
    InvalidConfig {
        /// What is wrong, naming the key.
        message: String,
    },
    /// An expert model whose experts cannot be attached to the vision tower.
    #[error("expert model: {reason}")]
    Experts {
        /// What is wrong.
        reason: String,
    },
    /// A saved stream checkpoint that does not belong to the stream being resumed, or is
    /// malformed.
    #[error("cannot resume from {path}: {reason}")]
    Resume {
        /// The checkpoint file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A JSON document could not be written or read.
    #[error("{path}: JSON: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the serializer said.
        message: String,
    },
    /// An error of the evaluation protocol (accuracy matrix, metrics).
    #[error(transparent)]
    Protocol(#[from] EvalError),
    /// An error of a merging method.
    #[error(transparent)]
    Merge(Box<madeit_merge::MergeError>),
    /// An error of a test-time merging method (MINGLE).
    #[error(transparent)]
    Adapt(Box<madeit_adapt::AdaptError>),
    /// An error of the vision tower (building the model, forward, heads).
    #[error(transparent)]
    Vit(Box<madeit_vit::VitError>),
    /// An error of the data crate (split files).
    #[error(transparent)]
    Data(Box<madeit_data::DataError>),
    /// An error of the zoo crate (opening a zoo).
    #[error(transparent)]
    Zoo(Box<madeit_zoo::ZooError>),
    /// An error on named tensors that is not about one file.
    #[error(transparent)]
    Params(Box<ParamsError>),
    /// The stream refused a task (C. Fine-Tuned's admission, the same as every merging
    /// method's): a repeated name or checkpoint, a model that does not match the pretrained
    /// one or is not finite, or another pretrained model.
    #[error(transparent)]
    Admission(Box<madeit_merge::AdmitError>),
}

/// `From` impls that box the wrapped errors (keeping `RunError` small).
macro_rules! boxed_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for RunError {
            fn from(e: $ty) -> Self {
                Self::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    Merge(madeit_merge::MergeError),
    Adapt(madeit_adapt::AdaptError),
    Vit(madeit_vit::VitError),
    Data(madeit_data::DataError),
    Zoo(madeit_zoo::ZooError),
    Params(ParamsError),
    Admission(madeit_merge::AdmitError),
);

impl RunError {
    /// An I/O error naming `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A JSON error naming `path`.
    pub(crate) fn json(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Self::Json {
            path: path.into(),
            message: e.to_string(),
        }
    }

    /// An experiment-configuration error.
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::InvalidConfig {
            message: message.into(),
        }
    }
}

/// Writes `bytes` to `path` atomically ([`madeit_params::fs::write_atomic`]: a temporary
/// file in the same folder, `fsync`, rename), creating the folder if needed, so that `path`
/// is never seen half-written.
///
/// # Errors
/// [`RunError::Io`] naming the file.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<(), RunError> {
    madeit_params::fs::write_atomic_creating_parent(path, bytes).map_err(|e| match e {
        ParamsError::Io { path, source } => RunError::Io { path, source },
        other => RunError::Params(Box::new(other)),
    })
}
