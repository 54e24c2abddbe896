//! Helpers shared by the run-loop tests: a random tower, perturbed copies of it, saving a
//! tower in the Hugging Face layout, and quick settings of the test-time methods.

#![allow(dead_code)]

use std::path::Path;

use madeit_adapt::{AdamOptions, SeedImageOptions};
use madeit_data::{ImageSet, write_split};
use madeit_eval::benchmark::Benchmark;
use madeit_eval::evaluate::Evaluator;
use madeit_eval::experiment::{ExperimentConfig, StateOptions, run_experiment};
use madeit_eval::report::{render_markdown, table_methods};
use madeit_eval::runner::{RunEvent, StreamSpec, run_stream};
use madeit_eval::{ExperimentResults, RunError, StreamResult};
use madeit_params::{ParamDict, Tensor};
use madeit_vit::{ClipVisionConfig, TaskHead};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod random;
pub use random::{normal, perturbed, random_tower};

pub fn save_tower(dir: &Path, config: &ClipVisionConfig, params: &ParamDict) {
    madeit_zoo::save_tower(dir, config, params).expect("save tower");
}

/// The tasks of [`tiny_zoo`].
pub const TASKS: [&str; 3] = ["alpha", "beta", "gamma"];
pub const CLASSES: [usize; 3] = [4, 3, 5];
pub const TEST_IMAGES: usize = 24;
pub const SEED_IMAGES: usize = 12;

pub fn random_split(
    rng: &mut ChaCha8Rng,
    config: &ClipVisionConfig,
    n: usize,
    classes: usize,
    names: &[String],
) -> ImageSet {
    let (s, c) = (config.image_size, config.num_channels);
    let images: Vec<u8> = (0..n * s * s * c).map(|_| rng.random()).collect();
    // Classes in turn: with 12 seed images every class has at least 2.
    let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
    ImageSet::new(images, n, s, s, c, labels, names.to_vec()).expect("set")
}

/// Writes the tiny zoo (with seed splits) into `dir` and returns its benchmark.
pub fn tiny_zoo(dir: &Path) -> Benchmark {
    let config = ClipVisionConfig::tiny();
    let pre = random_tower(&config, 1);
    save_tower(&dir.join("pretrained"), &config, &pre);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (t, (&name, &classes)) in TASKS.iter().zip(&CLASSES).enumerate() {
        let ft = perturbed(&pre, 100 + t as u64, 0.05);
        save_tower(&dir.join("finetuned").join(name), &config, &ft);
        let w = Tensor::new(
            vec![classes, config.projection_dim],
            normal(&mut rng, classes * config.projection_dim, 1.0),
        )
        .expect("head");
        let names: Vec<String> = (0..classes).map(|c| format!("{name}-{c}")).collect();
        let head = TaskHead::new(name, &w, names.clone()).expect("head");
        madeit_zoo::save_head(dir, &head).expect("save head");
        for (split, n) in [("test", TEST_IMAGES), ("seed", SEED_IMAGES)] {
            let set = random_split(&mut rng, &config, n, classes, &names);
            write_split(
                &dir.join("data")
                    .join(name)
                    .join(format!("{split}.safetensors")),
                &set,
                name,
                split,
            )
            .expect("split");
        }
    }
    Benchmark::from_layout(dir, &TASKS).expect("benchmark")
}

/// A temporary folder holding a [`tiny_zoo`], and its benchmark.
pub fn temp_zoo() -> (tempfile::TempDir, Benchmark) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bench = tiny_zoo(dir.path());
    (dir, bench)
}

/// Adam settings of a quick test-time method: 3 adaptation steps on batches of 4 at
/// learning rate 1e-2.
pub fn quick_adam() -> AdamOptions {
    AdamOptions {
        steps: 3,
        batch_size: 4,
        lr: 1e-2,
        ..AdamOptions::default()
    }
}

/// Seed-image settings of a quick test-time method: 2 seed images per class.
pub fn quick_seed_images() -> SeedImageOptions {
    SeedImageOptions {
        seed_per_class: 2,
        ..SeedImageOptions::default()
    }
}

/// Runs the stream `spec` with the evaluator `ev`, without progress.
pub fn run_with(
    bench: &Benchmark,
    ev: &Evaluator,
    spec: &StreamSpec,
) -> Result<StreamResult, RunError> {
    let pre = bench.load_pretrained()?;
    run_stream(bench, ev, &pre, spec, &mut |_| {})
}

/// Runs the stream `spec` with the evaluator `ev`, and returns the progress events it sent,
/// in order.
pub fn run_recording(
    bench: &Benchmark,
    ev: &Evaluator,
    spec: &StreamSpec,
) -> Result<(StreamResult, Vec<RunEvent>), RunError> {
    let pre = bench.load_pretrained()?;
    let mut events = Vec::new();
    let r = run_stream(bench, ev, &pre, spec, &mut |e| events.push(e.clone()))?;
    Ok((r, events))
}

/// Runs the stream `spec` with a fresh evaluator of `batch` images per forward: nothing is
/// carried over in memory between calls.
pub fn run_fresh_batched(
    bench: &Benchmark,
    spec: &StreamSpec,
    batch: usize,
) -> Result<StreamResult, RunError> {
    run_with(bench, &Evaluator::from_benchmark(bench, batch)?, spec)
}

/// [`run_fresh_batched`] with batch size 7.
pub fn run_fresh(bench: &Benchmark, spec: &StreamSpec) -> Result<StreamResult, RunError> {
    run_fresh_batched(bench, spec, 7)
}

/// Runs the stream `spec` (which names a checkpoint) in two parts through `run`: stopped
/// after `stop` steps, then resumed from the checkpoint; `spec` is left resuming. Asserts
/// that the first part ran exactly `stop` steps and has no metrics yet, and that the second
/// restored those steps and completed the stream; returns the second part.
#[track_caller]
pub fn run_stopped_then_resumed(
    spec: &mut StreamSpec,
    stop: usize,
    what: &str,
    run: impl Fn(&StreamSpec) -> Result<StreamResult, RunError>,
) -> StreamResult {
    spec.stop_after = Some(stop);
    let first = run(spec).expect("first part");
    assert!(!first.is_complete(), "{what}");
    assert_eq!(first.steps.len(), stop, "{what}");
    assert_eq!(first.metrics, None, "{what}");
    spec.stop_after = None;
    spec.resume = true;
    let rest = run(spec).expect("resumed");
    assert_eq!(rest.resumed_steps, stop, "{what}");
    assert!(rest.is_complete(), "{what}");
    rest
}

/// Asserts, for the results `r` of the two-method experiment `cfg` saving into `state.dir`:
/// the markdown report has every row of `rows`, and the methods table its header, two
/// reference rows, the two methods and the "not run" C. Fine-Tuned row; `r` round-trips
/// through `results.json` next to the state folder; the state file `state_file` was saved;
/// and resuming the experiment reuses every saved stream (same matrices, all three steps
/// resumed).
pub fn assert_reported_saved_resumed(
    cfg: &ExperimentConfig,
    bench: &Benchmark,
    state: StateOptions,
    r: &ExperimentResults,
    rows: &[&str],
    state_file: &str,
) {
    let md = render_markdown(r);
    for row in rows {
        assert!(md.contains(row), "{row} missing from: {md}");
    }
    assert_eq!(table_methods(r).lines().count(), 2 + 2 + 2 + 1);
    let state_dir = state.dir.clone().expect("a state folder");
    let json = state_dir
        .parent()
        .expect("a parent folder")
        .join("results.json");
    r.save_json(&json).expect("save");
    assert_eq!(&ExperimentResults::load_json(&json).expect("load"), r);
    assert!(state_dir.join(state_file).is_file(), "{state_file}");
    let resume = StateOptions {
        resume: true,
        ..state
    };
    let resumed = run_experiment(cfg, bench, &resume, &mut |_| {}).expect("resumed");
    for (a, b) in resumed.streams.iter().zip(&r.streams) {
        assert_eq!(a.matrix, b.matrix);
        assert_eq!(a.resumed_steps, 3);
    }
}

/// A [`temp_zoo`], the experiment of the TOML text `toml`, and state options that save into
/// the folder's `state` subfolder (not resuming).
pub fn temp_experiment(
    toml: &str,
) -> (tempfile::TempDir, Benchmark, ExperimentConfig, StateOptions) {
    let (dir, bench) = temp_zoo();
    let cfg = ExperimentConfig::from_toml_str(toml).expect("config");
    let state = StateOptions {
        dir: Some(dir.path().join("state")),
        resume: false,
    };
    (dir, bench, cfg, state)
}

/// Asserts that the accuracy matrices of two results are equal to the bit.
#[track_caller]
pub fn assert_same_matrix_bits(got: &StreamResult, want: &StreamResult, what: &str) {
    let cells = |r: &StreamResult| -> Vec<Option<u64>> {
        r.matrix
            .rows()
            .iter()
            .flatten()
            .map(|a| a.map(f64::to_bits))
            .collect()
    };
    assert_eq!(cells(got), cells(want), "{what}");
}

/// Asserts that the full-mode stream `r` over the three tasks is complete, with exactly
/// the lower triangle `i <= j` of its matrix filled with accuracies in [0, 1] that are
/// fractions of the [`TEST_IMAGES`] test images.
#[track_caller]
pub fn assert_full_triangle(r: &StreamResult, what: &str) {
    assert!(r.is_complete(), "{what}");
    for i in 0..3 {
        for j in 0..3 {
            let v = r.matrix.get(i, j).expect("in range");
            assert_eq!(v.is_some(), i <= j, "{what}: entry ({i}, {j})");
            if let Some(v) = v {
                assert!((0.0..=1.0).contains(&v), "{what}: {v}");
                let k = v * TEST_IMAGES as f64;
                assert!(
                    (k - k.round()).abs() < 1e-9,
                    "{what}: {v} is not k/{TEST_IMAGES}"
                );
            }
        }
    }
}
