//! Implicit routing: feature projection alignment and path-consistent expert selection.
//!
//! For one input sample, a `theta0` forward pass gives the input `X_m` (tokens x d_in) of
//! every target module. The score of expert `e` of module `m` is the feature projection
//! alignment
//!
//! `FPA(X, e) = ||X V_e||_F / ||X||_F = ||P_e X^T||_F / ||X||_F`, `P_e = V_e V_e^T`,
//!
//! the cosine between `X` and its projection onto the expert's input subspace (tokens
//! aggregated by the Frobenius norm; [`TokenAggregation::ClsOnly`] uses row 0 only;
//! `FPA = 0` when the aggregated input is zero). It is invariant to rotations of `V_e`.
//!
//! # Path consistency
//! Modules are numbered in forward order (layer, then `q, k, v, out_proj, fc1, fc2`).
//! 1. The **anchor** is the module with the most experts; ties go to the deepest one
//!    (highest forward position, so `fc2` before `fc1` before ... `q` in one layer, and a
//!    later layer before an earlier one).
//! 2. In the anchor, `e* = argmax FPA` (lowest expert index on ties), and the active task
//!    set is `S = tasks(e*)`.
//! 3. The other modules are visited outward from the anchor by forward distance
//!    `1, 2, ...`; at equal distance the deeper module comes first. In each, the
//!    candidates are the experts whose task set meets `S`. One candidate is taken as is
//!    (no score computed; `S` is unchanged since it is contained in the candidate's task
//!    set). Several candidates (a bifurcation): take the best FPA and set
//!    `S <- S ∩ tasks(pick)`.
//! 4. No candidate cannot happen: in every module the task sets partition the absorbed
//!    tasks (a [`MadeIt`] invariant) and `S` stays a non-empty set of absorbed tasks, so
//!    exactly the experts serving `S`'s tasks are candidates and at least one exists. The
//!    code still returns [`ExpertsError::RoutingInvariant`] rather than panicking if it
//!    ever did.

use super::config::TokenAggregation;
use super::evolve::{MadeIt, argmax_first};
use faer::MatRef;
use madeit_experts::math::fpa;
use madeit_experts::{ExpertsError, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The routing decision for one sample: one expert index per module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutePath {
    /// Expert index per module, in forward order.
    pub experts: Vec<usize>,
    /// The final active task set `S` (the tasks served by every expert on the path).
    pub tasks: BTreeSet<u32>,
    /// Forward position of the anchor module (`None` for a path not produced by routing,
    /// e.g. [`MadeIt::task_path`]).
    pub anchor: Option<usize>,
    /// FPA score of the chosen expert per module, where one was computed (`None` where
    /// the module had a single candidate).
    pub fpa: Vec<Option<f64>>,
}

/// Captured inputs of one module for a batch of samples: row-major `[batch, tokens, d_in]`.
#[derive(Debug, Clone, Copy)]
pub struct FeatureBatch<'a> {
    data: &'a [f32],
    batch: usize,
    tokens: usize,
    d_in: usize,
}

impl<'a> FeatureBatch<'a> {
    /// Wraps a row-major `[batch, tokens, d_in]` buffer; checks its length.
    pub fn new(data: &'a [f32], batch: usize, tokens: usize, d_in: usize) -> Result<Self> {
        let need = batch
            .checked_mul(tokens)
            .and_then(|x| x.checked_mul(d_in))
            .ok_or_else(|| ExpertsError::Features {
                reason: format!("shape [{batch}, {tokens}, {d_in}] overflows"),
            })?;
        if data.len() != need {
            return Err(ExpertsError::Features {
                reason: format!(
                    "a [{batch}, {tokens}, {d_in}] batch needs {need} values, got {}",
                    data.len()
                ),
            });
        }
        Ok(Self {
            data,
            batch,
            tokens,
            d_in,
        })
    }

    /// Number of samples.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens per sample.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Input dimension.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Sample `b` as a `tokens x d_in` matrix view.
    pub fn sample(&self, b: usize) -> Option<MatRef<'a, f32>> {
        let len = self.tokens * self.d_in;
        let start = b.checked_mul(len)?;
        let slice = self.data.get(start..start.checked_add(len)?)?;
        Some(MatRef::from_row_major_slice(slice, self.tokens, self.d_in))
    }
}

impl MadeIt {
    /// `FPA(X, e)` of expert `expert` of module `module` for the input `x`
    /// (tokens x d_in), with the configured token aggregation.
    pub fn fpa(&self, module: usize, expert: usize, x: MatRef<'_, f32>) -> Result<f64> {
        let m = self
            .modules()
            .get(module)
            .ok_or_else(|| ExpertsError::UnknownModule {
                name: format!("#{module}"),
            })?;
        check_features(m.name(), m.module().d_in, x)?;
        let x = aggregate_view(self.config().token_aggregation, x);
        fpa(x, m.expert(expert)?.v())
    }

    /// The anchor module: most experts, ties to the deepest (highest forward position).
    pub fn anchor(&self) -> Result<usize> {
        anchor_of(&self.expert_counts()).ok_or(ExpertsError::NoExperts)
    }

    /// The order in which modules are visited after the anchor: forward distance
    /// `1, 2, ...` from it, the deeper module first at equal distance.
    pub fn visit_order(&self, anchor: usize) -> Vec<usize> {
        visit_order(self.modules().len(), anchor)
    }

    /// Routes one sample given the captured input of every module (`features[m]` is
    /// `tokens x d_in` of module `m`, in forward order). See the [module docs](self).
    ///
    /// # Errors
    /// [`ExpertsError::NoExperts`]; [`ExpertsError::Features`] for a wrong number of
    /// matrices, a wrong `d_in` or no token; [`ExpertsError::NonFinite`] for a NaN input.
    pub fn route(&self, features: &[MatRef<'_, f32>]) -> Result<RoutePath> {
        let modules = self.modules();
        if modules.is_empty() {
            return Err(ExpertsError::NoExperts);
        }
        check_per_module(features.len(), modules.len(), |got, n| {
            format!("{got} feature matrices for {n} modules")
        })?;
        for (m, x) in modules.iter().zip(features) {
            check_features(m.name(), m.module().d_in, *x)?;
        }
        let agg = self.config().token_aggregation;
        let score = |pos: usize, e: usize| -> Result<f64> {
            let m = modules.get(pos).ok_or(ExpertsError::NoExperts)?;
            let x = features.get(pos).ok_or(ExpertsError::NoExperts)?;
            fpa(aggregate_view(agg, *x), m.expert(e)?.v())
        };
        propagate(
            &self.expert_counts(),
            &|pos, e| {
                let m = modules.get(pos).ok_or(ExpertsError::NoExperts)?;
                Ok(m.expert(e)?.tasks())
            },
            &|pos| {
                modules
                    .get(pos)
                    .map_or_else(|| format!("#{pos}"), |m| m.name().to_owned())
            },
            &score,
        )
    }

    /// Routes every sample of a batch (in parallel over samples). `features[m]` holds
    /// module `m`'s captured inputs for the whole batch; all must have the same batch size.
    pub fn route_batch(&self, features: &[FeatureBatch<'_>]) -> Result<Vec<RoutePath>> {
        let Some(first) = features.first() else {
            return Err(ExpertsError::Features {
                reason: "no feature batch".to_owned(),
            });
        };
        let batch = first.batch();
        if let Some(f) = features.iter().find(|f| f.batch() != batch) {
            return Err(ExpertsError::Features {
                reason: format!("batch sizes differ: {batch} and {}", f.batch()),
            });
        }
        (0..batch)
            .into_par_iter()
            .map(|b| {
                let xs = features
                    .iter()
                    .map(|f| {
                        f.sample(b).ok_or_else(|| ExpertsError::Features {
                            reason: format!("sample {b} out of range"),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                self.route(&xs)
            })
            .collect()
    }
}

/// The anchor module of a model whose modules (in forward order) have `counts` experts:
/// the most experts, ties to the deepest (highest forward position). `None` when there is
/// no module.
pub fn anchor_of(counts: &[usize]) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (i, &n) in counts.iter().enumerate() {
        match best {
            Some((_, b)) if n < b => {}
            _ => best = Some((i, n)),
        }
    }
    best.map(|(i, _)| i)
}

/// The order in which the `n` modules are visited after `anchor`: forward distance
/// `1, 2, ...` from it, the deeper module first at equal distance.
pub fn visit_order(n: usize, anchor: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(n.saturating_sub(1));
    for d in 1..n {
        if let Some(deeper) = anchor.checked_add(d).filter(|&p| p < n) {
            out.push(deeper);
        }
        if let Some(shallower) = anchor.checked_sub(d) {
            out.push(shallower);
        }
    }
    out
}

/// Path-consistent routing of one sample from precomputed scores (see the
/// [module docs](self)): `tasks[m][e]` is the task set of expert `e` of module `m` and
/// `scores[m][e]` its routing score (the FPA) for the sample, modules in forward order.
///
/// This is the propagation [`MadeIt::route`] applies to its feature-projection scores; it
/// lets callers that compute the scores elsewhere (for example in a backbone forward on an
/// accelerator) route exactly as MADE-IT does. Only the scores the rules read matter: the
/// anchor's and those of the candidates at a bifurcation. The returned
/// [`RoutePath::fpa`] holds the scores that were read.
///
/// # Errors
/// [`ExpertsError::NoExperts`] for no module or a module without experts;
/// [`ExpertsError::Features`] when `scores` and `tasks` do not have the same shape;
/// [`ExpertsError::NonFinite`] for a NaN or infinite score;
/// [`ExpertsError::InvalidExpert`] for an empty task set;
/// [`ExpertsError::RoutingInvariant`] when no expert of a module shares a task with the
/// active set (task sets that do not partition one set of tasks).
pub fn route_from_scores(tasks: &[Vec<BTreeSet<u32>>], scores: &[Vec<f64>]) -> Result<RoutePath> {
    if tasks.is_empty() || tasks.iter().any(Vec::is_empty) {
        return Err(ExpertsError::NoExperts);
    }
    check_per_module(scores.len(), tasks.len(), |got, n| {
        format!("scores of {got} modules for {n} modules")
    })?;
    for (m, (t, s)) in tasks.iter().zip(scores).enumerate() {
        if s.len() != t.len() {
            return Err(ExpertsError::Features {
                reason: format!("module #{m} has {} experts but {} scores", t.len(), s.len()),
            });
        }
        if let Some(index) = s.iter().position(|x| !x.is_finite()) {
            return Err(ExpertsError::NonFinite {
                name: format!("routing scores of module #{m}"),
                index,
            });
        }
        if let Some(e) = t.iter().position(BTreeSet::is_empty) {
            return Err(ExpertsError::InvalidExpert {
                module: format!("#{m}"),
                reason: format!("expert {e} serves no task"),
            });
        }
    }
    let counts: Vec<usize> = tasks.iter().map(Vec::len).collect();
    let missing = |pos: usize, e: usize| ExpertsError::ExpertIndex {
        module: format!("#{pos}"),
        index: e,
        count: counts.get(pos).copied().unwrap_or(0),
    };
    propagate(
        &counts,
        &|pos, e| {
            tasks
                .get(pos)
                .and_then(|t| t.get(e))
                .ok_or_else(|| missing(pos, e))
        },
        &|pos| format!("#{pos}"),
        &|pos, e| {
            scores
                .get(pos)
                .and_then(|s| s.get(e))
                .copied()
                .ok_or_else(|| missing(pos, e))
        },
    )
}

/// Task set of expert `e` of module `m`.
type TasksOf<'t, 'a> = dyn Fn(usize, usize) -> Result<&'a BTreeSet<u32>> + 't;

/// The one implementation of the path-consistent propagation: anchor, outward visit,
/// bifurcation intersection. `counts[m]` is module `m`'s number of experts, `tasks_of`
/// gives task sets, `score` the routing score (only called where the rules need it) and
/// `name` a module's name for errors.
fn propagate<'a>(
    counts: &[usize],
    tasks_of: &TasksOf<'_, 'a>,
    name: &dyn Fn(usize) -> String,
    score: &dyn Fn(usize, usize) -> Result<f64>,
) -> Result<RoutePath> {
    let n = counts.len();
    let anchor = anchor_of(counts).ok_or(ExpertsError::NoExperts)?;
    let mut experts = vec![0usize; n];
    let mut scores = vec![None; n];

    let anchor_count = counts.get(anchor).copied().unwrap_or(0);
    let anchor_scores = (0..anchor_count)
        .map(|e| score(anchor, e))
        .collect::<Result<Vec<_>>>()?;
    let e_star = argmax_first(&anchor_scores).ok_or(ExpertsError::NoExperts)?;
    let mut active: BTreeSet<u32> = tasks_of(anchor, e_star)?.clone();
    if let Some(slot) = experts.get_mut(anchor) {
        *slot = e_star;
    }
    if let Some(slot) = scores.get_mut(anchor) {
        *slot = anchor_scores.get(e_star).copied();
    }

    for pos in visit_order(n, anchor) {
        let count = counts.get(pos).copied().unwrap_or(0);
        let mut cands = Vec::new();
        for e in 0..count {
            if !tasks_of(pos, e)?.is_disjoint(&active) {
                cands.push(e);
            }
        }
        let (pick, s) = match cands.as_slice() {
            [] => {
                return Err(ExpertsError::RoutingInvariant { module: name(pos) });
            }
            [only] => (*only, None),
            many => {
                let sc = many
                    .iter()
                    .map(|&e| score(pos, e))
                    .collect::<Result<Vec<_>>>()?;
                let k = argmax_first(&sc).ok_or(ExpertsError::NoExperts)?;
                let pick = many.get(k).copied().ok_or(ExpertsError::NoExperts)?;
                (pick, sc.get(k).copied())
            }
        };
        active = active.intersection(tasks_of(pos, pick)?).copied().collect();
        if let Some(slot) = experts.get_mut(pos) {
            *slot = pick;
        }
        if let Some(slot) = scores.get_mut(pos) {
            *slot = s;
        }
    }
    Ok(RoutePath {
        experts,
        tasks: active,
        anchor: Some(anchor),
        fpa: scores,
    })
}

/// A list with one entry per module must have `modules` entries; `got` is its length and
/// `reason(got, modules)` the message of the [`ExpertsError::Features`] otherwise.
fn check_per_module(
    got: usize,
    modules: usize,
    reason: impl FnOnce(usize, usize) -> String,
) -> Result<()> {
    if got == modules {
        Ok(())
    } else {
        Err(ExpertsError::Features {
            reason: reason(got, modules),
        })
    }
}

/// Rows used by the token aggregation.
fn aggregate_view(agg: TokenAggregation, x: MatRef<'_, f32>) -> MatRef<'_, f32> {
    match agg {
        TokenAggregation::Frobenius => x,
        TokenAggregation::ClsOnly => x.subrows(0, x.nrows().min(1)),
    }
}

/// `x` must be `tokens x d_in` with `tokens >= 1` and finite values.
fn check_features(module: &str, d_in: usize, x: MatRef<'_, f32>) -> Result<()> {
    if x.ncols() != d_in || x.nrows() == 0 {
        return Err(ExpertsError::Features {
            reason: format!(
                "module `{module}` expects tokens x {d_in} inputs with at least one token, got {}x{}",
                x.nrows(),
                x.ncols()
            ),
        });
    }
    // Scan along the unit-stride direction when there is one.
    let first_bad = if x.row_stride() == 1 {
        x.col_iter()
            .enumerate()
            .find_map(|(j, c)| c.iter().position(|v| !v.is_finite()).map(|i| (i, j)))
    } else {
        x.row_iter()
            .enumerate()
            .find_map(|(i, r)| r.iter().position(|v| !v.is_finite()).map(|j| (i, j)))
    };
    if let Some((i, j)) = first_bad {
        return Err(ExpertsError::NonFinite {
            name: format!("features of `{module}`"),
            index: i * x.ncols() + j,
        });
    }
    Ok(())
}
