//! Continual Iso-C (`c_iso_c`): hand-computed merges, the spectrum identity of the paper,
//! state round trips and bad input.
#![allow(clippy::unwrap_used, clippy::panic, clippy::cast_precision_loss)]

mod common;

use common::{
    assert_bit_identical, layout, mat_max_abs_diff, mm, random_dict, round_trip, run, single,
    stream,
};
use faer::Mat;
use madeit_linalg::thin_svd;
use madeit_merge::{
    ContinualMerger, IsoCConfig, MergeError, MethodConfig, ParameterError, Step, TaskId,
    iso_c_matrix, resume,
};
use madeit_params::{ParamDict, Tensor};
use proptest::prelude::*;

fn iso(alpha: f64) -> MethodConfig {
    MethodConfig::IsoC(IsoCConfig {
        alpha,
        ..IsoCConfig::default()
    })
}

/// A model with a matrix `w` (`rows × cols`, row-major) and a bias `b`.
fn model(rows: usize, cols: usize, w: &[f32], b: &[f32]) -> ParamDict {
    let mut p = ParamDict::new();
    p.insert("w", Tensor::new(vec![rows, cols], w.to_vec()).unwrap());
    p.insert("b", Tensor::new(vec![b.len()], b.to_vec()).unwrap());
    p
}

fn merged_data(m: &dyn ContinualMerger, pre: &ParamDict, name: &str) -> Vec<f32> {
    m.merged(pre).unwrap().get(name).unwrap().data().to_vec()
}

fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol,
            "[{i}]: got {g}, want {w} (all: {got:?})"
        );
    }
}

#[test]
fn registry_entry_defaults_and_forms() {
    let c = MethodConfig::default_for("c_iso_c").unwrap();
    assert_eq!(c, MethodConfig::IsoC(IsoCConfig::default()));
    assert_eq!(c.name(), "c_iso_c");
    assert_eq!(c.info().label, "C. Iso-C");
    assert!(!c.info().default_run, "Iso-C is opt-in");
    assert_eq!(IsoCConfig::default().alpha, 1.0);
    assert!(IsoCConfig::default().exclude.is_empty());
    // TOML, JSON and the serde form round-trip; `scaling_factor` is an alias of `alpha`.
    let t = MethodConfig::from_toml_str("method = \"c_iso_c\"\nalpha = 1.5").unwrap();
    assert_eq!(t, iso(1.5));
    let j = MethodConfig::from_json_str(r#"{"method": "c_iso_c", "scaling_factor": 1.5}"#).unwrap();
    assert_eq!(j, iso(1.5));
    let v = serde_json::to_value(&t).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"method": "c_iso_c", "alpha": 1.5, "exclude": []})
    );
    assert_eq!(MethodConfig::from_json_value(v).unwrap(), t);
}

#[test]
fn a_symmetric_two_by_two_sum_by_hand() {
    // S = τ_1 + τ_2 = [[1, 2], [2, 1]] = Q diag(3, −1) Q^T, Q = [[1, 1], [1, −1]]/√2:
    // σ = (3, 1), U V^T = Q diag(1, −1) Q^T = [[0, 1], [1, 0]], mean σ = 2,
    // so with α = 0.5 the update is [[0, 1], [1, 0]]. The bias is α · mean(τ).
    let pre = model(2, 2, &[0.5, -1.0, 2.0, 0.25], &[1.0, -1.0]);
    let t1 = model(2, 2, &[1.5, 1.0, 2.0, 0.25], &[2.0, -1.0]);
    let t2 = model(2, 2, &[0.5, -1.0, 4.0, 1.25], &[1.0, 3.0]);
    let m = run(&iso(0.5), &pre, &[t1, t2]);
    assert_close(
        &merged_data(m.as_ref(), &pre, "w"),
        &[0.5, 0.0, 3.0, 0.25],
        1e-6,
    );
    // b: τ_1 = (1, 0), τ_2 = (0, 4), mean (0.5, 2), times 0.5.
    assert_close(&merged_data(m.as_ref(), &pre, "b"), &[1.25, 0.0], 1e-6);
}

#[test]
fn rectangular_sums_by_hand() {
    // 3 × 2: S = [[3, 0], [0, 1], [0, 0]]: σ = (3, 1), U V^T = [[1, 0], [0, 1], [0, 0]].
    let pre = model(3, 2, &[0.0; 6], &[0.0]);
    let t1 = model(3, 2, &[1.0, 0.0, 0.0, 1.0, 0.0, 0.0], &[1.0]);
    let t2 = model(3, 2, &[2.0, 0.0, 0.0, 0.0, 0.0, 0.0], &[3.0]);
    let m = run(&iso(1.0), &pre, &[t1, t2]);
    assert_close(
        &merged_data(m.as_ref(), &pre, "w"),
        &[2.0, 0.0, 0.0, 2.0, 0.0, 0.0],
        1e-6,
    );
    assert_close(&merged_data(m.as_ref(), &pre, "b"), &[2.0], 1e-6);

    // 2 × 3: S = [[0, 0, −2], [1, 0, 0]] = e1 · 2 · (−e3)^T + e2 · 1 · e1^T:
    // U V^T = [[0, 0, −1], [1, 0, 0]], mean σ = 1.5.
    let pre = model(2, 3, &[0.0; 6], &[0.0]);
    let t1 = model(2, 3, &[0.0, 0.0, -2.0, 0.0, 0.0, 0.0], &[1.0]);
    let t2 = model(2, 3, &[0.0, 0.0, 0.0, 1.0, 0.0, 0.0], &[-1.0]);
    let m = run(&iso(1.0), &pre, &[t1, t2]);
    assert_close(
        &merged_data(m.as_ref(), &pre, "w"),
        &[0.0, 0.0, -1.5, 1.5, 0.0, 0.0],
        1e-6,
    );
    assert_close(&merged_data(m.as_ref(), &pre, "b"), &[0.0], 1e-6);
}

#[test]
fn one_task_fills_the_spectrum_of_a_rank_deficient_sum_as_the_reference_does() {
    // S = diag(2, 0): σ = (2, 0), mean 1. The reference keeps every triplet, so the null
    // direction e2 e2^T is added with weight ±1 (its sign is the SVD's choice).
    let pre = model(2, 2, &[0.0; 4], &[0.0]);
    let t1 = model(2, 2, &[2.0, 0.0, 0.0, 0.0], &[4.0]);
    let m = run(&iso(1.0), &pre, &[t1]);
    let w = merged_data(m.as_ref(), &pre, "w");
    assert_close(&w[..3], &[1.0, 0.0, 0.0], 1e-6);
    assert!((w[3].abs() - 1.0).abs() < 1e-6, "{w:?}");
    assert_close(&merged_data(m.as_ref(), &pre, "b"), &[4.0], 1e-6);
}

#[test]
fn excluded_and_non_matrix_tensors_are_averaged() {
    let lay = layout(4, 6);
    let pre = random_dict(&lay, 0.5, 3);
    let tasks: Vec<ParamDict> = (0..3)
        .map(|i| pre.add(&random_dict(&lay, 0.1, 10 + i)).unwrap())
        .collect();
    let cfg = MethodConfig::IsoC(IsoCConfig {
        alpha: 0.7,
        exclude: vec!["position_embedding".to_owned()],
    });
    let m = run(&cfg, &pre, &tasks);
    let merged = m.merged(&pre).unwrap();
    for (name, p) in pre.iter() {
        let is_matrix = p.shape().len() == 2 && !name.contains("position_embedding");
        let got = merged.get(name).unwrap().data();
        let mean: Vec<f64> = (0..p.numel())
            .map(|i| {
                tasks
                    .iter()
                    .map(|t| f64::from(t.get(name).unwrap().data()[i]) - f64::from(p.data()[i]))
                    .sum::<f64>()
                    / 3.0
            })
            .collect();
        let avg: Vec<f64> = p
            .data()
            .iter()
            .zip(&mean)
            .map(|(&a, &x)| f64::from(a) + 0.7 * x)
            .collect();
        let max_dev = got
            .iter()
            .zip(&avg)
            .map(|(&g, &w)| (f64::from(g) - w).abs())
            .fold(0.0, f64::max);
        if is_matrix {
            assert!(max_dev > 1e-3, "{name} was averaged, not made isotropic");
        } else {
            assert!(max_dev < 1e-5, "{name}: {max_dev}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The paper's identity: every singular value of the update is `mean(σ)` of the sum,
    /// and (for a full-rank sum, which a random one is) its column and row spaces are the
    /// sum's.
    #[test]
    fn the_update_is_isotropic_on_the_spaces_of_the_sum(
        m in 1usize..7, n in 1usize..7, tasks in 1usize..4, seed in 0u64..1000,
    ) {
        let mut sum = Mat::<f64>::zeros(m, n);
        for t in 0..tasks {
            let tau = madeit_linalg::random::gaussian::<f64>(m, n, seed * 10 + t as u64);
            sum = Mat::from_fn(m, n, |i, j| sum[(i, j)] + tau[(i, j)]);
        }
        let s = thin_svd(sum.as_ref()).unwrap();
        let mean = s.s.iter().sum::<f64>() / s.s.len() as f64;
        let upd = iso_c_matrix(sum.as_ref()).unwrap();
        let su = thin_svd(upd.as_ref()).unwrap();
        for &x in &su.s {
            prop_assert!((x - mean).abs() <= 1e-9 * mean.max(1.0), "{:?} vs {mean}", su.s);
        }
        // P_U upd = upd and upd P_V = upd, with U, V the sum's singular vectors.
        let pu = mm(s.u.as_ref(), s.u.transpose());
        let pv = mm(s.v.as_ref(), s.v.transpose());
        let left = mm(pu.as_ref(), upd.as_ref());
        let right = mm(upd.as_ref(), pv.as_ref());
        prop_assert!(mat_max_abs_diff(left.as_ref(), upd.as_ref()) <= 1e-9 * mean.max(1.0));
        prop_assert!(mat_max_abs_diff(right.as_ref(), upd.as_ref()) <= 1e-9 * mean.max(1.0));
        // And the sum lies in the update's spaces too (same rank, same spaces).
        let pu2 = mm(su.u.as_ref(), su.u.transpose());
        let back = mm(pu2.as_ref(), sum.as_ref());
        prop_assert!(mat_max_abs_diff(back.as_ref(), sum.as_ref()) <= 1e-9 * s.s[0].max(1.0));
    }

    /// Through the merger: the merged model is `θ_0 + α · iso(Σ τ)` on matrices (to `f32`
    /// rounding) for any `α`.
    #[test]
    fn the_merger_adds_alpha_times_the_isotropic_sum(alpha in -2.0f64..2.0, seed in 0u64..500) {
        let (pre, tasks) = stream(3, seed + 1);
        let m = run(&iso(alpha), &pre, &tasks);
        let merged = m.merged(&pre).unwrap();
        let name = "encoder.layers.0.mlp.fc1.weight";
        let p = pre.get(name).unwrap();
        let (rows, cols) = (p.shape()[0], p.shape()[1]);
        let sum = Mat::<f64>::from_fn(rows, cols, |i, j| {
            tasks
                .iter()
                .map(|t| f64::from(t.get(name).unwrap().data()[i * cols + j]) - f64::from(p.data()[i * cols + j]))
                .sum()
        });
        let want = iso_c_matrix(sum.as_ref()).unwrap();
        let got = merged.get(name).unwrap().data();
        for i in 0..rows {
            for j in 0..cols {
                let w = f64::from(p.data()[i * cols + j]) + alpha * want[(i, j)];
                prop_assert!((f64::from(got[i * cols + j]) - w).abs() < 1e-5, "[{i},{j}]");
            }
        }
    }
}

#[test]
fn a_restored_stream_merges_bit_identically() {
    let (pre, tasks) = stream(4, 7);
    let cfg = iso(1.3);
    let full = run(&cfg, &pre, &tasks);
    let partial = run(&cfg, &pre, &tasks[..2]);
    let state = round_trip(&partial.state().unwrap());
    assert_eq!(state.method(), "c_iso_c");
    let mut resumed = resume(&state).unwrap();
    assert_bit_identical(
        &resumed.merged(&pre).unwrap(),
        &partial.merged(&pre).unwrap(),
    );
    for (i, ft) in tasks.iter().enumerate().skip(2) {
        resumed
            .absorb(&Step::new(&pre, ft, &TaskId::new(format!("t{}", i + 1))))
            .unwrap();
    }
    assert_bit_identical(&resumed.merged(&pre).unwrap(), &full.merged(&pre).unwrap());
    assert_eq!(resumed.tasks(), full.tasks());
    // The saved tensors are the running sum, one per parameter.
    assert_eq!(state.tensors.len(), pre.len());
    assert!(state.tensors.keys().all(|k| k.starts_with("sum.")));
    // A state of another configuration is refused.
    let mut other = iso(1.0).build().unwrap();
    assert!(matches!(
        other.restore(&state),
        Err(MergeError::InvalidState { .. })
    ));
}

#[test]
fn bad_input_is_an_error_and_changes_nothing() {
    let pre = model(2, 2, &[0.0; 4], &[0.0]);
    let good = model(2, 2, &[1.0, 0.0, 0.0, 1.0], &[1.0]);
    let mut m = iso(1.0).build().unwrap();
    m.absorb(&Step::new(&pre, &good, &TaskId::new("a")))
        .unwrap();
    let before = m.merged(&pre).unwrap();

    // Shape mismatch.
    let mut wrong = ParamDict::new();
    wrong.insert("w", Tensor::new(vec![4], vec![0.0; 4]).unwrap());
    wrong.insert("b", Tensor::new(vec![1], vec![0.0]).unwrap());
    assert!(matches!(
        m.absorb(&Step::new(&pre, &wrong, &TaskId::new("b"))),
        Err(MergeError::Admission(
            madeit_merge::AdmitError::Incompatible { .. }
        ))
    ));
    // A missing tensor.
    let missing = single("w", vec![2, 2], vec![0.0; 4]);
    assert!(matches!(
        m.absorb(&Step::new(&pre, &missing, &TaskId::new("b"))),
        Err(MergeError::Admission(
            madeit_merge::AdmitError::Incompatible { .. }
        ))
    ));
    // NaN.
    let nan = model(2, 2, &[f32::NAN, 0.0, 0.0, 1.0], &[2.0]);
    assert!(matches!(
        m.absorb(&Step::new(&pre, &nan, &TaskId::new("b"))),
        Err(MergeError::Admission(
            madeit_merge::AdmitError::NonFinite { .. }
        ))
    ));
    assert_eq!(m.num_tasks(), 1);
    assert_bit_identical(&m.merged(&pre).unwrap(), &before);

    // A NaN or infinite matrix handed to the isotropic map directly.
    let mut a = Mat::<f64>::zeros(2, 2);
    a[(0, 1)] = f64::NAN;
    assert!(iso_c_matrix(a.as_ref()).is_err());
    assert!(iso_c_matrix(Mat::<f64>::zeros(0, 3).as_ref()).is_err());
    assert_eq!(
        iso_c_matrix(Mat::<f64>::zeros(2, 3).as_ref()).unwrap(),
        Mat::<f64>::zeros(2, 3)
    );

    // Bad configurations (NaN and infinity do not pass through JSON: built directly).
    type Case = (&'static str, fn(&mut IsoCConfig));
    let cases: [Case; 3] = [
        ("alpha", |c| c.alpha = f64::NAN),
        ("alpha", |c| c.alpha = f64::INFINITY),
        ("exclude", |c| c.exclude = vec![String::new()]),
    ];
    for (parameter, spoil) in cases {
        let mut cfg = IsoCConfig::default();
        spoil(&mut cfg);
        match MethodConfig::IsoC(cfg.clone()).build() {
            Err(MergeError::InvalidParameter(ParameterError { parameter: p, .. })) => {
                assert_eq!(p, parameter)
            }
            other => panic!(
                "{cfg:?}: expected InvalidParameter, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    let parsed = MethodConfig::from_toml_str("method = \"c_iso_c\"\nexclude = [\"\"]").unwrap();
    assert!(matches!(
        parsed.check(),
        Err(MergeError::InvalidParameter(ParameterError {
            parameter: "exclude",
            ..
        }))
    ));
    assert!(matches!(
        MethodConfig::from_toml_str("method = \"c_iso_c\"\nlambda = 0.3"),
        Err(MergeError::InvalidConfig { .. })
    ));
    assert!(matches!(
        MethodConfig::from_toml_str("method = \"c_iso_c\"\nalpha = \"big\""),
        Err(MergeError::InvalidConfig { .. })
    ));
}
