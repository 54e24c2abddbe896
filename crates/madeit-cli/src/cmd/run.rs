//! `madeit run`: the continual-merging benchmark — every method, several task orders, the
//! paper-style tables, `results.json` and SVG plots.
//!
//! With no arguments it runs on the embedded zoo (building it first, with its data, when
//! the zoo folder does not exist yet), with every registered method, then the test-time
//! methods (which adapt on each task's seed split), and the default orders (seeds
//! [`DEFAULT_SEEDS`]); `--full` uses the ten published orders (seeds 42-51).
//!
//! `--benchmark FILE` runs the same protocol on real checkpoints and datasets named by a
//! benchmark file (or a preset: `ta8`, `tall14`, `tall20`): every path, checkpoint, head,
//! dataset and image is checked first (as `madeit benchmark check` does), the heads made
//! from class names are written into the run folder's `heads/` (and reused by `--resume`),
//! and the test images are streamed from disk through CLIP's preprocessing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use indicatif::ProgressBar;
use madeit::eval::benchmark_file::{CheckOptions, HeadOrigin};
use madeit::eval::experiment::{
    DEFAULT_SEEDS, ExperimentConfig, MethodEntry, StateOptions, run_experiment, timestamp_slug,
    unix_now,
};
use madeit::eval::orders::PUBLISHED_SEEDS;
use madeit::eval::report::{render_markdown, table_methods, table_per_task};
use madeit::eval::runner::{EvalMode, RunEvent};
use madeit::eval::{Benchmark, BenchmarkFile, ExperimentResults, Roots};

use madeit::params::fs::{OutputDir, check_not_input, crash_point, write_atomic};
use madeit::vit::DeviceKind;

use super::plots;

/// Evaluation mode on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalArg {
    /// Every task seen so far after every step (the whole accuracy matrix).
    Full,
    /// Only what ACC and BWT need (diagonal and last column).
    Final,
}

/// Arguments of `madeit run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Experiment file (TOML with an `[experiment]` table); defaults for everything else.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Zoo folder (default: the experiment's, else $MADEIT_ZOO or ./zoo). Built first when
    /// it does not exist.
    #[arg(long, conflicts_with = "benchmark")]
    pub zoo: Option<PathBuf>,
    /// Run on a benchmark file (TOML: a pretrained CLIP, and per task a fine-tuned tower, a
    /// dataset and a head) or a preset (ta8, tall14, tall20) instead of the zoo; see
    /// docs/real-benchmarks.md.
    #[arg(long)]
    pub benchmark: Option<PathBuf>,
    /// Where the benchmark's model names are looked up (overrides its `models_root`): a
    /// Hugging Face cache (`models--owner--name/snapshots/...`) or plain folders.
    #[arg(long, requires = "benchmark")]
    pub models_root: Option<PathBuf>,
    /// Where the benchmark's dataset names are looked up (overrides its `data_root`).
    #[arg(long, requires = "benchmark")]
    pub data_root: Option<PathBuf>,
    /// Do not decode every image before the run (the check of `madeit benchmark check`
    /// still reads every checkpoint, head and label; an image that does not decode then
    /// stops the run when it is reached).
    #[arg(long, requires = "benchmark")]
    pub no_image_check: bool,
    /// The ten published task orders (seeds 42-51) instead of the default two (42, 43).
    #[arg(long, conflicts_with = "seeds")]
    pub full: bool,
    /// Output folder (default: the experiment's, else runs/<UTC timestamp>; runs/latest
    /// points at the last one).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only these methods: labels of the experiment's methods or method names
    /// (comma-separated; see `madeit methods`).
    #[arg(long, value_delimiter = ',', help = methods_help())]
    pub methods: Vec<String>,
    /// These seeds (comma-separated) instead of the experiment's.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Which accuracies to compute after each step.
    #[arg(long, value_enum)]
    pub eval: Option<EvalArg>,
    /// At most this many test images per task (an evenly spaced subset of each split), or
    /// `all`. Default: the experiment file's setting; without one, `all` with `--full` and
    /// 2000 otherwise (it keeps the default run within minutes; the two large
    /// Fashion-MNIST test splits have 10,000 images).
    #[arg(long, value_parser = parse_test_images)]
    pub test_images: Option<TestImages>,
    /// Measure on the validation splits instead of the test splits (for choosing
    /// hyper-parameters; the caps of `--test-images` apply to them too).
    #[arg(long)]
    pub val: bool,
    /// Save every stream after every step under <out>/state, so that it can be resumed.
    #[arg(long)]
    pub save_state: bool,
    /// Resume the streams saved under <out>/state (implies --save-state; without --out,
    /// resumes runs/latest).
    #[arg(long)]
    pub resume: bool,
    /// Replace the output folder even when it holds something other than an earlier
    /// `madeit run` output.
    #[arg(long)]
    pub force: bool,
    /// Where the towers run (evaluation, routing, test-time training): `cpu`, or `wgpu`
    /// in a build with the `wgpu` feature. Default: the experiment file's, else `cpu`.
    /// Merging itself runs on the CPU.
    #[arg(long)]
    pub device: Option<DeviceKind>,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

/// The help of `--methods`, from the registry.
fn methods_help() -> String {
    use madeit::eval::registry::MethodKind;
    format!(
        "Only these methods: labels of the experiment's methods or method names \
         (comma-separated): the data-free {}, the test-time {}, and {} (needs the zoo's \
         training data: about 13 min per order on 2 cores). Not run by default: {}",
        super::methods::names_of(&[MethodKind::DataFree]),
        super::methods::names_of(&[MethodKind::TestTime]),
        super::methods::names_of(&[MethodKind::NeedsTrainingData]),
        super::methods::opt_in_names(),
    )
}

/// The kind recorded in the marker of a `madeit run` output folder.
pub const OUTPUT_KIND: &str = "run";

/// `--test-images`: a positive count or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestImages {
    /// Whole test splits.
    All,
    /// At most this many per task.
    AtMost(usize),
}

fn parse_test_images(s: &str) -> Result<TestImages, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(TestImages::All);
    }
    match s.parse::<usize>() {
        Ok(0) | Err(_) => Err(format!("expected a positive number or `all`, got `{s}`")),
        Ok(n) => Ok(TestImages::AtMost(n)),
    }
}

/// Test images per task of the default run (no experiment file, no `--full`).
pub const DEFAULT_RUN_TEST_IMAGES: usize = 2000;

fn show_seed(seed: Option<u64>) -> String {
    seed.map_or_else(|| "-".to_owned(), |s| s.to_string())
}

/// Folder that holds the run folders.
const RUNS_DIR: &str = "runs";

/// Resolves the experiment from the file and the flags.
fn experiment(args: &Args) -> anyhow::Result<ExperimentConfig> {
    let mut cfg = match &args.config {
        Some(path) => ExperimentConfig::from_file(path)?,
        None => ExperimentConfig::default(),
    };
    if let Some(zoo) = &args.zoo {
        cfg.zoo.clone_from(zoo);
        cfg.benchmark = None;
    }
    if let Some(b) = &args.benchmark {
        cfg.benchmark = Some(b.clone());
    }
    if args.full {
        cfg.seeds = PUBLISHED_SEEDS.to_vec();
    }
    if !args.seeds.is_empty() {
        cfg.seeds.clone_from(&args.seeds);
    }
    if let Some(e) = args.eval {
        cfg.eval = match e {
            EvalArg::Full => EvalMode::Full,
            EvalArg::Final => EvalMode::Final,
        };
    }
    if !args.methods.is_empty() {
        cfg.methods = args
            .methods
            .iter()
            .map(|name| match cfg.methods.iter().find(|m| &m.label == name) {
                Some(m) => Ok(m.clone()),
                None => MethodEntry::defaults(name),
            })
            .collect::<Result<Vec<_>, _>>()?;
    }
    if let Some(out) = &args.out {
        cfg.out = Some(out.clone());
    }
    cfg.test_images = match args.test_images {
        Some(TestImages::All) => None,
        Some(TestImages::AtMost(n)) => Some(n),
        None if args.config.is_none() && !args.full => Some(DEFAULT_RUN_TEST_IMAGES),
        None => cfg.test_images,
    };
    if args.val {
        cfg.split = madeit::eval::EvalSplit::Val;
    }
    cfg.save_state |= args.save_state || args.resume;
    if let Some(device) = args.device {
        cfg.device = device;
    }
    cfg.check()?;
    // Refuse a device this build or machine lacks before anything is read or written.
    cfg.device
        .device()
        .with_context(|| format!("--device {}", cfg.device))?;
    Ok(cfg)
}

/// Picks the output folder: the configured one, runs/latest when resuming without one, or
/// a new runs/<timestamp>.
fn output_dir(cfg: &ExperimentConfig, resume: bool) -> anyhow::Result<PathBuf> {
    if let Some(out) = &cfg.out {
        return Ok(out.clone());
    }
    let latest = Path::new(RUNS_DIR).join("latest");
    if resume {
        // runs/latest names the last run, which exists only once it completed: an
        // interrupted run lives in its staging folder until then.
        let name = std::fs::read_link(&latest).with_context(|| {
            format!(
                "--resume without --out resumes {}, which does not exist",
                latest.display()
            )
        })?;
        return Ok(Path::new(RUNS_DIR).join(name));
    }
    Ok(Path::new(RUNS_DIR).join(timestamp_slug(unix_now())))
}

/// Points runs/latest at `out` (a symbolic link; best effort, Unix only).
fn mark_latest(out: &Path) {
    #[cfg(unix)]
    {
        let latest = Path::new(RUNS_DIR).join("latest");
        if out.parent() != Some(Path::new(RUNS_DIR)) {
            return;
        }
        let Some(name) = out.file_name() else { return };
        if latest
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            let _ = std::fs::remove_file(&latest);
        }
        if latest.symlink_metadata().is_err() {
            let _ = std::os::unix::fs::symlink(name, &latest);
        }
    }
    #[cfg(not(unix))]
    let _ = out;
}

/// Prints a line above the bar, or to stderr when the bar is hidden (quiet, or stderr is not
/// a terminal), so that logs keep the per-stream results.
fn log(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

fn bar(quiet: bool, len: u64) -> ProgressBar {
    super::progress_bar(
        quiet,
        len,
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} evaluations (eta {eta}) {msg}",
    )
}

/// Builds the zoo at `dir` when it has no manifest yet, exactly as `madeit zoo build --zoo
/// DIR` does (fetching the data into the default cache first, with progress bars; an
/// interrupted build resumes).
fn ensure_zoo(dir: &Path) -> anyhow::Result<()> {
    if dir.join(madeit::zoo::MANIFEST_FILE).is_file() {
        return Ok(());
    }
    eprintln!(
        "no zoo at {}: fetching its data and building it first (once)",
        dir.display()
    );
    super::zoo::run(&super::zoo::ZooArgs {
        command: super::zoo::ZooCommand::Build(super::zoo::BuildArgs {
            zoo: Some(dir.to_path_buf()),
            cache: None,
            seed: None,
            config: None,
            threads: None,
            force: false,
            no_fetch: false,
            group: None,
        }),
    })
    .with_context(|| format!("building the zoo at {}", dir.display()))
}

/// Writes results.json, results.md and the plots into `out` (each file atomically);
/// returns the written files' names relative to `out`.
pub fn write_outputs(results: &ExperimentResults, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join("results.json");
    results.save_json(&json)?;
    let md = out.join("results.md");
    write_atomic(&md, render_markdown(results).as_bytes())?;
    let mut files = vec![json, md];
    files.extend(plots::write_all(results, &out.join("plots"))?);
    Ok(files
        .into_iter()
        .map(|f| f.strip_prefix(out).map(Path::to_path_buf).unwrap_or(f))
        .collect())
}

/// Opens the zoo (building it first when needed), refuses an output over it, and prepares
/// the staging folder.
fn open_zoo(args: &Args, cfg: &ExperimentConfig) -> anyhow::Result<(Benchmark, OutputDir)> {
    ensure_zoo(&cfg.zoo)?;
    let bench = Benchmark::open_zoo(&cfg.zoo)
        .with_context(|| format!("opening the zoo at {}", cfg.zoo.display()))?;
    let target = output_dir(cfg, args.resume)?;
    check_not_input(&target, &[&cfg.zoo])?;
    Ok((bench, prepare_output(args, &target)?))
}

/// Everything is written into a staging folder that replaces the output folder once the
/// run is complete. With saved states, an interrupted run keeps its staging folder, and
/// `--resume` continues from it.
fn prepare_output(args: &Args, target: &Path) -> anyhow::Result<OutputDir> {
    Ok(if args.resume {
        OutputDir::prepare_resumable(target, OUTPUT_KIND, args.force)?
    } else {
        OutputDir::prepare(target, OUTPUT_KIND, args.force)?
    })
}

/// Reads and checks a benchmark file (every path, checkpoint, head, label and image) before
/// anything is written, then prepares the staging folder and writes the heads into it.
fn open_benchmark(
    args: &Args,
    cfg: &ExperimentConfig,
    file: &Path,
) -> anyhow::Result<(Benchmark, OutputDir)> {
    let roots = Roots {
        models: args.models_root.clone(),
        data: args.data_root.clone(),
    };
    let spec = BenchmarkFile::open(file)?;
    let resolved = spec.resolve(&roots)?;
    resolved.check_methods(cfg.methods.iter().map(|m| &m.config))?;
    if cfg.split == madeit::eval::EvalSplit::Val
        && let Some(t) = resolved.tasks().iter().find(|t| t.val.is_none())
    {
        anyhow::bail!(
            "{}: task `{}` names no validation split (`val = \"...\"`), which --val needs",
            resolved.file().display(),
            t.name
        );
    }
    eprintln!(
        "benchmark {} ({} tasks) from {}: checking every checkpoint, head{}",
        resolved.name(),
        resolved.tasks().len(),
        resolved.file().display(),
        if args.no_image_check {
            ""
        } else {
            " and image"
        }
    );
    let checked = super::benchmark::check_with_bar(
        resolved,
        CheckOptions {
            images: !args.no_image_check,
        },
        args.quiet,
    )?;
    let target = output_dir(cfg, args.resume)?;
    let inputs = checked.resolved().inputs();
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    check_not_input(&target, &inputs)?;
    let staged = prepare_output(args, &target)?;
    let heads_dir = staged.path().join("heads");
    let heads = checked.make_heads(&heads_dir, &mut |task, origin| {
        eprintln!(
            "head of {task}: {}",
            match origin {
                HeadOrigin::Made => "made from the pretrained CLIP's text tower",
                HeadOrigin::Cached => "reused from the run folder",
                HeadOrigin::Copied => "copied from its file",
            }
        );
    })?;
    Ok((checked.into_benchmark(&heads)?, staged))
}

/// Runs the benchmark and prints the tables.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let cfg = experiment(args)?;
    let (bench, mut staged) = match &cfg.benchmark {
        Some(file) => open_benchmark(args, &cfg, file)?,
        None => open_zoo(args, &cfg)?,
    };
    let target = staged.target().to_path_buf();
    if cfg.save_state {
        staged.keep_on_drop();
    }
    let out = staged.path().to_path_buf();
    mark_latest(&target);
    let n = bench.num_tasks();
    eprintln!(
        "{} tasks, {} method(s) x {} order(s) (seeds {}), eval {:?}, output {}",
        n,
        cfg.methods.len(),
        cfg.seeds.len(),
        cfg.seeds
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        cfg.eval,
        target.display()
    );
    if cfg.seeds == DEFAULT_SEEDS && !args.full {
        eprintln!("(default orders; --full runs the ten published orders, seeds 42-51)");
    }

    let per_stream = cfg.eval.evaluations_from(0, n) as u64;
    let pb = bar(args.quiet, cfg.evaluations(n) as u64);
    let state = StateOptions {
        dir: cfg.save_state.then(|| out.join("state")),
        resume: args.resume,
    };
    let mut progress = |ev: &RunEvent| match ev {
        RunEvent::ReferenceEvaluated { kind, task, .. } => {
            pb.set_message(format!("reference: {kind} on {task}"));
            pb.inc(1);
        }
        RunEvent::StreamStarted {
            label,
            seed,
            evaluations,
            resumed_steps,
            ..
        } => {
            pb.inc(per_stream.saturating_sub(*evaluations as u64));
            if *resumed_steps > 0 {
                log(
                    &pb,
                    format!(
                        "{label} seed {}: resumed after {resumed_steps} step(s)",
                        show_seed(*seed)
                    ),
                );
            }
        }
        RunEvent::StepStarted { label, step, task } => {
            pb.set_message(format!("{label}: step {step}/{n} ({task})"));
        }
        RunEvent::TaskEvaluated { .. } => pb.inc(1),
        RunEvent::StreamFinished {
            label,
            seed,
            metrics: Some(m),
        } => log(
            &pb,
            format!(
                "{label:>16} seed {:>3}: ACC {:5.1}%  BWT {:6.1}%  [{:.0} s]",
                show_seed(*seed),
                100.0 * m.acc,
                100.0 * m.bwt.unwrap_or(0.0),
                started.elapsed().as_secs_f64()
            ),
        ),
        _ => {}
    };
    let results = run_experiment(&cfg, &bench, &state, &mut progress)?;
    pb.finish_and_clear();

    let files = write_outputs(&results, &out)?;
    crash_point("run-before-commit");
    let target = staged.commit()?;
    println!("{}", table_methods(&results));
    println!("{}", table_per_task(&results));
    eprintln!(
        "done in {:.1} s; wrote {}",
        started.elapsed().as_secs_f64(),
        files
            .iter()
            .map(|f| target.join(f).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
