//! `madeit merge`: merge fine-tuned checkpoints into one model, one task at a time.
//!
//! The checkpoints are absorbed in the order given on the command line by a continual
//! merger of the chosen method; only the pretrained model, the checkpoint being absorbed,
//! the next one (read on a second thread while the current one is absorbed) and the
//! merger's state are in memory at once. A dense result is written in the layout
//! of the pretrained checkpoint (`config.json` copied unchanged, `model.safetensors` with
//! the same tensor names and dtypes). A result with experts is written as the backbone
//! (`config.json`, `model.safetensors`) plus `experts.safetensors`
//! (`<weight>.expert<e>.up` `[out, r]`, `<weight>.expert<e>.down` `[r, in]`) and
//! `experts.json` (the tasks each expert serves).
//!
//! MADE-IT (`--method made_it`) writes its expert store instead of `experts.safetensors` /
//! `experts.json`: `experts/` (madeit-experts' `store`: `manifest.json` with the
//! configuration, every expert's task ids and the affinity history, and one safetensors
//! file with the factors `U`, `s`, `V` of every expert), `tasks.json` (the task name of each
//! task id of the store, in merge order) and the backbone `model.safetensors`. The
//! pretrained model plus the store is the merged model: loading it with
//! `madeit::merge::made_it::store::load` gives back the full MADE-IT state (experts, routing,
//! non-target mean), ready to route inputs or to absorb more tasks. The backbone is
//! `theta0` (or `theta0` plus the non-target running mean when `non_target =
//! "running_mean"`).
//!
//! Safety: the output folder may not be (or hold) one of the inputs, and it may replace
//! only an earlier `madeit merge` output (or, with `--force`, anything else). Every
//! `config.json` is validated against its weights, and the fine-tuned ones against the
//! pretrained one, before any merging starts. The result is written into a staging folder
//! and swapped in whole ([`madeit::params::fs::OutputDir`]), so the output folder always
//! holds either the earlier result or the complete new one.
//!
//! Only weight-space methods merge from checkpoints alone. The test-time methods (MINGLE,
//! C. LW AdaMerging, C. LoRA-WEMoE) also need each task's unlabelled seed images and fixed
//! head at every step, and C. Fine-Tuned needs training data; a list of checkpoints
//! provides neither, so they are refused with a message pointing to `madeit run`, which
//! runs them on a benchmark (a zoo folder with heads, seed splits and source data).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;
use madeit::eval::checkpoints::{
    Checkpoint, CheckpointError, absorb_checkpoint, merge_config, refuse_non_merge, task_name,
};
use madeit::merge::made_it::store;
use madeit::merge::{ContinualMerger, MadeItMerger, MergedModel, MethodConfig, TaskId};
use madeit::params::fs::{OutputDir, check_not_input, crash_point, write_atomic};
use madeit::vit::{CONFIG_FILE, WEIGHTS_FILE};

/// Arguments of `madeit merge`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Merging method (the data-free methods of the registry; see `madeit methods`).
    #[arg(long, help = method_help())]
    pub method: String,
    /// The pretrained checkpoint: a folder with config.json and model.safetensors (or a
    /// sharded model.safetensors.index.json), or a .safetensors file.
    #[arg(long)]
    pub pretrained: PathBuf,
    /// Fine-tuned checkpoints, in merge order (folders or .safetensors files). The task
    /// name of each is its folder (or file stem) name.
    #[arg(long, num_args = 1.., required = true)]
    pub finetuned: Vec<PathBuf>,
    /// Method parameters (TOML: `lambda = 0.3`, ...; a `method` key must match --method).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output folder. It is written as a unit (a staging folder swapped in at the end), may
    /// not be one of the inputs, and may replace only an earlier `madeit merge` output.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out even when it holds something other than an earlier `madeit merge`
    /// output (it is still never one of the inputs).
    #[arg(long)]
    pub force: bool,
}

/// The help of `--method`, from the registry.
fn method_help() -> String {
    use madeit::eval::registry::MethodKind;
    format!(
        "Merging method ({}). `made_it` writes the backbone plus its expert store (`experts/`, \
         with `tasks.json` naming the task ids). {} need seed images and heads, {} training \
         data: run them with `madeit run --methods NAME`",
        super::methods::names_of(&[MethodKind::DataFree]),
        super::methods::names_of(&[MethodKind::TestTime]),
        super::methods::names_of(&[MethodKind::NeedsTrainingData]),
    )
}

/// The kind recorded in the marker of a `madeit merge` output folder.
pub const OUTPUT_KIND: &str = "merge";

fn method_config(args: &Args) -> anyhow::Result<MethodConfig> {
    let Some(path) = &args.config else {
        return Ok(merge_config(&args.method, serde_json::Map::new())?);
    };
    // The method itself is refused before its configuration is read.
    refuse_non_merge(&args.method)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    match table.get("method") {
        Some(toml::Value::String(m)) if m != &args.method => anyhow::bail!(
            "{} configures method `{m}`, but --method is `{}`",
            path.display(),
            args.method
        ),
        Some(toml::Value::String(_)) | None => {}
        Some(other) => anyhow::bail!("{}: `method` must be a string, got {other}", path.display()),
    }
    let serde_json::Value::Object(options) = serde_json::to_value(table)? else {
        anyhow::bail!("{}: not a table", path.display());
    };
    merge_config(&args.method, options)
        .with_context(|| format!("method configuration {}", path.display()))
}

/// Reads `paths` in order on a thread of `scope`, one checkpoint ahead of the consumer: the
/// channel has no buffer, so at most one read checkpoint waits while the consumer works.
/// The thread stops after the first error (sent like a checkpoint) or when the receiver is
/// dropped.
fn prefetch<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    paths: &'scope [PathBuf],
) -> mpsc::Receiver<Result<Checkpoint, CheckpointError>> {
    let (tx, rx) = mpsc::sync_channel(0);
    scope.spawn(move || {
        for path in paths {
            let read = Checkpoint::read(path, "the fine-tuned model");
            let failed = read.is_err();
            if tx.send(read).is_err() || failed {
                break;
            }
        }
    });
    rx
}

/// Merges the checkpoints and writes the result.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let cfg = method_config(args)?;
    // Refuse a clash with an input, or a folder this command may not replace, before any
    // work; the result is built in a staging folder and swapped in only when complete.
    let mut inputs: Vec<&Path> = vec![args.pretrained.as_path()];
    inputs.extend(args.finetuned.iter().map(PathBuf::as_path));
    if let Some(c) = &args.config {
        inputs.push(c);
    }
    check_not_input(&args.out, &inputs)?;
    let out = OutputDir::prepare(&args.out, OUTPUT_KIND, args.force)?;

    // MADE-IT is built as its concrete type, so that its expert store can be written.
    let mut made_it = match &cfg {
        MethodConfig::MadeIt(c) => Some(MadeItMerger::new(c.clone())?),
        _ => None,
    };
    let mut boxed = match made_it {
        Some(_) => None,
        None => Some(cfg.build()?),
    };
    let merger: &mut dyn ContinualMerger = match (&mut made_it, &mut boxed) {
        (Some(m), _) => m,
        (None, Some(b)) => b.as_mut(),
        (None, None) => anyhow::bail!("no merger was built for `{}`", cfg.name()),
    };
    let (pre, names) = std::thread::scope(|scope| -> anyhow::Result<_> {
        // The next checkpoint is read while the current one is absorbed.
        let next = prefetch(scope, &args.finetuned);
        let pre = Checkpoint::read(&args.pretrained, "the pretrained model")?;
        let mut names: Vec<String> = Vec::new();
        for path in &args.finetuned {
            let mut name = task_name(path);
            if names.contains(&name) {
                name = format!("{name}#{}", names.len() + 1);
            }
            let t = Instant::now();
            let ft = next
                .recv()
                .with_context(|| format!("reading {}: the reader stopped", path.display()))??;
            let report = absorb_checkpoint(merger, &pre, &ft, &TaskId::new(name.clone()))?;
            drop(ft);
            let extra: Vec<String> = report
                .metrics
                .iter()
                .map(|(k, v)| format!("{k}={v:.4}"))
                .collect();
            eprintln!(
                "step {}: {name}  |tau|={:.4}  |merged-theta0|={:.4}  {}  ({:.2} s)",
                report.step,
                report.task_vector_norm,
                report.merged_delta_norm,
                extra.join(" "),
                t.elapsed().as_secs_f64()
            );
            names.push(name);
            crash_point("merge-after-step");
        }
        Ok((pre, names))
    })?;
    let pretrained = &pre.params;
    let merged = merger.merged_model(pretrained)?;
    let dir = out.path();
    if let Some((_, text)) = &pre.config {
        write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
    }
    crash_point("merge-after-config");
    let weights_out = dir.join(WEIGHTS_FILE);
    match merged {
        MergedModel::Dense(params) => params.save(&weights_out)?,
        MergedModel::Experts(m) if made_it.is_some() => {
            m.backbone.save(&weights_out)?;
            if let Some(mi) = &made_it {
                let store_dir = dir.join("experts");
                let saved = store::save(mi.experts(), &store_dir)?;
                // Task id i of the store is the i-th merged task.
                let ids: BTreeMap<u32, &str> = names
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| u32::try_from(i).ok().map(|i| (i, n.as_str())))
                    .collect();
                write_atomic(
                    &dir.join("tasks.json"),
                    serde_json::to_string_pretty(&ids)?.as_bytes(),
                )?;
                eprintln!(
                    "expert store: {} experts ({} bytes of factors)",
                    mi.experts().num_experts(),
                    saved.tensor_bytes
                );
            }
        }
        MergedModel::Experts(m) => {
            m.backbone.save(&weights_out)?;
            let factors = m.factor_dict();
            // Sorted by module name, as this file has always been written.
            let tasks: BTreeMap<String, Vec<Vec<String>>> = m.expert_tasks().into_iter().collect();
            factors.save(&dir.join("experts.safetensors"))?;
            write_atomic(
                &dir.join("experts.json"),
                serde_json::to_string_pretty(&tasks)?.as_bytes(),
            )?;
        }
        _ => anyhow::bail!(
            "method `{}` produced a kind of model this tool cannot write",
            cfg.name()
        ),
    }
    crash_point("merge-before-commit");
    let target = out.commit()?;
    eprintln!(
        "merged {} model(s) with {} into {}{}",
        names.len(),
        cfg.name(),
        target.display(),
        if pre.config.is_none() {
            " (no config.json beside the pretrained weights: only the weights were written)"
        } else {
            ""
        }
    );
    Ok(())
}
