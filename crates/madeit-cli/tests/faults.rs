//! Fault injection: the `madeit` process is stopped at chosen points (the test hook
//! `MADEIT_CRASH_AT` aborts it there) and at random moments (SIGKILL); the output folder
//! must then hold the earlier result or the new one, never a mix, and a rerun must give the
//! uninterrupted result and leave no temporary file behind.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use madeit::vit::ClipVisionConfig;

/// Every point at which a `madeit merge` can be stopped, in the order it passes them.
const MERGE_POINTS: [&str; 6] = [
    "merge-after-step",
    "file-before-rename",
    "merge-after-config",
    "merge-before-commit",
    "dir-before-swap",
    "dir-after-swap",
];

/// The names in the folder holding the output, minus the inputs.
fn leftovers(root: &Path) -> Vec<String> {
    entries(root)
        .into_iter()
        .filter(|n| !(n == "out" || n == "pretrained" || n.starts_with("task")))
        .collect()
}

/// Asserts that `out` holds exactly `old` or exactly `new`; returns which (`true` = new).
fn old_or_new(
    out: &Path,
    old: &BTreeMap<String, Vec<u8>>,
    new: &BTreeMap<String, Vec<u8>>,
) -> bool {
    let now = tree(out);
    if &now == new {
        return true;
    }
    assert!(
        &now == old,
        "the output is neither the old result nor the new one: {:?}",
        now.keys().collect::<Vec<_>>()
    );
    false
}

struct Fixture {
    _tmp: tempfile::TempDir,
    towers: Towers,
    out: std::path::PathBuf,
    old: BTreeMap<String, Vec<u8>>,
    new: BTreeMap<String, Vec<u8>>,
}

/// Towers, the result of `old_method` in `out`, and the bytes of `new_method`'s result.
fn fixture(old_method: &str, new_method: &str) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let towers = Towers::new(tmp.path(), &ClipVisionConfig::tiny(), 3);
    let reference = tmp.path().join("reference");
    assert_success(&towers.merge(new_method, &reference));
    let new = tree(&reference);
    std::fs::remove_dir_all(&reference).unwrap();
    let out = tmp.path().join("out");
    assert_success(&towers.merge(old_method, &out));
    let old = tree(&out);
    assert!(old != new);
    Fixture {
        _tmp: tmp,
        towers,
        out,
        old,
        new,
    }
}

#[test]
fn a_merge_stopped_at_any_point_leaves_the_old_result_or_the_new_one() {
    for (old_method, new_method) in [("swa", "made_it"), ("made_it", "task_arithmetic")] {
        let f = fixture(old_method, new_method);
        for point in MERGE_POINTS {
            let o = crash_at(f.towers.merge_args(new_method, &f.out), point);
            assert!(stderr(&o).contains(point), "{point}: {}", stderr(&o));
            let is_new = old_or_new(&f.out, &f.old, &f.new);
            assert_eq!(
                is_new,
                point == "dir-after-swap",
                "{point}: the new result must appear exactly at the swap"
            );
            // The rerun gives the uninterrupted result and cleans up.
            assert_success(&f.towers.merge(new_method, &f.out));
            assert_same_tree(&tree(&f.out), &f.new, point);
            assert!(leftovers(f.towers.root.as_path()).is_empty(), "{point}");
            // Back to the old result for the next point.
            assert_success(&f.towers.merge(old_method, &f.out));
            assert_same_tree(&tree(&f.out), &f.old, "the old result");
        }
    }
}

#[test]
fn a_merge_killed_at_random_moments_leaves_the_old_result_or_the_new_one() {
    let f = fixture("swa", "made_it");
    // The length of an uninterrupted run bounds the moments.
    let t0 = Instant::now();
    assert_success(&f.towers.merge("made_it", &f.towers.root.join("timing")));
    let span = t0.elapsed().as_micros().max(1) as u64;
    let (mut killed, mut finished) = (0, 0);
    for i in 0..16u64 {
        assert_success(&f.towers.merge("swa", &f.out));
        let mut child = madeit()
            .args(f.towers.merge_args("made_it", &f.out))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Spread the kills over the run, from its start to a little past its end.
        let at = values(i, 1, 0.5)[0] + 0.55;
        std::thread::sleep(Duration::from_micros((at * span as f32) as u64));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            finished += 1;
        } else {
            killed += 1;
        }
        let is_new = old_or_new(&f.out, &f.old, &f.new);
        assert!(
            is_new || !status.success(),
            "a finished merge left the old result"
        );
        assert_success(&f.towers.merge("made_it", &f.out));
        assert_same_tree(&tree(&f.out), &f.new, "the rerun");
        std::fs::remove_dir_all(f.towers.root.join("timing")).ok();
        assert!(
            leftovers(&f.towers.root).is_empty(),
            "{:?}",
            leftovers(&f.towers.root)
        );
    }
    eprintln!("random kills: {killed} killed, {finished} finished first");
    assert!(killed > 0, "no run was interrupted");
}

/// What must agree between two runs: the accuracy matrices, the metrics and the references
/// (results.json also records dates and timings, which differ).
fn outcome(run: &Path) -> serde_json::Value {
    results_digest(run, &["label", "seed", "matrix", "metrics"])
}

/// The tensors of the saved states of a run, bit patterns by file and tensor (the files'
/// metadata also record step timings, which differ between runs).
/// A tensor as its name, shape and bit patterns.
type Bits = (String, Vec<usize>, Vec<u32>);

fn states(run: &Path) -> BTreeMap<String, Vec<Bits>> {
    tree(&run.join("state"))
        .into_iter()
        .map(|(file, bytes)| {
            let (dict, _) = madeit::params::ParamDict::from_safetensors_bytes(&bytes).unwrap();
            let tensors = dict
                .iter()
                .map(|(k, t)| {
                    let bits = t.data().iter().map(|x| x.to_bits()).collect();
                    (k.to_owned(), t.shape().to_vec(), bits)
                })
                .collect();
            (file, tensors)
        })
        .collect()
}

fn run_args(zoo: &Path, out: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "run".into(),
        "--zoo".into(),
        zoo.into(),
        "--out".into(),
        out.into(),
        "--methods".into(),
        "swa,made_it,mingle".into(),
        "--seeds".into(),
        "42".into(),
        "--save-state".into(),
        "--quiet".into(),
    ]
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_result_bit_for_bit() {
    let (tmp, zoo) = temp_zoo();
    let reference = tmp.path().join("reference");
    let t0 = Instant::now();
    assert_success(&madeit().args(run_args(&zoo, &reference)).output().unwrap());
    let span = t0.elapsed().as_micros().max(1) as u64;
    let want = outcome(&reference);
    let want_states = states(&reference);
    assert!(!want_states.is_empty());

    let out = tmp.path().join("out");
    let check = |how: &str| {
        // Nothing half-written is visible: either no run folder yet, or the whole result.
        if out.exists() {
            assert_eq!(outcome(&out), want, "{how}: a visible result differs");
        }
        let mut args = run_args(&zoo, &out);
        args.push("--resume".into());
        assert_success(&madeit().args(args).output().unwrap());
        assert_eq!(outcome(&out), want, "{how}: the resumed run differs");
        let got = states(&out);
        let differ: Vec<String> = want_states
            .iter()
            .filter(|(file, tensors)| got.get(*file) != Some(*tensors))
            .map(|(file, tensors)| {
                let names: Vec<&str> = tensors
                    .iter()
                    .filter(|t| !got.get(file).is_some_and(|g| g.contains(t)))
                    .map(|t| t.0.as_str())
                    .take(5)
                    .collect();
                format!("{file}: {names:?}")
            })
            .collect();
        assert!(
            got.len() == want_states.len() && differ.is_empty(),
            "{how}: the saved states differ: {differ:?} ({} vs {} files)",
            got.len(),
            want_states.len()
        );
        let rest: Vec<String> = entries(tmp.path())
            .into_iter()
            .filter(|n| !["zoo", "reference", "out"].contains(&n.as_str()))
            .collect();
        assert!(rest.is_empty(), "{how}: leftovers {rest:?}");
        std::fs::remove_dir_all(&out).unwrap();
    };
    for point in [
        "run-after-state",
        "file-before-rename",
        "run-before-commit",
        "dir-before-swap",
    ] {
        crash_at(run_args(&zoo, &out), point);
        check(point);
    }
    let mut killed = 0;
    for i in 0..6u64 {
        let mut child = madeit()
            .args(run_args(&zoo, &out))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let at = values(50 + i, 1, 0.45)[0] + 0.5;
        std::thread::sleep(Duration::from_micros((at * span as f32) as u64));
        let _ = child.kill();
        if !child.wait().unwrap().success() {
            killed += 1;
        }
        check(&format!("kill {i}"));
    }
    eprintln!("random kills of runs: {killed} of 6 killed before they finished");
    assert!(killed > 0, "no run was interrupted");
}
