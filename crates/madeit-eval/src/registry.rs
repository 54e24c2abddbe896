//! The registry of every method a stream can run: one [`MethodDescriptor`] per method.
//!
//! The data-free methods come from [`madeit_merge::REGISTRY`] (one line each in
//! `madeit-merge`'s `config.rs`, in its order); the test-time methods of `madeit-adapt` and
//! the sequential fine-tuning reference are the lines of this module. Everything that lists,
//! validates, labels or defaults methods reads [`methods`]: [`MethodSpec::default_for`] and
//! its parser, the default experiment ([`default_methods`]), `madeit merge`'s refusal of the
//! methods that cannot merge checkpoints alone ([`crate::checkpoints::refuse_non_merge`]),
//! the table labels ([`crate::report::display_name`]), the command-line help and
//! `madeit methods`, the Python listing and the examples. Adding a method is described in
//! `docs/adding-a-method.md`.

use std::sync::LazyLock;

use madeit_adapt::{
    AdaMergingConfig, LORA_WEMOE, LW_ADAMERGING, MINGLE, MingleConfig, WemoeConfig,
};
use madeit_merge::{MergeError, MergeMethod, MethodInfo};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RunError;
use crate::method::MethodSpec;
use crate::sequential::{C_FINETUNED, SequentialConfig};

/// What a method needs besides the fine-tuned checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MethodKind {
    /// Nothing: a weight-space method of `madeit-merge` (`madeit merge` runs it on
    /// checkpoints alone).
    DataFree,
    /// Each task's unlabelled seed images and classification head (adapts at test time).
    TestTime,
    /// Each task's training data (C. Fine-Tuned).
    NeedsTrainingData,
}

impl MethodKind {
    /// A short description (`data-free`, `test-time`, `needs training data`).
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::DataFree => "data-free",
            Self::TestTime => "test-time (seed images and heads)",
            Self::NeedsTrainingData => "needs training data",
        }
    }
}

/// Where a descriptor's configuration comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// A data-free method of [`madeit_merge::REGISTRY`].
    Merge(&'static MergeMethod),
    /// A method whose configuration type converts into [`MethodSpec`].
    Spec {
        default_config: fn() -> MethodSpec,
        parse: fn(
            &'static str,
            serde_json::Map<String, serde_json::Value>,
        ) -> Result<MethodSpec, RunError>,
    },
}

/// One method of the registry: its name, labels, paper and reference ([`MethodInfo`]), its
/// [`MethodKind`], whether the default experiment runs it, and its configuration (defaults,
/// parser; the configuration builds the method: [`madeit_merge::MethodConfig::build`] for a
/// data-free method, [`MethodSpec::build_test_time`] for a test-time one, the run loop for
/// C. Fine-Tuned).
#[derive(Debug, Clone, Copy)]
pub struct MethodDescriptor {
    /// Registry name, labels, paper, reference implementation, default-run flag.
    pub info: MethodInfo,
    /// What the method needs besides the checkpoints.
    pub kind: MethodKind,
    source: Source,
}

impl MethodDescriptor {
    /// The registry name (the value of `method`).
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.info.name
    }

    /// The reference defaults.
    #[must_use]
    pub fn default_config(&self) -> MethodSpec {
        match self.source {
            Source::Merge(m) => MethodSpec::Merge(m.default_config()),
            Source::Spec { default_config, .. } => default_config(),
        }
    }

    /// Parses the method's parameters: the table without its `method` key (unknown keys
    /// rejected, missing keys at the defaults). Values are not range-checked: see
    /// [`MethodSpec::check`].
    ///
    /// # Errors
    /// [`RunError::Merge`] or [`RunError::Adapt`] wrapping the method crate's
    /// `InvalidConfig`.
    pub fn parse(
        &self,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<MethodSpec, RunError> {
        match self.source {
            Source::Merge(m) => Ok(MethodSpec::Merge(m.parse(fields)?)),
            Source::Spec { parse, .. } => parse(self.info.name, fields),
        }
    }

    /// The entry of a data-free method of [`madeit_merge::REGISTRY`].
    const fn data_free(m: &'static MergeMethod) -> Self {
        Self {
            info: m.info,
            kind: MethodKind::DataFree,
            source: Source::Merge(m),
        }
    }

    /// The entry of a method configured by `C`.
    const fn of<C: Default + DeserializeOwned + Serialize + Into<MethodSpec>>(
        info: MethodInfo,
        kind: MethodKind,
    ) -> Self {
        Self {
            info,
            kind,
            source: Source::Spec {
                default_config: default_spec::<C>,
                parse: parse_spec::<C>,
            },
        }
    }
}

fn default_spec<C: Default + Into<MethodSpec>>() -> MethodSpec {
    C::default().into()
}

fn parse_spec<C: Default + DeserializeOwned + Serialize + Into<MethodSpec>>(
    method: &'static str,
    fields: serde_json::Map<String, serde_json::Value>,
) -> Result<MethodSpec, RunError> {
    madeit_adapt::parse_config::<C>(method, serde_json::Value::Object(fields))
        .map(Into::into)
        .map_err(RunError::from)
}

/// The methods of this crate's part of the registry (after the data-free ones), one line
/// each, in the order of the papers' tables (and of the default experiment).
const OTHER_METHODS: &[MethodDescriptor] = &[
    MethodDescriptor::of::<AdaMergingConfig>(
        MethodInfo {
            name: LW_ADAMERGING,
            label: "C. LW AdaMerging",
            title: "Continual layer-wise AdaMerging",
            summary: "θ^(t) = θ_0 + clamp(L) τ_t with one coefficient per tensor, learned by entropy minimisation on the current task's seed images",
            paper: "https://arxiv.org/abs/2310.02575",
            reference: "https://github.com/zihuanqiu/MINGLE/blob/main/fusion_bench/method/mingle/c_adamerging.py",
            default_run: true,
        },
        MethodKind::TestTime,
    ),
    MethodDescriptor::of::<WemoeConfig>(
        MethodInfo {
            name: LORA_WEMOE,
            label: "C. LoRA-WEMoE",
            title: "Continual LoRA weight-ensembling mixture of experts",
            summary: "attention by task arithmetic; per MLP a low-rank expert per task mixed by routers retrained at every step on the current task's seed images",
            paper: "https://arxiv.org/abs/2402.00433",
            reference: "https://github.com/zihuanqiu/MINGLE/blob/main/fusion_bench/method/mingle/c_wemoe.py",
            default_run: true,
        },
        MethodKind::TestTime,
    ),
    MethodDescriptor::of::<MingleConfig>(
        MethodInfo {
            name: MINGLE,
            label: "MINGLE",
            title: "MINGLE (mixtures of null-space gated low-rank experts)",
            summary: "low-rank experts with linear gates; the new task's gates adapt on its seed images with gradients projected off earlier tasks' input subspaces (adaptively relaxed)",
            paper: "https://arxiv.org/abs/2505.11883",
            reference: "https://github.com/zihuanqiu/MINGLE",
            default_run: true,
        },
        MethodKind::TestTime,
    ),
    MethodDescriptor::of::<SequentialConfig>(
        MethodInfo {
            name: C_FINETUNED,
            label: "C. Fine-Tuned",
            title: "Continual fine-tuning (sequential, the non-merging reference row)",
            summary: "the tower of step t−1 fine-tuned on task t's training split with the zoo's recipe",
            paper: "https://arxiv.org/abs/2505.11883",
            reference: "https://github.com/madeit-rs/madeit/tree/main/crates/madeit-zoo",
            default_run: false,
        },
        MethodKind::NeedsTrainingData,
    ),
];

static REGISTRY: LazyLock<Vec<MethodDescriptor>> = LazyLock::new(|| {
    madeit_merge::REGISTRY
        .iter()
        .map(MethodDescriptor::data_free)
        .chain(OTHER_METHODS.iter().copied())
        .collect()
});

/// Every registered method, in the order of the papers' tables: the data-free methods of
/// [`madeit_merge::REGISTRY`], then the test-time methods, then C. Fine-Tuned.
#[must_use]
pub fn methods() -> &'static [MethodDescriptor] {
    &REGISTRY
}

/// The method registered as `name`.
///
/// # Errors
/// [`MergeError::UnknownMethod`] (wrapped in [`RunError::Merge`]) listing every registered
/// name.
pub fn method(name: &str) -> Result<&'static MethodDescriptor, RunError> {
    find(name).ok_or_else(|| {
        RunError::from(MergeError::UnknownMethod {
            name: name.to_owned(),
            available: names().join(", "),
        })
    })
}

/// The method registered as `name`, if any.
#[must_use]
pub fn find(name: &str) -> Option<&'static MethodDescriptor> {
    methods().iter().find(|m| m.info.name == name)
}

/// Every registered name, in registry order.
#[must_use]
pub fn names() -> Vec<&'static str> {
    methods().iter().map(MethodDescriptor::name).collect()
}

/// The names of the methods of `kind`, in registry order.
#[must_use]
pub fn names_of(kind: MethodKind) -> Vec<&'static str> {
    methods()
        .iter()
        .filter(|m| m.kind == kind)
        .map(MethodDescriptor::name)
        .collect()
}

/// The methods the default experiment runs, in order, with their defaults.
#[must_use]
pub fn default_methods() -> Vec<&'static MethodDescriptor> {
    methods().iter().filter(|m| m.info.default_run).collect()
}

/// One line per method: `name  (kind)  label — summary`, for help texts and listings.
#[must_use]
pub fn describe_all() -> String {
    let width = methods().iter().map(|m| m.name().len()).max().unwrap_or(0);
    methods()
        .iter()
        .map(|m| {
            format!(
                "{:width$}  {}{}: {}",
                m.name(),
                m.info.label,
                if m.info.default_run { "" } else { " (opt-in)" },
                m.kind.describe(),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
