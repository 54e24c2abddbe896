//! MADE-IT's manifold-aware expert evolution: the [`MadeIt`] state and [`MadeIt::absorb`].

use super::config::{HistoryScope, MadeItConfig, NonTargetRule};
use faer::MatRef;
use madeit_experts::math as lowrank;
use madeit_experts::{Expert, ExpertChange, ModuleExperts};
use madeit_experts::{ExpertsError, Result};
use madeit_experts::{TargetModule, target_modules};
use madeit_params::{ParamDict, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeSet;

/// What happened to one module at one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Action {
    /// The candidate became a new expert with this index.
    Created {
        /// Index of the new expert.
        expert: usize,
    },
    /// The candidate was consolidated into this expert.
    Consolidated {
        /// Index of the expert that absorbed the candidate.
        expert: usize,
    },
}

impl Action {
    /// The expert that now serves the task.
    pub fn expert(self) -> usize {
        match self {
            Action::Created { expert } | Action::Consolidated { expert } => expert,
        }
    }

    /// `true` for [`Action::Consolidated`].
    pub fn is_consolidation(self) -> bool {
        matches!(self, Action::Consolidated { .. })
    }
}

/// Statistics of the affinity history behind one threshold:
/// `threshold = mean + kappa * std` (population standard deviation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdStats {
    /// Number of scores in the history (current step included).
    pub count: usize,
    /// Their mean `mu`.
    pub mean: f64,
    /// Their population standard deviation `sigma`.
    pub std: f64,
    /// `tau = mu + kappa * sigma` (`±inf` for an infinite `kappa`).
    #[serde(with = "madeit_experts::serde_ext")]
    pub threshold: f64,
}

impl ThresholdStats {
    /// Mean and population standard deviation of `scores` (two-pass, in `f64`), and the
    /// threshold under `config`. `None` for an empty iterator.
    pub fn compute<'a>(
        config: &MadeItConfig,
        scores: impl Iterator<Item = &'a f64> + Clone,
    ) -> Option<Self> {
        let count = scores.clone().count();
        if count == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let n = count as f64;
        let mean = scores.clone().sum::<f64>() / n;
        let var = scores.map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        let std = var.sqrt();
        Some(Self {
            count,
            mean,
            std,
            threshold: config.threshold(mean, std),
        })
    }
}

/// The record of one module at one step (also kept in the history for analyses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleReport {
    /// Module name (weight key without `.weight`).
    pub module: String,
    /// Affinity of the candidate with each expert that existed before this step, by
    /// expert index (empty at step 1).
    pub scores: Vec<f64>,
    /// Index of the most similar expert (lowest index on ties); `None` at step 1.
    pub best: Option<usize>,
    /// The threshold statistics used for this module; `None` at step 1. Under
    /// [`HistoryScope::Pooled`] every module of a step has the same values.
    pub threshold: Option<ThresholdStats>,
    /// What was done.
    pub action: Action,
    /// Number of experts of the module after this step.
    pub experts_after: usize,
}

/// The record of one absorbed task: [`MadeIt::absorb`]'s report and one entry of the
/// affinity history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbsorbReport {
    /// 1-based step index `t`.
    pub step: usize,
    /// The task id absorbed at this step.
    pub task: u32,
    /// One record per target module, in forward order.
    pub modules: Vec<ModuleReport>,
}

impl AbsorbReport {
    /// Number of modules whose candidate created a new expert.
    pub fn created(&self) -> usize {
        self.modules
            .iter()
            .filter(|m| !m.action.is_consolidation())
            .count()
    }

    /// Number of modules whose candidate was consolidated.
    pub fn consolidated(&self) -> usize {
        self.modules.len() - self.created()
    }
}

/// Running mean of the non-target task vectors (for [`NonTargetRule::RunningMean`]):
/// `mean_t = mean_{t-1} + (tau_t - mean_{t-1}) / t`.
#[derive(Debug, Clone, PartialEq)]
pub struct NonTargetMean {
    count: usize,
    mean: ParamDict,
}

impl NonTargetMean {
    /// Builds a running mean over `count >= 1` tasks.
    pub fn new(count: usize, mean: ParamDict) -> Result<Self> {
        if count == 0 {
            return Err(ExpertsError::InconsistentState {
                reason: "a non-target running mean over 0 tasks".to_owned(),
            });
        }
        Ok(Self { count, mean })
    }

    /// Number of task vectors averaged.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The mean task vector of the non-target parameters.
    pub fn mean(&self) -> &ParamDict {
        &self.mean
    }
}

/// The MADE-IT state: per target module an evolving set of low-rank experts, the
/// affinity history and the absorbed task ids. Feed it one task at a time with
/// [`MadeIt::absorb`]; route inputs with [`MadeIt::route`](super::MadeIt::route); save and
/// resume it with [`super::store`].
///
/// Invariant (checked by [`MadeIt::from_parts`], kept by `absorb`): in every module the
/// experts' task sets partition the set of absorbed tasks — each task is served by
/// exactly one expert per module.
#[derive(Debug, Clone, PartialEq)]
pub struct MadeIt {
    config: MadeItConfig,
    modules: Vec<ModuleExperts>,
    tasks: Vec<u32>,
    history: Vec<AbsorbReport>,
    non_target: Option<NonTargetMean>,
}

// A 64-bit mix (one SplitMix64 output), for per-module sketch seeds.
use madeit_linalg::random::splitmix64 as mix64;

/// `true` if `name` is one of `modules`' weight keys.
fn is_target(modules: &[TargetModule], name: &str) -> bool {
    modules.iter().any(|m| m.weight_key == name)
}

thread_local! {
    /// The `dW` buffer of this thread's candidates, kept from one module (and one step) to
    /// the next: at most one `d_out x d_in` matrix per worker thread, instead of a fresh
    /// allocation (and fresh zeroed pages) per module.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer (on a fresh one if it is already in use).
fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Vec::new()),
    })
}

fn check_finite(name: &str, t: &Tensor) -> Result<()> {
    if madeit_params::all_finite(t.data()) {
        return Ok(());
    }
    match t.data().iter().position(|x| !x.is_finite()) {
        Some(index) => Err(ExpertsError::NonFinite {
            name: name.to_owned(),
            index,
        }),
        None => Ok(()),
    }
}

/// Adds `delta` in place to tensor `name` of `out`, a copy of the pretrained model.
fn add_to_pretrained(out: &mut ParamDict, name: &str, delta: &Tensor) -> Result<()> {
    let w = out.get_mut(name).map_err(|_| ExpertsError::MissingTensor {
        name: name.to_owned(),
        dict: "pretrained",
    })?;
    if w.shape() != delta.shape() {
        return Err(ExpertsError::ShapeMismatch {
            name: name.to_owned(),
            expected: delta.shape().to_vec(),
            got: w.shape().to_vec(),
        });
    }
    w.axpy(1.0, delta)?;
    Ok(())
}

impl MadeIt {
    /// An empty state (no task absorbed yet). Validates `config`.
    pub fn new(config: MadeItConfig) -> Result<Self> {
        config.check()?;
        Ok(Self {
            config,
            modules: Vec::new(),
            tasks: Vec::new(),
            history: Vec::new(),
            non_target: None,
        })
    }

    /// Assembles a state from its parts (as the store loader does), checking every
    /// invariant: a valid config; modules in strictly increasing forward order with
    /// ranks `config.rank_for(d_out, d_in)`; absorbed task ids distinct; in every module
    /// the experts' task sets partition the absorbed tasks; one history record per task
    /// (step `i + 1`, task `tasks[i]`, one module record per module); a non-target running
    /// mean over all tasks present iff [`NonTargetRule::RunningMean`] and a task was
    /// absorbed.
    pub fn from_parts(
        config: MadeItConfig,
        modules: Vec<ModuleExperts>,
        tasks: Vec<u32>,
        history: Vec<AbsorbReport>,
        non_target: Option<NonTargetMean>,
    ) -> Result<Self> {
        config.check()?;
        let bad = |reason: String| Err(ExpertsError::InconsistentState { reason });
        let task_set: BTreeSet<u32> = tasks.iter().copied().collect();
        if task_set.len() != tasks.len() {
            return bad("a task id appears twice in the absorbed tasks".to_owned());
        }
        if tasks.is_empty() != modules.is_empty() {
            return bad(format!(
                "{} absorbed tasks but {} modules",
                tasks.len(),
                modules.len()
            ));
        }
        for pair in modules.windows(2) {
            if let [a, b] = pair
                && a.module().depth() >= b.module().depth()
            {
                return bad(format!(
                    "modules `{}` and `{}` are not in strictly increasing forward order",
                    a.name(),
                    b.name()
                ));
            }
        }
        for m in &modules {
            let want = config.rank_for(m.module().d_out, m.module().d_in);
            if m.rank() != want {
                return bad(format!(
                    "module `{}` has rank {}, rho = {} gives {want}",
                    m.name(),
                    m.rank(),
                    config.rho
                ));
            }
            if m.tasks() != task_set {
                return bad(format!(
                    "the experts of module `{}` serve tasks {:?}, the absorbed tasks are {:?}",
                    m.name(),
                    m.tasks(),
                    task_set
                ));
            }
        }
        if history.len() != tasks.len() {
            return bad(format!(
                "{} history records for {} tasks",
                history.len(),
                tasks.len()
            ));
        }
        for (i, (rec, &task)) in history.iter().zip(&tasks).enumerate() {
            if rec.step != i + 1 || rec.task != task || rec.modules.len() != modules.len() {
                return bad(format!(
                    "history record {i} (step {}, task {}, {} modules) does not match step {}, task {task}, {} modules",
                    rec.step,
                    rec.task,
                    rec.modules.len(),
                    i + 1,
                    modules.len()
                ));
            }
        }
        let want_mean = config.non_target == NonTargetRule::RunningMean && !tasks.is_empty();
        match (&non_target, want_mean) {
            (Some(nt), true) if nt.count == tasks.len() => {}
            (None, false) => {}
            (Some(nt), _) => {
                return bad(format!(
                    "a non-target running mean over {} tasks, expected {}",
                    nt.count,
                    if want_mean { tasks.len() } else { 0 }
                ));
            }
            (None, true) => {
                return bad("the running-mean rule needs a non-target mean".to_owned());
            }
        }
        Ok(Self {
            config,
            modules,
            tasks,
            history,
            non_target,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MadeItConfig {
        &self.config
    }

    /// The expert sets, one per target module, in forward order (empty before the first
    /// task).
    pub fn modules(&self) -> &[ModuleExperts] {
        &self.modules
    }

    /// Index of the module called `name` (weight key with or without `.weight`).
    pub fn module_index(&self, name: &str) -> Result<usize> {
        self.modules
            .iter()
            .position(|m| m.name() == name || m.module().weight_key == name)
            .ok_or_else(|| ExpertsError::UnknownModule {
                name: name.to_owned(),
            })
    }

    /// Absorbed task ids, in order.
    pub fn tasks(&self) -> &[u32] {
        &self.tasks
    }

    /// One record per absorbed task: every affinity score, threshold and decision.
    pub fn history(&self) -> &[AbsorbReport] {
        &self.history
    }

    /// The running mean of non-target task vectors ([`NonTargetRule::RunningMean`] only).
    pub fn non_target_mean(&self) -> Option<&NonTargetMean> {
        self.non_target.as_ref()
    }

    /// Total number of experts over all modules.
    pub fn num_experts(&self) -> usize {
        self.modules.iter().map(ModuleExperts::len).sum()
    }

    /// Absorbs the fine-tuned model of task `task`.
    ///
    /// Per target module `m` (in parallel over modules): the candidate is the top-`r` SVD
    /// of `dW = W_t - W0`, `r = config.rank_for(d_out, d_in)`. At step 1 every module
    /// creates one expert. At step `t >= 2` every candidate is scored against every
    /// expert of its module; all scores of the step join the history; the threshold is
    /// `tau = mu + kappa * sigma` over the history (see [`HistoryScope`]); the module
    /// consolidates the candidate into its most similar expert (lowest index on ties) if
    /// [`MadeItConfig::consolidates`]`(S_max, tau)`, and creates a new expert otherwise.
    /// Non-target parameters are only averaged under [`NonTargetRule::RunningMean`].
    ///
    /// The state is unchanged when an error is returned.
    ///
    /// # Errors
    /// [`ExpertsError::DuplicateTask`]; [`ExpertsError::NoTargetModules`];
    /// [`ExpertsError::ModuleSetMismatch`] if the target modules differ from earlier
    /// steps; [`ExpertsError::MissingTensor`] / [`ExpertsError::ShapeMismatch`] if the two
    /// dictionaries do not have the same names and shapes; [`ExpertsError::NonFinite`]
    /// for a NaN or infinity in a tensor that is used; linear-algebra failures.
    pub fn absorb(
        &mut self,
        pretrained: &ParamDict,
        finetuned: &ParamDict,
        task: u32,
    ) -> Result<AbsorbReport> {
        if self.tasks.contains(&task) {
            return Err(ExpertsError::DuplicateTask { task });
        }
        let targets = target_modules(pretrained)?;
        self.check_module_set(&targets)?;
        Self::check_dicts(pretrained, finetuned)?;
        let running_mean = self.config.non_target == NonTargetRule::RunningMean;
        for (name, t) in pretrained.iter() {
            if running_mean || is_target(&targets, name) {
                check_finite(name, t)?;
                check_finite(name, finetuned.get(name)?)?;
            }
        }

        // Candidates, in parallel over modules.
        let config = &self.config;
        let candidates: Vec<Expert> = targets
            .par_iter()
            .enumerate()
            .map(|(i, m)| -> Result<Expert> {
                let w0 = pretrained.get(&m.weight_key)?;
                let wt = finetuned.get(&m.weight_key)?;
                // `dW = W_t - W_0` in the tensors' own row-major order: one contiguous pass
                // (a column-major copy would read both weights with a stride of `d_in`).
                if w0.shape() != [m.d_out, m.d_in] || wt.shape() != w0.shape() {
                    return Err(ExpertsError::ShapeMismatch {
                        name: m.weight_key.clone(),
                        expected: vec![m.d_out, m.d_in],
                        got: wt.shape().to_vec(),
                    });
                }
                let rank = config.rank_for(m.d_out, m.d_in);
                let base = config.svd.seed();
                #[allow(clippy::cast_possible_truncation)]
                let seed = mix64(base ^ mix64(i as u64) ^ mix64(u64::from(task) << 32));
                with_scratch(|diff| {
                    diff.clear();
                    diff.extend(wt.data().iter().zip(w0.data()).map(|(a, b)| a - b));
                    let dw = MatRef::from_row_major_slice(diff, m.d_out, m.d_in);
                    lowrank::candidate(m.name(), dw, rank, config.svd, seed, task)
                })
            })
            .collect::<Result<_>>()?;

        let new_mean = if running_mean {
            Some(self.updated_mean(pretrained, finetuned, &targets)?)
        } else {
            None
        };

        let step = self.tasks.len() + 1;
        let report = if self.modules.is_empty() {
            let mut modules = Vec::with_capacity(targets.len());
            let mut reports = Vec::with_capacity(targets.len());
            for (m, c) in targets.into_iter().zip(candidates) {
                let rank = c.rank();
                let name = m.name().to_owned();
                modules.push(ModuleExperts::new(m, rank, vec![c])?);
                reports.push(ModuleReport {
                    module: name,
                    scores: Vec::new(),
                    best: None,
                    threshold: None,
                    action: Action::Created { expert: 0 },
                    experts_after: 1,
                });
            }
            self.modules = modules;
            AbsorbReport {
                step,
                task,
                modules: reports,
            }
        } else {
            self.evolve(step, task, candidates)?
        };
        self.tasks.push(task);
        self.history.push(report.clone());
        self.non_target = new_mean;
        Ok(report)
    }

    /// Step `t >= 2`: score, threshold, decide, consolidate or create. Mutates
    /// `self.modules` only after every fallible computation succeeded.
    fn evolve(&mut self, step: usize, task: u32, candidates: Vec<Expert>) -> Result<AbsorbReport> {
        let config = &self.config;
        let scores: Vec<Vec<f64>> = self
            .modules
            .par_iter()
            .zip(candidates.par_iter())
            .map(|(m, c)| {
                m.experts()
                    .iter()
                    .map(|e| lowrank::affinity(m.name(), config.affinity, e, c))
                    .collect::<Result<Vec<f64>>>()
            })
            .collect::<Result<_>>()?;
        for (m, s) in self.modules.iter().zip(&scores) {
            if let Some(index) = s.iter().position(|x| !x.is_finite()) {
                return Err(ExpertsError::NonFinite {
                    name: format!("affinity scores of `{}`", m.name()),
                    index,
                });
            }
        }

        // Threshold statistics.
        let stats: Vec<ThresholdStats> = match config.history {
            HistoryScope::Pooled => {
                let all = self
                    .history
                    .iter()
                    .flat_map(|r| r.modules.iter().flat_map(|m| m.scores.iter()))
                    .chain(scores.iter().flatten());
                let st = ThresholdStats::compute(config, all).ok_or_else(|| {
                    ExpertsError::InconsistentState {
                        reason: "no affinity score at step >= 2".to_owned(),
                    }
                })?;
                vec![st; self.modules.len()]
            }
            HistoryScope::PerModule => (0..self.modules.len())
                .map(|i| {
                    let past = self
                        .history
                        .iter()
                        .filter_map(move |r| r.modules.get(i))
                        .flat_map(|m| m.scores.iter());
                    let cur = scores.get(i).into_iter().flatten();
                    ThresholdStats::compute(config, past.chain(cur)).ok_or_else(|| {
                        ExpertsError::InconsistentState {
                            reason: format!("no affinity score for module {i} at step >= 2"),
                        }
                    })
                })
                .collect::<Result<_>>()?,
        };

        // Decisions: Some(best) = consolidate into best.
        let decisions: Vec<(Option<usize>, Option<usize>)> = scores
            .iter()
            .zip(&stats)
            .map(|(s, st)| {
                let best = argmax_first(s);
                let merge = best.filter(|&b| {
                    s.get(b)
                        .is_some_and(|&smax| config.consolidates(smax, st.threshold))
                });
                (best, merge)
            })
            .collect();

        // Consolidations, in parallel.
        let merged: Vec<Option<Expert>> = self
            .modules
            .par_iter()
            .zip(candidates.par_iter())
            .zip(decisions.par_iter())
            .map(|((m, c), &(_, merge))| -> Result<Option<Expert>> {
                match merge {
                    Some(b) => {
                        let e = m.expert(b)?;
                        lowrank::consolidate(
                            m.name(),
                            config.merge,
                            config.polar_rank_tol,
                            e,
                            c,
                            m.rank(),
                        )
                        .map(Some)
                    }
                    None => Ok(None),
                }
            })
            .collect::<Result<_>>()?;

        // Apply: every change is checked before the first one is made, so that an error
        // leaves the state as it was.
        let changes: Vec<ExpertChange> = candidates
            .into_iter()
            .zip(merged)
            .zip(&decisions)
            .map(|((c, new), &(_, merge))| match (merge, new) {
                (Some(index), Some(expert)) => ExpertChange::Replace { index, expert },
                _ => ExpertChange::Push(c),
            })
            .collect();
        for (m, change) in self.modules.iter().zip(&changes) {
            m.check_change(change)?;
        }
        let mut reports = Vec::with_capacity(self.modules.len());
        for (((m, change), (best, _)), (s, st)) in self
            .modules
            .iter_mut()
            .zip(changes)
            .zip(decisions)
            .zip(scores.into_iter().zip(stats))
        {
            let consolidated = matches!(change, ExpertChange::Replace { .. });
            let expert = m.apply_change(change)?;
            let action = if consolidated {
                Action::Consolidated { expert }
            } else {
                Action::Created { expert }
            };
            reports.push(ModuleReport {
                module: m.name().to_owned(),
                scores: s,
                best,
                threshold: Some(st),
                action,
                experts_after: m.len(),
            });
        }
        Ok(AbsorbReport {
            step,
            task,
            modules: reports,
        })
    }

    /// Checks that the target modules match those of the earlier steps.
    fn check_module_set(&self, targets: &[TargetModule]) -> Result<()> {
        if self.modules.is_empty() {
            return Ok(());
        }
        if targets.len() != self.modules.len() {
            return Err(ExpertsError::ModuleSetMismatch {
                reason: format!(
                    "{} target modules, earlier steps had {}",
                    targets.len(),
                    self.modules.len()
                ),
            });
        }
        for (t, m) in targets.iter().zip(&self.modules) {
            let have = m.module();
            if t.weight_key != have.weight_key {
                return Err(ExpertsError::ModuleSetMismatch {
                    reason: format!(
                        "found `{}` where earlier steps had `{}`",
                        t.weight_key, have.weight_key
                    ),
                });
            }
            if (t.d_out, t.d_in) != (have.d_out, have.d_in) {
                return Err(ExpertsError::ShapeMismatch {
                    name: t.weight_key.clone(),
                    expected: vec![have.d_out, have.d_in],
                    got: vec![t.d_out, t.d_in],
                });
            }
        }
        Ok(())
    }

    /// Same names (as sets) and shapes in both dictionaries.
    fn check_dicts(pretrained: &ParamDict, finetuned: &ParamDict) -> Result<()> {
        for (name, t) in pretrained.iter() {
            let Ok(f) = finetuned.get(name) else {
                return Err(ExpertsError::MissingTensor {
                    name: name.to_owned(),
                    dict: "fine-tuned",
                });
            };
            if f.shape() != t.shape() {
                return Err(ExpertsError::ShapeMismatch {
                    name: name.to_owned(),
                    expected: t.shape().to_vec(),
                    got: f.shape().to_vec(),
                });
            }
        }
        if let Some(name) = finetuned.keys().find(|k| !pretrained.contains(k)) {
            return Err(ExpertsError::MissingTensor {
                name: name.to_owned(),
                dict: "pretrained",
            });
        }
        Ok(())
    }

    /// The running mean of non-target task vectors after absorbing `finetuned`.
    fn updated_mean(
        &self,
        pretrained: &ParamDict,
        finetuned: &ParamDict,
        targets: &[TargetModule],
    ) -> Result<NonTargetMean> {
        let count = self.tasks.len() + 1;
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let w = 1.0 / count as f32;
        let mut mean = ParamDict::new();
        for (name, p0) in pretrained.iter() {
            if is_target(targets, name) {
                continue;
            }
            let tau = finetuned.get(name)?.sub(p0)?;
            let next = match self.non_target.as_ref().map(|nt| nt.mean.get(name)) {
                Some(Ok(prev)) => {
                    // prev + (tau - prev) / t
                    let mut next = prev.clone();
                    next.axpy(w, &tau.sub(prev)?)?;
                    next
                }
                Some(Err(_)) => {
                    return Err(ExpertsError::ModuleSetMismatch {
                        reason: format!("non-target tensor `{name}` was not in earlier steps"),
                    });
                }
                None => tau,
            };
            mean.insert(name, next);
        }
        if let Some(nt) = &self.non_target
            && let Some(name) = nt.mean.keys().find(|k| !mean.contains(k))
        {
            return Err(ExpertsError::ModuleSetMismatch {
                reason: format!("non-target tensor `{name}` of earlier steps is missing"),
            });
        }
        NonTargetMean::new(count, mean)
    }

    /// The dense delta `U diag(s) V^T` of expert `expert` of module `module` (by index),
    /// as a `[d_out, d_in]` tensor.
    pub fn dense_delta(&self, module: usize, expert: usize) -> Result<Tensor> {
        let m = self
            .modules
            .get(module)
            .ok_or_else(|| ExpertsError::UnknownModule {
                name: format!("#{module}"),
            })?;
        Ok(m.expert(expert)?.dense_tensor())
    }

    /// Materialises the model of a route path: `W0 + U_e diag(s_e) V_e^T` for the chosen
    /// expert `e` of every target module; non-target parameters are `theta0`, or
    /// `theta0 + mean_t tau_t` under [`NonTargetRule::RunningMean`].
    ///
    /// # Errors
    /// [`ExpertsError::Path`] if `path` does not have one valid expert index per module;
    /// [`ExpertsError::MissingTensor`] / [`ExpertsError::ShapeMismatch`] if `pretrained`
    /// lacks a module or has another shape.
    pub fn materialize(
        &self,
        pretrained: &ParamDict,
        path: &super::routing::RoutePath,
    ) -> Result<ParamDict> {
        if self.modules.is_empty() {
            return Err(ExpertsError::NoExperts);
        }
        if path.experts.len() != self.modules.len() {
            return Err(ExpertsError::Path {
                reason: format!(
                    "{} expert indices for {} modules",
                    path.experts.len(),
                    self.modules.len()
                ),
            });
        }
        let mut out = pretrained.clone();
        for (m, &e) in self.modules.iter().zip(&path.experts) {
            let delta = m.expert(e)?.dense_tensor();
            add_to_pretrained(&mut out, &m.module().weight_key, &delta)?;
        }
        if let Some(nt) = &self.non_target {
            for (name, mean) in nt.mean.iter() {
                add_to_pretrained(&mut out, name, mean)?;
            }
        }
        Ok(out)
    }

    /// The path that takes, in every module, the expert serving `task` (oracle routing).
    pub fn task_path(&self, task: u32) -> Result<super::routing::RoutePath> {
        if self.modules.is_empty() {
            return Err(ExpertsError::NoExperts);
        }
        let experts = self
            .modules
            .iter()
            .map(|m| {
                m.expert_of_task(task).ok_or_else(|| ExpertsError::Path {
                    reason: format!("task {task} has not been absorbed"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tasks: BTreeSet<u32> = self
            .modules
            .iter()
            .zip(&experts)
            .filter_map(|(m, &e)| m.experts().get(e).map(Expert::tasks))
            .fold(None::<BTreeSet<u32>>, |acc, t| {
                Some(match acc {
                    None => t.clone(),
                    Some(a) => a.intersection(t).copied().collect(),
                })
            })
            .unwrap_or_default();
        Ok(super::routing::RoutePath {
            experts,
            tasks,
            anchor: None,
            fpa: vec![None; self.modules.len()],
        })
    }

    /// Number of experts per module, in forward order.
    pub fn expert_counts(&self) -> Vec<usize> {
        self.modules.iter().map(ModuleExperts::len).collect()
    }
}

/// Index of the largest value (lowest index on ties); `None` for an empty slice.
pub(crate) fn argmax_first(s: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &x) in s.iter().enumerate() {
        match best {
            Some((_, b)) if x <= b => {}
            _ => best = Some((i, x)),
        }
    }
    best.map(|(i, _)| i)
}
