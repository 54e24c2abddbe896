//! Resolving a benchmark file: finding its models and datasets on disk (a path, the Hugging
//! Face cache layout or a plain folder under a root) and opening each dataset's splits.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use madeit_data::dataset::Dataset;
use madeit_data::preprocess::ClipPreprocess;
use madeit_vit::{CONFIG_FILE, ClipVisionConfig, TaskHead, ZeroShotTask};

use super::check::{ResolvedBenchmark, ResolvedHead, ResolvedTask};
use super::{BenchmarkFile, DatasetFormat, DatasetSpec, HeadSpec, ListSpec, Roots, TaskSpec};
use crate::benchmark::ImagePipeline;
use crate::error::RunError;

impl BenchmarkFile {
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
pub(super) fn expand(s: &str, dir: &Path) -> PathBuf {
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
