//! The error type of this crate.

use madeit_linalg::LinalgError;
use madeit_params::ParamsError;

use crate::{Fingerprint, TaskId};

/// Everything that can go wrong while configuring a merger, absorbing a task, building the
/// merged model or saving and resuming a stream.
///
/// Variants about one tensor name it (directly or through the wrapped [`ParamsError`]);
/// variants about one task name the task. A failed [`absorb`](crate::ContinualMerger::absorb)
/// leaves the merger exactly as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// The fine-tuned model of a task does not have the same tensor names, shapes and dtypes
    /// as the pretrained model (the wrapped error names the tensor).
    #[error("fine-tuned model of task `{task}` does not match the pretrained model: {source}")]
    Incompatible {
        /// The task being absorbed.
        task: TaskId,
        /// What differs, naming the tensor.
        #[source]
        source: ParamsError,
    },
    /// The fine-tuned model of a task holds a NaN or an infinity (the wrapped error names the
    /// tensor and the flat index).
    #[error("fine-tuned model of task `{task}` is not finite: {source}")]
    NonFinite {
        /// The task being absorbed.
        task: TaskId,
        /// The first non-finite value, naming the tensor.
        #[source]
        source: ParamsError,
    },
    /// The pretrained model holds a NaN or an infinity.
    #[error("pretrained model is not finite: {source}")]
    NonFinitePretrained {
        /// The first non-finite value, naming the tensor.
        #[source]
        source: ParamsError,
    },
    /// The pretrained model has no tensors or no elements.
    #[error("pretrained model has no parameters")]
    EmptyModel,
    /// The pretrained model passed now is not the one the stream started with.
    #[error(
        "pretrained model differs from the one this stream started with (fingerprint {got}, expected {expected})"
    )]
    PretrainedChanged {
        /// Fingerprint recorded at the first absorbed task.
        expected: Fingerprint,
        /// Fingerprint of the pretrained model passed now.
        got: Fingerprint,
    },
    /// The fine-tuned model is bit-for-bit one that was already absorbed.
    #[error("task `{task}` is an exact duplicate of already absorbed task `{previous}`")]
    DuplicateTask {
        /// The task being absorbed.
        task: TaskId,
        /// The earlier task with the same fingerprint.
        previous: TaskId,
    },
    /// A task with the same name was already absorbed.
    #[error("a task named `{task}` was already absorbed")]
    DuplicateTaskName {
        /// The task name.
        task: TaskId,
    },
    /// The merged model was requested before any task was absorbed.
    #[error("method `{method}` has absorbed no task yet: there is no merged model")]
    EmptyStream {
        /// Method name.
        method: &'static str,
    },
    /// A method name that the registry does not know.
    #[error("unknown merging method `{name}` (available: {available})")]
    UnknownMethod {
        /// The requested name.
        name: String,
        /// The registered names, comma-separated.
        available: String,
    },
    /// A configuration that cannot be parsed: bad syntax, a missing `method`, an unknown
    /// key, a value of the wrong type.
    #[error("invalid configuration{}: {message}", method_suffix(.method.as_deref()))]
    InvalidConfig {
        /// The method, when known.
        method: Option<String>,
        /// What is wrong (the parser's message, naming the key).
        message: String,
    },
    /// A configuration value outside its valid range (found by `check()`).
    #[error("invalid value {value} for `{parameter}` of method `{method}`: {reason}")]
    InvalidParameter {
        /// Method name.
        method: &'static str,
        /// Parameter name.
        parameter: &'static str,
        /// The offending value, rendered.
        value: String,
        /// The valid range.
        reason: &'static str,
    },
    /// A saved state that cannot be restored into this merger.
    #[error("cannot restore state into method `{method}`: {reason}")]
    InvalidState {
        /// Method that was asked to restore.
        method: &'static str,
        /// What is wrong with the state.
        reason: String,
    },
    /// A tensor of a saved state is missing or has the wrong shape.
    #[error("state of method `{method}`: {source}")]
    StateTensor {
        /// Method name.
        method: &'static str,
        /// What differs, naming the tensor.
        #[source]
        source: ParamsError,
    },
    /// A linear-algebra routine failed on a tensor.
    #[error("linear algebra failed on tensor `{tensor}`: {source}")]
    Linalg {
        /// The tensor being processed.
        tensor: String,
        /// The underlying error.
        #[source]
        source: LinalgError,
    },
    /// A step whose result is undefined (for example a zero merged task vector where the
    /// method divides by its norm).
    #[error("method `{method}` cannot absorb task `{task}`: {reason}")]
    Degenerate {
        /// Method name.
        method: &'static str,
        /// The task being absorbed.
        task: TaskId,
        /// Why the step is undefined.
        reason: String,
    },
    /// MADE-IT's expert state rejected a step (no target module, a target module set that
    /// changed between steps, a failed decomposition, ...); the wrapped error names the
    /// module or tensor.
    #[error("method `{method}`: {source}")]
    Experts {
        /// Method name.
        method: &'static str,
        /// What went wrong, naming the module or tensor.
        #[source]
        source: madeit_experts::ExpertsError,
    },
    /// A dense model was requested from a method whose merged model is not dense.
    #[error("method `{method}` does not produce a single dense model (it keeps {kind})")]
    NotDense {
        /// Method name.
        method: &'static str,
        /// What the method produces instead.
        kind: &'static str,
    },
}

fn method_suffix(method: Option<&str>) -> String {
    method.map_or_else(String::new, |m| format!(" for method `{m}`"))
}

impl From<madeit_stream::AdmitError> for MergeError {
    /// A task the stream's admission refused, as this crate's variant of the same name.
    fn from(e: madeit_stream::AdmitError) -> Self {
        use madeit_stream::AdmitError as A;
        match e {
            A::DuplicateTaskName { task } => Self::DuplicateTaskName { task },
            A::EmptyModel => Self::EmptyModel,
            A::Incompatible { task, source } => Self::Incompatible { task, source },
            A::NonFinite { task, source } => Self::NonFinite { task, source },
            A::NonFinitePretrained { source, .. } => Self::NonFinitePretrained { source },
            A::PretrainedChanged { expected, got } => Self::PretrainedChanged { expected, got },
            A::DuplicateTask { task, previous } => Self::DuplicateTask { task, previous },
            other => Self::InvalidState {
                method: "stream",
                reason: other.to_string(),
            },
        }
    }
}
