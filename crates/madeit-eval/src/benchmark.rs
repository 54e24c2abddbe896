//! What is merged and evaluated: a pretrained tower and, per task, a fine-tuned tower, a
//! fixed head and a test split — as files, read lazily.
//!
//! A [`Benchmark`] only holds paths. The run loop reads the pretrained weights once and one
//! fine-tuned checkpoint at a time ([`Benchmark::load_finetuned`]), so memory holds at most
//! the pretrained model, the current fine-tuned model and the merger's state.
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

use std::path::{Path, PathBuf};

use madeit_data::{ImageSet, Split};
use madeit_params::ParamDict;
use madeit_vit::{CONFIG_FILE, ClipVisionConfig, TaskHead, WEIGHTS_FILE};
use madeit_zoo::Zoo;
use madeit_zoo::zoo::layout;

use crate::error::RunError;

/// The files of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchmarkTask {
    /// Task name (unique within the benchmark).
    pub name: String,
    /// The fine-tuned weights (`model.safetensors`).
    pub finetuned: PathBuf,
    /// The head file (`head.weight` `[classes, dim]`, see [`TaskHead::load`]).
    pub head: PathBuf,
    /// The test split file (see [`madeit_data::read_split`]).
    pub test: PathBuf,
    /// The seed split file: a few unlabelled images per class for test-time methods (read
    /// only by them, so it may be absent for weight-space methods).
    pub seed: PathBuf,
}

/// A pretrained tower and the files of `T` tasks, in task-id order (task id `k` is
/// `tasks[k − 1]`, the convention of [`crate::orders::task_order`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Benchmark {
    config: ClipVisionConfig,
    pretrained: PathBuf,
    tasks: Vec<BenchmarkTask>,
    root: Option<PathBuf>,
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
        })
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
            files.extend([t.finetuned.clone(), t.head.clone(), t.test.clone()]);
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
                test: dir.join(layout::split_file(name, Split::Test)),
                seed: dir.join(layout::split_file(name, Split::Seed)),
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
        let p = ParamDict::load(&self.pretrained).map_err(weights)?;
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
        let ft = ParamDict::load(&task.finetuned).map_err(|source| RunError::Weights {
            path: task.finetuned.clone(),
            source: Box::new(source),
        })?;
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

    /// Reads the test split of task `index`.
    ///
    /// # Errors
    /// As [`madeit_data::read_split`].
    pub fn load_test(&self, index: usize) -> Result<ImageSet, RunError> {
        Ok(madeit_data::read_split(&self.task(index)?.test)?.set)
    }

    /// The same benchmark evaluated on the zoo's validation splits instead of the test
    /// splits (for choosing hyper-parameters without looking at test data): every task's
    /// `test` file becomes `data/<task>/val.safetensors` of the benchmark's folder.
    ///
    /// # Errors
    /// [`RunError::InvalidConfig`] for a benchmark built from explicit files (no folder);
    /// [`RunError::Io`] naming the first missing validation file.
    pub fn on_validation(&self) -> Result<Self, RunError> {
        let Some(root) = &self.root else {
            return Err(RunError::config(
                "validation splits need a benchmark in the zoo layout (Benchmark::open_zoo)",
            ));
        };
        let mut out = self.clone();
        for t in &mut out.tasks {
            t.test = root.join(layout::split_file(&t.name, Split::Val));
            if !t.test.is_file() {
                return Err(RunError::io(
                    &t.test,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
                ));
            }
        }
        Ok(out)
    }

    /// Reads the seed split of task `index` (the unlabelled images test-time methods adapt
    /// on; disjoint from the test split).
    ///
    /// # Errors
    /// As [`madeit_data::read_split`] (a missing file names it).
    pub fn load_seed(&self, index: usize) -> Result<ImageSet, RunError> {
        Ok(madeit_data::read_split(&self.task(index)?.seed)?.set)
    }
}
