//! The error type of this crate.

use std::path::PathBuf;
use thiserror::Error;

/// Result alias of this crate.
pub type Result<T, E = ExpertsError> = std::result::Result<T, E>;

/// Everything that can go wrong in `madeit-experts`.
///
/// Every variant names the module, tensor, field or file involved.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ExpertsError {
    /// A configuration field is out of range.
    #[error("invalid MADE-IT config: `{field}` {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A task id was absorbed before.
    #[error("task {task} has already been absorbed")]
    DuplicateTask {
        /// The repeated task id.
        task: u32,
    },
    /// A parameter dictionary has no target module (q, k, v, out_proj, fc1, fc2 weights).
    #[error(
        "no target module (encoder.layers.N.{{self_attn.{{q,k,v,out}}_proj,mlp.{{fc1,fc2}}}}.weight) found"
    )]
    NoTargetModules,
    /// A target-module key names a tensor that is not a matrix.
    #[error("target module `{name}` is not a matrix (shape {shape:?})")]
    NotAMatrix {
        /// The tensor name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// Two tensors that must have the same shape do not.
    #[error("shape mismatch for `{name}`: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// The tensor (or module) name.
        name: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Actual shape.
        got: Vec<usize>,
    },
    /// A key present in one dictionary is missing from the other.
    #[error("`{name}` is missing from the {dict} parameters")]
    MissingTensor {
        /// The tensor name.
        name: String,
        /// Which dictionary lacks it (`"pretrained"`, `"fine-tuned"`).
        dict: &'static str,
    },
    /// The target modules of a checkpoint differ from those of the earlier steps.
    #[error("target module set changed: {reason}")]
    ModuleSetMismatch {
        /// What differs.
        reason: String,
    },
    /// A value is NaN or infinite.
    #[error("`{name}` has a non-finite value at flat index {index}")]
    NonFinite {
        /// The tensor, module or feature matrix involved.
        name: String,
        /// Flat (row-major) index of the first offending element.
        index: usize,
    },
    /// A module name that the expert set does not know.
    #[error("unknown module `{name}`")]
    UnknownModule {
        /// The name asked for.
        name: String,
    },
    /// An expert index out of range.
    #[error("module `{module}` has {count} experts, index {index} is out of range")]
    ExpertIndex {
        /// The module.
        module: String,
        /// The index asked for.
        index: usize,
        /// Number of experts of that module.
        count: usize,
    },
    /// An operation needs at least one absorbed task.
    #[error("no task has been absorbed yet: there are no experts")]
    NoExperts,
    /// An expert's factors are inconsistent.
    #[error("invalid expert of module `{module}`: {reason}")]
    InvalidExpert {
        /// The module.
        module: String,
        /// What is wrong.
        reason: String,
    },
    /// The state assembled by `madeit_merge::made_it::MadeIt::from_parts` breaks an invariant.
    #[error("inconsistent MADE-IT state: {reason}")]
    InconsistentState {
        /// Which invariant.
        reason: String,
    },
    /// Routing features do not match the modules.
    #[error("routing features: {reason}")]
    Features {
        /// What is wrong (names the module).
        reason: String,
    },
    /// A route path does not match the modules.
    #[error("route path: {reason}")]
    Path {
        /// What is wrong.
        reason: String,
    },
    /// Routing found no expert compatible with the propagated task set. Cannot happen
    /// for a state that satisfies the task-partition invariant (checked by
    /// `madeit_merge::made_it::MadeIt::from_parts` and kept by `absorb`).
    #[error("routing found no expert of module `{module}` consistent with the task set")]
    RoutingInvariant {
        /// The module where propagation failed.
        module: String,
    },
    /// An error from `madeit-params`.
    #[error(transparent)]
    Params(#[from] madeit_params::ParamsError),
    /// An error from `madeit-linalg`, with the module it happened in.
    #[error("linear algebra failed in {context}: {source}")]
    Linalg {
        /// What was being computed (names the module).
        context: String,
        /// The underlying error.
        #[source]
        source: madeit_linalg::LinalgError,
    },
    /// An error from `madeit-grassmann`, with the module it happened in.
    #[error("subspace computation failed in {context}: {source}")]
    Grassmann {
        /// What was being computed (names the module).
        context: String,
        /// The underlying error.
        #[source]
        source: madeit_grassmann::GrassmannError,
    },
    /// An I/O error on a store file.
    #[error("I/O error on `{path}`: {source}")]
    StoreIo {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A store file is malformed (unparsable manifest, bad safetensors header, ...).
    #[error("malformed store file `{path}`: {message}")]
    StoreFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The manifest was written by an unsupported format version.
    #[error(
        "store manifest `{path}` has format version {found}, this build reads version {supported}"
    )]
    StoreVersion {
        /// The manifest.
        path: PathBuf,
        /// Version found in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The tensor file does not match what the manifest recorded for it.
    #[error("store tensor file `{path}` does not match its manifest: {message}")]
    StoreMismatch {
        /// The tensor file.
        path: PathBuf,
        /// Which check failed (size, checksum).
        message: String,
    },
    /// A tensor the manifest needs is absent from the tensor file.
    #[error("store tensor file `{path}` lacks tensor `{tensor}`")]
    StoreMissingTensor {
        /// The tensor file.
        path: PathBuf,
        /// The missing tensor.
        tensor: String,
    },
    /// The tensor file has a tensor the manifest does not account for.
    #[error("store tensor file `{path}` has unexpected tensor `{tensor}`")]
    StoreUnexpectedTensor {
        /// The tensor file.
        path: PathBuf,
        /// The unexpected tensor.
        tensor: String,
    },
    /// A stored tensor is invalid (dtype, shape, non-finite values, non-orthonormal basis).
    #[error("store tensor `{tensor}` in `{path}` is invalid: {message}")]
    StoreTensor {
        /// The tensor file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// The manifest's content violates an invariant of the expert state.
    #[error("store `{path}` is inconsistent: {source}")]
    StoreInvalid {
        /// The manifest.
        path: PathBuf,
        /// The violated invariant.
        #[source]
        source: Box<ExpertsError>,
    },
}
