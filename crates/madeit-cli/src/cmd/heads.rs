//! `madeit heads`: CLIP's zero-shot classification heads from class names and prompt
//! templates.
//!
//! The head of a task is made as FusionBench's `HFCLIPClassifier.set_classification_task`
//! (and the task-vectors papers) make it: per class, the normalised projected text embedding
//! of every template, averaged, normalised again. The file also carries the checkpoint's
//! `logit_scale` and `visual_projection.weight`, so `madeit embed --head` classifies exactly
//! as the reference does (`exp(logit_scale) cos(projected image embedding, class row)`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use indicatif::ProgressBar;
use madeit::params::fs::{OutputDir, check_not_input};
use madeit::vit::{ClipTokenizer, TALL20, TaskHead, ZeroShotModel, ZeroShotTask, task_group};

/// The kind recorded in the marker of a `madeit heads` group folder.
pub const OUTPUT_KIND: &str = "heads";

/// Arguments of `madeit heads`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// CLIP model folder: a `CLIPModel` checkpoint (config.json with a `text_config`,
    /// model.safetensors with both towers, both projections and `logit_scale`) with its
    /// tokenizer (tokenizer.json, or vocab.json + merges.txt).
    #[arg(long, required_unless_present = "list")]
    pub model: Option<PathBuf>,
    /// A built-in task (`madeit heads --list`), or a group (`ta8`, `tall14`, `tall20`): then
    /// `--out` is a folder that receives one `<task>.safetensors` per task.
    #[arg(long, conflicts_with_all = ["classes", "templates"], required_unless_present_any = ["classes", "list"])]
    pub task: Option<String>,
    /// Class-name file: one name per line, in label order.
    #[arg(long, requires = "templates")]
    pub classes: Option<PathBuf>,
    /// Prompt-template file: one template per line, `{}` marks the class name.
    #[arg(long, requires = "classes")]
    pub templates: Option<PathBuf>,
    /// Task name stored in the head (default: the built-in name, or the class file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Tokenizer to use instead of the model folder's: a tokenizer.json, a folder with
    /// tokenizer.json or vocab.json + merges.txt, or CLIP's bpe_simple_vocab_16e6.txt(.gz).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Output head file (a folder for a task group).
    #[arg(long, required_unless_present = "list")]
    pub out: Option<PathBuf>,
    /// Prompts per text forward.
    #[arg(long, default_value_t = madeit::vit::DEFAULT_TEXT_BATCH)]
    pub batch_size: usize,
    /// List the built-in tasks and groups, then exit.
    #[arg(long)]
    pub list: bool,
    /// For a task group: replace the output folder even when it holds something other
    /// than an earlier `madeit heads` group.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Reads a tokenizer given on the command line.
fn tokenizer(path: &Path) -> anyhow::Result<ClipTokenizer> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let tok = if path.is_dir() {
        ClipTokenizer::from_dir(path)?
    } else if name.ends_with(".gz") || name.ends_with(".txt") {
        ClipTokenizer::from_bpe_file(path)?
    } else {
        ClipTokenizer::from_file(path)?
    };
    Ok(tok)
}

fn list() {
    println!("| task | classes | templates | first template |\n|---|---:|---:|---|");
    for name in TALL20 {
        if let Ok(t) = ZeroShotTask::builtin(name) {
            println!(
                "| {name} | {} | {} | {} |",
                t.classes().len(),
                t.templates().len(),
                t.templates().first().map_or("", String::as_str)
            );
        }
    }
    println!("\ngroups: ta8 (the first 8), tall14 (the first 14), tall20 (all 20)");
}

/// The tasks asked for, each with its output file.
fn tasks(args: &Args, out: &Path) -> anyhow::Result<Vec<(ZeroShotTask, PathBuf)>> {
    if let Some(name) = &args.task {
        if let Some(group) = task_group(name) {
            anyhow::ensure!(
                args.name.is_none(),
                "--name cannot be used with a task group"
            );
            return group
                .iter()
                .map(|t| {
                    Ok((
                        ZeroShotTask::builtin(t)?,
                        out.join(format!("{t}.safetensors")),
                    ))
                })
                .collect();
        }
        let task = ZeroShotTask::builtin(name)?;
        let task = match &args.name {
            Some(n) => ZeroShotTask::new(n, task.classes().to_vec(), task.templates().to_vec())?,
            None => task,
        };
        return Ok(vec![(task, out.to_path_buf())]);
    }
    let (Some(classes), Some(templates)) = (&args.classes, &args.templates) else {
        anyhow::bail!("give --task NAME, or --classes FILE and --templates FILE");
    };
    let name = args.name.clone().unwrap_or_else(|| {
        classes
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "task".into())
    });
    Ok(vec![(
        ZeroShotTask::from_files(name, classes, templates)?,
        out.to_path_buf(),
    )])
}

fn bar(quiet: bool, task: &str, len: u64) -> ProgressBar {
    let pb = super::progress_bar(
        quiet,
        len,
        "{prefix:>18} [{elapsed_precise}] {bar:30} {pos}/{len} prompts (eta {eta})",
    );
    pb.set_prefix(task.to_owned());
    pb
}

/// Makes and writes the heads.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.list {
        list();
        return Ok(());
    }
    let (Some(model_dir), Some(out)) = (&args.model, &args.out) else {
        anyhow::bail!("--model and --out are required");
    };
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let group = args.task.as_deref().and_then(task_group).is_some();
    // Parse every list before the (slow) model load, so bad input fails fast.
    let jobs = tasks(args, out)?;
    let mut inputs: Vec<PathBuf> = ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .map(|f| model_dir.join(f))
        .collect();
    inputs.extend(args.classes.iter().cloned());
    inputs.extend(args.templates.iter().cloned());
    inputs.extend(args.tokenizer.iter().cloned());
    let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    check_not_input(out, &input_refs)?;
    // A group is written as one folder, swapped in once every head is made.
    let staged = if group {
        Some(OutputDir::prepare(out, OUTPUT_KIND, args.force)?)
    } else {
        None
    };
    let tok = match &args.tokenizer {
        Some(p) => {
            Some(tokenizer(p).with_context(|| format!("reading the tokenizer {}", p.display()))?)
        }
        None => None,
    };
    let started = Instant::now();
    let zs = ZeroShotModel::load_dir_with(model_dir, tok)
        .with_context(|| format!("loading the CLIP text tower in {}", model_dir.display()))?;
    if group {
        // The folder is the staging folder of `staged`.
    } else if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the output folder {}", parent.display()))?;
    }
    eprintln!(
        "text tower of {}: d={} layers={} vocabulary={} context={}, logit scale exp({:.4}) = {:.3}{}",
        model_dir.display(),
        zs.text().config().hidden_size,
        zs.text().config().num_hidden_layers,
        zs.tokenizer().vocab_size(),
        zs.tokenizer().context_length(),
        zs.logit_scale(),
        zs.logit_scale().exp(),
        if zs.visual_projection().is_some() {
            ", with visual_projection"
        } else {
            ""
        }
    );
    for (task, path) in &jobs {
        let t0 = Instant::now();
        let pb = bar(args.quiet, task.name(), task.num_prompts() as u64);
        let head: TaskHead = zs
            .head_with(task, args.batch_size, &mut |done, _| {
                pb.set_position(done as u64)
            })
            .with_context(|| format!("making the head of `{}`", task.name()))?;
        pb.finish_and_clear();
        let file = match (&staged, path.strip_prefix(out)) {
            (Some(dir), Ok(rel)) => dir.path().join(rel),
            _ => path.clone(),
        };
        head.save(&file)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "wrote {}: head `{}`, {} classes x {} templates, dim {} ({:.1} s)",
            path.display(),
            head.name(),
            head.num_classes(),
            task.templates().len(),
            head.dim(),
            t0.elapsed().as_secs_f64()
        );
    }
    if let Some(dir) = staged {
        dir.commit()?;
    }
    if jobs.len() > 1 {
        eprintln!(
            "{} heads in {:.1} s",
            jobs.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
