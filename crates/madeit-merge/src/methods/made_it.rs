//! MADE-IT as a continual merger: evolving low-rank experts with path-consistent routing.

use std::collections::BTreeSet;

use indexmap::IndexMap;
use madeit_experts::{Expert, ExpertsError, ModuleExperts, TargetModule};
use madeit_params::{ParamDict, ParamsError, Tensor};
use serde::{Deserialize, Serialize};

use super::lookup;
use crate::made_it::store::{Factor, tensor_key};
use crate::made_it::{AbsorbReport, MadeIt, MadeItConfig, NonTargetMean};
use crate::state::{Ledger, export_tensors, read_extra};
use crate::{
    ContinualMerger, ContinualMethod, ExpertModel, ExpertRouting, LowRankExpert, LowRankFactors,
    MergeError, MergedModel, MergerState, MethodConfig, Step, StepReport, TaskId,
};

const METHOD: &str = "made_it";
/// Prefix of the expert factors in a saved state (`experts.<module>.expert<N>.{U,s,V}`).
const EXPERTS_PREFIX: &str = "experts.";
/// Prefix of the non-target running mean in a saved state.
const NON_TARGET_PREFIX: &str = "non_target_mean.";

fn experts_err(source: ExpertsError) -> MergeError {
    MergeError::Experts {
        method: METHOD,
        source,
    }
}

fn invalid(reason: impl Into<String>) -> MergeError {
    MergeError::InvalidState {
        method: METHOD,
        reason: reason.into(),
    }
}

/// One module of a saved state (its factors are tensors).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedModule {
    target: TargetModule,
    rank: usize,
    /// Task ids served by each expert, in expert order.
    experts: Vec<BTreeSet<u32>>,
}

/// The JSON part of MADE-IT's saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MadeItExtra {
    /// The `u32` id MADE-IT uses for the `i`-th absorbed task (always `i`).
    task_ids: Vec<u32>,
    modules: Vec<SavedModule>,
    /// Every affinity score, threshold and decision (exact `f64` through JSON).
    history: Vec<AbsorbReport>,
    /// `(count, tensor names in order)` of the non-target running mean, if any.
    non_target: Option<(usize, Vec<String>)>,
}

/// MADE-IT ("Manifold-Aware Dynamic Expert Evolution and Implicit rouTing") behind the
/// [`ContinualMerger`] contract, on top of [`crate::made_it::MadeIt`].
///
/// - **Tasks.** The `i`-th absorbed task (0-based) gets the `u32` id `i` inside
///   [`MadeIt`]; the mapping from [`TaskId`] names is kept in the state.
/// - **Absorb.** Per target module (`q, k, v, out_proj, fc1, fc2` weights of every encoder
///   layer) the top-`r` SVD of `τ_t` is either consolidated into the most similar expert or
///   becomes a new one ([`MadeIt::absorb`]; [`MadeItConfig`] documents every option). The
///   step report's `merged_delta_norm` is `‖θ_path(t) − θ_0‖` for the path that serves the
///   task just absorbed in every module (its experts' `‖s‖₂` and the non-target mean);
///   its metrics are `experts_created`, `experts_consolidated`, `num_experts` and, from step
///   2 on, `threshold` (the adaptive threshold of the first module).
/// - **Merged model.** [`MergedModel::Experts`]: the backbone is `θ_0`, with
///   `θ_0 + mean_t τ_t` on the non-target parameters under
///   [`crate::made_it::NonTargetRule::RunningMean`] (the rule of [`MadeIt::materialize`]);
///   every target weight carries its experts as `up = U diag(s)` (`[out, r]`) and
///   `down = V^T` (`[r, in]`), `V` orthonormal, so that `‖X down^T‖_F / ‖X‖_F` is the
///   feature-projection alignment; the routing is [`ExpertRouting::MadeItPaths`].
/// - **State.** Tensors `experts.<module>.expert<N>.{U,s,V}` (`U` `[out, r]`, `s` `[r]`,
///   `V` `[in, r]`) and `non_target_mean.<name>`; the metadata holds the modules, the task
///   sets of every expert, the task-id mapping and the whole affinity history.
#[derive(Debug, Clone)]
pub struct MadeItMerger {
    config: MadeItConfig,
    ledger: Ledger,
    state: MadeIt,
}

impl MadeItMerger {
    /// An empty stream.
    ///
    /// # Errors
    /// [`MergeError::InvalidParameter`] for a configuration [`MadeItConfig::check`] rejects.
    pub fn new(config: MadeItConfig) -> Result<Self, MergeError> {
        MethodConfig::MadeIt(config.clone()).check()?;
        let state = MadeIt::new(config.clone()).map_err(experts_err)?;
        Ok(Self {
            config,
            ledger: Ledger::default(),
            state,
        })
    }

    /// The expert state.
    #[must_use]
    pub fn experts(&self) -> &MadeIt {
        &self.state
    }

    /// The `u32` id MADE-IT uses for `task`, if it was absorbed.
    #[must_use]
    pub fn task_id(&self, task: &TaskId) -> Option<u32> {
        self.ledger
            .tasks
            .iter()
            .position(|r| &r.task == task)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// The task name of MADE-IT's id `id`.
    fn task_name(&self, id: u32) -> Option<&TaskId> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.ledger.tasks.get(i))
            .map(|r| &r.task)
    }

    /// `‖θ_path − θ_0‖` of the path serving task `id`.
    fn path_norm(&self, id: u32) -> f64 {
        let experts: f64 = self
            .state
            .modules()
            .iter()
            .filter_map(|m| m.expert_of_task(id).and_then(|e| m.experts().get(e)))
            .map(|e| e.frobenius_norm().powi(2))
            .sum();
        let mean: f64 = self.state.non_target_mean().map_or(0.0, |nt| {
            nt.mean()
                .iter()
                .flat_map(|(_, t)| t.data().iter())
                .map(|&x| f64::from(x) * f64::from(x))
                .sum()
        });
        (experts + mean).sqrt()
    }
}

impl ContinualMethod for MadeItMerger {
    data_free_contract!(METHOD);

    fn absorb(&mut self, input: &Step<'_>) -> Result<StepReport, MergeError> {
        let (pretrained, finetuned, task) = (input.pretrained, input.finetuned, input.task);
        let admitted = self.ledger.admit(input)?;
        let id = u32::try_from(self.ledger.tasks.len()).map_err(|_| MergeError::Degenerate {
            method: METHOD,
            task: task.clone(),
            reason: "more than u32::MAX tasks".to_owned(),
        })?;
        let norm = admitted.record.task_vector_norm;
        // `MadeIt::absorb` leaves the state unchanged on error, and `admit` mutates nothing:
        // the step is atomic.
        let report = self
            .state
            .absorb(pretrained, finetuned, id)
            .map_err(experts_err)?;
        self.ledger.commit(admitted);
        let mut metrics = IndexMap::new();
        #[allow(clippy::cast_precision_loss)]
        {
            metrics.insert("experts_created".to_owned(), report.created() as f64);
            metrics.insert(
                "experts_consolidated".to_owned(),
                report.consolidated() as f64,
            );
            metrics.insert("num_experts".to_owned(), self.state.num_experts() as f64);
        }
        if let Some(t) = report.modules.first().and_then(|m| m.threshold) {
            metrics.insert("threshold".to_owned(), t.threshold);
        }
        Ok(StepReport {
            method: METHOD.to_owned(),
            step: self.ledger.tasks.len(),
            task: task.clone(),
            task_vector_norm: norm,
            merged_delta_norm: self.path_norm(id),
            metrics,
        })
    }

    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, MergeError> {
        self.ledger.check_merged(METHOD, pretrained)?;
        let backbone = backbone(&self.state, pretrained)?;
        expert_model(&self.state, backbone, |t| self.task_name(t).cloned())
            .map(MergedModel::Experts)
    }

    fn state(&self) -> Result<MergerState, MergeError> {
        let mut tensors = ParamDict::new();
        let mut modules = Vec::with_capacity(self.state.modules().len());
        for m in self.state.modules() {
            let name = m.name();
            for (i, e) in m.experts().iter().enumerate() {
                tensors.insert(
                    format!("{EXPERTS_PREFIX}{}", tensor_key(name, i, Factor::U)),
                    Tensor::from_mat(e.u()),
                );
                if let Ok(s) = Tensor::new(vec![e.rank()], e.s().to_vec()) {
                    tensors.insert(
                        format!("{EXPERTS_PREFIX}{}", tensor_key(name, i, Factor::S)),
                        s,
                    );
                }
                tensors.insert(
                    format!("{EXPERTS_PREFIX}{}", tensor_key(name, i, Factor::V)),
                    Tensor::from_mat(e.v()),
                );
            }
            modules.push(SavedModule {
                target: m.module().clone(),
                rank: m.rank(),
                experts: m.experts().iter().map(|e| e.tasks().clone()).collect(),
            });
        }
        let non_target = self.state.non_target_mean().map(|nt| {
            export_tensors(&mut tensors, NON_TARGET_PREFIX, nt.mean());
            (nt.count(), nt.mean().keys().map(str::to_owned).collect())
        });
        let extra = MadeItExtra {
            task_ids: self.state.tasks().to_vec(),
            modules,
            history: self.state.history().to_vec(),
            non_target,
        };
        Ok(self.ledger.extra_state(self.config(), &extra, tensors))
    }

    fn restore(&mut self, state: &MergerState) -> Result<(), MergeError> {
        let ledger = Ledger::from_state(METHOD, &self.config(), state)?;
        let extra: MadeItExtra = read_extra(METHOD, state)?;
        let expected: Vec<u32> = (0..ledger.tasks.len())
            .map(|i| u32::try_from(i).map_err(|_| invalid("too many tasks")))
            .collect::<Result<_, _>>()?;
        if extra.task_ids != expected {
            return Err(invalid(format!(
                "task ids {:?}, expected {expected:?} (one per recorded task, in order)",
                extra.task_ids
            )));
        }
        let mut used = BTreeSet::new();
        let mut get = |key: String, shape: &[usize]| -> Result<Tensor, MergeError> {
            let t = lookup(METHOD, &state.tensors, &key)?;
            if t.shape() != shape {
                return Err(MergeError::StateTensor {
                    method: METHOD,
                    source: ParamsError::ShapeMismatch {
                        name: key,
                        expected: shape.to_vec(),
                        got: t.shape().to_vec(),
                    },
                });
            }
            used.insert(key);
            Ok(t.clone())
        };
        let mut modules = Vec::with_capacity(extra.modules.len());
        for sm in &extra.modules {
            let t = &sm.target;
            let name = t.name().to_owned();
            let r = sm.rank;
            let mut experts = Vec::with_capacity(sm.experts.len());
            for (i, tasks) in sm.experts.iter().enumerate() {
                let key = |f| format!("{EXPERTS_PREFIX}{}", tensor_key(&name, i, f));
                let u = get(key(Factor::U), &[t.d_out, r])?;
                let s = get(key(Factor::S), &[r])?;
                let v = get(key(Factor::V), &[t.d_in, r])?;
                let as_mat = |x: &Tensor| {
                    x.as_mat()
                        .map(|m| m.to_owned())
                        .map_err(|source| MergeError::StateTensor {
                            method: METHOD,
                            source,
                        })
                };
                let expert = Expert::new(
                    &name,
                    as_mat(&u)?,
                    s.data().to_vec(),
                    as_mat(&v)?,
                    tasks.clone(),
                )
                .map_err(experts_err)?;
                experts.push(expert);
            }
            modules.push(ModuleExperts::new(t.clone(), r, experts).map_err(experts_err)?);
        }
        let non_target = match &extra.non_target {
            None => None,
            Some((count, names)) => {
                let mut mean = ParamDict::new();
                for n in names {
                    let key = format!("{NON_TARGET_PREFIX}{n}");
                    let shape = lookup(METHOD, &state.tensors, &key)?.shape().to_vec();
                    mean.insert(n.clone(), get(key, &shape)?);
                }
                Some(NonTargetMean::new(*count, mean).map_err(experts_err)?)
            }
        };
        if let Some(name) = state.tensors.keys().find(|k| !used.contains(*k)) {
            return Err(MergeError::StateTensor {
                method: METHOD,
                source: ParamsError::UnexpectedKey {
                    name: name.to_owned(),
                },
            });
        }
        let made_it = MadeIt::from_parts(
            self.config.clone(),
            modules,
            extra.task_ids,
            extra.history,
            non_target,
        )
        .map_err(experts_err)?;
        self.state = made_it;
        self.ledger = ledger;
        Ok(())
    }
}

impl ContinualMerger for MadeItMerger {
    fn config(&self) -> MethodConfig {
        MethodConfig::MadeIt(self.config.clone())
    }
}

/// The backbone of a MADE-IT state: `pretrained` plus the state's non-target running mean
/// when it keeps one.
fn backbone(state: &MadeIt, pretrained: &ParamDict) -> Result<ParamDict, MergeError> {
    let mut backbone = pretrained.clone();
    if let Some(nt) = state.non_target_mean() {
        for (name, mean) in nt.mean().iter() {
            let w = backbone
                .get_mut(name)
                .map_err(|source| MergeError::StateTensor {
                    method: METHOD,
                    source,
                })?;
            w.axpy(1.0, mean)
                .map_err(|source| MergeError::StateTensor {
                    method: METHOD,
                    source: source.in_tensor(name),
                })?;
        }
    }
    Ok(backbone)
}

/// The expert model of a MADE-IT state over `backbone` (the pretrained model, plus the
/// state's non-target running mean when it keeps one: the backbone `madeit merge` writes):
/// per target weight, every expert's factors `U`, `s`, `V` (exchange form `up = U diag(s)`,
/// `down = V^T`), serving the tasks
/// `task_name` gives for its task ids; routed by [`ExpertRouting::MadeItPaths`]. This is
/// the model [`MadeItMerger::merged_model`](ContinualMethod::merged_model) returns, also
/// for a state read back from an expert store.
///
/// # Errors
/// [`MergeError::InvalidState`] for a task id without a name.
pub fn expert_model(
    state: &MadeIt,
    backbone: ParamDict,
    task_name: impl Fn(u32) -> Option<TaskId>,
) -> Result<ExpertModel, MergeError> {
    let mut model = ExpertModel::new(backbone).with_routing(ExpertRouting::MadeItPaths {
        tokens: state.config().token_aggregation,
    });
    for m in state.modules() {
        let experts = m
            .experts()
            .iter()
            .map(|e| {
                let tasks = e
                    .tasks()
                    .iter()
                    .map(|&t| {
                        task_name(t).ok_or_else(|| invalid(format!("task id {t} has no name")))
                    })
                    .collect::<Result<Vec<_>, MergeError>>()?;
                let factors = LowRankFactors::from_mats(e.u(), e.s(), e.v())
                    .map_err(|e| invalid(format!("expert factors: {e}")))?;
                Ok(LowRankExpert::new(factors, tasks))
            })
            .collect::<Result<Vec<_>, MergeError>>()?;
        model.experts.insert(m.module().weight_key.clone(), experts);
    }
    Ok(model)
}
