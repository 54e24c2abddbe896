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

use crate::config::TokenAggregation;
use crate::error::{ExpertsError, Result};
use crate::evolve::{MadeIt, argmax_first};
use crate::lowrank::fpa;
use faer::MatRef;
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
        let mut best: Option<(usize, usize)> = None;
        for (i, m) in self.modules().iter().enumerate() {
            match best {
                Some((_, n)) if m.len() < n => {}
                _ => best = Some((i, m.len())),
            }
        }
        best.map(|(i, _)| i).ok_or(ExpertsError::NoExperts)
    }

    /// The order in which modules are visited after the anchor: forward distance
    /// `1, 2, ...` from it, the deeper module first at equal distance.
    pub fn visit_order(&self, anchor: usize) -> Vec<usize> {
        let n = self.modules().len();
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
        if features.len() != modules.len() {
            return Err(ExpertsError::Features {
                reason: format!(
                    "{} feature matrices for {} modules",
                    features.len(),
                    modules.len()
                ),
            });
        }
        for (m, x) in modules.iter().zip(features) {
            check_features(m.name(), m.module().d_in, *x)?;
        }
        let agg = self.config().token_aggregation;
        let anchor = self.anchor()?;
        let n = modules.len();
        let mut experts = vec![0usize; n];
        let mut scores = vec![None; n];

        let score = |pos: usize, e: usize| -> Result<f64> {
            let m = modules.get(pos).ok_or(ExpertsError::NoExperts)?;
            let x = features.get(pos).ok_or(ExpertsError::NoExperts)?;
            fpa(aggregate_view(agg, *x), m.expert(e)?.v())
        };

        let am = modules.get(anchor).ok_or(ExpertsError::NoExperts)?;
        let anchor_scores = (0..am.len())
            .map(|e| score(anchor, e))
            .collect::<Result<Vec<_>>>()?;
        let e_star = argmax_first(&anchor_scores).ok_or(ExpertsError::NoExperts)?;
        let mut active: BTreeSet<u32> = am.expert(e_star)?.tasks().clone();
        if let Some(slot) = experts.get_mut(anchor) {
            *slot = e_star;
        }
        if let Some(slot) = scores.get_mut(anchor) {
            *slot = anchor_scores.get(e_star).copied();
        }

        for pos in self.visit_order(anchor) {
            let m = modules.get(pos).ok_or(ExpertsError::NoExperts)?;
            let cands: Vec<usize> = m
                .experts()
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.tasks().is_disjoint(&active))
                .map(|(i, _)| i)
                .collect();
            let (pick, s) = match cands.as_slice() {
                [] => {
                    return Err(ExpertsError::RoutingInvariant {
                        module: m.name().to_owned(),
                    });
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
            active = active
                .intersection(m.expert(pick)?.tasks())
                .copied()
                .collect();
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
