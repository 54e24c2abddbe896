//! The build's recipe: [`BuildConfig`] (tower, pretraining, fine-tuning, seeds) and the
//! seed streams every random choice is drawn from.

use super::*;

/// Every setting of a zoo build. `Default` is the configuration of the embedded zoo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildConfig {
    /// Seed of every random choice (initial weights, classifier, batch order, vectors of
    /// unseen names).
    pub seed: u64,
    /// The tasks: the default eight or the long group of fourteen.
    pub group: TaskGroup,
    /// The sources whose reserved ([`Split::Pretrain`]) images form the pretraining pool.
    pub pretrain_sources: Vec<SourceId>,
    /// Whether a source with a second labelling of its images (the emoji's subcategories,
    /// [`madeit_data::SourceData::pretrain_labels`]) joins the pool under those names
    /// instead of its task's names.
    pub pretrain_relabel: bool,
    /// The tower.
    pub model: ClipVisionConfig,
    /// Pretraining run.
    pub pretrain: TrainConfig,
    /// Logit scale `s` of the pretraining cosine classifier.
    pub pretrain_logit_scale: f32,
    /// At most this many pretraining images per source (a seeded sample), to keep the
    /// sources balanced; `None` uses them all.
    pub pretrain_images_per_source: Option<usize>,
    /// Fine-tuning run of every task; with `finetune_epochs > 0`, `finetune.steps` is the
    /// largest number of steps (see [`BuildConfig::finetune_steps`]).
    pub finetune: TrainConfig,
    /// Logit scale `s` of `s cos(e, h_c)` in the fine-tuning loss (CLIP's 100 by default;
    /// evaluation takes the argmax, which does not depend on it).
    pub finetune_logit_scale: f32,
    /// Which tensors fine-tuning moves.
    pub finetune_scope: FinetuneScope,
    /// Fine-tuning length in passes over the task's train split (0 = always
    /// `finetune.steps`).
    pub finetune_epochs: f64,
    /// The fewest fine-tuning steps of a task when `finetune_epochs > 0`.
    pub finetune_min_steps: usize,
    /// Images per forward when embedding and evaluating.
    pub eval_batch_size: usize,
    /// Validation accuracy is measured on at most this many images per task (a seeded
    /// sample; the test split is always evaluated whole); `None` uses the whole split.
    pub val_images: Option<usize>,
    /// Fraction of singular values whose energy is reported ([`task_vector_energy`]).
    pub energy_fraction: f64,
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            group: TaskGroup::Eight,
            pretrain_sources: default_pretrain_sources(),
            pretrain_relabel: false,
            model: ClipVisionConfig {
                hidden_size: 144,
                intermediate_size: 576,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                image_size: madeit_data::IMAGE_SIZE,
                patch_size: 8,
                num_channels: madeit_data::CHANNELS,
                layer_norm_eps: 1e-5,
                hidden_act: Activation::QuickGelu,
                projection_dim: 144,
            },
            pretrain: TrainConfig {
                steps: 2000,
                batch_size: 64,
                lr: 1e-3,
                warmup_steps: 100,
                weight_decay: 0.05,
                max_shift: 2,
            },
            pretrain_logit_scale: 16.0,
            pretrain_images_per_source: Some(6000),
            finetune: TrainConfig {
                steps: 200,
                batch_size: 64,
                lr: 3e-4,
                warmup_steps: 20,
                weight_decay: 0.01,
                max_shift: 1,
            },
            finetune_logit_scale: 16.0,
            finetune_scope: FinetuneScope::AttentionWeights,
            finetune_epochs: 0.0,
            finetune_min_steps: 100,
            eval_batch_size: 250,
            val_images: Some(500),
            energy_fraction: DEFAULT_ENERGY_FRACTION,
        }
    }
}

impl BuildConfig {
    /// A configuration small enough for tests: a 2-layer width-32 tower, a few steps.
    #[must_use]
    pub fn micro() -> Self {
        Self {
            model: ClipVisionConfig {
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                projection_dim: 32,
                ..Self::default().model
            },
            pretrain: TrainConfig {
                steps: 6,
                batch_size: 8,
                warmup_steps: 2,
                ..Self::default().pretrain
            },
            finetune: TrainConfig {
                steps: 4,
                batch_size: 8,
                warmup_steps: 1,
                ..Self::default().finetune
            },
            finetune_epochs: 0.0,
            eval_batch_size: 16,
            ..Self::default()
        }
    }

    /// Fine-tuning steps of a task with `n_train` training images:
    /// `clamp(ceil(finetune_epochs * n_train / batch_size), finetune_min_steps,
    /// finetune.steps)`, or `finetune.steps` when `finetune_epochs` is 0.
    #[must_use]
    pub fn finetune_steps(&self, n_train: usize) -> usize {
        if self.finetune_epochs <= 0.0 {
            return self.finetune.steps;
        }
        let b = self.finetune.batch_size.max(1) as f64;
        let steps = (self.finetune_epochs * n_train as f64 / b).ceil() as usize;
        steps.clamp(
            self.finetune_min_steps.min(self.finetune.steps),
            self.finetune.steps,
        )
    }

    /// The fine-tuning run of a task with `n_train` training images: [`BuildConfig::finetune`]
    /// with `steps` = [`BuildConfig::finetune_steps`]`(n_train)`.
    #[must_use]
    pub fn finetune_config(&self, n_train: usize) -> TrainConfig {
        TrainConfig {
            steps: self.finetune_steps(n_train),
            ..self.finetune.clone()
        }
    }

    /// The seed (batch order and augmentation) of the fine-tuning run of the task with id
    /// `task_id`, as recorded in the manifest ([`TaskEntry::finetune_seed`]).
    #[must_use]
    pub fn finetune_seed(&self, task_id: u32) -> u64 {
        derive_seed(self.seed, STREAM_FINETUNE + u64::from(task_id))
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`ZooError::InvalidConfig`] or [`ZooError::Vit`] naming the first bad field.
    pub fn check(&self) -> Result<()> {
        self.model.validate()?;
        self.pretrain.check()?;
        self.finetune.check()?;
        let bad = |field: &'static str, reason: &str| {
            Err(ZooError::InvalidConfig {
                field,
                reason: reason.into(),
            })
        };
        if !(self.pretrain_logit_scale.is_finite() && self.pretrain_logit_scale > 0.0) {
            return bad("pretrain_logit_scale", "must be finite and positive");
        }
        if !(self.finetune_logit_scale.is_finite() && self.finetune_logit_scale > 0.0) {
            return bad("finetune_logit_scale", "must be finite and positive");
        }
        if self.pretrain_images_per_source == Some(0) {
            return bad("pretrain_images_per_source", "must be positive");
        }
        if !(self.finetune_epochs.is_finite() && self.finetune_epochs >= 0.0) {
            return bad("finetune_epochs", "must be finite and non-negative");
        }
        if self.pretrain_sources.is_empty() {
            return bad("pretrain_sources", "must name at least one source");
        }
        if self.val_images == Some(0) {
            return bad("val_images", "must be positive");
        }
        if self.eval_batch_size == 0 {
            return bad("eval_batch_size", "must be positive");
        }
        if !(self.energy_fraction > 0.0 && self.energy_fraction <= 1.0) {
            return bad("energy_fraction", "must be in (0, 1]");
        }
        Ok(())
    }

    /// A 64-bit FNV-1a hash of the configuration's JSON, the names of the group's tasks
    /// (a group's tasks may change between versions while its name stays), the zoo format
    /// and the crate version: stage records made under another fingerprint are not reused.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        let tasks: Vec<&str> = self.group.tasks().iter().map(|t| t.name).collect();
        let tasks = tasks.join(",");
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text
            .bytes()
            .chain(tasks.bytes())
            .chain(ZOO_FORMAT.bytes())
            .chain(env!("CARGO_PKG_VERSION").bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// Which tensors a fine-tune moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinetuneScope {
    /// Every tensor of the tower.
    #[default]
    All,
    /// Only the linear weights of the encoder layers (q/k/v, out_proj, fc1, fc2); the
    /// embeddings, layer norms and biases keep their pretrained values.
    LinearWeights,
    /// Only the attention weights of the encoder layers (q/k/v, out_proj).
    AttentionWeights,
}

/// The sources of the default pretraining pool: every packaged source except the two
/// handwritten digit sources (MNIST, optdigits), whose digits pretraining knows only from
/// printed (font) digits, as CLIP knows digits from the web rather than from MNIST. The
/// lower-case letters ([`SourceId::FontLowercase`]) are not a packaged source: pretraining
/// knows the letter names from the capitals only.
#[must_use]
pub fn default_pretrain_sources() -> Vec<SourceId> {
    SourceId::PACKAGED
        .into_iter()
        .filter(|s| !matches!(s, SourceId::Mnist | SourceId::Optdigits))
        .collect()
}

/// SplitMix64 of `seed + stream`: independent seeds for the build's random streams.
#[must_use]
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    mix64(seed.wrapping_add(stream.wrapping_mul(GOLDEN_GAMMA)))
}

pub(super) const STREAM_INIT: u64 = 1;
pub(super) const STREAM_CLASSIFIER: u64 = 2;
pub(super) const STREAM_PRETRAIN_BATCHES: u64 = 3;
pub(super) const STREAM_PRETRAIN_SUBSET: u64 = 4;
pub(super) const STREAM_FINETUNE: u64 = 100;
pub(super) const STREAM_NAMES: u64 = 200;
