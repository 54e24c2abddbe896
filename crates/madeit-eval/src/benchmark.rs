//! What is merged and evaluated: a pretrained tower and, per task, a fine-tuned tower, a
//! fixed head, a test split and (for the test-time methods) seed images — as files, read
//! lazily.
//!
//! A [`Benchmark`] only holds paths (and, for datasets on disk, their file lists and
//! labels). The run loop reads the pretrained weights once and one fine-tuned checkpoint at
//! a time ([`Benchmark::load_finetuned`]), so memory holds at most the pretrained model,
//! the current fine-tuned model and the merger's state; test images are streamed
//! ([`crate::images`]).
//!
//! The embedded zoo ([`Benchmark::from_zoo`]) and any folder in the zoo layout
//! ([`Benchmark::from_layout`]) are benchmarks:
//!
//! ```text
//! <dir>/pretrained/{config.json, model.safetensors}
//! <dir>/finetuned/<task>/{config.json, model.safetensors}
//! <dir>/heads/<task>.safetensors
//! <dir>/data/<task>/test.safetensors
//! <dir>/data/<task>/seed.safetensors     (test-time methods only; read when used)
//! ```
//!
//! A benchmark file ([`crate::benchmark_file`]) builds one from Hugging Face checkpoint
//! folders (a `CLIPModel` and fine-tuned `CLIPVisionModel`s, [`Benchmark::with_clip_folders`])
//! and datasets on disk ([`SplitSource::Dataset`], preprocessed as
//! [`Benchmark::with_images`] says).

use std::path::{Path, PathBuf};

use madeit_data::dataset::Dataset;
use madeit_data::preprocess::{AlphaRule, ClipPreprocess};
use madeit_data::{ImageSet, Split};
use madeit_params::{ParamDict, Tensor};
use madeit_vit::{CONFIG_FILE, ClipVisionConfig, ClipVisionModel, TaskHead, WEIGHTS_FILE};
use madeit_zoo::Zoo;
use madeit_zoo::zoo::layout;

use crate::error::RunError;
use crate::images::{StreamedImages, TaskImages};

/// Where the images of one split are.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SplitSource {
    /// A split file of the zoo layout (8-bit images at the tower's size, see
    /// [`madeit_data::read_split`]).
    File(PathBuf),
    /// A labelled dataset on disk (an image folder or `datasets` Parquet files), decoded and
    /// preprocessed as it is read.
    Dataset(Dataset),
}

impl SplitSource {
    /// Where it is, for messages.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Dataset(d) => d.source().to_owned(),
        }
    }
}

/// The files of one task.
#[derive(Debug, Clone)]
pub struct BenchmarkTask {
    /// Task name (unique within the benchmark).
    pub name: String,
    /// The fine-tuned weights: a `model.safetensors` file, or a checkpoint folder (single
    /// file or sharded, see [`ParamDict::load_checkpoint`]).
    pub finetuned: PathBuf,
    /// The head file (`head.weight` `[classes, dim]`, see [`TaskHead::load`]).
    pub head: PathBuf,
    /// The test split.
    pub test: SplitSource,
    /// Where a few unlabelled images per class come from for test-time methods (read only
    /// by them, so it may be absent for weight-space methods): the zoo's seed split file, or
    /// the split a benchmark file names.
    pub seed: Option<SplitSource>,
    /// At most this many seed images per class (a benchmark file's `per_class`); `None`:
    /// as many as the method asks for.
    pub seed_per_class: Option<usize>,
    /// The validation split, if the benchmark names one (a zoo's is found by
    /// [`Benchmark::on_validation`]).
    pub val: Option<SplitSource>,
}

/// How the images of datasets on disk become pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePipeline {
    /// transformers' `CLIPImageProcessor` (from the pretrained model's
    /// `preprocessor_config.json`, or CLIP's defaults).
    pub preprocess: ClipPreprocess,
    /// How transparency becomes RGB ([`AlphaRule::Drop`] is FusionBench's
    /// `image.convert("RGB")`).
    pub alpha: AlphaRule,
    /// Decoding threads (`None`: one per available core).
    pub workers: Option<usize>,
}

/// A pretrained tower and the files of `T` tasks, in task-id order (task id `k` is
/// `tasks[k − 1]`, the convention of [`crate::orders::task_order`]).
#[derive(Debug, Clone)]
pub struct Benchmark {
    config: ClipVisionConfig,
    pretrained: PathBuf,
    tasks: Vec<BenchmarkTask>,
    root: Option<PathBuf>,
    images: Option<ImagePipeline>,
    projection: Option<Tensor>,
    clip_folders: bool,
    file: Option<PathBuf>,
}

impl Benchmark {
    /// A benchmark from explicit files.
    ///
    /// # Errors
    /// [`RunError::InvalidConfig`] for no tasks or a repeated task name;
    /// [`madeit_vit::VitError::InvalidConfig`] for an invalid tower configuration.
    pub fn new(
        config: ClipVisionConfig,
        pretrained: PathBuf,
        tasks: Vec<BenchmarkTask>,
    ) -> Result<Self, RunError> {
        config.validate()?;
        if tasks.is_empty() {
            return Err(RunError::config("a benchmark needs at least one task"));
        }
        for (i, t) in tasks.iter().enumerate() {
            if tasks.iter().take(i).any(|u| u.name == t.name) {
                return Err(RunError::config(format!(
                    "task `{}` appears twice in the benchmark",
                    t.name
                )));
            }
        }
        Ok(Self {
            config,
            pretrained,
            tasks,
            root: None,
            images: None,
            projection: None,
            clip_folders: false,
            file: None,
        })
    }

    /// The same benchmark reading the images of its datasets through `pipeline`.
    #[must_use]
    pub fn with_images(mut self, pipeline: ImagePipeline) -> Self {
        self.images = Some(pipeline);
        self
    }

    /// The same benchmark giving every evaluated tower without a `visual_projection` this
    /// one (`[projection_dim, hidden_size]`, the pretrained CLIP's), as FusionBench's
    /// classifier does for fine-tuned `CLIPVisionModel`s.
    #[must_use]
    pub fn with_projection(mut self, projection: Option<Tensor>) -> Self {
        self.projection = projection;
        self
    }

    /// The same benchmark reading its checkpoints as Hugging Face CLIP folders: the
    /// pretrained and fine-tuned paths are checkpoint folders (or files) of a `CLIPModel`,
    /// `CLIPVisionModel` or `CLIPVisionModelWithProjection`, with or without the
    /// `vision_model.` prefix; only the vision tower is merged ([`vision_tower_params`]),
    /// under its bare names.
    #[must_use]
    pub fn with_clip_folders(mut self) -> Self {
        self.clip_folders = true;
        self
    }

    /// Records the benchmark file the benchmark was read from.
    #[must_use]
    pub fn with_file(mut self, file: PathBuf) -> Self {
        self.file = Some(file);
        self
    }

    /// The benchmark file it was read from, if any.
    #[must_use]
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The projection given to towers without one ([`with_projection`](Self::with_projection)).
    #[must_use]
    pub fn projection(&self) -> Option<&Tensor> {
        self.projection.as_ref()
    }

    /// How dataset images become pixels, if the benchmark reads datasets.
    #[must_use]
    pub fn images(&self) -> Option<&ImagePipeline> {
        self.images.as_ref()
    }

    /// The tasks of a built zoo, in id order.
    ///
    /// # Errors
    /// As [`Benchmark::new`].
    pub fn from_zoo(zoo: &Zoo) -> Result<Self, RunError> {
        let names: Vec<String> = zoo.task_names().iter().map(|s| (*s).to_owned()).collect();
        let mut b = Self::layout_tasks(zoo.dir(), zoo.config().clone(), &names)?;
        b.root = Some(zoo.dir().to_path_buf());
        Ok(b)
    }

    /// Opens the zoo in `dir` ([`Zoo::open`]) and takes its tasks.
    ///
    /// # Errors
    /// As [`Zoo::open`] and [`Benchmark::from_zoo`].
    pub fn open_zoo(dir: &Path) -> Result<Self, RunError> {
        Self::from_zoo(&Zoo::open(dir)?)
    }

    /// A folder in the zoo layout (see the module docs) without a manifest: the tower
    /// configuration is read from `dir/pretrained/config.json`, the tasks are `task_names`
    /// in this order. Missing files are reported by name.
    ///
    /// # Errors
    /// [`RunError::Io`] listing the first missing file, configuration errors, as
    /// [`Benchmark::new`].
    pub fn from_layout(dir: &Path, task_names: &[&str]) -> Result<Self, RunError> {
        let cfg_path = dir.join(layout::pretrained_dir()).join(CONFIG_FILE);
        let config = ClipVisionConfig::from_file(&cfg_path)?;
        let names: Vec<String> = task_names.iter().map(|s| (*s).to_owned()).collect();
        let b = Self::layout_tasks(dir, config, &names)?;
        let mut files = vec![b.pretrained.clone()];
        for t in &b.tasks {
            files.extend([t.finetuned.clone(), t.head.clone()]);
            if let SplitSource::File(f) = &t.test {
                files.push(f.clone());
            }
        }
        if let Some(missing) = files.into_iter().find(|f| !f.is_file()) {
            return Err(RunError::io(
                missing,
                std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            ));
        }
        Ok(Self {
            root: Some(dir.to_path_buf()),
            ..b
        })
    }

    fn layout_tasks(
        dir: &Path,
        config: ClipVisionConfig,
        names: &[String],
    ) -> Result<Self, RunError> {
        let tasks = names
            .iter()
            .map(|name| BenchmarkTask {
                name: name.clone(),
                finetuned: dir.join(layout::finetuned_dir(name)).join(WEIGHTS_FILE),
                head: dir.join(layout::head_file(name)),
                test: SplitSource::File(dir.join(layout::split_file(name, Split::Test))),
                seed: Some(SplitSource::File(
                    dir.join(layout::split_file(name, Split::Seed)),
                )),
                seed_per_class: None,
                val: None,
            })
            .collect();
        Self::new(
            config,
            dir.join(layout::pretrained_dir()).join(WEIGHTS_FILE),
            tasks,
        )
    }

    /// The tower configuration.
    #[must_use]
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// The folder the benchmark was read from, if any.
    #[must_use]
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// Number of tasks `T`.
    #[must_use]
    pub fn num_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// The tasks, in id order.
    #[must_use]
    pub fn tasks(&self) -> &[BenchmarkTask] {
        &self.tasks
    }

    /// The task names, in id order.
    #[must_use]
    pub fn task_names(&self) -> Vec<String> {
        self.tasks.iter().map(|t| t.name.clone()).collect()
    }

    /// The position of the task called `name`.
    ///
    /// # Errors
    /// [`RunError::UnknownTask`] listing the names.
    pub fn task_index(&self, name: &str) -> Result<usize, RunError> {
        self.tasks
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| RunError::UnknownTask {
                name: name.to_owned(),
                available: self.task_names(),
            })
    }

    fn task(&self, index: usize) -> Result<&BenchmarkTask, RunError> {
        self.tasks.get(index).ok_or_else(|| RunError::UnknownTask {
            name: format!("#{index}"),
            available: self.task_names(),
        })
    }

    /// The pretrained weights file.
    #[must_use]
    pub fn pretrained_path(&self) -> &Path {
        &self.pretrained
    }

    /// Reads the pretrained weights and checks that they are finite.
    ///
    /// # Errors
    /// [`RunError::Weights`] naming the file (and the tensor, for a non-finite value).
    pub fn load_pretrained(&self) -> Result<ParamDict, RunError> {
        let weights = |source| RunError::Weights {
            path: self.pretrained.clone(),
            source: Box::new(source),
        };
        let p = ParamDict::load_checkpoint(&self.pretrained).map_err(weights)?;
        if self.clip_folders {
            return vision_tower_params(&self.config, p, &self.pretrained);
        }
        p.check_finite().map_err(weights)?;
        Ok(p)
    }

    /// Reads the fine-tuned weights of task `index` and checks that they have exactly the
    /// tensor names, shapes and dtypes of `pretrained`.
    ///
    /// # Errors
    /// [`RunError::Weights`] for a file that cannot be read, [`RunError::CheckpointMismatch`]
    /// naming the task, the file and the first differing tensor.
    pub fn load_finetuned(
        &self,
        index: usize,
        pretrained: &ParamDict,
    ) -> Result<ParamDict, RunError> {
        let task = self.task(index)?;
        let ft =
            ParamDict::load_checkpoint(&task.finetuned).map_err(|source| RunError::Weights {
                path: task.finetuned.clone(),
                source: Box::new(source),
            })?;
        let ft = if self.clip_folders {
            vision_tower_params(&self.config, ft, &task.finetuned)?
        } else {
            ft
        };
        pretrained
            .check_compatible(&ft)
            .map_err(|source| RunError::CheckpointMismatch {
                task: task.name.clone(),
                path: task.finetuned.clone(),
                source: Box::new(source),
            })?;
        Ok(ft)
    }

    /// Reads the head of task `index`.
    ///
    /// # Errors
    /// As [`TaskHead::load`].
    pub fn load_head(&self, index: usize) -> Result<TaskHead, RunError> {
        Ok(TaskHead::load(&self.task(index)?.head)?)
    }

    /// Reads the test split of task `index` from a zoo split file.
    ///
    /// # Errors
    /// As [`madeit_data::read_split`]; [`RunError::InvalidTask`] when the split is a
    /// dataset (use [`test_images`](Self::test_images)).
    pub fn load_test(&self, index: usize) -> Result<ImageSet, RunError> {
        let task = self.task(index)?;
        self.packed(&task.test, &task.name)
    }

    /// The test images of task `index`: a zoo split file read whole (8-bit images), or a
    /// dataset's file list and labels (its images are decoded when streamed).
    ///
    /// # Errors
    /// As [`madeit_data::read_split`]; [`RunError::InvalidConfig`] for a dataset without an
    /// image pipeline ([`with_images`](Self::with_images)).
    pub fn test_images(&self, index: usize) -> Result<TaskImages, RunError> {
        self.source_images(&self.task(index)?.test)
    }

    /// The images test-time methods draw task `index`'s seed images from (see
    /// [`BenchmarkTask::seed`]).
    ///
    /// # Errors
    /// [`RunError::InvalidTask`] when the task has no seed source; as
    /// [`test_images`](Self::test_images).
    pub fn seed_images(&self, index: usize) -> Result<TaskImages, RunError> {
        let task = self.task(index)?;
        let source = task.seed.as_ref().ok_or_else(|| RunError::InvalidTask {
            task: task.name.clone(),
            reason: "no seed images for the test-time methods: name a split in the benchmark \
                     file (`seed = { split = \"test\", per_class = 5 }`)"
                .into(),
        })?;
        self.source_images(source)
    }

    fn source_images(&self, source: &SplitSource) -> Result<TaskImages, RunError> {
        Ok(match source {
            SplitSource::File(path) => TaskImages::Packed(madeit_data::read_split(path)?.set),
            SplitSource::Dataset(d) => {
                let p = self.images.as_ref().ok_or_else(|| {
                    RunError::config(format!(
                        "the dataset {} needs an image pipeline (Benchmark::with_images)",
                        d.source()
                    ))
                })?;
                let mut s = StreamedImages::new(d.clone(), p.preprocess.clone(), p.alpha);
                if let Some(w) = p.workers {
                    s = s.with_workers(w);
                }
                TaskImages::Streamed(s)
            }
        })
    }

    fn packed(&self, source: &SplitSource, task: &str) -> Result<ImageSet, RunError> {
        match source {
            SplitSource::File(path) => Ok(madeit_data::read_split(path)?.set),
            SplitSource::Dataset(d) => Err(RunError::InvalidTask {
                task: task.to_owned(),
                reason: format!(
                    "{} is a dataset on disk, not a zoo split file (read it with \
                     Benchmark::test_images)",
                    d.source()
                ),
            }),
        }
    }

    /// The same benchmark evaluated on the validation splits instead of the test splits (for
    /// choosing hyper-parameters without looking at test data): on a zoo every task's test
    /// file becomes `data/<task>/val.safetensors` of the benchmark's folder; a benchmark file
    /// must name every task's `val` split.
    ///
    /// # Errors
    /// [`RunError::InvalidConfig`] for a benchmark without validation splits;
    /// [`RunError::Io`] naming the first missing validation file.
    pub fn on_validation(&self) -> Result<Self, RunError> {
        let mut out = self.clone();
        let Some(root) = &self.root else {
            for t in &mut out.tasks {
                t.test = t.val.clone().ok_or_else(|| {
                    RunError::config(format!(
                        "task `{}` has no validation split (give it `val = \"SPLIT\"` in the \
                         benchmark file)",
                        t.name
                    ))
                })?;
            }
            return Ok(out);
        };
        for t in &mut out.tasks {
            let path = root.join(layout::split_file(&t.name, Split::Val));
            if !path.is_file() {
                return Err(RunError::io(
                    &path,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
                ));
            }
            t.test = SplitSource::File(path);
        }
        Ok(out)
    }

    /// Reads the seed split of task `index` from a zoo split file (the unlabelled images
    /// test-time methods adapt on; disjoint from the test split).
    ///
    /// # Errors
    /// As [`madeit_data::read_split`] (a missing file names it);
    /// [`RunError::InvalidTask`] when the task has no seed split file.
    pub fn load_seed(&self, index: usize) -> Result<ImageSet, RunError> {
        let task = self.task(index)?;
        match &task.seed {
            Some(source) => self.packed(source, &task.name),
            None => Err(RunError::InvalidTask {
                task: task.name.clone(),
                reason: "no seed split".into(),
            }),
        }
    }
}

/// The vision tower of a checkpoint's tensors under their bare names (`embeddings.*`,
/// `encoder.layers.*`, `pre_layrnorm.*`, `post_layernorm.*`): a `CLIPModel`'s (whose text
/// tower, `logit_scale` and `visual_projection.weight` are left out), or a
/// `CLIPVisionModel`'s, with or without the `vision_model.` prefix. FusionBench merges
/// exactly these tensors and keeps the pretrained CLIP's projection.
///
/// # Errors
/// [`RunError::Checkpoint`] naming `path` when the tensors are not a tower of `config`
/// (missing, unexpected or mis-shaped tensors, each named; a NaN or infinity).
pub fn vision_tower_params(
    config: &ClipVisionConfig,
    params: ParamDict,
    path: &Path,
) -> Result<ParamDict, RunError> {
    ClipVisionModel::tower_params(config, params).map_err(|e| RunError::Checkpoint {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}
