//! The continual-merging contract and the defining identities of each method.
#![allow(clippy::unwrap_used, clippy::panic, clippy::float_cmp)]

mod common;

use common::{
    all_configs, assert_bit_identical, assert_rejected, assert_resumes_bit_identically,
    build_default, elements, flattened, layout, mean_at, merged_default, random_dict, round_trip,
    run, run_default, single, stream, task_vector_sum, weights, with_value,
};
use madeit_linalg::random::orthonormal;
use madeit_merge::{
    ContinualMerger, MergeError, MergerState, MethodConfig, OpcmConfig, Step, TaskArithmeticConfig,
    TaskId, TiesConfig, opcm_projection, resume,
};
use madeit_params::{DType, ParamDict, ParamsError, Tensor};

fn id(s: &str) -> TaskId {
    TaskId::new(s)
}

/// `m` after absorbing `steps` (each a fine-tuned model and its task name) over `pre`.
fn absorbed(
    mut m: Box<dyn ContinualMerger>,
    pre: &ParamDict,
    steps: &[(&ParamDict, &str)],
) -> Box<dyn ContinualMerger> {
    for &(ft, name) in steps {
        m.absorb(&Step::new(pre, ft, &id(name))).unwrap();
    }
    m
}

#[test]
fn task_arithmetic_one_task_lambda_one_is_the_finetuned_model() {
    let (pre, tasks) = stream(1, 11);
    let cfg = MethodConfig::TaskArithmetic(TaskArithmeticConfig { lambda: 1.0 });
    let m = run(&cfg, &pre, &tasks);
    assert_bit_identical(&m.merged(&pre).unwrap(), &tasks[0]);
}

#[test]
fn task_arithmetic_is_lambda_times_the_sum_of_task_vectors() {
    let (pre, tasks) = stream(4, 12);
    let merged = merged_default("task_arithmetic", &pre, &tasks);
    for (name, i, p0) in elements(&pre) {
        let got = merged.get(name).unwrap().data()[i];
        let want = f64::from(p0) + 0.3 * task_vector_sum(&tasks, name, i, p0);
        assert!((f64::from(got) - want).abs() < 1e-6, "{name}[{i}]");
    }
}

/// Averaging identical models returns that model. Feeding the very same model twice is a
/// duplicate (rejected by the contract), so the models differ in one tensor only: every
/// other tensor is averaged over identical values and must come back bit-identical.
#[test]
fn swa_of_identical_models_is_that_model() {
    let (pre, tasks) = stream(1, 14);
    let mut second = tasks[0].clone();
    for x in second.get_mut("post_layernorm.bias").unwrap().data_mut() {
        *x += 1.0;
    }
    let mut third = tasks[0].clone();
    for x in third.get_mut("post_layernorm.bias").unwrap().data_mut() {
        *x -= 1.0;
    }
    let m = absorbed(
        build_default("swa"),
        &pre,
        &[(&tasks[0], "a"), (&second, "b"), (&third, "c")],
    );
    let merged = m.merged(&pre).unwrap();
    for (name, t) in tasks[0].iter() {
        if name == "post_layernorm.bias" {
            continue;
        }
        let got = merged.get(name).unwrap();
        for (x, y) in got.data().iter().zip(t.data()) {
            assert_eq!(x.to_bits(), y.to_bits(), "{name}");
        }
    }
}

#[test]
fn swa_of_t_models_is_their_mean() {
    let (pre, tasks) = stream(5, 15);
    let merged = merged_default("swa", &pre, &tasks);
    for (name, i, got) in elements(&merged) {
        let mean = mean_at(&tasks, name, i);
        assert!((f64::from(got) - mean).abs() < 1e-6, "{name}[{i}]");
    }
}

#[test]
fn opcm_first_task_is_the_finetuned_model() {
    let (pre, tasks) = stream(1, 16);
    assert_bit_identical(&merged_default("opcm", &pre, &tasks), &tasks[0]);
}

/// Task vectors whose dominant row and column spaces are orthogonal: `τ_1 = U diag(s) V^T`
/// (two large singular values and a small full-rank tail, so the SVD is well defined) and
/// `τ_2` supported on pairs `u_i v_j^T`, `i ≠ j`, of the tail directions only. OPCM's
/// projection removes the diagonal of `U^T τ_2 V` and its leading `k × k` block, both zero
/// here, so `P(τ_2) = τ_2` and the merge is `θ_0 + n̄ (τ_1 + τ_2) / ‖τ_1 + τ_2‖`.
#[test]
fn opcm_leaves_orthogonal_task_vectors_intact() {
    let (m, n) = (7, 5);
    let u = orthonormal::<f64>(m, n, 1).unwrap();
    let v = orthonormal::<f64>(n, n, 2).unwrap();
    let s = [2.5, 2.45, 0.06, 0.05, 0.04];
    let tau1 = faer::Mat::<f64>::from_fn(m, n, |i, j| {
        (0..n).map(|r| u[(i, r)] * s[r] * v[(j, r)]).sum()
    });
    let pairs = [(2, 3, 0.7), (3, 4, -0.4), (4, 2, 0.3)];
    let tau2 = faer::Mat::<f64>::from_fn(m, n, |i, j| {
        pairs
            .iter()
            .map(|&(a, b, c)| c * u[(i, a)] * v[(j, b)])
            .sum()
    });

    // The projection on its own.
    let (p, k) = opcm_projection(tau1.as_ref(), tau2.as_ref(), 0.5).unwrap();
    assert_eq!(k, 1, "cumsum(s)/sum(s) first exceeds 0.5 at index 1");
    let err = (0..m)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| (p[(i, j)] - tau2[(i, j)]).abs())
        .fold(0.0, f64::max);
    assert!(err < 1e-12, "P(τ2) differs from τ2 by {err}");

    // The whole merge, with a bias that is merged without projection.
    let to_f32 = |a: &faer::Mat<f64>| -> Vec<f32> {
        (0..m)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| a[(i, j)] as f32)
            .collect()
    };
    let mut pre = ParamDict::new();
    pre.insert(
        "layer.weight",
        Tensor::new(vec![m, n], vec![0.0; m * n]).unwrap(),
    );
    pre.insert("layer.bias", Tensor::new(vec![m], vec![0.0; m]).unwrap());
    let mut t1 = ParamDict::new();
    t1.insert(
        "layer.weight",
        Tensor::new(vec![m, n], to_f32(&tau1)).unwrap(),
    );
    t1.insert("layer.bias", Tensor::new(vec![m], vec![0.5; m]).unwrap());
    let mut t2 = ParamDict::new();
    t2.insert(
        "layer.weight",
        Tensor::new(vec![m, n], to_f32(&tau2)).unwrap(),
    );
    t2.insert("layer.bias", Tensor::new(vec![m], vec![-0.25; m]).unwrap());

    // In double precision to 1e-6, and in the default single precision (the reference's)
    // to the f32 rounding of the SVD (1e-5 on entries of size 0.3).
    for (config, tol) in [
        ("method = \"opcm\"\nprecision = \"f64\"", 1e-6),
        ("method = \"opcm\"", 1e-5),
    ] {
        let mut merger = MethodConfig::from_toml_str(config)
            .unwrap()
            .build()
            .unwrap();
        merger.absorb(&Step::new(&pre, &t1, &id("one"))).unwrap();
        let report = merger.absorb(&Step::new(&pre, &t2, &id("two"))).unwrap();
        let merged = merger.merged(&pre).unwrap();

        let sum = t1.add(&t2).unwrap();
        let nbar = (t1.l2_norm() + t2.l2_norm()) / 2.0;
        let scale = nbar / sum.l2_norm();
        for (name, t) in sum.iter() {
            for (got, want) in merged.get(name).unwrap().data().iter().zip(t.data()) {
                let want = f64::from(*want) * scale;
                assert!(
                    (f64::from(*got) - want).abs() < tol,
                    "{config}: {name}: {got} vs {want}"
                );
            }
        }
        assert!((report.merged_delta_norm - nbar).abs() < 1e-9);
        assert!((report.metrics["lambda"] - sum.l2_norm() / nbar).abs() < tol);
    }
}

/// TIES on a 10-element model, worked by hand (λ = 1, θ_0 = 0, so θ^(1) = r_0):
/// r_0 = [5, -4, 2, 2, 2, 1, 0.5, 0, 0, 0]; r_1 = [-6, 4, -1, 3, 0, 0, 0, -3, 0.25, 1].
/// k = 10 - int(10 · 0.2) = 8: keep |x| ≥ 8th smallest, 2 for r_0 (ties keep all three 2s)
/// and 3 for r_1. Trimmed sum [-1, 0, 2, 5, 2, 0, 0, -3, 0, 0] → signs
/// [-1, 0, 1, 1, 1, 0, 0, -1, 0, 0], total +1, so zeros become +1.
fn ties_case(aggregate: &str) -> Vec<f32> {
    let r0 = vec![5.0, -4.0, 2.0, 2.0, 2.0, 1.0, 0.5, 0.0, 0.0, 0.0];
    let r1 = vec![-6.0, 4.0, -1.0, 3.0, 0.0, 0.0, 0.0, -3.0, 0.25, 1.0];
    let pre = single("w", vec![10], vec![0.0; 10]);
    let cfg = MethodConfig::from_toml_str(&format!(
        "method = \"ties\"\nlambda = 1.0\nkeep_fraction = 0.2\naggregate = \"{aggregate}\""
    ))
    .unwrap();
    let m = run(
        &cfg,
        &pre,
        &[single("w", vec![10], r0), single("w", vec![10], r1)],
    );
    m.merged(&pre).unwrap().get("w").unwrap().data().to_vec()
}

#[test]
fn ties_hand_computed_sum() {
    // u = [-6, 4, 2, 5, 2, 0, 0, -3, 0, 0]; θ^(2) = r_0 + u.
    assert_eq!(
        ties_case("sum"),
        vec![-1.0, 0.0, 4.0, 7.0, 4.0, 1.0, 0.5, -3.0, 0.0, 0.0]
    );
}

#[test]
fn ties_hand_computed_mean_and_max() {
    // mean: index 3 averages 2 and 3; max: index 3 takes 3.
    assert_eq!(
        ties_case("mean"),
        vec![-1.0, 0.0, 4.0, 4.5, 4.0, 1.0, 0.5, -3.0, 0.0, 0.0]
    );
    assert_eq!(
        ties_case("max"),
        vec![-1.0, 0.0, 4.0, 5.0, 4.0, 1.0, 0.5, -3.0, 0.0, 0.0]
    );
}

#[test]
fn ties_zero_majority_keeps_negative_entries() {
    // keep_fraction = 1 keeps everything. r_0 = [1, -2, 0, 0], r_1 = [-1, 0, 3, 0]:
    // signs of the sum [0, -1, 1, 0] add up to 0, so the zero signs stay 0 and the
    // reference's `where(sign > 0, v > 0, v < 0)` keeps the negative entries there:
    // u = [-1, -2, 3, 0].
    let pre = single("w", vec![4], vec![0.0; 4]);
    let cfg = MethodConfig::Ties(TiesConfig {
        lambda: 1.0,
        keep_fraction: 1.0,
        ..TiesConfig::default()
    });
    let m = run(
        &cfg,
        &pre,
        &[
            single("w", vec![4], vec![1.0, -2.0, 0.0, 0.0]),
            single("w", vec![4], vec![-1.0, 0.0, 3.0, 0.0]),
        ],
    );
    assert_eq!(
        m.merged(&pre).unwrap().get("w").unwrap().data(),
        &[0.0, -4.0, 3.0, 0.0]
    );
}

#[test]
fn ties_trim_is_global_over_all_tensors() {
    // Two tensors; the kept 20 % of the flattened model all sit in the first tensor, so
    // the second tensor's small entries are trimmed even though they are the largest of
    // their own tensor.
    let mut pre = ParamDict::new();
    pre.insert("a", Tensor::new(vec![5], vec![0.0; 5]).unwrap());
    pre.insert("b", Tensor::new(vec![5], vec![0.0; 5]).unwrap());
    let mk = |a: Vec<f32>, b: Vec<f32>| {
        let mut p = ParamDict::new();
        p.insert("a", Tensor::new(vec![5], a).unwrap());
        p.insert("b", Tensor::new(vec![5], b).unwrap());
        p
    };
    let t1 = mk(vec![9.0, 8.0, 0.0, 0.0, 0.0], vec![0.0, 0.0, 0.0, 0.0, 0.0]);
    // d = 10, k = 8: threshold = 8th smallest |x| of r_1 = [10, 9, 8, 0, 0, 1, 1, 1, 1, 1]
    // sorted 0,0,1,1,1,1,1,8,9,10 → 8; kept 10, 9, 8.
    let t2 = mk(
        vec![10.0, 9.0, 8.0, 0.0, 0.0],
        vec![1.0, 1.0, 1.0, 1.0, 1.0],
    );
    let cfg = MethodConfig::Ties(TiesConfig {
        lambda: 1.0,
        ..TiesConfig::default()
    });
    let m = run(&cfg, &pre, &[t1, t2]);
    let merged = m.merged(&pre).unwrap();
    // r_0 = [9, 8, 0...] (8th smallest of [9, 8, 0 x 8] is 0: everything kept).
    assert_eq!(
        merged.get("a").unwrap().data(),
        &[28.0, 25.0, 8.0, 0.0, 0.0]
    );
    assert_eq!(merged.get("b").unwrap().data(), &[0.0; 5]);
}

#[test]
fn magmax_picks_the_largest_magnitude() {
    let pre = single("w", vec![4], vec![1.0; 4]);
    let tasks = [
        single("w", vec![4], vec![2.0, 0.0, 1.0, 1.5]), // τ = [1, -1, 0, 0.5]
        single("w", vec![4], vec![-1.0, 1.5, 1.0, 0.5]), // τ = [-2, 0.5, 0, -0.5]
        single("w", vec![4], vec![1.0, 4.0, 0.0, 1.25]), // τ = [0, 3, -1, 0.25]
    ];
    let m = run_default("magmax", &pre, &tasks);
    // τ_max = [-2, 3, -1, -0.5] (ties go to the newer task); θ = 1 + 0.5 τ_max.
    assert_eq!(
        m.merged(&pre).unwrap().get("w").unwrap().data(),
        &[0.0, 2.5, 0.5, 0.75]
    );
}

#[test]
fn save_and_restore_mid_stream_is_bit_identical_for_every_method() {
    let (pre, tasks) = stream(5, 21);
    for cfg in all_configs() {
        assert_resumes_bit_identically(&cfg, &pre, &tasks);
    }
}

#[test]
fn restore_rejects_a_state_of_another_method_or_configuration() {
    let (pre, tasks) = stream(2, 22);
    let ta = run_default("task_arithmetic", &pre, &tasks);
    let mut swa = build_default("swa");
    assert!(matches!(
        swa.restore(&ta.state().unwrap()),
        Err(MergeError::InvalidState { method: "swa", .. })
    ));
    let mut other = MethodConfig::TaskArithmetic(TaskArithmeticConfig { lambda: 0.1 })
        .build()
        .unwrap();
    assert!(matches!(
        other.restore(&ta.state().unwrap()),
        Err(MergeError::InvalidState { .. })
    ));
    assert_eq!(other.num_tasks(), 0);
    // A state whose tensors were tampered with is caught when it is used.
    let mut state = ta.state().unwrap();
    state.tensors.remove("merged.post_layernorm.bias");
    let mut broken = resume(&state).unwrap();
    let err = broken.merged(&pre).unwrap_err();
    assert!(err.to_string().contains("post_layernorm.bias"), "{err}");
    let err = broken
        .absorb(&Step::new(&pre, &tasks[0].scale(1.5), &id("x")))
        .unwrap_err();
    assert!(err.to_string().contains("post_layernorm.bias"), "{err}");
}

#[test]
fn duplicate_tasks_are_rejected() {
    let (pre, tasks) = stream(2, 23);
    for cfg in all_configs() {
        let steps = [(&tasks[0], "a"), (&tasks[1], "b")];
        let mut m = absorbed(cfg.build().unwrap(), &pre, &steps);
        match m.absorb(&Step::new(&pre, &tasks[0], &id("c"))) {
            Err(MergeError::Admission(madeit_merge::AdmitError::DuplicateTask {
                task,
                previous,
            })) => {
                assert_eq!((task.as_str(), previous.as_str()), ("c", "a"));
            }
            other => panic!("{}: expected DuplicateTask, got {other:?}", cfg.name()),
        }
        assert!(matches!(
            m.absorb(&Step::new(&pre, &tasks[0].scale(1.1), &id("b"))),
            Err(MergeError::Admission(
                madeit_merge::AdmitError::DuplicateTaskName { .. }
            ))
        ));
        assert_eq!(m.num_tasks(), 2);
        // The duplicate check survives a save and restore.
        let mut r = resume(&round_trip(&m.state().unwrap())).unwrap();
        assert!(matches!(
            r.absorb(&Step::new(&pre, &tasks[1], &id("d"))),
            Err(MergeError::Admission(
                madeit_merge::AdmitError::DuplicateTask { .. }
            ))
        ));
    }
}

#[test]
fn non_finite_models_are_rejected_and_named() {
    let (pre, tasks) = stream(2, 24);
    for cfg in all_configs() {
        let mut m = absorbed(cfg.build().unwrap(), &pre, &[(&tasks[0], "a")]);
        let before = m.state().unwrap();
        let bad = with_value(&tasks[1], "encoder.layers.0.mlp.fc1.weight", 3, f32::NAN);
        let err = m.absorb(&Step::new(&pre, &bad, &id("b"))).unwrap_err();
        match &err {
            MergeError::Admission(madeit_merge::AdmitError::NonFinite { task, source }) => {
                assert_eq!(task.as_str(), "b");
                assert_eq!(
                    source.tensor_name(),
                    Some("encoder.layers.0.mlp.fc1.weight")
                );
            }
            other => panic!("expected NonFinite, got {other:?}"),
        }
        // Atomic: nothing changed.
        assert_eq!(m.state().unwrap(), before);
        let bad = with_value(&bad, "encoder.layers.0.mlp.fc1.weight", 3, f32::INFINITY);
        assert!(matches!(
            m.absorb(&Step::new(&pre, &bad, &id("b"))),
            Err(MergeError::Admission(
                madeit_merge::AdmitError::NonFinite { .. }
            ))
        ));
    }
    let bad_pre = with_value(&pre, "pre_layrnorm.weight", 0, f32::NAN);
    let mut m = build_default("opcm");
    let err = m
        .absorb(&Step::new(&bad_pre, &tasks[0], &id("a")))
        .unwrap_err();
    assert!(
        matches!(
            err,
            MergeError::Admission(madeit_merge::AdmitError::NonFinitePretrained { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("pre_layrnorm.weight"));
}

#[test]
fn incompatible_models_are_rejected_and_named() {
    let (pre, tasks) = stream(1, 25);
    let mut m = build_default("ties");

    let mut missing = tasks[0].clone();
    missing.remove("encoder.layers.0.mlp.fc2.weight");
    let err = m.absorb(&Step::new(&pre, &missing, &id("a"))).unwrap_err();
    assert!(
        matches!(&err, MergeError::Admission(madeit_merge::AdmitError::Incompatible { source: ParamsError::MissingKey { name }, .. }) if name == "encoder.layers.0.mlp.fc2.weight"),
        "{err:?}"
    );

    let mut extra = tasks[0].clone();
    extra.insert("head.weight", Tensor::zeros(vec![2, 2]).unwrap());
    let err = m.absorb(&Step::new(&pre, &extra, &id("a"))).unwrap_err();
    assert!(err.to_string().contains("head.weight"), "{err}");

    let reshaped = flattened(&tasks[0], "encoder.layers.0.mlp.fc1.weight");
    let err = m.absorb(&Step::new(&pre, &reshaped, &id("a"))).unwrap_err();
    assert!(
        matches!(&err, MergeError::Admission(madeit_merge::AdmitError::Incompatible { source: ParamsError::ShapeMismatch { name, .. }, .. }) if name == "encoder.layers.0.mlp.fc1.weight"),
        "{err:?}"
    );

    let mut half = tasks[0].clone();
    let t = half
        .remove("post_layernorm.bias")
        .unwrap()
        .with_dtype(DType::F16);
    half.insert("post_layernorm.bias", t);
    let err = m.absorb(&Step::new(&pre, &half, &id("a"))).unwrap_err();
    assert!(
        matches!(&err, MergeError::Admission(madeit_merge::AdmitError::Incompatible { source: ParamsError::DTypeMismatch { name, .. }, .. }) if name == "post_layernorm.bias"),
        "{err:?}"
    );
    assert_eq!(m.num_tasks(), 0);
    assert!(matches!(
        m.absorb(&Step::new(&ParamDict::new(), &ParamDict::new(), &id("a"))),
        Err(MergeError::Admission(madeit_merge::AdmitError::EmptyModel))
    ));
}

#[test]
fn merged_on_an_empty_stream_is_an_error() {
    let (pre, _) = stream(0, 26);
    for cfg in all_configs() {
        let m = cfg.build().unwrap();
        assert!(matches!(
            m.merged(&pre),
            Err(MergeError::EmptyStream { .. })
        ));
    }
}

#[test]
fn a_different_pretrained_model_is_rejected() {
    let (pre, tasks) = stream(2, 27);
    let mut m = absorbed(build_default("magmax"), &pre, &[(&tasks[0], "a")]);
    let mut other = pre.clone();
    other.get_mut("pre_layrnorm.weight").unwrap().data_mut()[1] += 1e-3;
    assert!(matches!(
        m.absorb(&Step::new(&other, &tasks[1], &id("b"))),
        Err(MergeError::Admission(
            madeit_merge::AdmitError::PretrainedChanged { .. }
        ))
    ));
    assert!(matches!(
        m.merged(&other),
        Err(MergeError::Admission(
            madeit_merge::AdmitError::PretrainedChanged { .. }
        ))
    ));
    // Key order does not matter.
    let reordered: ParamDict = {
        let mut v: Vec<(String, Tensor)> = pre.clone().into_iter().collect();
        v.reverse();
        v.into_iter().collect()
    };
    let merged = m.merged(&reordered).unwrap();
    assert_eq!(merged.keys().next(), reordered.keys().next());
}

#[test]
fn merged_keeps_the_pretrained_dtypes() {
    let lay = layout(4, 6);
    let pre: ParamDict = random_dict(&lay, 0.5, 1)
        .into_iter()
        .map(|(n, t)| (n, t.with_dtype(DType::BF16)))
        .collect();
    let ft: ParamDict = random_dict(&lay, 0.5, 2)
        .into_iter()
        .map(|(n, t)| (n, t.with_dtype(DType::BF16)))
        .collect();
    for cfg in all_configs() {
        let m = run(&cfg, &pre, std::slice::from_ref(&ft));
        let model = m.merged_model(&pre).unwrap();
        let merged = weights(&model);
        assert!(merged.iter().all(|(_, t)| t.dtype() == DType::BF16));
        // The state is all-f32, so that saving it is exact.
        assert!(
            m.state()
                .unwrap()
                .tensors
                .iter()
                .all(|(_, t)| t.dtype() == DType::F32)
        );
    }
}

#[test]
fn configurations_parse_with_defaults_and_reject_unknowns() {
    let c = MethodConfig::from_toml_str("method = \"opcm\"").unwrap();
    assert_eq!(c, MethodConfig::Opcm(OpcmConfig::default()));
    let c = MethodConfig::from_json_str(r#"{"method": "task_arithmetic", "scaling_factor": 0.1}"#)
        .unwrap();
    assert_eq!(
        c,
        MethodConfig::TaskArithmetic(TaskArithmeticConfig { lambda: 0.1 })
    );
    // Serialisation round trip.
    for cfg in all_configs() {
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(MethodConfig::from_json_str(&json).unwrap(), cfg, "{json}");
        let back: MethodConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
        assert!(cfg.info().reference.starts_with("https://github.com/"));
    }

    let err = MethodConfig::from_toml_str("method = \"dare\"").unwrap_err();
    assert!(
        matches!(&err, MergeError::UnknownMethod { name, available } if name == "dare" && available.contains("opcm")),
        "{err:?}"
    );
    let err = MethodConfig::from_toml_str("method = \"opcm\"\nalpah = 0.4").unwrap_err();
    assert!(matches!(&err, MergeError::InvalidConfig { .. }), "{err:?}");
    assert!(err.to_string().contains("alpah"), "{err}");
    let err = MethodConfig::from_toml_str("method = \"swa\"\nlambda = 1").unwrap_err();
    assert!(err.to_string().contains("lambda"), "{err}");
    let err = MethodConfig::from_toml_str("lambda = 1").unwrap_err();
    assert!(err.to_string().contains("method"), "{err}");
    let err =
        MethodConfig::from_toml_str("method = \"ties\"\nkeep_fraction = \"a lot\"").unwrap_err();
    assert!(err.to_string().contains("keep_fraction"), "{err}");

    assert_rejected("method = \"ties\"\nkeep_fraction = 20", "keep_fraction");
    assert_rejected("method = \"opcm\"\nalpha = 1.5", "alpha");
    let bad = MethodConfig::TaskArithmetic(TaskArithmeticConfig { lambda: f64::NAN });
    assert!(bad.build().is_err());
    assert!(matches!(
        MethodConfig::default_for("nope"),
        Err(MergeError::UnknownMethod { .. })
    ));
}

#[test]
fn corrupt_state_metadata_is_rejected() {
    let (pre, tasks) = stream(1, 28);
    let m = run_default("opcm", &pre, &tasks);
    let state = m.state().unwrap();
    let json = state.metadata_json().unwrap();
    let bad = json.replace("\"opcm\"", "\"nope\"");
    let err = MergerState::from_parts(&bad, state.tensors.clone()).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let bad = json.replace("\"lambda\":\"0x", "\"lambda\":\"0y");
    let s = MergerState::from_parts(&bad, state.tensors.clone()).unwrap();
    assert!(matches!(resume(&s), Err(MergeError::InvalidState { .. })));
}

#[test]
fn step_reports_describe_the_step() {
    let (pre, tasks) = stream(3, 29);
    let mut m = build_default("opcm");
    let mut norms = Vec::new();
    for (i, ft) in tasks.iter().enumerate() {
        let r = m
            .absorb(&Step::new(&pre, ft, &id(&format!("t{i}"))))
            .unwrap();
        let tau = ft.sub(&pre).unwrap();
        assert!((r.task_vector_norm - tau.l2_norm()).abs() < 1e-9 * tau.l2_norm());
        norms.push(r.task_vector_norm);
        assert_eq!(r.step, i + 1);
        // ‖θ^(t) − θ_0‖ = mean of the task-vector norms.
        let mean = norms.iter().sum::<f64>() / norms.len() as f64;
        assert!((r.merged_delta_norm - mean).abs() < 1e-9 * mean);
        let actual = m.merged(&pre).unwrap().sub(&pre).unwrap().l2_norm();
        assert!((actual - mean).abs() < 1e-5 * mean, "{actual} vs {mean}");
    }
}

#[test]
fn a_degenerate_opcm_step_is_an_error_and_changes_nothing() {
    // Both task vectors zero except in the class embedding, which the quirk carries over
    // from step 1 where it was zero: Δ' = 0 and λ is undefined.
    let mut pre = ParamDict::new();
    pre.insert(
        "embeddings.class_embedding",
        Tensor::new(vec![2], vec![0.0, 0.0]).unwrap(),
    );
    pre.insert("w.weight", Tensor::new(vec![2, 2], vec![0.0; 4]).unwrap());
    let t1 = pre.clone(); // τ_1 = 0
    let mut t2 = pre.clone();
    t2.get_mut("embeddings.class_embedding").unwrap().data_mut()[1] = 1.0;
    let mut m = absorbed(build_default("opcm"), &pre, &[(&t1, "a")]);
    let before = m.state().unwrap();
    let err = m.absorb(&Step::new(&pre, &t2, &id("b"))).unwrap_err();
    assert!(matches!(err, MergeError::Degenerate { .. }), "{err:?}");
    assert_eq!(m.state().unwrap(), before);
}
