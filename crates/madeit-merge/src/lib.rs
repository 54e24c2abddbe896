//! Continual model merging on named tensors.
//!
//! A continual merger ([`ContinualMerger`]) is fed the fine-tuned models of a task stream one
//! at a time ([`absorb`](ContinualMethod::absorb)) — never an earlier fine-tuned model again,
//! never any data — and returns the merged model at any point
//! ([`merged`](ContinualMerger::merged)). Its state can be saved ([`MergerState`]: named
//! tensors plus JSON metadata) and resumed bit-identically ([`resume`]).
//!
//! Notation: `θ_0` pretrained weights, `θ_t` the model fine-tuned on task `t`,
//! `τ_t = θ_t − θ_0` its task vector, `θ^(t)` the merged model after `t` tasks.
//!
//! | method | registry name | update |
//! |---|---|---|
//! | [`Swa`] | `swa` | `θ^(t) = ((t−1) θ^(t−1) + θ_t) / t` |
//! | [`TaskArithmeticFamily`] | `task_arithmetic` | `θ^(t) = θ^(t−1) + λ τ_t`, `λ = 0.3` |
//! | [`TaskArithmeticFamily`] | `ties` | `θ^(t) = θ^(t−1) + λ TIES(θ^(t−1) − θ_0, τ_t)`, keep 20 % |
//! | [`MagMax`] | `magmax` | `θ^(t) = θ_0 + 0.5 maxabs(τ_1, …, τ_t)` |
//! | [`Opcm`] | `opcm` | project `τ_t` off the singular directions of `θ^(t−1) − θ_0`, rescale |
//! | [`MadeItMerger`] | `made_it` | evolve low-rank experts per target module (create or consolidate by subspace affinity); route per input along task-consistent paths |
//! | [`IsoC`] | `c_iso_c` | `θ^(t) = θ_0 + α iso(Σ τ_i)`: per 2-D weight, the sum's singular values replaced by their mean (opt-in) |
//!
//! Every method follows the semantics and defaults of its reference implementation (listed
//! in [`REGISTRY`], one line per method: see `docs/adding-a-method.md`); every parameter tensor takes part. Methods are built from a
//! [`MethodConfig`] (TOML or JSON, `method = "<name>"`, unknown keys rejected, values checked
//! once by [`MethodConfig::check`]).
//!
//! Method code does no I/O: callers load and save [`ParamDict`](madeit_params::ParamDict)s.
//! Work is spread over tensors with rayon.

mod config;
mod contract;
mod error;
pub mod made_it;
mod methods;
mod state;

pub use config::{
    Aggregate, METHODS, MagMaxConfig, MergeMethod, MergeMethodConfig, MethodConfig, MethodInfo,
    OpcmConfig, REGISTRY, SvdPrecision, SwaConfig, TaskArithmeticConfig, TiesConfig, merge_method,
    method_info, resume,
};
pub use contract::ContinualMerger;
pub use error::MergeError;
/// MADE-IT's hyper-parameters (the configuration of `method = "made_it"`).
pub use made_it::MadeItConfig;
/// The stream contract, re-exported: the types every continual method speaks in.
pub use madeit_stream::{
    AdmitError, ContinualMethod, ExpertModel, ExpertRouting, LowRankExpert, LowRankFactors,
    MergedModel, ParameterError, Step, StepReport, TaskId,
};
pub use methods::{
    Consensus, IsoC, IsoCConfig, MadeItMerger, MagMax, Opcm, Sparsifier, Swa, TaskArithmeticFamily,
    iso_c_matrix, made_it_expert_model, opcm_projection, split_rank,
};
pub use state::{
    Fingerprint, MergerState, STATE_FORMAT, STATE_VERSION, StateMetadata, TaskRecord, exact_f64,
};
