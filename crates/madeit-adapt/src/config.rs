//! MINGLE's configuration: the paper's defaults, the ablation variants and the options that
//! adapt the method to small models.

use madeit_linalg::TruncatedSvd;
use madeit_stream::ParameterError;
use madeit_vit::{ClipVisionConfig, ModuleId, ModuleKind};
use serde::{Deserialize, Serialize};

use crate::AdaptError;
use crate::options::{AdamOptions, SeedImageOptions, parse_config};

/// Registry name of MINGLE.
pub const MINGLE: &str = "mingle";

/// Which linear modules of every encoder layer receive experts and gates.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetSet {
    /// q, k, v, out_proj, fc1 and fc2 of every layer (the paper's full setting and the
    /// reference configuration's `lora_layer: [attn, mlp]`).
    #[default]
    All,
    /// The paper's lightweight variant: the attention input projections q, k, v and fc1
    /// (`attn.qkv` and `mlp.fc1`; the reference configuration lists `q_proj, k_proj,
    /// v_proj, fc1`). `out_proj` and `fc2` stay pretrained.
    Lightweight,
    /// An explicit list of module kinds (applied to every layer).
    Custom(Vec<ModuleKind>),
}

impl TargetSet {
    /// The module kinds of this set, in forward order, without duplicates.
    #[must_use]
    pub fn kinds(&self) -> Vec<ModuleKind> {
        let wanted: Vec<ModuleKind> = match self {
            Self::All => ModuleKind::ALL.to_vec(),
            Self::Lightweight => vec![ModuleKind::Q, ModuleKind::K, ModuleKind::V, ModuleKind::Fc1],
            Self::Custom(kinds) => kinds.clone(),
        };
        ModuleKind::ALL
            .into_iter()
            .filter(|k| wanted.contains(k))
            .collect()
    }

    /// Every target module of a tower with `config`, in forward order.
    #[must_use]
    pub fn modules(&self, config: &ClipVisionConfig) -> Vec<ModuleId> {
        let kinds = self.kinds();
        (0..config.num_hidden_layers)
            .flat_map(|layer| kinds.iter().map(move |&kind| ModuleId::new(layer, kind)))
            .collect()
    }
}

/// How the gradient of the newest gate weight is constrained (the paper's "null-space
/// constrained gating", section 3.4).
///
/// With `U` (`d x K`, orthonormal) the stored input subspace of earlier tasks of the module
/// and `g` the gate-weight gradient (`1 x d`):
///
/// | variant | update |
/// |---|---|
/// | `Relaxed` | `r_p = |g u_p| / (||g|| + 1e-12)`; `h <- beta h + (1 - beta) r`; `lambda = exp(-gamma h)`; `g <- g - ((g U) * lambda) U^T` |
/// | `Hard` | `g <- g - (g U) U^T` (`lambda = 1`; the relaxed rule with `gamma = 0`) |
/// | `None` | `g` unchanged (earlier gates are still frozen) |
///
/// `h` starts at zero for every task and module. The gate bias is never projected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateProjection {
    /// Adaptive relaxation (the full method).
    #[default]
    Relaxed,
    /// Hard null-space projection (ablation: no relaxation).
    Hard,
    /// No projection (ablation: frozen old gates only).
    None,
}

/// Where the unlabeled seed samples of a task come from. The merger does not load data: this
/// flag tells the run loop which pixels to pass, and is recorded in the state and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedSource {
    /// The task's `seed` split (disjoint from the test split: no test leakage). Default.
    #[default]
    SeedSplit,
    /// `seed_per_class` random samples per class of the *test* split, as the paper and the
    /// reference code do (the seed samples are then also evaluated on).
    TestSplit,
}

/// How a truncated SVD is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SvdMethod {
    /// Full thin SVD, then keep the top triplets (deterministic, exact).
    Exact,
    /// Randomized range finder with power iterations (see [`madeit_linalg::TruncatedSvd`]).
    Randomized {
        /// Extra sample columns.
        oversample: usize,
        /// Power iterations.
        power_iters: usize,
    },
}

impl SvdMethod {
    /// The `madeit-linalg` method, with `seed` for the randomized path.
    #[must_use]
    pub fn to_linalg(self, seed: u64) -> TruncatedSvd {
        match self {
            Self::Exact => TruncatedSvd::Exact,
            Self::Randomized {
                oversample,
                power_iters,
            } => TruncatedSvd::Randomized {
                oversample,
                power_iters,
                seed,
            },
        }
    }
}

/// MINGLE's configuration. `Default` gives the paper's and the reference code's values.
///
/// Keys: see [`parse_config`]. Values are range-checked once by [`check`](Self::check).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MingleConfig {
    /// Modules with experts and gates. Default: all six linear maps of every layer.
    pub targets: TargetSet,
    /// Expert rank `r` (default 64), before the cap of
    /// [`max_rank_fraction`](Self::max_rank_fraction).
    pub rank: usize,
    /// Caps the rank of a `d_out x d_in` module at
    /// `floor(max_rank_fraction * min(d_out, d_in))` (at least 1). Default 0.5.
    ///
    /// The paper's `r = 64` is 1/12 of ViT-B's width, and the cap does not change it on any
    /// CLIP model (ViT-B: 64 <= 384). On small towers (`d = 64`) a rank of 64 would make every
    /// expert the full task vector, and the projection against earlier experts could leave
    /// nothing to remove: capping at half the module's smaller side keeps experts low-rank
    /// and leaves room for later tasks. Set it to 1 to use `rank` as given.
    pub max_rank_fraction: f64,
    /// Project each new task vector off the dominant singular directions of the sum of the
    /// earlier experts before truncating it (default true; the reference always does).
    pub project_experts: bool,
    /// Directions added to a module's input subspace per task, `k` (default 3).
    pub subspace_k: usize,
    /// Relaxation strength `gamma` (default 1); `lambda = exp(-gamma h)`.
    pub gamma: f64,
    /// EMA factor `beta` of the interference score `h` (default 0.99).
    pub beta: f64,
    /// Gradient projection of the newest gate (default: adaptive relaxation).
    pub projection: GateProjection,
    /// Distillation temperature `T` (default 2).
    pub temperature: f64,
    /// Standard deviation of the new gate's weight at initialisation (default 0.01).
    pub gate_init_std: f64,
    /// Bias of the new gate at initialisation (default 0).
    pub gate_init_bias: f64,
    /// SVD of the projected task vector for the rank-`r` expert (default exact, as the
    /// reference's full `torch.linalg.svd`).
    pub expert_svd: SvdMethod,
    /// SVD of the `d x d` input covariance for its top-`k` directions (default randomized
    /// with 10 extra columns and 2 power iterations, `madeit-linalg`'s defaults: the top 3
    /// eigenvectors of a covariance at a fraction of the full decomposition's cost; the
    /// leading eigenvalues of transformer activations are well separated).
    pub subspace_svd: SvdMethod,
    /// Also compute the KL on the seed set with the initial gates (one extra pass over the
    /// seed set), reported as `kl_before`. Default false.
    pub report_initial_kl: bool,
    /// Seed of every random draw (gate initialisation, batch order, randomized SVDs).
    pub seed: u64,
    /// The Adam run of each task (keys `lr`, `adam_beta1`, `adam_beta2`, `adam_epsilon`,
    /// `steps`, `batch_size`; the references' values by default).
    #[serde(flatten)]
    pub adam: AdamOptions,
    /// The seed images (keys `seed_per_class`, `seed_source`; 5 per class from the seed
    /// split by default).
    #[serde(flatten)]
    pub seed_images: SeedImageOptions,
}

impl Default for MingleConfig {
    fn default() -> Self {
        Self {
            targets: TargetSet::All,
            rank: 64,
            max_rank_fraction: 0.5,
            project_experts: true,
            subspace_k: 3,
            gamma: 1.0,
            beta: 0.99,
            projection: GateProjection::Relaxed,
            temperature: 2.0,
            gate_init_std: 0.01,
            gate_init_bias: 0.0,
            expert_svd: SvdMethod::Exact,
            subspace_svd: SvdMethod::Randomized {
                oversample: TruncatedSvd::DEFAULT_OVERSAMPLE,
                power_iters: TruncatedSvd::DEFAULT_POWER_ITERS,
            },
            report_initial_kl: false,
            seed: 42,
            adam: AdamOptions::default(),
            seed_images: SeedImageOptions::default(),
        }
    }
}

impl MingleConfig {
    /// The paper's lightweight variant (q, k, v and fc1 only), other values default.
    #[must_use]
    pub fn lightweight() -> Self {
        Self {
            targets: TargetSet::Lightweight,
            ..Self::default()
        }
    }

    /// Ablation without adaptive relaxation (hard null-space projection).
    #[must_use]
    pub fn hard_null_space() -> Self {
        Self {
            projection: GateProjection::Hard,
            ..Self::default()
        }
    }

    /// Ablation without gradient projection (earlier gates still frozen).
    #[must_use]
    pub fn without_projection() -> Self {
        Self {
            projection: GateProjection::None,
            ..Self::default()
        }
    }

    /// Parses a configuration from JSON text (unknown keys rejected).
    ///
    /// # Errors
    /// [`AdaptError::InvalidConfig`] with the parser's message.
    pub fn from_json_str(text: &str) -> Result<Self, AdaptError> {
        let value = serde_json::from_str(text).map_err(|e| AdaptError::InvalidConfig {
            method: MINGLE,
            message: e.to_string(),
        })?;
        parse_config(MINGLE, value)
    }

    /// The expert rank of a `d_out x d_in` module:
    /// `max(1, min(rank, floor(max_rank_fraction * min(d_out, d_in))))`.
    #[must_use]
    pub fn effective_rank(&self, d_out: usize, d_in: usize) -> usize {
        let side = d_out.min(d_in);
        let cap = (self.max_rank_fraction * side as f64).floor();
        let cap = if cap.is_finite() && cap >= 1.0 {
            cap as usize
        } else {
            1
        };
        self.rank.min(cap).clamp(1, side.max(1))
    }

    /// Validates every value once.
    ///
    /// # Errors
    /// [`AdaptError::InvalidParameter`] naming the parameter and its valid range.
    pub fn check(&self) -> Result<(), AdaptError> {
        let bad = |parameter: &'static str, value: String, reason: &'static str| {
            Err(AdaptError::from(ParameterError::new(
                MINGLE, parameter, value, reason,
            )))
        };
        if self.targets.kinds().is_empty() {
            return bad(
                "targets",
                format!("{:?}", self.targets),
                "must name at least one module kind",
            );
        }
        let positive = [("rank", self.rank), ("subspace_k", self.subspace_k)];
        for (name, v) in positive {
            if v == 0 {
                return bad(name, v.to_string(), "must be at least 1");
            }
        }
        if !(self.max_rank_fraction > 0.0 && self.max_rank_fraction <= 1.0) {
            return bad(
                "max_rank_fraction",
                self.max_rank_fraction.to_string(),
                "must lie in (0, 1]",
            );
        }
        if !(self.gamma >= 0.0 && self.gamma.is_finite()) {
            return bad("gamma", self.gamma.to_string(), "must be finite and >= 0");
        }
        if !(0.0..1.0).contains(&self.beta) {
            return bad("beta", self.beta.to_string(), "must lie in [0, 1)");
        }
        self.adam.check(MINGLE)?;
        self.seed_images.check(MINGLE)?;
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad(
                "temperature",
                self.temperature.to_string(),
                "must be finite and > 0",
            );
        }
        if !(self.gate_init_std >= 0.0 && self.gate_init_std.is_finite()) {
            return bad(
                "gate_init_std",
                self.gate_init_std.to_string(),
                "must be finite and >= 0",
            );
        }
        ParameterError::finite(MINGLE, "gate_init_bias", self.gate_init_bias)?;
        for (name, m) in [
            ("expert_svd", self.expert_svd),
            ("subspace_svd", self.subspace_svd),
        ] {
            if let SvdMethod::Randomized { oversample: 0, .. } = m {
                return bad(
                    name,
                    format!("{m:?}"),
                    "a randomized SVD needs oversample >= 1",
                );
            }
        }
        Ok(())
    }
}
