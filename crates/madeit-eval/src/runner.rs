//! The continual evaluation run loop: one merging method, one task order.
//!
//! [`run_stream`] feeds a continual method the fine-tuned models of a task order one at a
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
//! # One loop for every kind of method
//!
//! The loop drives one contract, `StreamMethod` (`runner/stream_method.rs`), and never
//! asks which kind of method it runs. A weight-space merger of `madeit-merge` is evaluated
//! through the evaluator's session (and its cache). A test-time method (MINGLE, C. LW
//! AdaMerging, C. LoRA-WEMoE) also loads, at each step, the task's head
//! ([`Benchmark::load_head`]) and its unlabelled seed images ([`seed_images`]: the task's
//! seed split by default), so [`StepTiming::absorb_s`] includes the test-time adaptation;
//! its model is the gated model ([`madeit_adapt::TestTimeMerger::gated_model`], timed as
//! [`StepTiming::merge_s`]), evaluated with [`evaluate_gated`], one task per batch, without
//! the task label, and not cached. C. Fine-Tuned fine-tunes the current tower on the task's
//! training data. Checkpoints hold the method's own state ([`MergerState`], [`AdaptState`]
//! or the current tower) and resume bit-identically in the same way.

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
use crate::test_time::{evaluate_gated, seed_images};

mod checkpoint;
mod references;
mod stream_method;
pub use checkpoint::{CHECKPOINT_FORMAT, CHECKPOINT_VERSION};
use checkpoint::{CheckpointRecord, SavedState, load_checkpoint, save_checkpoint};
pub use references::{References, reference_rows};
use stream_method::{StepEvaluation, StepInput, StreamMethod};

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
    /// The method's [`absorb`](madeit_merge::ContinualMethod::absorb) (for a test-time method,
    /// the test-time adaptation included).
    pub absorb_s: f64,
    /// [`merged_model`](madeit_merge::ContinualMethod::merged_model) (for a test-time method, building the gated
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
        /// Seconds of [`absorb`](madeit_merge::ContinualMethod::absorb).
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

/// The state a stream continues from.
struct Start {
    method: Box<dyn StreamMethod>,
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
    let mut method = stream_method::build(&spec.method, bench, device)?;
    let state_matches = method.accepts(&state);
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
    let tasks = state.tasks();
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
    method.restore(state)?;
    Ok(Start {
        method,
        matrix: record.matrix,
        steps: record.steps,
    })
}

/// Checks a stream and its benchmark, and builds its method (or restores it from the
/// stream's checkpoint): the task names in order and the state to continue from.
fn open_stream(
    bench: &Benchmark,
    evaluator: &Evaluator,
    spec: &StreamSpec,
) -> Result<(Vec<String>, Start), RunError> {
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
    let n = order.len();

    let start = match (&spec.checkpoint, spec.resume) {
        (Some(path), true) if path.is_file() => {
            resume_from(path, spec, bench, &order, evaluator.device())?
        }
        _ => Start {
            method: stream_method::build(&spec.method, bench, evaluator.device())?,
            matrix: AccuracyMatrix::new(n)?,
            steps: Vec::new(),
        },
    };
    Ok((order, start))
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
pub fn run_stream(
    bench: &Benchmark,
    evaluator: &Evaluator,
    pretrained: &ParamDict,
    spec: &StreamSpec,
    progress: &mut dyn FnMut(&RunEvent),
) -> Result<StreamResult, RunError> {
    let (order, start) = open_stream(bench, evaluator, spec)?;
    let order_ids: Vec<usize> = spec.order.iter().map(|i| i + 1).collect();
    let n = order.len();
    let Start {
        mut method,
        mut matrix,
        mut steps,
    } = start;
    let resumed_steps = steps.len();
    let stop = spec.stop_after.unwrap_or(n).min(n);
    progress(&RunEvent::StreamStarted {
        label: spec.label.clone(),
        seed: spec.seed,
        order: order.clone(),
        resumed_steps,
        evaluations: (resumed_steps..stop)
            .map(|j| spec.eval.tasks_after_step(j, n).len())
            .sum(),
    });
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

        let input = StepInput {
            bench,
            evaluator,
            pretrained,
            task_index,
            task: &task_id,
        };
        let report = stream_method::load_and_absorb(method.as_mut(), &input, &mut timing)?;
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
        method.evaluate(
            &input,
            &mut StepEvaluation {
                positions: &positions,
                bench_index: &spec.order,
                record: &mut record_accuracy,
                timing: &mut timing,
            },
        )?;

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
            let record = CheckpointRecord::new(spec, &order, &order_ids, &matrix, &steps);
            save_checkpoint(path, &record, &method.state()?)?;
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
