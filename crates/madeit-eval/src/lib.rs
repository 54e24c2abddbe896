//! The continual evaluation protocol.
//!
//! # Protocol
//!
//! A benchmark is a list of `T` tasks (8, 14 or 20 for CLIP ViTs), each with a fine-tuned
//! model and a fixed classification head. A continual merging method sees the tasks one at a
//! time, in an order drawn from a seed, and after each step `j` yields a merged model `θ^(j)`.
//!
//! 1. **Orders** ([`orders`]): for each seed `s` in `42..=51` ([`orders::PUBLISHED_SEEDS`]),
//!    the order is CPython's `random.seed(s); random.shuffle([1, ..., T])`, reproduced bit for
//!    bit by [`orders::task_order`] (task ids are 1-based).
//! 2. **Accuracy matrix** ([`metrics::AccuracyMatrix`]): after step `j`, the merged model is
//!    evaluated on the test set of every task merged so far; `a_i(θ^(j))` is the accuracy on
//!    task `i` (top-1, over the task's own classes; for CLIP the logits are
//!    `100 · cos(image embedding, head row)`).
//! 3. **Per-order metrics**: `ACC = (1/T) Σ_i a_i(θ^(T))` and
//!    `BWT = (1/(T−1)) Σ_{i<T} [a_i(θ^(T)) − a_i(θ^(i))]` (undefined for `T = 1`).
//! 4. **Report**: mean and sample standard deviation (`ddof = 1`) of ACC and BWT over the ten
//!    orders ([`metrics::summarize_orders`], [`metrics::mean_std`]).
//!
//! [`metrics`] and [`orders`] are pure: they need neither a model nor data. The run loop
//! builds on them: [`benchmark`] (the files of a pretrained tower and its tasks; a
//! [`benchmark_file`] names real checkpoints and datasets, whose test splits [`images`]
//! streams), [`evaluate`] (test accuracy of dense and expert models, the [`Evaluator`]), [`runner`]
//! (one method over one task order, resumable), [`experiment`] (methods × orders from a
//! TOML file) and [`report`] (the Markdown tables); their errors are [`RunError`]s.
//! [`registry`] lists every method (name, labels, paper, reference, kind, defaults) and
//! [`method`] names what a stream runs (a weight-space method of `madeit-merge`, a test-time
//! method of `madeit-adapt` or C. Fine-Tuned); [`test_time`] loads seed images and evaluates gated models for
//! MINGLE. [`checkpoints`] is the path of merging fine-tuned checkpoints outside a benchmark
//! (`madeit merge`, the Python package).

pub mod metrics;
pub mod orders;

pub mod benchmark;
pub mod benchmark_file;
pub mod checkpoints;
pub mod error;
pub mod evaluate;
pub mod experiment;
pub mod images;
mod machine;
pub mod method;
pub mod registry;
pub mod report;
pub mod runner;
pub mod sequential;
pub mod test_time;

pub use benchmark::{Benchmark, BenchmarkTask, ImagePipeline, SplitSource};
pub use benchmark_file::{BenchmarkFile, CheckedBenchmark, ResolvedBenchmark, Roots};
pub use error::RunError;
pub use evaluate::{Evaluator, evaluate_dense};
pub use experiment::{EvalSplit, ExperimentConfig, ExperimentResults, run_experiment};
pub use images::{ImagesRef, StreamedImages, TaskImages};
pub use method::{MethodSpec, SeedSetup};
pub use registry::{MethodDescriptor, MethodKind};
pub use runner::{EvalMode, RunEvent, StreamResult, StreamSpec, run_stream};
pub use sequential::{C_FINETUNED, SequentialConfig, SequentialFinetuning, SequentialState};

/// Errors of the evaluation protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// An accuracy matrix for zero tasks was requested.
    #[error("an accuracy matrix needs at least one task")]
    NoTasks,
    /// `n_tasks²` overflows.
    #[error("{n_tasks} tasks is too many for an accuracy matrix")]
    TooManyTasks {
        /// Requested number of tasks.
        n_tasks: usize,
    },
    /// A row of an accuracy matrix does not have `T` entries.
    #[error("accuracy matrix row {row} has {len} entries, expected {expected}")]
    NotSquare {
        /// Row (task position) with the wrong length.
        row: usize,
        /// Its length.
        len: usize,
        /// The number of rows `T`.
        expected: usize,
    },
    /// A task or step index is `≥ T`.
    #[error("entry (task {task}, step {step}) is outside a {n_tasks}-task accuracy matrix")]
    IndexOutOfRange {
        /// Task position.
        task: usize,
        /// Step.
        step: usize,
        /// Number of tasks `T`.
        n_tasks: usize,
    },
    /// An accuracy is NaN or infinite.
    #[error("non-finite accuracy {value} for task {task} after step {step}")]
    NonFiniteAccuracy {
        /// Task position.
        task: usize,
        /// Step.
        step: usize,
        /// The value.
        value: f64,
    },
    /// A metric needs an accuracy that was not computed.
    #[error("accuracy of task {task} after step {step} was not computed")]
    MissingAccuracy {
        /// Task position.
        task: usize,
        /// Step.
        step: usize,
    },
    /// A statistic of no values was requested.
    #[error("cannot summarise an empty sample")]
    EmptySample,
    /// A value to summarise is NaN or infinite.
    #[error("non-finite value {value} at index {index} of the sample")]
    NonFiniteSample {
        /// Position in the sample.
        index: usize,
        /// The value.
        value: f64,
    },
    /// Runs to be summarised together have different numbers of tasks.
    #[error("run {run} has {got} tasks, expected {expected}")]
    TaskCountMismatch {
        /// Index of the offending run.
        run: usize,
        /// Number of tasks of the first run.
        expected: usize,
        /// Number of tasks of this run.
        got: usize,
    },
}
