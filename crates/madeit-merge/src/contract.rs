//! The continual-merging contract: a merger absorbs one fine-tuned model at a time and can be
//! asked for the merged model at any point.

use std::fmt;

use indexmap::IndexMap;
use madeit_params::{ParamDict, Tensor};
use serde::{Deserialize, Serialize};

use crate::{MergeError, MergerState, MethodConfig};

/// The name of a task in a stream (for example `"mnist"`). Names are unique within a stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// A task id from its name.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TaskId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for TaskId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// What one [`absorb`](ContinualMerger::absorb) step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Method name.
    pub method: String,
    /// Index of the step, 1-based: the number of tasks absorbed so far, this one included.
    pub step: usize,
    /// The task absorbed.
    pub task: TaskId,
    /// `‖τ_t‖₂ = ‖θ_t − θ_0‖₂` over every parameter (flattened, accumulated in `f64`).
    pub task_vector_norm: f64,
    /// `‖θ^(t) − θ_0‖₂` of the dense merged model after the step (for methods that keep
    /// experts: the norm of what they add to `θ_0`, as each documents).
    pub merged_delta_norm: f64,
    /// Method-specific quantities (for example OPCM's `lambda`), by name.
    pub metrics: IndexMap<String, f64>,
}

/// A low-rank expert `ΔW = up · down` on top of one pretrained linear weight.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LowRankExpert {
    /// `[out, r]` factor (for a truncated SVD `U_r diag(s_r)`, or `U_r`).
    pub up: Tensor,
    /// `[r, in]` factor (for a truncated SVD `V_r^T`, or `diag(s_r) V_r^T`).
    pub down: Tensor,
    /// The tasks this expert serves.
    pub tasks: Vec<TaskId>,
}

impl LowRankExpert {
    /// An expert `ΔW = up · down` serving `tasks`.
    #[must_use]
    pub fn new(up: Tensor, down: Tensor, tasks: Vec<TaskId>) -> Self {
        Self { up, down, tasks }
    }
}

/// How the experts of an [`ExpertModel`] must be chosen for an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ExpertRouting {
    /// Every module picks its expert on its own (the evaluator's router decides how). The
    /// default.
    #[default]
    PerModule,
    /// MADE-IT's path-consistent implicit routing: feature-projection scores
    /// `‖X V_e‖_F / ‖X‖_F` of a backbone pass (experts stored as `up = U diag(s)`,
    /// `down = V^T` with orthonormal `V`), an anchor module, then task-set propagation
    /// outward from it (`madeit_experts::routing`).
    MadeItPaths {
        /// Which tokens of a module input enter the score.
        tokens: madeit_experts::TokenAggregation,
    },
}

/// A backbone with low-rank experts on some of its linear weights; which expert (or which
/// weighted sum of experts) applies to an input is decided by the method's routing.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct ExpertModel {
    /// Every parameter of the model (`θ_0`, or `θ_0` with merged non-target parameters).
    pub backbone: ParamDict,
    /// Experts per target weight name (for example `encoder.layers.0.mlp.fc1.weight`).
    pub experts: IndexMap<String, Vec<LowRankExpert>>,
    /// How experts must be routed ([`ExpertRouting::PerModule`] unless the method says
    /// otherwise).
    pub routing: ExpertRouting,
}

impl ExpertModel {
    /// A model with no experts yet, routed per module.
    #[must_use]
    pub fn new(backbone: ParamDict) -> Self {
        Self {
            backbone,
            experts: IndexMap::new(),
            routing: ExpertRouting::PerModule,
        }
    }

    /// The same model with routing rule `routing`.
    #[must_use]
    pub fn with_routing(mut self, routing: ExpertRouting) -> Self {
        self.routing = routing;
        self
    }
}

/// The result of a continual merger.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MergedModel {
    /// One set of weights for every task (the weight-space methods).
    Dense(ParamDict),
    /// A backbone plus low-rank experts chosen per input (MADE-IT, MINGLE).
    Experts(ExpertModel),
}

impl MergedModel {
    /// The dense weights, or [`MergeError::NotDense`] for an expert model.
    ///
    /// # Errors
    /// [`MergeError::NotDense`] naming `method`.
    pub fn into_dense(self, method: &'static str) -> Result<ParamDict, MergeError> {
        match self {
            Self::Dense(p) => Ok(p),
            Self::Experts(_) => Err(MergeError::NotDense {
                method,
                kind: "low-rank experts on a backbone",
            }),
        }
    }
}

/// A continual merger: it is fed fine-tuned models one task at a time and keeps a merged
/// model, never the earlier fine-tuned models and never any data.
///
/// Every implementation
/// - validates its inputs (names, shapes, dtypes, finiteness, the pretrained model being the
///   same at every step, no task absorbed twice) and returns a typed error naming the problem;
/// - is atomic: a failed [`absorb`](Self::absorb) leaves it unchanged;
/// - can be saved ([`state`](Self::state)) and resumed ([`restore`](Self::restore)); a
///   resumed stream produces bit-identical results to an uninterrupted one;
/// - does no I/O.
///
/// ```
/// use madeit_merge::{ContinualMerger, MethodConfig, TaskId};
/// use madeit_params::{ParamDict, Tensor};
///
/// let dict = |v: [f32; 2]| -> ParamDict {
///     let mut p = ParamDict::new();
///     p.insert("w", Tensor::new(vec![2], v.to_vec()).unwrap());
///     p
/// };
/// let theta0 = dict([0.0, 0.0]);
/// let mut merger = MethodConfig::default_for("task_arithmetic")?.build()?;
/// merger.absorb(&theta0, &dict([1.0, 0.0]), &TaskId::new("a"))?;
/// merger.absorb(&theta0, &dict([0.0, 2.0]), &TaskId::new("b"))?;
/// let merged = merger.merged(&theta0)?;
/// assert_eq!(merged.get("w")?.data(), &[0.3, 0.6]); // θ0 + 0.3 (τ_a + τ_b)
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait ContinualMerger: Send + Sync + fmt::Debug {
    /// The registry name of the method (`"opcm"`, `"ties"`, ...).
    fn method(&self) -> &'static str;

    /// The configuration this merger runs with.
    fn config(&self) -> MethodConfig;

    /// Absorbs the fine-tuned model of one more task.
    ///
    /// `pretrained` must be the same model at every step (checked by fingerprint);
    /// `finetuned` must have exactly its tensor names, shapes and dtypes.
    ///
    /// # Errors
    /// [`MergeError::Incompatible`], [`MergeError::NonFinite`],
    /// [`MergeError::NonFinitePretrained`], [`MergeError::EmptyModel`],
    /// [`MergeError::PretrainedChanged`], [`MergeError::DuplicateTask`],
    /// [`MergeError::DuplicateTaskName`], and method-specific errors
    /// ([`MergeError::Linalg`], [`MergeError::Degenerate`]).
    fn absorb(
        &mut self,
        pretrained: &ParamDict,
        finetuned: &ParamDict,
        task: &TaskId,
    ) -> Result<StepReport, MergeError>;

    /// Number of tasks absorbed so far.
    fn num_tasks(&self) -> usize;

    /// The tasks absorbed so far, in order.
    fn tasks(&self) -> Vec<TaskId>;

    /// The merged model after the tasks absorbed so far.
    ///
    /// # Errors
    /// [`MergeError::EmptyStream`] before the first task, [`MergeError::PretrainedChanged`]
    /// if `pretrained` is not the model the stream was built on.
    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, MergeError>;

    /// The dense merged weights (weight-space methods); tensors keep `pretrained`'s order
    /// and dtypes.
    ///
    /// # Errors
    /// As [`merged_model`](Self::merged_model), and [`MergeError::NotDense`] for methods
    /// that keep experts.
    fn merged(&self, pretrained: &ParamDict) -> Result<ParamDict, MergeError> {
        self.merged_model(pretrained)?.into_dense(self.method())
    }

    /// A snapshot of everything the merger needs to continue the stream: named `f32`
    /// tensors and JSON metadata (configuration, absorbed tasks and their fingerprints,
    /// exact scalars).
    fn state(&self) -> MergerState;

    /// Replaces the merger's state by a snapshot taken with [`state`](Self::state) from a
    /// merger of the same method and configuration.
    ///
    /// # Errors
    /// [`MergeError::InvalidState`] (other method or configuration, malformed metadata) or
    /// [`MergeError::StateTensor`] (a tensor missing or of the wrong shape). On error the
    /// merger is unchanged.
    fn restore(&mut self, state: &MergerState) -> Result<(), MergeError>;
}
