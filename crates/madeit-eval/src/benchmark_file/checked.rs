//! A checked benchmark: its heads written and the [`Benchmark`] the run loop takes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use madeit_params::{DType, Tensor};
use madeit_vit::{TaskHead, ZeroShotModel};

use super::check::{ResolvedBenchmark, ResolvedHead};
use crate::benchmark::{Benchmark, BenchmarkTask, SplitSource};
use crate::error::RunError;

/// A benchmark whose every input was read ([`ResolvedBenchmark::check`]).
#[derive(Debug)]
pub struct CheckedBenchmark {
    pub(super) resolved: ResolvedBenchmark,
    pub(super) projection: Option<Tensor>,
    pub(super) zero_shot: Option<ZeroShotModel>,
    pub(super) images_checked: u64,
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
