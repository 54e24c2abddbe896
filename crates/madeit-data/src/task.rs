//! The task registry of the embedded zoo, and loading a task ready for training.
//!
//! A task is a source, an optional standard continual-learning construction (a fixed
//! rotation, as in Rotated MNIST), and the resize that brings it to the common format
//! ([`IMAGE_SIZE`](crate::IMAGE_SIZE) × `IMAGE_SIZE` × [`CHANNELS`](crate::CHANNELS)).
//! `docs/data.md` tabulates the tasks with their classes and split sizes.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{DataError, Result};
use crate::image::ImageSet;
use crate::source::{SourceData, SourceId, load_source};
use crate::split::{Split, Splits, source_splits};
use crate::transform::{Resize, rotate90, to_common};

/// How a task's images are derived from its source's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Construction {
    /// The source's images as they are.
    Original,
    /// Every image rotated by a fixed `quarter_turns × 90°` counter-clockwise (the
    /// "rotated" construction of continual learning, e.g. Rotated MNIST). Exact: no
    /// interpolation. Applied before resizing.
    Rotated {
        /// Number of 90° counter-clockwise turns.
        quarter_turns: u8,
    },
}

/// One task of the zoo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TaskSpec {
    /// Stable numeric id (1-based, the order of the task list).
    pub id: u32,
    /// Stable name, used for folders (`data/<name>/test.safetensors`) and on the command line.
    pub name: &'static str,
    /// The real source.
    pub source: SourceId,
    /// How the images derive from the source.
    pub construction: Construction,
    /// How the images are brought to the common size.
    pub resize: Resize,
    /// One-line description.
    pub summary: &'static str,
}

impl TaskSpec {
    /// Whether this task's source images of the [`Split::Pretrain`] split belong to the
    /// pretraining pool: only untransformed tasks contribute (a rotated task's pretrain
    /// split is the same images turned, which the pool leaves out so that rotation stays
    /// unseen during pretraining).
    pub fn contributes_to_pretraining(&self) -> bool {
        self.construction == Construction::Original
    }
}

/// The tasks of the embedded zoo, in id order.
///
/// Five tasks are the five real sources; three are the standard *rotated* construction
/// (every image turned 90° counter-clockwise) of the three 28 × 28 sources.
pub fn zoo_tasks() -> Vec<TaskSpec> {
    vec![
        TaskSpec {
            id: 1,
            name: "mnist",
            source: SourceId::Mnist,
            construction: Construction::Original,
            resize: Resize::Pad,
            summary: "handwritten digits 0-9 (10,000 MNIST images)",
        },
        TaskSpec {
            id: 2,
            name: "fashion_mnist",
            source: SourceId::FashionMnist,
            construction: Construction::Original,
            resize: Resize::Pad,
            summary: "ten kinds of clothing (Fashion-MNIST, official test split)",
        },
        TaskSpec {
            id: 3,
            name: "animal_silhouettes",
            source: SourceId::AnimalMnist,
            construction: Construction::Original,
            resize: Resize::Pad,
            summary: "silhouettes of ten animals",
        },
        TaskSpec {
            id: 4,
            name: "optdigits",
            source: SourceId::Optdigits,
            construction: Construction::Original,
            resize: Resize::Bilinear,
            summary: "8x8 block-count digits 0-9 (UCI optical recognition), upsampled",
        },
        TaskSpec {
            id: 5,
            name: "emoji_categories",
            source: SourceId::Emoji,
            construction: Construction::Original,
            resize: Resize::Area,
            summary: "Noto emoji, classified into their nine Unicode categories",
        },
        TaskSpec {
            id: 6,
            name: "rotated_mnist",
            source: SourceId::Mnist,
            construction: Construction::Rotated { quarter_turns: 1 },
            resize: Resize::Pad,
            summary: "Rotated MNIST: the digits turned 90 degrees",
        },
        TaskSpec {
            id: 7,
            name: "rotated_fashion_mnist",
            source: SourceId::FashionMnist,
            construction: Construction::Rotated { quarter_turns: 1 },
            resize: Resize::Pad,
            summary: "Rotated Fashion-MNIST: the clothing turned 90 degrees",
        },
        TaskSpec {
            id: 8,
            name: "rotated_animal_silhouettes",
            source: SourceId::AnimalMnist,
            construction: Construction::Rotated { quarter_turns: 1 },
            resize: Resize::Pad,
            summary: "Rotated animal silhouettes: turned 90 degrees",
        },
    ]
}

/// The task called `name`.
///
/// # Errors
/// [`DataError::UnknownTask`] if there is none.
pub fn task_by_name(name: &str) -> Result<TaskSpec> {
    zoo_tasks()
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| DataError::UnknownTask {
            name: name.to_owned(),
        })
}

/// A task's images in the common format, with its splits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskData {
    /// The task.
    pub spec: TaskSpec,
    /// Every image of the task, preprocessed (`IMAGE_SIZE × IMAGE_SIZE × CHANNELS`), in
    /// source order.
    pub images: ImageSet,
    /// The source's splits (indices into `images`).
    pub splits: Splits,
}

impl TaskData {
    /// The images of one split.
    pub fn split(&self, split: Split) -> Result<ImageSet> {
        self.images.subset(self.splits.get(split))
    }

    /// The task's class names.
    pub fn class_names(&self) -> &[String] {
        &self.images.class_names
    }
}

/// Builds a task from its source's data: construction, then resize and RGB conversion,
/// then the source's splits.
///
/// # Errors
/// [`DataError::InvalidImageSet`] if `source` is not the task's source; the errors of
/// [`to_common`] and [`source_splits`].
pub fn prepare_task(source: &SourceData, spec: &TaskSpec) -> Result<TaskData> {
    if source.source != spec.source {
        return Err(DataError::InvalidImageSet {
            detail: format!(
                "task {} needs source {}, got {}",
                spec.name, spec.source, source.source
            ),
        });
    }
    let splits = source_splits(source)?;
    let constructed = match spec.construction {
        Construction::Original => None,
        Construction::Rotated { quarter_turns } => Some(rotate90(&source.images, quarter_turns)),
    };
    let images = to_common(constructed.as_ref().unwrap_or(&source.images), spec.resize)?;
    Ok(TaskData {
        spec: *spec,
        images,
        splits,
    })
}

/// Loads one task from the cache.
pub fn load_task(cache_dir: &Path, spec: &TaskSpec) -> Result<TaskData> {
    prepare_task(&load_source(cache_dir, spec.source)?, spec)
}

/// Loads several tasks from the cache, reading each source once.
pub fn load_tasks(cache_dir: &Path, specs: &[TaskSpec]) -> Result<Vec<TaskData>> {
    let mut sources: BTreeMap<SourceId, SourceData> = BTreeMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let data = match sources.entry(spec.source) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(load_source(cache_dir, spec.source)?)
            }
        };
        out.push(prepare_task(data, spec)?);
    }
    Ok(out)
}

/// The pretraining images of one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PretrainPart {
    /// The task whose [`Split::Pretrain`] images these are.
    pub task: &'static str,
    /// The source.
    pub source: SourceId,
    /// The images, in the common format, with the source's labels.
    pub images: ImageSet,
}

/// The pretraining pool: the [`Split::Pretrain`] images of every task that
/// [contributes](TaskSpec::contributes_to_pretraining), one part per source.
///
/// These images are in no task's train, val, seed or test split (the splits are disjoint
/// per source, and derived tasks reuse their source's splits).
pub fn pretraining_pool(tasks: &[TaskData]) -> Result<Vec<PretrainPart>> {
    let mut parts: Vec<PretrainPart> = Vec::new();
    for t in tasks {
        if !t.spec.contributes_to_pretraining() || t.splits.pretrain.is_empty() {
            continue;
        }
        if parts.iter().any(|p| p.source == t.spec.source) {
            continue;
        }
        parts.push(PretrainPart {
            task: t.spec.name,
            source: t.spec.source,
            images: t.split(Split::Pretrain)?,
        });
    }
    Ok(parts)
}
