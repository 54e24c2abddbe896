//! Continual task arithmetic and continual TIES-merging, as one method built from a
//! sparsifier and a consensus rule.

use indexmap::IndexMap;
use madeit_params::ParamDict;
use rayon::prelude::*;

use super::{MERGED_PREFIX, check_layout, dense_output, lookup, par_build, tensor_like, to_f32};
use crate::state::Ledger;
use crate::{
    Aggregate, ContinualMerger, ContinualMethod, MergeError, MergedModel, MergerState,
    MethodConfig, Step, StepReport, TaskArithmeticConfig, TiesConfig,
};

/// Which entries of each row survive before the consensus.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sparsifier {
    /// Keep everything.
    Dense,
    /// Keep the entries of largest magnitude over the *whole* row (every tensor of the model
    /// flattened together): with `d` entries the threshold is the `k`-th smallest magnitude,
    /// `k = d − ⌊keep_fraction · d⌋`, and every entry at least that large is kept (so
    /// `⌊keep_fraction · d⌋ + 1` entries plus ties).
    GlobalMagnitude {
        /// Fraction kept, in `(0, 1]`.
        keep_fraction: f64,
    },
}

/// How the surviving entries of the rows are combined into one update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consensus {
    /// Plain sum of the rows.
    Sum,
    /// TIES sign election: per entry the sign of the sum of the rows (where that is 0, the
    /// sign of the sum of all elected signs); then [`Aggregate`] over the entries whose sign
    /// agrees with the elected one.
    SignElection(Aggregate),
}

/// One generalised continual task-arithmetic method.
///
/// Step 1: `θ^(1) = θ_0 + λ τ_1`. Step `t ≥ 2`: the rows are `[τ_t]`, or
/// `[θ^(t−1) − θ_0, τ_t]` when the method merges with its previous result; each row is
/// sparsified, the rows are combined by the consensus rule into `u_t`, and
/// `θ^(t) = θ^(t−1) + λ u_t`.
///
/// - [`task_arithmetic`](Self::task_arithmetic): rows `[τ_t]`, [`Sparsifier::Dense`],
///   [`Consensus::Sum`] — so `θ^(t) = θ^(t−1) + λ τ_t`.
/// - [`ties`](Self::ties): rows `[θ^(t−1) − θ_0, τ_t]`, [`Sparsifier::GlobalMagnitude`]
///   (20 %), [`Consensus::SignElection`] with a disjoint sum (reference: FusionBench
///   `method/opcm/ties_merging.py` and `method/ties_merging/ties_merging_utils.py`).
///
/// Decisions (which entries are kept, signs) are taken on the `f32` differences exactly as
/// the reference computes them; the values that enter the update are the exact (`f64`)
/// differences, and each merged element is rounded to `f32` once.
#[derive(Debug, Clone)]
pub struct TaskArithmeticFamily {
    config: MethodConfig,
    method: &'static str,
    lambda: f64,
    sparsifier: Sparsifier,
    consensus: Consensus,
    merge_with_previous: bool,
    ledger: Ledger,
    merged: ParamDict,
}

impl TaskArithmeticFamily {
    /// Continual task arithmetic.
    ///
    /// # Errors
    /// [`MergeError::InvalidParameter`] for a non-finite `λ`.
    pub fn task_arithmetic(config: TaskArithmeticConfig) -> Result<Self, MergeError> {
        let mc = MethodConfig::TaskArithmetic(config);
        mc.check()?;
        Ok(Self {
            method: mc.name(),
            config: mc,
            lambda: config.lambda,
            sparsifier: Sparsifier::Dense,
            consensus: Consensus::Sum,
            merge_with_previous: false,
            ledger: Ledger::default(),
            merged: ParamDict::new(),
        })
    }

    /// Continual TIES-merging.
    ///
    /// # Errors
    /// [`MergeError::InvalidParameter`] for a non-finite `λ` or a `keep_fraction` outside
    /// `(0, 1]`.
    pub fn ties(config: TiesConfig) -> Result<Self, MergeError> {
        let mc = MethodConfig::Ties(config);
        mc.check()?;
        Ok(Self {
            method: mc.name(),
            config: mc,
            lambda: config.lambda,
            sparsifier: Sparsifier::GlobalMagnitude {
                keep_fraction: config.keep_fraction,
            },
            consensus: Consensus::SignElection(config.aggregate),
            merge_with_previous: true,
            ledger: Ledger::default(),
            merged: ParamDict::new(),
        })
    }

    /// The sparsifier applied to each row at steps `t ≥ 2`.
    #[must_use]
    pub fn sparsifier(&self) -> Sparsifier {
        self.sparsifier
    }

    /// The consensus rule applied at steps `t ≥ 2`.
    #[must_use]
    pub fn consensus(&self) -> Consensus {
        self.consensus
    }

    /// Row thresholds (on `f32` magnitude bits) for the rows `sources`: each row is
    /// `source − pretrained`.
    fn thresholds(
        &self,
        names: &[&str],
        pretrained: &ParamDict,
        sources: &[&ParamDict],
    ) -> Result<Vec<u32>, MergeError> {
        match self.sparsifier {
            Sparsifier::Dense => Ok(vec![0; sources.len()]),
            Sparsifier::GlobalMagnitude { keep_fraction } => sources
                .iter()
                .map(|src| magnitude_threshold(self.method, names, pretrained, src, keep_fraction))
                .collect(),
        }
    }
}

/// `|x|` as ordered bits: for finite `x`, `abs_bits(a) <= abs_bits(b)` iff `|a| <= |b|`.
#[inline]
fn abs_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

const HI_SHIFT: u32 = 15;
const HI_BINS: usize = 1 << 16;
const LO_BINS: usize = 1 << HI_SHIFT;

/// The magnitude (as [`abs_bits`]) of the `k`-th smallest `|source − pretrained|` over every
/// element of every tensor (`f32` differences), `k = d − ⌊keep_fraction·d⌋` (1-based);
/// 0 (keep everything) when `k = 0`.
///
/// Exact radix selection in two parallel passes: a histogram of the top 16 magnitude bits
/// finds the bucket holding the `k`-th value, a histogram of the low 15 bits inside that
/// bucket finds the value itself.
fn magnitude_threshold(
    method: &'static str,
    names: &[&str],
    pretrained: &ParamDict,
    source: &ParamDict,
    keep_fraction: f64,
) -> Result<u32, MergeError> {
    let d: usize = names
        .iter()
        .map(|&n| lookup(method, pretrained, n).map(|t| t.numel()))
        .sum::<Result<usize, _>>()?;
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let dropped_complement = (d as f64 * keep_fraction) as usize;
    let k = d.saturating_sub(dropped_complement.min(d));
    if k == 0 {
        return Ok(0);
    }
    let pairs = |name: &str| -> Result<(&[f32], &[f32]), MergeError> {
        Ok((
            lookup(method, source, name)?.data(),
            lookup(method, pretrained, name)?.data(),
        ))
    };
    let hist = |filter: Option<u32>| -> Result<Vec<u64>, MergeError> {
        let bins = if filter.is_some() { LO_BINS } else { HI_BINS };
        names
            .par_iter()
            .try_fold(
                || vec![0u64; bins],
                |mut h, &name| {
                    let (x, p) = pairs(name)?;
                    for (&a, &b) in x.iter().zip(p) {
                        let bits = abs_bits(a - b);
                        match filter {
                            None => h[(bits >> HI_SHIFT) as usize] += 1,
                            Some(hi) if bits >> HI_SHIFT == hi => {
                                h[(bits & (LO_BINS as u32 - 1)) as usize] += 1;
                            }
                            Some(_) => {}
                        }
                    }
                    Ok(h)
                },
            )
            .try_reduce(
                || vec![0u64; bins],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    Ok(a)
                },
            )
    };
    // Position of the `rank`-th (1-based) smallest element of a histogram, and the rank
    // remaining inside that bin.
    let locate = |h: &[u64], rank: u64| -> Option<(u32, u64)> {
        let mut seen = 0u64;
        for (bin, &c) in h.iter().enumerate() {
            if seen + c >= rank {
                return u32::try_from(bin).ok().map(|b| (b, rank - seen));
            }
            seen += c;
        }
        None
    };
    let internal = |what: &str| MergeError::InvalidState {
        method,
        reason: format!("magnitude selection failed ({what})"),
    };
    let hi_hist = hist(None)?;
    let (hi, rest) = locate(&hi_hist, k as u64).ok_or_else(|| internal("high bits"))?;
    let lo_hist = hist(Some(hi))?;
    let (lo, _) = locate(&lo_hist, rest).ok_or_else(|| internal("low bits"))?;
    Ok((hi << HI_SHIFT) | lo)
}

/// `sign` of an `f32` as `-1, 0, 1` (zero for ±0).
#[inline]
fn sign(x: f32) -> i64 {
    if x > 0.0 {
        1
    } else if x < 0.0 {
        -1
    } else {
        0
    }
}

impl ContinualMethod for TaskArithmeticFamily {
    data_free_contract!();

    fn method(&self) -> &'static str {
        self.method
    }

    #[allow(clippy::too_many_lines)]
    fn absorb(&mut self, input: &Step<'_>) -> Result<StepReport, MergeError> {
        let (pretrained, finetuned) = (input.pretrained, input.finetuned);
        let method = self.method;
        let admitted = self.ledger.admit(input)?;
        let step = self.ledger.tasks.len() + 1;
        let names: Vec<&str> = pretrained.keys().collect();
        let lambda = self.lambda;
        let mut metrics = IndexMap::new();

        let (merged, delta_sq) = if step == 1 {
            // θ^(1) = θ_0 + λ τ_1, untrimmed (reference behaviour).
            par_build(&names, |name| {
                let p = lookup(method, pretrained, name)?;
                let f = lookup(method, finetuned, name)?;
                let mut sq = 0.0;
                let data = p
                    .data()
                    .iter()
                    .zip(f.data())
                    .map(|(&a, &b)| {
                        let (a, b) = (f64::from(a), f64::from(b));
                        let v = to_f32(a + lambda * (b - a));
                        sq += (f64::from(v) - a).powi(2);
                        v
                    })
                    .collect();
                Ok((tensor_like(method, name, p, data)?, sq))
            })?
        } else {
            check_layout(method, pretrained, &self.merged)?;
            let prev = &self.merged;
            let sources: Vec<&ParamDict> = if self.merge_with_previous {
                vec![prev, finetuned]
            } else {
                vec![finetuned]
            };
            let thr = self.thresholds(&names, pretrained, &sources)?;
            let thr_prev = if self.merge_with_previous {
                thr.first().copied().unwrap_or(0)
            } else {
                0
            };
            let thr_task = thr.last().copied().unwrap_or(0);
            let with_prev = self.merge_with_previous;

            // Per element: the f32 row values (decisions) and whether each survives.
            #[inline]
            fn rows(
                with_prev: bool,
                (thr_prev, thr_task): (u32, u32),
                (p, m, f): (f32, f32, f32),
            ) -> ([f32; 2], [bool; 2]) {
                let r_prev = if with_prev { m - p } else { 0.0 };
                let r_task = f - p;
                let keep = [
                    with_prev && abs_bits(r_prev) >= thr_prev,
                    abs_bits(r_task) >= thr_task,
                ];
                (
                    [
                        if keep[0] { r_prev } else { 0.0 },
                        if keep[1] { r_task } else { 0.0 },
                    ],
                    keep,
                )
            }
            let thresholds = (thr_prev, thr_task);

            let majority: i64 = match self.consensus {
                Consensus::Sum => 0,
                Consensus::SignElection(_) => {
                    let total: i64 = names
                        .par_iter()
                        .map(|&name| -> Result<i64, MergeError> {
                            let p = lookup(method, pretrained, name)?.data();
                            let m = lookup(method, prev, name)?.data();
                            let f = lookup(method, finetuned, name)?.data();
                            Ok(p.iter()
                                .zip(m)
                                .zip(f)
                                .map(|((&p, &m), &f)| {
                                    let (r, _) = rows(with_prev, thresholds, (p, m, f));
                                    sign(0.0 + r[0] + r[1])
                                })
                                .sum())
                        })
                        .sum::<Result<i64, _>>()?;
                    total.signum()
                }
            };
            let consensus = self.consensus;

            let out = par_build(&names, |name| {
                let pt = lookup(method, pretrained, name)?;
                let p = pt.data();
                let m = lookup(method, prev, name)?.data();
                let f = lookup(method, finetuned, name)?.data();
                let mut sq = 0.0;
                let data = p
                    .iter()
                    .zip(m)
                    .zip(f)
                    .map(|((&p32, &m32), &f32_)| {
                        let (r, keep) = rows(with_prev, thresholds, (p32, m32, f32_));
                        let (p64, m64, f64_) = (f64::from(p32), f64::from(m32), f64::from(f32_));
                        // Exact values of the rows.
                        let exact = [m64 - p64, f64_ - p64];
                        let u = match consensus {
                            Consensus::Sum => {
                                (if keep[0] { exact[0] } else { 0.0 })
                                    + if keep[1] { exact[1] } else { 0.0 }
                            }
                            Consensus::SignElection(agg) => {
                                let mut s = sign(0.0 + r[0] + r[1]);
                                if s == 0 {
                                    s = majority;
                                }
                                // Reference: `where(s > 0, v > 0, v < 0)`.
                                let agrees = |v: f32| if s > 0 { v > 0.0 } else { v < 0.0 };
                                let sel = [keep[0] && agrees(r[0]), keep[1] && agrees(r[1])];
                                match agg {
                                    Aggregate::Sum => {
                                        (if sel[0] { exact[0] } else { 0.0 })
                                            + if sel[1] { exact[1] } else { 0.0 }
                                    }
                                    Aggregate::Mean => {
                                        let n = usize::from(sel[0]) + usize::from(sel[1]);
                                        let sum = (if sel[0] { exact[0] } else { 0.0 })
                                            + if sel[1] { exact[1] } else { 0.0 };
                                        #[allow(clippy::cast_precision_loss)]
                                        let n = n.max(1) as f64;
                                        sum / n
                                    }
                                    Aggregate::Max => {
                                        let a = if sel[0] { exact[0].abs() } else { 0.0 };
                                        let b = if sel[1] { exact[1].abs() } else { 0.0 };
                                        #[allow(clippy::cast_precision_loss)]
                                        let s = s as f64;
                                        a.max(b) * s
                                    }
                                }
                            }
                        };
                        let v = to_f32(m64 + lambda * u);
                        sq += (f64::from(v) - p64).powi(2);
                        v
                    })
                    .collect();
                Ok((tensor_like(method, name, pt, data)?, sq))
            })?;
            if let Sparsifier::GlobalMagnitude { .. } = self.sparsifier {
                if with_prev {
                    metrics.insert(
                        "threshold_previous".to_owned(),
                        f64::from(f32::from_bits(thr_prev)),
                    );
                }
                metrics.insert(
                    "threshold_task".to_owned(),
                    f64::from(f32::from_bits(thr_task)),
                );
            }
            if let Consensus::SignElection(_) = consensus {
                #[allow(clippy::cast_precision_loss)]
                metrics.insert("majority_sign".to_owned(), majority as f64);
            }
            out
        };
        self.merged = merged;
        Ok(self
            .ledger
            .commit_step(admitted, method, delta_sq.sqrt(), metrics))
    }

    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, MergeError> {
        self.ledger.check_merged(self.method, pretrained)?;
        dense_output(self.method, pretrained, &self.merged).map(MergedModel::Dense)
    }

    fn state(&self) -> Result<MergerState, MergeError> {
        self.ledger
            .dict_state(self.config(), MERGED_PREFIX, &self.merged)
    }

    fn restore(&mut self, state: &MergerState) -> Result<(), MergeError> {
        let (ledger, merged) =
            Ledger::restore_dict(self.method, &self.config, state, MERGED_PREFIX)?;
        self.merged = merged;
        self.ledger = ledger;
        Ok(())
    }
}

impl ContinualMerger for TaskArithmeticFamily {
    fn config(&self) -> MethodConfig {
        self.config.clone()
    }
}
