//! `madeit zoo`: build the embedded model zoo and show what it holds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use madeit::data::{FetchEvent, default_cache_dir, fetch_sources};
use madeit::vit::TargetKind;
use madeit::zoo::{
    BuildConfig, BuildEvent, BuildOptions, BuildOutcome, Manifest, Zoo, build_zoo, default_zoo_dir,
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
    config.check().context("invalid build configuration")?;

    if !args.force
        && let Ok(zoo) = Zoo::open(&zoo_dir)
    {
        println!(
            "The zoo at {} is complete; nothing to do (use --force to rebuild).",
            zoo_dir.display()
        );
        print_accuracy_table(zoo.manifest());
        return Ok(());
    }

    if !args.no_fetch {
        let spinner = ProgressBar::new_spinner();
        spinner.enable_steady_tick(Duration::from_millis(120));
        spinner.set_message("fetching data");
        fetch_sources(&cache_dir, &|e| {
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
            let _ = multi.println(format!(
                "discarded {} (made with another configuration)",
                dir.display()
            ));
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
            let _ = multi.println(format!("{stage:>28}: {seconds:7.1} s  {detail}"));
        }
        BuildEvent::StageReused { stage, detail } => {
            let _ = multi.println(format!(
                "{stage:>28}: reused from an interrupted build  {detail}"
            ));
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
    println!(
        "pretraining: {} classes, images: {}; {} steps x {}",
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
    Ok(())
}

fn print_accuracy_table(m: &Manifest) {
    println!(
        "{:>3}  {:<28} {:>7} {:>7} {:>11} {:>11} {:>7}",
        "id", "task", "classes", "train", "pretrained", "fine-tuned", "gain"
    );
    for t in &m.tasks {
        let (p, f) = (t.accuracy.pretrained.test, t.accuracy.finetuned.test);
        println!(
            "{:>3}  {:<28} {:>7} {:>7} {:>10.1}% {:>10.1}% {:>+7.1}",
            t.id,
            t.name,
            t.class_names.len(),
            t.splits.train,
            100.0 * p,
            100.0 * f,
            100.0 * (f - p)
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
        "(test accuracy with each task's fixed head: pretrained tower vs the task's fine-tuned tower)"
    );
}

fn kind_name(k: TargetKind) -> &'static str {
    match k {
        TargetKind::Q => "q",
        TargetKind::K => "k",
        TargetKind::V => "v",
        TargetKind::Out => "out",
        TargetKind::Fc1 => "fc1",
        TargetKind::Fc2 => "fc2",
    }
}

fn print_energy_table(m: &Manifest) {
    let Some(first) = m.tasks.first() else { return };
    let frac = first.energy.fraction;
    println!(
        "energy of the top {:.0}% singular values of each task vector (mean over layers)",
        100.0 * frac
    );
    let header: Vec<String> = first
        .energy
        .modules
        .iter()
        .map(|e| format!("{:>6}", kind_name(e.kind)))
        .collect();
    println!("{:<28} {}", "task", header.join(" "));
    for t in &m.tasks {
        let row: Vec<String> = t
            .energy
            .modules
            .iter()
            .map(|e| format!("{:>6.3}", e.mean))
            .collect();
        println!("{:<28} {}", t.name, row.join(" "));
    }
    let base: Vec<String> = first
        .energy
        .modules
        .iter()
        .map(|e| format!("{:>6.3}", e.gaussian_baseline))
        .collect();
    println!("{:<28} {}", "(gaussian matrix)", base.join(" "));
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
