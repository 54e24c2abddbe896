//! The built-in task lists, class and template files, and the typed errors of bad input to
//! the zero-shot heads.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use common::fixture;
use madeit_params::ParamDict;
use madeit_vit::{
    ClipTextModel, ClipTokenizer, TA8, TALL14, TALL20, VitError, ZeroShotModel, ZeroShotTask,
    builtin_task_name, builtin_task_names, task_group,
};

/// Copies the fixture CLIP folder into a temporary one.
fn copy_clip() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture("clip_text_tiny")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

/// A copy of the fixture CLIP folder whose weights lack `name`, with the path of its
/// weights file and the weights left.
fn copy_clip_without(name: &str) -> (tempfile::TempDir, PathBuf, ParamDict) {
    let tmp = copy_clip();
    let weights = tmp.path().join("model.safetensors");
    let mut params = ParamDict::load(&weights).unwrap();
    params.remove(name).unwrap();
    params.save(&weights).unwrap();
    (tmp, weights, params)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_twenty_tasks_load_with_the_published_sizes() {
    // (classes, templates) of FusionBench's lists, checked by scripts/task_prompts.py.
    let sizes = [
        ("sun397", 397, 2),
        ("stanford_cars", 196, 8),
        ("resisc45", 45, 18),
        ("eurosat", 10, 3),
        ("svhn", 10, 1),
        ("gtsrb", 43, 3),
        ("mnist", 10, 1),
        ("dtd", 47, 8),
        ("oxford_flowers102", 102, 1),
        ("pcam", 2, 1),
        ("fer2013", 7, 6),
        ("oxford_iiit_pet", 37, 1),
        ("stl10", 10, 2),
        ("cifar100", 100, 18),
        ("cifar10", 10, 18),
        ("food101", 101, 1),
        ("fashion_mnist", 10, 2),
        ("emnist_letters", 26, 1),
        ("kmnist", 10, 1),
        ("rendered_sst2", 2, 1),
    ];
    assert_eq!(builtin_task_names().collect::<Vec<_>>(), TALL20);
    for ((name, classes, templates), listed) in sizes.iter().zip(TALL20) {
        assert_eq!(*name, listed);
        let t = ZeroShotTask::builtin(name).unwrap();
        assert_eq!(t.name(), *name);
        assert_eq!(
            (t.classes().len(), t.templates().len()),
            (*classes, *templates),
            "{name}"
        );
    }
    assert_eq!(TALL14[..8], TA8);
    assert_eq!(TALL20[..14], TALL14);
    assert_eq!(task_group("TALL20"), Some(&TALL20[..]));
    assert_eq!(task_group("ta8"), Some(&TA8[..]));
    assert_eq!(task_group("sun397"), None);
    // FusionBench's spellings and a few aliases.
    for (alias, name) in [
        ("stanford-cars", "stanford_cars"),
        ("Oxford-IIIT-Pet", "oxford_iiit_pet"),
        ("oxford_flowers102", "oxford_flowers102"),
        ("flowers102", "oxford_flowers102"),
        ("rendered-sst2", "rendered_sst2"),
        ("EuroSAT", "eurosat"),
    ] {
        assert_eq!(builtin_task_name(alias), Some(name), "{alias}");
    }
    let t = ZeroShotTask::builtin("eurosat").unwrap();
    assert_eq!(t.classes()[0], "annual crop land");
    assert_eq!(t.templates()[0], "a centered satellite photo of {}.");
    assert_eq!(
        t.prompts(9)[2],
        "a centered satellite photo of the lake or sea."
    );
    let t = ZeroShotTask::builtin("svhn").unwrap();
    assert_eq!(t.prompts(3), ["a photo of the number: \"3\"."]);
    let t = ZeroShotTask::builtin("kmnist").unwrap();
    assert_eq!(t.prompts(0), ["a photo of the character お."]);
    let err = ZeroShotTask::builtin("imagenet").unwrap_err();
    assert!(matches!(err, VitError::UnknownTask { .. }));
    assert!(err.to_string().contains("sun397") && err.to_string().contains("tall20"));
}

#[test]
fn class_and_template_files_are_checked_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good_c = write(
        d,
        "good.classes",
        "\u{feff}cat\r\n  dog  \nT - shirt / top\n",
    );
    let good_t = write(d, "good.templates", "a photo of a {}.\n{} !\n");
    let t = ZeroShotTask::from_files("pets", &good_c, &good_t).unwrap();
    assert_eq!(t.classes(), ["cat", "dog", "T - shirt / top"]);
    assert_eq!(t.prompts(1), ["a photo of a dog.", "dog !"]);

    // (class file, template file, the error expected, the line it names)
    let class_list = |e: &VitError| matches!(e, VitError::ClassList { .. });
    let template_list = |e: &VitError| matches!(e, VitError::TemplateList { .. });
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a dyn Fn(&VitError) -> bool,
        Option<usize>,
    );
    let cases: [Case; 6] = [
        ("cat\n\ndog\n", "a {}", &class_list, Some(2)),
        ("cat\n   \n", "a {}", &class_list, Some(2)),
        ("cat\ndog\ncat\n", "a {}", &class_list, Some(3)),
        ("", "a {}", &class_list, None),
        ("cat\n", "a {}\na photo\n", &template_list, Some(2)),
        ("cat\n", "", &template_list, None),
    ];
    for (i, (classes, templates, kind, line)) in cases.into_iter().enumerate() {
        let c = write(d, &format!("c{i}.txt"), classes);
        let t = write(d, &format!("t{i}.txt"), templates);
        let err = ZeroShotTask::from_files("x", &c, &t).unwrap_err();
        assert!(kind(&err), "case {i}: {err}");
        let msg = err.to_string();
        let file = if matches!(err, VitError::ClassList { .. }) {
            &c
        } else {
            &t
        };
        assert!(msg.contains(&file.display().to_string()), "case {i}: {msg}");
        match (&err, line) {
            (
                VitError::ClassList { line: got, .. } | VitError::TemplateList { line: got, .. },
                want,
            ) => {
                assert_eq!(*got, want, "case {i}: {msg}");
            }
            _ => unreachable!(),
        }
    }
    // Not UTF-8.
    let c = d.join("latin1.txt");
    std::fs::write(&c, [0x63u8, 0x61, 0x66, 0xe9, b'\n']).unwrap();
    let err = ZeroShotTask::from_files("x", &c, &good_t).unwrap_err();
    assert!(matches!(err, VitError::ClassList { .. }), "{err}");
    // In-memory lists follow the same rules.
    assert!(ZeroShotTask::new("x", vec!["a".into(), " a ".into()], vec!["{}".into()]).is_err());
    assert!(ZeroShotTask::new("x", vec!["a".into()], vec!["no placeholder".into()]).is_err());
}

#[test]
fn a_vision_only_folder_has_no_text_tower() {
    // CLIPVisionModelWithProjection: config without text_config, weights without text.
    let dir = fixture("clip_tiny");
    let err = ZeroShotModel::load_dir(&dir).unwrap_err();
    assert!(matches!(err, VitError::NoTextTower { .. }), "{err}");
    assert!(err.to_string().contains("clip_tiny"), "{err}");
    // A CLIPModel config whose weights lack the text tower.
    let tmp = copy_clip();
    let params = ParamDict::load(&tmp.path().join("model.safetensors")).unwrap();
    let vision: ParamDict = params
        .iter()
        .filter(|(k, _)| !k.starts_with("text_"))
        .map(|(k, t)| (k.to_owned(), t.clone()))
        .collect();
    vision.save(&tmp.path().join("model.safetensors")).unwrap();
    let err = ClipTextModel::load_dir(tmp.path()).unwrap_err();
    assert!(
        matches!(err, VitError::NoTextTower { path: Some(_), .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&tmp.path().display().to_string()),
        "{err}"
    );
    // The vision tower of that folder still loads.
    assert!(madeit_vit::ClipVisionModel::load_dir(tmp.path()).is_ok());
}

#[test]
fn a_missing_or_broken_logit_scale_is_named() {
    let (tmp, weights, mut params) = copy_clip_without("logit_scale");
    let err = ZeroShotModel::load_dir(tmp.path()).unwrap_err();
    assert!(matches!(err, VitError::LogitScale { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    params.insert(
        "logit_scale",
        madeit_params::Tensor::new(vec![], vec![f32::NAN]).unwrap(),
    );
    params.save(&weights).unwrap();
    let err = ZeroShotModel::load_dir(tmp.path()).unwrap_err();
    assert!(matches!(err, VitError::LogitScale { .. }), "{err}");
}

#[test]
fn a_partial_text_tower_lists_what_is_missing() {
    let (tmp, _, _) = copy_clip_without("text_model.final_layer_norm.bias");
    let err = ClipTextModel::load_dir(tmp.path()).unwrap_err();
    assert!(matches!(err, VitError::TextCheckpoint { .. }), "{err}");
    assert!(
        err.to_string().contains("text_model.final_layer_norm.bias"),
        "{err}"
    );
}

#[test]
fn broken_tokenizer_files_are_named() {
    let tmp = copy_clip();
    let json = tmp.path().join("tokenizer.json");
    std::fs::write(&json, "{\"model\": {\"type\": \"BPE\", \"vocab\": 3}}").unwrap();
    let err = ClipTokenizer::from_dir(tmp.path()).unwrap_err();
    assert!(matches!(err, VitError::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    let err = ZeroShotModel::load_dir(tmp.path()).unwrap_err();
    assert!(matches!(err, VitError::Tokenizer { .. }), "{err}");
    std::fs::write(&json, [0xffu8, 0xfe, 0x00]).unwrap();
    assert!(matches!(
        ClipTokenizer::from_file(&json),
        Err(VitError::Tokenizer { .. })
    ));

    // No tokenizer at all.
    std::fs::remove_file(&json).unwrap();
    let err = ClipTokenizer::from_dir(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("vocab.json"), "{err}");

    // vocab.json + merges.txt that do not parse.
    let vocab = write(tmp.path(), "vocab.json", "[1, 2]");
    let merges = write(tmp.path(), "merges.txt", "#version: 0.2\na b\n");
    let err = ClipTokenizer::from_dir(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("vocab.json"), "{err}");
    write(
        tmp.path(),
        "vocab.json",
        r#"{"a": 0, "b": 1, "ab": 2, "<|startoftext|>": 3, "<|endoftext|>": 4}"#,
    );
    write(tmp.path(), "merges.txt", "#version: 0.2\na b c\n");
    let err = ClipTokenizer::from_vocab_merges_files(&vocab, &merges).unwrap_err();
    assert!(
        err.to_string().contains("merges.txt") && err.to_string().contains("line 2"),
        "{err}"
    );
    // A vocabulary without CLIP's special tokens.
    write(tmp.path(), "vocab.json", r#"{"a": 0, "b": 1, "ab": 2}"#);
    write(tmp.path(), "merges.txt", "a b\n");
    let err = ClipTokenizer::from_vocab_merges_files(&vocab, &merges).unwrap_err();
    assert!(err.to_string().contains("<|startoftext|>"), "{err}");
    // Not CLIP's BPE file.
    let err = ClipTokenizer::from_bpe_file(&merges).unwrap_err();
    assert!(matches!(err, VitError::Tokenizer { .. }), "{err}");
    let gz = tmp.path().join("bad.gz");
    std::fs::write(&gz, [0x1fu8, 0x8b, b'g', b'a', b'r', b'b']).unwrap();
    assert!(matches!(
        ClipTokenizer::from_bpe_file(&gz),
        Err(VitError::Tokenizer { .. })
    ));
}

#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_refused() {
    let dir = fixture("clip_text_tiny");
    let real =
        ClipTokenizer::from_bpe_file(&fixture("clip_bpe").join("bpe_simple_vocab_16e6.txt.gz"))
            .unwrap();
    let err = ZeroShotModel::load_dir_with(&dir, Some(real)).unwrap_err();
    assert!(matches!(err, VitError::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("1014"), "{err}");
}
