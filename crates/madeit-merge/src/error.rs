//! The error type of this crate.

use madeit_linalg::LinalgError;
use madeit_params::ParamsError;

use crate::TaskId;

/// Everything that can go wrong while configuring a merger, absorbing a task, building the
/// merged model or saving and resuming a stream.
///
/// Variants about one tensor name it (directly or through the wrapped [`ParamsError`]);
/// variants about one task name the task. A failed [`absorb`](crate::ContinualMethod::absorb)
/// leaves the merger exactly as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// The stream refused the task: a repeated name or checkpoint, a model that does not
    /// match the pretrained one or is not finite, an empty pretrained model, or a pretrained
    /// model other than the stream's (the wrapped error names the task and the tensor).
    #[error(transparent)]
    Admission(#[from] madeit_stream::AdmitError),
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
    /// A configuration value outside its valid range (found by `check()`), naming the
    /// method, the parameter, the value and the valid range.
    #[error(transparent)]
    InvalidParameter(#[from] madeit_stream::ParameterError),
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
