//! Cross-check against an independent numpy implementation of the reference semantics.
//!
//! The fixture in `tests/fixtures/reference_merges/` is written by
//! `scripts/reference_merges.py`: a tiny pretrained model with CLIP-like names (a
//! `class_embedding` vector, an embedding table, a 4-D patch embedding, linear weights and
//! biases, a frozen tensor), three fine-tuned models, and for every method the merged model
//! after each step (`step{t}.{name}`).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use madeit_merge::{MethodConfig, Step, TaskId};
use madeit_params::ParamDict;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference_merges")
        .join(name)
}

fn load(name: &str) -> ParamDict {
    ParamDict::load(&fixture(name)).unwrap()
}

/// Runs `config` over the three fixture tasks and compares every step with
/// `expected_{file}.safetensors`; returns the largest absolute difference.
fn check(file: &str, config: &str, tolerance: f64) -> f64 {
    let pre = load("pretrained.safetensors");
    let expected = load(&format!("expected_{file}.safetensors"));
    let config = MethodConfig::from_toml_str(config).unwrap();
    let mut merger = config.build().unwrap();
    let mut worst = 0.0f64;
    for t in 1..=3 {
        let ft = load(&format!("task{t}.safetensors"));
        merger
            .absorb(&Step::new(&pre, &ft, &TaskId::new(format!("task{t}"))))
            .unwrap();
        let merged = merger.merged(&pre).unwrap();
        for (name, got) in merged.iter() {
            let want = expected.get(&format!("step{t}.{name}")).unwrap();
            assert_eq!(got.shape(), want.shape(), "{file} step {t} {name}");
            for (i, (a, b)) in got.data().iter().zip(want.data()).enumerate() {
                let d = (f64::from(*a) - f64::from(*b)).abs();
                assert!(
                    d <= tolerance,
                    "{file} step {t} {name}[{i}]: {a} vs expected {b} (|diff| {d:e})"
                );
                worst = worst.max(d);
            }
        }
    }
    eprintln!("{file}: largest |difference| from the reference {worst:e}");
    worst
}

// The elementwise methods compute the same f64 expression as the script and round once
// (and take their decisions on the same f32 differences), so they agree bit for bit.
const EXACT: f64 = 0.0;

/// Every fixture: the `expected_{file}` it is compared with, the method configuration and
/// the tolerance.
const CASES: &[(&str, &str, f64)] = &[
    ("swa", "method = \"swa\"", EXACT),
    ("task_arithmetic", "method = \"task_arithmetic\"", EXACT),
    ("ties", "method = \"ties\"", EXACT),
    (
        "ties_mean",
        "method = \"ties\"\naggregate = \"mean\"",
        EXACT,
    ),
    ("ties_max", "method = \"ties\"\naggregate = \"max\"", EXACT),
    ("magmax", "method = \"magmax\"", EXACT),
    ("opcm", "method = \"opcm\"", 1e-5),
    (
        "opcm_no_quirk",
        "method = \"opcm\"\nclass_embedding_quirk = false",
        1e-5,
    ),
    // Iso-C keeps the running sum in f32 (the script sums in f64) and decomposes with faer
    // instead of LAPACK: agreement to the f32 rounding of the merged weights (measured
    // 1.2e-7).
    ("iso_c", "method = \"c_iso_c\"", 1e-6),
    (
        "iso_c_excluded",
        "method = \"c_iso_c\"\nalpha = 0.8\nexclude = [\"position_embedding\"]",
        1e-6,
    ),
];

#[test]
fn every_method_matches_the_reference() {
    for &(file, config, tolerance) in CASES {
        check(file, config, tolerance);
    }
}

#[test]
fn the_class_embedding_quirk_changes_only_the_class_embedding_direction() {
    // With the quirk the class embedding is carried over at steps t >= 2; without it, it
    // receives the new task vectors. The two fixtures must differ there.
    let a = load("expected_opcm.safetensors");
    let b = load("expected_opcm_no_quirk.safetensors");
    let key = "step3.embeddings.class_embedding";
    let diff = common::max_abs_diff(
        &std::iter::once((key.to_owned(), a.get(key).unwrap().clone())).collect(),
        &std::iter::once((key.to_owned(), b.get(key).unwrap().clone())).collect(),
    );
    assert!(diff > 1e-3, "quirk made no difference ({diff})");
}
