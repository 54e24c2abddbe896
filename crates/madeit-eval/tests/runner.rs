//! The run loop, the evaluator and experiments on a tiny synthetic zoo written in the zoo
//! layout: a random 2-layer tower, three fake tasks whose fine-tuned models are random
//! perturbations of it, random heads and small random test splits.

mod common;

use common::run_with as run;
use common::{
    TASKS, TEST_IMAGES, assert_full_triangle, assert_reported_saved_resumed,
    assert_same_matrix_bits, normal, perturbed, run_fresh_batched, run_recording,
    run_stopped_then_resumed, temp_experiment, temp_zoo, tiny_zoo,
};

use madeit_data::{NORM_MEAN, NORM_STD, write_split};
use madeit_eval::benchmark::Benchmark;
use madeit_eval::evaluate::{
    Evaluator, OracleRouter, ProjectionRouter, evaluate_dense, evaluate_experts,
};
use madeit_eval::experiment::{ExperimentConfig, run_experiment};
use madeit_eval::runner::{EvalMode, RunEvent, StreamSpec, reference_rows};
use madeit_eval::{RunError, StreamResult};
use madeit_merge::{
    ExpertModel, Fingerprint, LowRankExpert, LowRankFactors, MergeError, MergedModel, MethodConfig,
    TaskId,
};
use madeit_params::{ParamDict, Tensor};
use madeit_vit::{ClipVisionModel, WEIGHTS_FILE};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn method(name: &str) -> MethodConfig {
    MethodConfig::default_for(name).expect("method")
}

/// Runs the stream `spec` with a fresh evaluator (batch size 128).
fn run_fresh(bench: &Benchmark, spec: &StreamSpec) -> Result<StreamResult, RunError> {
    run_fresh_batched(bench, spec, 128)
}

#[test]
fn full_mode_fills_the_lower_triangle_and_metrics_match_it() {
    let (_dir, bench) = temp_zoo();
    let ev = Evaluator::from_benchmark(&bench, 7).expect("evaluator");
    for name in ["swa", "task_arithmetic", "ties", "magmax", "opcm"] {
        let mut spec = StreamSpec::new(method(name), vec![2, 0, 1]);
        spec.seed = Some(5);
        let (r, events) = run_recording(&bench, &ev, &spec).expect("stream");
        assert_eq!(r.order, ["gamma", "alpha", "beta"]);
        assert_eq!(r.order_ids, [3, 1, 2]);
        assert_eq!(r.steps.len(), 3);
        assert_full_triangle(&r, name);
        let last: Vec<f64> = (0..3)
            .map(|i| r.matrix.require(i, 2).expect("last"))
            .collect();
        let acc = last.iter().sum::<f64>() / 3.0;
        let bwt = ((last[0] - r.matrix.require(0, 0).expect("d0"))
            + (last[1] - r.matrix.require(1, 1).expect("d1")))
            / 2.0;
        let m = r.metrics.expect("metrics");
        assert!((m.acc - acc).abs() < 1e-12);
        assert!((m.bwt.expect("bwt") - bwt).abs() < 1e-12);
        let evaluated = events
            .iter()
            .filter(|e| matches!(e, RunEvent::TaskEvaluated { .. }))
            .count();
        assert_eq!(evaluated, 6, "{name}: T(T+1)/2 evaluations");
        assert!(matches!(
            events.first(),
            Some(RunEvent::StreamStarted { evaluations: 6, .. })
        ));
        assert!(matches!(
            events.last(),
            Some(RunEvent::StreamFinished {
                metrics: Some(_),
                ..
            })
        ));
        for (k, s) in r.steps.iter().enumerate() {
            assert_eq!(s.step, k + 1);
            assert_eq!(s.report.step, k + 1);
            assert!(s.timing.absorb_s >= 0.0 && s.timing.eval_s >= 0.0);
            assert_eq!(s.evaluations, k + 1);
        }
    }
}

#[test]
fn swa_after_one_step_is_the_finetuned_model() {
    let (_dir, bench) = temp_zoo();
    let ev = Evaluator::from_benchmark(&bench, 128).expect("evaluator");
    let pre = bench.load_pretrained().expect("pretrained");
    let refs = reference_rows(&bench, &ev, &pre, &mut |_| {}).expect("references");
    assert_eq!(refs.tasks, TASKS);
    let r = run(&bench, &ev, &StreamSpec::new(method("swa"), vec![1, 2, 0])).expect("stream");
    assert_eq!(r.matrix.require(0, 0).expect("a"), refs.finetuned[1]);
    // The reference rows are the independent evaluation of the same files.
    let cfg = bench.config();
    for i in 0..3 {
        let head = bench.load_head(i).expect("head");
        let test = bench.load_test(i).expect("test");
        let a = evaluate_dense(cfg, &pre, &head, &test, 5).expect("eval");
        assert_eq!(a, refs.pretrained[i]);
        let ft = bench.load_finetuned(i, &pre).expect("ft");
        assert_eq!(
            evaluate_dense(cfg, &ft, &head, &test, 128).expect("eval"),
            refs.finetuned[i]
        );
    }
}

#[test]
fn evaluate_dense_matches_a_host_side_cosine_classifier() {
    let (_dir, bench) = temp_zoo();
    let pre = bench.load_pretrained().expect("pretrained");
    let model = ClipVisionModel::from_params(bench.config(), &pre).expect("model");
    for i in 0..3 {
        let head = bench.load_head(i).expect("head");
        let test = bench.load_test(i).expect("test");
        let idx: Vec<usize> = (0..test.n).collect();
        let px = test
            .normalized_nchw(&idx, &NORM_MEAN, &NORM_STD)
            .expect("px");
        let emb = model.embed(px, test.n).expect("embed");
        let dim = head.dim();
        let mut correct = 0;
        for (e, &label) in emb.data().chunks_exact(dim).zip(&test.labels) {
            let norm = e.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let best = head
                .weight()
                .chunks_exact(dim)
                .map(|h| {
                    e.iter()
                        .zip(h)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum::<f64>()
                        / norm
                })
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |b, (c, s)| if s > b.1 { (c, s) } else { b },
                )
                .0;
            correct += usize::from(best == label as usize);
        }
        let a = evaluate_dense(bench.config(), &pre, &head, &test, 10).expect("eval");
        assert_eq!(a, correct as f64 / test.n as f64);
    }
}

#[test]
fn final_mode_computes_only_what_acc_and_bwt_need() {
    let (_dir, bench) = temp_zoo();
    let order = vec![1, 0, 2];
    let full = run_fresh(&bench, &StreamSpec::new(method("ties"), order.clone())).expect("full");
    let mut spec = StreamSpec::new(method("ties"), order);
    spec.eval = EvalMode::Final;
    let ev = Evaluator::from_benchmark(&bench, 128).expect("ev");
    let fin = run(&bench, &ev, &spec).expect("final");
    let mut computed = 0;
    for i in 0..3 {
        for j in 0..3 {
            let v = fin.matrix.get(i, j).expect("in range");
            assert_eq!(v.is_some(), i == j || j == 2, "entry ({i}, {j})");
            if let Some(v) = v {
                computed += 1;
                assert_eq!(Some(v), full.matrix.get(i, j).expect("in range"));
            }
        }
    }
    assert_eq!(computed, 2 * 3 - 1);
    assert_eq!(
        ev.cached_results(),
        computed,
        "every entry is a distinct evaluation"
    );
    assert_eq!(fin.metrics, full.metrics);
    assert_eq!(EvalMode::Final.evaluations_from(0, 3), 5);
    assert_eq!(EvalMode::Full.evaluations_from(0, 3), 6);
    assert_eq!(EvalMode::Full.evaluations_from(1, 3), 5);
}

#[test]
fn a_resumed_stream_is_bit_identical_to_an_uninterrupted_one() {
    let (dir, bench) = temp_zoo();
    for name in ["opcm", "ties", "magmax", "swa"] {
        let order = vec![2, 1, 0];
        let whole_ckpt = dir.path().join(format!("{name}-whole.safetensors"));
        let mut whole_spec = StreamSpec::new(method(name), order.clone());
        whole_spec.checkpoint = Some(whole_ckpt.clone());
        let whole = run_fresh(&bench, &whole_spec).expect("whole");

        for stop in [1, 2] {
            let ckpt = dir.path().join(format!("{name}-{stop}.safetensors"));
            let mut spec = StreamSpec::new(method(name), order.clone());
            spec.checkpoint = Some(ckpt.clone());
            let what = format!("{name} stopped after {stop}");
            // A fresh evaluator per part: nothing is carried over in memory.
            let rest = run_stopped_then_resumed(&mut spec, stop, &what, |s| run_fresh(&bench, s));
            assert_eq!(rest.matrix, whole.matrix, "{what}");
            assert_same_matrix_bits(&rest, &whole, &what);
            assert_eq!(rest.metrics, whole.metrics);
            let reports: Vec<_> = rest.steps.iter().map(|s| &s.report).collect();
            let expected: Vec<_> = whole.steps.iter().map(|s| &s.report).collect();
            assert_eq!(reports, expected);
            // The final merger states are the same bits.
            let (a, _) = ParamDict::load_with_metadata(&ckpt).expect("load");
            let (b, _) = ParamDict::load_with_metadata(&whole_ckpt).expect("load");
            assert_eq!(Fingerprint::of_params(&a), Fingerprint::of_params(&b));

            // Resuming a complete stream returns it as saved, without work.
            let ev = Evaluator::from_benchmark(&bench, 128).expect("ev");
            let (again, events) = run_recording(&bench, &ev, &spec).expect("again");
            assert_eq!(again.matrix, whole.matrix);
            assert_eq!(again.resumed_steps, 3);
            assert!(
                !events
                    .iter()
                    .any(|e| matches!(e, RunEvent::StepStarted { .. }))
            );
        }
    }
}

#[test]
fn resuming_another_stream_is_refused() {
    let (dir, bench) = temp_zoo();
    let ev = Evaluator::from_benchmark(&bench, 128).expect("ev");
    let ckpt = dir.path().join("state.safetensors");
    let mut spec = StreamSpec::new(method("task_arithmetic"), vec![0, 1, 2]);
    spec.checkpoint = Some(ckpt.clone());
    spec.stop_after = Some(1);
    run(&bench, &ev, &spec).expect("first");
    spec.resume = true;
    spec.stop_after = None;

    let mut other_order = spec.clone();
    other_order.order = vec![1, 0, 2];
    let err = run(&bench, &ev, &other_order).expect_err("other order");
    assert!(
        matches!(err, RunError::Resume { ref reason, .. } if reason.contains("order")),
        "{err}"
    );

    let mut other_method = spec.clone();
    other_method.method = MethodConfig::from_toml_str("method = \"task_arithmetic\"\nlambda = 0.5")
        .expect("config")
        .into();
    let err = run(&bench, &ev, &other_method).expect_err("other config");
    assert!(matches!(err, RunError::Resume { .. }), "{err}");

    let mut other_mode = spec.clone();
    other_mode.eval = EvalMode::Final;
    assert!(matches!(
        run(&bench, &ev, &other_mode),
        Err(RunError::Resume { .. })
    ));

    std::fs::write(&ckpt, b"not a checkpoint").expect("write");
    assert!(matches!(
        run(&bench, &ev, &spec),
        Err(RunError::Weights { .. })
    ));
}

#[test]
fn a_checkpoint_that_does_not_match_the_pretrained_model_names_the_tensor() {
    let (dir, bench) = temp_zoo();
    let pre = bench.load_pretrained().expect("pre");
    let bad_name = "encoder.layers.1.mlp.fc1.weight";
    let mut bad = pre.clone();
    bad.insert(bad_name, Tensor::new(vec![3, 2], vec![0.0; 6]).expect("t"));
    let path = dir.path().join("finetuned").join("beta").join(WEIGHTS_FILE);
    bad.save(&path).expect("save");
    let ev = Evaluator::from_benchmark(&bench, 128).expect("ev");
    let err = run(&bench, &ev, &StreamSpec::new(method("swa"), vec![0, 1, 2])).expect_err("bad");
    let RunError::CheckpointMismatch {
        task,
        path: p,
        source,
    } = &err
    else {
        unreachable!("expected a checkpoint mismatch, got {err}")
    };
    assert_eq!(task, "beta");
    assert_eq!(p, &path);
    assert_eq!(source.tensor_name(), Some(bad_name));
    assert!(err.to_string().contains(bad_name));

    let mut missing = pre.clone();
    missing.remove("post_layernorm.bias");
    missing.save(&path).expect("save");
    let err = bench.load_finetuned(1, &pre).expect_err("missing");
    assert!(err.to_string().contains("post_layernorm.bias"), "{err}");
}

#[test]
fn bad_orders_are_rejected() {
    let (_dir, bench) = temp_zoo();
    let ev = Evaluator::from_benchmark(&bench, 128).expect("ev");
    for order in [vec![], vec![0, 0, 1], vec![0, 3]] {
        let err = run(&bench, &ev, &StreamSpec::new(method("swa"), order)).expect_err("order");
        assert!(matches!(err, RunError::InvalidOrder { .. }), "{err}");
    }
    // A subset of the tasks is a valid (shorter) stream.
    let r = run(&bench, &ev, &StreamSpec::new(method("swa"), vec![2, 0])).expect("subset");
    assert_eq!(r.matrix.n_tasks(), 2);
}

#[test]
fn bad_experiment_configs_are_typed_errors() {
    let parse = ExperimentConfig::from_toml_str;
    let ok = parse(
        "[experiment]\nseeds = [1, 2]\neval = \"final\"\nmethods = [\"swa\", { method = \"ties\", lambda = 0.5, label = \"t5\" }]",
    )
    .expect("valid");
    assert_eq!(ok.seeds, [1, 2]);
    assert_eq!(ok.eval, EvalMode::Final);
    assert_eq!(ok.methods.len(), 2);
    assert_eq!(ok.methods[1].label, "t5");
    assert_eq!(
        ok.methods[1].config,
        madeit_eval::MethodSpec::from(
            MethodConfig::from_toml_str("method = \"ties\"\nlambda = 0.5").expect("ties")
        )
    );
    let d = parse("[experiment]").expect("defaults");
    assert_eq!(d, ExperimentConfig::default());
    // The default run: the data-free methods of the registry except the opt-in ones, then
    // the test-time methods, in this order (the methods and order of the published runs).
    let default_names: Vec<&str> = d.methods.iter().map(|m| m.label.as_str()).collect();
    assert_eq!(
        default_names,
        [
            "swa",
            "task_arithmetic",
            "ties",
            "magmax",
            "opcm",
            "made_it",
            "c_lw_adamerging",
            "c_lora_wemoe",
            "mingle"
        ]
    );
    let registry_defaults: Vec<&str> = madeit_eval::registry::default_methods()
        .iter()
        .map(|m| m.name())
        .collect();
    assert_eq!(default_names, registry_defaults);

    let merge_error = |text: &str| match parse(text) {
        Err(RunError::Merge(e)) => Some(*e),
        _ => None,
    };
    assert!(matches!(
        merge_error("[experiment]\nmethods = [\"nope\"]"),
        Some(MergeError::UnknownMethod { .. })
    ));
    let bad_key = "[experiment]\nmethods = [{ method = \"ties\", lamda = 0.3 }]";
    assert!(matches!(
        merge_error(bad_key),
        Some(MergeError::InvalidConfig { .. })
    ));
    let err = parse(bad_key).expect_err("key");
    assert!(err.to_string().contains("lamda"), "{err}");
    assert!(matches!(
        merge_error("[experiment]\nmethods = [{ method = \"opcm\", alpha = 2.0 }]"),
        Some(MergeError::InvalidParameter(_))
    ));
    for bad in [
        "[experiment]\nseed = [1]",
        "[experiment]\nmethods = []",
        "[experiment]\nseeds = []",
        "[experiment]\nseeds = [1, 1]",
        "[experiment]\nbatch_size = 0",
        "[experiment]\neval = \"sometimes\"",
        "[experiment]\nmethods = [\"swa\", \"swa\"]",
        "[experiment]\nmethods = [3]",
        "[experiments]\nseeds = [1]",
        "[experiment]\n[other]\nx = 1",
        "experiment = 3",
        "[experiment",
    ] {
        let err = parse(bad).expect_err(bad);
        assert!(
            matches!(err, RunError::InvalidConfig { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn an_experiment_runs_end_to_end_and_round_trips() {
    let (_dir, bench, cfg, state) =
        temp_experiment("[experiment]\nseeds = [42, 43]\nmethods = [\"swa\", \"opcm\"]");
    let mut started = 0;
    let r = run_experiment(&cfg, &bench, &state, &mut |e| {
        started += usize::from(matches!(e, RunEvent::StreamStarted { .. }));
    })
    .expect("experiment");
    assert_eq!(started, 4);
    assert_eq!(r.streams.len(), 4);
    assert_eq!(r.summaries.len(), 2);
    assert_eq!(r.benchmark.test_images, [TEST_IMAGES; 3]);
    for s in &r.summaries {
        let mine: Vec<_> = r.streams_of(&s.label).collect();
        assert_eq!(mine.len(), 2);
        let accs: Vec<f64> = mine.iter().map(|m| m.metrics.expect("m").acc).collect();
        assert!((s.orders.acc.mean - (accs[0] + accs[1]) / 2.0).abs() < 1e-12);
        assert_eq!(s.orders.acc.n, 2);
        let curve = s.seen_accuracy.as_ref().expect("full mode has curves");
        assert_eq!(curve.len(), 3);
        assert!((curve[2].mean - s.orders.acc.mean).abs() < 1e-12);
        assert_eq!(s.final_accuracy.len(), 3);
    }
    // Orders are the published shuffles (ids 1-based).
    assert_eq!(
        r.streams[0].order_ids,
        madeit_eval::orders::task_order(3, 42)
    );
    // The report's rows, the round trip, and resuming the whole experiment.
    let rows = ["| Pre-Trained |", "| OPCM |", "| SWA |"];
    assert_reported_saved_resumed(&cfg, &bench, state, &r, &rows, "opcm-seed43.safetensors");
}

#[test]
fn expert_models_are_evaluated_with_per_sample_routing() {
    let (_dir, bench) = temp_zoo();
    let cfg = bench.config().clone();
    let pre = bench.load_pretrained().expect("pre");
    let key = "encoder.layers.0.mlp.fc1.weight";
    let (d_out, d_in) = (cfg.intermediate_size, cfg.hidden_size);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let up = Tensor::new(vec![d_out, 2], normal(&mut rng, d_out * 2, 0.5)).expect("up");
    let down = Tensor::new(vec![2, d_in], normal(&mut rng, 2 * d_in, 0.5)).expect("down");
    // The dense equivalent: W + up · down.
    let mut dense = pre.clone();
    {
        let w = dense.get_mut(key).expect("w");
        let (u, v) = (up.data(), down.data());
        for (o, row) in w.data_mut().chunks_exact_mut(d_in).enumerate() {
            for (i, x) in row.iter_mut().enumerate() {
                *x += (0..2).map(|k| u[o * 2 + k] * v[k * d_in + i]).sum::<f32>();
            }
        }
    }
    let mut experts = ExpertModel::new(pre.clone());
    experts.experts.insert(
        key.to_owned(),
        vec![LowRankExpert::new(
            LowRankFactors::from_ba(up.as_mat().expect("up"), down.as_mat().expect("down"))
                .expect("factors"),
            vec![TaskId::new("alpha")],
        )],
    );
    let head = bench.load_head(0).expect("head");
    let test = bench.load_test(0).expect("test");
    let want = evaluate_dense(&cfg, &dense, &head, &test, 128).expect("dense");
    let base = evaluate_dense(&cfg, &pre, &head, &test, 128).expect("base");
    let oracle =
        evaluate_experts(&cfg, &experts, &OracleRouter, &head, &test, 128).expect("oracle");
    let proj = evaluate_experts(
        &cfg,
        &experts,
        &ProjectionRouter::default(),
        &head,
        &test,
        128,
    )
    .expect("projection");
    assert_eq!(
        oracle, want,
        "one expert serving the task = the dense update"
    );
    assert_eq!(proj, want, "a single expert is always the argmax");
    // On a task the expert does not serve, the oracle adds nothing.
    let head1 = bench.load_head(1).expect("head");
    let test1 = bench.load_test(1).expect("test");
    assert_eq!(
        evaluate_experts(&cfg, &experts, &OracleRouter, &head1, &test1, 128).expect("oracle"),
        evaluate_dense(&cfg, &pre, &head1, &test1, 128).expect("base")
    );
    let _ = base;

    // Through the evaluator, with its cache.
    let ev = Evaluator::from_benchmark(&bench, 128)
        .expect("ev")
        .with_router(std::sync::Arc::new(OracleRouter));
    let model = MergedModel::Experts(experts.clone());
    assert_eq!(ev.evaluate(&model, &[0]).expect("eval"), [want]);
    let mut s = ev.session(&model);
    assert!(s.accuracy(0).expect("cached").cached);

    // An expert on a tensor that is not a target weight is refused.
    let mut bad = experts;
    let v = bad.experts.swap_remove(key).expect("entry");
    bad.experts.insert("post_layernorm.weight".to_owned(), v);
    let err = evaluate_experts(&cfg, &bad, &OracleRouter, &head, &test, 128).expect_err("bad");
    assert!(matches!(err, RunError::Experts { .. }), "{err}");
}

#[test]
fn the_evaluator_caches_by_model_fingerprint() {
    let (_dir, bench) = temp_zoo();
    let ev = Evaluator::from_benchmark(&bench, 128).expect("ev");
    let pre = bench.load_pretrained().expect("pre");
    let m = MergedModel::Dense(pre.clone());
    let first = ev.evaluate(&m, &[0, 1, 2]).expect("eval");
    assert_eq!(ev.cached_results(), 3);
    let mut s = ev.session(&m);
    let again = s.accuracy(1).expect("eval");
    assert!(again.cached);
    assert_eq!(again.accuracy, first[1]);
    // A different model is evaluated anew.
    let other = MergedModel::Dense(perturbed(&pre, 9, 0.01));
    let mut s = ev.session(&other);
    assert!(!s.accuracy(1).expect("eval").cached);
    assert!(matches!(s.accuracy(3), Err(RunError::UnknownTask { .. })));
    assert!(matches!(
        Evaluator::from_benchmark(&bench, 0),
        Err(RunError::InvalidConfig { .. })
    ));
}

#[test]
fn test_caps_take_evenly_spaced_images_and_validation_reads_the_val_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let bench = tiny_zoo(tmp.path());
    let full = Evaluator::from_benchmark(&bench, 16).expect("ev");
    let cap = TEST_IMAGES / 3;
    let capped = Evaluator::from_benchmark_capped(&bench, 16, Some(cap)).expect("capped");
    let big = Evaluator::from_benchmark_capped(&bench, 16, Some(TEST_IMAGES + 5)).expect("big");
    for t in 0..bench.num_tasks() {
        assert_eq!(full.test_size(t), TEST_IMAGES);
        assert_eq!(capped.test_size(t), cap);
        assert_eq!(big.test_size(t), TEST_IMAGES);
        let whole = bench.load_test(t).expect("test");
        let want: Vec<u32> = (0..cap)
            .map(|k| whole.labels[k * TEST_IMAGES / cap])
            .collect();
        assert_eq!(capped.tasks()[t].test.labels(), want);
    }
    assert!(Evaluator::from_benchmark_capped(&bench, 16, Some(0)).is_err());

    // No validation files yet: the error names the first missing one.
    let err = bench.on_validation().expect_err("no val files");
    assert!(err.to_string().contains("val.safetensors"), "{err}");
    // Copy each test split to val with one label changed, and check that it is read.
    for name in TASKS {
        let dir = tmp.path().join("data").join(name);
        let mut set = madeit_data::read_split(&dir.join("test.safetensors"))
            .expect("read")
            .set;
        set.labels[0] = (set.labels[0] + 1) % set.class_names.len() as u32;
        write_split(&dir.join("val.safetensors"), &set, name, "val").expect("val");
    }
    let val = bench.on_validation().expect("val");
    for t in 0..bench.num_tasks() {
        let (v, w) = (
            val.load_test(t).expect("val"),
            bench.load_test(t).expect("test"),
        );
        assert_ne!(v.labels[0], w.labels[0]);
        assert_eq!(v.labels[1..], w.labels[1..]);
    }
}
