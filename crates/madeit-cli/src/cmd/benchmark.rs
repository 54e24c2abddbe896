//! `madeit benchmark`: benchmark files (real checkpoints and datasets) and their presets.
//!
//! - `madeit benchmark check FILE`: finds every folder, opens every dataset, reads every
//!   checkpoint and head and decodes every image, with a progress bar, and prints what it
//!   found; nothing is written. `madeit run --benchmark FILE` runs the same check first.
//! - `madeit benchmark init PRESET --out FILE`: writes a preset (ta8, tall14, tall20) for
//!   editing.
//! - `madeit benchmark presets`: lists the presets and their tasks.

use std::path::PathBuf;

use anyhow::Context;
use madeit::eval::benchmark_file::{CheckOptions, DatasetFormat, PRESETS, ResolvedHead, preset};
use madeit::eval::experiment::{ExperimentConfig, MethodEntry};
use madeit::eval::{BenchmarkFile, CheckedBenchmark, ResolvedBenchmark, Roots};
use madeit::params::fs::write_atomic;

/// Arguments of `madeit benchmark`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Check a benchmark file (or preset) before any work: every path, checkpoint, head,
    /// class count, dataset and image.
    Check(CheckArgs),
    /// Write a preset (ta8, tall14, tall20) to a file for editing.
    Init(InitArgs),
    /// List the presets and their tasks.
    Presets,
}

/// Arguments of `madeit benchmark check`.
#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The benchmark file, or a preset name (ta8, tall14, tall20).
    file: PathBuf,
    /// Where model names are looked up (overrides the file's `models_root`).
    #[arg(long)]
    models_root: Option<PathBuf>,
    /// Where dataset names are looked up (overrides the file's `data_root`).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Check that these methods can run (comma-separated; default: those `madeit run` runs,
    /// which include the test-time methods and so need every task's seed split).
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    /// Do not decode the images (paths, checkpoints, heads and labels are still checked).
    #[arg(long)]
    no_images: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// Arguments of `madeit benchmark init`.
#[derive(Debug, clap::Args)]
struct InitArgs {
    /// The preset: ta8, tall14 or tall20.
    preset: String,
    /// Output file (default: print to stdout).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing file.
    #[arg(long)]
    force: bool,
}

/// Runs `madeit benchmark`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    match &args.command {
        Command::Check(a) => check(a),
        Command::Init(a) => init(a),
        Command::Presets => {
            for (name, text) in PRESETS {
                let file = BenchmarkFile::from_toml_str(
                    text,
                    std::path::Path::new(name),
                    std::path::Path::new("."),
                )?;
                let tasks: Vec<&str> = file.tasks().iter().map(|t| t.name.as_str()).collect();
                println!("{name:<7} {} tasks: {}", tasks.len(), tasks.join(", "));
            }
            Ok(())
        }
    }
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let text = preset(&args.preset).with_context(|| {
        format!(
            "no preset `{}` (presets: {})",
            args.preset,
            PRESETS.map(|(n, _)| n).join(", ")
        )
    })?;
    match &args.out {
        None => print!("{text}"),
        Some(out) => {
            anyhow::ensure!(
                args.force || !out.exists(),
                "{} exists (--force replaces it)",
                out.display()
            );
            write_atomic(out, text.as_bytes())?;
            eprintln!("wrote {} ({})", out.display(), args.preset);
        }
    }
    Ok(())
}

/// Runs [`ResolvedBenchmark::check`] behind a progress bar (hidden with `quiet`).
pub fn check_with_bar(
    resolved: ResolvedBenchmark,
    options: CheckOptions,
    quiet: bool,
) -> anyhow::Result<CheckedBenchmark> {
    let pb = super::progress_bar(
        quiet,
        1,
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} checked (eta {eta}) {wide_msg}",
    );
    let result = resolved.check(options, &mut |p| {
        pb.set_length(p.total);
        pb.set_position(p.done);
        pb.set_message(p.what.clone());
    });
    pb.finish_and_clear();
    Ok(result?)
}

fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let roots = Roots {
        models: args.models_root.clone(),
        data: args.data_root.clone(),
    };
    let spec = BenchmarkFile::open(&args.file)?;
    let resolved = spec.resolve(&roots)?;
    let methods: Vec<MethodEntry> = if args.methods.is_empty() {
        ExperimentConfig::default().methods
    } else {
        args.methods
            .iter()
            .map(|m| MethodEntry::defaults(m))
            .collect::<Result<_, _>>()?
    };
    resolved.check_methods(methods.iter().map(|m| &m.config))?;
    let checked = check_with_bar(
        resolved,
        CheckOptions {
            images: !args.no_images,
        },
        args.quiet,
    )?;
    print_summary(&checked);
    eprintln!(
        "ok: {} checks out ({} images decoded{})",
        checked.resolved().file().display(),
        checked.images_checked(),
        if args.no_images {
            "; --no-images skipped decoding"
        } else {
            ""
        }
    );
    Ok(())
}

fn print_summary(checked: &CheckedBenchmark) {
    let r = checked.resolved();
    let c = r.config();
    println!(
        "{}: pretrained {} (ViT: width {}, {} layers, {} px, patch {}; {})",
        r.name(),
        r.pretrained().display(),
        c.hidden_size,
        c.num_hidden_layers,
        c.image_size,
        c.patch_size,
        match checked.projection() {
            Some(p) => format!("projection {:?}", p.shape()),
            None => "no projection".to_owned(),
        }
    );
    let p = &r.pipeline().preprocess;
    println!(
        "preprocessing: shortest side {} ({:?}), center crop {}x{}, alpha {:?}",
        p.shortest_edge,
        p.resample,
        p.crop_size.0,
        p.crop_size.1,
        r.pipeline().alpha
    );
    println!("| # | task | fine-tuned | dataset | test | seed | classes | head |");
    println!("|---:|---|---|---|---:|---|---:|---|");
    for (i, t) in r.tasks().iter().enumerate() {
        let format = match t.format {
            DatasetFormat::Parquet => "parquet",
            DatasetFormat::Folder => "folder",
        };
        let seed = t.seed.as_ref().map_or_else(
            || "-".to_owned(),
            |(split, d, k)| {
                format!(
                    "{split} ({} images{})",
                    d.len(),
                    k.map_or_else(String::new, |k| format!(", {k}/class"))
                )
            },
        );
        let head = match &t.head {
            ResolvedHead::File { path, .. } => format!("file {}", path.display()),
            ResolvedHead::ZeroShot(z) => {
                format!("zero-shot, {} template(s)", z.templates().len())
            }
        };
        println!(
            "| {} | {} | {} | {} ({format}) | {} `{}` | {seed} | {} | {head} |",
            i + 1,
            t.name,
            t.finetuned.display(),
            t.dataset.display(),
            t.test.1.len(),
            t.test.0,
            t.test.1.classes().len(),
        );
    }
}
