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
//! 3. **finetune:<task>**, per task: the pretrained tower fine-tuned on the task's train
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
use madeit_vit::{Activation, ClipVisionConfig, ClipVisionModel, TaskHead};
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
use crate::model::TrainableVit;
use crate::train::{CosineClassifier, StepInfo, TrainConfig, TrainLog, Trainee, shuffle, train};
use crate::zoo::{Zoo, layout, save_tower};

/// Every setting of a zoo build. `Default` is the configuration of the embedded zoo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildConfig {
    /// Seed of every random choice (initial weights, classifier, batch order, vectors of
    /// unseen names).
    pub seed: u64,
    /// The tasks: the default eight or the long group of fourteen.
    pub group: TaskGroup,
    /// The sources whose reserved ([`Split::Pretrain`]) images form the pretraining pool.
    pub pretrain_sources: Vec<SourceId>,
    /// Whether a source with a second labelling of its images (the emoji's subcategories,
    /// [`madeit_data::SourceData::pretrain_labels`]) joins the pool under those names
    /// instead of its task's names.
    pub pretrain_relabel: bool,
    /// The tower.
    pub model: ClipVisionConfig,
    /// Pretraining run.
    pub pretrain: TrainConfig,
    /// Logit scale `s` of the pretraining cosine classifier.
    pub pretrain_logit_scale: f32,
    /// At most this many pretraining images per source (a seeded sample), to keep the
    /// sources balanced; `None` uses them all.
    pub pretrain_images_per_source: Option<usize>,
    /// Fine-tuning run of every task; with `finetune_epochs > 0`, `finetune.steps` is the
    /// largest number of steps (see [`BuildConfig::finetune_steps`]).
    pub finetune: TrainConfig,
    /// Logit scale `s` of `s cos(e, h_c)` in the fine-tuning loss (CLIP's 100 by default;
    /// evaluation takes the argmax, which does not depend on it).
    pub finetune_logit_scale: f32,
    /// Which tensors fine-tuning moves.
    pub finetune_scope: FinetuneScope,
    /// Fine-tuning length in passes over the task's train split (0 = always
    /// `finetune.steps`).
    pub finetune_epochs: f64,
    /// The fewest fine-tuning steps of a task when `finetune_epochs > 0`.
    pub finetune_min_steps: usize,
    /// Images per forward when embedding and evaluating.
    pub eval_batch_size: usize,
    /// Validation accuracy is measured on at most this many images per task (a seeded
    /// sample; the test split is always evaluated whole); `None` uses the whole split.
    pub val_images: Option<usize>,
    /// Fraction of singular values whose energy is reported ([`task_vector_energy`]).
    pub energy_fraction: f64,
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            group: TaskGroup::Eight,
            pretrain_sources: default_pretrain_sources(),
            pretrain_relabel: false,
            model: ClipVisionConfig {
                hidden_size: 144,
                intermediate_size: 576,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                image_size: madeit_data::IMAGE_SIZE,
                patch_size: 8,
                num_channels: madeit_data::CHANNELS,
                layer_norm_eps: 1e-5,
                hidden_act: Activation::QuickGelu,
                projection_dim: 144,
            },
            pretrain: TrainConfig {
                steps: 2000,
                batch_size: 64,
                lr: 1e-3,
                warmup_steps: 100,
                weight_decay: 0.05,
                max_shift: 2,
            },
            pretrain_logit_scale: 16.0,
            pretrain_images_per_source: Some(6000),
            finetune: TrainConfig {
                steps: 200,
                batch_size: 64,
                lr: 5e-4,
                warmup_steps: 20,
                weight_decay: 0.01,
                max_shift: 1,
            },
            finetune_logit_scale: 16.0,
            finetune_scope: FinetuneScope::AttentionWeights,
            finetune_epochs: 0.0,
            finetune_min_steps: 100,
            eval_batch_size: 250,
            val_images: Some(500),
            energy_fraction: DEFAULT_ENERGY_FRACTION,
        }
    }
}

impl BuildConfig {
    /// A configuration small enough for tests: a 2-layer width-32 tower, a few steps.
    #[must_use]
    pub fn micro() -> Self {
        Self {
            model: ClipVisionConfig {
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                projection_dim: 32,
                ..Self::default().model
            },
            pretrain: TrainConfig {
                steps: 6,
                batch_size: 8,
                warmup_steps: 2,
                ..Self::default().pretrain
            },
            finetune: TrainConfig {
                steps: 4,
                batch_size: 8,
                warmup_steps: 1,
                ..Self::default().finetune
            },
            finetune_epochs: 0.0,
            eval_batch_size: 16,
            ..Self::default()
        }
    }

    /// Fine-tuning steps of a task with `n_train` training images:
    /// `clamp(ceil(finetune_epochs * n_train / batch_size), finetune_min_steps,
    /// finetune.steps)`, or `finetune.steps` when `finetune_epochs` is 0.
    #[must_use]
    pub fn finetune_steps(&self, n_train: usize) -> usize {
        if self.finetune_epochs <= 0.0 {
            return self.finetune.steps;
        }
        let b = self.finetune.batch_size.max(1) as f64;
        let steps = (self.finetune_epochs * n_train as f64 / b).ceil() as usize;
        steps.clamp(
            self.finetune_min_steps.min(self.finetune.steps),
            self.finetune.steps,
        )
    }

    /// The fine-tuning run of a task with `n_train` training images: [`BuildConfig::finetune`]
    /// with `steps` = [`BuildConfig::finetune_steps`]`(n_train)`.
    #[must_use]
    pub fn finetune_config(&self, n_train: usize) -> TrainConfig {
        TrainConfig {
            steps: self.finetune_steps(n_train),
            ..self.finetune.clone()
        }
    }

    /// The seed (batch order and augmentation) of the fine-tuning run of the task with id
    /// `task_id`, as recorded in the manifest ([`TaskEntry::finetune_seed`]).
    #[must_use]
    pub fn finetune_seed(&self, task_id: u32) -> u64 {
        derive_seed(self.seed, STREAM_FINETUNE + u64::from(task_id))
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`ZooError::InvalidConfig`] or [`ZooError::Vit`] naming the first bad field.
    pub fn check(&self) -> Result<()> {
        self.model.validate()?;
        self.pretrain.check()?;
        self.finetune.check()?;
        let bad = |field: &'static str, reason: &str| {
            Err(ZooError::InvalidConfig {
                field,
                reason: reason.into(),
            })
        };
        if !(self.pretrain_logit_scale.is_finite() && self.pretrain_logit_scale > 0.0) {
            return bad("pretrain_logit_scale", "must be finite and positive");
        }
        if !(self.finetune_logit_scale.is_finite() && self.finetune_logit_scale > 0.0) {
            return bad("finetune_logit_scale", "must be finite and positive");
        }
        if self.pretrain_images_per_source == Some(0) {
            return bad("pretrain_images_per_source", "must be positive");
        }
        if !(self.finetune_epochs.is_finite() && self.finetune_epochs >= 0.0) {
            return bad("finetune_epochs", "must be finite and non-negative");
        }
        if self.pretrain_sources.is_empty() {
            return bad("pretrain_sources", "must name at least one source");
        }
        if self.val_images == Some(0) {
            return bad("val_images", "must be positive");
        }
        if self.eval_batch_size == 0 {
            return bad("eval_batch_size", "must be positive");
        }
        if !(self.energy_fraction > 0.0 && self.energy_fraction <= 1.0) {
            return bad("energy_fraction", "must be in (0, 1]");
        }
        Ok(())
    }

    /// A 64-bit FNV-1a hash of the configuration's JSON, the names of the group's tasks
    /// (a group's tasks may change between versions while its name stays), the zoo format
    /// and the crate version: stage records made under another fingerprint are not reused.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        let tasks: Vec<&str> = self.group.tasks().iter().map(|t| t.name).collect();
        let tasks = tasks.join(",");
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text
            .bytes()
            .chain(tasks.bytes())
            .chain(ZOO_FORMAT.bytes())
            .chain(env!("CARGO_PKG_VERSION").bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// Which tensors a fine-tune moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinetuneScope {
    /// Every tensor of the tower.
    #[default]
    All,
    /// Only the linear weights of the encoder layers (q/k/v, out_proj, fc1, fc2); the
    /// embeddings, layer norms and biases keep their pretrained values.
    LinearWeights,
    /// Only the attention weights of the encoder layers (q/k/v, out_proj).
    AttentionWeights,
}

/// The sources of the default pretraining pool: every source except the two handwritten
/// digit sources (MNIST, optdigits), whose digits pretraining knows only from printed
/// (font) digits, as CLIP knows digits from the web rather than from MNIST.
#[must_use]
pub fn default_pretrain_sources() -> Vec<SourceId> {
    SourceId::ALL
        .into_iter()
        .filter(|s| !matches!(s, SourceId::Mnist | SourceId::Optdigits))
        .collect()
}

/// SplitMix64 of `seed + stream`: independent seeds for the build's random streams.
#[must_use]
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    mix64(seed.wrapping_add(stream.wrapping_mul(GOLDEN_GAMMA)))
}

const STREAM_INIT: u64 = 1;
const STREAM_CLASSIFIER: u64 = 2;
const STREAM_PRETRAIN_BATCHES: u64 = 3;
const STREAM_PRETRAIN_SUBSET: u64 = 4;
const STREAM_FINETUNE: u64 = 100;
const STREAM_NAMES: u64 = 200;

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
    let pretrain = stage_pretrain(cfg, pool, &staging, &stages, on_event)?;
    let pretrained = ParamDict::load(
        &staging
            .join(layout::pretrained_dir())
            .join(madeit_vit::WEIGHTS_FILE),
    )?;
    let names = crate::zoo::load_name_vectors(&staging.join(layout::names_file()))?;
    let heads = stage_heads(cfg, tasks, &names, &pretrained, &staging, &stages, on_event)?;
    let mut finetunes = Vec::with_capacity(tasks.len());
    for task in tasks {
        finetunes.push(stage_finetune(
            cfg,
            task,
            &pretrained,
            &staging,
            &stages,
            on_event,
        )?);
    }

    // Export.
    let t0 = Instant::now();
    on_event(&BuildEvent::StageStarted {
        stage: "export".into(),
        total: tasks.len(),
    });
    for (i, task) in tasks.iter().enumerate() {
        export_task(&staging.join(layout::data_dir()), task)?;
        on_event(&BuildEvent::Step {
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
    on_event(&BuildEvent::StageFinished {
        stage: "export".into(),
        seconds: export_seconds,
        detail: format!("{} tasks", tasks.len()),
    });
    Ok(manifest)
}

/// A seeded sample of at most `cap` indices of `0..n`, in increasing order.
fn sample(n: usize, cap: Option<usize>, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if let Some(cap) = cap.filter(|&c| c < n) {
        shuffle(&mut idx, &mut ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(cap);
        idx.sort_unstable();
    }
    idx
}

/// The pretraining set: the pool's parts concatenated, labelled by class *name*: every
/// distinct name of the parts is one class (in order of first appearance), so that parts
/// sharing a name share its class vector.
fn pretraining_set(
    cfg: &BuildConfig,
    parts: &[PretrainPart],
) -> Result<(ImageSet, Vec<PretrainPartSummary>)> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut class_names: Vec<String> = Vec::new();
    let mut summaries = Vec::with_capacity(parts.len());
    let mut dims = None;
    for (k, part) in parts.iter().enumerate() {
        let set = &part.images;
        if *dims.get_or_insert((set.height, set.width, set.channels))
            != (set.height, set.width, set.channels)
        {
            return Err(ZooError::InvalidData {
                what: "pretraining pool".into(),
                reason: format!("part `{}` has images of another size", part.task),
            });
        }
        let class_of: Vec<u32> = set
            .class_names
            .iter()
            .map(|name| match class_names.iter().position(|n| n == name) {
                Some(i) => i as u32,
                None => {
                    class_names.push(name.clone());
                    (class_names.len() - 1) as u32
                }
            })
            .collect();
        let idx = sample(
            set.n,
            cfg.pretrain_images_per_source,
            derive_seed(cfg.seed, STREAM_PRETRAIN_SUBSET + 1000 * k as u64),
        );
        let sub = set.subset(&idx)?;
        images.extend_from_slice(&sub.images);
        labels.extend(
            sub.labels
                .iter()
                .map(|&l| class_of.get(l as usize).copied().unwrap_or(0)),
        );
        summaries.push(PretrainPartSummary {
            task: part.task.to_owned(),
            source: part.source,
            images: sub.n,
            names: set.class_names.len(),
        });
    }
    let (h, w, c) = dims.ok_or_else(|| ZooError::InvalidData {
        what: "pretraining pool".into(),
        reason: "no source contributes pretraining images".into(),
    })?;
    let n = labels.len();
    Ok((
        ImageSet::new(images, n, h, w, c, labels, class_names)?,
        summaries,
    ))
}

fn progress<'a>(
    stage: &'a str,
    on_event: &'a mut (dyn FnMut(&BuildEvent) + Send),
) -> impl FnMut(&StepInfo) + 'a {
    move |s: &StepInfo| {
        on_event(&BuildEvent::Step {
            stage: stage.to_owned(),
            done: s.step,
            total: s.steps,
            loss: Some(s.loss),
        });
    }
}

fn stage_pretrain(
    cfg: &BuildConfig,
    pool: &[PretrainPart],
    staging: &Path,
    stages: &Path,
    on_event: &mut (dyn FnMut(&BuildEvent) + Send),
) -> Result<PretrainSummary> {
    let record_path = stages.join("pretrain.json");
    let dir = staging.join(layout::pretrained_dir());
    if let Some(r) = read_record::<PretrainRecord>(&record_path)
        && layout::model_files(&dir).iter().all(|p| p.is_file())
        && staging.join(layout::names_file()).is_file()
    {
        on_event(&BuildEvent::StageReused {
            stage: "pretrain".into(),
            detail: format!(
                "loss {:.3} -> {:.3}",
                r.summary.run.first_loss, r.summary.run.last_loss
            ),
        });
        return Ok(r.summary);
    }
    let (set, parts) = pretraining_set(cfg, pool)?;
    on_event(&BuildEvent::StageStarted {
        stage: "pretrain".into(),
        total: cfg.pretrain.steps,
    });
    let device = Device::flex().autodiff();
    let vit = TrainableVit::init(&cfg.model, derive_seed(cfg.seed, STREAM_INIT), &device)?;
    let classifier = CosineClassifier::random(
        set.num_classes(),
        vit.embedding_dim(),
        cfg.pretrain_logit_scale,
        derive_seed(cfg.seed, STREAM_CLASSIFIER),
        &device,
    )?;
    let (trainee, log) = train(
        Trainee { vit, classifier },
        &set,
        &cfg.pretrain,
        derive_seed(cfg.seed, STREAM_PRETRAIN_BATCHES),
        "pretrain",
        &mut progress("pretrain", on_event),
    )?;
    save_tower(&dir, &cfg.model, &trainee.vit.to_params()?)?;
    crate::zoo::save_name_vectors(
        &staging.join(layout::names_file()),
        &NameVectors {
            names: set.class_names.clone(),
            dim: trainee.vit.embedding_dim(),
            vectors: trainee.classifier.weight()?,
        },
    )?;
    let summary = PretrainSummary {
        parts,
        classes: set.num_classes(),
        names: set.class_names.clone(),
        run: run_summary(&log, &cfg.pretrain),
        seed: cfg.seed,
    };
    write_json_atomic(
        &record_path,
        &PretrainRecord {
            summary: summary.clone(),
        },
    )?;
    on_event(&BuildEvent::StageFinished {
        stage: "pretrain".into(),
        seconds: log.seconds,
        detail: format!(
            "{} images, {} classes, loss {:.3} -> {:.3}",
            set.n,
            set.num_classes(),
            log.first_loss,
            log.last_loss
        ),
    });
    Ok(summary)
}

const STREAM_VAL: u64 = 300;

fn accuracy_on(
    model: &ClipVisionModel,
    head: &TaskHead,
    task: &TaskData,
    cfg: &BuildConfig,
) -> Result<SplitAccuracy> {
    let val = task.split(Split::Val)?;
    let idx = sample(
        val.n,
        cfg.val_images,
        derive_seed(cfg.seed, STREAM_VAL + u64::from(task.spec.id)),
    );
    Ok(SplitAccuracy {
        val: evaluate(model, head, &val.subset(&idx)?, cfg.eval_batch_size)?,
        test: evaluate(model, head, &task.split(Split::Test)?, cfg.eval_batch_size)?,
    })
}

fn stage_heads(
    cfg: &BuildConfig,
    tasks: &[TaskData],
    names: &NameVectors,
    pretrained: &ParamDict,
    staging: &Path,
    stages: &Path,
    on_event: &mut (dyn FnMut(&BuildEvent) + Send),
) -> Result<HeadsRecord> {
    let record_path = stages.join("heads.json");
    if let Some(r) = read_record::<HeadsRecord>(&record_path)
        && r.tasks.len() == tasks.len()
        && tasks
            .iter()
            .all(|t| staging.join(layout::head_file(t.spec.name)).is_file())
    {
        on_event(&BuildEvent::StageReused {
            stage: "heads".into(),
            detail: format!("{} heads", r.tasks.len()),
        });
        return Ok(r);
    }
    let t0 = Instant::now();
    on_event(&BuildEvent::StageStarted {
        stage: "heads".into(),
        total: tasks.len(),
    });
    let model = ClipVisionModel::from_params(&cfg.model, pretrained)?;
    let mut records = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter().enumerate() {
        let name = task.spec.name;
        let (head, seen) = name_head(
            name,
            task.class_names(),
            names,
            derive_seed(cfg.seed, STREAM_NAMES),
        )?;
        let path = staging.join(layout::head_file(name));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ZooError::io(parent, e))?;
        }
        head.save(&path)?;
        let pretrained_acc = accuracy_on(&model, &head, task, cfg)?;
        records.push(HeadRecord {
            task: name.to_owned(),
            head: HeadSummary {
                kind: "names".into(),
                classes: task.class_names().len(),
                names_seen: seen,
            },
            pretrained: pretrained_acc,
        });
        on_event(&BuildEvent::Step {
            stage: "heads".into(),
            done: i + 1,
            total: tasks.len(),
            loss: None,
        });
    }
    let record = HeadsRecord {
        tasks: records,
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_json_atomic(&record_path, &record)?;
    let mean = record.tasks.iter().map(|r| r.pretrained.test).sum::<f64>()
        / record.tasks.len().max(1) as f64;
    on_event(&BuildEvent::StageFinished {
        stage: "heads".into(),
        seconds: record.seconds,
        detail: format!("mean pretrained test accuracy {:.1} %", 100.0 * mean),
    });
    Ok(record)
}

/// The fine-tuning recipe of every zoo task: the tower `start` trained on `train_set` against
/// the frozen `head` (cosine logits at CLIP's scale, only the tower moves) for
/// [`BuildConfig::finetune_steps`]`(train_set.n)` steps of [`BuildConfig::finetune`] (a fresh
/// Adam and a fresh warm-up + cosine schedule), batches and augmentation drawn from `seed`.
/// `stage` names the run in errors; `on_step` is called after every step. Returns the
/// trained tower and the run's log.
///
/// The build fine-tunes each task from the pretrained tower with this function
/// ([`build_zoo`]); [`crate::sequential::sequential_finetune`] chains it through a task order.
///
/// # Errors
/// [`ZooError::InvalidData`] when the head does not fit the tower (its width is not the
/// tower's embedding width), the data is empty, its images do not fit the tower or a label
/// is not a class of the head; [`ZooError::Parameter`] when `start` does not fit
/// `cfg.model`; [`ZooError::Diverged`]; the configuration's and the backend's errors.
pub fn finetune_tower(
    cfg: &BuildConfig,
    start: &ParamDict,
    head: &TaskHead,
    train_set: &ImageSet,
    seed: u64,
    stage: &str,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<(ParamDict, TrainLog)> {
    let ft = cfg.finetune_config(train_set.n);
    let device = Device::flex().autodiff();
    let vit = TrainableVit::from_params(&cfg.model, start, &device)?;
    let vit = match cfg.finetune_scope {
        FinetuneScope::All => vit,
        FinetuneScope::LinearWeights => vit.with_only_linear_weights_trainable(),
        FinetuneScope::AttentionWeights => vit.with_only_attention_weights_trainable(),
    };
    if head.dim() != vit.embedding_dim() {
        return Err(ZooError::InvalidData {
            what: stage.into(),
            reason: format!(
                "the head `{}` has width {}, the tower embeds in {}",
                head.name(),
                head.dim(),
                vit.embedding_dim()
            ),
        });
    }
    let classifier = CosineClassifier::new(
        head.weight().to_vec(),
        head.num_classes(),
        head.dim(),
        cfg.finetune_logit_scale,
        false,
        &device,
    )?;
    let (trainee, log) = train(
        Trainee { vit, classifier },
        train_set,
        &ft,
        seed,
        stage,
        on_step,
    )?;
    Ok((trainee.vit.to_params()?, log))
}

fn stage_finetune(
    cfg: &BuildConfig,
    task: &TaskData,
    pretrained: &ParamDict,
    staging: &Path,
    stages: &Path,
    on_event: &mut (dyn FnMut(&BuildEvent) + Send),
) -> Result<FinetuneRecord> {
    let name = task.spec.name;
    let stage = format!("finetune:{name}");
    let record_path = stages.join(format!("finetune-{name}.json"));
    let dir = staging.join(layout::finetuned_dir(name));
    if let Some(r) = read_record::<FinetuneRecord>(&record_path)
        && layout::model_files(&dir).iter().all(|p| p.is_file())
    {
        on_event(&BuildEvent::StageReused {
            stage,
            detail: format!("test accuracy {:.1} %", 100.0 * r.finetuned.test),
        });
        return Ok(r);
    }
    let t0 = Instant::now();
    let train_set = task.split(Split::Train)?;
    let ft = cfg.finetune_config(train_set.n);
    on_event(&BuildEvent::StageStarted {
        stage: stage.clone(),
        total: ft.steps,
    });
    let head = TaskHead::load(&staging.join(layout::head_file(name)))?;
    let seed = cfg.finetune_seed(task.spec.id);
    let (params, log) = finetune_tower(
        cfg,
        pretrained,
        &head,
        &train_set,
        seed,
        &stage,
        &mut progress(&stage, on_event),
    )?;
    save_tower(&dir, &cfg.model, &params)?;
    let model = ClipVisionModel::from_params(&cfg.model, &params)?;
    let finetuned = accuracy_on(&model, &head, task, cfg)?;
    let energy = task_vector_energy(pretrained, &params, &cfg.model, cfg.energy_fraction)?;
    let task_vector = TaskVectorNorm::of(pretrained, &params)?;
    let record = FinetuneRecord {
        task: name.to_owned(),
        seed,
        run: run_summary(&log, &ft),
        finetuned,
        energy,
        task_vector,
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_json_atomic(&record_path, &record)?;
    on_event(&BuildEvent::StageFinished {
        stage,
        seconds: record.seconds,
        detail: format!(
            "loss {:.3} -> {:.3}, test accuracy {:.1} %, |tau|/|theta0| {:.2} %",
            log.first_loss,
            log.last_loss,
            100.0 * finetuned.test,
            100.0 * task_vector.ratio
        ),
    });
    Ok(record)
}
