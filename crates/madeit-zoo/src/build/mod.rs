//! Building the zoo: pretraining, heads, fine-tuning, evaluation and export, staged so that
//! an interrupted build resumes and a failed one never leaves a zoo that looks complete.
//!
//! Stages, each saved under the staging folder `<zoo>.partial/` as soon as it completes
//! (its files first, then a small JSON record under `stages/` that marks it done):
//!
//! 1. **pretrain**: a tower initialised from the seed is trained on the pretraining pool
//!    (the [`Split::Pretrain`] images of the sources of
//!    [`BuildConfig::pretrain_sources`], which are in no task's train, val, seed or test
//!    split) with a cosine classifier over the distinct class *names* of the pool; saved as
//!    `pretrained/`, and the classifier's vectors as `heads/names.safetensors`.
//! 2. **heads**: one name-based head per task ([`crate::head::name_head`]): the
//!    pretraining vector of each class name, or a fixed seeded vector for a name
//!    pretraining never saw; nothing is fitted to the task. The pretrained tower is
//!    evaluated with it on val and test.
//! 3. **finetune:`<task>`**, per task: the pretrained tower fine-tuned on the task's train
//!    split against its frozen head (only the tower moves); evaluated on val and test; the
//!    spectral energy of its task vector is measured.
//! 4. **export**: the val, seed and test splits, then `zoo.json`.
//!
//! Finally the staging folder is renamed to the zoo folder, so a zoo folder only ever
//! appears complete. Records carry a fingerprint of the [`BuildConfig`]; a staging folder
//! made with another configuration is discarded. Nothing is selected on test: the runs
//! have fixed lengths and the test accuracy is only measured.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use madeit_data::{
    ImageSet, PretrainPart, SourceId, Split, TaskData, TaskGroup, export_task, load_tasks_and_pool,
    pretraining_pool,
};
use madeit_linalg::random::{GOLDEN_GAMMA, mix64};
use madeit_params::ParamDict;
use madeit_vit::{Activation, ClipVisionConfig, ClipVisionModel, TaskHead, TrainableWeights};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::energy::{DEFAULT_ENERGY_FRACTION, EnergyReport, task_vector_energy};
use crate::error::{Result, ZooError};
use crate::head::{NameVectors, evaluate, name_head};
use crate::manifest::{
    HeadSummary, MANIFEST_FILE, Manifest, PretrainPartSummary, PretrainSummary, RunSummary,
    SplitAccuracy, SplitSizes, TaskAccuracy, TaskEntry, TaskVectorNorm, Timings, Versions,
    ZOO_FORMAT, write_json_atomic,
};
use crate::model::{init_tower, tower_from_params};
use crate::train::{CosineClassifier, StepInfo, TrainConfig, TrainLog, Trainee, shuffle, train};
use crate::zoo::{Zoo, layout, save_tower};

mod config;
mod stages;

pub use config::*;
pub use stages::*;

/// Where and how to build.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOptions {
    /// The zoo folder to create.
    pub zoo_dir: PathBuf,
    /// The data cache (already fetched, see [`madeit_data::fetch_sources`]).
    pub cache_dir: PathBuf,
    /// The build configuration.
    pub config: BuildConfig,
    /// Rebuild even when a complete zoo exists (it is replaced only once the new one is
    /// complete).
    pub force: bool,
    /// Worker threads for the compute kernels; `None` uses every available core.
    pub threads: Option<usize>,
}

/// Progress of a build, for display.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BuildEvent {
    /// The staging folder was made with another configuration and was removed.
    DiscardedStale {
        /// The staging folder.
        dir: PathBuf,
    },
    /// The data is loaded: the build will take `total_steps` steps (training steps of
    /// every stage still to run, plus one per head and one per exported task).
    Planned {
        /// Number of steps.
        total_steps: usize,
    },
    /// A stage begins; `total` is its number of steps (0 when unknown).
    StageStarted {
        /// `load`, `pretrain`, `heads`, `finetune:<task>`, `export`.
        stage: String,
        /// Number of steps.
        total: usize,
    },
    /// A step of the current stage is done.
    Step {
        /// The stage.
        stage: String,
        /// Steps done.
        done: usize,
        /// Number of steps.
        total: usize,
        /// The training loss of the step, for training stages.
        loss: Option<f32>,
    },
    /// A stage is done.
    StageFinished {
        /// The stage.
        stage: String,
        /// Wall-clock seconds.
        seconds: f64,
        /// A one-line summary.
        detail: String,
    },
    /// A stage was already done by an earlier, interrupted build and is reused.
    StageReused {
        /// The stage.
        stage: String,
        /// A one-line summary.
        detail: String,
    },
}

/// What [`build_zoo`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildOutcome {
    /// A complete zoo was already there; nothing was done.
    AlreadyComplete(Box<Manifest>),
    /// The zoo was built.
    Built(Box<Manifest>),
}

/// The staging folder of a zoo folder: `<zoo>.partial` beside it.
#[must_use]
pub fn staging_dir(zoo_dir: &Path) -> PathBuf {
    let name = zoo_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "zoo".into());
    zoo_dir.with_file_name(format!("{name}.partial"))
}

#[derive(Debug, Serialize, Deserialize)]
struct BuildRecord {
    fingerprint: String,
    config: BuildConfig,
}

#[derive(Debug, Serialize, Deserialize)]
struct PretrainRecord {
    summary: PretrainSummary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HeadRecord {
    task: String,
    head: HeadSummary,
    pretrained: SplitAccuracy,
}

#[derive(Debug, Serialize, Deserialize)]
struct HeadsRecord {
    tasks: Vec<HeadRecord>,
    seconds: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct FinetuneRecord {
    task: String,
    seed: u64,
    run: RunSummary,
    finetuned: SplitAccuracy,
    energy: EnergyReport,
    task_vector: TaskVectorNorm,
    seconds: f64,
}

fn read_record<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn run_summary(log: &TrainLog, cfg: &TrainConfig) -> RunSummary {
    RunSummary {
        steps: cfg.steps,
        batch_size: cfg.batch_size,
        first_loss: log.first_loss,
        last_loss: log.last_loss,
        seconds: log.seconds,
    }
}

/// Builds the zoo described by `opts` (see the module docs) from the data in the cache,
/// reporting progress to `on_event`. The data must already be in the cache
/// ([`madeit_data::fetch_sources`]).
///
/// # Errors
/// [`ZooError::Incomplete`] when `zoo_dir` holds an incomplete zoo and `force` is off (it is
/// never overwritten silently); the errors of loading, training, evaluation and I/O. On
/// error the staging folder keeps the completed stages for the next attempt.
pub fn build_zoo(
    opts: &BuildOptions,
    on_event: &mut (dyn FnMut(&BuildEvent) + Send),
) -> Result<BuildOutcome> {
    opts.config.check()?;
    if let Some(manifest) = existing_zoo(opts)? {
        return Ok(BuildOutcome::AlreadyComplete(Box::new(manifest)));
    }
    let t0 = Instant::now();
    on_event(&BuildEvent::StageStarted {
        stage: "load".into(),
        total: 0,
    });
    let (tasks, pool) = load_tasks_and_pool(
        &opts.cache_dir,
        &opts.config.group.tasks(),
        &opts.config.pretrain_sources,
        opts.config.pretrain_relabel,
    )?;
    let load_seconds = t0.elapsed().as_secs_f64();
    on_event(&BuildEvent::StageFinished {
        stage: "load".into(),
        seconds: load_seconds,
        detail: format!("{} tasks, {} pretraining sources", tasks.len(), pool.len()),
    });
    build_and_commit(opts, &tasks, &pool, load_seconds, on_event)
}

/// As [`build_zoo`], with the tasks given instead of loaded from the cache (tests, custom
/// task lists). `opts.cache_dir`, `group` and `pretrain_sources` are not used: the pool is
/// the reserved images of the given upright tasks ([`pretraining_pool`]).
///
/// # Errors
/// As [`build_zoo`].
pub fn build_zoo_from_tasks(
    opts: &BuildOptions,
    tasks: &[TaskData],
    on_event: &mut (dyn FnMut(&BuildEvent) + Send),
) -> Result<BuildOutcome> {
    opts.config.check()?;
    if let Some(manifest) = existing_zoo(opts)? {
        return Ok(BuildOutcome::AlreadyComplete(Box::new(manifest)));
    }
    let pool = pretraining_pool(tasks)?;
    build_and_commit(opts, tasks, &pool, 0.0, on_event)
}

/// The manifest of the complete zoo already at `opts.zoo_dir` (unless `force`).
fn existing_zoo(opts: &BuildOptions) -> Result<Option<Manifest>> {
    // A zoo swapped out by a build killed before its new one was in place comes back.
    madeit_params::fs::recover(&opts.zoo_dir)?;
    if !opts.zoo_dir.exists() {
        return Ok(None);
    }
    match Zoo::open(&opts.zoo_dir) {
        Ok(zoo) if !opts.force => Ok(Some(zoo.manifest().clone())),
        Err(e) if !opts.force => Err(e),
        _ => Ok(None),
    }
}

/// The number of worker threads `opts` asks for.
fn thread_count(opts: &BuildOptions) -> usize {
    opts.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1)
}

fn build_and_commit(
    opts: &BuildOptions,
    tasks: &[TaskData],
    pool: &[PretrainPart],
    load_seconds: f64,
    on_event: &mut (dyn FnMut(&BuildEvent) + Send),
) -> Result<BuildOutcome> {
    let zoo_dir = &opts.zoo_dir;
    let threads = thread_count(opts);
    let pool_threads = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| ZooError::ThreadPool {
            message: e.to_string(),
        })?;
    let manifest = pool_threads
        .install(|| build_staged(opts, tasks, pool, load_seconds, threads, on_event))?;
    let staging = staging_dir(zoo_dir);
    if let Some(parent) = zoo_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| ZooError::io(parent, e))?;
    }
    // `force`: the old zoo is swapped out only now that the new one is complete, in one
    // step where the file system allows it (`madeit_params::fs::swap_in`).
    madeit_params::fs::swap_in(&staging, zoo_dir)?;
    // The swap is the commit point; check the result once more.
    Zoo::open(zoo_dir)?;
    Ok(BuildOutcome::Built(Box::new(manifest)))
}

/// Prepares the staging folder: reuses it when its fingerprint matches, discards it
/// otherwise.
fn prepare_staging(
    staging: &Path,
    config: &BuildConfig,
    on_event: &mut (dyn FnMut(&BuildEvent) + Send),
) -> Result<()> {
    let record_path = staging.join("stages").join("build.json");
    let fingerprint = config.fingerprint();
    if staging.exists() {
        let same =
            read_record::<BuildRecord>(&record_path).is_some_and(|r| r.fingerprint == fingerprint);
        if !same {
            std::fs::remove_dir_all(staging).map_err(|e| ZooError::io(staging, e))?;
            on_event(&BuildEvent::DiscardedStale {
                dir: staging.to_path_buf(),
            });
        }
    }
    if !record_path.is_file() {
        write_json_atomic(
            &record_path,
            &BuildRecord {
                fingerprint,
                config: config.clone(),
            },
        )?;
    }
    Ok(())
}

fn build_staged(
    opts: &BuildOptions,
    tasks: &[TaskData],
    pool: &[PretrainPart],
    load_seconds: f64,
    threads: usize,
    on_event: &mut (dyn FnMut(&BuildEvent) + Send),
) -> Result<Manifest> {
    let cfg = &opts.config;
    let staging = staging_dir(&opts.zoo_dir);
    prepare_staging(&staging, cfg, on_event)?;
    let stages = staging.join("stages");

    let mut total_steps = 2 * tasks.len();
    if !stages.join("pretrain.json").is_file() {
        total_steps += cfg.pretrain.steps;
    }
    for t in tasks {
        if !stages
            .join(format!("finetune-{}.json", t.spec.name))
            .is_file()
        {
            total_steps += cfg.finetune_steps(t.splits.train.len());
        }
    }
    on_event(&BuildEvent::Planned { total_steps });
    let mut ctx = StageContext {
        cfg,
        staging: &staging,
        stages: &stages,
        on_event,
    };
    let pretrain = stage_pretrain(&mut ctx, pool)?;
    let pretrained = ParamDict::load(
        &staging
            .join(layout::pretrained_dir())
            .join(madeit_vit::WEIGHTS_FILE),
    )?;
    let names = crate::zoo::load_name_vectors(&staging.join(layout::names_file()))?;
    let heads = stage_heads(&mut ctx, tasks, &names, &pretrained)?;
    let mut finetunes = Vec::with_capacity(tasks.len());
    for task in tasks {
        finetunes.push(stage_finetune(&mut ctx, task, &pretrained)?);
    }

    // Export.
    let t0 = Instant::now();
    ctx.emit(&BuildEvent::StageStarted {
        stage: "export".into(),
        total: tasks.len(),
    });
    for (i, task) in tasks.iter().enumerate() {
        export_task(&staging.join(layout::data_dir()), task)?;
        ctx.emit(&BuildEvent::Step {
            stage: "export".into(),
            done: i + 1,
            total: tasks.len(),
            loss: None,
        });
    }
    let mut entries = Vec::with_capacity(tasks.len());
    for ((task, head), ft) in tasks.iter().zip(&heads.tasks).zip(&finetunes) {
        let s = &task.splits;
        entries.push(TaskEntry {
            id: task.spec.id,
            name: task.spec.name.to_owned(),
            summary: task.spec.summary.to_owned(),
            source: task.spec.source,
            construction: task.spec.construction,
            resize: task.spec.resize,
            class_names: task.class_names().to_vec(),
            splits: SplitSizes {
                pretrain: s.pretrain.len(),
                train: s.train.len(),
                val: s.val.len(),
                seed: s.seed.len(),
                test: s.test.len(),
            },
            split_seed: madeit_data::split::split_seed(task.spec.source),
            finetune_seed: ft.seed,
            head: head.head.clone(),
            accuracy: TaskAccuracy {
                pretrained: head.pretrained,
                finetuned: ft.finetuned,
            },
            finetune: ft.run.clone(),
            energy: ft.energy.clone(),
            task_vector: ft.task_vector,
        });
    }
    let export_seconds = t0.elapsed().as_secs_f64();
    let mut timings = Timings {
        load: load_seconds,
        pretrain: pretrain.run.seconds,
        heads: heads.seconds,
        finetune: finetunes
            .iter()
            .map(|f| (f.task.clone(), f.seconds))
            .collect(),
        export: export_seconds,
        total: 0.0,
    };
    timings.total = timings.load
        + timings.pretrain
        + timings.heads
        + timings.finetune.iter().map(|(_, s)| s).sum::<f64>()
        + timings.export;
    let manifest = Manifest {
        format: ZOO_FORMAT.to_owned(),
        versions: Versions {
            madeit: env!("CARGO_PKG_VERSION").to_owned(),
            split_format: madeit_data::export::SPLIT_FORMAT.to_owned(),
        },
        seed: cfg.seed,
        group: cfg.group,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        threads,
        model: cfg.model.clone(),
        build: cfg.clone(),
        pretraining: pretrain,
        tasks: entries,
        timings,
    };
    manifest.save(&staging.join(MANIFEST_FILE))?;
    ctx.emit(&BuildEvent::StageFinished {
        stage: "export".into(),
        seconds: export_seconds,
        detail: format!("{} tasks", tasks.len()),
    });
    Ok(manifest)
}
