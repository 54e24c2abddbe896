//! CLIP's zero-shot classifier: heads from class names and prompt templates, and the class
//! names and templates of the papers' 20 tasks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use madeit_params::ParamDict;

use crate::model::load_weights;
use crate::text_model::LOGIT_SCALE_KEY;
use crate::{
    CONFIG_FILE, ClipTextConfig, ClipTextModel, ClipTokenizer, HEAD_PROJECTION_KEY, TaskHead,
    VitError, WEIGHTS_FILE,
};

/// The placeholder a prompt template holds for the class name.
pub const PLACEHOLDER: &str = "{}";

/// Prompts per text forward in [`zero_shot_head`].
pub const DEFAULT_TEXT_BATCH: usize = 256;

/// The eight tasks of the task-arithmetic papers (TA8), in the published order.
pub const TA8: [&str; 8] = first_of_tall20();

/// TALL14: TA8 and six more tasks, in the published order.
pub const TALL14: [&str; 14] = first_of_tall20();

/// The first `N` tasks of [`TALL20`] (each benchmark extends the one before).
const fn first_of_tall20<const N: usize>() -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = TALL20[i];
        i += 1;
    }
    out
}

/// TALL20: TALL14 and six more tasks, in the published order.
pub const TALL20: [&str; 20] = [
    "sun397",
    "stanford_cars",
    "resisc45",
    "eurosat",
    "svhn",
    "gtsrb",
    "mnist",
    "dtd",
    "oxford_flowers102",
    "pcam",
    "fer2013",
    "oxford_iiit_pet",
    "stl10",
    "cifar100",
    "cifar10",
    "food101",
    "fashion_mnist",
    "emnist_letters",
    "kmnist",
    "rendered_sst2",
];

struct Builtin {
    name: &'static str,
    aliases: &'static [&'static str],
    classes: &'static str,
    templates: &'static str,
}

macro_rules! builtin {
    ($name:literal, [$($alias:literal),*]) => {
        Builtin {
            name: $name,
            aliases: &[$($alias),*],
            classes: include_str!(concat!("../data/tasks/", $name, ".classes.txt")),
            templates: include_str!(concat!("../data/tasks/", $name, ".templates.txt")),
        }
    };
}

/// The class names and templates of the 20 tasks (FusionBench's
/// `fusion_bench/tasks/clip_classification/`, see `data/tasks/README.md`), in TALL20 order.
static BUILTIN: [Builtin; 20] = [
    builtin!("sun397", []),
    builtin!("stanford_cars", ["cars"]),
    builtin!("resisc45", []),
    builtin!("eurosat", []),
    builtin!("svhn", []),
    builtin!("gtsrb", []),
    builtin!("mnist", []),
    builtin!("dtd", []),
    builtin!("oxford_flowers102", ["flowers102", "flower102"]),
    builtin!("pcam", []),
    builtin!("fer2013", []),
    builtin!("oxford_iiit_pet", ["pets", "oxford_pets"]),
    builtin!("stl10", []),
    builtin!("cifar100", []),
    builtin!("cifar10", []),
    builtin!("food101", []),
    builtin!("fashion_mnist", []),
    builtin!("emnist_letters", []),
    builtin!("kmnist", []),
    builtin!("rendered_sst2", ["sst2"]),
];

/// Lower case, `-` and spaces as `_`: `Stanford-Cars` and `stanford_cars` name one task.
fn canonical(name: &str) -> String {
    name.trim().to_lowercase().replace(['-', ' '], "_")
}

/// The names of the built-in tasks, in TALL20 order.
pub fn builtin_task_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|b| b.name)
}

/// The tasks of a group name: `ta8`, `tall14` or `tall20` (case and `-`/`_` ignored).
#[must_use]
pub fn task_group(name: &str) -> Option<&'static [&'static str]> {
    match canonical(name).as_str() {
        "ta8" => Some(&TA8),
        "tall14" => Some(&TALL14),
        "tall20" => Some(&TALL20),
        _ => None,
    }
}

/// The canonical name of a built-in task or alias (`stanford-cars` -> `stanford_cars`).
#[must_use]
pub fn builtin_task_name(name: &str) -> Option<&'static str> {
    let c = canonical(name);
    BUILTIN
        .iter()
        .find(|b| b.name == c || b.aliases.contains(&c.as_str()))
        .map(|b| b.name)
}

fn known_tasks() -> String {
    let mut names: Vec<&str> = builtin_task_names().collect();
    names.extend(["ta8", "tall14", "tall20"]);
    names.join(", ")
}

/// One line of a list file: the 1-based line number and the trimmed text.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.strip_prefix('\u{feff}')
        .unwrap_or(text)
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
}

/// A zero-shot classification task: its class names (in label order) and prompt templates
/// (`{}` marks the class name).
///
/// Invariants, checked on construction: at least one class and one template; no class name
/// is empty or repeated; every template holds `{}`. Surrounding whitespace of names and
/// templates is dropped (CLIP's tokenizer ignores it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroShotTask {
    name: String,
    classes: Vec<String>,
    templates: Vec<String>,
}

impl ZeroShotTask {
    /// A task from in-memory lists.
    ///
    /// # Errors
    /// [`VitError::ClassList`] for an empty list, an empty or a duplicate name (naming its
    /// 1-based position); [`VitError::TemplateList`] for an empty list or a template without
    /// `{}`.
    pub fn new(
        name: impl Into<String>,
        classes: Vec<String>,
        templates: Vec<String>,
    ) -> Result<Self, VitError> {
        let classes: Vec<(usize, String)> = classes
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i + 1, c.trim().to_owned()))
            .collect();
        let templates: Vec<(usize, String)> = templates
            .into_iter()
            .enumerate()
            .map(|(i, t)| (i + 1, t.trim().to_owned()))
            .collect();
        Self::checked(name.into(), classes, templates, None, None)
    }

    /// A task from the text of a class file and a template file (one entry per line).
    ///
    /// # Errors
    /// As [`new`](Self::new), naming the line.
    pub fn parse(
        name: impl Into<String>,
        classes: &str,
        templates: &str,
    ) -> Result<Self, VitError> {
        Self::checked(
            name.into(),
            lines(classes).map(|(i, l)| (i, l.to_owned())).collect(),
            lines(templates).map(|(i, l)| (i, l.to_owned())).collect(),
            None,
            None,
        )
    }

    /// A task from a class file and a template file (UTF-8, one entry per line).
    ///
    /// # Errors
    /// [`VitError::Io`] when a file cannot be read; [`VitError::ClassList`] /
    /// [`VitError::TemplateList`] naming the file and line (also for a file that is not
    /// UTF-8).
    pub fn from_files(
        name: impl Into<String>,
        classes: &Path,
        templates: &Path,
    ) -> Result<Self, VitError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| VitError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let class_text = String::from_utf8(read(classes)?).map_err(|e| VitError::ClassList {
            path: Some(classes.to_path_buf()),
            line: None,
            reason: format!("not UTF-8 text: {e}"),
        })?;
        let template_text =
            String::from_utf8(read(templates)?).map_err(|e| VitError::TemplateList {
                path: Some(templates.to_path_buf()),
                line: None,
                reason: format!("not UTF-8 text: {e}"),
            })?;
        Self::checked(
            name.into(),
            lines(&class_text).map(|(i, l)| (i, l.to_owned())).collect(),
            lines(&template_text)
                .map(|(i, l)| (i, l.to_owned()))
                .collect(),
            Some(classes),
            Some(templates),
        )
    }

    /// One of the 20 built-in tasks, by name or alias (see [`TALL20`]; case, `-` and `_` are
    /// ignored, so FusionBench's names such as `stanford-cars` work too).
    ///
    /// # Errors
    /// [`VitError::UnknownTask`] listing the known names.
    pub fn builtin(name: &str) -> Result<Self, VitError> {
        let canonical = builtin_task_name(name).ok_or_else(|| VitError::UnknownTask {
            name: name.to_owned(),
            known: known_tasks(),
        })?;
        let b = BUILTIN
            .iter()
            .find(|b| b.name == canonical)
            .ok_or_else(|| VitError::UnknownTask {
                name: name.to_owned(),
                known: known_tasks(),
            })?;
        Self::parse(b.name, b.classes, b.templates)
    }

    fn checked(
        name: String,
        classes: Vec<(usize, String)>,
        templates: Vec<(usize, String)>,
        class_path: Option<&Path>,
        template_path: Option<&Path>,
    ) -> Result<Self, VitError> {
        let class_err = |line: Option<usize>, reason: String| VitError::ClassList {
            path: class_path.map(Path::to_path_buf),
            line,
            reason,
        };
        let template_err = |line: Option<usize>, reason: String| VitError::TemplateList {
            path: template_path.map(Path::to_path_buf),
            line,
            reason,
        };
        if classes.is_empty() {
            return Err(class_err(None, "no class names".into()));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (line, c) in &classes {
            if c.is_empty() {
                return Err(class_err(Some(*line), "empty class name".into()));
            }
            if let Some(first) = seen.insert(c.as_str(), *line) {
                return Err(class_err(
                    Some(*line),
                    format!("duplicate class name {c:?} (first on line {first})"),
                ));
            }
        }
        if templates.is_empty() {
            return Err(template_err(None, "no templates".into()));
        }
        for (line, t) in &templates {
            if !t.contains(PLACEHOLDER) {
                return Err(template_err(
                    Some(*line),
                    format!("template {t:?} has no `{PLACEHOLDER}` placeholder for the class name"),
                ));
            }
        }
        Ok(Self {
            name,
            classes: classes.into_iter().map(|(_, c)| c).collect(),
            templates: templates.into_iter().map(|(_, t)| t).collect(),
        })
    }

    /// The task name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The class names, in label order.
    #[must_use]
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The prompt templates.
    #[must_use]
    pub fn templates(&self) -> &[String] {
        &self.templates
    }

    /// Number of prompts (classes x templates).
    #[must_use]
    pub fn num_prompts(&self) -> usize {
        self.classes.len() * self.templates.len()
    }

    /// The prompts of one class, one per template (`{}` replaced by the class name).
    #[must_use]
    pub fn prompts(&self, class: usize) -> Vec<String> {
        let Some(name) = self.classes.get(class) else {
            return Vec::new();
        };
        self.templates
            .iter()
            .map(|t| t.replace(PLACEHOLDER, name))
            .collect()
    }
}

/// CLIP's zero-shot head of `task` (FusionBench's `HFCLIPClassifier.set_classification_task`,
/// the recipe of the task-vectors papers): for every class, the projected text embedding of
/// each template's prompt is normalised, the normalised embeddings are averaged, and the
/// mean is normalised again. The head carries `logit_scale` (CLIP's, a logarithm) when given.
///
/// Prompts are tokenized with truncation to the text tower's context length and run in
/// batches of at most [`DEFAULT_TEXT_BATCH`] prompts of one length (no padding); the result
/// does not depend on the batching.
///
/// # Errors
/// [`VitError::NoTextTower`] when the model has no `text_projection`; tokenizer and forward
/// errors.
pub fn zero_shot_head(
    model: &ClipTextModel,
    tokenizer: &ClipTokenizer,
    task: &ZeroShotTask,
    logit_scale: Option<f32>,
) -> Result<TaskHead, VitError> {
    zero_shot_head_with(
        model,
        tokenizer,
        task,
        logit_scale,
        DEFAULT_TEXT_BATCH,
        &mut |_, _| {},
    )
}

/// As [`zero_shot_head`], with `batch_size` prompts per forward and `progress(done, total)`
/// called after every forward (in prompts).
///
/// # Errors
/// As [`zero_shot_head`]; [`VitError::TextInput`] when `batch_size == 0`.
pub fn zero_shot_head_with(
    model: &ClipTextModel,
    tokenizer: &ClipTokenizer,
    task: &ZeroShotTask,
    logit_scale: Option<f32>,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<TaskHead, VitError> {
    if !model.has_projection() {
        return Err(VitError::NoTextTower {
            path: None,
            reason: "the text tower has no `text_projection.weight`, which CLIP's heads need"
                .into(),
        });
    }
    if batch_size == 0 {
        return Err(VitError::TextInput {
            reason: "the text batch size must be at least 1".into(),
        });
    }
    let context = model.config().max_position_embeddings;
    let truncated;
    let tokenizer = if tokenizer.context_length() > context {
        truncated = tokenizer.clone().with_context_length(context)?;
        &truncated
    } else {
        tokenizer
    };
    let n_t = task.templates().len();
    let mut ids = Vec::with_capacity(task.num_prompts());
    for c in 0..task.classes().len() {
        for prompt in task.prompts(c) {
            ids.push(tokenizer.encode(&prompt)?);
        }
    }
    // Batches of prompts of one length: no padding, so the forward needs only the causal
    // mask. Longest first, so the first batch shows the cost; ties keep prompt order.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
    let mut chunks: Vec<&[usize]> = Vec::new();
    for group in order.chunk_by(|&a, &b| ids[a].len() == ids[b].len()) {
        chunks.extend(group.chunks(batch_size));
    }
    let dim = model.embedding_dim();
    let mut embeds = vec![0.0f32; ids.len() * dim];
    let total = ids.len();
    let mut done = 0;
    for chunk in chunks {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        let out = model.text_embeddings(&seqs, tokenizer.pad_id(), seqs.len())?;
        for (row, &i) in out.data().chunks_exact(dim).zip(chunk) {
            embeds[i * dim..(i + 1) * dim].copy_from_slice(row);
        }
        done += chunk.len();
        progress(done, total);
    }
    let mut head = Vec::with_capacity(task.classes().len() * dim);
    for (c, per_class) in embeds.chunks_exact(n_t * dim).enumerate() {
        let mut mean = vec![0.0f64; dim];
        for e in per_class.chunks_exact(dim) {
            let norm = e.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            if norm == 0.0 {
                return Err(VitError::Head {
                    head: task.name().to_owned(),
                    reason: format!("a prompt of class {c} has a zero text embedding"),
                });
            }
            for (m, x) in mean.iter_mut().zip(e) {
                *m += f64::from(*x) / norm;
            }
        }
        let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
        if norm == 0.0 {
            return Err(VitError::Head {
                head: task.name().to_owned(),
                reason: format!("the mean text embedding of class {c} is zero"),
            });
        }
        head.extend(mean.iter().map(|m| (m / norm) as f32));
    }
    let weight = madeit_params::Tensor::new(vec![task.classes().len(), dim], head)?;
    let head = TaskHead::new(task.name(), &weight, task.classes().to_vec())?
        .with_templates(task.templates().to_vec());
    match logit_scale {
        Some(s) => head.with_logit_scale(s),
        None => Ok(head),
    }
}

/// Reads CLIP's `logit_scale` from a `CLIPModel` state dict.
///
/// # Errors
/// [`VitError::LogitScale`] when it is missing, not a single value, or not finite.
pub fn logit_scale_of(params: &ParamDict) -> Result<f32, VitError> {
    let t = params
        .get(LOGIT_SCALE_KEY)
        .map_err(|_| VitError::LogitScale {
            path: None,
            reason: format!(
                "no `{LOGIT_SCALE_KEY}` tensor (a `CLIPModel` checkpoint has one; \
             text- or vision-only checkpoints do not)"
            ),
        })?;
    match t.data() {
        [v] if v.is_finite() && v.exp().is_finite() => Ok(*v),
        [v] => Err(VitError::LogitScale {
            path: None,
            reason: format!("`{LOGIT_SCALE_KEY}` is {v}"),
        }),
        _ => Err(VitError::LogitScale {
            path: None,
            reason: format!(
                "`{LOGIT_SCALE_KEY}` has shape {:?}, expected a single value",
                t.shape()
            ),
        }),
    }
}

/// What makes CLIP's zero-shot heads: the text tower, its tokenizer and the logit scale of a
/// `CLIPModel` checkpoint, plus its image projection (stored in every head, for vision towers
/// saved without one).
#[derive(Debug, Clone)]
pub struct ZeroShotModel {
    text: ClipTextModel,
    tokenizer: ClipTokenizer,
    logit_scale: f32,
    visual_projection: Option<madeit_params::Tensor>,
    source: Option<PathBuf>,
}

impl ZeroShotModel {
    /// Reads a `CLIPModel` folder (the layout of `openai/clip-vit-base-patch32`):
    /// `config.json` with a `text_config`, the weights (through the same loader as the
    /// vision tower), and the tokenizer (`tokenizer.json`, or `vocab.json` + `merges.txt`).
    ///
    /// # Errors
    /// [`VitError::NoTextTower`] naming the folder when the checkpoint has no text tower;
    /// [`VitError::LogitScale`] naming the weights when `logit_scale` is missing;
    /// [`VitError::Tokenizer`] naming the file when the tokenizer is missing or does not
    /// parse; file, parse and checkpoint errors naming the file or tensor.
    pub fn load_dir(dir: &Path) -> Result<Self, VitError> {
        Self::load_dir_with(dir, None)
    }

    /// As [`load_dir`](Self::load_dir) with a tokenizer given separately (`None`: the
    /// folder's).
    ///
    /// # Errors
    /// As [`load_dir`](Self::load_dir).
    pub fn load_dir_with(dir: &Path, tokenizer: Option<ClipTokenizer>) -> Result<Self, VitError> {
        let config =
            ClipTextConfig::from_file(&dir.join(CONFIG_FILE)).map_err(|e| e.in_folder(dir))?;
        let params = load_weights(dir)?;
        let text = ClipTextModel::from_params(&config, &params).map_err(|e| e.in_folder(dir))?;
        let logit_scale =
            logit_scale_of(&params).map_err(|e| e.in_folder(&dir.join(WEIGHTS_FILE)))?;
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => ClipTokenizer::from_dir(dir)?,
        };
        let visual_projection = params.get(HEAD_PROJECTION_KEY).ok().cloned();
        let mut this = Self::new(text, tokenizer, logit_scale, visual_projection)?;
        this.source = Some(dir.to_path_buf());
        Ok(this)
    }

    /// From parts. The tokenizer is truncated to the tower's context length.
    ///
    /// # Errors
    /// [`VitError::Tokenizer`] when the tokenizer has more tokens than the tower's
    /// vocabulary; [`VitError::LogitScale`] for a non-finite scale; [`VitError::NoTextTower`]
    /// when the tower has no `text_projection`.
    pub fn new(
        text: ClipTextModel,
        tokenizer: ClipTokenizer,
        logit_scale: f32,
        visual_projection: Option<madeit_params::Tensor>,
    ) -> Result<Self, VitError> {
        let c = text.config();
        if tokenizer.vocab_size() > c.vocab_size {
            return Err(VitError::Tokenizer {
                path: tokenizer.source().map(Path::to_path_buf),
                message: format!(
                    "has {} tokens, the text tower's vocabulary only {}",
                    tokenizer.vocab_size(),
                    c.vocab_size
                ),
            });
        }
        if !text.has_projection() {
            return Err(VitError::NoTextTower {
                path: None,
                reason: "the text tower has no `text_projection.weight`, which CLIP's heads need"
                    .into(),
            });
        }
        if !(logit_scale.is_finite() && logit_scale.exp().is_finite()) {
            return Err(VitError::LogitScale {
                path: None,
                reason: format!("`{LOGIT_SCALE_KEY}` is {logit_scale}"),
            });
        }
        let context = c.max_position_embeddings.min(tokenizer.context_length());
        let tokenizer = tokenizer.with_context_length(context)?;
        Ok(Self {
            text,
            tokenizer,
            logit_scale,
            visual_projection,
            source: None,
        })
    }

    /// CLIP's zero-shot head of `task` ([`zero_shot_head`]) with this model's logit scale
    /// and image projection.
    ///
    /// # Errors
    /// As [`zero_shot_head`].
    pub fn head(&self, task: &ZeroShotTask) -> Result<TaskHead, VitError> {
        self.head_with(task, DEFAULT_TEXT_BATCH, &mut |_, _| {})
    }

    /// As [`head`](Self::head), with a batch size and a progress callback
    /// ([`zero_shot_head_with`]).
    ///
    /// # Errors
    /// As [`zero_shot_head_with`].
    pub fn head_with(
        &self,
        task: &ZeroShotTask,
        batch_size: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<TaskHead, VitError> {
        let head = zero_shot_head_with(
            &self.text,
            &self.tokenizer,
            task,
            Some(self.logit_scale),
            batch_size,
            progress,
        )?;
        match &self.visual_projection {
            Some(p) if p.shape().first() == Some(&head.dim()) => {
                head.with_visual_projection(p.clone())
            }
            _ => Ok(head),
        }
    }

    /// The text tower.
    #[must_use]
    pub fn text(&self) -> &ClipTextModel {
        &self.text
    }

    /// The tokenizer.
    #[must_use]
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// CLIP's `logit_scale` (a logarithm; logits are multiplied by its exponential).
    #[must_use]
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// The checkpoint's `visual_projection.weight`, if it has one.
    #[must_use]
    pub fn visual_projection(&self) -> Option<&madeit_params::Tensor> {
        self.visual_projection.as_ref()
    }

    /// The folder the model was read from.
    #[must_use]
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }
}
