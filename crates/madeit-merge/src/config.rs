//! Method configurations and the registry of methods.
//!
//! A configuration is a table with a `method` key and the method's parameters; every
//! parameter is optional and defaults to the reference implementation's value:
//!
//! ```toml
//! method = "ties"
//! lambda = 0.3
//! keep_fraction = 0.2
//! aggregate = "sum"
//! ```
//!
//! Unknown methods and unknown keys are errors. [`MethodConfig::check`] validates the
//! values once; [`MethodConfig::build`] checks and constructs the merger.
//!
//! # The registry
//!
//! Every data-free method is one line of the `registry!` invocation below: a
//! [`MethodConfig`] variant holding the method's configuration type, which implements
//! [`MergeMethodConfig`] (its [`MethodInfo`], range checks and constructor). The macro
//! derives the enum, its dispatch (`info`, `check`, `build`, serde) and [`REGISTRY`];
//! [`METHODS`], [`MethodConfig::default_for`] and the parsers read [`REGISTRY`]. See
//! `docs/adding-a-method.md`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use madeit_experts::ExpertsError;
use madeit_stream::ParameterError;

use crate::made_it::MadeItConfig;

use crate::methods::{IsoCConfig, MadeItMerger, MagMax, Opcm, Swa, TaskArithmeticFamily};
use crate::{ContinualMerger, MergeError, MergerState};

/// The descriptive part of a registry entry: what the method is called, where it comes
/// from, whether the default experiment runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// Registry name, the value of the `method` key.
    pub name: &'static str,
    /// Short name, the row label of the results tables (`TIES-Merging`).
    pub label: &'static str,
    /// Human-readable name.
    pub title: &'static str,
    /// One-line description of the update rule.
    pub summary: &'static str,
    /// The paper that introduced the method.
    pub paper: &'static str,
    /// The reference implementation whose semantics (and defaults) this crate follows.
    pub reference: &'static str,
    /// Whether the default experiment (`madeit run` without `--methods` or a `methods` list)
    /// runs the method.
    pub default_run: bool,
}

/// What the configuration type of a data-free method provides to the registry: its
/// [`MethodInfo`], the range checks of its values and the constructor of its merger.
///
/// `Default` gives the reference implementation's values; serde gives the TOML/JSON form
/// (every field optional, unknown keys rejected). The [`MethodConfig`] variant holding the
/// type is declared by the method's line in the registry of this module.
pub trait MergeMethodConfig:
    Clone + Default + Serialize + DeserializeOwned + Into<MethodConfig> + 'static
{
    /// The method's registry entry.
    const INFO: MethodInfo;

    /// Validates every value once.
    ///
    /// # Errors
    /// [`MergeError::InvalidParameter`] naming the parameter and its valid range.
    fn check(&self) -> Result<(), MergeError>;

    /// Checks the configuration and builds an empty merger.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    fn build(&self) -> Result<Box<dyn ContinualMerger>, MergeError>;
}

/// One data-free method of the registry: its [`MethodInfo`], its default configuration and
/// the parser of its TOML/JSON form.
#[derive(Debug, Clone, Copy)]
pub struct MergeMethod {
    /// Name, titles, paper, reference, default-run flag.
    pub info: MethodInfo,
    default_config: fn() -> MethodConfig,
    parse: fn(
        &'static str,
        serde_json::Map<String, serde_json::Value>,
    ) -> Result<MethodConfig, MergeError>,
}

impl MergeMethod {
    /// The entry of the method configured by `C`.
    #[must_use]
    pub const fn of<C: MergeMethodConfig>() -> Self {
        Self {
            info: C::INFO,
            default_config: default_config_of::<C>,
            parse: parse_config_of::<C>,
        }
    }

    /// The reference defaults.
    #[must_use]
    pub fn default_config(&self) -> MethodConfig {
        (self.default_config)()
    }

    /// Parses the method's parameters (the table without its `method` key). Values are not
    /// range-checked: see [`MethodConfig::check`].
    ///
    /// # Errors
    /// [`MergeError::InvalidConfig`] naming the offending key.
    pub fn parse(
        &self,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<MethodConfig, MergeError> {
        (self.parse)(self.info.name, fields)
    }
}

fn default_config_of<C: MergeMethodConfig>() -> MethodConfig {
    C::default().into()
}

fn parse_config_of<C: MergeMethodConfig>(
    name: &'static str,
    fields: serde_json::Map<String, serde_json::Value>,
) -> Result<MethodConfig, MergeError> {
    parse_fields::<C>(name, fields).map(Into::into)
}

/// Declares the registry: the [`MethodConfig`] enum (one variant per method), its dispatch
/// and [`REGISTRY`], from one line per method.
macro_rules! registry {
    ($( $(#[$doc:meta])* $variant:ident($ty:ty), )+) => {
        /// The configuration of one merging method, tagged by its registry name
        /// (`method = "..."`). Each variant is one line of the registry in `config.rs`.
        #[derive(Debug, Clone, PartialEq)]
        #[non_exhaustive]
        pub enum MethodConfig {
            $( $(#[$doc])* $variant($ty), )+
        }

        /// Every registered data-free method, in the order of the papers' tables (and of the
        /// default experiment).
        pub const REGISTRY: &[MergeMethod] = &[ $( MergeMethod::of::<$ty>(), )+ ];

        $(
            impl From<$ty> for MethodConfig {
                fn from(c: $ty) -> Self {
                    Self::$variant(c)
                }
            }
        )+

        impl MethodConfig {
            /// The registry entry of the method.
            #[must_use]
            pub fn info(&self) -> &'static MethodInfo {
                match self {
                    $( Self::$variant(_) => &<$ty as MergeMethodConfig>::INFO, )+
                }
            }

            /// Validates every value once.
            ///
            /// # Errors
            /// [`MergeError::InvalidParameter`] naming the parameter and its valid range.
            pub fn check(&self) -> Result<(), MergeError> {
                match self {
                    $( Self::$variant(c) => <$ty as MergeMethodConfig>::check(c), )+
                }
            }

            /// Checks the configuration and builds an empty merger.
            ///
            /// # Errors
            /// As [`check`](Self::check).
            pub fn build(&self) -> Result<Box<dyn ContinualMerger>, MergeError> {
                match self {
                    $( Self::$variant(c) => <$ty as MergeMethodConfig>::build(c), )+
                }
            }
        }

        impl Serialize for MethodConfig {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let method = self.name();
                match self {
                    $( Self::$variant(config) => Tagged { method, config }.serialize(s), )+
                }
            }
        }
    };
}

registry! {
    /// `swa`: [`SwaConfig`].
    Swa(SwaConfig),
    /// `task_arithmetic`: [`TaskArithmeticConfig`].
    TaskArithmetic(TaskArithmeticConfig),
    /// `ties`: [`TiesConfig`].
    Ties(TiesConfig),
    /// `magmax`: [`MagMaxConfig`].
    MagMax(MagMaxConfig),
    /// `opcm`: [`OpcmConfig`].
    Opcm(OpcmConfig),
    /// `made_it`: [`MadeItConfig`] (its fields at the top level, e.g. `rho = 0.1`,
    /// `kappa = 1.0`, `svd = "exact"`; the default `svd` is
    /// `{ auto = { min_dim = 512, oversample = 10, power_iters = 2, seed = 0 } }`).
    MadeIt(MadeItConfig),
    /// `c_iso_c`: [`IsoCConfig`].
    IsoC(IsoCConfig),
}

/// The serde form of a configuration: `method = NAME` and the configuration's fields.
#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    method: &'static str,
    #[serde(flatten)]
    config: &'a T,
}

const REGISTRY_LEN: usize = REGISTRY.len();

const METHOD_INFOS: [MethodInfo; REGISTRY_LEN] = {
    let mut out = [REGISTRY[0].info; REGISTRY_LEN];
    let mut i = 0;
    while i < REGISTRY_LEN {
        out[i] = REGISTRY[i].info;
        i += 1;
    }
    out
};

/// The [`MethodInfo`] of every entry of [`REGISTRY`], in its order.
pub const METHODS: &[MethodInfo] = &METHOD_INFOS;

/// The registry entry of `name`.
///
/// # Errors
/// [`MergeError::UnknownMethod`] listing the registered names.
pub fn method_info(name: &str) -> Result<&'static MethodInfo, MergeError> {
    merge_method(name).map(|m| &m.info)
}

/// The data-free method registered as `name`.
///
/// # Errors
/// [`MergeError::UnknownMethod`] listing the registered names.
pub fn merge_method(name: &str) -> Result<&'static MergeMethod, MergeError> {
    REGISTRY
        .iter()
        .find(|m| m.info.name == name)
        .ok_or_else(|| unknown_method(name))
}

fn unknown_method(name: &str) -> MergeError {
    MergeError::UnknownMethod {
        name: name.to_owned(),
        available: METHODS
            .iter()
            .map(|m| m.name)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Continual stochastic weight averaging. It has no parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwaConfig {}

/// Continual task arithmetic: `θ^(0) = θ_0`, `θ^(t) = θ^(t−1) + λ τ_t`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskArithmeticConfig {
    /// Scaling factor `λ` of every task vector. Default 0.3 (the reference's value for
    /// 8 tasks; its published 14- and 20-task runs use 0.1). Alias `scaling_factor`.
    #[serde(default = "default_lambda", alias = "scaling_factor")]
    pub lambda: f64,
}

impl Default for TaskArithmeticConfig {
    fn default() -> Self {
        Self {
            lambda: default_lambda(),
        }
    }
}

/// How TIES combines the entries that agree with the elected sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// Sum of the agreeing entries (the reference default).
    #[default]
    Sum,
    /// Sum divided by the number of agreeing entries (at least 1).
    Mean,
    /// Largest agreeing magnitude, with the elected sign.
    Max,
}

/// Continual TIES-merging.
///
/// Step 1 adds `λ τ_1` untrimmed. Step `t ≥ 2` stacks two rows, each the whole model
/// flattened — the merged task vector `θ^(t−1) − θ_0` and `τ_t` — trims each row globally to
/// its largest `keep_fraction` magnitudes (with `d` entries the threshold is the
/// `(d − ⌊keep_fraction·d⌋)`-th smallest magnitude and every entry at least that large is
/// kept, ties included), elects a sign per entry (sign of the sum of the trimmed rows; where
/// it is 0, the sign of the sum of all elected signs), aggregates the entries whose sign
/// agrees with it, and sets `θ^(t) = θ^(t−1) + λ · aggregate`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TiesConfig {
    /// Scaling factor `λ`. Default 0.3 (the published 8-task runs; 0.1 for 14 and 20
    /// tasks; the reference's config file says 0.5). Alias `scaling_factor`.
    #[serde(default = "default_lambda", alias = "scaling_factor")]
    pub lambda: f64,
    /// Fraction of each row's entries kept by the trim, in `(0, 1]`. Default 0.2 (the
    /// reference's `threshold: 20`, a percentage).
    #[serde(default = "default_keep_fraction")]
    pub keep_fraction: f64,
    /// How agreeing entries are combined. Default `sum`.
    #[serde(default)]
    pub aggregate: Aggregate,
}

impl Default for TiesConfig {
    fn default() -> Self {
        Self {
            lambda: default_lambda(),
            keep_fraction: default_keep_fraction(),
            aggregate: Aggregate::Sum,
        }
    }
}

/// MagMax-Ind: `τ_max ← where(|τ_t| ≥ |τ_max|, τ_t, τ_max)` elementwise,
/// `θ^(t) = θ_0 + s τ_max`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MagMaxConfig {
    /// Scale `s` of the max-magnitude task vector. Default 0.5 (the reference's value).
    #[serde(default = "default_magmax_scale")]
    pub scaling_factor: f64,
}

impl Default for MagMaxConfig {
    fn default() -> Self {
        Self {
            scaling_factor: default_magmax_scale(),
        }
    }
}

/// OPCM: orthogonal projection of each new task vector off the singular directions of the
/// merged task vector, with rescaling to the running mean task-vector norm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcmConfig {
    /// Singular-value mass threshold `α` in `[0, 1]`: the split rank `k` is the first index
    /// at which `cumsum(s)/sum(s) > α`. Default 0.5 (the reference's value).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Reproduce the reference's treatment of `class_embedding` (a parameter that does not
    /// belong to a leaf module there): at steps `t ≥ 2` it is carried over unchanged before
    /// the rescale (`p' = p^(t−1)`, neither multiplied by `λ_{t−1}` nor given `τ_t`), while
    /// still counting in the norms and still being divided by `λ_t`. Applies to tensors whose
    /// last name segment is `class_embedding`. Default `true`.
    #[serde(default = "default_true")]
    pub class_embedding_quirk: bool,
    /// 2-D `*.weight` tensors are linear weights and get the SVD projection, except those
    /// whose name contains one of these substrings: embedding tables, which the reference
    /// merges like biases. Default `["embedding"]`.
    #[serde(default = "default_embedding_patterns")]
    pub embedding_patterns: Vec<String>,
    /// Precision of the SVD and projection of each linear weight. Default
    /// [`SvdPrecision::F32`], the precision of the reference, which decomposes the weights
    /// in their own dtype (`float32` for CLIP); `f64` is about twice as slow.
    #[serde(default)]
    pub precision: SvdPrecision,
}

/// The floating-point precision of a decomposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SvdPrecision {
    /// Single precision (the weights' own).
    #[default]
    F32,
    /// Double precision.
    F64,
}

impl Default for OpcmConfig {
    fn default() -> Self {
        Self {
            alpha: default_alpha(),
            class_embedding_quirk: true,
            embedding_patterns: default_embedding_patterns(),
            precision: SvdPrecision::default(),
        }
    }
}

fn default_lambda() -> f64 {
    0.3
}
fn default_keep_fraction() -> f64 {
    0.2
}
fn default_magmax_scale() -> f64 {
    0.5
}
fn default_alpha() -> f64 {
    0.5
}
fn default_true() -> bool {
    true
}
fn default_embedding_patterns() -> Vec<String> {
    vec!["embedding".to_owned()]
}

impl MethodConfig {
    /// The registry name of the method.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.info().name
    }

    /// The reference defaults of method `name`.
    ///
    /// # Errors
    /// [`MergeError::UnknownMethod`].
    pub fn default_for(name: &str) -> Result<Self, MergeError> {
        merge_method(name).map(MergeMethod::default_config)
    }

    /// Parses a configuration from a JSON value (an object with a `method` key).
    ///
    /// # Errors
    /// [`MergeError::InvalidConfig`] (not an object, no `method`, unknown key, wrong type) or
    /// [`MergeError::UnknownMethod`]. Values are not range-checked: see [`check`](Self::check).
    pub fn from_json_value(value: serde_json::Value) -> Result<Self, MergeError> {
        let serde_json::Value::Object(mut map) = value else {
            return Err(MergeError::InvalidConfig {
                method: None,
                message: "a method configuration must be a table/object".to_owned(),
            });
        };
        let method = match map.remove("method") {
            Some(serde_json::Value::String(s)) => s,
            Some(other) => {
                return Err(MergeError::InvalidConfig {
                    method: None,
                    message: format!("`method` must be a string, got {other}"),
                });
            }
            None => {
                return Err(MergeError::InvalidConfig {
                    method: None,
                    message: "missing key `method`".to_owned(),
                });
            }
        };
        merge_method(&method)?.parse(map)
    }

    /// Parses a configuration from JSON text.
    ///
    /// # Errors
    /// As [`from_json_value`](Self::from_json_value), plus JSON syntax errors.
    pub fn from_json_str(text: &str) -> Result<Self, MergeError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| MergeError::InvalidConfig {
                method: None,
                message: e.to_string(),
            })?;
        Self::from_json_value(value)
    }

    /// Parses a configuration from TOML text (a document with a `method` key).
    ///
    /// # Errors
    /// As [`from_json_value`](Self::from_json_value), plus TOML syntax errors.
    pub fn from_toml_str(text: &str) -> Result<Self, MergeError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| MergeError::InvalidConfig {
            method: None,
            message: e.to_string(),
        })?;
        let value = serde_json::to_value(table).map_err(|e| MergeError::InvalidConfig {
            method: None,
            message: e.to_string(),
        })?;
        Self::from_json_value(value)
    }
}

/// [`MergeError::InvalidParameter`] unless every substring pattern of `parameter` is
/// non-empty.
pub(crate) fn check_patterns(
    method: &'static str,
    parameter: &'static str,
    patterns: &[String],
) -> Result<(), MergeError> {
    if patterns.iter().any(String::is_empty) {
        return Err(MergeError::from(ParameterError::new(
            method,
            parameter,
            format!("{patterns:?}"),
            "patterns must be non-empty substrings",
        )));
    }
    Ok(())
}

impl MergeMethodConfig for SwaConfig {
    const INFO: MethodInfo = MethodInfo {
        name: "swa",
        label: "SWA",
        title: "Stochastic weight averaging (continual)",
        summary: "θ^(t) = ((t−1) θ^(t−1) + θ_t) / t, the running mean of the fine-tuned models",
        paper: "https://arxiv.org/abs/1803.05407",
        reference: "https://github.com/tanganke/fusion_bench/blob/main/fusion_bench/method/opcm/weight_average.py",
        default_run: true,
    };

    fn check(&self) -> Result<(), MergeError> {
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn ContinualMerger>, MergeError> {
        Ok(Box::new(Swa::new(*self)?))
    }
}

impl MergeMethodConfig for TaskArithmeticConfig {
    const INFO: MethodInfo = MethodInfo {
        name: "task_arithmetic",
        label: "Task Arithmetic",
        title: "Continual task arithmetic",
        summary: "θ^(t) = θ^(t−1) + λ τ_t",
        paper: "https://arxiv.org/abs/2212.04089",
        reference: "https://github.com/tanganke/fusion_bench/blob/main/fusion_bench/method/opcm/task_arithmetic.py",
        default_run: true,
    };

    fn check(&self) -> Result<(), MergeError> {
        Ok(ParameterError::finite(
            Self::INFO.name,
            "lambda",
            self.lambda,
        )?)
    }

    fn build(&self) -> Result<Box<dyn ContinualMerger>, MergeError> {
        Ok(Box::new(TaskArithmeticFamily::task_arithmetic(*self)?))
    }
}

impl MergeMethodConfig for TiesConfig {
    const INFO: MethodInfo = MethodInfo {
        name: "ties",
        label: "TIES-Merging",
        title: "Continual TIES-merging",
        summary: "θ^(t) = θ^(t−1) + λ · TIES(θ^(t−1) − θ_0, τ_t): global top-k trim, sign election, disjoint sum",
        paper: "https://arxiv.org/abs/2306.01708",
        reference: "https://github.com/tanganke/fusion_bench/blob/main/fusion_bench/method/opcm/ties_merging.py",
        default_run: true,
    };

    fn check(&self) -> Result<(), MergeError> {
        ParameterError::finite(Self::INFO.name, "lambda", self.lambda)?;
        if !(self.keep_fraction > 0.0 && self.keep_fraction <= 1.0) {
            return Err(MergeError::from(ParameterError::new(
                Self::INFO.name,
                "keep_fraction",
                self.keep_fraction,
                "must lie in (0, 1] (a fraction, not a percentage)",
            )));
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn ContinualMerger>, MergeError> {
        Ok(Box::new(TaskArithmeticFamily::ties(*self)?))
    }
}

impl MergeMethodConfig for MagMaxConfig {
    const INFO: MethodInfo = MethodInfo {
        name: "magmax",
        label: "MagMax",
        title: "MagMax-Ind",
        summary: "τ_max = elementwise larger-magnitude of (τ_max, τ_t); θ^(t) = θ_0 + 0.5 τ_max",
        paper: "https://arxiv.org/abs/2407.06322",
        reference: "https://github.com/zihuanqiu/MINGLE/blob/main/fusion_bench/method/mingle/magmax.py",
        default_run: true,
    };

    fn check(&self) -> Result<(), MergeError> {
        Ok(ParameterError::finite(
            Self::INFO.name,
            "scaling_factor",
            self.scaling_factor,
        )?)
    }

    fn build(&self) -> Result<Box<dyn ContinualMerger>, MergeError> {
        Ok(Box::new(MagMax::new(*self)?))
    }
}

impl MergeMethodConfig for OpcmConfig {
    const INFO: MethodInfo = MethodInfo {
        name: "opcm",
        label: "OPCM",
        title: "OPCM (orthogonal projection-based continual merging)",
        summary: "project τ_t off the singular directions of the merged task vector, add, rescale to the mean task-vector norm",
        paper: "https://arxiv.org/abs/2501.09522",
        reference: "https://github.com/tanganke/fusion_bench/blob/main/fusion_bench/method/opcm/opcm.py",
        default_run: true,
    };

    fn check(&self) -> Result<(), MergeError> {
        let name = Self::INFO.name;
        ParameterError::unit_interval(name, "alpha", self.alpha)?;
        check_patterns(name, "embedding_patterns", &self.embedding_patterns)
    }

    fn build(&self) -> Result<Box<dyn ContinualMerger>, MergeError> {
        Ok(Box::new(Opcm::new(self.clone())?))
    }
}

impl MergeMethodConfig for MadeItConfig {
    const INFO: MethodInfo = MethodInfo {
        name: "made_it",
        label: "MADE-IT",
        title: "MADE-IT (manifold-aware dynamic expert evolution and implicit routing)",
        summary: "per target module, the top-r SVD of τ_t joins the most similar low-rank expert if its subspace affinity exceeds μ + κσ of the affinity history, else becomes a new expert; inputs are routed along task-consistent expert paths by feature projection alignment",
        paper: "MADE-IT: Manifold-Aware Dynamic Expert Evolution and Implicit rouTing (no public link; the method as reconstructed in madeit-merge's `made_it` module)",
        reference: "https://github.com/madeit-rs/madeit/tree/main/crates/madeit-merge/src/made_it",
        default_run: true,
    };

    fn check(&self) -> Result<(), MergeError> {
        MadeItConfig::check(self).map_err(|e| made_it_parameter(self, &e))
    }

    fn build(&self) -> Result<Box<dyn ContinualMerger>, MergeError> {
        Ok(Box::new(MadeItMerger::new(self.clone())?))
    }
}

/// [`MergeError::InvalidParameter`] for a MADE-IT configuration rejected by
/// [`MadeItConfig::check`].
fn made_it_parameter(c: &MadeItConfig, e: &ExpertsError) -> MergeError {
    let (parameter, value, reason) = match e {
        ExpertsError::InvalidConfig { field, .. } => match *field {
            "rho" => ("rho", c.rho.to_string(), "must lie in (0, 1]"),
            "kappa" => ("kappa", c.kappa.to_string(), "must not be NaN"),
            "polar_rank_tol" => (
                "polar_rank_tol",
                c.polar_rank_tol.to_string(),
                "must lie in [0, 1)",
            ),
            "tie_tolerance" => (
                "tie_tolerance",
                c.tie_tolerance.to_string(),
                "must lie in [0, 0.5)",
            ),
            "svd.power_iters" => (
                "svd.power_iters",
                format!("{:?}", c.svd),
                "must be at most 64",
            ),
            other => (other, e.to_string(), "is out of range"),
        },
        other => ("config", other.to_string(), "is invalid"),
    };
    MergeError::from(ParameterError::new("made_it", parameter, value, reason))
}

/// Deserialises a method's parameters; on error, names the offending key (every field has
/// a default, so each key can be tried on its own).
fn parse_fields<T: DeserializeOwned>(
    method: &'static str,
    map: serde_json::Map<String, serde_json::Value>,
) -> Result<T, MergeError> {
    serde_json::from_value(serde_json::Value::Object(map.clone())).map_err(|e| {
        let culprit = map.iter().find(|&(k, v)| {
            let mut one = serde_json::Map::new();
            one.insert(k.clone(), v.clone());
            serde_json::from_value::<T>(serde_json::Value::Object(one)).is_err()
        });
        let message = match culprit {
            Some((k, _)) if !e.to_string().contains(k.as_str()) => format!("key `{k}`: {e}"),
            _ => e.to_string(),
        };
        MergeError::InvalidConfig {
            method: Some(method.to_owned()),
            message,
        }
    })
}

impl<'de> Deserialize<'de> for MethodConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Self::from_json_value(value).map_err(serde::de::Error::custom)
    }
}

/// Rebuilds a merger from a saved state: constructs it from the state's configuration and
/// restores the state into it.
///
/// # Errors
/// As [`MethodConfig::build`] and [`ContinualMethod::restore`](crate::ContinualMethod::restore).
pub fn resume(state: &MergerState) -> Result<Box<dyn ContinualMerger>, MergeError> {
    let mut merger = state.metadata.config.build()?;
    merger.restore(state)?;
    Ok(merger)
}
