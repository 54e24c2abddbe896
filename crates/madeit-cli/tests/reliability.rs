//! Regression tests of the defects a careful user found: nothing a user owns is lost, every
//! bad input gets a clear error, and merges do not depend on the number of threads.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use madeit::params::fs::MARKER_FILE;
use madeit::params::{ParamDict, Tensor};
use madeit::vit::{CONFIG_FILE, ClipVisionConfig, WEIGHTS_FILE};

fn tiny() -> ClipVisionConfig {
    ClipVisionConfig::tiny()
}

/// A temporary folder holding a pretrained tiny tower and `n` fine-tuned ones.
fn towers(n: usize) -> (tempfile::TempDir, Towers) {
    let tmp = tempfile::tempdir().unwrap();
    let t = Towers::new(tmp.path(), &tiny(), n);
    (tmp, t)
}

/// As [`towers`] with two fine-tuned towers, merged by `method` (which must succeed) into
/// the folder's `name`, the path of which comes back too.
fn two_towers_merged(method: &str, name: &str) -> (tempfile::TempDir, Towers, PathBuf) {
    let (tmp, t) = towers(2);
    let out = tmp.path().join(name);
    assert_success(&t.merge(method, &out));
    (tmp, t, out)
}

/// Defect 1: `--out` equal to an input destroyed it, with exit code 0.
#[test]
fn out_equal_to_an_input_is_refused_and_the_input_is_untouched() {
    let (tmp, t) = towers(2);
    let before = tree(tmp.path());
    for out in [&t.pretrained, &t.finetuned[0], &t.finetuned[1]] {
        let err = assert_clean_failure(&t.merge("swa", out));
        assert!(err.contains("refusing to write"), "{err}");
    }
    #[cfg(unix)]
    {
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&t.pretrained, &link).unwrap();
        let err = assert_clean_failure(&t.merge("swa", &link));
        assert!(err.contains("refusing to write"), "{err}");
        fs::remove_file(&link).unwrap();
    }
    // A folder that holds the inputs is refused too.
    assert_clean_failure(&t.merge("swa", tmp.path()));
    assert_same_tree(&tree(tmp.path()), &before, "the inputs");
}

/// Defects 2 and 3: outputs were written file by file, and stale files of an earlier
/// result were mixed in.
#[test]
fn a_new_merge_replaces_an_earlier_result_as_a_whole() {
    let (tmp, t, out) = two_towers_merged("made_it", "merged");
    assert!(out.join("experts").is_dir() && out.join("tasks.json").is_file());
    assert_success(&t.merge("swa", &out));
    assert_eq!(
        entries(&out),
        vec![
            MARKER_FILE.to_owned(),
            CONFIG_FILE.to_owned(),
            WEIGHTS_FILE.to_owned()
        ],
        "no expert store of the earlier made_it result survives"
    );
    assert_eq!(
        entries(tmp.path()),
        vec!["merged", "pretrained", "task1", "task2"],
        "no staging or temporary file is left"
    );
    // A merge that fails after the output was prepared leaves the earlier result intact.
    let before = tree(&out);
    let bad = tmp.path().join("task3");
    fs::create_dir(&bad).unwrap();
    fs::write(bad.join(WEIGHTS_FILE), b"not safetensors at all").unwrap();
    let mut args = t.merge_args("task_arithmetic", &out);
    args.insert(args.len() - 2, bad.clone().into_os_string());
    let o = madeit().args(&args).output().unwrap();
    let err = assert_clean_failure(&o);
    assert!(err.contains("task3"), "{err}");
    assert_same_tree(&tree(&out), &before, "the earlier result");
    // An inspect of the output still works.
    assert_success(&run(&[&"inspect", &"--model", &out]));
}

/// Refuse to write into a folder that is not an earlier `madeit merge` output.
#[test]
fn a_foreign_folder_is_replaced_only_with_force() {
    let (tmp, t) = towers(1);
    let mine = tmp.path().join("mine");
    fs::create_dir(&mine).unwrap();
    fs::write(mine.join("notes.txt"), "keep me").unwrap();
    let err = assert_clean_failure(&t.merge("swa", &mine));
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read(mine.join("notes.txt")).unwrap(), b"keep me");
    let mut args = t.merge_args("swa", &mine);
    args.push("--force".into());
    assert_success(&madeit().args(&args).output().unwrap());
    assert!(!mine.join("notes.txt").exists());
    assert!(mine.join(WEIGHTS_FILE).is_file());
}

/// Defect 4: config.json was not validated by `merge`.
#[test]
fn config_files_are_validated_before_any_work() {
    let (tmp, t) = towers(2);
    let out = tmp.path().join("out");
    let cfg = t.pretrained.join(CONFIG_FILE);
    let good = fs::read_to_string(&cfg).unwrap();

    fs::write(&cfg, "{ not json").unwrap();
    let err = assert_clean_failure(&t.merge("swa", &out));
    assert!(err.contains("config.json"), "{err}");
    assert!(!out.exists());

    let mut wrong = tiny();
    wrong.hidden_size = 128;
    wrong.intermediate_size = 256;
    fs::write(&cfg, wrong.to_json_string().unwrap()).unwrap();
    let err = assert_clean_failure(&t.merge("swa", &out));
    assert!(err.contains("does not describe the weights"), "{err}");
    assert!(!out.exists());
    fs::write(&cfg, &good).unwrap();

    // A fine-tuned folder's config.json is read too.
    let ft_cfg = t.finetuned[1].join(CONFIG_FILE);
    let mut other = tiny();
    other.layer_norm_eps = 1e-6;
    fs::write(&ft_cfg, other.to_json_string().unwrap()).unwrap();
    let err = assert_clean_failure(&t.merge("swa", &out));
    assert!(err.contains("another architecture"), "{err}");
    fs::write(&ft_cfg, "[]").unwrap();
    let err = assert_clean_failure(&t.merge("swa", &out));
    assert!(err.contains("task2"), "{err}");
    assert!(!out.exists());
}

/// Defect 5: `embed --batch-size 18014398509481984` panicked on an overflow.
#[test]
fn a_huge_batch_size_does_not_overflow() {
    let (tmp, t) = towers(0);
    let c = tiny();
    let n = 3;
    let pixels = tmp.path().join("px.safetensors");
    write_pixels(&pixels, &c, n, 5);
    let out = tmp.path().join("emb.safetensors");
    let huge = ["--batch-size", "18014398509481984"];
    assert_success(&embed(&t.pretrained, &pixels, &out, &huge));
    let emb = ParamDict::load(&out).unwrap();
    assert_eq!(
        emb.get("image_embeds").unwrap().shape(),
        &[n, c.projection_dim]
    );
    // The same embeddings in batches of one.
    let out1 = tmp.path().join("emb1.safetensors");
    assert_success(&embed(
        &t.pretrained,
        &pixels,
        &out1,
        &["--batch-size", "1"],
    ));
    let a = emb.get("image_embeds").unwrap().data().to_vec();
    let b = ParamDict::load(&out1).unwrap();
    for (x, y) in a.iter().zip(b.get("image_embeds").unwrap().data()) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    // Writing over the input is refused.
    let err = assert_clean_failure(&embed(&t.pretrained, &pixels, &pixels, &[]));
    assert!(err.contains("refusing to write"), "{err}");
}

/// Defect 6: a hostile config.json exhausted memory or printed an 80 MB error.
#[test]
fn hostile_sizes_in_config_json_fail_fast_with_a_short_message() {
    let (tmp, t) = towers(1);
    let cfg = t.pretrained.join(CONFIG_FILE);
    let good: serde_json::Value = serde_json::from_str(&fs::read_to_string(&cfg).unwrap()).unwrap();
    for (field, value) in [
        ("num_hidden_layers", serde_json::json!(1_000_000_000_000u64)),
        ("num_hidden_layers", serde_json::json!(100_000)),
        ("hidden_size", serde_json::json!(1u64 << 40)),
        ("image_size", serde_json::json!(1u64 << 31)),
        ("intermediate_size", serde_json::json!(-1)),
    ] {
        let mut v = good.clone();
        v[field] = value;
        fs::write(&cfg, v.to_string()).unwrap();
        for o in [
            t.merge("swa", &tmp.path().join("out")),
            run(&[&"inspect", &"--model", &t.pretrained]),
        ] {
            let err = assert_clean_failure(&o);
            assert!(err.contains(field), "{field}: {err}");
            assert!(err.len() < 2_000, "{field}: {} bytes of error", err.len());
        }
    }
    // 40 layers that the weights do not hold: a short list of what is missing.
    let mut v = good.clone();
    v["num_hidden_layers"] = serde_json::json!(40);
    fs::write(&cfg, v.to_string()).unwrap();
    let err = assert_clean_failure(&run(&[&"inspect", &"--model", &t.pretrained]));
    assert!(err.contains("more"), "{err}");
    assert!(err.len() < 4_000, "{} bytes of error", err.len());
}

/// Defect 7: made_it's output depended on the number of threads.
#[test]
fn made_it_is_identical_with_one_and_two_threads() {
    let tmp = tempfile::tempdir().unwrap();
    // Wide enough for the decompositions to be split between threads.
    let config = ClipVisionConfig {
        hidden_size: 256,
        intermediate_size: 1024,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        image_size: 32,
        patch_size: 16,
        projection_dim: 32,
        ..ClipVisionConfig::tiny()
    };
    let t = Towers::new(tmp.path(), &config, 3);
    let mut trees = Vec::new();
    for threads in ["1", "2"] {
        let out = tmp.path().join(format!("out{threads}"));
        let o = madeit()
            .args(t.merge_args("made_it", &out))
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert_success(&o);
        trees.push(tree(&out));
    }
    assert!(trees[0].contains_key("experts/manifest.json"));
    assert_same_tree(&trees[0], &trees[1], "1 thread against 2");
}

/// Smaller ones: causes printed twice, a NaN in the pretrained model blamed on a fine-tuned
/// one, `--out` errors blaming the source, PyTorch files without a hint.
#[test]
fn messages_name_the_right_file_once() {
    let (tmp, t) = towers(2);
    let out = tmp.path().join("out");

    // A missing file: the OS message once.
    let nowhere = tmp.path().join("nowhere.safetensors");
    let err = assert_clean_failure(&merge_one("swa", &nowhere, &t.finetuned[0], &out));
    assert_eq!(err.matches("No such file").count(), 1, "{err}");

    // A NaN in the pretrained weights names the pretrained model.
    let w = t.pretrained.join(WEIGHTS_FILE);
    let good = fs::read(&w).unwrap();
    let mut p = ParamDict::load(&w).unwrap();
    let name = "encoder.layers.0.mlp.fc1.weight";
    let mut data = p.get(name).unwrap().data().to_vec();
    data[3] = f32::NAN;
    let shape = p.get(name).unwrap().shape().to_vec();
    p.insert(name, Tensor::new(shape, data).unwrap());
    p.save(&w).unwrap();
    let err = assert_clean_failure(&t.merge("swa", &out));
    assert!(err.contains("pretrained") && err.contains(name), "{err}");
    assert!(!err.contains("absorbing"), "{err}");
    assert_eq!(err.matches("NaN").count(), 1, "{err}");
    fs::write(&w, &good).unwrap();

    // An output whose parent is a file names the output, not an input.
    let file = tmp.path().join("file");
    fs::write(&file, "x").unwrap();
    let err = assert_clean_failure(&t.merge("swa", &file.join("out")));
    assert!(err.contains("file") && !err.contains("pretrained"), "{err}");

    // PyTorch pickles get a hint.
    let bin = tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    fs::copy(t.pretrained.join(CONFIG_FILE), bin.join(CONFIG_FILE)).unwrap();
    fs::write(bin.join("pytorch_model.bin"), b"PK\x03\x04zip").unwrap();
    let err = assert_clean_failure(&merge_one("swa", &t.pretrained, &bin, &out));
    assert!(
        err.contains("pytorch_model.bin") && err.contains("convert"),
        "{err}"
    );
    let renamed = tmp.path().join("pickle.safetensors");
    fs::write(&renamed, b"\x80\x04\x95\x00\x00\x00\x00\x00").unwrap();
    let err = assert_clean_failure(&merge_one("swa", &t.pretrained, &renamed, &out));
    assert!(err.contains("pickle"), "{err}");
}

/// A sharded checkpoint (as Hugging Face writes large models) merges like a single file.
#[test]
fn sharded_checkpoints_merge_like_single_files() {
    let (tmp, t, single) = two_towers_merged("opcm", "single");

    let sharded = tmp.path().join("sharded-pre");
    fs::create_dir(&sharded).unwrap();
    fs::copy(t.pretrained.join(CONFIG_FILE), sharded.join(CONFIG_FILE)).unwrap();
    let whole = ParamDict::load(&t.pretrained.join(WEIGHTS_FILE)).unwrap();
    let mut parts = [ParamDict::new(), ParamDict::new()];
    let mut map = serde_json::Map::new();
    for (i, (name, tensor)) in whole.iter().enumerate() {
        let k = usize::from(i % 3 == 0);
        parts[k].insert(name, tensor.clone());
        map.insert(
            name.to_owned(),
            format!("model-0000{}-of-00002.safetensors", k + 1).into(),
        );
    }
    for (k, part) in parts.iter().enumerate() {
        part.save(&sharded.join(format!("model-0000{}-of-00002.safetensors", k + 1)))
            .unwrap();
    }
    fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let out = tmp.path().join("from-shards");
    let mut args = t.merge_args("opcm", &out);
    let i = args.iter().position(|a| a == "--pretrained").unwrap();
    args[i + 1] = sharded.clone().into_os_string();
    assert_success(&madeit().args(&args).output().unwrap());
    let a = ParamDict::load(&single.join(WEIGHTS_FILE)).unwrap();
    let b = ParamDict::load(&out.join(WEIGHTS_FILE)).unwrap();
    assert!(a == b, "the merge of the sharded checkpoint differs");
    assert_success(&run(&[&"inspect", &"--model", &sharded]));
}

/// `embed` on a MADE-IT result routes each image through its experts (it used to ignore
/// `experts/` and return the pretrained embeddings).
#[test]
fn embed_on_an_expert_store_does_not_silently_ignore_it() {
    let (tmp, t, out) = two_towers_merged("made_it", "made_it");
    let pixels = tmp.path().join("px.safetensors");
    write_pixels(&pixels, &tiny(), 2, 9);
    let emb = |model: &Path, name: &str| {
        let f = tmp.path().join(name);
        (embed(model, &pixels, &f, &[]), f)
    };
    let (o, routed) = emb(&out, "routed.safetensors");
    let err = assert_success(&o);
    assert!(err.contains("routed"), "{err}");
    let (o, plain) = emb(&t.pretrained, "plain.safetensors");
    assert_success(&o);
    let a = ParamDict::load(&routed).unwrap();
    let b = ParamDict::load(&plain).unwrap();
    assert_ne!(
        a.get("image_embeds").unwrap().data(),
        b.get("image_embeds").unwrap().data(),
        "the routed embeddings equal the pretrained ones"
    );
}

/// The next checkpoint is read while the current one is absorbed: a broken checkpoint in
/// the middle of the list still fails after the steps before it, names that file once and
/// leaves no output; a broken pretrained model fails while a checkpoint is being read
/// ahead, and the process still exits cleanly.
#[test]
fn read_ahead_keeps_errors_in_order_and_exits_cleanly() {
    let (tmp, t) = towers(3);
    let out = tmp.path().join("out");
    let w = t.finetuned[1].join(WEIGHTS_FILE);
    let good = fs::read(&w).unwrap();
    fs::write(&w, &good[..good.len() / 2]).unwrap();
    let err = assert_clean_failure(&t.merge("made_it", &out));
    assert!(err.contains("step 1:"), "the first step runs first: {err}");
    assert!(!err.contains("step 2:"), "{err}");
    assert_eq!(err.matches(&*w.display().to_string()).count(), 1, "{err}");
    assert!(!out.exists(), "nothing is written on failure");
    fs::write(&w, &good).unwrap();

    let p = t.pretrained.join(WEIGHTS_FILE);
    let good = fs::read(&p).unwrap();
    fs::write(&p, b"not a safetensors file").unwrap();
    let err = assert_clean_failure(&t.merge("made_it", &out));
    assert!(err.contains("pretrained"), "{err}");
    assert!(!err.contains("step 1:"), "{err}");
    fs::write(&p, &good).unwrap();
    assert_success(&t.merge("made_it", &out));
}
