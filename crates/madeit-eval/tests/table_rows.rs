//! The remaining rows of the papers' tables in the run loop: C. LW AdaMerging and
//! C. LoRA-WEMoE streams (evaluation, resume, configuration), and C. Fine-Tuned's
//! configuration and its errors when no training data is at hand.

mod common;

use common::run_fresh as run;
use common::{
    assert_full_triangle, assert_same_matrix_bits, quick_adam, quick_seed_images,
    run_stopped_then_resumed, temp_zoo, tiny_zoo,
};

use madeit_adapt::{AdaMergingConfig, WemoeConfig};
use madeit_eval::registry::{self, MethodKind};
use madeit_eval::report::table_methods;
use madeit_eval::runner::StreamSpec;
use madeit_eval::{C_FINETUNED, MethodSpec, RunError, SequentialConfig};
use madeit_merge::MethodConfig;

fn quick_adamerging(accumulate: bool) -> AdaMergingConfig {
    AdaMergingConfig {
        accumulate,
        adam: quick_adam(),
        seed_images: quick_seed_images(),
        ..AdaMergingConfig::default()
    }
}

fn quick_wemoe() -> WemoeConfig {
    WemoeConfig {
        adam: quick_adam(),
        seed_images: quick_seed_images(),
        ..WemoeConfig::default()
    }
}

#[test]
fn test_time_streams_evaluate_every_seen_task_and_resume_bit_identically() {
    let (dir, bench) = temp_zoo();
    let order = vec![2, 0, 1];
    let methods: Vec<MethodSpec> = vec![
        quick_adamerging(false).into(),
        quick_adamerging(true).into(),
        quick_wemoe().into(),
    ];
    for (k, method) in methods.into_iter().enumerate() {
        let name = method.name();
        let whole_ckpt = dir.path().join(format!("whole-{k}.safetensors"));
        let mut spec = StreamSpec::new(method.clone(), order.clone());
        spec.checkpoint = Some(whole_ckpt);
        let whole = run(&bench, &spec).expect("stream");
        assert_full_triangle(&whole, name);
        for (j, s) in whole.steps.iter().enumerate() {
            assert_eq!(s.report.method, name);
            assert_eq!(s.report.step, j + 1);
            assert!(s.report.metrics.contains_key("loss_first"), "{name}");
        }

        // Stop after one step, resume: the same bits.
        let ckpt = dir.path().join(format!("part-{k}.safetensors"));
        let mut part = StreamSpec::new(method.clone(), order.clone());
        part.checkpoint = Some(ckpt);
        let rest = run_stopped_then_resumed(&mut part, 1, name, |s| run(&bench, s));
        assert_same_matrix_bits(&rest, &whole, name);

        // A checkpoint of another method is refused.
        let mut other = part.clone();
        other.method = MethodConfig::default_for("swa").expect("swa").into();
        assert!(matches!(run(&bench, &other), Err(RunError::Resume { .. })));
    }
}

#[test]
fn the_adamerging_modes_differ_and_the_table_says_which_ran() {
    let (_dir, bench) = temp_zoo();
    let order = vec![0, 1, 2];
    let reset = run(
        &bench,
        &StreamSpec::new(quick_adamerging(false), order.clone()),
    )
    .expect("reset");
    let acc = run(&bench, &StreamSpec::new(quick_adamerging(true), order)).expect("acc");
    // Both evaluate the same first step (theta0 + clamp(L) tau_1, same seed batches)...
    assert_eq!(
        reset.matrix.get(0, 0).expect("entry"),
        acc.matrix.get(0, 0).expect("entry")
    );
    assert_eq!(
        reset.steps[0].report.merged_delta_norm,
        acc.steps[0].report.merged_delta_norm
    );
    // ...and then part: only the accumulating mode keeps the earlier task vectors.
    for j in 1..3 {
        let (r, a) = (&reset.steps[j].report, &acc.steps[j].report);
        assert_ne!(r.merged_delta_norm, a.merged_delta_norm, "step {}", j + 1);
        assert_eq!(r.metrics.get("accumulate"), Some(&0.0));
        assert_eq!(a.metrics.get("accumulate"), Some(&1.0));
    }
    assert_eq!(
        MethodSpec::from(quick_adamerging(false))
            .table_note()
            .as_deref(),
        Some("accumulate = false, as the reference")
    );
    assert_eq!(
        MethodSpec::from(quick_adamerging(true))
            .table_note()
            .as_deref(),
        Some("accumulate = true")
    );
    assert!(
        MethodSpec::default_for(C_FINETUNED)
            .expect("c_finetuned")
            .table_note()
            .is_some_and(|n| n.contains("training data"))
    );
}

#[test]
fn the_new_methods_parse_check_and_round_trip() {
    for (text, name) in [
        (
            "method = \"c_lw_adamerging\"\naccumulate = true",
            "c_lw_adamerging",
        ),
        ("method = \"c_lora_wemoe\"\nfirst_rank = 16", "c_lora_wemoe"),
        ("method = \"c_finetuned\"\nsteps = 10", "c_finetuned"),
    ] {
        let spec = MethodSpec::from_toml_str(text).expect(text);
        assert_eq!(spec.name(), name);
        spec.check().expect("valid");
        let json = serde_json::to_value(&spec).expect("serialise");
        assert_eq!(json["method"], name);
        let back: MethodSpec = serde_json::from_value(json).expect("deserialise");
        assert_eq!(back, spec);
        assert_eq!(
            MethodSpec::default_for(name).expect("defaults").name(),
            name
        );
    }
    // Unknown keys and bad values are errors naming the method.
    let err = MethodSpec::from_toml_str("method = \"c_lora_wemoe\"\nrnak = 3").expect_err("typo");
    assert!(err.to_string().contains("c_lora_wemoe"), "{err}");
    let bad =
        MethodSpec::from_toml_str("method = \"c_lw_adamerging\"\ninit = 2.0").expect("parses");
    assert!(bad.check().is_err());
    let bad = MethodSpec::from(SequentialConfig {
        steps: Some(0),
        cache_dir: None,
    });
    assert!(bad.check().is_err());
    let test_time = registry::names_of(MethodKind::TestTime);
    assert!(test_time.contains(&"c_lw_adamerging"));
    assert!(test_time.contains(&"c_lora_wemoe"));
    assert_eq!(
        registry::names_of(MethodKind::NeedsTrainingData),
        [C_FINETUNED]
    );
}

#[test]
fn c_finetuned_needs_a_zoo_and_its_training_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A folder in the zoo layout without a manifest: no training data to rebuild.
    let bench = tiny_zoo(dir.path());
    let spec = StreamSpec::new(MethodSpec::from(SequentialConfig::default()), vec![0, 1]);
    let err = run(&bench, &spec).expect_err("no zoo");
    assert!(err.to_string().contains("training data"), "{err}");
}

#[test]
fn the_methods_table_lists_c_finetuned_even_when_it_did_not_run() {
    let (_dir, bench) = temp_zoo();
    let cfg = madeit_eval::ExperimentConfig::from_toml_str(
        "[experiment]\nseeds = [42]\nbatch_size = 7\nmethods = [{ method = \"c_lw_adamerging\", steps = 2, batch_size = 4, seed_per_class = 2 }]",
    )
    .expect("config");
    let state = madeit_eval::experiment::StateOptions {
        dir: None,
        resume: false,
    };
    let results =
        madeit_eval::run_experiment(&cfg, &bench, &state, &mut |_| {}).expect("experiment");
    let table = table_methods(&results);
    assert!(
        table.contains("C. LW AdaMerging [accumulate = false, as the reference]"),
        "{table}"
    );
    assert!(
        table.contains("| C. Fine-Tuned [needs training data] | not run | not run |"),
        "{table}"
    );
}
