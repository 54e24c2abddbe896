//! `madeit embed`: image embeddings of a batch of preprocessed pixels.
//!
//! Input: a safetensors file with `pixel_values` `[n, channels, image_size, image_size]`
//! (F32, F16 or BF16), already resized and normalised for the model; or image files
//! (`--images`: JPEG, PNG, WebP) preprocessed as transformers' `CLIPImageProcessor` does,
//! with the model folder's `preprocessor_config.json` (CLIP's defaults without one), and
//! written as `pixel_values` by `--pixels-out`. Output: a safetensors file (F32) with
//!
//! - `image_embeds` `[n, e]`: the embedding heads use — `pooled_output · visual_projection^T`
//!   when the checkpoint has a projection (`e = projection_dim`), else `pooled_output`;
//! - with `--all`, also `pooled_output` `[n, hidden_size]` and `last_hidden_state`
//!   `[n, tokens, hidden_size]` (the names of transformers' `CLIPVisionModelOutput`);
//! - with `--head HEAD.safetensors` (`madeit heads`, or a zoo head), also `logits`
//!   `[n, classes]` (`scale · cos(image embedding, class row)`, CLIP's zero-shot classifier)
//!   and `predictions` `[n]` (the argmax class index, as F32). A model saved without
//!   `visual_projection` uses the projection the head carries.
//!
//! A `madeit merge --method made_it` result (a backbone with an `experts/` store and
//! `tasks.json`) is embedded with MADE-IT's routing: every image takes its own path of
//! experts, chosen from the backbone's module inputs, exactly as `madeit run` evaluates it.
//! Other expert files (`experts.safetensors`) are refused, since the router they need is
//! not stored with them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use std::collections::BTreeMap;

use madeit::data::preprocess::{
    AlphaRule, ClipPreprocess, PREPROCESSOR_FILE, Resizer, decode_rgb_with,
};
use madeit::eval::evaluate::{ExpertTower, ProjectionRouter};
use madeit::merge::made_it::store;
use madeit::merge::{TaskId, made_it_expert_model};
use madeit::params::fs::{check_not_input, remove_stale_temp_files};
use madeit::params::{ParamDict, Tensor};
use madeit::vit::{
    CONFIG_FILE, ClipVisionConfig, ClipVisionModel, Device, DeviceKind, TaskHead, VisionOutput,
    to_host,
};

/// Arguments of `madeit embed`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model folder (config.json + model.safetensors, Hugging Face layout).
    #[arg(long)]
    pub model: PathBuf,
    /// Safetensors file holding `pixel_values` `[n, c, size, size]`.
    #[arg(long, required_unless_present = "images", conflicts_with = "images")]
    pub pixels: Option<PathBuf>,
    /// Image files (JPEG, PNG, WebP) instead of --pixels, preprocessed as transformers'
    /// CLIPImageProcessor does (the model folder's preprocessor_config.json, or CLIP's
    /// defaults).
    #[arg(long, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// With --images: also write the preprocessed `pixel_values` `[n, 3, h, w]` to this
    /// safetensors file.
    #[arg(long, requires = "images")]
    pub pixels_out: Option<PathBuf>,
    /// With --images: how transparency becomes RGB: `white` composites onto white as
    /// CLIPImageProcessor does, `drop` discards it as PIL's convert("RGB") (and FusionBench).
    #[arg(long, value_enum, default_value = "white", requires = "images")]
    pub alpha: AlphaArg,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write `pooled_output` and `last_hidden_state`.
    #[arg(long)]
    pub all: bool,
    /// Images per forward.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Classification head (`madeit heads`): also write `logits` and `predictions`.
    #[arg(long)]
    pub head: Option<PathBuf>,
    /// With `--head`: print one line per image (index, class index, class name, logit).
    #[arg(long, requires = "head")]
    pub print: bool,
    /// Where the tower runs: `cpu`, or `wgpu` in a build with the `wgpu` feature.
    #[arg(long, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
}

/// Key of the input tensor.
const PIXELS_KEY: &str = "pixel_values";

/// `--alpha`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AlphaArg {
    /// Composite onto white (transformers' CLIPImageProcessor).
    White,
    /// Drop the alpha channel (PIL's convert("RGB")).
    Drop,
}

/// Decodes and preprocesses `images` for `model_dir`'s tower (`[n, 3, h, w]`).
fn preprocess_images(
    model_dir: &Path,
    config: &ClipVisionConfig,
    images: &[PathBuf],
    alpha: AlphaArg,
) -> anyhow::Result<Tensor> {
    let pre = ClipPreprocess::for_model(model_dir, config.image_size)?;
    let rule = match alpha {
        AlphaArg::White => AlphaRule::White,
        AlphaArg::Drop => AlphaRule::Drop,
    };
    let mut resizer = Resizer::new();
    let mut data = Vec::new();
    for path in images {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).with_context(|| format!("reading {name}"))?;
        let img = decode_rgb_with(&bytes, &name, rule)?;
        data.extend(pre.apply(&img, &name, &mut resizer)?);
    }
    let (h, w) = pre.output_size(0, 0);
    anyhow::ensure!(
        pre.do_center_crop,
        "{}: the preprocessing does not center-crop, so the images keep different sizes",
        model_dir.join(PREPROCESSOR_FILE).display()
    );
    Ok(Tensor::new(vec![images.len(), 3, h, w], data)?)
}

/// Concatenates host tensors along the first axis.
fn concat(parts: Vec<Tensor>, name: &str) -> anyhow::Result<Tensor> {
    let mut shape = parts
        .first()
        .map(|t| t.shape().to_vec())
        .with_context(|| format!("no batches for `{name}`"))?;
    let mut data = Vec::new();
    let mut n = 0;
    for p in parts {
        n += p.shape().first().copied().unwrap_or(0);
        data.extend_from_slice(p.data());
    }
    if let Some(first) = shape.first_mut() {
        *first = n;
    }
    Ok(Tensor::new(shape, data).map_err(|e| e.in_tensor(name))?)
}

/// The model of `--model`: a plain tower, or a backbone with MADE-IT's experts.
enum Tower {
    Plain(Box<ClipVisionModel>),
    Routed(Box<ExpertTower>),
}

impl Tower {
    fn load(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        if dir.join("experts.safetensors").is_file() {
            anyhow::bail!(
                "{} holds experts (experts.safetensors) whose router is not stored with them; \
                 only MADE-IT results (an experts/ store) can be embedded with their routing",
                dir.display()
            );
        }
        let store_dir = dir.join("experts");
        if !store_dir.is_dir() {
            let model = ClipVisionModel::load_dir_on(dir, device)
                .with_context(|| format!("loading the model in {}", dir.display()))?;
            return Ok(Self::Plain(Box::new(model)));
        }
        let state = store::load(&store_dir)?;
        let tasks_file = dir.join("tasks.json");
        let text = std::fs::read_to_string(&tasks_file)
            .with_context(|| format!("reading {}", tasks_file.display()))?;
        let names: BTreeMap<u32, String> = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", tasks_file.display()))?;
        let config = ClipVisionConfig::from_file(&dir.join(CONFIG_FILE))?;
        let backbone = ParamDict::load_checkpoint(dir)?;
        let experts = made_it_expert_model(&state, backbone, |t| {
            names.get(&t).map(|n| TaskId::new(n.clone()))
        })
        .with_context(|| format!("the expert store of {}", dir.display()))?;
        let tower = ExpertTower::new(&config, &experts, device)?;
        Ok(Self::Routed(Box::new(tower)))
    }

    fn config(&self) -> &ClipVisionConfig {
        match self {
            Self::Plain(m) => m.config(),
            Self::Routed(t) => t.model().config(),
        }
    }

    fn forward(&self, pixels: &[f32], batch: usize) -> anyhow::Result<VisionOutput> {
        Ok(match self {
            Self::Plain(m) => m.forward(m.pixels(pixels.to_vec(), batch)?)?,
            Self::Routed(t) => {
                let px = t.model().pixels(pixels.to_vec(), batch)?;
                // The default router defers to the model's own: MADE-IT's paths.
                t.forward(&ProjectionRouter::default(), px, "")?
            }
        })
    }
}

/// Computes and writes the embeddings.
pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let mut inputs: Vec<&Path> = vec![&args.model];
    inputs.extend(args.pixels.as_deref());
    inputs.extend(args.images.iter().map(PathBuf::as_path));
    if let Some(h) = &args.head {
        inputs.push(h);
    }
    check_not_input(&args.out, &inputs)?;
    if let Some(p) = &args.pixels_out {
        check_not_input(p, &inputs)?;
        anyhow::ensure!(p != &args.out, "--pixels-out and --out name the same file");
    }
    let device = args
        .device
        .device()
        .with_context(|| format!("--device {}", args.device))?;
    let (model, head) = with_head(Tower::load(&args.model, &device)?, args)?;
    let loaded;
    let pixels = match &args.pixels {
        Some(path) => {
            loaded =
                ParamDict::load(path).with_context(|| format!("reading {}", path.display()))?;
            loaded
                .get(PIXELS_KEY)
                .with_context(|| format!("{} has no `{PIXELS_KEY}` tensor", path.display()))?
        }
        None => {
            let px = preprocess_images(&args.model, model.config(), &args.images, args.alpha)?;
            let mut dict = ParamDict::new();
            dict.insert(PIXELS_KEY, px);
            if let Some(out) = &args.pixels_out {
                dict.save(out)?;
                eprintln!("wrote the preprocessed images to {}", out.display());
            }
            loaded = dict;
            loaded.get(PIXELS_KEY)?
        }
    };
    let c = model.config();
    let want = [c.num_channels, c.image_size, c.image_size];
    let (n, rest) = match pixels.shape() {
        [n, rest @ ..] => (*n, rest),
        [] => (0, &[][..]),
    };
    anyhow::ensure!(
        rest == want && n > 0,
        "`{PIXELS_KEY}` has shape {:?}, the model takes [n, {}, {}, {}]",
        pixels.shape(),
        want[0],
        want[1],
        want[2]
    );
    let per_image: usize = want.iter().product();
    // At most the whole input per forward; a huge --batch-size must not overflow.
    let chunk_len = args.batch_size.min(n).saturating_mul(per_image);
    let (mut emb, mut pooled, mut hidden) = (Vec::new(), Vec::new(), Vec::new());
    let mut logits = Vec::new();
    for chunk in pixels.data().chunks(chunk_len) {
        let b = chunk.len() / per_image;
        let out = model.forward(chunk, b)?;
        emb.push(to_host(&out.embedding())?);
        if let Some(h) = &head {
            logits.push(to_host(&h.logits(out.embedding())?)?);
        }
        if args.all {
            pooled.push(to_host(&out.pooled_output)?);
            hidden.push(to_host(&out.last_hidden_state)?);
        }
    }
    let mut dict = ParamDict::new();
    dict.insert("image_embeds", concat(emb, "image_embeds")?);
    if args.all {
        dict.insert("pooled_output", concat(pooled, "pooled_output")?);
        dict.insert("last_hidden_state", concat(hidden, "last_hidden_state")?);
    }
    if let Some(h) = &head {
        let logits = concat(logits, "logits")?;
        let predictions = argmax_rows(&logits, h.num_classes());
        if args.print {
            print_predictions(h, &logits, &predictions);
        }
        let pred = predictions.iter().map(|&p| p as f32).collect();
        dict.insert("logits", logits);
        dict.insert("predictions", Tensor::new(vec![n], pred)?);
    }
    if let (Some(dir), Some(name)) = (args.out.parent(), args.out.file_name()) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        remove_stale_temp_files(dir, &[&name.to_string_lossy()]);
    }
    dict.save(&args.out)?;
    eprintln!(
        "embedded {n} image(s) with {}{}: {}",
        args.model.display(),
        if matches!(model, Tower::Routed(_)) {
            " (routed through its MADE-IT experts)"
        } else {
            ""
        },
        dict.iter()
            .map(|(k, t)| format!("{k} {:?}", t.shape()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Loads `--head` and gives a model saved without `visual_projection` the head's.
fn with_head(model: Tower, args: &Args) -> anyhow::Result<(Tower, Option<TaskHead>)> {
    let Some(path) = &args.head else {
        return Ok((model, None));
    };
    let head =
        TaskHead::load(path).with_context(|| format!("reading the head {}", path.display()))?;
    let model = match (model, head.visual_projection()) {
        (Tower::Plain(m), Some(p)) if !m.has_projection() => {
            eprintln!(
                "{} has no visual_projection: using the one in {}",
                args.model.display(),
                path.display()
            );
            Tower::Plain(Box::new(m.with_projection(p)?))
        }
        (model, _) => model,
    };
    let tower = match &model {
        Tower::Plain(m) => m.as_ref(),
        Tower::Routed(t) => t.model(),
    };
    anyhow::ensure!(
        tower.embedding_dim() == head.dim(),
        "the head {} takes {}-dimensional embeddings, the model gives {}{}",
        path.display(),
        head.dim(),
        tower.embedding_dim(),
        if tower.has_projection() {
            ""
        } else {
            " (the model has no visual_projection and the head carries none)"
        }
    );
    Ok((model, Some(head)))
}

/// The argmax of every row of a `[n, classes]` matrix (first index on ties).
fn argmax_rows(logits: &Tensor, classes: usize) -> Vec<usize> {
    logits
        .data()
        .chunks_exact(classes.max(1))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                })
                .0
        })
        .collect()
}

fn print_predictions(head: &TaskHead, logits: &Tensor, predictions: &[usize]) {
    use std::io::Write as _;
    let c = head.num_classes();
    let mut out = String::from("image\tclass\tname\tlogit\n");
    for (i, &p) in predictions.iter().enumerate() {
        let name = head.class_names().get(p).map_or("", String::as_str);
        let logit = logits.data().get(i * c + p).copied().unwrap_or(f32::NAN);
        out.push_str(&format!("{i}\t{p}\t{name}\t{logit:.4}\n"));
    }
    // A closed pipe (`madeit embed ... --print | head`) is not an error.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
}
