//! Continual TIES: trim each task vector to its top 20 % magnitudes, elect signs against the merged task vector, add the disjoint mean scaled by lambda = 0.3.
//!
//! Merges the first three tasks of the seed-42 order of the embedded zoo one at a time and
//! prints the accuracy on every task seen so far after each step. The method's parameters
//! are the reference defaults; any of them can be set the same way from TOML, as in an
//! experiment file (`method = "ties"` plus the fields).
//!
//! `cargo run --release -p madeit --example ties -- [ZOO_DIR]`

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::run_registered("ties", 3)
}
