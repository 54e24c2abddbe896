//! **madeit**: continual model merging of vision transformers.
//!
//! This crate is a thin facade that re-exports the layered `madeit-*` crates, one module
//! per crate, and a [`prelude`] with the types most programs need:
//!
//! ```no_run
//! use madeit::prelude::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let zoo = Benchmark::open_zoo(std::path::Path::new("zoo"))?;
//! let pretrained = zoo.load_pretrained()?;
//! let mut merger = MethodConfig::default_for("made_it")?.build()?;
//! for (task, name) in zoo.task_names().into_iter().enumerate() {
//!     let finetuned = zoo.load_finetuned(task, &pretrained)?;
//!     merger.absorb(&Step::new(&pretrained, &finetuned, &TaskId::new(name)))?;
//! }
//! let merged = merger.merged_model(&pretrained)?;
//! let evaluator = Evaluator::from_benchmark(&zoo, 250)?;
//! let every_task: Vec<usize> = (0..zoo.num_tasks()).collect();
//! println!("{:?}", evaluator.evaluate(&merged, &every_task)?);
//! # Ok(())
//! # }
//! ```

pub use madeit_adapt as adapt;
pub use madeit_data as data;
pub use madeit_eval as eval;
pub use madeit_experts as experts;
pub use madeit_grassmann as grassmann;
pub use madeit_linalg as linalg;
pub use madeit_merge as merge;
pub use madeit_params as params;
pub use madeit_stream as stream;
pub use madeit_vit as vit;
pub use madeit_zoo as zoo;

/// The types most programs need: a benchmark and its evaluator, the method registry and the
/// continual-merging contract, checkpoints, the vision tower and its device, experiments.
pub mod prelude {
    pub use madeit_eval::{
        Benchmark, Evaluator, ExperimentConfig, ExperimentResults, MethodSpec, RunError,
        run_experiment,
    };
    pub use madeit_merge::{
        ContinualMerger, ContinualMethod, METHODS, MadeItConfig, MergeError, MergedModel,
        MethodConfig, Step, StepReport, TaskId,
    };
    pub use madeit_params::{ParamDict, TaskVector};
    pub use madeit_vit::{ClipVisionConfig, ClipVisionModel, DeviceKind, TaskHead};
}

// The README's Rust examples are compiled (and run, unless marked `no_run`) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
