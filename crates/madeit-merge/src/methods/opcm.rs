//! OPCM: continual merging by orthogonal projection and norm rescaling.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use indexmap::IndexMap;
use madeit_linalg::{Real, Svd, SvdWorkspace};
use madeit_params::{ParamDict, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{MERGED_PREFIX, check_layout, dense_output, lookup, tensor_like, to_f32};
use crate::state::{
    Ledger, check_state_tensors, exact_f64, export_tensors, import_tensors, read_extra,
};
use crate::{
    ContinualMerger, ContinualMethod, MergeError, MergedModel, MergerState, MethodConfig,
    OpcmConfig, Step, StepReport, SvdPrecision,
};

const METHOD: &str = "opcm";

/// How OPCM treats one parameter tensor at a step `t ≥ 2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A linear weight: `Δ' = λ_{t−1} D + P(τ_t)` with the SVD projection.
    Project,
    /// Any other parameter: `Δ' = λ_{t−1} D + τ_t`.
    Plain,
    /// The reference's `class_embedding` quirk: `Δ' = D`.
    CarryOver,
}

/// Exact scalars of the state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpcmExtra {
    /// `λ_t` of the last step.
    #[serde(with = "exact_f64")]
    lambda: f64,
}

/// OPCM, orthogonal projection-based continual merging (Tang et al. 2025; reference:
/// FusionBench `method/opcm/opcm.py`).
///
/// With `θ^(t)` the merged model, `D = θ^(t−1) − θ_0` per tensor and
/// `n̄_t = mean_{i≤t} ‖τ_i‖` (norms of whole flattened task vectors):
///
/// - `t = 1`: `θ^(1) = θ_1`, `λ_1 = 1`.
/// - `t ≥ 2`, per tensor (see [`OpcmConfig`] for which tensors are linear weights):
///   - linear weight `W` (`m × n`): thin SVD `D = U diag(s) V^T`; split rank `k` =
///     first index with `cumsum(s)/sum(s) > α` (0 if none); with `C = U^T τ_t V`, zero the
///     diagonal of `C` and its block `C[:k,:k]`, `P(τ_t) = U C V^T` (full bases). With thin
///     factors only:
///     `P(τ) = τ − U_k (U_k^T τ V_k) V_k^T − Σ_{i≥k} (u_i^T τ v_i) u_i v_i^T`;
///     `Δ' = λ_{t−1} D + P(τ_t)`;
///   - other parameters: `Δ' = λ_{t−1} D + τ_t`;
///   - `class_embedding` with the quirk on: `Δ' = D`.
///
///   Then `λ_t = ‖Δ'‖ / n̄_t` over all tensors and `θ^(t) = θ_0 + Δ' / λ_t`, so
///   `‖θ^(t) − θ_0‖ = n̄_t`.
///
/// An exactly zero `D` has no singular directions; its SVD is taken as `U = I, V = I,
/// s = 0` (what LAPACK returns, so `k = 0` and only the diagonal of `τ` is removed). For a
/// rank-deficient `D` the singular vectors of its zero singular values are arbitrary, in the
/// reference as here, and so is the diagonal that gets zeroed there; fine-tuned task vectors
/// are full rank.
///
/// The SVDs and projections run in `f32` (the reference's precision; `precision = "f64"`
/// for double), one tensor per thread (faer sequential inside);
/// `Δ'` is held in `f32` between the projection pass and the rescale pass, and merged
/// weights are stored in `f32`.
#[derive(Debug, Clone)]
pub struct Opcm {
    config: OpcmConfig,
    ledger: Ledger,
    merged: ParamDict,
    lambda: f64,
}

/// Result of one tensor's step: `Δ'` in `f32`, `‖Δ'‖²` and the split rank if projected.
struct TensorStep {
    delta: Vec<f32>,
    sum_sq: f64,
    split: Option<(usize, usize)>,
}

impl Opcm {
    /// An empty stream.
    ///
    /// # Errors
    /// [`MergeError::InvalidParameter`] for an `alpha` outside `[0, 1]` or an empty pattern.
    pub fn new(config: OpcmConfig) -> Result<Self, MergeError> {
        MethodConfig::Opcm(config.clone()).check()?;
        Ok(Self {
            config,
            ledger: Ledger::default(),
            merged: ParamDict::new(),
            lambda: 1.0,
        })
    }

    /// `λ_t` after the last step (1 before the second task).
    #[must_use]
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// How tensor `name` is treated at steps `t ≥ 2`.
    pub(crate) fn role(&self, name: &str, t: &Tensor) -> Role {
        let last = name.rsplit('.').next().unwrap_or(name);
        if self.config.class_embedding_quirk && last == "class_embedding" {
            Role::CarryOver
        } else if t.is_matrix()
            && t.numel() > 0
            && name.ends_with(".weight")
            && !self
                .config
                .embedding_patterns
                .iter()
                .any(|p| name.contains(p.as_str()))
        {
            Role::Project
        } else {
            Role::Plain
        }
    }

    /// `Δ'` of one tensor.
    fn step_tensor(
        &self,
        ws: &mut Workspaces,
        name: &str,
        role: Role,
        (p, m, f): (&Tensor, &Tensor, &Tensor),
    ) -> Result<TensorStep, MergeError> {
        let lp = self.lambda;
        let (pd, md, fd) = (p.data(), m.data(), f.data());
        match role {
            Role::Plain | Role::CarryOver => {
                let carry = role == Role::CarryOver;
                let mut sum_sq = 0.0;
                let delta = pd
                    .iter()
                    .zip(md)
                    .zip(fd)
                    .map(|((&p, &m), &f)| {
                        let (p, m, f) = (f64::from(p), f64::from(m), f64::from(f));
                        let d = if carry { m - p } else { lp * (m - p) + (f - p) };
                        sum_sq += d * d;
                        to_f32(d)
                    })
                    .collect();
                Ok(TensorStep {
                    delta,
                    sum_sq,
                    split: None,
                })
            }
            Role::Project => {
                let &[rows, cols] = p.shape() else {
                    return Err(MergeError::StateTensor {
                        method: METHOD,
                        source: madeit_params::ParamsError::NotAMatrix {
                            name: name.to_owned(),
                            shape: p.shape().to_vec(),
                        },
                    });
                };
                let alpha = self.config.alpha;
                let step = match self.config.precision {
                    SvdPrecision::F32 => {
                        project_tensor::<f32>(&mut ws.f32, lp, alpha, (rows, cols), (pd, md, fd))
                    }
                    SvdPrecision::F64 => {
                        project_tensor::<f64>(&mut ws.f64, lp, alpha, (rows, cols), (pd, md, fd))
                    }
                };
                step.map_err(|source| MergeError::Linalg {
                    tensor: name.to_owned(),
                    source,
                })
            }
        }
    }
}

/// Sequential SVD workspaces of both precisions (one per worker thread).
struct Workspaces {
    f32: SvdWorkspace<f32>,
    f64: SvdWorkspace<f64>,
}

impl Workspaces {
    fn new() -> Self {
        Self {
            f32: SvdWorkspace::with_parallelism(Par::Seq),
            f64: SvdWorkspace::with_parallelism(Par::Seq),
        }
    }
}

/// `Δ' = λ_{t−1} D + P(τ_t)` of one `rows × cols` linear weight, computed in `T`; the
/// squared norm is accumulated in `f64`.
fn project_tensor<T: Real>(
    ws: &mut SvdWorkspace<T>,
    lp: f64,
    alpha: f64,
    (rows, cols): (usize, usize),
    (pd, md, fd): (&[f32], &[f32], &[f32]),
) -> Result<TensorStep, madeit_linalg::LinalgError> {
    // Row-major `rows × cols` data is the column-major `cols × rows` transpose. The
    // projection rule commutes with transposition (C -> C^T keeps the diagonal and the
    // leading k × k block), so work on the transposes.
    let (a_rows, a_cols) = (cols, rows);
    let mut d = Mat::<T>::zeros(a_rows, a_cols);
    let mut tau = Mat::<T>::zeros(a_rows, a_cols);
    for (((dc, tc), (pc, mc)), fc) in d
        .col_iter_mut()
        .zip(tau.col_iter_mut())
        .zip(pd.chunks_exact(a_rows).zip(md.chunks_exact(a_rows)))
        .zip(fd.chunks_exact(a_rows))
    {
        for ((((dv, tv), &p), &m), &f) in dc.iter_mut().zip(tc.iter_mut()).zip(pc).zip(mc).zip(fc) {
            let p = f64::from(p);
            *dv = T::from_f64(f64::from(m) - p);
            *tv = T::from_f64(f64::from(f) - p);
        }
    }
    let (k, r) = project_in_place(ws, d.as_ref(), tau.as_mut(), alpha)?;
    let mut delta = vec![0.0f32; pd.len()];
    let mut sum_sq = 0.0;
    for ((dc, pc), out) in d
        .col_iter()
        .zip(tau.col_iter())
        .zip(delta.chunks_exact_mut(a_rows))
    {
        for ((&dv, &pv), o) in dc.iter().zip(pc.iter()).zip(out.iter_mut()) {
            let v = lp * dv.to_f64() + pv.to_f64();
            sum_sq += v * v;
            *o = to_f32(v);
        }
    }
    Ok(TensorStep {
        delta,
        sum_sq,
        split: Some((k, r)),
    })
}

/// Replaces `τ` by OPCM's projection `P(τ)` with respect to the merged task vector `d`
/// (both `m × n`):
/// `P(τ) = τ − U_k (U_k^T τ V_k) V_k^T − Σ_{i≥k} (u_i^T τ v_i) u_i v_i^T`
/// with the thin SVD `d = U diag(s) V^T`, the split rank `k` ([`split_rank`]) and
/// `r = min(m, n)`; returns `(k, r)`.
///
/// # Errors
/// Those of the SVD.
pub(crate) fn project_in_place<T: Real>(
    ws: &mut SvdWorkspace<T>,
    d: MatRef<'_, T>,
    mut tau: MatMut<'_, T>,
    alpha: f64,
) -> Result<(usize, usize), madeit_linalg::LinalgError> {
    let (m, n) = d.shape();
    let r = m.min(n);
    let par = Par::Seq;
    let (zero, one) = (T::from_f64(0.0), T::from_f64(1.0));
    let is_zero = d.col_iter().all(|c| c.iter().all(|&x| x == zero));
    let Svd { u, s, v } = if is_zero {
        Svd {
            u: Mat::from_fn(m, r, |i, j| if i == j { one } else { zero }),
            s: vec![zero; r],
            v: Mat::from_fn(n, r, |i, j| if i == j { one } else { zero }),
        }
    } else {
        ws.thin_svd(d)?
    };
    let s64: Vec<f64> = s.iter().map(|x| x.to_f64()).collect();
    let k = split_rank(&s64, alpha);
    // X = U^T τ (r × n) and V^T (r × n), both column-major.
    let mut x = Mat::<T>::zeros(r, n);
    matmul(
        x.as_mut(),
        Accum::Replace,
        u.transpose(),
        tau.as_ref(),
        one,
        par,
    );
    let vt = v.transpose().to_owned();
    // Y = E V^T (r × n) where E keeps G = U^T τ V on [:k, :k] and on the diagonal:
    // rows < k: G_kk V_k^T with G_kk = X_k V_k; rows i ≥ k: g_i v_i^T, g_i = X_i · v_i.
    let mut y = Mat::<T>::zeros(r, n);
    if k > 0 {
        let mut g = Mat::<T>::zeros(k, k);
        matmul(
            g.as_mut(),
            Accum::Replace,
            x.as_ref().subrows(0, k),
            v.as_ref().subcols(0, k),
            one,
            par,
        );
        matmul(
            y.as_mut().subrows_mut(0, k),
            Accum::Replace,
            g.as_ref(),
            vt.as_ref().subrows(0, k),
            one,
            par,
        );
    }
    if k < r {
        let mut gd = vec![zero; r - k];
        for (xc, vc) in x.col_iter().zip(vt.col_iter()) {
            let (xs, vs) = (xc.subrows(k, r - k), vc.subrows(k, r - k));
            for ((g, &a), &b) in gd.iter_mut().zip(xs.iter()).zip(vs.iter()) {
                *g += a * b;
            }
        }
        for (yc, vc) in y.col_iter_mut().zip(vt.col_iter()) {
            let (ys, vs) = (yc.subrows_mut(k, r - k), vc.subrows(k, r - k));
            for ((o, &g), &b) in ys.iter_mut().zip(&gd).zip(vs.iter()) {
                *o = g * b;
            }
        }
    }
    // τ ← τ − U Y
    matmul(tau.as_mut(), Accum::Add, u.as_ref(), y.as_ref(), -one, par);
    Ok((k, r))
}

/// OPCM's projection of a task-vector block `τ` against a merged task vector `d` (both
/// `m × n`, `f32` or `f64`), as used for every linear weight at steps `t ≥ 2`:
/// `P(τ) = U C V^T` with `C = U^T τ V` (full bases) whose diagonal and leading `k × k` block
/// are zeroed, `d = U diag(s) V^T`, `k` the first index with `cumsum(s)/sum(s) > alpha`
/// (0 if none). Returns `(P(τ), k)`.
///
/// # Errors
/// [`MergeError::Linalg`] (tensor `"tau"`) if the shapes differ, or (tensor `"d"`) if the
/// SVD fails or `d` is empty or not finite.
pub fn opcm_projection<T: Real>(
    d: MatRef<'_, T>,
    tau: MatRef<'_, T>,
    alpha: f64,
) -> Result<(Mat<T>, usize), MergeError> {
    if d.shape() != tau.shape() {
        return Err(MergeError::Linalg {
            tensor: "tau".to_owned(),
            source: madeit_linalg::LinalgError::ShapeMismatch {
                operation: "opcm_projection",
                expected: d.shape(),
                got: tau.shape(),
            },
        });
    }
    let mut out = tau.to_owned();
    let mut ws = SvdWorkspace::with_parallelism(Par::Seq);
    let (k, _) =
        project_in_place(&mut ws, d, out.as_mut(), alpha).map_err(|source| MergeError::Linalg {
            tensor: "d".to_owned(),
            source,
        })?;
    Ok((out, k))
}

/// OPCM's split rank: the first index at which `cumsum(s)/sum(s) > alpha`, or 0 if there is
/// none (including `sum(s) = 0`), as the reference's `argmax` of that boolean vector.
pub fn split_rank(s: &[f64], alpha: f64) -> usize {
    let total: f64 = s.iter().sum();
    let mut acc = 0.0;
    for (i, &x) in s.iter().enumerate() {
        acc += x;
        if acc / total > alpha {
            return i;
        }
    }
    0
}

impl ContinualMethod for Opcm {
    data_free_contract!(METHOD);

    fn absorb(&mut self, input: &Step<'_>) -> Result<StepReport, MergeError> {
        let (pretrained, finetuned, task) = (input.pretrained, input.finetuned, input.task);
        let admitted = self.ledger.admit(input)?;
        let step = self.ledger.tasks.len() + 1;
        let norm = admitted.record.task_vector_norm;
        let names: Vec<&str> = pretrained.keys().collect();
        if step == 1 {
            let merged: ParamDict = names
                .iter()
                .map(|&n| lookup(METHOD, finetuned, n).map(|t| (n.to_owned(), t.clone())))
                .collect::<Result<_, _>>()?;
            self.merged = merged;
            self.lambda = 1.0;
            self.ledger.commit(admitted);
            let mut metrics = IndexMap::new();
            metrics.insert("lambda".to_owned(), 1.0);
            metrics.insert("avg_task_vector_norm".to_owned(), norm);
            return Ok(StepReport {
                method: METHOD.to_owned(),
                step,
                task: task.clone(),
                task_vector_norm: norm,
                merged_delta_norm: norm,
                metrics,
            });
        }
        check_layout(METHOD, pretrained, &self.merged)?;
        #[allow(clippy::cast_precision_loss)]
        let avg_norm = (self
            .ledger
            .tasks
            .iter()
            .map(|r| r.task_vector_norm)
            .sum::<f64>()
            + norm)
            / step as f64;

        // Heaviest tensors first, so that the parallel loop ends balanced.
        let mut order: Vec<(usize, &str, Role, usize)> = names
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let t = lookup(METHOD, pretrained, n)?;
                let role = self.role(n, t);
                let cost = if role == Role::Project {
                    t.numel() * 64
                } else {
                    t.numel()
                };
                Ok((i, n, role, cost))
            })
            .collect::<Result<_, MergeError>>()?;
        order.sort_by(|a, b| b.3.cmp(&a.3).then(a.0.cmp(&b.0)));

        let mut steps: Vec<(usize, TensorStep)> = order
            .par_iter()
            .with_max_len(1)
            .map_init(Workspaces::new, |ws, &(i, name, role, _)| {
                let p = lookup(METHOD, pretrained, name)?;
                let m = lookup(METHOD, &self.merged, name)?;
                let f = lookup(METHOD, finetuned, name)?;
                self.step_tensor(ws, name, role, (p, m, f)).map(|s| (i, s))
            })
            .collect::<Result<_, MergeError>>()?;
        steps.sort_by_key(|s| s.0);

        let total_sq: f64 = steps.iter().map(|s| s.1.sum_sq).sum();
        let lambda = total_sq.sqrt() / avg_norm;
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(MergeError::Degenerate {
                method: METHOD,
                task: task.clone(),
                reason: format!(
                    "rescaling factor λ = ‖Δ'‖ / mean‖τ‖ = {} / {avg_norm} is not a positive number",
                    total_sq.sqrt()
                ),
            });
        }
        let (mut projected, mut split_sum) = (0usize, 0.0f64);
        for (_, s) in &steps {
            if let Some((k, r)) = s.split {
                projected += 1;
                #[allow(clippy::cast_precision_loss)]
                {
                    split_sum += k as f64 / r.max(1) as f64;
                }
            }
        }
        let merged: ParamDict = steps
            .into_par_iter()
            .map(|(i, s)| {
                let name = names.get(i).copied().unwrap_or_default();
                let p = lookup(METHOD, pretrained, name)?;
                let data = p
                    .data()
                    .iter()
                    .zip(&s.delta)
                    .map(|(&a, &d)| to_f32(f64::from(a) + f64::from(d) / lambda))
                    .collect();
                Ok((name.to_owned(), tensor_like(METHOD, name, p, data)?))
            })
            .collect::<Result<Vec<_>, MergeError>>()?
            .into_iter()
            .collect();

        self.merged = merged;
        self.lambda = lambda;
        self.ledger.commit(admitted);
        let mut metrics = IndexMap::new();
        metrics.insert("lambda".to_owned(), lambda);
        metrics.insert("avg_task_vector_norm".to_owned(), avg_norm);
        #[allow(clippy::cast_precision_loss)]
        metrics.insert("projected_tensors".to_owned(), projected as f64);
        #[allow(clippy::cast_precision_loss)]
        metrics.insert(
            "mean_split_fraction".to_owned(),
            if projected > 0 {
                split_sum / projected as f64
            } else {
                0.0
            },
        );
        Ok(StepReport {
            method: METHOD.to_owned(),
            step,
            task: task.clone(),
            task_vector_norm: norm,
            merged_delta_norm: total_sq.sqrt() / lambda,
            metrics,
        })
    }

    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, MergeError> {
        self.ledger.check_merged(METHOD, pretrained)?;
        dense_output(METHOD, pretrained, &self.merged).map(MergedModel::Dense)
    }

    fn state(&self) -> Result<MergerState, MergeError> {
        let mut tensors = ParamDict::new();
        export_tensors(&mut tensors, MERGED_PREFIX, &self.merged);
        let extra = OpcmExtra {
            lambda: self.lambda,
        };
        Ok(self.ledger.extra_state(self.config(), &extra, tensors))
    }

    fn restore(&mut self, state: &MergerState) -> Result<(), MergeError> {
        let ledger = Ledger::from_state(METHOD, &self.config(), state)?;
        check_state_tensors(METHOD, state, MERGED_PREFIX)?;
        let extra: OpcmExtra = read_extra(METHOD, state)?;
        if !(extra.lambda.is_finite() && extra.lambda > 0.0) {
            return Err(MergeError::InvalidState {
                method: METHOD,
                reason: format!("λ = {} is not a positive number", extra.lambda),
            });
        }
        self.merged = import_tensors(state, MERGED_PREFIX);
        self.lambda = extra.lambda;
        self.ledger = ledger;
        Ok(())
    }
}

impl ContinualMerger for Opcm {
    fn config(&self) -> MethodConfig {
        MethodConfig::Opcm(self.config.clone())
    }
}
