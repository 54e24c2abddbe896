//! `madeit heads` and `madeit embed --head` on the random full `CLIPModel` folder written by
//! `scripts/clip_text_reference.py`: the heads and logits match FusionBench's recipe as
//! computed with transformers, and bad input gets a message naming the file.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use madeit::params::{ParamDict, Tensor, max_abs_diff};
use madeit::vit::TaskHead;

const TOL: f32 = 1e-4;

fn clip_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../madeit-vit/tests/fixtures/clip_text_tiny")
}

fn io() -> ParamDict {
    ParamDict::load(&clip_dir().join("io.safetensors")).unwrap()
}

fn madeit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_madeit"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = madeit(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "madeit {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = madeit(args);
    assert!(!out.status.success(), "madeit {args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// `madeit heads --model <model> <source...> --out <out>` (`source`: `--task`, `--classes`...).
fn heads<'a>(model: &'a Path, source: &[&'a str], out: &'a Path) -> Vec<&'a str> {
    let mut a = vec!["heads", "--model", s(model)];
    a.extend_from_slice(source);
    a.extend(["--out", s(out)]);
    a
}

/// `madeit embed --model <model> --pixels <pixels> --head <head> --out <out>`.
fn embed_head<'a>(
    model: &'a Path,
    pixels: &'a Path,
    head: &'a Path,
    out: &'a Path,
) -> Vec<&'a str> {
    let (m, p, h, o) = (s(model), s(pixels), s(head), s(out));
    vec![
        "embed", "--model", m, "--pixels", p, "--head", h, "--out", o,
    ]
}

/// Asserts that `err` contains every one of `wanted`.
#[track_caller]
fn assert_contains_all(err: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(err.contains(w), "`{w}` missing from: {err}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[derive(serde::Deserialize)]
struct Lists {
    classes: Vec<String>,
    templates: Vec<String>,
}

#[test]
fn heads_and_embed_match_the_reference() {
    let io = io();
    let dir = clip_dir();
    let tmp = tempfile::tempdir().unwrap();
    let eurosat = tmp.path().join("heads").join("eurosat.safetensors");
    ok(&heads(&dir, &["--task", "EuroSAT", "--quiet"], &eurosat));
    let head = TaskHead::load(&eurosat).unwrap();
    assert_eq!(head.name(), "eurosat");
    assert_eq!(head.num_classes(), 10);
    assert!((head.logit_scale() - 3.2f32.exp()).abs() < 1e-4);
    let d = max_abs_diff(head.weight(), io.get("head.eurosat.weight").unwrap().data())
        .expect("same length");
    assert!(d <= TOL, "eurosat head max|diff| = {d}");

    // Class and template files.
    let lists: Lists =
        serde_json::from_str(&std::fs::read_to_string(dir.join("heads.json")).unwrap()).unwrap();
    let classes = tmp.path().join("custom.txt");
    let templates = tmp.path().join("templates.txt");
    std::fs::write(&classes, lists.classes.join("\n")).unwrap();
    std::fs::write(&templates, lists.templates.join("\n") + "\n").unwrap();
    let custom = tmp.path().join("custom.safetensors");
    let lists_args = ["--classes", s(&classes), "--templates", s(&templates)];
    let batch = ["--batch-size", "3", "--quiet"];
    ok(&heads(
        &dir,
        &[&lists_args[..], &batch[..]].concat(),
        &custom,
    ));
    let head = TaskHead::load(&custom).unwrap();
    assert_eq!(head.name(), "custom");
    assert_eq!(head.class_names(), lists.classes);
    let d = max_abs_diff(head.weight(), io.get("head.custom.weight").unwrap().data())
        .expect("same length");
    assert!(d <= TOL, "custom head max|diff| = {d}");

    // embed --head: CLIP's logits and predictions.
    let emb = tmp.path().join("emb.safetensors");
    let pixels = dir.join("io.safetensors");
    let mut args = embed_head(&dir, &pixels, &eurosat, &emb);
    args.push("--print");
    let printed = ok(&args);
    let out = ParamDict::load(&emb).unwrap();
    let logits = out.get("logits").unwrap();
    assert_eq!(logits.shape(), [3, 10]);
    let want = io.get("logits.eurosat").unwrap();
    let d = max_abs_diff(logits.data(), want.data()).expect("same length");
    assert!(d <= TOL, "embed logits max|diff| = {d}");
    let pred = out.get("predictions").unwrap();
    for (i, row) in want.data().chunks_exact(10).enumerate() {
        let best = (0..10).fold(0, |b, j| if row[j] > row[b] { j } else { b });
        assert_eq!(pred.data()[i], best as f32);
        let names = TaskHead::load(&eurosat).unwrap();
        assert!(
            printed.contains(&format!("{i}\t{best}\t{}\t", names.class_names()[best])),
            "{printed}"
        );
    }

    // A vision tower saved without visual_projection takes the head's.
    let bare = tmp.path().join("vision_only");
    std::fs::create_dir_all(&bare).unwrap();
    let mut params = ParamDict::load(&dir.join("model.safetensors")).unwrap();
    let keep: Vec<String> = params
        .keys()
        .filter(|k| !k.starts_with("vision_model."))
        .map(str::to_owned)
        .collect();
    for k in keep {
        params.remove(&k);
    }
    params.save(&bare.join("model.safetensors")).unwrap();
    std::fs::copy(dir.join("config.json"), bare.join("config.json")).unwrap();
    let emb2 = tmp.path().join("emb2.safetensors");
    ok(&embed_head(&bare, &pixels, &eurosat, &emb2));
    let logits2 = ParamDict::load(&emb2).unwrap();
    let d = max_abs_diff(logits2.get("logits").unwrap().data(), want.data()).expect("same length");
    assert!(d <= TOL, "vision-only logits max|diff| = {d}");
    // A zoo-style head without projection does not fit that tower: a clear message.
    let plain = tmp.path().join("plain.safetensors");
    let h = TaskHead::new(
        "plain",
        &Tensor::new(vec![2, 24], vec![1.0; 48]).unwrap(),
        vec![],
    )
    .unwrap();
    h.save(&plain).unwrap();
    let err = fails(&embed_head(&bare, &pixels, &plain, &emb2));
    assert!(err.contains("visual_projection"), "{err}");
}

#[test]
fn a_task_group_writes_one_head_per_task() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ta8");
    ok(&heads(&clip_dir(), &["--task", "ta8", "--quiet"], &out));
    for task in madeit::vit::TA8 {
        let head = TaskHead::load(&out.join(format!("{task}.safetensors"))).unwrap();
        assert_eq!(head.name(), task);
        assert_eq!(head.dim(), 24);
    }
    let listed = ok(&["heads", "--list"]);
    assert!(listed.contains("| sun397 | 397 | 2 |"), "{listed}");
    assert!(listed.contains("rendered_sst2"), "{listed}");
}

#[test]
fn bad_input_is_named_and_never_panics() {
    let dir = clip_dir();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("h.safetensors");
    let classes = tmp.path().join("classes.txt");
    let templates = tmp.path().join("templates.txt");

    std::fs::write(&classes, "cat\ndog\ncat\n").unwrap();
    std::fs::write(&templates, "a photo of a {}.\n").unwrap();
    let lists = ["--classes", s(&classes), "--templates", s(&templates)];
    let err = fails(&heads(&dir, &lists, &out));
    assert_contains_all(&err, &["duplicate", s(&classes), "line 3"]);

    std::fs::write(&classes, "cat\n\ndog\n").unwrap();
    let err = fails(&heads(&dir, &lists, &out));
    assert_contains_all(&err, &["empty class name", "line 2"]);

    std::fs::write(&classes, "cat\ndog\n").unwrap();
    std::fs::write(&templates, "a photo of a {}.\na photo\n").unwrap();
    let err = fails(&heads(&dir, &lists, &out));
    assert_contains_all(&err, &["{}", s(&templates), "line 2"]);

    let err = fails(&heads(&dir, &["--task", "imagenet"], &out));
    assert_contains_all(&err, &["no built-in task", "sun397"]);

    // A vision-only checkpoint.
    let vision = dir.join("../clip_tiny");
    let mnist = ["--task", "mnist"];
    let err = fails(&heads(&vision, &mnist, &out));
    assert_contains_all(&err, &["has no text tower", "clip_tiny"]);

    // No logit_scale.
    let copy = tmp.path().join("clip");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(dir.join(f), copy.join(f)).unwrap();
    }
    let mut params = ParamDict::load(&dir.join("model.safetensors")).unwrap();
    params.remove("logit_scale").unwrap();
    params.save(&copy.join("model.safetensors")).unwrap();
    let err = fails(&heads(&copy, &mnist, &out));
    assert_contains_all(&err, &["logit_scale", "model.safetensors"]);

    // A tokenizer that does not parse.
    std::fs::copy(
        dir.join("model.safetensors"),
        copy.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(copy.join("tokenizer.json"), "{not json").unwrap();
    let err = fails(&heads(&copy, &mnist, &out));
    assert_contains_all(&err, &["tokenizer", "tokenizer.json"]);

    // Writing over an input is refused.
    let err = fails(&heads(&dir, &mnist, &dir.join("model.safetensors")));
    assert!(err.contains("is (or holds) the input"), "{err}");
    assert!(!out.exists());
}
