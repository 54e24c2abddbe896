//! The error type of this crate.

use madeit_linalg::LinalgError;
use madeit_params::ParamsError;
use madeit_stream::{Fingerprint, TaskId};
use madeit_vit::{ModuleId, VitError};

/// Everything that can go wrong while configuring a test-time merger, absorbing a task,
/// building its model, or saving and restoring its state.
///
/// Variants about one tensor or module name it; variants about one task name the task. A
/// failed [`absorb`](crate::TestTimeMerger::absorb) leaves the merger exactly as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdaptError {
    /// A configuration value outside its valid range.
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
    /// A configuration that cannot be parsed (bad syntax, an unknown key, a wrong type).
    #[error("invalid configuration for method `{method}`: {message}")]
    InvalidConfig {
        /// Method name.
        method: &'static str,
        /// The parser's message, naming the key.
        message: String,
    },
    /// The fine-tuned model of a task does not have the pretrained model's tensor names,
    /// shapes and dtypes (the wrapped error names the tensor).
    #[error("fine-tuned model of task `{task}` does not match the pretrained model: {source}")]
    Incompatible {
        /// The task being absorbed.
        task: TaskId,
        /// What differs, naming the tensor.
        #[source]
        source: ParamsError,
    },
    /// A model holds a NaN or an infinity (the wrapped error names the tensor and index).
    #[error("{which} model of task `{task}` is not finite: {source}")]
    NonFinite {
        /// The task being absorbed.
        task: TaskId,
        /// `"fine-tuned"` or `"pretrained"`.
        which: &'static str,
        /// The first non-finite value, naming the tensor.
        #[source]
        source: ParamsError,
    },
    /// A target module's weight is missing from a model or is not `[d_out, d_in]`.
    #[error("target weight `{name}`: {reason}")]
    TargetWeight {
        /// The weight name (without the `vision_model.` prefix).
        name: String,
        /// What is wrong.
        reason: String,
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
    /// The unlabeled seed samples of a task are unusable.
    #[error("seed samples of task `{task}`: {reason}")]
    SeedData {
        /// The task.
        task: TaskId,
        /// What is wrong (empty set, wrong pixel count, NaN).
        reason: String,
    },
    /// The task head does not fit the model.
    #[error("head of task `{task}`: {reason}")]
    Head {
        /// The task.
        task: TaskId,
        /// What is wrong.
        reason: String,
    },
    /// The test-time adaptation loss became NaN or infinite.
    #[error("test-time adaptation of task `{task}` diverged: loss {value} at step {step}")]
    NonFiniteLoss {
        /// The task.
        task: TaskId,
        /// Optimisation step (0-based).
        step: usize,
        /// The loss value.
        value: f64,
    },
    /// A gradient, gate or subspace that does not fit its module.
    #[error("module {module}: {reason}")]
    Module {
        /// The module.
        module: ModuleId,
        /// What is wrong.
        reason: String,
    },
    /// A linear-algebra routine failed on a module's matrix.
    #[error("linear algebra failed on {what} of module {module}: {source}")]
    Linalg {
        /// The module.
        module: ModuleId,
        /// Which matrix (`"task vector"`, `"earlier experts"`, `"input covariance"`, ...).
        what: &'static str,
        /// The underlying error.
        #[source]
        source: LinalgError,
    },
    /// An error of the vision tower (loading weights, a forward, a head).
    #[error(transparent)]
    Vit(#[from] VitError),
    /// An error on named tensors.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// A saved state that cannot be restored into this merger.
    #[error("cannot restore state into method `{method}`: {reason}")]
    InvalidState {
        /// Method that was asked to restore.
        method: &'static str,
        /// What is wrong with the state.
        reason: String,
    },
    /// A tensor of a saved state is missing or malformed.
    #[error("state of method `{method}`, tensor `{name}`: {reason}")]
    StateTensor {
        /// Method name.
        method: &'static str,
        /// The tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<madeit_stream::AdmitError> for AdaptError {
    /// A task the stream's admission refused, as this crate's variant of the same name.
    fn from(e: madeit_stream::AdmitError) -> Self {
        use madeit_stream::AdmitError as A;
        match e {
            A::DuplicateTaskName { task } => Self::DuplicateTaskName { task },
            A::EmptyModel => Self::EmptyModel,
            A::Incompatible { task, source } => Self::Incompatible { task, source },
            A::NonFinite { task, source } => Self::NonFinite {
                task,
                which: "fine-tuned",
                source,
            },
            A::NonFinitePretrained { task, source } => Self::NonFinite {
                task,
                which: "pretrained",
                source,
            },
            A::PretrainedChanged { expected, got } => Self::PretrainedChanged { expected, got },
            A::DuplicateTask { task, previous } => Self::DuplicateTask { task, previous },
            other => Self::InvalidState {
                method: "stream",
                reason: other.to_string(),
            },
        }
    }
}
