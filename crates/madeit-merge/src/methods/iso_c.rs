//! Continual Iso-C: isotropic merging in the common subspace of the task vectors.
//!
//! Iso-C (Marczak et al., *No Task Left Behind: Isotropic Model Merging with Common and
//! Task-Specific Subspaces*, ICML 2025, arXiv 2502.04959) merges a set of task vectors by
//! summing them and flattening the spectrum of every weight matrix of the sum: with
//! `M = Σ_t τ_t = U diag(σ) V^T` (thin SVD), the merged update is
//! `α · mean(σ) · U V^T`. The continual variant keeps the running sum, so after `t` tasks
//! it is exactly Iso-C of the first `t` task vectors.

use faer::Mat;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatRef, Par};
use indexmap::IndexMap;
use madeit_linalg::{LinalgError, Svd, SvdWorkspace};
use madeit_params::ParamDict;
use madeit_stream::ParameterError;
use serde::{Deserialize, Serialize};

use super::{fold_task_vector, lookup, offset_pretrained, par_build, tensor_like, to_f32};
use crate::config::{MergeMethodConfig, MethodInfo, check_patterns};
use crate::state::Ledger;
use crate::{
    ContinualMerger, ContinualMethod, MergeError, MergedModel, MergerState, MethodConfig, Step,
    StepReport,
};

const METHOD: &str = "c_iso_c";
const SUM_PREFIX: &str = "sum.";

/// Continual Iso-C's configuration.
///
/// Which tensors are matrices follows the reference: every 2-D tensor (linear weights, and
/// also 2-D embedding tables such as CLIP's position embedding) gets the isotropic
/// spectrum, except those whose name contains one of [`exclude`](Self::exclude) (the
/// reference's `exclude_keys`, empty by default). Every other tensor (biases, layer norms,
/// the class embedding, the patch-embedding convolution) is merged as the reference merges
/// it: the mean of the task vectors, scaled by `α`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsoCConfig {
    /// Scale `α` of the merged task vector, `θ = θ_0 + α · ΔIso`. Default 1.0: the
    /// `scaling_factor` of FusionBench's Iso-C configuration. The authors' code has no fixed
    /// value: it picks `α` per model and number of tasks on the validation splits, so tune
    /// it the same way (`madeit run --val`). Alias `scaling_factor`.
    #[serde(default = "default_alpha", alias = "scaling_factor")]
    pub alpha: f64,
    /// Substrings of tensor names that are not treated as matrices even when 2-D (they are
    /// averaged like biases). Default empty.
    #[serde(default)]
    pub exclude: Vec<String>,
}

fn default_alpha() -> f64 {
    1.0
}

impl Default for IsoCConfig {
    fn default() -> Self {
        Self {
            alpha: default_alpha(),
            exclude: Vec::new(),
        }
    }
}

impl MergeMethodConfig for IsoCConfig {
    const INFO: MethodInfo = MethodInfo {
        name: METHOD,
        label: "C. Iso-C",
        title: "Continual Iso-C (isotropic merging in the common subspace)",
        summary: "S = Σ τ_t; per 2-D weight S = U diag(σ) V^T → θ = θ_0 + α · mean(σ) · U V^T; other tensors θ_0 + α · S / t",
        paper: "https://arxiv.org/abs/2502.04959",
        reference: "https://github.com/danielm1405/iso-merging",
        default_run: false,
    };

    fn check(&self) -> Result<(), MergeError> {
        ParameterError::finite(METHOD, "alpha", self.alpha)?;
        check_patterns(METHOD, "exclude", &self.exclude)
    }

    fn build(&self) -> Result<Box<dyn ContinualMerger>, MergeError> {
        Ok(Box::new(IsoC::new(self.clone())?))
    }
}

/// Continual Iso-C: Iso-C (Marczak et al., *No Task Left Behind: Isotropic Model Merging
/// with Common and Task-Specific Subspaces*, ICML 2025, arXiv 2502.04959) of the task
/// vectors absorbed so far. With `M = Σ_t τ_t = U diag(σ) V^T` per weight matrix, the
/// merged update is `α · mean(σ) · U V^T` (see [`IsoCConfig`] for what counts as a matrix
/// and for `α`).
///
/// The state is the running sum `S^(t) = Σ_{i≤t} τ_i` of the task vectors (one `f32`
/// tensor per parameter, each step adding `θ_t − θ_0` in `f64` and rounding once) plus the
/// task ledger. Each step then recomputes the merged update of the sum: for a matrix,
/// `α · mean(σ) · U V^T` over all `min(m, n)` singular triplets of the thin SVD, in `f64`
/// (the reference keeps every triplet too, so the directions of zero singular values of a
/// rank-deficient sum are filled with `mean(σ)`; a zero sum gives a zero update); for any
/// other tensor `α · S^(t) / t`. The update is cached and rebuilt from the sum on
/// [`restore`](ContinualMethod::restore), so a resumed stream merges bit-identically.
#[derive(Debug, Clone)]
pub struct IsoC {
    config: IsoCConfig,
    ledger: Ledger,
    sum: ParamDict,
    update: ParamDict,
}

impl IsoC {
    /// An empty stream.
    ///
    /// # Errors
    /// [`MergeError::InvalidParameter`] for a non-finite `α` or an empty exclude pattern.
    pub fn new(config: IsoCConfig) -> Result<Self, MergeError> {
        config.check()?;
        Ok(Self {
            config,
            ledger: Ledger::default(),
            sum: ParamDict::new(),
            update: ParamDict::new(),
        })
    }

    /// Whether tensor `name` of shape `shape` gets the isotropic spectrum.
    fn is_matrix(&self, name: &str, shape: &[usize]) -> bool {
        shape.len() == 2
            && !self
                .config
                .exclude
                .iter()
                .any(|p| name.contains(p.as_str()))
    }

    /// The merged update `θ^(t) − θ_0` of the running sum after `tasks` tasks, and its
    /// squared norm; `like` gives the names, order and dtypes.
    fn isotropic_update(
        &self,
        like: &ParamDict,
        sum: &ParamDict,
        tasks: usize,
    ) -> Result<(ParamDict, f64), MergeError> {
        let alpha = self.config.alpha;
        #[allow(clippy::cast_precision_loss)]
        let inv_t = 1.0 / tasks.max(1) as f64;
        let names: Vec<&str> = like.keys().collect();
        par_build(&names, |name| {
            let p = lookup(METHOD, like, name)?;
            let s = lookup(METHOD, sum, name)?;
            let values: Vec<f64> = if self.is_matrix(name, s.shape()) {
                let (rows, cols) = (s.shape()[0], s.shape()[1]);
                // Row-major `rows × cols` data is the column-major `cols × rows` transpose;
                // the isotropic map commutes with transposition.
                let a = Mat::<f64>::from_fn(cols, rows, |i, j| f64::from(s.data()[j * cols + i]));
                let iso = iso_c_matrix(a.as_ref()).map_err(|source| MergeError::Linalg {
                    tensor: name.to_owned(),
                    source,
                })?;
                let mut out = Vec::with_capacity(rows * cols);
                for col in iso.col_iter() {
                    out.extend(col.iter().map(|&x| alpha * x));
                }
                out
            } else {
                s.data()
                    .iter()
                    .map(|&x| alpha * f64::from(x) * inv_t)
                    .collect()
            };
            let sq = values.iter().map(|x| x * x).sum();
            let data = values.into_iter().map(to_f32).collect();
            Ok((tensor_like(METHOD, name, p, data)?, sq))
        })
    }
}

/// Iso-C's spectrum flattening of one matrix: `mean(σ) · U V^T` for the thin SVD
/// `A = U diag(σ) V^T` with all `min(m, n)` triplets. A zero matrix maps to zero.
///
/// Its singular values all equal `mean(σ)`, and for a full-rank `A` its column and row
/// spaces are those of `A`.
///
/// # Errors
/// [`LinalgError::EmptyMatrix`], [`LinalgError::NonFinite`] or
/// [`LinalgError::NoConvergence`] from the SVD.
pub fn iso_c_matrix(a: MatRef<'_, f64>) -> Result<Mat<f64>, LinalgError> {
    let (m, n) = a.shape();
    madeit_linalg::check_matrix(a, "a")?;
    if a.col_iter().all(|c| c.iter().all(|&x| x == 0.0)) {
        return Ok(Mat::zeros(m, n));
    }
    let Svd { u, s, v } = SvdWorkspace::with_parallelism(Par::Seq).thin_svd(a)?;
    #[allow(clippy::cast_precision_loss)]
    let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
    let mut out = Mat::<f64>::zeros(m, n);
    matmul(
        out.as_mut(),
        Accum::Replace,
        u.as_ref(),
        v.transpose(),
        mean,
        Par::Seq,
    );
    Ok(out)
}

impl ContinualMethod for IsoC {
    data_free_contract!(METHOD);

    fn absorb(&mut self, input: &Step<'_>) -> Result<StepReport, MergeError> {
        let (pretrained, finetuned) = (input.pretrained, input.finetuned);
        let admitted = self.ledger.admit(input)?;
        let step = self.ledger.tasks.len() + 1;
        let running = (step > 1).then_some(&self.sum);
        let (sum, sum_sq) = fold_task_vector(
            METHOD,
            pretrained,
            finetuned,
            running,
            |f, p| to_f32(f64::from(f) - f64::from(p)),
            |f, p, s| to_f32(f64::from(s) + (f64::from(f) - f64::from(p))),
        )?;
        let (update, update_sq) = self.isotropic_update(pretrained, &sum, step)?;
        self.sum = sum;
        self.update = update;
        let mut metrics = IndexMap::new();
        metrics.insert("sum_norm".to_owned(), sum_sq.sqrt());
        Ok(self
            .ledger
            .commit_step(admitted, METHOD, update_sq.sqrt(), metrics))
    }

    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, MergeError> {
        self.ledger.check_merged(METHOD, pretrained)?;
        offset_pretrained(METHOD, pretrained, &self.update, 1.0).map(MergedModel::Dense)
    }

    fn state(&self) -> Result<MergerState, MergeError> {
        self.ledger.dict_state(self.config(), SUM_PREFIX, &self.sum)
    }

    fn restore(&mut self, state: &MergerState) -> Result<(), MergeError> {
        let (ledger, sum) = Ledger::restore_dict(METHOD, &self.config(), state, SUM_PREFIX)?;
        let update = if ledger.tasks.is_empty() {
            ParamDict::new()
        } else {
            // The sum has the pretrained model's names and shapes; `merged_model` checks them
            // against the pretrained model it is given.
            self.isotropic_update(&sum, &sum, ledger.tasks.len())?.0
        };
        self.sum = sum;
        self.update = update;
        self.ledger = ledger;
        Ok(())
    }
}

impl ContinualMerger for IsoC {
    fn config(&self) -> MethodConfig {
        MethodConfig::IsoC(self.config.clone())
    }
}
