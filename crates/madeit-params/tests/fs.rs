//! Output folders committed as a unit, refusal to write over inputs, and checkpoint
//! folders (single file, sharded, other formats).

#![allow(clippy::unwrap_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use madeit_params::fs::{MARKER_FILE, OutputDir, check_not_input, write_atomic};
use madeit_params::{INDEX_FILE, ParamDict, ParamsError, Tensor, WEIGHTS_FILE};

fn dict(seed: f32) -> ParamDict {
    let mut d = ParamDict::new();
    d.insert(
        "a.weight",
        Tensor::new(vec![2, 3], (0..6).map(|i| seed + i as f32).collect()).unwrap(),
    );
    d.insert("a.bias", Tensor::new(vec![2], vec![seed, -seed]).unwrap());
    d.insert("b", Tensor::new(vec![4], vec![seed; 4]).unwrap());
    d
}

/// Every file under `dir`, relative path -> bytes.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Prepares the output `target` of `command`, writes `contents` to `rel` in it and commits it.
fn commit_with_file(target: &Path, command: &str, rel: &str, contents: &str) {
    let out = OutputDir::prepare(target, command, false).unwrap();
    let file = out.path().join(rel);
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(file, contents).unwrap();
    out.commit().unwrap();
}

/// A temporary folder holding the committed `merge` output `out` with the one file `f`
/// (holding `contents`): the folder, the output's path and the output's [`tree`].
fn committed_merge_output(contents: &str) -> (tempfile::TempDir, PathBuf, Vec<(String, Vec<u8>)>) {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    commit_with_file(&target, "merge", "f", contents);
    let before = tree(&target);
    (tmp, target, before)
}

#[test]
fn a_committed_folder_replaces_the_old_one_as_a_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    let first = OutputDir::prepare(&target, "merge", false).unwrap();
    fs::write(first.path().join("old.txt"), "old").unwrap();
    fs::create_dir(first.path().join("experts")).unwrap();
    fs::write(first.path().join("experts/x"), "x").unwrap();
    assert!(!target.exists(), "nothing appears before the commit");
    first.commit().unwrap();
    assert!(target.join("old.txt").is_file());
    assert!(target.join(MARKER_FILE).is_file());

    let second = OutputDir::prepare(&target, "merge", false).unwrap();
    fs::write(second.path().join("new.txt"), "new").unwrap();
    // Until the commit, the old folder is untouched.
    assert!(target.join("old.txt").is_file());
    second.commit().unwrap();
    assert_eq!(
        entries(&target),
        vec![MARKER_FILE.to_owned(), "new.txt".to_owned()],
        "no stale file of the earlier output survives"
    );
    assert_eq!(
        entries(tmp.path()),
        vec!["out".to_owned()],
        "no staging folder is left"
    );
}

#[test]
fn dropping_without_commit_leaves_the_old_output_and_no_leftover() {
    let (tmp, target, before) = committed_merge_output("1");
    {
        let failed = OutputDir::prepare(&target, "merge", false).unwrap();
        fs::write(failed.path().join("f"), "2").unwrap();
    }
    assert_eq!(tree(&target), before);
    assert_eq!(entries(tmp.path()), vec!["out".to_owned()]);
}

#[test]
fn a_leftover_staging_folder_is_removed_or_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("run");
    let mut killed = OutputDir::prepare_resumable(&target, "run", false).unwrap();
    killed.keep_on_drop();
    fs::create_dir(killed.path().join("state")).unwrap();
    fs::write(killed.path().join("state/step1"), "s1").unwrap();
    let staging = killed.path().to_path_buf();
    drop(killed);
    assert!(staging.join("state/step1").is_file(), "kept for resuming");

    let resumed = OutputDir::prepare_resumable(&target, "run", false).unwrap();
    assert_eq!(fs::read(resumed.path().join("state/step1")).unwrap(), b"s1");
    drop(resumed);
    let fresh = OutputDir::prepare(&target, "run", false).unwrap();
    assert!(
        !fresh.path().join("state").exists(),
        "a new run starts from an empty folder"
    );
    drop(fresh);
    assert!(!staging.exists());
}

#[test]
fn resuming_a_complete_output_starts_from_a_copy_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("run");
    commit_with_file(&target, "run", "state/s", "done");
    let again = OutputDir::prepare_resumable(&target, "run", false).unwrap();
    assert_eq!(fs::read(again.path().join("state/s")).unwrap(), b"done");
    assert!(target.join("state/s").is_file(), "the original stays");
}

/// A valid file whose header length (640 = 0x280) starts like a pickle's magic is read as
/// safetensors.
fn assert_a_pickle_like_header_length_reads() {
    let header = r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = 640u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(8 + 640, b' ');
    bytes.extend_from_slice(&1.5f32.to_le_bytes());
    assert_eq!(&bytes[..2], &[0x80, 0x02]);
    let (d, _) = ParamDict::from_safetensors_bytes(&bytes).unwrap();
    assert_eq!(d.get("x").unwrap().data(), &[1.5]);
}

/// Creates the folder `parent/name` and returns its path.
fn new_dir(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    fs::create_dir(&dir).unwrap();
    dir
}

#[test]
fn foreign_folders_are_refused_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let mine = new_dir(tmp.path(), "photos");
    fs::write(mine.join("holiday.jpg"), "precious").unwrap();
    let err = OutputDir::prepare(&mine, "merge", false).unwrap_err();
    assert!(matches!(err, ParamsError::OutputRefused { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert!(mine.join("holiday.jpg").is_file());

    // An output of another command is refused too.
    let run = tmp.path().join("r");
    OutputDir::prepare(&run, "run", false)
        .unwrap()
        .commit()
        .unwrap();
    let err = OutputDir::prepare(&run, "merge", false).unwrap_err();
    assert!(err.to_string().contains("madeit run"), "{err}");

    // A file is refused.
    let file = tmp.path().join("file");
    fs::write(&file, "x").unwrap();
    assert!(OutputDir::prepare(&file, "merge", false).is_err());

    // Empty folders are fine, and --force replaces anything as a whole.
    assert_a_pickle_like_header_length_reads();
    let empty = new_dir(tmp.path(), "empty");
    OutputDir::prepare(&empty, "merge", false).unwrap();
    let forced = OutputDir::prepare(&mine, "merge", true).unwrap();
    fs::write(forced.path().join("model"), "m").unwrap();
    forced.commit().unwrap();
    assert_eq!(
        entries(&mine),
        vec![MARKER_FILE.to_owned(), "model".to_owned()]
    );
}

#[test]
fn a_second_writer_of_the_same_output_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    let first = OutputDir::prepare(&target, "merge", false).unwrap();
    let err = OutputDir::prepare(&target, "merge", false).unwrap_err();
    assert!(matches!(err, ParamsError::OutputBusy { .. }), "{err}");
    drop(first);
    OutputDir::prepare(&target, "merge", false).unwrap();
}

#[test]
fn an_old_folder_swapped_out_by_a_killed_commit_is_put_back() {
    // Where the exchange is not available the old folder is renamed to
    // `.<name>.madeit-old` first; a kill before the second rename leaves it there.
    let (tmp, target, before) = committed_merge_output("old");
    let old = tmp.path().join(".out.madeit-old");
    fs::rename(&target, &old).unwrap();
    let again = OutputDir::prepare(&target, "merge", false).unwrap();
    assert_eq!(tree(&target), before, "restored before anything else");
    assert!(!old.exists());
    drop(again);
}

#[test]
fn outputs_that_are_inputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let input = new_dir(tmp.path(), "pretrained");
    fs::write(input.join(WEIGHTS_FILE), "w").unwrap();
    let other = tmp.path().join("other");
    let is_input = |out: &Path| {
        matches!(
            check_not_input(out, &[&other, &input]),
            Err(ParamsError::OutputIsInput { .. })
        )
    };
    assert!(is_input(&input));
    assert!(is_input(&tmp.path().join("pretrained/../pretrained")));
    assert!(is_input(tmp.path()), "a folder holding an input");
    #[cfg(unix)]
    {
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        assert!(is_input(&link), "a symbolic link to an input");
        let file_link = tmp.path().join("w.safetensors");
        fs::hard_link(input.join(WEIGHTS_FILE), &file_link).unwrap();
        assert!(matches!(
            check_not_input(&file_link, &[&input.join(WEIGHTS_FILE)]),
            Err(ParamsError::OutputIsInput { .. })
        ));
    }
    assert!(!is_input(&tmp.path().join("merged")));
    assert!(!is_input(&input.join("merged")), "inside an input is fine");
}

#[test]
fn atomic_writes_replace_whole_files() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("f.json");
    write_atomic(&p, b"one").unwrap();
    write_atomic(&p, b"two").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"two");
    assert_eq!(entries(tmp.path()), vec!["f.json".to_owned()]);
}

#[test]
fn sharded_checkpoints_load_like_single_files() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = dict(1.0);
    let single = new_dir(tmp.path(), "single");
    whole.save(&single.join(WEIGHTS_FILE)).unwrap();

    let sharded = new_dir(tmp.path(), "sharded");
    let mut a = ParamDict::new();
    let mut b = ParamDict::new();
    for (i, (name, t)) in whole.iter().enumerate() {
        if i == 0 { &mut a } else { &mut b }.insert(name, t.clone());
    }
    a.save(&sharded.join("model-00001-of-00002.safetensors"))
        .unwrap();
    b.save(&sharded.join("model-00002-of-00002.safetensors"))
        .unwrap();
    let index = serde_json::json!({
        "metadata": {"total_size": 48},
        "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "a.bias": "model-00002-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    });
    fs::write(sharded.join(INDEX_FILE), index.to_string()).unwrap();

    let from_single = ParamDict::load_checkpoint(&single).unwrap();
    let from_shards = ParamDict::load_checkpoint(&sharded).unwrap();
    assert!(from_single == from_shards);
    assert_eq!(
        ParamDict::load_checkpoint(&single.join(WEIGHTS_FILE)).unwrap(),
        whole
    );

    // An index that does not match its shards names the tensor.
    let wrong = serde_json::json!({"weight_map": {
        "a.weight": "model-00002-of-00002.safetensors",
        "a.bias": "model-00002-of-00002.safetensors",
        "b": "model-00002-of-00002.safetensors",
    }});
    fs::write(sharded.join(INDEX_FILE), wrong.to_string()).unwrap();
    let err = ParamDict::load_checkpoint(&sharded).unwrap_err();
    assert!(err.to_string().contains("a.weight"), "{err}");
    // Shard names may not leave the folder.
    let escape = serde_json::json!({"weight_map": {"a.weight": "../x.safetensors"}});
    fs::write(sharded.join(INDEX_FILE), escape.to_string()).unwrap();
    let err = ParamDict::load_checkpoint(&sharded).unwrap_err();
    assert!(err.to_string().contains("plain file name"), "{err}");
    fs::write(sharded.join(INDEX_FILE), "{not json").unwrap();
    assert!(ParamDict::load_checkpoint(&sharded).is_err());
}

#[test]
fn other_weight_formats_are_recognised_with_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = new_dir(tmp.path(), "bin");
    // The first bytes of a `torch.save` zip and of a bare pickle.
    fs::write(bin.join("pytorch_model.bin"), b"PK\x03\x04rest of a zip").unwrap();
    let err = ParamDict::load_checkpoint(&bin).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("pytorch_model.bin") && msg.contains("safetensors.torch"),
        "{msg}"
    );

    let renamed = tmp.path().join("model.safetensors");
    fs::write(&renamed, b"\x80\x02}q\x00(X\x04\x00\x00\x00").unwrap();
    let msg = ParamDict::load(&renamed).unwrap_err().to_string();
    assert!(msg.contains("pickle"), "{msg}");
    fs::write(&renamed, b"PK\x03\x04\x14\x00\x00\x00").unwrap();
    let msg = ParamDict::load(&renamed).unwrap_err().to_string();
    assert!(msg.contains("zip"), "{msg}");

    assert_a_pickle_like_header_length_reads();
    let empty = new_dir(tmp.path(), "empty");
    let msg = ParamDict::load_checkpoint(&empty).unwrap_err().to_string();
    assert!(msg.contains(INDEX_FILE), "{msg}");
}
