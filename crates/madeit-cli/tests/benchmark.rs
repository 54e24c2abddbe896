//! `madeit run --benchmark` and `madeit benchmark check` on the fixture benchmark of
//! `scripts/benchmark_fixture.py` (fixtures/benchmark/): a random CLIPModel in the Hugging
//! Face cache layout, three random fine-tuned vision towers (bare and `vision_model.`
//! names), an image folder and `datasets` Parquet files (with and without ClassLabel
//! names), heads from a file, from class names with templates and from a built-in task.
//! The accuracy matrices are compared with `reference.json`, which the script computed with
//! transformers the FusionBench way; every bad input of the issue gets a clear error naming
//! the file before the run starts, and leaves nothing behind.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use common::{
    assert_clean_failure, assert_contains_all, assert_success, random_tower, run, save_tower,
    stderr,
};
use madeit::eval::ExperimentResults;
use madeit::vit::ClipVisionConfig;

/// The checked-in fixture.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/benchmark")
}

/// A copy of the fixture in a temporary folder (for variants with a bad input).
fn copy_fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("bench");
    copy_dir(&fixture(), &dst);
    (tmp, dst)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "`{from}` not in {}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

#[derive(Debug, serde::Deserialize)]
struct Reference {
    tasks: Vec<String>,
    order: Vec<String>,
    pretrained: Vec<f64>,
    finetuned: Vec<f64>,
    matrix: Vec<Vec<Option<f64>>>,
    test_images: Vec<usize>,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixture().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Nothing of a refused run is left: no output folder, no staging folder.
fn assert_nothing_written(out: &Path) {
    assert!(!out.exists(), "{} was written", out.display());
    let parent = out.parent().unwrap();
    if parent.exists() {
        for e in std::fs::read_dir(parent).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains("madeit-partial"),
                "staging folder {name} left"
            );
        }
    }
}

#[test]
fn the_fixture_benchmark_matches_the_fusionbench_way_reference() {
    let want = reference();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let bench = fixture().join("benchmark.toml");
    let o = run(&[
        &"run",
        &"--benchmark",
        &bench,
        &"--methods",
        &"task_arithmetic",
        &"--seeds",
        &"42",
        &"--test-images",
        &"all",
        &"--out",
        &out,
        &"-q",
    ]);
    let err = assert_success(&o);
    assert!(
        err.contains("head of alpha: made from the pretrained CLIP's text tower"),
        "{err}"
    );
    assert!(err.contains("head of beta: copied from its file"), "{err}");
    let results = ExperimentResults::load_json(&out.join("results.json")).unwrap();
    assert_eq!(results.benchmark.tasks, want.tasks);
    assert_eq!(results.benchmark.test_images, want.test_images);
    assert_eq!(results.benchmark.file.as_deref(), Some(bench.as_path()));
    // Accuracies are counts over a few dozen images: equal to the last bit.
    assert_eq!(results.references.pretrained, want.pretrained);
    assert_eq!(results.references.finetuned, want.finetuned);
    let stream = &results.streams[0];
    assert_eq!(stream.order, want.order);
    let n = want.tasks.len();
    for i in 0..n {
        for j in 0..n {
            assert_eq!(
                stream.matrix.get(i, j).unwrap(),
                want.matrix[i][j],
                "entry ({i}, {j}) of the task-arithmetic matrix"
            );
        }
    }
    // The heads are in the run folder, one per task.
    for t in &want.tasks {
        assert!(out.join("heads").join(format!("{t}.safetensors")).is_file());
    }
    // The fixture's inputs are untouched by the run (its folders are read-only inputs).
    assert!(!fixture().join("heads/alpha.safetensors").exists());
}

#[test]
fn every_method_runs_on_the_benchmark_and_a_run_resumes_with_its_heads() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let bench = fixture().join("benchmark.toml");
    let methods =
        "swa,task_arithmetic,ties,magmax,opcm,made_it,c_lw_adamerging,c_lora_wemoe,mingle";
    let args = |extra: &'static str| -> Vec<Box<dyn AsRef<std::ffi::OsStr>>> {
        let mut v: Vec<Box<dyn AsRef<std::ffi::OsStr>>> = vec![
            Box::new("run"),
            Box::new("--benchmark"),
            Box::new(bench.clone()),
            Box::new("--methods"),
            Box::new(methods),
            Box::new("--seeds"),
            Box::new("42"),
            Box::new("--eval"),
            Box::new("final"),
            Box::new("--out"),
            Box::new(out.clone()),
            Box::new("--no-image-check"),
        ];
        if !extra.is_empty() {
            v.push(Box::new(extra));
        }
        v
    };
    let run_with = |extra: &'static str| {
        let a = args(extra);
        let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = a.iter().map(|b| b.as_ref()).collect();
        run(&refs)
    };
    let err = assert_success(&run_with("--save-state"));
    assert!(!err.contains("image and"), "{err}");
    let results = ExperimentResults::load_json(&out.join("results.json")).unwrap();
    assert_eq!(results.summaries.len(), 9);
    for s in &results.summaries {
        let acc = s.orders.acc.mean;
        assert!((0.0..=1.0).contains(&acc), "{}: {acc}", s.label);
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    for row in [
        "MINGLE",
        "C. LW AdaMerging",
        "C. LoRA-WEMoE",
        "MADE-IT",
        "OPCM",
    ] {
        assert!(md.contains(row), "{row} missing from results.md");
    }
    // Resuming the complete run reuses the heads of the run folder and gives the same numbers.
    let err = assert_success(&run_with("--resume"));
    assert!(
        err.contains("head of alpha: reused from the run folder"),
        "{err}"
    );
    let again = ExperimentResults::load_json(&out.join("results.json")).unwrap();
    for (a, b) in results.streams.iter().zip(&again.streams) {
        assert_eq!(a.matrix, b.matrix, "{}", a.label);
    }
}

#[test]
fn benchmark_check_reads_everything_and_prints_the_tasks() {
    let bench = fixture().join("benchmark.toml");
    let o = run(&[&"benchmark", &"check", &bench, &"-q"]);
    let err = assert_success(&o);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(err.contains("ok:"), "{err}");
    // 24 + 12 alpha images, 32 + 16 beta images, 16 gamma images (its seeds are its test split).
    assert!(err.contains("(100 images decoded"), "{err}");
    assert!(table.contains("| 1 | alpha |"), "{table}");
    assert!(table.contains("(parquet)"), "{table}");
    assert!(table.contains("(folder)"), "{table}");
    assert!(table.contains("zero-shot, 1 template(s)"), "{table}");
    let o = run(&[&"benchmark", &"check", &bench, &"--no-images", &"-q"]);
    let err = assert_success(&o);
    assert!(err.contains("(0 images decoded"), "{err}");
}

/// Runs a refused `madeit run --benchmark` on a copy of the fixture with `change` applied and
/// returns the error, after checking that nothing was written.
fn refused(change: impl FnOnce(&Path)) -> String {
    let (tmp, dir) = copy_fixture();
    change(&dir);
    let out = tmp.path().join("runs").join("out");
    let o = run(&[
        &"run",
        &"--benchmark",
        &dir.join("benchmark.toml"),
        &"--methods",
        &"swa,mingle",
        &"--seeds",
        &"42",
        &"--out",
        &out,
        &"-q",
    ]);
    let err = assert_clean_failure(&o);
    assert_nothing_written(&out);
    // `madeit benchmark check` refuses the same input.
    let o = run(&[&"benchmark", &"check", &dir.join("benchmark.toml"), &"-q"]);
    let check = assert_clean_failure(&o);
    assert!(check.contains("benchmark.toml"), "{check}");
    err
}

/// [`refused`] with one edit of the copy's `benchmark.toml` (`from` becomes `to`); asserts
/// that the error names every one of `wanted`.
fn refused_edit(from: &str, to: &str, wanted: &[&str]) {
    let err = refused(|d| edit(&d.join("benchmark.toml"), from, to));
    assert_contains_all(&err, wanted);
}

/// The `dataset` line of task `beta` in the fixture's `benchmark.toml`.
const BETA_DATASET: &str = "dataset = \"madeit/beta\"";

#[test]
fn an_image_that_does_not_decode_is_named() {
    let err = refused(|d| {
        std::fs::write(
            d.join("data/alpha/test/squares/test_010.jpg"),
            b"not a JPEG at all",
        )
        .unwrap();
    });
    assert_contains_all(&err, &["test_010.jpg", "cannot decode"]);
}

#[test]
fn a_truncated_image_in_a_parquet_row_is_named() {
    let row = "test-00000-of-00001.parquet, row 0 (test_0.jpg)";
    refused_edit(
        BETA_DATASET,
        "dataset = \"./bad/corrupt_image\"",
        &["corrupt_image", row, "cannot decode"],
    );
}

#[test]
fn a_label_outside_the_class_list_is_named() {
    refused_edit(
        BETA_DATASET,
        "dataset = \"./bad/label_out_of_range\"",
        &["label_out_of_range", "label 7"],
    );
}

#[test]
fn a_class_folder_with_no_images_is_named() {
    let err = refused(|d| {
        std::fs::create_dir_all(d.join("data/alpha/test/triangles")).unwrap();
    });
    assert_contains_all(&err, &["triangles", "holds no image"]);
}

#[test]
fn a_parquet_file_without_the_label_column_is_named() {
    refused_edit(
        "dataset = { path = \"gamma\", format = \"parquet\" }",
        "dataset = { path = \"./bad/no_label_column\", format = \"parquet\" }",
        &["no_label_column", "no column `label`"],
    );
}

#[test]
fn a_head_with_another_class_count_is_named() {
    refused_edit(
        "head = { classes = [\"circles\", \"squares\", \"stripes\"]",
        "head = { classes = [\"circles\", \"squares\", \"stripes\", \"dots\"]",
        &["task `alpha`", "the head has 4 classes", "has 3"],
    );
}

#[test]
fn two_tasks_with_one_name_are_refused() {
    refused_edit(
        "name = \"gamma\"",
        "name = \"alpha\"",
        &["benchmark.toml", "two tasks are named `alpha`"],
    );
}

#[test]
fn a_finetuned_tower_of_another_shape_is_named() {
    // Another width: the weights do not fit.
    let err = refused(|d| {
        let ft = d.join("models/finetuned/gamma");
        std::fs::remove_dir_all(&ft).unwrap();
        let mut cfg =
            ClipVisionConfig::from_file(&d.join("models/finetuned/alpha/config.json")).unwrap();
        cfg.hidden_size = 16;
        cfg.intermediate_size = 32;
        save_tower(&ft, &cfg, &random_tower(&cfg, 3));
    });
    assert_contains_all(&err, &["finetuned/gamma", "hidden_size"]);
    // Same shapes, another activation: the configuration is named.
    let err = refused(|d| {
        edit(
            &d.join("models/finetuned/beta/config.json"),
            "\"quick_gelu\"",
            "\"gelu\"",
        );
    });
    assert_contains_all(&err, &["finetuned/beta/config.json", "hidden_act"]);
}

#[test]
fn missing_folders_are_listed_with_where_they_were_looked_for() {
    let err = refused(|d| {
        std::fs::remove_dir_all(d.join("data/datasets--madeit--beta")).unwrap();
    });
    let wanted = [
        "task `beta`",
        "`madeit/beta` not found",
        "datasets--madeit--beta",
    ];
    assert_contains_all(&err, &wanted);
}

/// The models and datasets of the TA8 preset, laid out as the Hugging Face cache: the
/// fixture's tiny CLIP as `openai/clip-vit-base-patch32`, a fine-tuned tower per task as
/// `tanganke/clip-vit-base-patch32_<task>`, and a two-image test file per dataset with the
/// task's number of classes.
fn ta8_layout(root: &Path) -> (PathBuf, PathBuf) {
    let models = root.join("hub");
    let data = root.join("data");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let clip = fixture().join(format!("models/models--madeit--clip-tiny/snapshots/{rev}"));
    let snap = |base: &Path, repo: &str| base.join(repo).join("snapshots").join(rev);
    copy_dir(
        &clip,
        &snap(&models, "models--openai--clip-vit-base-patch32"),
    );
    let datasets = [
        ("sun397", "tanganke--sun397"),
        ("stanford-cars", "tanganke--stanford_cars"),
        ("resisc45", "tanganke--resisc45"),
        ("eurosat", "tanganke--eurosat"),
        ("svhn", "ufldl-stanford--svhn"),
        ("gtsrb", "tanganke--gtsrb"),
        ("mnist", "ylecun--mnist"),
        ("dtd", "tanganke--dtd"),
    ];
    for (task, repo) in datasets {
        copy_dir(
            &fixture().join("models/finetuned/alpha"),
            &snap(
                &models,
                &format!("models--tanganke--clip-vit-base-patch32_{task}"),
            ),
        );
        copy_dir(
            &fixture().join("ta8").join(task),
            &snap(&data, &format!("datasets--{repo}")),
        );
    }
    // svhn has a second configuration: `config = "cropped_digits"` picks the right one.
    copy_dir(
        &fixture().join("ta8/svhn/cropped_digits"),
        &snap(&data, "datasets--ufldl-stanford--svhn").join("full_numbers"),
    );
    (models, data)
}

#[test]
fn the_ta8_preset_checks_out_on_a_hugging_face_cache_and_names_missing_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let (models, data) = ta8_layout(tmp.path());
    let check_ta8 = |extra: &[&str]| {
        let mut c = common::madeit();
        c.args(["benchmark", "check", "ta8", "--models-root"])
            .arg(&models);
        c.arg("--data-root").arg(&data).args(extra);
        c.output().unwrap()
    };
    let o = check_ta8(&["-q"]);
    let err = assert_success(&o);
    assert!(err.contains("ok: <preset ta8>"), "{err}");
    let table = String::from_utf8_lossy(&o.stdout);
    for task in ["sun397", "stanford-cars", "svhn", "mnist", "dtd"] {
        assert!(table.contains(&format!("| {task} |")), "{table}");
    }
    assert!(table.contains("| 397 |"), "{table}");

    // A missing checkpoint folder: named, with where it was looked for.
    std::fs::remove_dir_all(models.join("models--tanganke--clip-vit-base-patch32_gtsrb")).unwrap();
    let err = assert_clean_failure(&check_ta8(&[]));
    let wanted = [
        "task `gtsrb`",
        "tanganke/clip-vit-base-patch32_gtsrb` not found",
        "models--tanganke--clip-vit-base-patch32_gtsrb",
    ];
    assert_contains_all(&err, &wanted);

    // No roots at all, and no Hugging Face cache: the pretrained model is not found.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = common::madeit()
        .args(["benchmark", "check", "ta8"])
        .env("HOME", &empty)
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_CACHE")
        .current_dir(&empty)
        .output()
        .unwrap();
    let err = assert_clean_failure(&o);
    assert!(
        err.contains("`pretrained`: `openai/clip-vit-base-patch32` not found"),
        "{err}"
    );
    assert!(err.contains(".cache/huggingface/hub"), "{err}");
}

#[test]
fn presets_are_listed_and_written_for_editing() {
    let o = run(&[&"benchmark", &"presets"]);
    assert_success(&o);
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(
        list.contains(
            "ta8     8 tasks: sun397, stanford-cars, resisc45, eurosat, svhn, gtsrb, mnist, dtd"
        ),
        "{list}"
    );
    assert!(list.contains("tall20  20 tasks"), "{list}");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mine.toml");
    assert_success(&run(&[&"benchmark", &"init", &"tall14", &"--out", &out]));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("name = \"TALL14\""));
    // Not over an existing file without --force.
    let o = run(&[&"benchmark", &"init", &"tall14", &"--out", &out]);
    assert!(assert_clean_failure(&o).contains("--force"));
    let _ = stderr(&o);
}

#[test]
fn embed_reads_image_files_as_the_benchmark_does() {
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let clip = fixture().join(format!("models/models--madeit--clip-tiny/snapshots/{rev}"));
    let folder = fixture().join("data/alpha/test");
    let mut images: Vec<PathBuf> = Vec::new();
    for class in ["circles", "squares", "stripes"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(folder.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        images.extend(files.into_iter().take(2));
    }
    let tmp = tempfile::tempdir().unwrap();
    let (px, out, again) = (
        tmp.path().join("px.safetensors"),
        tmp.path().join("out.safetensors"),
        tmp.path().join("again.safetensors"),
    );
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"embed", &"--model", &clip, &"--images"];
    for i in &images {
        args.push(i);
    }
    args.extend([
        &"--pixels-out" as &dyn AsRef<std::ffi::OsStr>,
        &px,
        &"--out",
        &out,
    ]);
    assert_success(&run(&args));
    let pixels = madeit::params::ParamDict::load(&px).unwrap();
    assert_eq!(pixels.get("pixel_values").unwrap().shape(), &[6, 3, 32, 32]);
    // The written pixels embed to the same vectors.
    assert_success(&run(&[
        &"embed",
        &"--model",
        &clip,
        &"--pixels",
        &px,
        &"--out",
        &again,
    ]));
    let a = madeit::params::ParamDict::load(&out).unwrap();
    let b = madeit::params::ParamDict::load(&again).unwrap();
    assert_eq!(
        a.get("image_embeds").unwrap().data(),
        b.get("image_embeds").unwrap().data()
    );
}
