//! Continual task arithmetic: theta^(t) = theta^(t-1) + lambda tau_t with the reference's lambda = 0.3.
//!
//! Merges the first three tasks of the seed-42 order of the embedded zoo one at a time and
//! prints the accuracy on every task seen so far after each step. The method's parameters
//! are the reference defaults; any of them can be set the same way from TOML, as in an
//! experiment file (`method = "task_arithmetic"` plus the fields).
//!
//! `cargo run --release -p madeit --example task_arithmetic -- [ZOO_DIR]`

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::run_registered("task_arithmetic", 3)
}
