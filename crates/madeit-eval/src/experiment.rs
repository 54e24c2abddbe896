//! Experiments: several methods × several task orders on one benchmark, configured in TOML.
//!
//! ```toml
//! [experiment]
//! zoo = "zoo"                    # the benchmark folder (default: $MADEIT_ZOO or ./zoo)
//! benchmark = "ta8.toml"         # or a benchmark file (or preset) instead of the zoo
//! seeds = [42, 43, 44]           # one task order per seed (default: DEFAULT_SEEDS)
//! eval = "full"                  # "full" (whole accuracy matrix) or "final" (ACC/BWT only)
//! out = "runs/my-experiment"     # output folder (default: runs/<UTC timestamp>)
//! batch_size = 128               # images per forward in evaluation
//! test_images = 2000             # at most this many test images per task (default: all)
//! split = "test"                 # "test", or "val" to choose hyper-parameters
//! save_state = false             # save each stream after every step (to resume)
//! router = "projection"          # expert models: "projection", "projection-cls", "oracle"
//! device = "cpu"                 # where towers run: "cpu", or "wgpu" (built with `wgpu`)
//! methods = [
//!     "swa",                                         # a method with its defaults
//!     { method = "ties", lambda = 0.5 },             # with overrides
//!     { method = "ties", lambda = 0.1, label = "ties-0.1" },
//!     "mingle",                                      # test-time: MINGLE (madeit-adapt)
//!     { method = "mingle", projection = "hard", label = "mingle-hard" },
//! ]
//! ```
//!
//! Every key is optional; unknown keys (in `[experiment]`, at the top level or in a method
//! table) are errors, as are unknown methods. A method is a [`MethodSpec`]: any method of
//! the [`registry`] with any field of its configuration. Without `methods`,
//! every method the registry marks as run by default
//! ([`registry::default_methods`]: the data-free ones
//! except opt-in `c_iso_c`, then the test-time ones) runs with its defaults, in registry
//! order.
//!
//! [`run_experiment`] computes the reference rows once, then runs every (method, seed) stream
//! ([`run_stream`]) and summarises ACC and BWT over the orders (mean ± sample std).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use madeit_vit::{ClipVisionConfig, DeviceKind, TokenAggregation};
use serde::{Deserialize, Serialize};

use crate::benchmark::Benchmark;
use crate::error::{RunError, write_atomic};
use crate::evaluate::{
    DEFAULT_EVAL_BATCH, Evaluator, ExpertRouter, OracleRouter, ProjectionRouter,
};
pub use crate::machine::{MachineInfo, iso_date, timestamp_slug, unix_now, utc_datetime};
use crate::method::MethodSpec;
use crate::metrics::{MeanStd, OrderSummary, summarize_orders};
use crate::orders::{PUBLISHED_SEEDS, task_order};
use crate::registry;
use crate::runner::{
    EvalMode, References, RunEvent, StreamResult, StreamSpec, reference_rows, run_stream,
};

/// The split an experiment measures accuracy on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalSplit {
    /// The test splits (the protocol's numbers).
    #[default]
    Test,
    /// The validation splits (hyper-parameter selection).
    Val,
}

/// Seeds of the default run: the first two published seeds.
///
/// Chosen for time; the default run of `madeit run` also evaluates at most 2,000 test
/// images per task (`test_images`), which measures every method on 12,741 of the zoo's
/// 28,741 test images. [`PUBLISHED_SEEDS`] (`--full`) are the ten orders of the published
/// protocol, on whole test splits.
pub const DEFAULT_SEEDS: [u64; 2] = [42, 43];

/// Which router evaluates expert models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterKind {
    /// [`ProjectionRouter`] over all tokens.
    #[default]
    Projection,
    /// [`ProjectionRouter`] over the class token.
    ProjectionCls,
    /// [`OracleRouter`] (uses the task label: an upper bound).
    Oracle,
}

impl RouterKind {
    /// The router.
    #[must_use]
    pub fn build(self) -> Arc<dyn ExpertRouter> {
        match self {
            Self::Projection => Arc::new(ProjectionRouter::default()),
            Self::ProjectionCls => Arc::new(ProjectionRouter {
                tokens: TokenAggregation::ClsOnly,
            }),
            Self::Oracle => Arc::new(OracleRouter),
        }
    }
}

/// One method of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodEntry {
    /// Unique label in results (default: the method name).
    pub label: String,
    /// The configuration.
    pub config: MethodSpec,
}

impl MethodEntry {
    /// A method with its reference defaults, labelled by its name (a registry name or
    /// `mingle`).
    ///
    /// # Errors
    /// [`madeit_merge::MergeError::UnknownMethod`].
    pub fn defaults(name: &str) -> Result<Self, RunError> {
        let config = MethodSpec::default_for(name)?;
        Ok(Self {
            label: config.name().to_owned(),
            config,
        })
    }

    /// Parses an entry: a method name (`"swa"`) or a table with `method`, optional `label`
    /// and the method's parameters.
    ///
    /// # Errors
    /// [`madeit_merge::MergeError::UnknownMethod`] or
    /// [`madeit_merge::MergeError::InvalidConfig`] (unknown key, wrong type) wrapped in
    /// [`RunError::Merge`] (for MINGLE, [`madeit_adapt::AdaptError`]s wrapped in
    /// [`RunError::Adapt`]); [`RunError::InvalidConfig`] for a value that is neither.
    pub fn from_value(value: serde_json::Value) -> Result<Self, RunError> {
        match value {
            serde_json::Value::String(name) => Self::defaults(&name),
            serde_json::Value::Object(mut map) => {
                let label = match map.remove("label") {
                    None => None,
                    Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
                    Some(other) => {
                        return Err(RunError::config(format!(
                            "`label` must be a non-empty string, got {other}"
                        )));
                    }
                };
                let config = MethodSpec::from_json_value(serde_json::Value::Object(map))?;
                config.check()?;
                Ok(Self {
                    label: label.unwrap_or_else(|| config.name().to_owned()),
                    config,
                })
            }
            other => Err(RunError::config(format!(
                "a method is a name or a table with `method = \"...\"`, got {other}"
            ))),
        }
    }
}

/// A resolved experiment configuration (see the module docs for the TOML form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// The benchmark folder (a zoo).
    pub zoo: PathBuf,
    /// A benchmark file or preset name ([`crate::benchmark_file`]) run instead of the zoo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benchmark: Option<PathBuf>,
    /// The methods, in table order.
    pub methods: Vec<MethodEntry>,
    /// One task order per seed ([`task_order`]).
    pub seeds: Vec<u64>,
    /// Which accuracies each stream computes.
    pub eval: EvalMode,
    /// Output folder; `None` lets the caller choose (`runs/<timestamp>`).
    pub out: Option<PathBuf>,
    /// Images per forward in evaluation.
    pub batch_size: usize,
    /// At most this many test images per task, an evenly spaced subset of the split
    /// ([`Evaluator::from_benchmark_capped`]); `None` (the default) evaluates whole splits.
    pub test_images: Option<usize>,
    /// Which split the accuracies are measured on: the test splits, or the validation
    /// splits for choosing hyper-parameters ([`Benchmark::on_validation`]).
    pub split: EvalSplit,
    /// Save every stream after every step (under `<out>/state/`), so that it can be resumed.
    pub save_state: bool,
    /// How expert models are routed.
    pub router: RouterKind,
    /// Where the towers run (evaluation, routing, test-time training); merging runs on
    /// the CPU whatever the device.
    #[serde(default, skip_serializing_if = "is_cpu")]
    pub device: DeviceKind,
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_cpu(d: &DeviceKind) -> bool {
    *d == DeviceKind::Cpu
}

impl Default for ExperimentConfig {
    /// Every method the registry runs by default, with its defaults, in registry order;
    /// [`DEFAULT_SEEDS`], the full matrix, the default zoo folder.
    fn default() -> Self {
        Self {
            zoo: madeit_zoo::default_zoo_dir(),
            benchmark: None,
            methods: registry::default_methods()
                .into_iter()
                .map(|m| MethodEntry {
                    label: m.name().to_owned(),
                    config: m.default_config(),
                })
                .collect(),
            seeds: DEFAULT_SEEDS.to_vec(),
            eval: EvalMode::Full,
            out: None,
            batch_size: DEFAULT_EVAL_BATCH,
            test_images: None,
            split: EvalSplit::Test,
            save_state: false,
            router: RouterKind::Projection,
            device: DeviceKind::Cpu,
        }
    }
}

/// The TOML document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExperimentFile {
    experiment: RawExperiment,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiment {
    zoo: Option<PathBuf>,
    benchmark: Option<PathBuf>,
    methods: Option<Vec<serde_json::Value>>,
    seeds: Option<Vec<u64>>,
    eval: Option<EvalMode>,
    out: Option<PathBuf>,
    batch_size: Option<usize>,
    test_images: Option<usize>,
    split: Option<EvalSplit>,
    save_state: Option<bool>,
    router: Option<RouterKind>,
    device: Option<DeviceKind>,
}

impl ExperimentConfig {
    /// The default configuration with the ten published seeds (42–51).
    #[must_use]
    pub fn full() -> Self {
        Self {
            seeds: PUBLISHED_SEEDS.to_vec(),
            ..Self::default()
        }
    }

    /// Parses the TOML form (see the module docs); missing keys take the defaults.
    ///
    /// # Errors
    /// [`RunError::InvalidConfig`] for TOML syntax errors, unknown keys, wrong types and
    /// out-of-range values; [`RunError::Merge`] (or [`RunError::Adapt`] for MINGLE) for an
    /// unknown method or method key.
    pub fn from_toml_str(text: &str) -> Result<Self, RunError> {
        let file: ExperimentFile =
            toml::from_str(text).map_err(|e| RunError::config(e.to_string()))?;
        let raw = file.experiment;
        let d = Self::default();
        let methods = match raw.methods {
            Some(list) => list
                .into_iter()
                .map(MethodEntry::from_value)
                .collect::<Result<Vec<_>, _>>()?,
            None => d.methods,
        };
        let cfg = Self {
            zoo: raw.zoo.unwrap_or(d.zoo),
            benchmark: raw.benchmark,
            methods,
            seeds: raw.seeds.unwrap_or(d.seeds),
            eval: raw.eval.unwrap_or(d.eval),
            out: raw.out,
            batch_size: raw.batch_size.unwrap_or(d.batch_size),
            test_images: raw.test_images.or(d.test_images),
            split: raw.split.unwrap_or(d.split),
            save_state: raw.save_state.unwrap_or(d.save_state),
            router: raw.router.unwrap_or(d.router),
            device: raw.device.unwrap_or(d.device),
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// [`RunError::Io`] naming the file; as [`ExperimentConfig::from_toml_str`] (the
    /// message names the file).
    pub fn from_file(path: &Path) -> Result<Self, RunError> {
        let text = std::fs::read_to_string(path).map_err(|e| RunError::io(path, e))?;
        Self::from_toml_str(&text).map_err(|e| match e {
            RunError::InvalidConfig { message } => {
                RunError::config(format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    /// Checks the values: at least one method and one seed, unique labels and seeds, a
    /// positive batch size, valid method parameters.
    ///
    /// # Errors
    /// [`RunError::InvalidConfig`] naming the problem; [`RunError::Merge`] for a parameter
    /// out of range.
    pub fn check(&self) -> Result<(), RunError> {
        if self.methods.is_empty() {
            return Err(RunError::config("`methods` is empty"));
        }
        if self.seeds.is_empty() {
            return Err(RunError::config("`seeds` is empty"));
        }
        if self.batch_size == 0 {
            return Err(RunError::config("`batch_size` must be positive"));
        }
        if self.test_images == Some(0) {
            return Err(RunError::config("`test_images` must be positive"));
        }
        for (i, m) in self.methods.iter().enumerate() {
            m.config.check()?;
            if self.methods.iter().take(i).any(|o| o.label == m.label) {
                return Err(RunError::config(format!(
                    "two methods are labelled `{}`: give one a `label = \"...\"`",
                    m.label
                )));
            }
        }
        for (i, s) in self.seeds.iter().enumerate() {
            if self.seeds.iter().take(i).any(|o| o == s) {
                return Err(RunError::config(format!("seed {s} appears twice")));
            }
        }
        Ok(())
    }

    /// Number of accuracy evaluations the experiment performs on `n_tasks` tasks (reference
    /// rows included; some may be served from the cache).
    #[must_use]
    pub fn evaluations(&self, n_tasks: usize) -> usize {
        let per_stream = (0..n_tasks)
            .map(|j| self.eval.tasks_after_step(j, n_tasks).len())
            .sum::<usize>();
        2 * n_tasks + self.methods.len() * self.seeds.len() * per_stream
    }
}

/// Per-method summary over the orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSummary {
    /// Method label.
    pub label: String,
    /// Registry name.
    pub method: String,
    /// What the table must say about the row ([`MethodSpec::table_note`]): the mode of
    /// C. LW AdaMerging, that C. Fine-Tuned needs training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// ACC and BWT over the orders (fractions).
    pub orders: OrderSummary,
    /// Final accuracy per task (benchmark order) over the orders.
    pub final_accuracy: Vec<MeanStd>,
    /// Average accuracy over the tasks seen so far after each step
    /// ([`crate::metrics::AccuracyMatrix::seen_tasks_accuracy`]), over the orders; `None`
    /// unless every stream computed the full matrix.
    pub seen_accuracy: Option<Vec<MeanStd>>,
    /// Seconds of `absorb` per step, over every step of every order.
    pub absorb_seconds: MeanStd,
    /// Seconds of a whole stream (loading, merging, evaluating, saving).
    pub stream_seconds: MeanStd,
}

/// Wall-clock seconds of the parts of an experiment.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ExperimentTimings {
    /// Reading the pretrained weights, heads and test splits.
    pub load_s: f64,
    /// The reference rows.
    pub references_s: f64,
    /// Every stream.
    pub streams_s: f64,
    /// Everything.
    pub total_s: f64,
}

/// What the benchmark was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkInfo {
    /// Its folder.
    pub root: Option<PathBuf>,
    /// The benchmark file it was read from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Task names, in id order.
    pub tasks: Vec<String>,
    /// Test images per task.
    pub test_images: Vec<usize>,
    /// The tower.
    pub model: ClipVisionConfig,
}

/// Identifies a results document.
pub const RESULTS_FORMAT: &str = "madeit-results";
/// Version of the results layout.
pub const RESULTS_VERSION: u32 = 1;

/// Everything an experiment produced (written as `results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentResults {
    /// [`RESULTS_FORMAT`].
    pub format: String,
    /// [`RESULTS_VERSION`].
    pub version: u32,
    /// When the experiment finished, seconds since the Unix epoch.
    pub created_unix: u64,
    /// The same, as an ISO 8601 UTC date.
    pub date: String,
    /// The configuration.
    pub config: ExperimentConfig,
    /// The benchmark.
    pub benchmark: BenchmarkInfo,
    /// Pretrained and individually fine-tuned accuracies.
    pub references: References,
    /// Every stream, method-major, then seed order.
    pub streams: Vec<StreamResult>,
    /// Per-method summaries, in method order.
    pub summaries: Vec<MethodSummary>,
    /// Timings.
    pub timings: ExperimentTimings,
    /// The machine.
    pub machine: MachineInfo,
}

impl ExperimentResults {
    /// Writes the results as pretty JSON, atomically.
    ///
    /// # Errors
    /// [`RunError::Json`] or [`RunError::Io`] naming the file.
    pub fn save_json(&self, path: &Path) -> Result<(), RunError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| RunError::json(path, e))?;
        write_atomic(path, text.as_bytes())
    }

    /// Reads results written by [`ExperimentResults::save_json`].
    ///
    /// # Errors
    /// [`RunError::Io`] or [`RunError::Json`] naming the file.
    pub fn load_json(path: &Path) -> Result<Self, RunError> {
        let text = std::fs::read_to_string(path).map_err(|e| RunError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| RunError::json(path, e))
    }

    /// The streams of method `label`.
    pub fn streams_of<'a>(&'a self, label: &'a str) -> impl Iterator<Item = &'a StreamResult> + 'a {
        self.streams.iter().filter(move |s| s.label == label)
    }
}

/// Where [`run_experiment`] saves stream checkpoints, and whether it resumes from them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateOptions {
    /// Folder of the checkpoints (`<label>-seed<seed>.safetensors`); `None` saves nothing.
    pub dir: Option<PathBuf>,
    /// Resume streams whose checkpoint exists.
    pub resume: bool,
}

/// Runs `cfg` on `bench`: loads the heads and test splits once, computes the reference
/// rows, runs every (method, seed) stream and summarises them.
///
/// # Errors
/// [`RunError::InvalidConfig`]; any error of [`reference_rows`] and [`run_stream`].
pub fn run_experiment(
    cfg: &ExperimentConfig,
    bench: &Benchmark,
    state: &StateOptions,
    progress: &mut dyn FnMut(&RunEvent),
) -> Result<ExperimentResults, RunError> {
    cfg.check()?;
    if bench.root().is_none()
        && let Some(m) = cfg.methods.iter().find(|m| m.config.needs_training_data())
    {
        return Err(RunError::config(format!(
            "`{}` fine-tunes on each task's training data, which only the embedded zoo \
             provides",
            m.label
        )));
    }
    let t0 = Instant::now();
    let validation;
    let bench = match cfg.split {
        EvalSplit::Test => bench,
        EvalSplit::Val => {
            validation = bench.on_validation()?;
            &validation
        }
    };
    let device = cfg.device.device()?;
    let evaluator = Evaluator::from_benchmark_capped(bench, cfg.batch_size, cfg.test_images)?
        .with_router(cfg.router.build())
        .with_device(device);
    let pretrained = bench.load_pretrained()?;
    let load_s = t0.elapsed().as_secs_f64();

    let t = Instant::now();
    let references = reference_rows(bench, &evaluator, &pretrained, progress)?;
    let references_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let n = bench.num_tasks();
    let mut streams = Vec::with_capacity(cfg.methods.len() * cfg.seeds.len());
    for m in &cfg.methods {
        for &seed in &cfg.seeds {
            let order: Vec<usize> = task_order(n, seed).into_iter().map(|id| id - 1).collect();
            let spec = StreamSpec {
                label: m.label.clone(),
                method: m.config.clone(),
                order,
                seed: Some(seed),
                eval: cfg.eval,
                checkpoint: state
                    .dir
                    .as_ref()
                    .map(|d| d.join(format!("{}-seed{seed}.safetensors", file_safe(&m.label)))),
                resume: state.resume,
                stop_after: None,
            };
            streams.push(run_stream(bench, &evaluator, &pretrained, &spec, progress)?);
        }
    }
    let streams_s = t.elapsed().as_secs_f64();

    let summaries = cfg
        .methods
        .iter()
        .map(|m| summarize_method(m, &streams, &references.tasks))
        .collect::<Result<Vec<_>, _>>()?;
    let created_unix = unix_now();
    Ok(ExperimentResults {
        format: RESULTS_FORMAT.to_owned(),
        version: RESULTS_VERSION,
        created_unix,
        date: iso_date(created_unix),
        config: cfg.clone(),
        benchmark: BenchmarkInfo {
            root: bench.root().map(Path::to_path_buf),
            file: bench.file().map(Path::to_path_buf),
            tasks: bench.task_names(),
            test_images: (0..n).map(|i| evaluator.test_size(i)).collect(),
            model: bench.config().clone(),
        },
        references,
        streams,
        summaries,
        timings: ExperimentTimings {
            load_s,
            references_s,
            streams_s,
            total_s: t0.elapsed().as_secs_f64(),
        },
        machine: MachineInfo::collect(),
    })
}

/// A label usable in a file name (anything but ASCII letters, digits, `-`, `_`, `.` becomes
/// `_`).
fn file_safe(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Summarises the streams of one method (see [`MethodSummary`]).
///
/// # Errors
/// [`crate::EvalError`] (wrapped) when a stream is incomplete or misses an entry.
pub fn summarize_method(
    m: &MethodEntry,
    streams: &[StreamResult],
    tasks: &[String],
) -> Result<MethodSummary, RunError> {
    let mine: Vec<&StreamResult> = streams.iter().filter(|s| s.label == m.label).collect();
    let matrices: Vec<_> = mine.iter().map(|s| s.matrix.clone()).collect();
    let orders = summarize_orders(&matrices)?;
    let mut final_accuracy = Vec::with_capacity(tasks.len());
    for task in tasks {
        let mut values = Vec::new();
        for s in &mine {
            if let Some(pos) = s.order.iter().position(|t| t == task) {
                values.push(s.matrix.require(pos, s.order.len() - 1)?);
            }
        }
        final_accuracy.push(MeanStd::of(&values)?);
    }
    let seen_accuracy = if mine.iter().all(|s| s.eval == EvalMode::Full) {
        let steps = mine.first().map_or(0, |s| s.order.len());
        let mut curve = Vec::with_capacity(steps);
        for j in 0..steps {
            let v = mine
                .iter()
                .map(|s| s.matrix.seen_tasks_accuracy(j))
                .collect::<Result<Vec<_>, _>>()?;
            curve.push(MeanStd::of(&v)?);
        }
        Some(curve)
    } else {
        None
    };
    let absorb: Vec<f64> = mine
        .iter()
        .flat_map(|s| s.steps.iter().map(|st| st.timing.absorb_s))
        .collect();
    let totals: Vec<f64> = mine.iter().map(|s| s.total_seconds()).collect();
    Ok(MethodSummary {
        label: m.label.clone(),
        method: m.config.name().to_owned(),
        note: m.config.table_note(),
        orders,
        final_accuracy,
        seen_accuracy,
        absorb_seconds: MeanStd::of(&absorb)?,
        stream_seconds: MeanStd::of(&totals)?,
    })
}
