//! The zoo manifest, `zoo.json`: what the zoo holds and how it was made.

use std::path::Path;

use madeit_data::{Construction, Resize, SourceId, TaskGroup};
use madeit_params::ParamDict;
use madeit_vit::ClipVisionConfig;
use serde::{Deserialize, Serialize};

use crate::build::BuildConfig;
use crate::energy::EnergyReport;
use crate::error::{Result, ZooError};

/// Value of [`Manifest::format`] written by this version.
pub const ZOO_FORMAT: &str = "madeit-zoo-v4";

/// Formats of earlier versions: a zoo folder of one of these is recognised and must be
/// rebuilt (`madeit zoo build --force`).
pub const OLD_ZOO_FORMATS: [&str; 3] = ["madeit-zoo-v1", "madeit-zoo-v2", "madeit-zoo-v3"];

/// File name of the manifest inside the zoo folder.
pub const MANIFEST_FILE: &str = "zoo.json";

/// Accuracy on the two held-out splits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitAccuracy {
    /// Accuracy on the validation split, in `[0, 1]`.
    pub val: f64,
    /// Accuracy on the test split, in `[0, 1]`.
    pub test: f64,
}

/// Accuracy of the pretrained tower and of the task's fine-tuned tower, both with the
/// task's fixed head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskAccuracy {
    /// Pretrained tower + head (the "zero-shot" analogue).
    pub pretrained: SplitAccuracy,
    /// Fine-tuned tower + head.
    pub finetuned: SplitAccuracy,
}

/// Number of images in each split of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSizes {
    /// Reserved for pretraining (counted once per source; the pretrain images of a
    /// rotated or mirrored task, and those of a source outside
    /// [`BuildConfig::pretrain_sources`] such as the lower-case letters, are not used).
    pub pretrain: usize,
    /// Fine-tuning.
    pub train: usize,
    /// Validation.
    pub val: usize,
    /// Unlabelled seed images.
    pub seed: usize,
    /// Test.
    pub test: usize,
}

/// A training run as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Optimizer steps.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Mean loss of the first 10 % of steps.
    pub first_loss: f32,
    /// Mean loss of the last 10 % of steps.
    pub last_loss: f32,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// How a task's head was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadSummary {
    /// The kind of head (`names`: one pretraining vector per class name).
    pub kind: String,
    /// Classes of the task.
    pub classes: usize,
    /// How many of the class names pretraining saw (the others have fixed seeded vectors).
    pub names_seen: usize,
}

/// The size of a task vector `tau = theta_t - theta_0` against the pretrained weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskVectorNorm {
    /// `||tau||` over every parameter (Frobenius norm of the flattened state dict).
    pub norm: f64,
    /// `||theta_0||`.
    pub pretrained_norm: f64,
    /// `||tau|| / ||theta_0||`.
    pub ratio: f64,
}

impl TaskVectorNorm {
    /// The norms of `finetuned - pretrained`.
    ///
    /// # Errors
    /// [`ZooError::InvalidData`] when the two dicts do not have the same tensors.
    pub fn of(pretrained: &ParamDict, finetuned: &ParamDict) -> Result<Self> {
        let (mut tau, mut base) = (0.0f64, 0.0f64);
        for (name, p) in pretrained.iter() {
            let f = finetuned.get(name).map_err(|_| ZooError::InvalidData {
                what: "task vector".into(),
                reason: format!("the fine-tuned tower has no tensor `{name}`"),
            })?;
            if f.data().len() != p.data().len() {
                return Err(ZooError::InvalidData {
                    what: "task vector".into(),
                    reason: format!("tensor `{name}` has another size"),
                });
            }
            for (&a, &b) in p.data().iter().zip(f.data()) {
                base += f64::from(a) * f64::from(a);
                tau += (f64::from(b) - f64::from(a)).powi(2);
            }
        }
        let (norm, pretrained_norm) = (tau.sqrt(), base.sqrt());
        Ok(Self {
            norm,
            pretrained_norm,
            ratio: if pretrained_norm > 0.0 {
                norm / pretrained_norm
            } else {
                0.0
            },
        })
    }
}

/// One task of the zoo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEntry {
    /// Stable 1-based id.
    pub id: u32,
    /// Stable name (folder and file names).
    pub name: String,
    /// One-line description.
    pub summary: String,
    /// The real source of the images.
    pub source: SourceId,
    /// How the images derive from the source.
    pub construction: Construction,
    /// How the images were brought to the common size.
    pub resize: Resize,
    /// Class names, in label order.
    pub class_names: Vec<String>,
    /// Split sizes.
    pub splits: SplitSizes,
    /// Seed of the source's split.
    pub split_seed: u64,
    /// Seed of this task's fine-tuning run.
    pub finetune_seed: u64,
    /// The head.
    pub head: HeadSummary,
    /// Accuracies.
    pub accuracy: TaskAccuracy,
    /// The fine-tuning run.
    pub finetune: RunSummary,
    /// Spectral energy of the task vector.
    pub energy: EnergyReport,
    /// Size of the task vector.
    pub task_vector: TaskVectorNorm,
}

/// One source of the pretraining pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainPartSummary {
    /// The task whose pretrain split it is.
    pub task: String,
    /// The source.
    pub source: SourceId,
    /// Images used.
    pub images: usize,
    /// Class names the part contributes (its task's names, or other names of the same
    /// images, such as the emoji's subcategories).
    pub names: usize,
}

/// The pretraining run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainSummary {
    /// The data.
    pub parts: Vec<PretrainPartSummary>,
    /// Classes of the pretraining classifier (the distinct class names of the parts).
    pub classes: usize,
    /// Those names, in the classifier's order (`heads/names.safetensors` holds their
    /// vectors).
    pub names: Vec<String>,
    /// The run.
    pub run: RunSummary,
    /// Seed of the initial weights, classifier and batch order.
    pub seed: u64,
}

/// Wall-clock seconds of each stage of the build (a resumed stage counts the time it took
/// when it ran).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Reading and preprocessing the cached sources.
    pub load: f64,
    /// Pretraining.
    pub pretrain: f64,
    /// Heads, with the pretrained tower's evaluation.
    pub heads: f64,
    /// Every fine-tuning run, with its evaluation and energy, by task name.
    pub finetune: Vec<(String, f64)>,
    /// Writing the split files and the manifest.
    pub export: f64,
    /// Everything (sum of the above).
    pub total: f64,
}

/// Versions of what made the zoo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    /// The madeit crates.
    pub madeit: String,
    /// Split-file format.
    pub split_format: String,
}

/// The manifest (`zoo.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`ZOO_FORMAT`].
    pub format: String,
    /// Versions.
    pub versions: Versions,
    /// The build's seed.
    pub seed: u64,
    /// The task group.
    pub group: TaskGroup,
    /// Seconds since the Unix epoch when the build finished.
    pub created_unix: u64,
    /// Worker threads used for training.
    pub threads: usize,
    /// The tower (also in `pretrained/config.json`).
    pub model: ClipVisionConfig,
    /// Every setting of the build.
    pub build: BuildConfig,
    /// Pretraining.
    pub pretraining: PretrainSummary,
    /// The tasks, in id order.
    pub tasks: Vec<TaskEntry>,
    /// Stage times.
    pub timings: Timings,
}

impl Manifest {
    /// Mean test accuracy of the pretrained tower with the heads, over the tasks.
    #[must_use]
    pub fn mean_pretrained_test(&self) -> f64 {
        mean(self.tasks.iter().map(|t| t.accuracy.pretrained.test))
    }

    /// Mean test accuracy of the fine-tuned towers, over the tasks.
    #[must_use]
    pub fn mean_finetuned_test(&self) -> f64 {
        mean(self.tasks.iter().map(|t| t.accuracy.finetuned.test))
    }

    /// Reads a manifest file and checks its format.
    ///
    /// # Errors
    /// [`ZooError::Io`], [`ZooError::Json`] or [`ZooError::Format`] naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ZooError::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ZooError::json(path, e))?;
        let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if OLD_ZOO_FORMATS.contains(&format) {
            return Err(ZooError::OutdatedZoo {
                path: path.to_path_buf(),
                found: format.to_owned(),
                expected: ZOO_FORMAT,
            });
        }
        if format != ZOO_FORMAT {
            return Err(ZooError::Format {
                path: path.to_path_buf(),
                found: format.to_owned(),
                expected: ZOO_FORMAT,
            });
        }
        serde_json::from_value(value).map_err(|e| ZooError::json(path, e))
    }

    /// Writes the manifest atomically (a temporary file, then a rename).
    ///
    /// # Errors
    /// [`ZooError::Io`] or [`ZooError::Json`] naming the file.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_json_atomic(path, self)
    }
}

fn mean(it: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = it.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { s / n as f64 }
}

/// Writes `value` as pretty JSON to `path` atomically.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ZooError::json(path, e))?;
    write_atomic(path, text.as_bytes())
}

/// Writes `bytes` to `path` atomically, creating its folder
/// ([`madeit_params::fs::write_atomic_creating_parent`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    madeit_params::fs::write_atomic_creating_parent(path, bytes).map_err(ZooError::from_params)
}
