//! Test-time continual model merging on the burn vision tower: MINGLE.
//!
//! A *test-time* continual merger is fed, at every step, the fine-tuned model of one more
//! task **and** a few unlabeled samples of that task (never of earlier tasks) together with
//! the task's fixed head; it adapts the merged model to those samples
//! ([`ContinualMethod::absorb`]). Its state can be saved and resumed ([`AdaptState`]). The
//! method code does no I/O: the run loop loads weights, pixels and heads.
//!
//! # MINGLE
//!
//! [`Mingle`] implements *Mixtures of Null-Space Gated Low-Rank Experts for Test-Time
//! Continual Model Merging* (Qiu et al., 2025) with the reference code's behaviour and
//! defaults ([`MingleConfig`]: all six linear maps of every layer, rank 64, `k = 3`,
//! `gamma = 1`, `beta = 0.99`, Adam lr `1e-4`, batch 16, 50 steps, 5 seed samples per class,
//! KL at temperature 2). Per task and target module:
//!
//! | stage | what | where |
//! |---|---|---|
//! | expert | `tau = W_t - W_0`; zero its top `k_eff x k_eff` block in the singular bases of the earlier experts' sum (`k_eff = floor(exp(entropy))`); rank-`r` SVD `B = U_r`, `A = diag(s_r) V_r^T` | [`build_expert`] |
//! | gate | `g_t(X) = w_t^T x + b_t`, `w ~ N(0, 0.01^2)`, `b = 0`; `gbar` = mean over tokens then batch; `y = X (W_0 + sum_e gbar_e B_e A_e)^T + b_0`; earlier gates frozen | [`GateTrainer`] on `madeit-vit`'s gated forward |
//! | adaptation | Adam on `-(1/B) sum softmax(z_t/2) . log_softmax(z/2)` (KL to the fine-tuned model), new gates only | [`GateTrainer`] |
//! | projection | `g <- g - ((g U) * lambda) U^T`, `lambda = exp(-gamma h)`, `h <- beta h + (1-beta) mean(|g U| / ||g||)` | [`GradientProjector`] |
//! | subspace | top-`k` directions of `sum x x^T` of the merged model's module inputs on the seed set; `U <- QR([U | top_k])` | [`top_directions`], [`extend_basis`] |
//!
//! Variants: [`MingleConfig::hard_null_space`] (no relaxation), [`MingleConfig::without_projection`],
//! [`MingleConfig::lightweight`] (q, k, v and fc1 only). Seed samples come from the task's
//! seed split by default; [`SeedSource::TestSplit`] records the paper's draw from the test
//! split, for which [`select_seed_indices`] gives the reference's stratified subset.
//!
//! # Expert rank on small towers
//!
//! The rank of a `d_out x d_in` module is `max(1, min(rank, floor(max_rank_fraction *
//! min(d_out, d_in))))` ([`MingleConfig::effective_rank`]) with `rank = 64` and
//! `max_rank_fraction = 0.5`: unchanged on every CLIP model (ViT-B: 64 of 768), and half
//! the smaller side on small towers, where 64 would turn every expert into its full task
//! vector and leave the projection against earlier experts nothing to choose.
//!
//! # Running it
//!
//! ```text
//! let mut merger = Mingle::new(MingleConfig::default(), vision_config, Device::flex())?;
//! for task in order {
//!     let report = merger.absorb(&theta0, &theta_t, &task, &seed_images, &head)?;
//!     let model = merger.gated_model(&pretrained_tower)?;   // evaluate one task per batch
//!     let state = merger.state()?;                          // save tensors + metadata
//! }
//! ```
//!
//! # Deviations from the reference, all documented where they occur
//!
//! - The teacher logits of the seed set are computed once per task instead of per batch
//!   (identical values: the teacher is deterministic).
//! - The effective rank treats `0 ln 0` as 0 (the reference's `float32` SVD never returns an
//!   exact zero) and raises `exp(H)` by a relative `1e-9` before the floor so that `n` equal
//!   singular values give `n`.
//! - The top-`k` directions of the input covariance use a randomized SVD by default
//!   ([`MingleConfig::subspace_svd`]; `SvdMethod::Exact` is available).

#[macro_use]
mod contract;
mod adamerging;
mod admit;
mod config;
mod entropy;
mod error;
mod expert;
mod mingle;
mod options;
mod persist;
mod projection;
mod seed;
mod state;
mod subspace;
mod tta;

pub use adamerging::{AdaMergingConfig, LW_ADAMERGING, LwAdaMerging};
pub use config::{GateProjection, MINGLE, MingleConfig, SeedSource, SvdMethod, TargetSet};
pub use contract::{AdaptReport, GatedModel, TestTimeExtras, TestTimeMerger, TestTimeStep};
pub use entropy::{ENTROPY_EPSILON, entropy_loss};
pub use error::AdaptError;
pub use expert::{ExpertStats, build_expert, effective_rank, experts_svd, project_out_block};
/// Why the stream refused a task ([`AdaptError::Admission`]).
pub use madeit_stream::AdmitError;
/// A configuration value out of range ([`AdaptError::InvalidParameter`]).
pub use madeit_stream::ParameterError;
/// The stream's one method trait and its step input, re-exported.
pub use madeit_stream::{ContinualMethod, Step};
pub use mingle::Mingle;
pub use options::{AdamOptions, SeedImageOptions, parse_config};
pub use projection::{GradientProjector, NORM_GUARD};
pub use seed::{SeedBatches, SeedImages, select_seed_indices};
pub use state::{ADAPT_STATE_FORMAT, ADAPT_STATE_VERSION, AdaptMetadata, AdaptState};
pub use subspace::{extend_basis, top_directions};
pub use tta::{
    GateTrainer, InputCovariance, SeedPass, SeedTask, mean_kl, seed_pass, teacher_logits,
};

mod wemoe;
pub use wemoe::{LORA_WEMOE, LoraWemoe, WemoeConfig};
