//! Parity with transformers' CLIP vision tower on the fixtures written by
//! `scripts/clip_reference.py`.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use common::{fixture, host, max_abs_diff};
use madeit_params::ParamDict;
use madeit_vit::{ClipVisionConfig, ClipVisionModel, KeyLayout, VISION_PREFIX};

const TOL: f32 = 1e-4;

struct Io {
    pixels: madeit_params::Tensor,
    last: madeit_params::Tensor,
    pooled: madeit_params::Tensor,
    embeds: madeit_params::Tensor,
}

fn io(dir: &str) -> Io {
    let d = ParamDict::load(&fixture(dir).join("io.safetensors")).unwrap();
    Io {
        pixels: d.get("pixel_values").unwrap().clone(),
        last: d.get("last_hidden_state").unwrap().clone(),
        pooled: d.get("pooled_output").unwrap().clone(),
        embeds: d.get("image_embeds").unwrap().clone(),
    }
}

fn check(model: &ClipVisionModel, io: &Io, with_projection: bool) {
    let batch = io.pixels.shape()[0];
    let px = model.pixels(io.pixels.data().to_vec(), batch).unwrap();
    let out = model.forward(px).unwrap();
    let d_last = max_abs_diff(&host(&out.last_hidden_state), &io.last);
    let d_pooled = max_abs_diff(&host(&out.pooled_output), &io.pooled);
    eprintln!("max|diff|: last_hidden_state {d_last:.2e}, pooled_output {d_pooled:.2e}");
    assert!(d_last <= TOL, "last_hidden_state max|diff| = {d_last}");
    assert!(d_pooled <= TOL, "pooled_output max|diff| = {d_pooled}");
    if with_projection {
        let e = out.image_embeds.as_ref().expect("model has a projection");
        let d_embeds = max_abs_diff(&host(e), &io.embeds);
        eprintln!("max|diff|: image_embeds {d_embeds:.2e}");
        assert!(d_embeds <= TOL, "image_embeds max|diff| = {d_embeds}");
        // The embedding used by heads is the projected one.
        assert_eq!(host(&out.embedding()).shape(), io.embeds.shape());
    } else {
        assert!(out.image_embeds.is_none());
        assert_eq!(host(&out.embedding()).shape(), io.pooled.shape());
    }
}

#[test]
fn tiny_with_projection_matches_transformers() {
    let model = ClipVisionModel::load_dir(&fixture("clip_tiny")).unwrap();
    assert_eq!(model.layout(), KeyLayout::VisionModel);
    assert!(model.has_projection());
    assert_eq!(model.config(), &ClipVisionConfig::tiny());
    check(&model, &io("clip_tiny"), true);
}

#[test]
fn full_clip_model_in_f16_with_gelu_matches_transformers() {
    // A full CLIPModel checkpoint: `vision_model.` prefix, text tower and logit_scale to
    // ignore, F16 storage, `gelu` activation, config nested in `vision_config`.
    let dir = fixture("clip_tiny_full");
    let model = ClipVisionModel::load_dir(&dir).unwrap();
    assert_eq!(model.config().hidden_act, madeit_vit::Activation::Gelu);
    assert_eq!(model.layout(), KeyLayout::VisionModel);
    let summary = model.summary();
    assert_eq!(summary.dtypes.get("F16"), Some(&summary.num_tensors));
    check(&model, &io("clip_tiny_full"), true);
}

#[test]
fn bare_layout_without_projection_matches_transformers() {
    // The same weights as a bare CLIPVisionModel state dict (no prefix, no projection).
    let cfg = ClipVisionConfig::from_file(&fixture("clip_tiny").join("config.json")).unwrap();
    let dict = ParamDict::load(&fixture("clip_tiny").join("model.safetensors")).unwrap();
    let bare: ParamDict = dict
        .iter()
        .filter_map(|(k, t)| {
            k.strip_prefix(VISION_PREFIX)
                .map(|b| (b.to_owned(), t.clone()))
        })
        .collect();
    assert_eq!(bare.len() + 1, dict.len());
    let model = ClipVisionModel::from_params(&cfg, &bare).unwrap();
    assert_eq!(model.layout(), KeyLayout::Bare);
    assert!(!model.has_projection());
    assert_eq!(model.embedding_dim(), cfg.hidden_size);
    check(&model, &io("clip_tiny"), false);

    // Bare names plus the (never prefixed) projection.
    let mut with_proj = bare.clone();
    with_proj.insert(
        "visual_projection.weight",
        dict.get("visual_projection.weight").unwrap().clone(),
    );
    let model = ClipVisionModel::from_params(&cfg, &with_proj).unwrap();
    assert_eq!(model.layout(), KeyLayout::Bare);
    check(&model, &io("clip_tiny"), true);
}

#[test]
fn embed_returns_the_projected_embedding_on_the_host() {
    let model = ClipVisionModel::load_dir(&fixture("clip_tiny")).unwrap();
    let io = io("clip_tiny");
    let e = model.embed(io.pixels.data().to_vec(), 2).unwrap();
    assert!(max_abs_diff(&e, &io.embeds) <= TOL);
}
