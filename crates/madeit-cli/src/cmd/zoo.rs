//! `madeit zoo`: build the embedded model zoo and show what it holds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use madeit::data::TaskGroup;
use madeit::data::{Clients, FetchEvent, default_cache_dir, fetch_sources_with};
use madeit::vit::ModuleKind;
use madeit::zoo::interference::{merged_accuracies, test_sets};
use madeit::zoo::{
    BuildConfig, BuildEvent, BuildOptions, BuildOutcome, EnergyReport, Manifest, ModuleEnergy, Zoo,
    build_zoo, default_zoo_dir, interference_matrix,
};

/// Arguments of `madeit zoo`.
#[derive(Debug, clap::Args)]
pub struct ZooArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ZooCommand,
}

/// The `madeit zoo` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ZooCommand {
    /// Fetch the data (cached) and build the zoo: pretraining, heads, fine-tuning, export.
    /// A complete zoo is left alone; an interrupted build resumes where it stopped.
    Build(BuildArgs),
    /// Show the zoo's tasks and accuracies (pretrained head vs fine-tuned, on test).
    Info(InfoArgs),
}

/// Arguments of `madeit zoo build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Zoo folder [default: $MADEIT_ZOO, else `zoo`].
    #[arg(long)]
    pub zoo: Option<PathBuf>,
    /// Data cache folder [default: $MADEIT_CACHE_DIR, else `.cache/madeit`].
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Seed of every random choice of the build (overrides the configuration file's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// A build configuration (JSON or TOML `BuildConfig`; missing fields take the defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Worker threads [default: every core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Rebuild even if a complete zoo exists (it is replaced once the new one is complete).
    #[arg(long)]
    pub force: bool,
    /// Do not run the package clients: use only what is already in the cache.
    #[arg(long)]
    pub no_fetch: bool,
    /// The task group: the default 8 tasks, or the long group of 14 (overrides the
    /// configuration file's).
    #[arg(long, value_parser = parse_group)]
    pub group: Option<TaskGroup>,
}

fn parse_group(s: &str) -> Result<TaskGroup, String> {
    s.parse::<usize>()
        .ok()
        .and_then(TaskGroup::from_len)
        .ok_or_else(|| format!("expected 8 or 14, got `{s}`"))
}

/// Arguments of `madeit zoo info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Zoo folder [default: $MADEIT_ZOO, else `zoo`].
    #[arg(long)]
    pub zoo: Option<PathBuf>,
    /// Also show the spectral energy of the task vectors (top 10 % of singular values, per
    /// module kind).
    #[arg(long)]
    pub energy: bool,
    /// Also show the build's stage times.
    #[arg(long)]
    pub timings: bool,
    /// Also compute the interference matrix acc_i(theta_0 + tau_j) - acc_i(theta_0) and the
    /// accuracy of the average and of the sum (lambda 0.3) of all task vectors (evaluates
    /// every tower on every task).
    #[arg(long)]
    pub interference: bool,
    /// Test images per task for --interference (an evenly spaced subset, as `madeit run`),
    /// or `all`.
    #[arg(long, default_value = "2000")]
    pub test_images: String,
    /// Print the manifest as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Runs `madeit zoo`.
pub fn run(args: &ZooArgs) -> anyhow::Result<()> {
    match &args.command {
        ZooCommand::Build(a) => run_build(a),
        ZooCommand::Info(a) => run_info(a),
    }
}

fn load_config(path: &Path) -> anyhow::Result<BuildConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    let config = if is_toml {
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
    } else {
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
    };
    Ok(config)
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>28} [{bar:30.cyan/blue}] {pos:>5}/{len:<5} {elapsed_precise} eta {eta:>4} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// Prints a line above the bars, or to stderr when they are hidden (stderr is not a
/// terminal), so that logs keep the stage lines.
fn say(multi: &MultiProgress, line: String) {
    if multi.is_hidden() {
        eprintln!("{line}");
    } else {
        let _ = multi.println(line);
    }
}

fn run_build(args: &BuildArgs) -> anyhow::Result<()> {
    let zoo_dir = args.zoo.clone().unwrap_or_else(default_zoo_dir);
    let cache_dir = args.cache.clone().unwrap_or_else(default_cache_dir);
    let mut config = match &args.config {
        Some(p) => load_config(p)?,
        None => BuildConfig::default(),
    };
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if let Some(group) = args.group {
        config.group = group;
    }
    config.check().context("invalid build configuration")?;

    if !args.force {
        match Zoo::open(&zoo_dir) {
            Ok(zoo) => {
                println!(
                    "The zoo at {} is complete; nothing to do (use --force to rebuild).",
                    zoo_dir.display()
                );
                print_accuracy_table(zoo.manifest());
                return Ok(());
            }
            Err(e @ madeit::zoo::ZooError::OutdatedZoo { .. }) => return Err(e.into()),
            Err(_) => {}
        }
    }

    if !args.no_fetch {
        let needed: Vec<madeit::data::SourceId> = {
            let mut v: Vec<_> = config.group.tasks().iter().map(|t| t.source).collect();
            v.extend(config.pretrain_sources.iter().copied());
            let mut seen = Vec::new();
            v.retain(|s| {
                let new = !seen.contains(s);
                seen.push(*s);
                new
            });
            v
        };
        let spinner = ProgressBar::new_spinner();
        spinner.enable_steady_tick(Duration::from_millis(120));
        spinner.set_message("fetching data");
        fetch_sources_with(&cache_dir, &needed, &Clients::discover(), &|e| {
            if let FetchEvent::Finished {
                source,
                reused,
                seconds,
            } = e
            {
                spinner.println(format!(
                    "  {source}: {} ({seconds:.1} s)",
                    if *reused { "cached" } else { "fetched" }
                ));
            } else if let FetchEvent::Downloading { command, .. } = e {
                spinner.set_message(command.clone());
            }
        })
        .with_context(|| format!("fetching the data into {}", cache_dir.display()))?;
        spinner.finish_and_clear();
    }

    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let overall = multi.add(ProgressBar::new(0));
    overall.set_style(bar_style());
    overall.set_prefix("zoo build");
    let mut stage_bar: Option<ProgressBar> = None;
    let mut last_done = 0usize;
    let opts = BuildOptions {
        zoo_dir: zoo_dir.clone(),
        cache_dir,
        config,
        force: args.force,
        threads: args.threads,
    };
    let outcome = build_zoo(&opts, &mut |e: &BuildEvent| match e {
        BuildEvent::DiscardedStale { dir } => {
            say(
                &multi,
                format!(
                    "discarded {} (made with another configuration)",
                    dir.display()
                ),
            );
        }
        BuildEvent::Planned { total_steps } => {
            overall.set_length(*total_steps as u64);
            overall.reset_eta();
        }
        BuildEvent::StageStarted { stage, total } => {
            let bar = multi.add(ProgressBar::new(*total as u64));
            bar.set_style(bar_style());
            bar.set_prefix(stage.clone());
            stage_bar = Some(bar);
            last_done = 0;
        }
        BuildEvent::Step { done, loss, .. } => {
            if let Some(bar) = &stage_bar {
                bar.set_position(*done as u64);
                if let Some(l) = loss {
                    bar.set_message(format!("loss {l:.3}"));
                }
            }
            overall.inc(done.saturating_sub(last_done) as u64);
            last_done = *done;
        }
        BuildEvent::StageFinished {
            stage,
            seconds,
            detail,
        } => {
            if let Some(bar) = stage_bar.take() {
                bar.finish_and_clear();
                multi.remove(&bar);
            }
            say(&multi, format!("{stage:>28}: {seconds:7.1} s  {detail}"));
        }
        BuildEvent::StageReused { stage, detail } => {
            say(
                &multi,
                format!("{stage:>28}: reused from an interrupted build  {detail}"),
            );
        }
        _ => {}
    });
    overall.finish_and_clear();
    let outcome = outcome.with_context(|| format!("building the zoo in {}", zoo_dir.display()))?;
    let manifest = match outcome {
        BuildOutcome::AlreadyComplete(m) => {
            println!(
                "The zoo at {} is complete; nothing to do.",
                zoo_dir.display()
            );
            m
        }
        BuildOutcome::Built(m) => {
            println!(
                "Built the zoo in {} ({:.0} s, fetch excluded).",
                zoo_dir.display(),
                m.timings.total
            );
            m
        }
    };
    print_accuracy_table(&manifest);
    Ok(())
}

fn run_info(args: &InfoArgs) -> anyhow::Result<()> {
    let zoo_dir = args.zoo.clone().unwrap_or_else(default_zoo_dir);
    let zoo = Zoo::open(&zoo_dir).with_context(|| {
        format!(
            "opening the zoo in {} (build it with `madeit zoo build`)",
            zoo_dir.display()
        )
    })?;
    let m = zoo.manifest();
    if args.json {
        println!("{}", serde_json::to_string_pretty(m)?);
        return Ok(());
    }
    let c = &m.model;
    println!(
        "zoo {} ({}), seed {}, {} tasks; tower: d={} mlp={} layers={} heads={} image={} patch={}",
        zoo_dir.display(),
        m.format,
        m.seed,
        m.tasks.len(),
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.image_size,
        c.patch_size
    );
    let parts: Vec<String> = m
        .pretraining
        .parts
        .iter()
        .map(|p| format!("{} {}", p.task, p.images))
        .collect();
    println!("group: {} tasks", m.group.len());
    println!(
        "pretraining: {} class names, images: {}; {} steps x {}",
        m.pretraining.classes,
        parts.join(", "),
        m.pretraining.run.steps,
        m.pretraining.run.batch_size
    );
    println!();
    print_accuracy_table(m);
    if args.energy {
        println!();
        print_energy_table(m);
    }
    if args.timings {
        println!();
        print_timings(m);
    }
    if args.interference {
        println!();
        print_interference(&zoo, &args.test_images)?;
    }
    Ok(())
}

fn print_interference(zoo: &Zoo, test_images: &str) -> anyhow::Result<()> {
    let cap = if test_images.eq_ignore_ascii_case("all") {
        None
    } else {
        Some(
            test_images
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| {
                    format!(
                        "--test-images: expected a positive number or `all`, got `{test_images}`"
                    )
                })?,
        )
    };
    let n = zoo.tasks().len();
    let bar = ProgressBar::new(n as u64 + 2);
    bar.set_style(bar_style());
    bar.set_prefix("interference");
    let m = interference_matrix(zoo, cap, &mut |_| bar.inc(1))
        .context("computing the interference matrix")?;
    let sets = test_sets(zoo, cap)?;
    let avg = merged_accuracies(zoo, &vec![1.0 / n as f64; n], &sets)?;
    bar.inc(1);
    let ta = merged_accuracies(zoo, &vec![0.3; n], &sets)?;
    bar.finish_and_clear();
    let cap_text = cap.map_or("whole test splits".to_owned(), |c| {
        format!("at most {c} test images per task")
    });
    println!(
        "interference matrix, points: row i = task evaluated, column j = task vector added,\n\
         acc_i(theta_0 + tau_j) - acc_i(theta_0) ({cap_text})"
    );
    let short: Vec<String> = (1..=n).map(|j| format!("{j:>6}")).collect();
    println!(
        "{:>3}  {:<28} {:>7} {}",
        "id",
        "task",
        "theta_0",
        short.join("")
    );
    for (i, t) in zoo.tasks().iter().enumerate() {
        let row: Vec<String> = m.matrix[i]
            .iter()
            .map(|v| format!("{:>+6.1}", 100.0 * v))
            .collect();
        println!(
            "{:>3}  {:<28} {:>6.1}% {}",
            t.id,
            t.name,
            100.0 * m.pretrained[i],
            row.join("")
        );
    }
    println!(
        "mean off-diagonal {:+.2} points, mean diagonal (own gain) {:+.2} points",
        100.0 * m.mean_off_diagonal(),
        100.0 * m.mean_diagonal()
    );
    let mean = |v: &[f64]| 100.0 * v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!();
    println!(
        "merges of all {n} task vectors (mean test accuracy): theta_0 {:.1}%, average (1/{n}) {:.1}%, sum x 0.3 {:.1}%",
        mean(&m.pretrained),
        mean(&avg),
        mean(&ta)
    );
    Ok(())
}

fn print_accuracy_table(m: &Manifest) {
    println!(
        "{:>3}  {:<28} {:>7} {:>7} {:>6} {:>11} {:>11} {:>7} {:>10}",
        "id", "task", "classes", "train", "seen", "pretrained", "fine-tuned", "gain", "|tau|/|t0|"
    );
    for t in &m.tasks {
        let (p, f) = (t.accuracy.pretrained.test, t.accuracy.finetuned.test);
        println!(
            "{:>3}  {:<28} {:>7} {:>7} {:>6} {:>10.1}% {:>10.1}% {:>+7.1} {:>9.2}%",
            t.id,
            t.name,
            t.class_names.len(),
            t.splits.train,
            format!("{}/{}", t.head.names_seen, t.head.classes),
            100.0 * p,
            100.0 * f,
            100.0 * (f - p),
            100.0 * t.task_vector.ratio
        );
    }
    let (p, f) = (m.mean_pretrained_test(), m.mean_finetuned_test());
    println!(
        "{:>3}  {:<28} {:>7} {:>7} {:>10.1}% {:>10.1}% {:>+7.1}",
        "",
        "mean",
        "",
        "",
        100.0 * p,
        100.0 * f,
        100.0 * (f - p)
    );
    println!(
        "(test accuracy with each task's fixed name-based head: pretrained tower vs the task's \
         fine-tuned tower; `seen`: class names pretraining had)"
    );
}

fn kind_name(k: ModuleKind) -> &'static str {
    match k {
        ModuleKind::Q => "q",
        ModuleKind::K => "k",
        ModuleKind::V => "v",
        ModuleKind::Out => "out",
        ModuleKind::Fc1 => "fc1",
        ModuleKind::Fc2 => "fc2",
    }
}

fn print_energy_table(m: &Manifest) {
    let Some(first) = m.tasks.first() else { return };
    let frac = first.energy.fraction;
    println!(
        "energy of the top {:.0}% singular values of each task vector (mean over layers)",
        100.0 * frac
    );
    energy_row("task", &first.energy, |e| {
        format!("{:>6}", kind_name(e.kind))
    });
    for t in &m.tasks {
        energy_row(&t.name, &t.energy, |e| format!("{:>6.3}", e.mean));
    }
    energy_row("(gaussian matrix)", &first.energy, |e| {
        format!("{:>6.3}", e.gaussian_baseline)
    });
}

/// Prints one row of the energy table: `label`, then `cell` of each module of `energy`.
fn energy_row(label: &str, energy: &EnergyReport, cell: impl Fn(&ModuleEnergy) -> String) {
    let cells: Vec<String> = energy.modules.iter().map(cell).collect();
    println!("{:<28} {}", label, cells.join(" "));
}

fn print_timings(m: &Manifest) {
    let t = &m.timings;
    println!("stage times (s), {} threads:", m.threads);
    println!("  {:<28} {:>8.1}", "load", t.load);
    println!("  {:<28} {:>8.1}", "pretrain", t.pretrain);
    println!("  {:<28} {:>8.1}", "heads", t.heads);
    for (task, s) in &t.finetune {
        println!("  {:<28} {:>8.1}", format!("finetune:{task}"), s);
    }
    println!("  {:<28} {:>8.1}", "export", t.export);
    println!("  {:<28} {:>8.1}", "total", t.total);
}
