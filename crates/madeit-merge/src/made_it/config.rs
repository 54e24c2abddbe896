//! Hyper-parameters of MADE-IT and their validation.

use madeit_experts::{ExpertsError, Result};
use serde::{Deserialize, Serialize};

pub use madeit_experts::{AffinityMetric, CandidateSvd, MergeRule};

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
/// Validate with [`MadeItConfig::check`] (done by [`super::MadeIt::new`]).
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
    #[serde(with = "madeit_experts::serde_ext")]
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
        // Tolerances in a half-open range `[0, end)`.
        for (field, value, end) in [
            ("polar_rank_tol", self.polar_rank_tol, 1.0),
            ("tie_tolerance", self.tie_tolerance, 0.5),
        ] {
            if !(value.is_finite() && value >= 0.0 && value < end) {
                return bad(field, format!("must be in [0, {end}), got {value}"));
            }
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
