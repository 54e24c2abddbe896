//! Tasks of a stream, what one step reports, and the models a continual method returns.

use std::fmt;

use faer::MatRef;
use indexmap::IndexMap;
use madeit_params::{ParamDict, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Fingerprint, LowRankFactors, exact_f64};

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

/// What one step of a stream (one task absorbed) did.
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

/// A low-rank expert `ΔW = U diag(s) V^T` on top of one pretrained linear weight, and the
/// tasks it serves.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LowRankExpert {
    /// The factors of `ΔW` (`[out, in]`).
    pub factors: LowRankFactors,
    /// The tasks this expert serves.
    pub tasks: Vec<TaskId>,
}

impl LowRankExpert {
    /// An expert with `factors`, serving `tasks`.
    #[must_use]
    pub fn new(factors: LowRankFactors, tasks: Vec<TaskId>) -> Self {
        Self { factors, tasks }
    }

    /// The `[out, r]` factor `U diag(s)` of the exchange form `ΔW = up · down`.
    #[must_use]
    pub fn up(&self) -> Tensor {
        let f = &self.factors;
        let r = f.rank();
        let data: Vec<f32> = f
            .u()
            .chunks_exact(r)
            .flat_map(|row| row.iter().zip(f.s()).map(|(u, s)| u * s))
            .collect();
        Tensor::from_mat(MatRef::from_row_major_slice(&data, f.d_out(), r))
    }

    /// The `[r, in]` factor `V^T` of the exchange form `ΔW = up · down`.
    #[must_use]
    pub fn down(&self) -> Tensor {
        let f = &self.factors;
        Tensor::from_mat(MatRef::from_row_major_slice(f.v(), f.d_in(), f.rank()).transpose())
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
    /// outward from it (`madeit_merge::made_it::routing`).
    MadeItPaths {
        /// Which tokens of a module input enter the score.
        tokens: TokenAggregation,
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
    /// Every expert's factors in one dict, in module then expert order:
    /// `{module}.expert{e}.up` (`[out, r]`) and `{module}.expert{e}.down` (`[r, in]`), the
    /// names `madeit merge` and the Python package write them under.
    #[must_use]
    pub fn factor_dict(&self) -> ParamDict {
        let mut factors = ParamDict::new();
        for (name, experts) in &self.experts {
            for (e, x) in experts.iter().enumerate() {
                factors.insert(format!("{name}.expert{e}.up"), x.up());
                factors.insert(format!("{name}.expert{e}.down"), x.down());
            }
        }
        factors
    }

    /// The task names each expert serves, per module: `tasks[module][e]` for the expert
    /// `{module}.expert{e}` of [`factor_dict`](Self::factor_dict).
    #[must_use]
    pub fn expert_tasks(&self) -> IndexMap<String, Vec<Vec<String>>> {
        self.experts
            .iter()
            .map(|(name, experts)| {
                let tasks = experts
                    .iter()
                    .map(|x| x.tasks.iter().map(|t| t.as_str().to_owned()).collect())
                    .collect();
                (name.clone(), tasks)
            })
            .collect()
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
    /// The dense weights, or `None` for an expert model.
    #[must_use]
    pub fn into_dense(self) -> Option<ParamDict> {
        match self {
            Self::Dense(p) => Some(p),
            Self::Experts(_) => None,
        }
    }
}

/// One absorbed task, as recorded in the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRecord {
    /// Task name.
    pub task: TaskId,
    /// Fingerprint of the task's fine-tuned model. The pretrained model is pinned by its own
    /// fingerprint, so this identifies the task vector `τ = θ_t − θ_0` exactly.
    pub fingerprint: Fingerprint,
    /// `‖τ_t‖₂` (exact bits).
    #[serde(with = "exact_f64")]
    pub task_vector_norm: f64,
}

/// How a routing score aggregates the tokens of a module's input: `madeit-params`'s one
/// definition, shared with the vision tower's scored forward.
pub use madeit_params::modules::TokenAggregation;
