//! The `madeit` command-line tool: continual model merging of vision transformers.
//!
//! Each subcommand lives in its own module under `cmd/`; the library crates do the work and
//! this binary owns loading, saving, logging and progress reporting.

mod cmd;

use clap::{Parser, Subcommand};

/// Continual model merging of vision transformers.
#[derive(Debug, Parser)]
#[command(name = "madeit", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the task order the evaluation protocol uses for a seed (1-based task ids).
    Orders(cmd::orders::Args),
    /// Run the continual-merging benchmark: every method over several task orders; writes
    /// results.json, results.md and SVG plots.
    Run(cmd::run::Args),
    /// Benchmark files of real checkpoints and datasets: check one, write a preset.
    Benchmark(cmd::benchmark::Args),
    /// Merge fine-tuned checkpoints one task at a time with a continual merging method.
    Merge(cmd::merge::Args),
    /// List the registered methods: name, table label, what each needs, whether the default
    /// run includes it (`--json`: also paper, reference and default configuration).
    Methods(cmd::methods::Args),
    /// Image embeddings of a batch of preprocessed pixels (and, with a head, logits and
    /// predictions).
    Embed(cmd::embed::Args),
    /// CLIP's zero-shot classification heads from class names and prompt templates.
    Heads(cmd::heads::Args),
    /// Print a checkpoint's configuration and a parameter summary.
    Inspect(cmd::inspect::Args),
    /// Render the SVG plots of a results.json.
    Plots(cmd::plots::Args),
    /// MADE-IT's expert allocation on a zoo: allocation map (SVG) and experts kept per
    /// component and layer.
    Analyze(cmd::analyze::Args),
    /// Build or describe the embedded model zoo.
    Zoo(cmd::zoo::ZooArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Orders(args) => cmd::orders::run(&args),
        Command::Run(args) => cmd::run::run(&args),
        Command::Zoo(args) => cmd::zoo::run(&args),
        Command::Benchmark(args) => cmd::benchmark::run(&args),
        Command::Merge(args) => cmd::merge::run(&args),
        Command::Methods(args) => cmd::methods::run(&args),
        Command::Embed(args) => cmd::embed::run(&args),
        Command::Heads(args) => cmd::heads::run(&args),
        Command::Inspect(args) => cmd::inspect::run(&args),
        Command::Plots(args) => cmd::plots::run(&args),
        Command::Analyze(args) => cmd::analyze::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose message the text
/// before it already holds (library errors often repeat their source's message).
fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let msg = cause.to_string();
        if text.contains(&msg) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&msg);
    }
    text
}
