//! The stream contract shared by every continual method, below every method crate.
//!
//! A stream feeds a method one task at a time. This crate holds what every method and every
//! run loop agree on, whatever the method:
//! - [`TaskId`], the name of a task, and [`TaskRecord`], what a saved stream keeps of each
//!   absorbed task (its checkpoint's [`Fingerprint`] and `‖τ‖`, exactly);
//! - [`Fingerprint`]: how a stream recognises its pretrained model and each task's
//!   checkpoint (and [`scan_pair`], the one pass over a task's two models that hashes both
//!   and measures `‖τ‖²`);
//! - [`admit`], the checks every method makes before it touches a new task's checkpoint
//!   ([`Admitted`], [`AdmitError`]);
//! - [`StepReport`], what one step reports;
//! - [`MergedModel`], what a method returns: dense weights, or an [`ExpertModel`] (a
//!   backbone with [`LowRankExpert`]s routed by [`ExpertRouting`]);
//! - [`LowRankFactors`], the one form of a low-rank update `U diag(s) V^T` that every crate
//!   exchanges (an expert model's experts, the test-time methods' experts, the device bank
//!   of `madeit-vit`);
//! - [`ParameterError`], the error every method configuration's range check returns.
//!
//! - [`ContinualMethod`], the one trait of every continual method, and [`Step`], what it is
//!   given at each step (the two models, the task, and the extras its kind needs).
//!
//! The method crates name the trait with their types fixed: `madeit_merge::ContinualMerger`
//! (data-free methods, `Extras = ()`) and `madeit_adapt::TestTimeMerger` (methods that also
//! see seed images and heads).

mod admit;
mod config;
mod fingerprint;
mod lowrank;
mod method;
mod task;

pub use admit::{AdmitError, Admitted, Ledger, admit};
pub use config::ParameterError;
pub use fingerprint::{Fingerprint, exact_f64, scan_pair, tensor_hash};
pub use lowrank::{FactorsError, LowRankFactors};
pub use method::{ContinualMethod, Step};
pub use task::{
    ExpertModel, ExpertRouting, LowRankExpert, MergedModel, StepReport, TaskId, TaskRecord,
    TokenAggregation,
};
