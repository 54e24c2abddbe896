//! MINGLE in the run loop, on a tiny synthetic zoo in the zoo layout (a random 2-layer
//! tower, three fake tasks with random fine-tuned perturbations, random heads, small random
//! test and seed splits): streams, checkpoints, experiments and the method configuration.

mod common;

// A fresh evaluator per run: nothing is carried over in memory.
use common::run_fresh as run;
use common::{
    CLASSES, assert_full_triangle, assert_reported_saved_resumed, assert_same_matrix_bits,
    quick_adam, quick_seed_images, run_recording, run_stopped_then_resumed, temp_experiment,
    temp_zoo,
};

use madeit_adapt::{
    AdaptError, MingleConfig, ParameterError, SeedImageOptions, SeedSource, TargetSet,
};
use madeit_eval::evaluate::Evaluator;
use madeit_eval::experiment::{ExperimentConfig, run_experiment};
use madeit_eval::runner::{RunEvent, StreamSpec};
use madeit_eval::{MethodSpec, RunError};
use madeit_merge::{Fingerprint, MethodConfig, StepReport};
use madeit_params::ParamDict;

/// A quick MINGLE: few adaptation steps on small batches.
fn quick_mingle() -> MingleConfig {
    MingleConfig {
        adam: quick_adam(),
        seed_images: quick_seed_images(),
        ..MingleConfig::default()
    }
}

/// A step report without its wall-clock measurements (`seconds_*`), which differ between
/// runs.
fn without_timings(r: &StepReport) -> StepReport {
    let mut r = r.clone();
    r.metrics.retain(|k, _| !k.starts_with("seconds_"));
    r
}

#[test]
fn a_mingle_stream_evaluates_every_seen_task_and_reports_its_steps() {
    let (_dir, bench) = temp_zoo();
    let mut spec = StreamSpec::new(quick_mingle(), vec![2, 0, 1]);
    spec.seed = Some(5);
    let ev = Evaluator::from_benchmark(&bench, 7).expect("evaluator");
    let (r, events) = run_recording(&bench, &ev, &spec).expect("run");
    assert_eq!(r.label, "mingle");
    assert_eq!(r.order, ["gamma", "alpha", "beta"]);
    assert_full_triangle(&r, "mingle");
    for (j, s) in r.steps.iter().enumerate() {
        assert_eq!(s.report.method, "mingle");
        assert_eq!(s.report.step, j + 1);
        assert_eq!(s.evaluations, j + 1);
        assert_eq!(s.cached, 0);
        // seed_per_class = 2 over every class of the seed split.
        let classes = CLASSES[spec.order[j]];
        assert_eq!(
            s.report.metrics.get("seed_samples"),
            Some(&(2.0 * classes as f64))
        );
        assert!(s.report.metrics.contains_key("kl_after"));
        assert!(s.timing.absorb_s > 0.0 && s.timing.eval_s > 0.0);
    }
    let evaluated = events
        .iter()
        .filter(|e| matches!(e, RunEvent::TaskEvaluated { cached: false, .. }))
        .count();
    assert_eq!(evaluated, 6);
    let m = r.metrics.expect("metrics");
    assert_eq!(m, r.matrix.metrics().expect("metrics"));

    // The same stream again gives the same bits (the method and the evaluation are
    // deterministic).
    let again = run(&bench, &spec).expect("again");
    assert_eq!(again.matrix, r.matrix);
}

#[test]
fn a_resumed_mingle_stream_is_bit_identical_to_an_uninterrupted_one() {
    let (dir, bench) = temp_zoo();
    let order = vec![1, 2, 0];
    let whole_ckpt = dir.path().join("whole.safetensors");
    let mut whole_spec = StreamSpec::new(quick_mingle(), order.clone());
    whole_spec.checkpoint = Some(whole_ckpt.clone());
    let whole = run(&bench, &whole_spec).expect("whole");

    for stop in [1, 2] {
        let ckpt = dir.path().join(format!("part-{stop}.safetensors"));
        let mut spec = StreamSpec::new(quick_mingle(), order.clone());
        spec.checkpoint = Some(ckpt.clone());
        let what = format!("stopped after {stop}");
        let rest = run_stopped_then_resumed(&mut spec, stop, &what, |s| run(&bench, s));
        assert_same_matrix_bits(&rest, &whole, &what);
        assert_eq!(rest.metrics, whole.metrics);
        let reports: Vec<_> = rest
            .steps
            .iter()
            .map(|s| without_timings(&s.report))
            .collect();
        let expected: Vec<_> = whole
            .steps
            .iter()
            .map(|s| without_timings(&s.report))
            .collect();
        assert_eq!(reports, expected);
        // The final merger states (experts, gates, subspaces) are the same bits.
        let (a, _) = ParamDict::load_with_metadata(&ckpt).expect("load");
        let (b, _) = ParamDict::load_with_metadata(&whole_ckpt).expect("load");
        assert!(a.keys().any(|k| k.starts_with("gate.")));
        assert_eq!(Fingerprint::of_params(&a), Fingerprint::of_params(&b));
    }

    // A checkpoint of another MINGLE configuration or of another method is refused.
    let mut other = StreamSpec::new(MingleConfig::hard_null_space(), order.clone());
    other.checkpoint = Some(whole_ckpt.clone());
    other.resume = true;
    let err = run(&bench, &other).expect_err("other config");
    assert!(matches!(err, RunError::Resume { .. }), "{err}");
    other.method = MethodConfig::default_for("swa").expect("swa").into();
    let err = run(&bench, &other).expect_err("other method");
    assert!(matches!(err, RunError::Resume { .. }), "{err}");
}

#[test]
fn a_missing_seed_split_names_the_file() {
    let (dir, bench) = temp_zoo();
    let seed = dir
        .path()
        .join("data")
        .join("beta")
        .join("seed.safetensors");
    std::fs::remove_file(&seed).expect("rm");
    let err = run(&bench, &StreamSpec::new(quick_mingle(), vec![1])).expect_err("no seed");
    assert!(err.to_string().contains("seed.safetensors"), "{err}");
    // Weight-space methods do not read seed splits.
    run(
        &bench,
        &StreamSpec::new(MethodConfig::default_for("swa").expect("swa"), vec![1]),
    )
    .expect("swa");
    // The paper's protocol takes the seed images from the test split instead.
    let from_test = MingleConfig {
        seed_images: SeedImageOptions {
            seed_source: SeedSource::TestSplit,
            ..quick_mingle().seed_images
        },
        ..quick_mingle()
    };
    let r = run(&bench, &StreamSpec::new(from_test, vec![1])).expect("test split");
    assert!(r.is_complete());
}

#[test]
fn mingle_configurations_parse_check_and_round_trip() {
    let parse = MethodSpec::from_toml_str;
    assert_eq!(
        parse("method = \"mingle\"").expect("defaults"),
        MethodSpec::Mingle(MingleConfig::default())
    );
    assert_eq!(
        parse("method = \"mingle\"\nprojection = \"hard\"").expect("hard"),
        MethodSpec::Mingle(MingleConfig::hard_null_space())
    );
    assert_eq!(
        parse("method = \"mingle\"\ntargets = \"lightweight\"").expect("lightweight"),
        MethodSpec::Mingle(MingleConfig::lightweight())
    );
    let custom = parse(
        "method = \"mingle\"\nsteps = 10\nsubspace_svd = \"exact\"\ntargets = { custom = [\"Q\", \"Fc1\"] }",
    )
    .expect("custom");
    let MethodSpec::Mingle(c) = &custom else {
        unreachable!("expected MINGLE, got {custom:?}")
    };
    assert_eq!(c.adam.steps, 10);
    assert!(matches!(c.targets, TargetSet::Custom(ref k) if k.len() == 2));

    // Unknown keys and out-of-range values are typed errors naming the key.
    let err = parse("method = \"mingle\"\nstep = 3").expect_err("unknown key");
    assert!(
        matches!(&err, RunError::Adapt(e) if matches!(**e, AdaptError::InvalidConfig { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("step"), "{err}");
    let zero = parse("method = \"mingle\"\nbatch_size = 0").expect("parses");
    let err = zero.check().expect_err("range");
    assert!(
        matches!(&err, RunError::Adapt(e) if matches!(**e, AdaptError::InvalidParameter(ParameterError { parameter: "batch_size", .. }))),
        "{err}"
    );

    // JSON round trips; registry methods keep their own form.
    for spec in [
        MethodSpec::Mingle(MingleConfig::default()),
        custom.clone(),
        MethodSpec::Merge(
            MethodConfig::from_toml_str("method = \"ties\"\nlambda = 0.5").expect("ties"),
        ),
    ] {
        let json = serde_json::to_string(&spec).expect("json");
        assert!(
            json.contains(&format!("\"method\":\"{}\"", spec.name())),
            "{json}"
        );
        let back: MethodSpec = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, spec);
    }
    let ties = MethodConfig::from_toml_str("method = \"ties\"").expect("ties");
    assert_eq!(
        serde_json::to_value(MethodSpec::from(ties.clone())).expect("json"),
        serde_json::to_value(&ties).expect("json")
    );

    // In an experiment: defaults end with MINGLE, entries may be labelled variants.
    let d = ExperimentConfig::default();
    assert_eq!(d.methods.last().map(|m| m.label.as_str()), Some("mingle"));
    let cfg = ExperimentConfig::from_toml_str(
        "[experiment]\nmethods = [\"mingle\", { method = \"mingle\", projection = \"none\", label = \"mingle-free\" }]",
    )
    .expect("experiment");
    assert_eq!(cfg.methods[1].label, "mingle-free");
    assert_eq!(
        cfg.methods[1].config,
        MethodSpec::Mingle(MingleConfig::without_projection())
    );
    assert!(
        ExperimentConfig::from_toml_str(
            "[experiment]\nmethods = [{ method = \"mingle\", gamma = -1.0 }]"
        )
        .is_err()
    );
}

#[test]
fn an_experiment_with_mingle_runs_resumes_and_round_trips() {
    let (_dir, bench, cfg, state) = temp_experiment(
        "[experiment]\nseeds = [42]\nbatch_size = 7\nmethods = [\"swa\", { method = \"mingle\", steps = 2, batch_size = 4, seed_per_class = 2 }]",
    );
    let r = run_experiment(&cfg, &bench, &state, &mut |_| {}).expect("experiment");
    assert_eq!(r.streams.len(), 2);
    assert_eq!(r.summaries[1].method, "mingle");
    assert!(r.summaries[1].absorb_seconds.mean > 0.0);
    // The report's rows, the round trip, and resuming the whole experiment.
    let rows = ["| MINGLE |", "| SWA |"];
    assert_reported_saved_resumed(&cfg, &bench, state, &r, &rows, "mingle-seed42.safetensors");
}
