//! MagMax-Ind: per parameter, the task-vector entry of largest magnitude seen so far, scaled by 0.5.
//!
//! Merges the first three tasks of the seed-42 order of the embedded zoo one at a time and
//! prints the accuracy on every task seen so far after each step. The method's parameters
//! are the reference defaults; any of them can be set the same way from TOML, as in an
//! experiment file (`method = "magmax"` plus the fields).
//!
//! `cargo run --release -p madeit --example magmax -- [ZOO_DIR]`

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::run_registered("magmax", 3)
}
