//! Checking a resolved benchmark: every checkpoint, head and image read before any work.

use std::path::{Path, PathBuf};

use madeit_data::dataset::{Dataset, Encoded};
use madeit_data::preprocess::{AlphaRule, decode_rgb_with};
use madeit_params::{ParamDict, Tensor};
use madeit_vit::{
    CONFIG_FILE, ClipTextConfig, ClipTextModel, ClipTokenizer, ClipVisionConfig, PROJECTION_WEIGHT,
    TaskHead, ZeroShotModel, ZeroShotTask, logit_scale_of,
};
use rayon::prelude::*;

use super::DatasetFormat;
use super::checked::CheckedBenchmark;
use crate::benchmark::ImagePipeline;
use crate::error::RunError;
use crate::method::MethodSpec;

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
    pub(super) file: PathBuf,
    pub(super) name: String,
    pub(super) pretrained: PathBuf,
    pub(super) config: ClipVisionConfig,
    pub(super) pipeline: ImagePipeline,
    pub(super) tasks: Vec<ResolvedTask>,
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
