//! The task registry of the embedded zoo, and loading a task ready for training.
//!
//! A task is a source, an optional standard continual-learning construction (a fixed
//! rotation, as in Rotated MNIST, or a mirror image), and the resize that brings it to the common format
//! ([`IMAGE_SIZE`](crate::IMAGE_SIZE) × `IMAGE_SIZE` × [`CHANNELS`](crate::CHANNELS)).
//! `docs/data.md` tabulates the tasks with their classes and split sizes.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{DataError, Result};
use crate::image::ImageSet;
use crate::source::{SourceData, SourceId, load_source};
use crate::split::{Split, Splits, source_splits};
use crate::transform::{Resize, mirror, rotate90, to_common};

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
    /// Every image mirrored left to right (a transformed twin in the manner of Rotated
    /// MNIST: the same classes, every stroke reversed). Exact. Applied before resizing.
    Mirrored,
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
    /// Only the source's classes `start..end` (relabelled from 0), or all of them.
    pub classes: Option<[u32; 2]>,
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

/// A group of tasks the zoo can be built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum TaskGroup {
    /// The default eight tasks: six real sources (the fonts give two tasks, capitals and
    /// lower case) and one mirrored twin (Mirrored MNIST).
    #[default]
    #[serde(rename = "8")]
    Eight,
    /// The eight tasks and six more (in the spirit of the papers' second group): the
    /// Twemoji categories, the font digits, the clip-art stamps and three rotated twins.
    #[serde(rename = "14")]
    Fourteen,
}

impl TaskGroup {
    /// Number of tasks.
    pub fn len(self) -> usize {
        match self {
            TaskGroup::Eight => 8,
            TaskGroup::Fourteen => 14,
        }
    }

    /// Always false: a group has tasks.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The group with this many tasks (8 or 14).
    pub fn from_len(n: usize) -> Option<TaskGroup> {
        match n {
            8 => Some(TaskGroup::Eight),
            14 => Some(TaskGroup::Fourteen),
            _ => None,
        }
    }

    /// The group's tasks, in id order.
    pub fn tasks(self) -> Vec<TaskSpec> {
        all_tasks().into_iter().take(self.len()).collect()
    }
}

const fn task(
    id: u32,
    name: &'static str,
    source: SourceId,
    construction: Construction,
    resize: Resize,
    classes: Option<[u32; 2]>,
    summary: &'static str,
) -> TaskSpec {
    TaskSpec {
        id,
        name,
        source,
        construction,
        resize,
        classes,
        summary,
    }
}

const UPRIGHT: Construction = Construction::Original;
const TURNED: Construction = Construction::Rotated { quarter_turns: 1 };
const MIRRORED: Construction = Construction::Mirrored;

/// Every task, in id order: the default group is the first eight ([`zoo_tasks`]), the
/// long group the first fourteen ([`TaskGroup::Fourteen`]); the last two (rotated
/// optdigits and rotated font letters) are in no group.
pub fn all_tasks() -> Vec<TaskSpec> {
    use SourceId as S;
    vec![
        task(
            1,
            "mnist",
            S::Mnist,
            UPRIGHT,
            Resize::Pad,
            None,
            "handwritten digits 0-9 (10,000 MNIST images)",
        ),
        task(
            2,
            "fashion_mnist",
            S::FashionMnist,
            UPRIGHT,
            Resize::Pad,
            None,
            "ten kinds of clothing (Fashion-MNIST, official test split)",
        ),
        task(
            3,
            "animal_silhouettes",
            S::AnimalMnist,
            UPRIGHT,
            Resize::Pad,
            None,
            "silhouettes of ten animals",
        ),
        task(
            4,
            "optdigits",
            S::Optdigits,
            UPRIGHT,
            Resize::Bilinear,
            None,
            "8x8 block-count digits 0-9 (UCI optical recognition), upsampled",
        ),
        task(
            5,
            "emoji_categories",
            S::Emoji,
            UPRIGHT,
            Resize::Area,
            None,
            "Noto emoji, classified into their nine Unicode categories",
        ),
        task(
            6,
            "font_letters",
            S::Fonts,
            UPRIGHT,
            Resize::Pad,
            Some([10, 20]),
            "the letters A-J rendered from Debian's font files (as notMNIST)",
        ),
        task(
            7,
            "font_lowercase",
            S::FontLowercase,
            UPRIGHT,
            Resize::Pad,
            None,
            "the lower-case letters a-j rendered from Debian's font files, named by their letter",
        ),
        task(
            8,
            "mirrored_mnist",
            S::Mnist,
            MIRRORED,
            Resize::Pad,
            None,
            "Mirrored MNIST: the digits mirrored left to right",
        ),
        task(
            9,
            "twemoji_categories",
            S::Twemoji,
            UPRIGHT,
            Resize::Area,
            None,
            "Twemoji, classified into their nine Unicode categories",
        ),
        task(
            10,
            "rotated_mnist",
            S::Mnist,
            TURNED,
            Resize::Pad,
            None,
            "Rotated MNIST: the digits turned 90 degrees",
        ),
        task(
            11,
            "font_digits",
            S::Fonts,
            UPRIGHT,
            Resize::Pad,
            Some([0, 10]),
            "the digits 0-9 rendered from Debian's font files",
        ),
        task(
            12,
            "clipart_stamps",
            S::Tuxpaint,
            UPRIGHT,
            Resize::Area,
            None,
            "Tux Paint's colour clip-art stamps, classified into seven categories",
        ),
        task(
            13,
            "rotated_fashion_mnist",
            S::FashionMnist,
            TURNED,
            Resize::Pad,
            None,
            "Rotated Fashion-MNIST: the clothing turned 90 degrees",
        ),
        task(
            14,
            "rotated_animal_silhouettes",
            S::AnimalMnist,
            TURNED,
            Resize::Pad,
            None,
            "Rotated animal silhouettes: turned 90 degrees",
        ),
        task(
            15,
            "rotated_optdigits",
            S::Optdigits,
            TURNED,
            Resize::Bilinear,
            None,
            "Rotated optdigits: turned 90 degrees",
        ),
        task(
            16,
            "rotated_font_letters",
            S::Fonts,
            TURNED,
            Resize::Pad,
            Some([10, 20]),
            "Rotated font letters A-J: turned 90 degrees",
        ),
    ]
}

/// The tasks of the default group ([`TaskGroup::Eight`]), in id order.
///
/// Seven real sources (MNIST, Fashion-MNIST, animal silhouettes, optdigits, Noto emoji,
/// font-rendered letters, Twemoji) and one rotated twin (Rotated MNIST).
pub fn zoo_tasks() -> Vec<TaskSpec> {
    TaskGroup::Eight.tasks()
}

/// The task called `name`.
///
/// # Errors
/// [`DataError::UnknownTask`] if there is none.
pub fn task_by_name(name: &str) -> Result<TaskSpec> {
    all_tasks()
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
        Construction::Mirrored => Some(mirror(&source.images)),
    };
    let images = to_common(constructed.as_ref().unwrap_or(&source.images), spec.resize)?;
    let Some([start, end]) = spec.classes else {
        return Ok(TaskData {
            spec: *spec,
            images,
            splits,
        });
    };
    if start >= end || end as usize > images.num_classes() {
        return Err(DataError::InvalidImageSet {
            detail: format!(
                "task {}: classes {start}..{end} of a source with {} classes",
                spec.name,
                images.num_classes()
            ),
        });
    }
    // Keep the classes start..end: new index of every kept image, splits remapped.
    let keep: Vec<usize> = (0..images.n)
        .filter(|&i| {
            images
                .labels
                .get(i)
                .is_some_and(|&l| (start..end).contains(&l))
        })
        .collect();
    let mut new_index = vec![usize::MAX; images.n];
    for (k, &i) in keep.iter().enumerate() {
        if let Some(slot) = new_index.get_mut(i) {
            *slot = k;
        }
    }
    let mut sub = images.subset(&keep)?;
    for l in &mut sub.labels {
        *l -= start;
    }
    sub.class_names = sub
        .class_names
        .get(start as usize..end as usize)
        .map(<[String]>::to_vec)
        .unwrap_or_default();
    sub.validate()?;
    let remap = |v: &[usize]| -> Vec<usize> {
        v.iter()
            .filter_map(|&i| new_index.get(i).copied().filter(|&k| k != usize::MAX))
            .collect()
    };
    let splits = Splits {
        pretrain: remap(&splits.pretrain),
        train: remap(&splits.train),
        val: remap(&splits.val),
        seed: remap(&splits.seed),
        test: remap(&splits.test),
    };
    Ok(TaskData {
        spec: *spec,
        images: sub,
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

/// The split sizes of `tasks` as a plain-text table for a terminal: a header line, then one
/// line a task with its id, its name, the number of images in each split of [`Split::ALL`]
/// (pretrain, train, val, seed, test) and its number of classes, in right-aligned columns.
/// Every line, the last included, ends in a newline.
///
/// ```
/// use madeit_data::{ImageSet, Splits, TaskData, split_table, task_by_name};
///
/// let n = 10;
/// let images = ImageSet::new(
///     vec![0; n * 3],
///     n,
///     1,
///     1,
///     3,
///     vec![0, 1, 0, 1, 0, 1, 0, 1, 0, 1],
///     vec!["zero".into(), "one".into()],
/// )?;
/// let splits = Splits {
///     pretrain: vec![0, 1, 2, 3],
///     train: vec![4, 5, 6],
///     val: vec![7],
///     seed: vec![8],
///     test: vec![9],
/// };
/// let task = TaskData { spec: task_by_name("mnist")?, images, splits };
/// assert_eq!(
///     split_table(&[task]),
///     "id task                        pretrain   train    val  seed   test classes\n\
///      1  mnist                              4       3      1     1      1 2\n"
/// );
/// # Ok::<(), madeit_data::DataError>(())
/// ```
pub fn split_table(tasks: &[TaskData]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    // Writing to a `String` cannot fail.
    let _ = writeln!(
        out,
        "{:<2} {:<27} {:>8} {:>7} {:>6} {:>5} {:>6} classes",
        "id", "task", "pretrain", "train", "val", "seed", "test"
    );
    for t in tasks {
        let c = |s: Split| t.splits.get(s).len();
        let _ = writeln!(
            out,
            "{:<2} {:<27} {:>8} {:>7} {:>6} {:>5} {:>6} {}",
            t.spec.id,
            t.spec.name,
            c(Split::Pretrain),
            c(Split::Train),
            c(Split::Val),
            c(Split::Seed),
            c(Split::Test),
            t.class_names().len()
        );
    }
    out
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

/// The natural resize of a source's images to the common size.
pub fn source_resize(source: SourceId) -> Resize {
    match source {
        SourceId::Mnist
        | SourceId::FashionMnist
        | SourceId::AnimalMnist
        | SourceId::Fonts
        | SourceId::FontLowercase => Resize::Pad,
        SourceId::Optdigits => Resize::Bilinear,
        SourceId::Emoji | SourceId::Twemoji | SourceId::Tuxpaint => Resize::Area,
    }
}

/// The [`Split::Pretrain`] images of one source in the common format, upright, labelled
/// with the source's pretraining labels ([`SourceData::pretrain_labels`]) where it has
/// them and `relabel` is set, and with its own labels otherwise; `None` when the source
/// reserves nothing.
///
/// # Errors
/// The errors of [`source_splits`] and [`to_common`].
pub fn pretrain_part(source: &SourceData, relabel: bool) -> Result<Option<PretrainPart>> {
    let splits = source_splits(source)?;
    if splits.pretrain.is_empty() {
        return Ok(None);
    }
    let mut set = source.images.subset(&splits.pretrain)?;
    if let Some(relabel) = source.pretrain_labels.as_ref().filter(|_| relabel) {
        set.labels = splits
            .pretrain
            .iter()
            .map(|&i| relabel.labels.get(i).copied().unwrap_or(0))
            .collect();
        set.class_names.clone_from(&relabel.class_names);
        set.validate()?;
    }
    Ok(Some(PretrainPart {
        task: source.source.name(),
        source: source.source,
        images: to_common(&set, source_resize(source.source))?,
    }))
}

/// The tasks of `specs` and the pretraining pool of `pool` (one part per source that
/// reserves images, [`pretrain_part`] with `relabel`), loaded from the cache, each source
/// read once.
///
/// # Errors
/// As [`load_source`], [`prepare_task`] and [`pretrain_part`].
pub fn load_tasks_and_pool(
    cache_dir: &Path,
    specs: &[TaskSpec],
    pool: &[SourceId],
    relabel: bool,
) -> Result<(Vec<TaskData>, Vec<PretrainPart>)> {
    let mut sources: BTreeMap<SourceId, SourceData> = BTreeMap::new();
    let needed: Vec<SourceId> = specs
        .iter()
        .map(|s| s.source)
        .chain(pool.iter().copied())
        .collect();
    for s in needed {
        if let std::collections::btree_map::Entry::Vacant(e) = sources.entry(s) {
            e.insert(load_source(cache_dir, s)?);
        }
    }
    let mut tasks = Vec::with_capacity(specs.len());
    for spec in specs {
        let data = sources
            .get(&spec.source)
            .ok_or_else(|| DataError::NotFetched {
                source_name: spec.source.name().to_owned(),
                cache_dir: cache_dir.to_path_buf(),
            })?;
        tasks.push(prepare_task(data, spec)?);
    }
    let mut parts = Vec::new();
    for s in pool {
        if let Some(data) = sources.get(s)
            && let Some(part) = pretrain_part(data, relabel)?
        {
            parts.push(part);
        }
    }
    Ok((tasks, parts))
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
