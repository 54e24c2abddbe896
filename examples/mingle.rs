//! MINGLE: low-rank experts with linear gates; at every step the new task's gates are adapted
//! at test time on a few unlabeled images of that task (the zoo's seed split, 5 per class),
//! with gradients projected off the input subspaces of earlier tasks (null-space constraint,
//! adaptively relaxed). Unlike the weight-space methods and MADE-IT it needs those unlabeled
//! images, so it runs through the run loop that loads them (`madeit_eval::run_stream`).
//!
//! Merges the first three tasks of the seed-42 order of the embedded zoo and prints the
//! accuracy matrix, ACC and BWT.
//!
//! `cargo run --release -p madeit --example mingle -- [ZOO_DIR]`

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::run_registered("mingle", 3)
}
