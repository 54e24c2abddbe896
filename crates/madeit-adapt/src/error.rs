//! The error type of this crate.

use madeit_linalg::LinalgError;
use madeit_params::ParamsError;
use madeit_stream::TaskId;
use madeit_vit::{ModuleId, VitError};

/// Everything that can go wrong while configuring a test-time merger, absorbing a task,
/// building its model, or saving and restoring its state.
///
/// Variants about one tensor or module name it; variants about one task name the task. A
/// failed [`absorb`](crate::ContinualMethod::absorb) leaves the merger exactly as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdaptError {
    /// The stream refused the task: a repeated name or checkpoint, a model that does not
    /// match the pretrained one or is not finite, an empty pretrained model, or a pretrained
    /// model other than the stream's (the wrapped error names the task and the tensor).
    #[error(transparent)]
    Admission(#[from] madeit_stream::AdmitError),
    /// A configuration value outside its valid range (found by `check()`), naming the
    /// method, the parameter, the value and the valid range.
    #[error(transparent)]
    InvalidParameter(#[from] madeit_stream::ParameterError),
    /// A configuration that cannot be parsed (bad syntax, an unknown key, a wrong type).
    #[error("invalid configuration for method `{method}`: {message}")]
    InvalidConfig {
        /// Method name.
        method: &'static str,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A target module's weight is missing from a model or is not `[d_out, d_in]`.
    #[error("target weight `{name}`: {reason}")]
    TargetWeight {
        /// The weight name (without the `vision_model.` prefix).
        name: String,
        /// What is wrong.
        reason: String,
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

impl AdaptError {
    /// `value`, the loss of adaptation step `step` of `task`, if it is finite; otherwise
    /// [`AdaptError::NonFiniteLoss`].
    pub(crate) fn finite_loss(task: &TaskId, step: usize, value: f64) -> Result<f64, Self> {
        if value.is_finite() {
            Ok(value)
        } else {
            Err(Self::NonFiniteLoss {
                task: task.clone(),
                step,
                value,
            })
        }
    }
}

impl From<madeit_stream::FactorsError> for AdaptError {
    /// As the tower crate reports it ([`VitError::Factors`], [`VitError::NonFiniteInput`]).
    fn from(e: madeit_stream::FactorsError) -> Self {
        Self::Vit(VitError::from(e))
    }
}
