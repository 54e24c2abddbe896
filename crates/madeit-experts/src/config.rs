//! Hyper-parameters of MADE-IT and their validation.

use crate::error::{ExpertsError, Result};
use serde::{Deserialize, Serialize};

/// How the candidate expert's truncated SVD of `dW = W_t - W0` is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CandidateSvd {
    /// Full thin SVD, truncated to the top `r` triplets (deterministic, exact up to `f32`
    /// rounding).
    Exact,
    /// Randomized range finder (Halko, Martinsson, Tropp) through
    /// `madeit_linalg::truncated_svd`: Gaussian sketch of width `r + oversample`,
    /// `power_iters` subspace iterations. Accurate on decaying spectra, less so on flat ones.
    /// The sketch seed of module `m` at step `t` is derived from `seed`, `m` and the task
    /// id, so runs are reproducible and modules get independent sketches.
    Randomized {
        /// Extra sketch columns beyond `r` (typically 10).
        oversample: usize,
        /// Number of power (subspace) iterations (typically 2-4).
        power_iters: usize,
        /// Base seed.
        seed: u64,
    },
    /// The default: [`CandidateSvd::Randomized`] for modules whose smaller side is at least
    /// `min_dim` (CLIP's 768 and 3072 x 768 matrices: 3-4x faster, with the accuracy that
    /// docs/performance.md records on real-shaped, decaying spectra), [`CandidateSvd::Exact`]
    /// below it (the embedded zoo's towers and small test models, where an exact SVD is
    /// cheap and a randomized sketch of a flat spectrum would be loose).
    Auto {
        /// Smallest `min(d_out, d_in)` that takes the randomized path.
        min_dim: usize,
        /// As [`CandidateSvd::Randomized`].
        oversample: usize,
        /// As [`CandidateSvd::Randomized`].
        power_iters: usize,
        /// As [`CandidateSvd::Randomized`].
        seed: u64,
    },
}

impl Default for CandidateSvd {
    fn default() -> Self {
        Self::Auto {
            min_dim: 512,
            oversample: 10,
            power_iters: 2,
            seed: 0,
        }
    }
}

impl CandidateSvd {
    /// The decomposition a `d_out x d_in` module gets: `Auto` resolved to `Exact` or
    /// `Randomized` by the module's shape; the others as they are.
    #[must_use]
    pub fn for_shape(self, d_out: usize, d_in: usize) -> Self {
        match self {
            Self::Auto {
                min_dim,
                oversample,
                power_iters,
                seed,
            } => {
                if d_out.min(d_in) >= min_dim {
                    Self::Randomized {
                        oversample,
                        power_iters,
                        seed,
                    }
                } else {
                    Self::Exact
                }
            }
            other => other,
        }
    }

    /// The base seed of the randomized sketches (0 for `Exact`).
    #[must_use]
    pub fn seed(self) -> u64 {
        match self {
            Self::Randomized { seed, .. } | Self::Auto { seed, .. } => seed,
            Self::Exact => 0,
        }
    }
}

/// How a candidate is compared with the existing experts of its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AffinityMetric {
    /// Projection-based subspace affinity (the method):
    /// `S(a, c) = (s(U_a, U_c) + s(V_a, V_c)) / 2` with
    /// `s(A, B) = ||A^T B||_F^2 / min(r_a, r_b)` (via `madeit_grassmann::expert_affinity`).
    /// In `[0, 1]`, invariant to rotations of either basis.
    #[default]
    Subspace,
    /// Ablation: cosine similarity of the flattened low-rank weights,
    /// `<dW_a, dW_c>_F / (||dW_a||_F ||dW_c||_F)` with `dW = U diag(s) V^T` the expert's
    /// rank-`r` delta (computed from the thin factors:
    /// `<dW_a, dW_c>_F = sum_ij s_a,i (U_a^T U_c)_ij s_c,j (V_a^T V_c)_ij`). In `[-1, 1]`;
    /// defined as 0 when either delta is zero.
    FlatCosine,
}

/// Which affinity scores form the history behind the adaptive threshold
/// `tau_t = mu + kappa * sigma`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HistoryScope {
    /// Every candidate-vs-expert score of every module for steps `2..=t`, the current
    /// step's scores included (all scores of a step are computed before any decision).
    /// One threshold per step, shared by all modules. The default.
    #[default]
    Pooled,
    /// Only the scores of the module itself (steps `2..=t`, current included): one
    /// threshold per module and step. At step 2 a module has one score, so `sigma = 0`
    /// and `tau = mu` equals that score; see [`MadeItConfig::tie_tolerance`] for how ties
    /// are decided.
    PerModule,
}

/// How a candidate is consolidated into the most similar expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MergeRule {
    /// Subspace merging (the method, as in Task Singular Vectors merging):
    /// `U = [U_e U_c]`, `V = [V_e V_c]`, `S = blockdiag(S_e, S_c)`; polar factors
    /// `U_perp`, `V_perp` of `U` and `V`; `M = U_perp S V_perp^T`; the new expert is the
    /// top-`r` SVD of `M`, computed from thin factors (QR of `U_perp`, `V_perp`, SVD of the
    /// small core `R_u S R_v^T`), never forming the dense `d_out x d_in` matrix.
    ///
    /// The polar factor is taken on the numerical column space of `U`: singular
    /// directions of `U` with `sigma_i <= polar_rank_tol * sigma_1` are dropped, giving the
    /// partial isometry `P_k Q_k^T`. When `[U_e U_c]` has full column rank (the generic
    /// case) this is exactly the polar factor; when the two subspaces share directions
    /// (e.g. merging an expert with itself) the exact polar factor would add arbitrary
    /// "spurious" directions from the null space, while the partial isometry does not:
    /// merging two experts with the same `U` and `V` subspaces then gives exactly
    /// `(dW_e + dW_c) / 2`, and merging two experts with orthogonal subspaces gives the
    /// best rank-`r` approximation of `dW_e + dW_c`.
    #[default]
    SubspaceMerge,
    /// Best rank-`r` approximation (Eckart-Young) of `dW_e + dW_c`, from thin factors.
    SumTruncate,
}

/// What the merged model uses for the parameters that are not target modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NonTargetRule {
    /// Keep the pretrained values `theta0` (the method). The default.
    #[default]
    Pretrained,
    /// `theta0 + mean_t tau_t` over the absorbed tasks (running mean of task vectors).
    RunningMean,
}

pub use madeit_stream::TokenAggregation;

/// Hyper-parameters of MADE-IT (serde; missing fields take the defaults below).
///
/// The paper gives neither `rho` nor `kappa`. The defaults `rho = 0.1`, `kappa = 1.0` and
/// class-token routing were picked by a sweep on the embedded zoo's validation splits
/// (`docs/made-it.md`): accuracy peaks at `rho = 0.05-0.1` and plateaus for `kappa >= 1`.
/// Validate with [`MadeItConfig::check`] (done by [`crate::MadeIt::new`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MadeItConfig {
    /// Rank ratio: the expert rank of a `d_out x d_in` module is
    /// `r = max(1, round(rho * min(d_out, d_in)))` (round half away from zero), capped
    /// at `min(d_out, d_in)`. In `(0, 1]`. Default `0.1` (77 for 768 x 768).
    pub rho: f64,
    /// Margin coefficient of the adaptive threshold `tau_t = mu + kappa * sigma`.
    /// Default `1.0`. `+inf` means "never consolidate", `-inf` "always consolidate"
    /// (the threshold is then `±inf` even when `sigma = 0`). Must not be NaN.
    #[serde(with = "crate::serde_ext")]
    pub kappa: f64,
    /// How the candidate's truncated SVD is computed. Default [`CandidateSvd::Auto`]
    /// (randomized from 512 up, exact below).
    pub svd: CandidateSvd,
    /// Affinity between candidate and experts. Default [`AffinityMetric::Subspace`].
    pub affinity: AffinityMetric,
    /// Which scores the threshold statistics use. Default [`HistoryScope::Pooled`].
    pub history: HistoryScope,
    /// How a candidate is consolidated. Default [`MergeRule::SubspaceMerge`].
    pub merge: MergeRule,
    /// Relative rank tolerance of the polar step of [`MergeRule::SubspaceMerge`]: singular
    /// directions of `[U_e U_c]` (and of `[V_e V_c]`) with `sigma_i <= polar_rank_tol *
    /// sigma_1` are dropped. `0` gives the exact polar factor (with arbitrary extra
    /// directions when the subspaces overlap). Default `1e-4`. In `[0, 1)`.
    pub polar_rank_tol: f64,
    /// Tie tolerance `eps` of the consolidation rule. The paper consolidates iff
    /// `S_max > tau_t`. With identical candidates every score is 1, `sigma = 0` and
    /// `tau_t = 1`, so the strict rule would never merge exact duplicates; this crate
    /// consolidates iff
    /// `S_max > tau_t`, **or** `S_max >= tau_t - eps` and `S_max >= 1 - eps`
    /// (a tie at full affinity counts as exceeding the threshold). `eps` absorbs the
    /// `f32` rounding of affinities (about `1e-6`). Default `1e-4`; in `[0, 0.5)`.
    /// An infinite threshold (`kappa = ±inf`) is never tied.
    pub tie_tolerance: f64,
    /// Parameters that are not target modules. Default [`NonTargetRule::Pretrained`].
    pub non_target: NonTargetRule,
    /// Token aggregation of the routing score. Default [`TokenAggregation::ClsOnly`].
    pub token_aggregation: TokenAggregation,
}

impl Default for MadeItConfig {
    fn default() -> Self {
        Self {
            rho: 0.1,
            kappa: 1.0,
            svd: CandidateSvd::default(),
            affinity: AffinityMetric::Subspace,
            history: HistoryScope::Pooled,
            merge: MergeRule::SubspaceMerge,
            polar_rank_tol: 1e-4,
            tie_tolerance: 1e-4,
            non_target: NonTargetRule::Pretrained,
            token_aggregation: TokenAggregation::ClsOnly,
        }
    }
}

impl MadeItConfig {
    /// Validates every field; the error names the field and the reason.
    pub fn check(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| {
            Err(ExpertsError::InvalidConfig { field, reason })
        };
        if !(self.rho.is_finite() && self.rho > 0.0 && self.rho <= 1.0) {
            return bad("rho", format!("must be in (0, 1], got {}", self.rho));
        }
        if self.kappa.is_nan() {
            return bad("kappa", "must not be NaN".to_owned());
        }
        if !(self.polar_rank_tol.is_finite()
            && self.polar_rank_tol >= 0.0
            && self.polar_rank_tol < 1.0)
        {
            return bad(
                "polar_rank_tol",
                format!("must be in [0, 1), got {}", self.polar_rank_tol),
            );
        }
        if !(self.tie_tolerance.is_finite()
            && self.tie_tolerance >= 0.0
            && self.tie_tolerance < 0.5)
        {
            return bad(
                "tie_tolerance",
                format!("must be in [0, 0.5), got {}", self.tie_tolerance),
            );
        }
        if let CandidateSvd::Randomized { power_iters, .. } | CandidateSvd::Auto { power_iters, .. } =
            self.svd
            && power_iters > 64
        {
            return bad(
                "svd.power_iters",
                format!("must be at most 64, got {power_iters}"),
            );
        }
        Ok(())
    }

    /// Expert rank of a `d_out x d_in` module:
    /// `r = clamp(round(rho * min(d_out, d_in)), 1, min(d_out, d_in))`.
    /// Returns 0 only for an empty module (`min(d_out, d_in) = 0`).
    pub fn rank_for(&self, d_out: usize, d_in: usize) -> usize {
        let k = d_out.min(d_in);
        if k == 0 {
            return 0;
        }
        #[allow(clippy::cast_precision_loss)]
        let raw = (self.rho * k as f64).round();
        // `raw` is finite and in [0, k] for a checked config; clamp in any case.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let r = if raw.is_finite() && raw > 0.0 {
            raw as usize
        } else {
            1
        };
        r.clamp(1, k)
    }

    /// The adaptive threshold `tau = mu + kappa * sigma`, with `kappa * sigma` taken as
    /// `±inf` for an infinite `kappa` even when `sigma = 0`.
    pub fn threshold(&self, mean: f64, std: f64) -> f64 {
        if self.kappa.is_infinite() {
            self.kappa
        } else {
            mean + self.kappa * std
        }
    }

    /// The consolidation rule: `s_max > tau`, or a tie within `eps` at full affinity
    /// (`s_max >= tau - eps` and `s_max >= 1 - eps`); see
    /// [`tie_tolerance`](Self::tie_tolerance).
    pub fn consolidates(&self, s_max: f64, tau: f64) -> bool {
        if s_max > tau {
            return true;
        }
        let eps = self.tie_tolerance;
        tau.is_finite() && s_max >= tau - eps && s_max >= 1.0 - eps
    }
}
