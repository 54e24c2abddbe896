//! The continual evaluation run loop: one merging method, one task order.
//!
//! [`run_stream`] feeds a [`ContinualMerger`] the fine-tuned models of a task order one at a
//! time and evaluates the merged model after every step:
//!
//! ```text
//! for j = 1..T:
//!     θ_{π(j)}  ← load fine-tuned checkpoint of task π(j)      (checked against θ_0)
//!     merger.absorb(θ_0, θ_{π(j)})                              (θ_{π(j)} is then dropped)
//!     θ^(j)     ← merger.merged_model(θ_0)
//!     a_i(θ^(j)) for the tasks i the evaluation mode asks for   (→ AccuracyMatrix)
//!     optionally save the merger state + the matrix so far      (atomic: temp file + rename)
//! ```
//!
//! Only `θ_0`, the current fine-tuned model and the merger's state are in memory. With
//! [`EvalMode::Full`] every task seen so far is evaluated after every step (the whole lower
//! triangle, `T(T+1)/2` evaluations); [`EvalMode::Final`] computes only what ACC and BWT
//! need: `a_i(θ^(i))` after each step `i` and `a_i(θ^(T))` for every `i` (`2T − 1`).
//!
//! A stream saved after each step ([`StreamSpec::checkpoint`]) can be resumed
//! ([`StreamSpec::resume`]): the merger is restored from its saved state
//! ([`madeit_merge::resume`]) and the saved accuracies are kept, so a resumed stream gives
//! bit-identical results to an uninterrupted one.
//!
//! The loop owns loading, saving and progress reporting (a callback receiving
//! [`RunEvent`]s); the merger does no I/O.
//!
//! # Test-time methods (MINGLE)
//!
//! A [`MethodSpec::Mingle`] stream runs a [`madeit_adapt::Mingle`] merger instead. Each step
//! also loads the task's head ([`Benchmark::load_head`]) and its unlabelled seed images
//! ([`seed_images`]: the task's seed split by default), and `absorb` adapts the new gates
//! on them, so [`StepTiming::absorb_s`] includes the test-time adaptation. The merged model
//! is the gated model ([`madeit_adapt::TestTimeMerger::gated_model`], timed as
//! [`StepTiming::merge_s`]); it is evaluated on the test split of every task the evaluation
//! mode asks for with [`evaluate_gated`], one task per batch, without the task label (the
//! gates decide how much each expert contributes). Gated models are not cached by the
//! evaluator. Checkpoints hold the merger's [`AdaptState`] (tensors and metadata) in place
//! of a [`MergerState`], and resume bit-identically in the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::Device;
use madeit_adapt::{AdaptState, TestTimeMerger};
use madeit_merge::{ContinualMerger, MergedModel, MergerState, StepReport, TaskId};
use madeit_params::ParamDict;
use madeit_vit::{ClipVisionModel, PROJECTION_WEIGHT};
use serde::{Deserialize, Serialize};

use crate::benchmark::Benchmark;
use crate::error::RunError;
use crate::evaluate::Evaluator;
use crate::method::MethodSpec;
use crate::metrics::{AccuracyMatrix, RunMetrics};
use crate::sequential::{C_FINETUNED, SequentialStream};
use crate::test_time::{evaluate_gated, seed_images};

mod checkpoint;
mod references;
pub use checkpoint::{CHECKPOINT_FORMAT, CHECKPOINT_VERSION};
use checkpoint::{CheckpointRecord, SavedState, load_checkpoint, save_checkpoint};
pub use references::{References, reference_rows};

/// Which accuracies are computed after each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalMode {
    /// Every task seen so far after every step: the full lower triangle of the accuracy
    /// matrix (needed for the per-step curves and heat maps).
    #[default]
    Full,
    /// Only what ACC and BWT need: `a_i(θ^(i))` (the diagonal) and `a_i(θ^(T))` (the last
    /// column).
    Final,
}

impl EvalMode {
    /// Positions in the order (0-based) evaluated after 0-based step `step` of `n`.
    #[must_use]
    pub fn tasks_after_step(self, step: usize, n: usize) -> Vec<usize> {
        match self {
            Self::Full => (0..=step.min(n.saturating_sub(1))).collect(),
            Self::Final if step + 1 >= n => (0..n).collect(),
            Self::Final => vec![step],
        }
    }

    /// Number of evaluations of steps `from..n` (0-based).
    #[must_use]
    pub fn evaluations_from(self, from: usize, n: usize) -> usize {
        (from..n).map(|j| self.tasks_after_step(j, n).len()).sum()
    }
}

/// Wall-clock seconds of one step.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct StepTiming {
    /// Reading and checking the fine-tuned checkpoint.
    pub load_s: f64,
    /// [`ContinualMerger::absorb`] (for a test-time method [`TestTimeMerger::absorb`],
    /// the test-time adaptation included).
    pub absorb_s: f64,
    /// [`ContinualMerger::merged_model`] (for a test-time method, building the gated
    /// model).
    pub merge_s: f64,
    /// Evaluating the merged model.
    pub eval_s: f64,
    /// Saving the stream checkpoint (0 when not saved; the checkpoint written at a step
    /// records 0 for that step's own save).
    pub save_s: f64,
}

impl StepTiming {
    /// Sum of the parts.
    #[must_use]
    pub fn total(&self) -> f64 {
        self.load_s + self.absorb_s + self.merge_s + self.eval_s + self.save_s
    }
}

/// One step of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based step: the number of tasks absorbed, this one included.
    pub step: usize,
    /// The task absorbed.
    pub task: String,
    /// What the merger reported.
    pub report: StepReport,
    /// How many accuracies were computed and how many came from the evaluator's cache.
    pub evaluations: usize,
    /// Of which served from the cache.
    pub cached: usize,
    /// Timings.
    pub timing: StepTiming,
}

/// One stream to run: a method configuration and a task order.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// A name for the method in results and logs (the method name unless several
    /// configurations of one method are compared).
    pub label: String,
    /// The method and its parameters.
    pub method: MethodSpec,
    /// Tasks in processing order, as 0-based indices into the benchmark's tasks (task id
    /// `k` of [`crate::orders::task_order`] is index `k − 1`). Distinct; may be a subset.
    pub order: Vec<usize>,
    /// The seed the order was drawn with, if any (recorded only).
    pub seed: Option<u64>,
    /// Which accuracies to compute.
    pub eval: EvalMode,
    /// Save the merger state and the results so far to this file after every step.
    pub checkpoint: Option<PathBuf>,
    /// Continue from [`StreamSpec::checkpoint`] if it exists (a complete saved stream is
    /// returned as saved; a missing file starts from scratch).
    pub resume: bool,
    /// Stop after this many steps in total (the checkpoint lets a later call finish). `None`
    /// runs the whole order.
    pub stop_after: Option<usize>,
}

impl StreamSpec {
    /// A stream of `method` (a [`madeit_merge::MethodConfig`], a
    /// [`madeit_adapt::MingleConfig`] or a [`MethodSpec`]) over `order` with a full
    /// evaluation, no checkpoint, labelled by the method name.
    #[must_use]
    pub fn new(method: impl Into<MethodSpec>, order: Vec<usize>) -> Self {
        let method = method.into();
        Self {
            label: method.name().to_owned(),
            method,
            order,
            seed: None,
            eval: EvalMode::Full,
            checkpoint: None,
            resume: false,
            stop_after: None,
        }
    }
}

/// The outcome of [`run_stream`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamResult {
    /// The method label.
    pub label: String,
    /// The method and its parameters.
    pub method: MethodSpec,
    /// The seed of the order, if any.
    pub seed: Option<u64>,
    /// Task names in processing order.
    pub order: Vec<String>,
    /// 1-based task ids in processing order.
    pub order_ids: Vec<usize>,
    /// Which accuracies were computed.
    pub eval: EvalMode,
    /// `matrix.get(i, j)` = accuracy on the `i`-th task of the order after step `j`
    /// (0-based), a fraction in `[0, 1]`; `None` where not computed.
    pub matrix: AccuracyMatrix,
    /// ACC and BWT (fractions), once every step has run.
    pub metrics: Option<RunMetrics>,
    /// Every step run so far.
    pub steps: Vec<StepRecord>,
    /// Number of steps restored from a checkpoint (0 when started from scratch).
    pub resumed_steps: usize,
}

impl StreamResult {
    /// Whether every task of the order was absorbed.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.steps.len() == self.order.len()
    }

    /// Seconds of every step together.
    #[must_use]
    pub fn total_seconds(&self) -> f64 {
        self.steps.iter().map(|s| s.timing.total()).sum()
    }
}

/// Progress of a run, for display and logs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RunEvent {
    /// A reference accuracy was computed ([`reference_rows`]).
    ReferenceEvaluated {
        /// `pretrained` or `finetuned`.
        kind: &'static str,
        /// The task.
        task: String,
        /// Accuracy in `[0, 1]`.
        accuracy: f64,
    },
    /// A stream begins.
    StreamStarted {
        /// Method label.
        label: String,
        /// Seed of the order.
        seed: Option<u64>,
        /// Task names in order.
        order: Vec<String>,
        /// Steps restored from a checkpoint.
        resumed_steps: usize,
        /// Evaluations still to do.
        evaluations: usize,
    },
    /// A step begins.
    StepStarted {
        /// Method label.
        label: String,
        /// 1-based step.
        step: usize,
        /// The task being absorbed.
        task: String,
    },
    /// The merger absorbed the step's task.
    Absorbed {
        /// Method label.
        label: String,
        /// 1-based step.
        step: usize,
        /// The task.
        task: String,
        /// Seconds of [`ContinualMerger::absorb`].
        seconds: f64,
    },
    /// An accuracy of the matrix was computed.
    TaskEvaluated {
        /// Method label.
        label: String,
        /// 1-based step.
        step: usize,
        /// The task evaluated.
        task: String,
        /// Accuracy in `[0, 1]`.
        accuracy: f64,
        /// Whether it came from the evaluator's cache.
        cached: bool,
    },
    /// A step is done (and saved, when a checkpoint is set).
    StepFinished {
        /// Method label.
        label: String,
        /// 1-based step.
        step: usize,
        /// Timings of the step.
        timing: StepTiming,
    },
    /// A stream is done (or stopped early).
    StreamFinished {
        /// Method label.
        label: String,
        /// Seed of the order.
        seed: Option<u64>,
        /// ACC and BWT when complete.
        metrics: Option<RunMetrics>,
    },
}

fn check_order(order: &[usize], n_tasks: usize) -> Result<(), RunError> {
    let bad = |reason: String| RunError::InvalidOrder {
        order: order.to_vec(),
        n_tasks,
        reason,
    };
    if order.is_empty() {
        return Err(bad("the order is empty".into()));
    }
    for (k, &i) in order.iter().enumerate() {
        if i >= n_tasks {
            return Err(bad(format!("index {i} is not a task")));
        }
        if order.iter().take(k).any(|&j| j == i) {
            return Err(bad(format!("task index {i} appears twice")));
        }
    }
    Ok(())
}

/// The merger of a stream: weight-space, test-time, or sequential fine-tuning.
enum StreamMerger {
    Merge(Box<dyn ContinualMerger>),
    TestTime(Box<dyn TestTimeMerger>),
    Sequential(Box<SequentialStream>),
}

impl StreamMerger {
    fn build(spec: &StreamSpec, bench: &Benchmark, device: &Device) -> Result<Self, RunError> {
        match &spec.method {
            MethodSpec::Merge(c) => Ok(Self::Merge(c.build()?)),
            MethodSpec::Sequential(c) => {
                Ok(Self::Sequential(Box::new(SequentialStream::new(c, bench)?)))
            }
            other => match other.build_test_time(bench.config(), device)? {
                Some(m) => Ok(Self::TestTime(m)),
                None => Err(RunError::config(format!(
                    "method `{}` cannot be run",
                    other.name()
                ))),
            },
        }
    }

    fn state(&self) -> Result<SavedState, RunError> {
        Ok(match self {
            Self::Merge(m) => SavedState::Merge(m.state()),
            Self::TestTime(m) => SavedState::Adapt(m.state()?),
            Self::Sequential(s) => SavedState::Weights {
                tasks: s.tasks.clone(),
                params: s.current.clone().unwrap_or_default(),
            },
        })
    }
}

/// The state a stream continues from.
struct Start {
    merger: StreamMerger,
    matrix: AccuracyMatrix,
    steps: Vec<StepRecord>,
}

fn resume_from(
    path: &Path,
    spec: &StreamSpec,
    bench: &Benchmark,
    order: &[String],
    device: &Device,
) -> Result<Start, RunError> {
    let (record, state) = load_checkpoint(path)?;
    let mismatch = |what: &str, saved: String, now: String| RunError::Resume {
        path: path.to_path_buf(),
        reason: format!("the checkpoint has {what} {saved}, this stream {now}"),
    };
    let state_matches = match (&state, &spec.method) {
        (SavedState::Merge(s), MethodSpec::Merge(c)) => &s.metadata.config == c,
        (SavedState::Adapt(s), m) if m.is_test_time() => {
            s.metadata.method == m.name() && m.config_json().is_ok_and(|c| c == s.metadata.config)
        }
        (SavedState::Weights { .. }, MethodSpec::Sequential(_)) => true,
        _ => false,
    };
    if record.method != spec.method || !state_matches {
        return Err(mismatch(
            "method configuration",
            format!("{:?}", record.method),
            format!("{:?}", spec.method),
        ));
    }
    if record.order != order {
        return Err(mismatch(
            "task order",
            record.order.join(","),
            order.join(","),
        ));
    }
    if record.eval != spec.eval {
        return Err(mismatch(
            "evaluation mode",
            format!("{:?}", record.eval),
            format!("{:?}", spec.eval),
        ));
    }
    let done = record.steps.len();
    let tasks: Vec<String> = match &state {
        SavedState::Merge(s) => s
            .metadata
            .tasks
            .iter()
            .map(|t| t.task.as_str().to_owned())
            .collect(),
        SavedState::Adapt(s) => s
            .metadata
            .tasks
            .iter()
            .map(|t| t.task.as_str().to_owned())
            .collect(),
        SavedState::Weights { tasks, .. } => tasks.clone(),
    };
    if done > order.len()
        || tasks.len() != done
        || order
            .get(..done)
            .is_none_or(|prefix| prefix != tasks.as_slice())
        || record.matrix.n_tasks() != order.len()
    {
        return Err(RunError::Resume {
            path: path.to_path_buf(),
            reason: format!(
                "inconsistent checkpoint: {done} steps recorded, merger holds tasks [{}]",
                tasks.join(",")
            ),
        });
    }
    let merger = match state {
        SavedState::Merge(s) => StreamMerger::Merge(madeit_merge::resume(&s)?),
        SavedState::Adapt(s) => {
            let mut merger = StreamMerger::build(spec, bench, device)?;
            if let StreamMerger::TestTime(m) = &mut merger {
                m.restore(&s)?;
            }
            merger
        }
        SavedState::Weights { tasks, params } => {
            let mut merger = StreamMerger::build(spec, bench, device)?;
            if let StreamMerger::Sequential(m) = &mut merger {
                m.tasks = tasks;
                m.current = (!params.is_empty()).then_some(params);
            }
            merger
        }
    };
    Ok(Start {
        merger,
        matrix: record.matrix,
        steps: record.steps,
    })
}

/// Runs one stream (see the module docs): absorbs the tasks of `spec.order` one at a time
/// into a merger built from `spec.method`, evaluates after every step, and returns the
/// accuracy matrix, ACC, BWT and per-step timings. `pretrained` must be
/// [`Benchmark::load_pretrained`]'s weights; it is shared by every stream of an experiment.
///
/// # Errors
/// [`RunError::InvalidOrder`]; [`RunError::Merge`] or [`RunError::Adapt`] for an invalid
/// configuration or a failed step; [`RunError::CheckpointMismatch`] naming the task, file
/// and tensor when a fine-tuned checkpoint does not match `pretrained`; [`RunError::Resume`]
/// for a checkpoint of another stream; evaluation, file and protocol errors (a test-time
/// method also reads each task's head and seed split).
#[allow(clippy::too_many_lines)]
pub fn run_stream(
    bench: &Benchmark,
    evaluator: &Evaluator,
    pretrained: &ParamDict,
    spec: &StreamSpec,
    progress: &mut dyn FnMut(&RunEvent),
) -> Result<StreamResult, RunError> {
    check_order(&spec.order, bench.num_tasks())?;
    if evaluator.num_tasks() != bench.num_tasks() {
        return Err(RunError::config(format!(
            "the evaluator has {} tasks, the benchmark {}",
            evaluator.num_tasks(),
            bench.num_tasks()
        )));
    }
    spec.method.check()?;
    let names = bench.task_names();
    let order: Vec<String> = spec
        .order
        .iter()
        .map(|&i| names.get(i).cloned().unwrap_or_default())
        .collect();
    let order_ids: Vec<usize> = spec.order.iter().map(|i| i + 1).collect();
    let n = order.len();

    let start = match (&spec.checkpoint, spec.resume) {
        (Some(path), true) if path.is_file() => {
            resume_from(path, spec, bench, &order, evaluator.device())?
        }
        _ => Start {
            merger: StreamMerger::build(spec, bench, evaluator.device())?,
            matrix: AccuracyMatrix::new(n)?,
            steps: Vec::new(),
        },
    };
    let Start {
        mut merger,
        mut matrix,
        mut steps,
    } = start;
    let resumed_steps = steps.len();
    let stop = spec.stop_after.unwrap_or(n).min(n);
    // Test-time methods build towers from the checkpoints themselves: a benchmark of vision
    // towers saved without a projection gives them the pretrained CLIP's (the same in every
    // checkpoint, so no step changes it), as the evaluator does for the other methods.
    let projection = match (&merger, bench.projection()) {
        (StreamMerger::TestTime(_), Some(p)) => Some(p),
        _ => None,
    };
    let pretrained_tt = projection.map(|p| with_projection_tensor(pretrained.clone(), p));
    let pretrained_tt: &ParamDict = pretrained_tt.as_ref().unwrap_or(pretrained);
    progress(&RunEvent::StreamStarted {
        label: spec.label.clone(),
        seed: spec.seed,
        order: order.clone(),
        resumed_steps,
        evaluations: (resumed_steps..stop)
            .map(|j| spec.eval.tasks_after_step(j, n).len())
            .sum(),
    });
    // The pretrained tower of gated models, built at the first step of a test-time stream.
    let mut backbone: Option<ClipVisionModel> = None;

    for j in resumed_steps..stop {
        let step = j + 1;
        let (Some(&task_index), Some(task)) = (spec.order.get(j), order.get(j)) else {
            break;
        };
        progress(&RunEvent::StepStarted {
            label: spec.label.clone(),
            step,
            task: task.clone(),
        });
        let mut timing = StepTiming::default();
        let task_id = TaskId::new(task.clone());

        let t = Instant::now();
        let mut finetuned = bench.load_finetuned(task_index, pretrained)?;
        if let Some(p) = projection {
            finetuned = with_projection_tensor(finetuned, p);
        }
        let adapt_inputs = match (&merger, spec.method.seed_setup()) {
            (StreamMerger::TestTime(_), Some(setup)) => {
                let test = &evaluator
                    .tasks()
                    .get(task_index)
                    .ok_or_else(|| RunError::UnknownTask {
                        name: format!("#{task_index}"),
                        available: names.clone(),
                    })?
                    .test;
                Some((
                    bench.load_head(task_index)?,
                    seed_images(bench, task_index, test, setup)?,
                ))
            }
            _ => None,
        };
        timing.load_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let report = match (&mut merger, &adapt_inputs) {
            (StreamMerger::Merge(m), _) => m.absorb(pretrained, &finetuned, &task_id)?,
            (StreamMerger::TestTime(m), Some((head, seed))) => m
                .absorb(pretrained_tt, &finetuned, &task_id, seed, head)?
                .to_step_report(),
            (StreamMerger::Sequential(m), _) => {
                let (train_steps, last_loss) = m.absorb(pretrained, task)?;
                let current = m.current.as_ref().unwrap_or(pretrained);
                let mut metrics = indexmap::IndexMap::new();
                metrics.insert("train_steps".to_owned(), train_steps as f64);
                metrics.insert("last_loss".to_owned(), last_loss);
                StepReport {
                    method: C_FINETUNED.to_owned(),
                    step,
                    task: task_id.clone(),
                    task_vector_norm: distance(&finetuned, pretrained),
                    merged_delta_norm: distance(current, pretrained),
                    metrics,
                }
            }
            (StreamMerger::TestTime(_), None) => {
                return Err(RunError::config(
                    "a test-time stream needs a test-time method configuration",
                ));
            }
        };
        drop(finetuned);
        drop(adapt_inputs);
        timing.absorb_s = t.elapsed().as_secs_f64();
        progress(&RunEvent::Absorbed {
            label: spec.label.clone(),
            step,
            task: task.clone(),
            seconds: timing.absorb_s,
        });

        let positions = spec.eval.tasks_after_step(j, n);
        let mut cached = 0;
        let mut record_accuracy =
            |i: usize, accuracy: f64, from_cache: bool| -> Result<(), RunError> {
                matrix.set(i, j, accuracy)?;
                cached += usize::from(from_cache);
                progress(&RunEvent::TaskEvaluated {
                    label: spec.label.clone(),
                    step,
                    task: order.get(i).cloned().unwrap_or_default(),
                    accuracy,
                    cached: from_cache,
                });
                Ok(())
            };
        match &merger {
            StreamMerger::Merge(m) => {
                let t = Instant::now();
                let merged: MergedModel = m.merged_model(pretrained)?;
                timing.merge_s = t.elapsed().as_secs_f64();

                let t = Instant::now();
                let mut session = evaluator.session(&merged);
                for &i in &positions {
                    let Some(&bench_index) = spec.order.get(i) else {
                        continue;
                    };
                    let e = session.accuracy(bench_index)?;
                    record_accuracy(i, e.accuracy, e.cached)?;
                }
                drop(session);
                drop(merged);
                timing.eval_s = t.elapsed().as_secs_f64();
            }
            StreamMerger::Sequential(m) => {
                let t = Instant::now();
                let merged =
                    MergedModel::Dense(m.current.clone().unwrap_or_else(|| pretrained.clone()));
                timing.merge_s = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let mut session = evaluator.session(&merged);
                for &i in &positions {
                    let Some(&bench_index) = spec.order.get(i) else {
                        continue;
                    };
                    let e = session.accuracy(bench_index)?;
                    record_accuracy(i, e.accuracy, e.cached)?;
                }
                drop(session);
                timing.eval_s = t.elapsed().as_secs_f64();
            }
            StreamMerger::TestTime(m) => {
                let t = Instant::now();
                let base = match backbone.take() {
                    Some(b) => b,
                    None => ClipVisionModel::from_params_on(
                        bench.config(),
                        pretrained_tt,
                        evaluator.device(),
                    )?,
                };
                let gated = m.gated_model(&base);
                backbone = Some(base);
                let gated = gated?;
                timing.merge_s = t.elapsed().as_secs_f64();

                let t = Instant::now();
                for &i in &positions {
                    let Some(et) = spec.order.get(i).and_then(|&b| evaluator.tasks().get(b)) else {
                        continue;
                    };
                    let a = evaluate_gated(&gated, &et.head, &et.test, evaluator.batch_size())?;
                    record_accuracy(i, a, false)?;
                }
                drop(gated);
                timing.eval_s = t.elapsed().as_secs_f64();
            }
        }

        steps.push(StepRecord {
            step,
            task: task.clone(),
            report,
            evaluations: positions.len(),
            cached,
            timing,
        });
        if let Some(path) = &spec.checkpoint {
            let t = Instant::now();
            let record = CheckpointRecord {
                format: CHECKPOINT_FORMAT.to_owned(),
                version: CHECKPOINT_VERSION,
                label: spec.label.clone(),
                method: spec.method.clone(),
                seed: spec.seed,
                order: order.clone(),
                order_ids: order_ids.clone(),
                eval: spec.eval,
                matrix: matrix.clone(),
                steps: steps.clone(),
            };
            save_checkpoint(path, &record, &merger.state()?)?;
            madeit_params::fs::crash_point("run-after-state");
            if let Some(last) = steps.last_mut() {
                last.timing.save_s = t.elapsed().as_secs_f64();
                timing = last.timing;
            }
        }
        progress(&RunEvent::StepFinished {
            label: spec.label.clone(),
            step,
            timing,
        });
    }

    let metrics = if steps.len() == n {
        Some(matrix.metrics()?)
    } else {
        None
    };
    progress(&RunEvent::StreamFinished {
        label: spec.label.clone(),
        seed: spec.seed,
        metrics,
    });
    Ok(StreamResult {
        label: spec.label.clone(),
        method: spec.method.clone(),
        seed: spec.seed,
        order,
        order_ids,
        eval: spec.eval,
        matrix,
        metrics,
        steps,
        resumed_steps,
    })
}

/// `params` with `visual_projection.weight` set to `projection` unless it has one.
fn with_projection_tensor(mut params: ParamDict, projection: &madeit_params::Tensor) -> ParamDict {
    if !params.contains(PROJECTION_WEIGHT) {
        params.insert(PROJECTION_WEIGHT, projection.clone());
    }
    params
}

/// `||a - b||_2` over every tensor of `a` (accumulated in `f64`; tensors missing from `b`
/// count as zero).
fn distance(a: &ParamDict, b: &ParamDict) -> f64 {
    a.iter()
        .map(|(name, t)| match b.get(name) {
            Ok(u) => t
                .data()
                .iter()
                .zip(u.data())
                .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
                .sum::<f64>(),
            Err(_) => t.data().iter().map(|x| f64::from(*x).powi(2)).sum(),
        })
        .sum::<f64>()
        .sqrt()
}
