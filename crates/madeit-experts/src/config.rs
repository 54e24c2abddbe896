//! Options of the low-rank expert operations: how a candidate's SVD is computed, how two
//! experts are compared and how one is consolidated into another.

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
