//! Parity of the CLIP text tower, tokenizer and zero-shot heads with transformers and
//! FusionBench's recipe, on the fixtures written by `scripts/clip_text_reference.py`.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, host, max_abs_diff};
use madeit_params::{ParamDict, Tensor as HostTensor};
use madeit_vit::{
    ClipTextConfig, ClipTextModel, ClipTokenizer, ClipVisionModel, PoolingRule, TaskHead,
    TextBatch, TextKeyLayout, ZeroShotModel, ZeroShotTask,
};
use serde::Deserialize;

const TOL: f32 = 1e-4;

#[derive(Deserialize)]
struct Probe {
    text: String,
    ids: Vec<u32>,
    small_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Tokens {
    vocab_size: usize,
    small_vocab_size: usize,
    context_length: usize,
    strings: Vec<Probe>,
}

#[derive(Deserialize)]
struct Heads {
    classes: Vec<String>,
    templates: Vec<String>,
    prompts: Vec<String>,
}

fn tokens() -> Tokens {
    let text = std::fs::read_to_string(fixture("clip_tokens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The tiny CLIP model folder of the fixtures (text and vision towers, tokenizer).
fn tiny_dir() -> PathBuf {
    fixture("clip_text_tiny")
}

/// The tokenizer and text tower of [`tiny_dir`].
fn tiny_text() -> (ClipTokenizer, ClipTextModel) {
    let dir = tiny_dir();
    let tok = ClipTokenizer::from_dir(&dir).unwrap();
    let model = ClipTextModel::load_dir(&dir).unwrap();
    (tok, model)
}

/// The zero-shot model and vision tower of [`tiny_dir`].
fn tiny_zero_shot() -> (ZeroShotModel, ClipVisionModel) {
    let dir = tiny_dir();
    let zs = ZeroShotModel::load_dir(&dir).unwrap();
    let vision = ClipVisionModel::load_dir(&dir).unwrap();
    (zs, vision)
}

fn heads_json() -> Heads {
    let text = std::fs::read_to_string(tiny_dir().join("heads.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn bpe_file() -> PathBuf {
    fixture("clip_bpe").join("bpe_simple_vocab_16e6.txt.gz")
}

fn io() -> ParamDict {
    ParamDict::load(&tiny_dir().join("io.safetensors")).unwrap()
}

fn get(io: &ParamDict, name: &str) -> HostTensor {
    io.get(name).unwrap().clone()
}

/// The prompts of the fixture's heads, and their ids under `tok`.
fn prompt_ids(tok: &ClipTokenizer) -> (Vec<String>, Vec<Vec<u32>>) {
    let prompts = heads_json().prompts;
    let ids = prompts.iter().map(|p| tok.encode(p).unwrap()).collect();
    (prompts, ids)
}

/// A head's class weights as a host tensor `[classes, dim]`.
fn head_weight(head: &TaskHead) -> HostTensor {
    HostTensor::new(vec![head.num_classes(), head.dim()], head.weight().to_vec()).unwrap()
}

/// The logits of `head` on the image embeddings of `pixels` (a batch of 3 images).
fn image_logits(vision: &ClipVisionModel, pixels: &HostTensor, head: &TaskHead) -> HostTensor {
    let out = vision
        .forward(vision.pixels(pixels.data().to_vec(), 3).unwrap())
        .unwrap();
    host(&head.logits(out.embedding()).unwrap())
}

/// Rows of ids and mask stored as F32 `[batch, len]`.
fn batch_of(io: &ParamDict, prefix: &str) -> TextBatch {
    let ids = get(io, &format!("{prefix}.input_ids"));
    let mask = get(io, &format!("{prefix}.attention_mask"));
    let [b, l] = *ids.shape() else { panic!() };
    TextBatch::new(
        ids.data().iter().map(|&x| x as u32).collect(),
        mask.data().iter().map(|&x| x != 0.0).collect(),
        b,
        l,
    )
    .unwrap()
}

fn check_ids(tok: &ClipTokenizer, probes: &[Probe], small: bool) {
    let mut wrong = Vec::new();
    for p in probes {
        let want = if small { &p.small_ids } else { &p.ids };
        let got = tok.encode(&p.text).unwrap();
        if &got != want {
            wrong.push(format!("{:?}: got {got:?}, want {want:?}", p.text));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} strings differ:\n{}",
        wrong.len(),
        probes.len(),
        wrong.join("\n")
    );
}

#[test]
fn real_vocabulary_from_clips_bpe_file_gives_transformers_ids() {
    let t = tokens();
    assert!(t.strings.len() >= 300, "{} probe strings", t.strings.len());
    // Over-long prompts, accents, emoji and special-token text are among them.
    assert!(t.strings.iter().filter(|p| p.ids.len() == 77).count() >= 5);
    assert!(t.strings.iter().any(|p| p.text.contains('é')));
    assert!(t.strings.iter().any(|p| p.text.contains('🐱')));
    let tok = ClipTokenizer::from_bpe_file(&bpe_file()).unwrap();
    assert_eq!(tok.vocab_size(), t.vocab_size);
    assert_eq!(tok.context_length(), t.context_length);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (49406, 49407, 49407)
    );
    assert_eq!(
        tok.encode("a photo of a").unwrap(),
        [49406, 320, 1125, 539, 320, 49407]
    );
    check_ids(&tok, &t.strings, false);
}

/// `vocab.json` + `merges.txt` of a tokenizer, as a Hugging Face folder holds them.
fn write_vocab_merges(tok: &ClipTokenizer, dir: &Path) {
    let json: serde_json::Value =
        serde_json::from_str(&tok.inner().to_string(false).unwrap()).unwrap();
    let model = &json["model"];
    std::fs::write(dir.join("vocab.json"), model["vocab"].to_string()).unwrap();
    let mut merges = String::from("#version: 0.2\n");
    for m in model["merges"].as_array().unwrap() {
        let pair = m.as_array().unwrap();
        merges.push_str(&format!(
            "{} {}\n",
            pair[0].as_str().unwrap(),
            pair[1].as_str().unwrap()
        ));
    }
    std::fs::write(dir.join("merges.txt"), merges).unwrap();
}

#[test]
fn vocab_json_and_merges_txt_give_transformers_ids() {
    let t = tokens();
    let real = ClipTokenizer::from_bpe_file(&bpe_file()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_vocab_merges(&real, dir.path());
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.vocab_size(), t.vocab_size);
    check_ids(&tok, &t.strings, false);
}

#[test]
fn the_fixture_models_tokenizer_json_gives_transformers_ids() {
    let t = tokens();
    // transformers' own tokenizer.json, saved next to the model.
    let tok = ClipTokenizer::from_dir(&tiny_dir()).unwrap();
    assert_eq!(tok.vocab_size(), t.small_vocab_size);
    check_ids(&tok, &t.strings, true);
    // The same vocabulary built from the first 500 merges of CLIP's file.
    let tok = ClipTokenizer::from_bpe_file_with(&bpe_file(), 500).unwrap();
    assert_eq!(tok.vocab_size(), t.small_vocab_size);
    check_ids(&tok, &t.strings, true);
}

#[test]
fn truncation_keeps_the_start_and_end_tokens() {
    let tok = ClipTokenizer::from_bpe_file(&bpe_file()).unwrap();
    let long = "a photo of a cat ".repeat(40);
    let ids = tok.encode(&long).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!((ids[0], ids[76]), (49406, 49407));
    let short = tok.clone().with_context_length(10).unwrap();
    let ids = short.encode(&long).unwrap();
    assert_eq!(ids.len(), 10);
    assert_eq!(ids[9], 49407);
    assert!(tok.clone().with_context_length(2).is_err());
}

#[test]
fn text_tower_matches_transformers_under_both_pooling_rules() {
    let io = io();
    let batch = batch_of(&io, "raw");
    let model = ClipTextModel::load_dir(&tiny_dir()).unwrap();
    assert_eq!(model.layout(), TextKeyLayout::TextModel);
    assert!(model.has_projection());
    assert_eq!(model.config().pooling_rule(), PoolingRule::LargestId);
    let legacy = batch.pool_positions(PoolingRule::LargestId);
    let current = batch.pool_positions(PoolingRule::FirstEos(1013));
    assert_eq!(legacy[0], current[0]);
    assert_ne!(legacy[2], current[2], "row 2 has no end token");
    assert_eq!(current[2], 0);

    for (rule, eos) in [("legacy", 2), ("current", 1013)] {
        let mut cfg = model.config().clone();
        cfg.eos_token_id = eos;
        let params = ParamDict::load(&tiny_dir().join("model.safetensors")).unwrap();
        let m = ClipTextModel::from_params(&cfg, &params).unwrap();
        let out = m.forward(&batch).unwrap();
        // Padding positions attend only to real tokens, as with transformers' mask.
        let d_last = max_abs_diff(
            &host(&out.last_hidden_state),
            &get(&io, &format!("{rule}.last_hidden_state")),
        );
        let d_pooled = max_abs_diff(
            &host(&out.pooled_output),
            &get(&io, &format!("{rule}.pooled_output")),
        );
        let d_embeds = max_abs_diff(
            &host(out.text_embeds.as_ref().unwrap()),
            &get(&io, &format!("{rule}.text_embeds")),
        );
        eprintln!(
            "{rule}: max|diff| last {d_last:.2e}, pooled {d_pooled:.2e}, embeds {d_embeds:.2e}"
        );
        assert!(d_last <= TOL && d_pooled <= TOL && d_embeds <= TOL);
    }
}

#[test]
fn prompt_embeddings_through_the_folders_tokenizer_match_transformers() {
    let io = io();
    let (tok, model) = tiny_text();
    let (_, ids) = prompt_ids(&tok);
    // Same ids and padding as transformers' `tokenizer(prompts, padding=True)`.
    let want = batch_of(&io, "prompts");
    assert_eq!(TextBatch::pad(&ids, tok.pad_id()).unwrap(), want);
    let out = model.forward(&want).unwrap();
    let d = max_abs_diff(
        &host(&out.pooled_output),
        &get(&io, "prompts.pooled_output"),
    );
    assert!(d <= TOL, "pooled max|diff| = {d}");
    // Batched in twos (other padding): the same embeddings.
    let e = model.text_embeddings(&ids, tok.pad_id(), 2).unwrap();
    let d = max_abs_diff(&e, &get(&io, "prompts.text_embeds"));
    eprintln!("prompt text_embeds max|diff| {d:.2e}");
    assert!(d <= TOL, "text_embeds max|diff| = {d}");
}

#[test]
fn heads_match_fusionbenchs_recipe_and_logits_match_clip() {
    let io = io();
    let (zs, vision) = tiny_zero_shot();
    assert!((zs.logit_scale() - 3.2).abs() < 1e-6);
    let h = heads_json();
    let custom = ZeroShotTask::new("custom", h.classes.clone(), h.templates.clone()).unwrap();
    let eurosat = ZeroShotTask::builtin("eurosat").unwrap();
    assert!(vision.has_projection());
    let pixels = get(&io, "pixel_values");
    let embeds = vision.embed(pixels.data().to_vec(), 3).unwrap();
    assert!(max_abs_diff(&embeds, &get(&io, "image_embeds")) <= TOL);
    for (name, task) in [("custom", &custom), ("eurosat", &eurosat)] {
        // A batch of 4 prompts per forward: several forwards, several paddings.
        let head = zs.head_with(task, 4, &mut |_, _| {}).unwrap();
        assert_eq!(head.class_names(), task.classes());
        assert_eq!(head.templates(), task.templates());
        assert!((head.logit_scale() - 3.2f32.exp()).abs() < 1e-5);
        let want = get(&io, &format!("head.{name}.weight"));
        let got = head_weight(&head);
        let d_head = max_abs_diff(&got, &want);
        let logits = image_logits(&vision, &pixels, &head);
        let d_logits = max_abs_diff(&logits, &get(&io, &format!("logits.{name}")));
        eprintln!("{name}: head max|diff| {d_head:.2e}, logits max|diff| {d_logits:.2e}");
        assert!(d_head <= TOL, "{name} head max|diff| = {d_head}");
        assert!(d_logits <= TOL, "{name} logits max|diff| = {d_logits}");
        // The same head from the lower-level function.
        let again = madeit_vit::zero_shot_head(zs.text(), zs.tokenizer(), task, Some(3.2)).unwrap();
        let d = max_abs_diff(&head_weight(&again), &got);
        assert!(d <= 1e-6, "batching changed the head by {d}");
    }
}

#[test]
fn clip_logits_per_image_match_transformers() {
    let io = io();
    let (zs, vision) = tiny_zero_shot();
    let (prompts, ids) = prompt_ids(zs.tokenizer());
    let text = zs
        .text()
        .text_embeddings(&ids, zs.tokenizer().pad_id(), 8)
        .unwrap();
    // The prompts as a head (one "class" per prompt): CLIP's logits_per_image.
    let names: Vec<String> = (0..prompts.len()).map(|i| format!("p{i}")).collect();
    let head = TaskHead::new("prompts", &text, names)
        .unwrap()
        .with_logit_scale(zs.logit_scale())
        .unwrap();
    let logits = image_logits(&vision, &get(&io, "pixel_values"), &head);
    let d = max_abs_diff(&logits, &get(&io, "logits_per_image"));
    eprintln!("logits_per_image max|diff| {d:.2e}");
    assert!(d <= TOL, "logits_per_image max|diff| = {d}");
}

#[test]
fn head_files_keep_scale_projection_and_templates() {
    let (zs, full) = tiny_zero_shot();
    let task = ZeroShotTask::builtin("eurosat").unwrap();
    let head = zs.head(&task).unwrap();
    let proj = head.visual_projection().unwrap().clone();
    assert_eq!(proj.shape(), [24, 32]);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("eurosat.safetensors");
    head.save(&path).unwrap();
    let back = TaskHead::load(&path).unwrap();
    assert_eq!(back, head);
    assert_eq!(back.log_logit_scale(), Some(zs.logit_scale()));
    // A vision tower saved without its projection gets the head's: the same logits.
    let cfg = full.config().clone();
    let mut bare = full.to_params().unwrap();
    bare.remove("visual_projection.weight").unwrap();
    let vision = ClipVisionModel::from_params(&cfg, &bare).unwrap();
    assert!(!vision.has_projection());
    let vision = vision.with_projection(&proj).unwrap();
    let io = io();
    let logits = image_logits(&vision, &get(&io, "pixel_values"), &back);
    assert!(max_abs_diff(&logits, &get(&io, "logits.eurosat")) <= TOL);
    // A projection of the wrong width is refused.
    let wrong = HostTensor::new(vec![24, 31], vec![0.0; 24 * 31]).unwrap();
    assert!(full.with_projection(&wrong).is_err());
}

#[test]
fn text_config_reads_clip_configs_and_bounds_sizes() {
    let cfg = ClipTextConfig::from_file(&tiny_dir().join("config.json")).unwrap();
    assert_eq!(
        (
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.projection_dim,
            cfg.eos_token_id
        ),
        (1014, 32, 24, 2)
    );
    // The top-level projection_dim wins over the nested one, as for the vision config.
    let text = r#"{"projection_dim": 16, "text_config": {"projection_dim": 8, "hidden_size": 64, "num_attention_heads": 4}}"#;
    assert_eq!(
        ClipTextConfig::from_json_str(text).unwrap().projection_dim,
        16
    );
    let bare = r#"{"model_type": "clip_text_model", "hidden_size": 64, "num_attention_heads": 4}"#;
    assert_eq!(ClipTextConfig::from_json_str(bare).unwrap().hidden_size, 64);
    assert_eq!(
        ClipTextConfig::default(),
        ClipTextConfig::from_json_str(r#"{"text_config": {}}"#).unwrap()
    );
    // A vision-only configuration has no text tower.
    let err = ClipTextConfig::from_file(&fixture("clip_tiny").join("config.json")).unwrap_err();
    assert!(
        matches!(err, madeit_vit::VitError::NoTextTower { path: Some(_), .. }),
        "{err}"
    );
    // Hostile sizes are refused before anything is allocated.
    for bad in [
        r#"{"text_config": {"num_hidden_layers": 1000000000000}}"#,
        r#"{"text_config": {"vocab_size": 100000000000}}"#,
        r#"{"text_config": {"hidden_size": 16384, "intermediate_size": 65536, "num_hidden_layers": 256}}"#,
        r#"{"text_config": {"hidden_size": 30}}"#,
        r#"{"text_config": {"layer_norm_eps": -1}}"#,
        r#"{"text_config": {"max_position_embeddings": 0}}"#,
    ] {
        let err = ClipTextConfig::from_json_str(bad).unwrap_err();
        assert!(
            matches!(err, madeit_vit::VitError::InvalidTextConfig { .. }),
            "{bad}: {err}"
        );
    }
    for bad in [
        r#"{"text_config": 3}"#,
        "[1]",
        "{",
        r#"{"text_config": {"hidden_act": "swish"}}"#,
    ] {
        let err = ClipTextConfig::from_json_str(bad).unwrap_err();
        assert!(
            matches!(err, madeit_vit::VitError::TextConfigParse { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn text_inputs_are_checked() {
    let model = ClipTextModel::load_dir(&tiny_dir()).unwrap();
    let too_long = TextBatch::pad(&[vec![1; 78]], 0).unwrap();
    assert!(model.forward(&too_long).is_err());
    let bad_id = TextBatch::pad(&[vec![1, 1014]], 0).unwrap();
    assert!(model.forward(&bad_id).is_err());
    assert!(TextBatch::pad(&[], 0).is_err());
    assert!(TextBatch::pad(&[vec![]], 0).is_err());
    assert!(TextBatch::new(vec![1, 2], vec![false, true], 1, 2).is_err());
    assert!(TextBatch::new(vec![1, 2], vec![true], 1, 2).is_err());
    assert!(model.text_embeddings(&[vec![1, 2]], 0, 0).is_err());
}

#[test]
fn unpadded_batches_take_the_causal_kernel_and_agree_with_padded_ones() {
    let (tok, model) = tiny_text();
    let short = tok.encode("a photo of a cat.").unwrap();
    let long = tok
        .encode("a blurry photo of the école maternelle.")
        .unwrap();
    assert!(long.len() > short.len());
    let alone = model
        .forward(&TextBatch::pad(std::slice::from_ref(&long), 0).unwrap())
        .unwrap();
    let both = model
        .forward(&TextBatch::pad(&[short.clone(), long], tok.pad_id()).unwrap())
        .unwrap();
    let a = host(alone.text_embeds.as_ref().unwrap());
    let b = common::rows(&host(both.text_embeds.as_ref().unwrap()), 1, 1);
    assert!(max_abs_diff(&a, &b) <= 1e-5);
    let alone = model
        .forward(&TextBatch::pad(&[short], 0).unwrap())
        .unwrap();
    let a = host(alone.text_embeds.as_ref().unwrap());
    let b = common::rows(&host(both.text_embeds.as_ref().unwrap()), 0, 1);
    assert!(max_abs_diff(&a, &b) <= 1e-5);
}
