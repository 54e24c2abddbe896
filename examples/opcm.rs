//! OPCM: each task vector is projected off the leading singular directions of the merged update, then the merge is rescaled (alpha rule of the reference).
//!
//! Merges the first three tasks of the seed-42 order of the embedded zoo one at a time and
//! prints the accuracy on every task seen so far after each step. The method's parameters
//! are the reference defaults; any of them can be set the same way from TOML, as in an
//! experiment file (`method = "opcm"` plus the fields).
//!
//! `cargo run --release -p madeit --example opcm -- [ZOO_DIR]`

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::run_registered("opcm", 3)
}
