//! C. Fine-Tuned: one vision tower fine-tuned through the task order on each task's training
//! data with the zoo's own recipe (optimiser and schedule reset per task, frozen heads). A
//! reference row, not a merge: it needs training data, which the zoo rebuilds from the
//! package cache its build fetched.
//!
//! Fine-tunes through the first two tasks of the seed-42 order (about 80 s per task on
//! 2 cores).
//!
//! `cargo run --release -p madeit --example c_finetuned -- [ZOO_DIR]`

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::run_registered("c_finetuned", 2)
}
