//! `madeit inspect`: the configuration and a parameter summary of a checkpoint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use madeit::params::ParamDict;
use madeit::vit::{CONFIG_FILE, ClipTextConfig, ClipVisionModel};

/// Arguments of `madeit inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model folder (config.json + model.safetensors, Hugging Face layout).
    #[arg(long)]
    pub model: PathBuf,
    /// Also list every tensor with its shape and dtype.
    #[arg(long)]
    pub tensors: bool,
}

/// Prints the configuration, the summary and the parameters per group.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let model = ClipVisionModel::load_dir(&args.model)
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    let mut out = String::new();
    writeln!(
        out,
        "config:\n{}",
        serde_json::to_string_pretty(model.config())?
    )?;
    writeln!(out, "{}", model.summary())?;
    // A full CLIPModel folder also has a text tower (what `madeit heads` uses).
    if let Ok(text) = ClipTextConfig::from_file(&args.model.join(CONFIG_FILE)) {
        writeln!(
            out,
            "CLIP text tower: d={} mlp={} layers={} heads={} vocabulary={} positions={} act={:?} projection={} pooling={:?}",
            text.hidden_size,
            text.intermediate_size,
            text.num_hidden_layers,
            text.num_attention_heads,
            text.vocab_size,
            text.max_position_embeddings,
            text.hidden_act,
            text.projection_dim,
            text.pooling_rule()
        )?;
    }
    let params = ParamDict::load_checkpoint(&args.model)?;
    // Parameters per group: the embeddings and pre-norm, each encoder layer, the rest.
    let mut groups: BTreeMap<(usize, String), (usize, usize)> = BTreeMap::new();
    for (name, t) in params.iter() {
        let bare = name.strip_prefix("vision_model.").unwrap_or(name);
        let key = match bare.strip_prefix("encoder.layers.") {
            Some(rest) => {
                let layer = rest.split('.').next().unwrap_or_default();
                (
                    1 + layer.parse::<usize>().unwrap_or(usize::MAX - 2),
                    format!("encoder.layers.{layer}"),
                )
            }
            None => {
                let head = bare.split('.').next().unwrap_or(bare).to_owned();
                let rank = if head == "embeddings" || head == "pre_layrnorm" {
                    0
                } else {
                    usize::MAX
                };
                (rank, head)
            }
        };
        let g = groups.entry(key).or_default();
        g.0 += 1;
        g.1 += t.numel();
    }
    writeln!(out, "\n| group | tensors | parameters |\n|---|---:|---:|")?;
    for ((_, g), (k, n)) in &groups {
        writeln!(out, "| {g} | {k} | {n} |")?;
    }
    writeln!(out, "| total | {} | {} |", params.len(), params.numel())?;
    if args.tensors {
        writeln!(out, "\n| tensor | shape | dtype |\n|---|---|---|")?;
        for (name, t) in params.iter() {
            writeln!(out, "| {name} | {:?} | {} |", t.shape(), t.dtype())?;
        }
    }
    // A closed pipe (`madeit inspect ... | head`) is not an error.
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
