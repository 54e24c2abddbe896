//! Benchmark files: a pretrained CLIP, and per task a fine-tuned tower, a dataset and a
//! head, named in one small TOML file.
//!
//! ```toml
//! name = "my-benchmark"                 # optional, shown in logs
//! model = "clip-vit-base-patch32"       # optional; replaces `{model}` in model names
//! models_root = "/data/models"          # optional; `--models-root` overrides it
//! data_root = "/data/datasets"          # optional; `--data-root` overrides it
//! pretrained = "openai/{model}"         # a CLIPModel folder (text and vision towers)
//! alpha = "drop"                        # optional: "drop" (default) or "white"
//! seed = { split = "test", per_class = 5 }   # optional default of every task
//!
//! [[task]]
//! name = "sun397"                       # unique; a built-in task name gives the head
//! finetuned = "tanganke/{model}_sun397" # a CLIPVisionModel folder
//! dataset = "tanganke/sun397"           # or a table, see below
//! test = "test"                         # optional split name (default "test")
//! val = "validation"                    # optional, for `madeit run --val`
//! seed = { split = "train", per_class = 5 }   # optional, overrides the default
//! head = { task = "sun397" }            # optional, see below
//! ```
//!
//! **Names.** `pretrained`, `finetuned` and `dataset` take a path (absolute, or starting
//! with `./`, `../` or `~`, relative to the file's folder) or a repository name like
//! `owner/name`, looked up in order under each root: the Hugging Face cache layout
//! (`models--owner--name/snapshots/<revision>/`, the revision of `refs/main` or the only
//! snapshot; `datasets--owner--name/...` for datasets; also under a `hub/` sub-folder), a
//! plain folder `owner/name`, then `name`. The roots are `--models-root` / `--data-root`,
//! else the file's `models_root` / `data_root`, else the Hugging Face cache
//! (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`) and the file's folder.
//! Nothing is downloaded.
//!
//! **Datasets.** `dataset = "owner/name"` or a table `{ path = "...", config = "...",
//! format = "parquet" | "folder", image_column = "image", label_column = "label",
//! classes = [...] | "classes.txt" }`. A dataset folder holding `.parquet` files is read as
//! Hugging Face `datasets` Parquet: the files of a split are those named `<split>.parquet`,
//! `<split>-*.parquet` or `<split>_*.parquet`, or lying in a folder named `<split>`
//! (`config` keeps only the files under a folder of that name, as Hugging Face stores a
//! dataset's configurations); class names come from `classes`, else the `ClassLabel`
//! feature in the files' metadata, else the head's class names. Otherwise the dataset is an
//! image folder: `<path>[/<config>]/<split>/<class>/<image>`, classes in sorted folder order
//! (or `classes`).
//!
//! **Heads.** `head = "file.safetensors"` (a `madeit heads` file), `head = { task = "NAME" }`
//! (a built-in task, `madeit heads --list`), or `head = { classes = [...] | "file",
//! templates = [...] | "file" }`. Without `head`, the task's name must be a built-in task.
//! Heads from class names are made with the pretrained CLIP's text tower
//! ([`madeit_vit::ZeroShotModel`]) and cached next to the run ([`CheckedBenchmark::make_heads`]).
//!
//! **Seed images.** `seed = { split = "...", per_class = k }` names the split the test-time
//! methods draw their unlabeled images from; they take at most `k` per class (and at most
//! their own `seed_per_class`), drawn as MINGLE draws them
//! ([`madeit_adapt::select_seed_indices`]).
//!
//! [`BenchmarkFile::open`] parses a file (or a preset: [`PRESETS`]),
//! [`BenchmarkFile::resolve`] finds every folder and opens every dataset (file lists and
//! labels; errors name the file), [`ResolvedBenchmark::check`] reads every checkpoint,
//! head and image before any work, and [`CheckedBenchmark::into_benchmark`] gives the
//! [`Benchmark`] the run loop takes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use madeit_data::dataset::{DEFAULT_IMAGE_COLUMN, DEFAULT_LABEL_COLUMN, Dataset, Encoded};
use madeit_data::preprocess::{AlphaRule, ClipPreprocess, decode_rgb_with};
use madeit_params::{DType, ParamDict, Tensor};
use madeit_vit::{
    CONFIG_FILE, ClipTextConfig, ClipTextModel, ClipTokenizer, ClipVisionConfig, PROJECTION_WEIGHT,
    TaskHead, ZeroShotModel, ZeroShotTask, builtin_task_name, logit_scale_of,
};
use rayon::prelude::*;

use crate::benchmark::{Benchmark, BenchmarkTask, ImagePipeline, SplitSource};
use crate::error::RunError;
use crate::method::MethodSpec;

/// The shipped presets: `(name, TOML text)`. FusionBench's task names, order, checkpoints
/// and test splits of the papers' three groups, for CLIP ViT-B/32 (change `model` for the
/// others).
pub const PRESETS: [(&str, &str); 3] = [
    ("ta8", include_str!("../../benchmarks/ta8.toml")),
    ("tall14", include_str!("../../benchmarks/tall14.toml")),
    ("tall20", include_str!("../../benchmarks/tall20.toml")),
];

/// The text of preset `name` (case-insensitive), if there is one.
#[must_use]
pub fn preset(name: &str) -> Option<&'static str> {
    PRESETS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, text)| *text)
}

/// The default split of a task's test images.
pub const DEFAULT_TEST_SPLIT: &str = "test";

/// A list given inline or as a file (one entry per line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListSpec {
    /// The entries.
    Items(Vec<String>),
    /// A text file, one entry per line (relative to the benchmark file's folder).
    File(String),
}

/// How a task's head is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadSpec {
    /// A head file (`madeit heads`).
    File(String),
    /// A built-in task's class names and templates.
    Builtin(String),
    /// Class names and templates.
    Custom {
        /// Class names, in label order.
        classes: ListSpec,
        /// Prompt templates with `{}`.
        templates: ListSpec,
    },
}

/// The layout of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetFormat {
    /// Hugging Face `datasets` Parquet files.
    Parquet,
    /// An image folder (`<split>/<class>/<image>`).
    Folder,
}

/// A task's dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSpec {
    /// A path or a repository name.
    pub path: String,
    /// A configuration: only files under a folder of this name.
    pub config: Option<String>,
    /// The layout (`None`: Parquet when the folder holds `.parquet` files).
    pub format: Option<DatasetFormat>,
    /// The Parquet image column.
    pub image_column: String,
    /// The Parquet label column.
    pub label_column: String,
    /// Class names in label order (`None`: from the data, or the head).
    pub classes: Option<ListSpec>,
}

/// Where the seed images of the test-time methods come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedSpec {
    /// The split.
    pub split: String,
    /// At most this many per class.
    pub per_class: Option<usize>,
}

/// One task of a benchmark file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// Unique task name.
    pub name: String,
    /// The fine-tuned checkpoint (a path or a repository name).
    pub finetuned: String,
    /// The dataset.
    pub dataset: DatasetSpec,
    /// The test split.
    pub test: String,
    /// The validation split, if any.
    pub val: Option<String>,
    /// The seed images, if any.
    pub seed: Option<SeedSpec>,
    /// The head.
    pub head: HeadSpec,
}

/// Where repository names are looked up (overriding the file's roots).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {
    /// Models (`--models-root`).
    pub models: Option<PathBuf>,
    /// Datasets (`--data-root`).
    pub data: Option<PathBuf>,
}

/// A parsed benchmark file (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkFile {
    path: PathBuf,
    dir: PathBuf,
    name: String,
    models_root: Option<PathBuf>,
    data_root: Option<PathBuf>,
    pretrained: String,
    alpha: AlphaRule,
    tasks: Vec<TaskSpec>,
}

/// Reads a TOML table's keys, remembering which were used.
struct Keys<'a> {
    table: &'a toml::Table,
    context: String,
    used: BTreeSet<&'static str>,
}

impl<'a> Keys<'a> {
    fn new(table: &'a toml::Table, context: impl Into<String>) -> Self {
        Self {
            table,
            context: context.into(),
            used: BTreeSet::new(),
        }
    }

    fn err(&self, message: impl std::fmt::Display) -> String {
        if self.context.is_empty() {
            message.to_string()
        } else {
            format!("{}: {message}", self.context)
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a toml::Value> {
        self.used.insert(key);
        self.table.get(key)
    }

    fn string(&mut self, key: &'static str) -> Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(other) => {
                Err(self.err(format!("`{key}` must be a non-empty string, got {other}")))
            }
        }
    }

    fn required(&mut self, key: &'static str) -> Result<String, String> {
        self.string(key)?
            .ok_or_else(|| self.err(format!("`{key}` is missing")))
    }

    fn count(&mut self, key: &'static str) -> Result<Option<usize>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) if *n > 0 => Ok(usize::try_from(*n).ok()),
            Some(other) => {
                Err(self.err(format!("`{key}` must be a positive integer, got {other}")))
            }
        }
    }

    fn list(&mut self, key: &'static str) -> Result<Option<ListSpec>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(ListSpec::File(s.clone()))),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(self.err(format!("`{key}` must hold strings, got {other}"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| Some(ListSpec::Items(v))),
            Some(other) => Err(self.err(format!(
                "`{key}` must be a list of strings or a file name, got {other}"
            ))),
        }
    }

    /// Fails on a key that was not read.
    fn finish(self) -> Result<(), String> {
        let unknown: Vec<&String> = self
            .table
            .keys()
            .filter(|k| !self.used.contains(k.as_str()))
            .collect();
        match unknown.first() {
            None => Ok(()),
            Some(k) => Err(self.err(format!(
                "unknown key `{k}` (known: {})",
                self.used.iter().copied().collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

fn parse_seed(value: &toml::Value, context: &str) -> Result<SeedSpec, String> {
    match value {
        toml::Value::String(split) => Ok(SeedSpec {
            split: split.clone(),
            per_class: None,
        }),
        toml::Value::Table(t) => {
            let mut k = Keys::new(t, format!("{context}`seed`"));
            let spec = SeedSpec {
                split: k.required("split")?,
                per_class: k.count("per_class")?,
            };
            k.finish()?;
            Ok(spec)
        }
        other => Err(format!(
            "{context}`seed` must be a split name or a table {{ split = \"...\", per_class = k }}, \
             got {other}"
        )),
    }
}

fn parse_dataset(value: Option<&toml::Value>, context: &str) -> Result<DatasetSpec, String> {
    let plain = |path: String| DatasetSpec {
        path,
        config: None,
        format: None,
        image_column: DEFAULT_IMAGE_COLUMN.to_owned(),
        label_column: DEFAULT_LABEL_COLUMN.to_owned(),
        classes: None,
    };
    match value {
        None => Err(format!("{context}`dataset` is missing")),
        Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(plain(s.clone())),
        Some(toml::Value::Table(t)) => {
            let mut k = Keys::new(t, format!("{context}`dataset`"));
            let mut spec = plain(k.required("path")?);
            spec.config = k.string("config")?;
            spec.format = match k.string("format")?.as_deref() {
                None => None,
                Some("parquet") => Some(DatasetFormat::Parquet),
                Some("folder") => Some(DatasetFormat::Folder),
                Some(other) => {
                    return Err(k.err(format!(
                        "`format` must be \"parquet\" or \"folder\", got \"{other}\""
                    )));
                }
            };
            if let Some(c) = k.string("image_column")? {
                spec.image_column = c;
            }
            if let Some(c) = k.string("label_column")? {
                spec.label_column = c;
            }
            spec.classes = k.list("classes")?;
            k.finish()?;
            Ok(spec)
        }
        Some(other) => Err(format!(
            "{context}`dataset` must be a path, a repository name or a table, got {other}"
        )),
    }
}

fn parse_head(value: Option<&toml::Value>, name: &str, context: &str) -> Result<HeadSpec, String> {
    match value {
        None => match builtin_task_name(name) {
            Some(_) => Ok(HeadSpec::Builtin(name.to_owned())),
            None => Err(format!(
                "{context}no `head`, and `{name}` is not a built-in task (`madeit heads --list`): \
                 give `head = \"file.safetensors\"`, `head = {{ task = \"...\" }}` or \
                 `head = {{ classes = [...], templates = [...] }}`"
            )),
        },
        Some(toml::Value::String(file)) => Ok(HeadSpec::File(file.clone())),
        Some(toml::Value::Table(t)) => {
            let mut k = Keys::new(t, format!("{context}`head`"));
            let file = k.string("file")?;
            let task = k.string("task")?;
            let classes = k.list("classes")?;
            let templates = k.list("templates")?;
            k.finish()?;
            match (file, task, classes, templates) {
                (Some(f), None, None, None) => Ok(HeadSpec::File(f)),
                (None, Some(t), None, None) => {
                    if builtin_task_name(&t).is_none() {
                        return Err(format!(
                            "{context}`head.task`: `{t}` is not a built-in task (`madeit heads --list`)"
                        ));
                    }
                    Ok(HeadSpec::Builtin(t))
                }
                (None, None, Some(classes), Some(templates)) => {
                    Ok(HeadSpec::Custom { classes, templates })
                }
                _ => Err(format!(
                    "{context}`head` takes `file`, or `task`, or both `classes` and `templates`"
                )),
            }
        }
        Some(other) => Err(format!(
            "{context}`head` must be a file name or a table, got {other}"
        )),
    }
}

impl BenchmarkFile {
    /// Opens `spec`: a benchmark file, or the name of a preset ([`PRESETS`]) when no such
    /// file exists (relative paths of a preset are taken from the current folder).
    ///
    /// # Errors
    /// [`RunError::Io`] naming an unreadable file; [`RunError::Benchmark`] when neither a
    /// file nor a preset has this name, or as [`from_toml_str`](Self::from_toml_str).
    pub fn open(spec: &Path) -> Result<Self, RunError> {
        if spec.is_file() {
            let text = std::fs::read_to_string(spec).map_err(|e| RunError::io(spec, e))?;
            let dir = spec
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            return Self::from_toml_str(&text, spec, &dir);
        }
        let name = spec.to_string_lossy();
        match preset(&name) {
            Some(text) => Self::from_toml_str(
                text,
                Path::new(&format!("<preset {}>", name.to_ascii_lowercase())),
                Path::new("."),
            ),
            None => Err(RunError::Benchmark {
                file: spec.to_path_buf(),
                message: format!(
                    "no such file, and not a preset ({})",
                    PRESETS.map(|(n, _)| n).join(", ")
                ),
            }),
        }
    }

    /// Parses the TOML text of a benchmark file `path` whose relative paths start at `dir`.
    ///
    /// # Errors
    /// [`RunError::Benchmark`] naming `path`: TOML syntax, a missing or unknown key, a value
    /// of the wrong type, no task, two tasks with one name, a head that is neither a file,
    /// a built-in task nor class names with templates.
    pub fn from_toml_str(text: &str, path: &Path, dir: &Path) -> Result<Self, RunError> {
        let fail = |message: String| RunError::Benchmark {
            file: path.to_path_buf(),
            message,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        Self::parse(&table, path, dir).map_err(fail)
    }

    fn parse(table: &toml::Table, path: &Path, dir: &Path) -> Result<Self, String> {
        let mut k = Keys::new(table, "");
        let name = k.string("name")?.unwrap_or_else(|| {
            path.file_stem().map_or_else(
                || "benchmark".to_owned(),
                |s| s.to_string_lossy().into_owned(),
            )
        });
        let model = k.string("model")?;
        let subst = |s: String| -> Result<String, String> {
            match &model {
                Some(m) => Ok(s.replace("{model}", m)),
                None if s.contains("{model}") => Err(format!(
                    "`{s}` uses `{{model}}` but the file sets no `model`"
                )),
                None => Ok(s),
            }
        };
        let models_root = k.string("models_root")?.map(|s| expand(&s, dir));
        let data_root = k.string("data_root")?.map(|s| expand(&s, dir));
        let pretrained = subst(k.required("pretrained")?)?;
        let alpha = match k.string("alpha")?.as_deref() {
            None | Some("drop") => AlphaRule::Drop,
            Some("white") => AlphaRule::White,
            Some(other) => {
                return Err(format!(
                    "`alpha` must be \"drop\" (PIL's convert(\"RGB\"), FusionBench) or \"white\" \
                     (transformers' CLIPImageProcessor), got \"{other}\""
                ));
            }
        };
        let default_seed = match k.get("seed") {
            Some(v) => Some(parse_seed(v, "")?),
            None => None,
        };
        let raw_tasks = match k.get("task") {
            Some(toml::Value::Array(a)) => a.clone(),
            Some(other) => {
                return Err(format!(
                    "`task` must be an array of tables (`[[task]]`), got {other}"
                ));
            }
            None => return Err("no task: add `[[task]]` tables".to_owned()),
        };
        k.finish()?;
        let mut tasks: Vec<TaskSpec> = Vec::with_capacity(raw_tasks.len());
        for (i, raw) in raw_tasks.iter().enumerate() {
            let toml::Value::Table(t) = raw else {
                return Err(format!("task {} is not a table", i + 1));
            };
            let mut k = Keys::new(t, format!("task {}", i + 1));
            let name = k.required("name")?;
            let ctx = format!("task `{name}`: ");
            k.context = format!("task `{name}`");
            if tasks.iter().any(|t| t.name == name) {
                return Err(format!(
                    "two tasks are named `{name}`: task names must be unique"
                ));
            }
            let finetuned = subst(k.required("finetuned")?)?;
            let dataset = parse_dataset(k.get("dataset"), &ctx)?;
            let test = k
                .string("test")?
                .unwrap_or_else(|| DEFAULT_TEST_SPLIT.to_owned());
            let val = k.string("val")?;
            let seed = match k.get("seed") {
                Some(v) => Some(parse_seed(v, &ctx)?),
                None => default_seed.clone(),
            };
            let head = parse_head(k.get("head"), &name, &ctx)?;
            k.finish()?;
            tasks.push(TaskSpec {
                name,
                finetuned,
                dataset,
                test,
                val,
                seed,
                head,
            });
        }
        if tasks.is_empty() {
            return Err("no task: add `[[task]]` tables".to_owned());
        }
        Ok(Self {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            name,
            models_root,
            data_root,
            pretrained,
            alpha,
            tasks,
        })
    }

    /// The file (or `<preset NAME>`).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The benchmark's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tasks, in file order (task id `k` is the `k`-th).
    #[must_use]
    pub fn tasks(&self) -> &[TaskSpec] {
        &self.tasks
    }

    fn fail(&self, message: impl Into<String>) -> RunError {
        RunError::Benchmark {
            file: self.path.clone(),
            message: message.into(),
        }
    }

    /// The folders names are looked up in, for models or datasets.
    fn search_roots(&self, cli: Option<&PathBuf>, file: Option<&PathBuf>) -> Vec<PathBuf> {
        if let Some(root) = cli.or(file) {
            return vec![root.clone()];
        }
        let mut roots = hf_cache_dirs();
        roots.push(self.dir.clone());
        roots
    }

    /// Finds the folder of a model or dataset `reference` (see the module docs).
    fn locate(
        &self,
        reference: &str,
        kind: RepoKind,
        roots: &[PathBuf],
    ) -> Result<PathBuf, String> {
        if is_explicit_path(reference) {
            let p = expand(reference, &self.dir);
            return if p.exists() {
                Ok(p)
            } else {
                Err(format!("{} does not exist", p.display()))
            };
        }
        let mut tried = Vec::new();
        for root in roots {
            for candidate in candidates(root, reference, kind) {
                match candidate {
                    Candidate::Cache(repo) => {
                        if repo.join("snapshots").is_dir() {
                            return snapshot(&repo);
                        }
                        tried.push(repo);
                    }
                    Candidate::Plain(dir) => {
                        if dir.is_dir() {
                            return Ok(dir);
                        }
                        tried.push(dir);
                    }
                }
            }
        }
        Err(format!(
            "`{reference}` not found; looked for {}",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// Finds every folder and opens every dataset (file lists, labels and class names), and
    /// reads the pretrained model's configuration and preprocessing and every head file.
    ///
    /// # Errors
    /// [`RunError::Benchmark`] naming this file and, in the message, the task and the path
    /// or file at fault: a name that resolves nowhere, a dataset that cannot be opened (no
    /// split files, a Parquet file without the expected columns, a label outside the class
    /// list, a class folder with no images), a head whose class count differs from the
    /// dataset's, an unreadable configuration.
    pub fn resolve(&self, roots: &Roots) -> Result<ResolvedBenchmark, RunError> {
        let model_roots = self.search_roots(roots.models.as_ref(), self.models_root.as_ref());
        let data_roots = self.search_roots(roots.data.as_ref(), self.data_root.as_ref());
        let pretrained = self
            .locate(&self.pretrained, RepoKind::Model, &model_roots)
            .map_err(|e| self.fail(format!("`pretrained`: {e}")))?;
        let config_file = pretrained.join(CONFIG_FILE);
        let config = ClipVisionConfig::from_file(&config_file)
            .map_err(|e| self.fail(format!("`pretrained`: {e}")))?;
        let preprocess = ClipPreprocess::for_model(&pretrained, config.image_size)
            .map_err(|e| self.fail(format!("`pretrained`: {e}")))?;
        let mut tasks = Vec::with_capacity(self.tasks.len());
        for spec in &self.tasks {
            tasks.push(
                self.resolve_task(spec, &model_roots, &data_roots)
                    .map_err(|e| self.fail(format!("task `{}`: {e}", spec.name)))?,
            );
        }
        Ok(ResolvedBenchmark {
            file: self.path.clone(),
            name: self.name.clone(),
            pretrained,
            config,
            pipeline: ImagePipeline {
                preprocess,
                alpha: self.alpha,
                workers: None,
            },
            tasks,
        })
    }

    fn read_list(&self, list: &ListSpec, what: &str) -> Result<Vec<String>, String> {
        match list {
            ListSpec::Items(v) => Ok(v.clone()),
            ListSpec::File(f) => {
                let path = expand(f, &self.dir);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{what} file {}: {e}", path.display()))?;
                Ok(text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect())
            }
        }
    }

    fn resolve_task(
        &self,
        spec: &TaskSpec,
        model_roots: &[PathBuf],
        data_roots: &[PathBuf],
    ) -> Result<ResolvedTask, String> {
        let finetuned = self
            .locate(&spec.finetuned, RepoKind::Model, model_roots)
            .map_err(|e| format!("`finetuned`: {e}"))?;
        let head = match &spec.head {
            HeadSpec::File(f) => {
                let path = expand(f, &self.dir);
                let head = TaskHead::load(&path).map_err(|e| format!("`head`: {e}"))?;
                ResolvedHead::File { path, head }
            }
            HeadSpec::Builtin(name) => {
                let b = ZeroShotTask::builtin(name).map_err(|e| format!("`head`: {e}"))?;
                let task = ZeroShotTask::new(
                    spec.name.clone(),
                    b.classes().to_vec(),
                    b.templates().to_vec(),
                )
                .map_err(|e| format!("`head`: {e}"))?;
                ResolvedHead::ZeroShot(task)
            }
            HeadSpec::Custom { classes, templates } => {
                let task = match (classes, templates) {
                    (ListSpec::File(c), ListSpec::File(t)) => ZeroShotTask::from_files(
                        spec.name.clone(),
                        &expand(c, &self.dir),
                        &expand(t, &self.dir),
                    ),
                    _ => ZeroShotTask::new(
                        spec.name.clone(),
                        self.read_list(classes, "class")?,
                        self.read_list(templates, "template")?,
                    ),
                }
                .map_err(|e| format!("`head`: {e}"))?;
                ResolvedHead::ZeroShot(task)
            }
        };
        let head_classes: Vec<String> = match &head {
            ResolvedHead::File { head, .. } => head.class_names().to_vec(),
            ResolvedHead::ZeroShot(t) => t.classes().to_vec(),
        };
        let ds = &spec.dataset;
        let root = self
            .locate(&ds.path, RepoKind::Dataset, data_roots)
            .map_err(|e| format!("`dataset`: {e}"))?;
        let explicit = match &ds.classes {
            Some(list) => Some(self.read_list(list, "class")?),
            None => None,
        };
        let format = match ds.format {
            Some(f) => f,
            None if has_parquet(&root) => DatasetFormat::Parquet,
            None => DatasetFormat::Folder,
        };
        let open = |split: &str| -> Result<Dataset, String> {
            open_split(
                &root,
                ds,
                format,
                split,
                explicit.as_deref(),
                (!head_classes.is_empty()).then_some(head_classes.as_slice()),
            )
        };
        let test = open(&spec.test)?;
        let num_classes = match &head {
            ResolvedHead::File { head, .. } => head.num_classes(),
            ResolvedHead::ZeroShot(t) => t.classes().len(),
        };
        let check_classes = |d: &Dataset, split: &str| -> Result<(), String> {
            if d.classes().len() == num_classes {
                Ok(())
            } else {
                Err(format!(
                    "the head has {num_classes} classes, the `{split}` split of {} has {} ({})",
                    d.source(),
                    d.classes().len(),
                    match &head {
                        ResolvedHead::File { path, .. } => format!("head {}", path.display()),
                        ResolvedHead::ZeroShot(_) => "head from class names".to_owned(),
                    }
                ))
            }
        };
        check_classes(&test, &spec.test)?;
        let mut seed = None;
        if let Some(s) = &spec.seed {
            let d = if s.split == spec.test {
                test.clone()
            } else {
                open(&s.split)?
            };
            check_classes(&d, &s.split)?;
            seed = Some((s.split.clone(), d, s.per_class));
        }
        let mut val = None;
        if let Some(v) = &spec.val {
            let d = open(v)?;
            check_classes(&d, v)?;
            val = Some((v.clone(), d));
        }
        Ok(ResolvedTask {
            name: spec.name.clone(),
            finetuned,
            dataset: root,
            format,
            test: (spec.test.clone(), test),
            seed,
            val,
            head,
        })
    }
}

/// What kind of repository a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RepoKind {
    Model,
    Dataset,
}

enum Candidate {
    /// A Hugging Face cache repository folder (`models--owner--name`).
    Cache(PathBuf),
    /// A plain folder.
    Plain(PathBuf),
}

fn candidates(root: &Path, reference: &str, kind: RepoKind) -> Vec<Candidate> {
    let prefix = match kind {
        RepoKind::Model => "models",
        RepoKind::Dataset => "datasets",
    };
    let cache_name = format!("{prefix}--{}", reference.replace('/', "--"));
    let mut out = vec![
        Candidate::Cache(root.join(&cache_name)),
        Candidate::Cache(root.join("hub").join(&cache_name)),
        Candidate::Plain(root.join(reference)),
    ];
    if let Some((_, last)) = reference.rsplit_once('/') {
        out.push(Candidate::Plain(root.join(last)));
    }
    out
}

/// The snapshot folder of a Hugging Face cache repository: the revision `refs/main` names,
/// or the only snapshot.
fn snapshot(repo: &Path) -> Result<PathBuf, String> {
    let snapshots = repo.join("snapshots");
    let mut revs: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .map_err(|e| format!("{}: {e}", snapshots.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    revs.sort();
    if let Ok(main) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let rev = snapshots.join(main.trim());
        if rev.is_dir() {
            return Ok(rev);
        }
    }
    match revs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("{} holds no snapshot", snapshots.display())),
        _ => Err(format!(
            "{} holds {} snapshots and refs/main names none of them: give the snapshot folder \
             as a path",
            snapshots.display(),
            revs.len()
        )),
    }
}

/// The Hugging Face hub cache folders of this environment.
fn hf_cache_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(d) = std::env::var_os("HF_HUB_CACHE") {
        out.push(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("HF_HOME") {
        out.push(PathBuf::from(d).join("hub"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        out.push(PathBuf::from(home).join(".cache/huggingface/hub"));
    }
    out
}

fn is_explicit_path(s: &str) -> bool {
    s.starts_with('/')
        || s.starts_with("./")
        || s.starts_with("../")
        || s.starts_with('~')
        || s == "."
        || s == ".."
}

/// `s` with a leading `~` expanded and, when relative, joined to `dir`.
fn expand(s: &str, dir: &Path) -> PathBuf {
    let p = match s.strip_prefix("~/") {
        Some(rest) => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(rest),
            None => PathBuf::from(s),
        },
        None => PathBuf::from(s),
    };
    if p.is_absolute() { p } else { dir.join(p) }
}

/// The `.parquet` files under `root` (hidden folders skipped, at most 6 levels deep).
fn parquet_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden {
                continue;
            }
            if p.is_dir() && depth < 6 {
                walk(&p, depth + 1, out);
            } else if p.extension().is_some_and(|e| e == "parquet") && p.is_file() {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, 0, &mut out);
    out
}

fn has_parquet(root: &Path) -> bool {
    !parquet_files(root).is_empty()
}

/// Opens split `split` of a dataset folder.
fn open_split(
    root: &Path,
    spec: &DatasetSpec,
    format: DatasetFormat,
    split: &str,
    classes: Option<&[String]>,
    head_classes: Option<&[String]>,
) -> Result<Dataset, String> {
    match format {
        DatasetFormat::Folder => {
            let base = match &spec.config {
                Some(c) => root.join(c),
                None => root.to_path_buf(),
            };
            let dir = base.join(split);
            if !dir.is_dir() {
                let have: Vec<String> = std::fs::read_dir(&base)
                    .map(|it| {
                        it.filter_map(Result::ok)
                            .filter(|e| e.path().is_dir())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                return Err(format!(
                    "no split `{split}`: {} is not a folder (an image folder dataset is \
                     <dataset>/<split>/<class>/<image>; {} holds no .parquet file and the \
                     folders [{}])",
                    dir.display(),
                    base.display(),
                    have.join(", ")
                ));
            }
            Dataset::image_folder(&dir, classes).map_err(|e| e.to_string())
        }
        DatasetFormat::Parquet => {
            let all = parquet_files(root);
            let in_config: Vec<&PathBuf> = all
                .iter()
                .filter(|p| {
                    spec.config.as_ref().is_none_or(|c| {
                        p.strip_prefix(root)
                            .is_ok_and(|rel| rel.components().any(|x| x.as_os_str() == c.as_str()))
                    })
                })
                .collect();
            let files: Vec<PathBuf> = in_config
                .iter()
                .filter(|p| split_file(root, p, split))
                .map(|p| (*p).clone())
                .collect();
            if files.is_empty() {
                return Err(format!(
                    "no Parquet file of split `{split}` under {}{} (expected `{split}.parquet`, \
                     `{split}-*.parquet` or a folder `{split}/`; found {})",
                    root.display(),
                    spec.config
                        .as_ref()
                        .map_or_else(String::new, |c| format!(" in a folder `{c}`")),
                    if in_config.is_empty() {
                        "none".to_owned()
                    } else {
                        in_config
                            .iter()
                            .take(8)
                            .map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ));
            }
            let dirs: BTreeSet<&Path> = files.iter().filter_map(|p| p.parent()).collect();
            if dirs.len() > 1 {
                return Err(format!(
                    "the Parquet files of split `{split}` lie in {} folders ({}): name the \
                     configuration to read with `config`",
                    dirs.len(),
                    dirs.iter()
                        .map(|d| d.strip_prefix(root).unwrap_or(d).display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            // Class names: given, else recorded in the files, else the head's (a label is
            // a row of the head).
            let names = match (classes, head_classes) {
                (Some(c), _) => Some(c),
                (None, Some(h)) => {
                    let recorded = files.first().map_or(Ok(None), |f| {
                        Dataset::parquet_class_names(f, &spec.label_column)
                    });
                    match recorded.map_err(|e| e.to_string())? {
                        Some(_) => None,
                        None => Some(h),
                    }
                }
                (None, None) => None,
            };
            Dataset::parquet(&files, &spec.image_column, &spec.label_column, names)
                .map_err(|e| e.to_string())
        }
    }
}

/// Whether `file` (under `root`) belongs to split `split`.
fn split_file(root: &Path, file: &Path, split: &str) -> bool {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem == split
        || stem.starts_with(&format!("{split}-"))
        || stem.starts_with(&format!("{split}_"))
    {
        return true;
    }
    file.strip_prefix(root).is_ok_and(|rel| {
        rel.parent()
            .is_some_and(|dir| dir.components().any(|c| c.as_os_str() == split))
    })
}

/// A task's head, once found.
#[derive(Debug, Clone)]
pub enum ResolvedHead {
    /// A head file, read.
    File {
        /// The file.
        path: PathBuf,
        /// Its head.
        head: TaskHead,
    },
    /// Class names and templates, made into a head by the pretrained CLIP's text tower.
    ZeroShot(ZeroShotTask),
}

/// One task with its folders found and datasets opened.
#[derive(Debug, Clone)]
pub struct ResolvedTask {
    /// Task name.
    pub name: String,
    /// The fine-tuned checkpoint folder.
    pub finetuned: PathBuf,
    /// The dataset folder.
    pub dataset: PathBuf,
    /// Its layout.
    pub format: DatasetFormat,
    /// The test split: name and images.
    pub test: (String, Dataset),
    /// The seed images' split, images and cap per class.
    pub seed: Option<(String, Dataset, Option<usize>)>,
    /// The validation split.
    pub val: Option<(String, Dataset)>,
    /// The head.
    pub head: ResolvedHead,
}

/// A benchmark file whose folders are found and datasets opened.
#[derive(Debug, Clone)]
pub struct ResolvedBenchmark {
    file: PathBuf,
    name: String,
    pretrained: PathBuf,
    config: ClipVisionConfig,
    pipeline: ImagePipeline,
    tasks: Vec<ResolvedTask>,
}

/// What [`ResolvedBenchmark::check`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Decode every image of every split (test, seed, validation).
    pub images: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self { images: true }
    }
}

/// Progress of a check: `done` of `total` units (a checkpoint or an image each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckProgress {
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
    /// What is being checked.
    pub what: String,
}

/// Images read per chunk of the decoding check.
const CHECK_CHUNK: usize = 256;

impl ResolvedBenchmark {
    /// The benchmark file.
    #[must_use]
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The benchmark's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pretrained CLIP folder.
    #[must_use]
    pub fn pretrained(&self) -> &Path {
        &self.pretrained
    }

    /// The vision tower's configuration.
    #[must_use]
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// How images become pixels.
    #[must_use]
    pub fn pipeline(&self) -> &ImagePipeline {
        &self.pipeline
    }

    /// The tasks, in file order.
    #[must_use]
    pub fn tasks(&self) -> &[ResolvedTask] {
        &self.tasks
    }

    /// Every folder and file the benchmark reads (for refusing an output over an input).
    #[must_use]
    pub fn inputs(&self) -> Vec<PathBuf> {
        let mut out = vec![self.pretrained.clone()];
        if self.file.is_file() {
            out.push(self.file.clone());
        }
        for t in &self.tasks {
            out.push(t.finetuned.clone());
            out.push(t.dataset.clone());
            if let ResolvedHead::File { path, .. } = &t.head {
                out.push(path.clone());
            }
        }
        out
    }

    fn fail(&self, message: impl Into<String>) -> RunError {
        RunError::Benchmark {
            file: self.file.clone(),
            message: message.into(),
        }
    }

    /// Checks that `methods` can run: a test-time method drawing from the seed split needs
    /// every task's `seed`; C. Fine-Tuned needs a zoo's training data.
    ///
    /// # Errors
    /// [`RunError::Benchmark`] naming the method and the tasks.
    pub fn check_methods<'a>(
        &self,
        methods: impl IntoIterator<Item = &'a MethodSpec>,
    ) -> Result<(), RunError> {
        for m in methods {
            if m.needs_training_data() {
                return Err(self.fail(format!(
                    "`{}` fine-tunes on each task's training data, which only the embedded zoo \
                     provides; leave it out of --methods",
                    m.name()
                )));
            }
            if m.seed_setup()
                .is_some_and(|s| s.source == madeit_adapt::SeedSource::SeedSplit)
            {
                let missing: Vec<&str> = self
                    .tasks
                    .iter()
                    .filter(|t| t.seed.is_none())
                    .map(|t| t.name.as_str())
                    .collect();
                if !missing.is_empty() {
                    return Err(self.fail(format!(
                        "`{}` adapts on unlabeled seed images, and task(s) {} name no seed \
                         split: add `seed = {{ split = \"test\", per_class = 5 }}` (to the task or \
                         at the top of the file)",
                        m.name(),
                        missing.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// The distinct splits whose images are checked: `(task, split, dataset)`.
    fn splits(&self) -> Vec<(&str, &str, &Dataset)> {
        let mut out: Vec<(&str, &str, &Dataset)> = Vec::new();
        for t in &self.tasks {
            out.push((&t.name, &t.test.0, &t.test.1));
            if let Some((s, d, _)) = &t.seed
                && *s != t.test.0
            {
                out.push((&t.name, s, d));
            }
            if let Some((s, d)) = &t.val
                && *s != t.test.0
                && t.seed.as_ref().is_none_or(|(seed, _, _)| seed != s)
            {
                out.push((&t.name, s, d));
            }
        }
        out
    }

    /// Reads every checkpoint (the pretrained CLIP, with its text tower when a head is
    /// made from class names, and each fine-tuned tower against it), checks every head's
    /// width against the tower's embeddings and, with [`CheckOptions::images`], decodes
    /// every image, reporting progress. Nothing is written.
    ///
    /// # Errors
    /// [`RunError::Benchmark`] naming this file, the task and the file at fault: a
    /// checkpoint that does not read, is not a CLIP vision tower, or has another shape or
    /// configuration than the pretrained one; a pretrained folder without the text tower or
    /// tokenizer its heads need; a head of the wrong width; an image that does not decode.
    pub fn check(
        self,
        options: CheckOptions,
        progress: &mut dyn FnMut(&CheckProgress),
    ) -> Result<CheckedBenchmark, RunError> {
        let images: u64 = if options.images {
            self.splits().iter().map(|(_, _, d)| d.len() as u64).sum()
        } else {
            0
        };
        let total = 1 + self.tasks.len() as u64 + images;
        let mut done = 0u64;
        let mut report = |done: u64, what: String| progress(&CheckProgress { done, total, what });

        report(done, format!("pretrained {}", self.pretrained.display()));
        let params = ParamDict::load_checkpoint(&self.pretrained)
            .map_err(|e| self.fail(format!("`pretrained`: {e}")))?;
        let projection = params.get(PROJECTION_WEIGHT).ok().cloned();
        let needs_text = self
            .tasks
            .iter()
            .any(|t| matches!(t.head, ResolvedHead::ZeroShot(_)));
        let zero_shot = if needs_text {
            Some(self.text_tower(&params, projection.clone())?)
        } else {
            None
        };
        let pretrained =
            crate::benchmark::vision_tower_params(&self.config, params, &self.pretrained)
                .map_err(|e| self.fail(format!("`pretrained`: {e}")))?;
        let embedding_dim = match &projection {
            Some(p) => p.shape().first().copied().unwrap_or(0),
            None => self.config.hidden_size,
        };
        done += 1;

        for t in &self.tasks {
            report(
                done,
                format!("{}: fine-tuned {}", t.name, t.finetuned.display()),
            );
            self.check_finetuned(t, &pretrained)
                .map_err(|e| self.fail(format!("task `{}`: {e}", t.name)))?;
            if let ResolvedHead::File { path, head } = &t.head {
                let dim = if projection.is_none() && head.visual_projection().is_some() {
                    head.visual_projection()
                        .and_then(|p| p.shape().first().copied())
                        .unwrap_or(0)
                } else {
                    embedding_dim
                };
                if head.dim() != dim {
                    return Err(self.fail(format!(
                        "task `{}`: the head {} takes {}-dimensional embeddings, the tower gives \
                         {dim}",
                        t.name,
                        path.display(),
                        head.dim()
                    )));
                }
            }
            done += 1;
        }
        drop(pretrained);

        let mut checked = 0u64;
        if options.images {
            for (task, split, d) in self.splits() {
                let what = format!("{task}: `{split}` images of {}", d.source());
                let mut chunk_done = |n: usize| {
                    done += n as u64;
                    report(done, what.clone());
                };
                check_images(d, self.pipeline.alpha, &mut chunk_done)
                    .map_err(|e| self.fail(format!("task `{task}`: {e}")))?;
                checked += d.len() as u64;
            }
        }
        report(total, "done".to_owned());
        // Heads of class names carry the pretrained projection; a benchmark of heads from
        // files without one uses the projection the heads carry.
        let projection = projection.or_else(|| {
            self.tasks.iter().find_map(|t| match &t.head {
                ResolvedHead::File { head, .. } => head.visual_projection().cloned(),
                ResolvedHead::ZeroShot(_) => None,
            })
        });
        Ok(CheckedBenchmark {
            resolved: self,
            projection,
            zero_shot,
            images_checked: checked,
        })
    }

    /// The zero-shot model of the pretrained folder (text tower, tokenizer, logit scale).
    fn text_tower(
        &self,
        params: &ParamDict,
        projection: Option<Tensor>,
    ) -> Result<ZeroShotModel, RunError> {
        let dir = &self.pretrained;
        let what = "`pretrained` (heads from class names need a CLIPModel with its text tower \
                    and tokenizer)";
        let fail = |e: madeit_vit::VitError| self.fail(format!("{what}: {e}"));
        let config = ClipTextConfig::from_file(&dir.join(CONFIG_FILE)).map_err(fail)?;
        let in_dir = |e: madeit_vit::VitError| self.fail(format!("{what}: {}: {e}", dir.display()));
        let text = ClipTextModel::from_params(&config, params).map_err(in_dir)?;
        let scale = logit_scale_of(params).map_err(in_dir)?;
        let tokenizer = ClipTokenizer::from_dir(dir).map_err(fail)?;
        ZeroShotModel::new(text, tokenizer, scale, projection).map_err(fail)
    }

    fn check_finetuned(&self, t: &ResolvedTask, pretrained: &ParamDict) -> Result<(), String> {
        let cfg_file = t.finetuned.join(CONFIG_FILE);
        if t.finetuned.is_dir() && cfg_file.is_file() {
            let cfg = ClipVisionConfig::from_file(&cfg_file).map_err(|e| e.to_string())?;
            if let Some(field) = tower_difference(&cfg, &self.config) {
                return Err(format!(
                    "{} describes another tower than the pretrained model ({field}: {} against \
                     {} in {})",
                    cfg_file.display(),
                    field_value(&cfg, field),
                    field_value(&self.config, field),
                    self.pretrained.join(CONFIG_FILE).display()
                ));
            }
        }
        let params = ParamDict::load_checkpoint(&t.finetuned).map_err(|e| e.to_string())?;
        let ft = crate::benchmark::vision_tower_params(&self.config, params, &t.finetuned)
            .map_err(|e| e.to_string())?;
        pretrained.check_compatible(&ft).map_err(|e| {
            format!(
                "the fine-tuned tower {} does not match the pretrained one: {e}",
                t.finetuned.display()
            )
        })
    }
}

/// The first field (other than the projection width) in which two tower configurations
/// differ.
fn tower_difference(a: &ClipVisionConfig, b: &ClipVisionConfig) -> Option<&'static str> {
    [
        ("hidden_size", a.hidden_size == b.hidden_size),
        (
            "intermediate_size",
            a.intermediate_size == b.intermediate_size,
        ),
        (
            "num_hidden_layers",
            a.num_hidden_layers == b.num_hidden_layers,
        ),
        (
            "num_attention_heads",
            a.num_attention_heads == b.num_attention_heads,
        ),
        ("image_size", a.image_size == b.image_size),
        ("patch_size", a.patch_size == b.patch_size),
        ("num_channels", a.num_channels == b.num_channels),
        ("hidden_act", a.hidden_act == b.hidden_act),
        (
            "layer_norm_eps",
            (a.layer_norm_eps - b.layer_norm_eps).abs() <= 1e-12,
        ),
    ]
    .into_iter()
    .find(|(_, same)| !same)
    .map(|(f, _)| f)
}

fn field_value(c: &ClipVisionConfig, field: &str) -> String {
    match field {
        "hidden_size" => c.hidden_size.to_string(),
        "intermediate_size" => c.intermediate_size.to_string(),
        "num_hidden_layers" => c.num_hidden_layers.to_string(),
        "num_attention_heads" => c.num_attention_heads.to_string(),
        "image_size" => c.image_size.to_string(),
        "patch_size" => c.patch_size.to_string(),
        "num_channels" => c.num_channels.to_string(),
        "hidden_act" => format!("{:?}", c.hidden_act),
        "layer_norm_eps" => c.layer_norm_eps.to_string(),
        _ => String::new(),
    }
}

/// Decodes every image of `dataset` (on the rayon pool, a chunk at a time), calling
/// `progress` with the number of images of each chunk.
///
/// # Errors
/// The first [`madeit_data::DataError`] found, naming the image (its file, or its Parquet
/// file and row).
pub fn check_images(
    dataset: &Dataset,
    alpha: AlphaRule,
    progress: &mut dyn FnMut(usize),
) -> Result<(), madeit_data::DataError> {
    let mut images = dataset.encoded();
    loop {
        let chunk: Vec<madeit_data::Result<Encoded>> = images.by_ref().take(CHECK_CHUNK).collect();
        if chunk.is_empty() {
            return Ok(());
        }
        let n = chunk.len();
        // The first failure in dataset order is the one reported.
        let failures: Vec<madeit_data::DataError> = chunk
            .into_par_iter()
            .filter_map(|e| {
                e.and_then(|e| decode_rgb_with(&e.bytes, &e.name, alpha).map(|_| ()))
                    .err()
            })
            .collect();
        if let Some(e) = failures.into_iter().next() {
            return Err(e);
        }
        progress(n);
    }
}

/// A benchmark whose every input was read ([`ResolvedBenchmark::check`]).
#[derive(Debug)]
pub struct CheckedBenchmark {
    resolved: ResolvedBenchmark,
    projection: Option<Tensor>,
    zero_shot: Option<ZeroShotModel>,
    images_checked: u64,
}

/// What became of a head in [`CheckedBenchmark::make_heads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadOrigin {
    /// Made from class names with the text tower.
    Made,
    /// Found in the folder, made earlier from the same class names and templates.
    Cached,
    /// Copied from the head file the benchmark names.
    Copied,
}

impl CheckedBenchmark {
    /// The resolved benchmark.
    #[must_use]
    pub fn resolved(&self) -> &ResolvedBenchmark {
        &self.resolved
    }

    /// The image projection every tower without one is given (the pretrained CLIP's).
    #[must_use]
    pub fn projection(&self) -> Option<&Tensor> {
        self.projection.as_ref()
    }

    /// Number of images decoded by the check.
    #[must_use]
    pub fn images_checked(&self) -> u64 {
        self.images_checked
    }

    /// Writes every task's head into `dir` as `<task>.safetensors` (atomically) and returns
    /// the files in task order: heads of class names are made with the pretrained CLIP's
    /// text tower unless `dir` already holds one made from the same class names, templates
    /// and logit scale (a resumed run); head files are copied under the task's name.
    /// `progress(task, origin)` is called after each head.
    ///
    /// # Errors
    /// [`RunError::Vit`] for a head that cannot be made or written (naming the file).
    pub fn make_heads(
        &self,
        dir: &Path,
        progress: &mut dyn FnMut(&str, HeadOrigin),
    ) -> Result<Vec<PathBuf>, RunError> {
        std::fs::create_dir_all(dir).map_err(|e| RunError::io(dir, e))?;
        let mut out = Vec::with_capacity(self.resolved.tasks.len());
        let mut used: BTreeMap<String, usize> = BTreeMap::new();
        for t in &self.resolved.tasks {
            let mut stem = file_safe(&t.name);
            let n = used.entry(stem.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                stem = format!("{stem}-{n}");
            }
            let path = dir.join(format!("{stem}.safetensors"));
            let origin = match &t.head {
                ResolvedHead::File { head, .. } => {
                    renamed(head, &t.name)?.save(&path)?;
                    HeadOrigin::Copied
                }
                ResolvedHead::ZeroShot(task) => {
                    let scale = self.zero_shot.as_ref().map(ZeroShotModel::logit_scale);
                    let cached = TaskHead::load(&path).ok().filter(|h| {
                        h.name() == t.name
                            && h.class_names() == task.classes()
                            && h.templates() == task.templates()
                            && h.log_logit_scale() == scale
                            && h.visual_projection() == self.projection.as_ref()
                    });
                    if cached.is_some() {
                        HeadOrigin::Cached
                    } else {
                        let model = self.zero_shot.as_ref().ok_or_else(|| {
                            RunError::config("no text tower was loaded for the heads")
                        })?;
                        model.head(task)?.save(&path)?;
                        HeadOrigin::Made
                    }
                }
            };
            progress(&t.name, origin);
            out.push(path);
        }
        Ok(out)
    }

    /// The benchmark the run loop takes, with `heads` (one file per task, in task order:
    /// [`make_heads`](Self::make_heads)).
    ///
    /// # Errors
    /// [`RunError::InvalidConfig`] for a wrong number of heads; as [`Benchmark::new`].
    pub fn into_benchmark(self, heads: &[PathBuf]) -> Result<Benchmark, RunError> {
        let r = self.resolved;
        if heads.len() != r.tasks.len() {
            return Err(RunError::config(format!(
                "{} head files for {} tasks",
                heads.len(),
                r.tasks.len()
            )));
        }
        let tasks = r
            .tasks
            .into_iter()
            .zip(heads)
            .map(|(t, head)| BenchmarkTask {
                name: t.name,
                finetuned: t.finetuned,
                head: head.clone(),
                test: SplitSource::Dataset(t.test.1),
                seed_per_class: t.seed.as_ref().and_then(|s| s.2),
                seed: t.seed.map(|s| SplitSource::Dataset(s.1)),
                val: t.val.map(|v| SplitSource::Dataset(v.1)),
            })
            .collect();
        Ok(Benchmark::new(r.config, r.pretrained, tasks)?
            .with_images(r.pipeline)
            .with_projection(self.projection)
            .with_clip_folders()
            .with_file(r.file))
    }
}

/// `head` under the name `name` (the task's: the evaluator and the oracle router know
/// heads by their task).
fn renamed(head: &TaskHead, name: &str) -> Result<TaskHead, RunError> {
    if head.name() == name {
        return Ok(head.clone());
    }
    let weight = Tensor::new(vec![head.num_classes(), head.dim()], head.weight().to_vec())?;
    let mut h = TaskHead::new(name, &weight, head.class_names().to_vec())?
        .with_templates(head.templates().to_vec());
    if let Some(s) = head.log_logit_scale() {
        h = h.with_logit_scale(s)?;
    }
    if let Some(p) = head.visual_projection() {
        h = h.with_visual_projection(p.clone().with_dtype(DType::F32))?;
    }
    Ok(h)
}

/// A task name usable as a file name (anything but ASCII letters, digits, `-`, `_`, `.`
/// becomes `_`).
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
