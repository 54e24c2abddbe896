//! MADE-IT's engine: expert evolution, implicit routing and its saved state.
//!
//! MADE-IT ("Manifold-Aware Dynamic Expert Evolution and Implicit rouTing") keeps, for
//! every target linear module `m` of a vision transformer (the `q, k, v, out_proj, fc1,
//! fc2` weights of every encoder layer, PyTorch `[out, in]` layout), a set of low-rank
//! experts `dW_e = U_e diag(s_e) V_e^T`, each serving a set of task ids.
//!
//! - [`MadeIt::absorb`] takes one fine-tuned model: per module the candidate is the top-`r`
//!   SVD of `dW = W_t - W0`, `r = max(1, round(rho * min(d_out, d_in)))`; it is compared
//!   with the module's experts by the subspace affinity
//!   `S(a, c) = (s(U_a, U_c) + s(V_a, V_c)) / 2`, `s(A, B) = ||A^T B||_F^2 / r`; it is
//!   consolidated into the most similar expert if `S_max` exceeds the adaptive threshold
//!   `tau_t = mu + kappa * sigma` of the affinity history, and becomes a new expert
//!   otherwise ([`MadeItConfig`] documents every choice and option).
//! - [`MadeIt::route`] picks one expert per module for an input from the module inputs
//!   of a `theta0` forward pass, by feature projection alignment
//!   `FPA(X, e) = ||X V_e||_F / ||X||_F` and task-set propagation from an anchor module
//!   (see [`routing`]).
//! - [`MadeIt::materialize`] builds `theta0 + U diag(s) V^T` for a chosen path.
//! - [`store`] saves and loads the whole state (one safetensors file plus a JSON
//!   manifest, written atomically); it is the only module that does I/O.
//!
//! The experts themselves and their numerics are `madeit-experts`'s ([`Expert`],
//! [`ModuleExperts`], [`math`]); [`crate::MadeItMerger`] runs this engine as a continual
//! merger of the registry (`method = "made_it"`).
//!
//! ```
//! use madeit_merge::made_it::{MadeIt, MadeItConfig};
//! use madeit_params::{ParamDict, Tensor};
//!
//! // A one-layer "model" with a 4x4 q_proj.
//! let key = "encoder.layers.0.self_attn.q_proj.weight";
//! let mut pre = ParamDict::new();
//! pre.insert(key, Tensor::new(vec![4, 4], vec![0.0; 16])?);
//! let mut ft = ParamDict::new();
//! let mut w = vec![0.0; 16];
//! w[0] = 1.0; // dW = e1 e1^T
//! ft.insert(key, Tensor::new(vec![4, 4], w)?);
//!
//! let config = MadeItConfig { rho: 0.25, ..MadeItConfig::default() }; // r = 1
//! let mut made_it = MadeIt::new(config)?;
//! let report = made_it.absorb(&pre, &ft, 7)?;
//! assert_eq!(report.created(), 1);
//! let path = made_it.task_path(7)?;
//! let merged = made_it.materialize(&pre, &path)?;
//! assert!((merged.get(key)?.data()[0] - 1.0).abs() < 1e-6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod evolve;
pub mod routing;
pub mod store;

pub use config::{
    AffinityMetric, CandidateSvd, HistoryScope, MadeItConfig, MergeRule, NonTargetRule,
    TokenAggregation,
};
pub use evolve::{AbsorbReport, Action, MadeIt, ModuleReport, NonTargetMean, ThresholdStats};
/// The experts, their target modules and their numerics, from `madeit-experts`.
pub use madeit_experts::{
    BASIS_TOLERANCE, Expert, ExpertsError, ModuleExperts, ModuleKind, TargetModule, math,
    parse_target_key, target_modules,
};
pub use routing::{FeatureBatch, RoutePath, route_from_scores};
