//! C. LoRA-WEMoE: attention merged by continual task arithmetic (lambda 0.3); every layer's
//! MLP becomes a mixture of low-rank experts (one per task, truncated SVD of the fc1 / fc2
//! weight deltas) weighted by a per-layer linear router on the MLP input, whose rows are all
//! retrained at every step by entropy minimisation on the new task's unlabeled seed images.
//!
//! Merges the first three tasks of the seed-42 order of the embedded zoo.
//!
//! `cargo run --release -p madeit --example c_lora_wemoe -- [ZOO_DIR]`

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::run_registered("c_lora_wemoe", 3)
}
