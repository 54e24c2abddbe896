//! Low-rank expert stores: the experts of one linear module (`dW_e = U_e diag(s_e) V_e^T`,
//! each serving a set of task ids), the target modules of a CLIP vision tower, and the
//! low-rank numerics behind them (candidate SVDs, subspace affinity, consolidation by
//! subspace merging, feature-projection alignment).
//!
//! This crate holds no method. MADE-IT's expert evolution, implicit routing and saved
//! state, which build on it, are `madeit_merge::made_it`.
//!
//! ```
//! use madeit_experts::{AffinityMetric, CandidateSvd, Expert, math};
//! use faer::Mat;
//!
//! // Two rank-1 experts of a 4 x 4 module with the same subspaces have affinity 1.
//! let mut dw = Mat::<f32>::zeros(4, 4);
//! dw[(0, 0)] = 1.0;
//! let a = math::candidate("q", dw.as_ref(), 1, CandidateSvd::Exact, 0, 1)?;
//! let b = math::candidate("q", dw.as_ref(), 1, CandidateSvd::Exact, 0, 2)?;
//! let s = math::affinity("q", AffinityMetric::Subspace, &a, &b)?;
//! assert!((s - 1.0).abs() < 1e-9);
//! # let _: &Expert = &a;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod error;
mod expert;
mod lowrank;
pub mod serde_ext;
mod targets;

pub use config::{AffinityMetric, CandidateSvd, MergeRule};
pub use error::{ExpertsError, Result};
pub use expert::{BASIS_TOLERANCE, Expert, ExpertChange, ModuleExperts};
pub use targets::{ModuleKind, TargetModule, parse_target_key, target_modules};

/// Low-level numerics exposed for tests, benches and analyses.
pub mod math {
    pub use crate::lowrank::{
        affinity, candidate, consolidate, flat_cosine, fpa, frob, top_r_of_factors, truncated_polar,
    };
}
