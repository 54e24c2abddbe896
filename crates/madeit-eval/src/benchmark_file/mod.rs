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
//! [`Benchmark`](crate::benchmark::Benchmark) the run loop takes.

mod check;
mod checked;
mod resolve;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use madeit_data::dataset::{DEFAULT_IMAGE_COLUMN, DEFAULT_LABEL_COLUMN};
use madeit_data::preprocess::AlphaRule;
use madeit_vit::builtin_task_name;

use crate::error::RunError;

pub use check::{
    CheckOptions, CheckProgress, ResolvedBenchmark, ResolvedHead, ResolvedTask, check_images,
};
pub use checked::{CheckedBenchmark, HeadOrigin};
use resolve::expand;

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
}
