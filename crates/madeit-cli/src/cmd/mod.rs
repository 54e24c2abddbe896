//! Subcommands.

pub mod analyze;
pub mod benchmark;
pub mod embed;
pub mod heads;
pub mod inspect;
pub mod merge;
pub mod methods;
pub mod orders;
pub mod plots;
pub mod run;
pub mod zoo;
