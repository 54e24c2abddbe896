//! Sequential fine-tuning ("C. Fine-Tuned" of the continual-merging tables): one vision
//! tower trained through a task order, a non-merging reference row.
//!
//! Unlike every merging method, which only combines the zoo's checkpoints (and at most
//! reads a few unlabelled seed images), sequential fine-tuning **needs each task's labelled
//! training data**. The zoo does not export train splits, so they are rebuilt from the data
//! cache the zoo was built from ([`Zoo::train_split`]), and checked against the manifest
//! (split sizes, classes, split seed) and against the exported seed split (the same
//! images), so that the rebuilt split is the one the build trained on.
//!
//! Recipe. Starting from the pretrained tower `theta_0`, for the tasks `t = 1..T` in order:
//!
//! ```text
//! theta_t = finetune(theta_{t-1}; train_t, head_t, seed_t)
//! ```
//!
//! where `finetune` is literally the zoo's per-task fine-tuning, [`finetune_tower`]: a fresh
//! Adam (AdamW when [`BuildConfig::finetune`] has weight decay) and a fresh warm-up + cosine
//! learning-rate schedule per task (optimiser state and schedule are reset at every task),
//! cross-entropy of cosine logits (scale 100) through the task's frozen head, only the tower
//! moving, batches and augmentation from the task's fine-tune seed recorded in the manifest
//! ([`crate::TaskEntry::finetune_seed`]). Hence a one-task order reproduces the zoo's
//! fine-tuned checkpoint of that task bit for bit.
//!
//! After every task the current weights `theta_t` are handed to a callback, so that the
//! caller can evaluate every task after each step (this module does no evaluation).
//!
//! Cost: task `t` takes [`BuildConfig::finetune_steps`]`(n_train_t)` optimiser steps of
//! [`BuildConfig::finetune`]`.batch_size` images each, i.e. one zoo fine-tune per task
//! (the manifest's `finetune.seconds` of each task is the time of that task's run), plus
//! whatever the callback does.

use std::path::Path;

use madeit_data::{ImageSet, Split, TaskData, load_task, task_by_name};
use madeit_params::ParamDict;
use madeit_vit::TaskHead;

use crate::build::{BuildConfig, finetune_tower};
use crate::error::{Result, ZooError};
use crate::manifest::TaskEntry;
use crate::train::{StepInfo, TrainLog};
use crate::zoo::Zoo;

/// One task of a sequential fine-tuning order.
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialTask {
    /// The task's name (in progress reports and errors).
    pub name: String,
    /// The labelled training images (the task's train split).
    pub train: ImageSet,
    /// The task's frozen head (its width must be the tower's embedding width and every
    /// label of `train` one of its classes).
    pub head: TaskHead,
    /// Seed of the batch order and augmentation of this task's run.
    pub seed: u64,
}

/// The run of one task of a sequential fine-tuning.
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialRun {
    /// The task.
    pub task: String,
    /// The seed of its run.
    pub seed: u64,
    /// Optimiser steps ([`BuildConfig::finetune_steps`] of its train size).
    pub steps: usize,
    /// The run's log (losses, time).
    pub log: TrainLog,
}

/// What [`sequential_finetune`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialOutcome {
    /// The tower after the last task (bare HF `CLIPVisionModel` names).
    pub params: ParamDict,
    /// One run per task, in order.
    pub runs: Vec<SequentialRun>,
}

/// The stage name of task `name` in a sequential run (it names the run in errors).
fn stage_name(name: &str) -> String {
    format!("sequential-finetune:{name}")
}

/// Cheap checks of every task before any training, so that bad input fails at once rather
/// than after the earlier tasks have trained.
fn check_task(config: &BuildConfig, task: &SequentialTask) -> Result<()> {
    let what = stage_name(&task.name);
    let bad = |reason: String| {
        Err(ZooError::InvalidData {
            what: what.clone(),
            reason,
        })
    };
    let m = &config.model;
    if task.train.n == 0 {
        return bad("no training images".into());
    }
    if (task.train.height, task.train.width, task.train.channels)
        != (m.image_size, m.image_size, m.num_channels)
    {
        return bad(format!(
            "images are {}x{}x{}, the tower takes {}x{}x{}",
            task.train.height,
            task.train.width,
            task.train.channels,
            m.image_size,
            m.image_size,
            m.num_channels
        ));
    }
    if task.head.dim() != m.hidden_size {
        return bad(format!(
            "the head `{}` has width {}, the tower embeds in {}",
            task.head.name(),
            task.head.dim(),
            m.hidden_size
        ));
    }
    if let Some(l) = task
        .train
        .labels
        .iter()
        .find(|&&l| l as usize >= task.head.num_classes())
    {
        return bad(format!(
            "label {l} but the head has {} classes",
            task.head.num_classes()
        ));
    }
    Ok(())
}

/// One step of sequential fine-tuning: the tower `start` (the pretrained one at the first
/// step, the previous step's after) fine-tuned on `task` with the zoo's recipe
/// ([`finetune_tower`] with `config`, a fresh optimiser and schedule), after the task's
/// cheap checks. Returns the new weights and the step's run. Both [`sequential_finetune`]
/// and the evaluation's C. Fine-Tuned stream take their steps through it.
///
/// # Errors
/// [`ZooError::InvalidData`] naming the task when its train set is empty, its images do not
/// fit the tower, its head's width is not the tower's embedding width or a label is not a
/// class of its head (checked before training); [`ZooError::Vit`] (a checkpoint report)
/// when `start` does not fit `config.model`; [`ZooError::Diverged`]; the backend's errors.
pub fn sequential_step(
    config: &BuildConfig,
    start: &ParamDict,
    task: &SequentialTask,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<(ParamDict, SequentialRun)> {
    check_task(config, task)?;
    let (params, log) = finetune_tower(
        config,
        start,
        &task.head,
        &task.train,
        task.seed,
        &stage_name(&task.name),
        on_step,
    )?;
    let run = SequentialRun {
        task: task.name.clone(),
        seed: task.seed,
        steps: config.finetune_steps(task.train.n),
        log,
    };
    Ok((params, run))
}

/// Sequential fine-tuning (see the module docs): the tower `pretrained` (of
/// `config.model`) fine-tuned through `tasks` in order with the zoo's recipe
/// ([`finetune_tower`] with `config`), each task starting from the previous task's weights
/// with a fresh optimiser and schedule.
///
/// `on_step(index, task, step)` is called after every optimiser step (`index` is the
/// 0-based position of the task in the order); `on_task(index, task, weights)` after every
/// task with the tower's current weights; an error it returns stops the run and is
/// returned.
///
/// Cost: `sum_t config.finetune_steps(tasks[t].train.n)` optimiser steps.
///
/// # Errors
/// [`ZooError::InvalidConfig`] for a bad `config` or an empty `tasks`;
/// [`ZooError::InvalidData`] naming the task when its train set is empty, its images do not
/// fit the tower, its head's width is not the tower's embedding width or a label is not a
/// class of its head (all checked before any training); [`ZooError::Vit`] (a checkpoint
/// report) when `pretrained` does not fit `config.model`; [`ZooError::Diverged`]; the backend's errors;
/// and whatever `on_task` returns.
pub fn sequential_finetune<E: From<ZooError>>(
    config: &BuildConfig,
    pretrained: &ParamDict,
    tasks: &[SequentialTask],
    on_step: &mut dyn FnMut(usize, &str, &StepInfo),
    on_task: &mut dyn FnMut(usize, &str, &ParamDict) -> std::result::Result<(), E>,
) -> std::result::Result<SequentialOutcome, E> {
    config.check()?;
    if tasks.is_empty() {
        return Err(ZooError::InvalidConfig {
            field: "tasks",
            reason: "sequential fine-tuning needs at least one task".into(),
        }
        .into());
    }
    for task in tasks {
        check_task(config, task)?;
    }
    let mut current: Option<ParamDict> = None;
    let mut runs = Vec::with_capacity(tasks.len());
    for (index, task) in tasks.iter().enumerate() {
        let start = current.as_ref().unwrap_or(pretrained);
        let (params, run) = sequential_step(config, start, task, &mut |s: &StepInfo| {
            on_step(index, &task.name, s);
        })?;
        on_task(index, &task.name, &params)?;
        runs.push(run);
        current = Some(params);
    }
    let params = current.ok_or_else(|| ZooError::InvalidConfig {
        field: "tasks",
        reason: "sequential fine-tuning needs at least one task".into(),
    })?;
    Ok(SequentialOutcome { params, runs })
}

/// Checks that `data` is the data the zoo's task `entry` was built from: the same task
/// (source, construction, resize, classes), the same split seed and sizes, and the same
/// images in the seed split as the zoo's exported one.
fn check_task_data(zoo: &Zoo, entry: &TaskEntry, data: &TaskData) -> Result<()> {
    let mismatch = |reason: String| {
        Err(ZooError::TrainDataMismatch {
            task: entry.name.clone(),
            reason,
        })
    };
    let spec = &data.spec;
    if spec.name != entry.name
        || spec.source != entry.source
        || spec.construction != entry.construction
        || spec.resize != entry.resize
    {
        return mismatch(format!(
            "the data is task `{}` ({}, {:?}, {:?}), the zoo's is ({}, {:?}, {:?})",
            spec.name,
            spec.source,
            spec.construction,
            spec.resize,
            entry.source,
            entry.construction,
            entry.resize
        ));
    }
    if data.class_names() != entry.class_names.as_slice() {
        return mismatch("other class names".into());
    }
    let seed = madeit_data::split::split_seed(spec.source);
    if seed != entry.split_seed {
        return mismatch(format!(
            "split seed {seed:#x}, the zoo's is {:#x}",
            entry.split_seed
        ));
    }
    let s = &data.splits;
    let sizes = [
        s.pretrain.len(),
        s.train.len(),
        s.val.len(),
        s.seed.len(),
        s.test.len(),
    ];
    let z = &entry.splits;
    let expected = [z.pretrain, z.train, z.val, z.seed, z.test];
    if sizes != expected {
        return mismatch(format!(
            "split sizes (pretrain, train, val, seed, test) {sizes:?}, the zoo's are {expected:?}"
        ));
    }
    let seed_set = data.split(Split::Seed)?;
    let exported = zoo.split(&entry.name, Split::Seed)?;
    if seed_set.images != exported.images {
        return mismatch("the seed split's images differ from the zoo's exported ones".into());
    }
    Ok(())
}

impl Zoo {
    /// The train split of the zoo's task `task` as the build made it, rebuilt from `data`
    /// (loaded from the cache or prepared otherwise, as for
    /// [`crate::build_zoo_from_tasks`]) after checking that `data` is the data the zoo was
    /// built from (task, classes, split seed and sizes in the manifest, images of the
    /// exported seed split).
    ///
    /// # Errors
    /// [`ZooError::UnknownTask`]; [`ZooError::TrainDataMismatch`] naming the task when the
    /// data differs; the errors of reading the exported seed split.
    pub fn train_split_from_data(&self, task: &str, data: &TaskData) -> Result<ImageSet> {
        let entry = self.task(task)?;
        check_task_data(self, entry, data)?;
        Ok(data.split(Split::Train)?)
    }

    /// The train split of the zoo's task `task`, rebuilt from the data cache `cache_dir`
    /// the way the build loads it ([`madeit_data::load_task`]) and checked as
    /// [`Zoo::train_split_from_data`] says. The zoo does not export train splits.
    ///
    /// # Errors
    /// [`ZooError::UnknownTask`]; [`ZooError::TrainDataUnavailable`] naming the task and
    /// the cache when its source is not in the cache or cannot be read;
    /// [`ZooError::TrainDataMismatch`] when the cached data is not what the zoo was built
    /// from.
    pub fn train_split(&self, task: &str, cache_dir: &Path) -> Result<ImageSet> {
        let data = self.load_task_data(task, cache_dir)?;
        self.train_split_from_data(task, &data)
    }

    /// Loads `task`'s data from the cache, errors naming the task.
    fn load_task_data(&self, task: &str, cache_dir: &Path) -> Result<TaskData> {
        let entry = self.task(task)?;
        let unavailable = |reason: String| ZooError::TrainDataUnavailable {
            task: entry.name.clone(),
            cache_dir: cache_dir.to_path_buf(),
            reason,
        };
        let spec = task_by_name(&entry.name).map_err(|e| unavailable(e.to_string()))?;
        load_task(cache_dir, &spec).map_err(|e| unavailable(e.to_string()))
    }

    /// The order `names` as [`SequentialTask`]s: each task's train split from `data` (one
    /// [`TaskData`] per task, found by name, checked as [`Zoo::train_split_from_data`]
    /// says), its frozen head and its fine-tune seed from the manifest.
    ///
    /// # Errors
    /// [`ZooError::UnknownTask`]; [`ZooError::TrainDataMismatch`] when a task has no data
    /// in `data` or other data than the zoo's; the head's errors.
    pub fn sequential_tasks_from_data(
        &self,
        names: &[&str],
        data: &[TaskData],
    ) -> Result<Vec<SequentialTask>> {
        names
            .iter()
            .map(|&name| {
                let entry = self.task(name)?;
                let d = data.iter().find(|d| d.spec.name == name).ok_or_else(|| {
                    ZooError::TrainDataMismatch {
                        task: name.to_owned(),
                        reason: "no data was given for this task".into(),
                    }
                })?;
                self.sequential_task(entry, self.train_split_from_data(name, d)?)
            })
            .collect()
    }

    /// The order `names` as [`SequentialTask`]s: each task's train split rebuilt from the
    /// data cache `cache_dir` ([`Zoo::train_split`]), its frozen head and its fine-tune seed
    /// from the manifest. Every split is loaded (and checked) before returning.
    ///
    /// # Errors
    /// As [`Zoo::train_split`]; the head's errors.
    pub fn sequential_tasks(
        &self,
        names: &[&str],
        cache_dir: &Path,
    ) -> Result<Vec<SequentialTask>> {
        // Unknown names fail before any data is read.
        for &name in names {
            self.task(name)?;
        }
        names
            .iter()
            .map(|&name| {
                let train = self.train_split(name, cache_dir)?;
                self.sequential_task(self.task(name)?, train)
            })
            .collect()
    }

    fn sequential_task(&self, entry: &TaskEntry, train: ImageSet) -> Result<SequentialTask> {
        Ok(SequentialTask {
            name: entry.name.clone(),
            train,
            head: self.head(&entry.name)?,
            seed: entry.finetune_seed,
        })
    }

    /// Sequential fine-tuning of this zoo's pretrained tower through the order `names`
    /// ([`sequential_finetune`] with the zoo's build configuration, its heads and fine-tune
    /// seeds, the train splits rebuilt from the data cache `cache_dir`, all loaded and
    /// checked before training). Callbacks as [`sequential_finetune`].
    ///
    /// # Errors
    /// As [`Zoo::sequential_tasks`] and [`sequential_finetune`].
    pub fn sequential_finetune<E: From<ZooError>>(
        &self,
        names: &[&str],
        cache_dir: &Path,
        on_step: &mut dyn FnMut(usize, &str, &StepInfo),
        on_task: &mut dyn FnMut(usize, &str, &ParamDict) -> std::result::Result<(), E>,
    ) -> std::result::Result<SequentialOutcome, E> {
        let tasks = self.sequential_tasks(names, cache_dir)?;
        let pretrained = self.pretrained()?;
        sequential_finetune(
            &self.manifest().build,
            &pretrained,
            &tasks,
            on_step,
            on_task,
        )
    }
}
