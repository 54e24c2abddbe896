//! Any registered method by name: `madeit methods` lists them (the registry of
//! `madeit_eval::registry`). A method added to the registry runs here without an example of
//! its own.
//!
//! Merges the first three tasks of the seed-42 order of the embedded zoo with the method's
//! reference defaults and prints the accuracy on every task seen so far after each step
//! (data-free methods), or runs the method through the run loop (test-time methods and
//! C. Fine-Tuned), then ACC and BWT. An unknown name is an error listing the registered ones.
//!
//! `cargo run --release -p madeit --example method -- NAME [ZOO_DIR]`, for example
//! `cargo run --release -p madeit --example method -- c_iso_c`

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(name) = std::env::args().nth(1) else {
        return Err(format!(
            "usage: method NAME [ZOO_DIR]; NAME is one of {}",
            madeit::eval::registry::names().join(", ")
        )
        .into());
    };
    common::zoo_arg(2);
    common::run_registered(&name, 3)
}
