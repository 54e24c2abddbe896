//! Continual layer-wise AdaMerging on a tiny random tower: the merge formula in both modes,
//! entropy minimisation, the clamp, the state and input validation.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use burn::prelude::*;
use common::{Fixture, UnwrapAdmission, absorb, absorb_with, absorbed, adam, adam_lr, fixture};
use madeit_adapt::{
    AdaMergingConfig, AdaptError, AdmitError, ContinualMethod, LwAdaMerging, SeedImages, Step,
    TestTimeMerger, entropy_loss,
};
use madeit_merge::{MethodConfig, TaskArithmeticConfig};
use madeit_params::{ParamDict, Tensor as HostTensor};
use madeit_stream::MergedModel;
use madeit_vit::ClipVisionModel;

fn merger(f: &Fixture, config: AdaMergingConfig) -> LwAdaMerging {
    LwAdaMerging::new(config, f.cfg.clone(), Device::flex()).unwrap()
}

fn dense(m: &LwAdaMerging, theta0: &ParamDict) -> ParamDict {
    match m.merged_model(theta0).unwrap() {
        MergedModel::Dense(p) => p,
        _ => panic!("expected a dense model"),
    }
}

fn max_diff(a: &ParamDict, b: &ParamDict) -> f32 {
    a.max_abs_diff(b).expect("same names, shapes and dtypes")
}

/// `theta0 + c_k tau[k]` with one coefficient per tensor (`coeff(name)`).
fn expected(theta0: &ParamDict, ft: &ParamDict, coeff: impl Fn(&str) -> f64) -> ParamDict {
    let mut out = ParamDict::new();
    for (name, p) in theta0.iter() {
        let c = coeff(name);
        let f = ft.get(name).unwrap();
        let data = p
            .data()
            .iter()
            .zip(f.data())
            .map(|(&a, &b)| (f64::from(a) + c * (f64::from(b) - f64::from(a))) as f32)
            .collect();
        out.insert(name, HostTensor::new(p.shape().to_vec(), data).unwrap());
    }
    out
}

fn zero_steps(accumulate: bool) -> AdaMergingConfig {
    AdaMergingConfig {
        accumulate,
        adam: adam(0, 4),
        ..AdaMergingConfig::default()
    }
}

#[test]
fn without_adaptation_each_step_starts_over_from_theta0() {
    let f = fixture(2, 4);
    let mut m = merger(&f, zero_steps(false));
    for t in 0..2 {
        let r = absorb(&mut m, &f, t);
        assert_eq!(r.base.step, t + 1);
        assert!(r.losses.is_empty());
        assert_eq!(r.base.metrics["accumulate"], 0.0);
        assert!((r.base.metrics["coefficient_mean"] - 0.3).abs() < 1e-7);
        assert!(r.kl_before.is_none() && r.kl_after.is_finite() && r.kl_after >= 0.0);
        let want = expected(&f.theta0, &f.tasks[t].1, |_| 0.3);
        let d = max_diff(&dense(&m, &f.theta0), &want);
        assert!(d <= 1e-6, "step {}: max|diff| {d}", t + 1);
    }
    // One coefficient per tensor of the tower (projection included).
    assert_eq!(m.coefficients().len(), 2);
    assert_eq!(m.coefficients()[1].len(), f.theta0.len());
    assert_eq!(m.coefficient_names().len(), f.theta0.len());
}

#[test]
fn without_adaptation_accumulate_is_continual_task_arithmetic() {
    let f = fixture(3, 4);
    let mut m = merger(&f, zero_steps(true));
    let mut ta = MethodConfig::TaskArithmetic(TaskArithmeticConfig { lambda: 0.3 })
        .build()
        .unwrap();
    for t in 0..3 {
        let r = absorb(&mut m, &f, t);
        assert_eq!(r.base.metrics["accumulate"], 1.0);
        let (id, ft, _, _) = &f.tasks[t];
        ta.absorb(&Step::new(&f.theta0, ft, id)).unwrap();
        let reference = ta.merged(&f.theta0).unwrap();
        let got = dense(&m, &f.theta0);
        let d = max_diff(&got, &reference);
        assert!(d <= 1e-6, "step {}: max|diff| to C-TA {d}", t + 1);
    }
    // The gated model is the dense merged model.
    let backbone = ClipVisionModel::from_params(&f.cfg, &f.theta0).unwrap();
    let gated = m.gated_model(&backbone).unwrap();
    let merged = ClipVisionModel::from_params(&f.cfg, &dense(&m, &f.theta0)).unwrap();
    let seed = &f.tasks[0].2;
    let a = gated.embed(seed.pixels().to_vec(), seed.len()).unwrap();
    let b = merged.embed(seed.pixels().to_vec(), seed.len()).unwrap();
    let d = a.max_abs_diff(&b).unwrap();
    assert!(d <= 1e-5, "gated vs dense forward max|diff| {d}");
}

#[test]
fn entropy_decreases_on_a_fixed_batch() {
    // Eight seed samples in batches of eight: every step sees the same batch (in another
    // order), so the entropy trace is a function of the coefficients alone.
    let f = fixture(1, 8);
    let config = AdaMergingConfig {
        adam: adam_lr(30, 8, 1e-2),
        ..AdaMergingConfig::default()
    };
    let mut m = merger(&f, config);
    let r = absorb(&mut m, &f, 0);
    assert_eq!(r.losses.len(), 30);
    let (first, last) = (r.losses[0], r.losses[29]);
    eprintln!("entropy: first {first:.6}, last {last:.6}");
    assert!(last < first, "entropy did not decrease: {first} -> {last}");
    assert!(r.kl_after < first, "final seed-set entropy {}", r.kl_after);
    // The coefficients moved away from their initial value.
    assert!(m.coefficients()[0].iter().any(|c| (c - 0.3).abs() > 1e-3));
}

#[test]
fn coefficients_are_clamped_in_the_merge() {
    // lr 1: the first Adam step moves every coefficient with a gradient by about 1, out of
    // [0, 1]; the merge must use the clamped values.
    let f = fixture(1, 4);
    let config = AdaMergingConfig {
        adam: adam_lr(2, 4, 1.0),
        ..AdaMergingConfig::default()
    };
    let mut m = merger(&f, config);
    let r = absorb(&mut m, &f, 0);
    let raw = m.coefficients()[0].clone();
    assert!(
        raw.iter().any(|c| !(0.0..=1.0).contains(c)),
        "no coefficient left [0, 1]: {raw:?}"
    );
    assert!(r.base.metrics["coefficients_clamped"] > 0.0);
    assert!(r.base.metrics["coefficient_min"] >= 0.0 && r.base.metrics["coefficient_max"] <= 1.0);
    let names = m.coefficient_names();
    let want = expected(&f.theta0, &f.tasks[0].1, |name| {
        let i = names.iter().position(|n| n == name).unwrap();
        f64::from(raw[i].clamp(0.0, 1.0))
    });
    let d = max_diff(&dense(&m, &f.theta0), &want);
    assert!(d <= 1e-6, "max|diff| {d}");
}

#[test]
fn state_round_trips_and_resumes_identically() {
    let f = fixture(2, 6);
    let config = AdaMergingConfig {
        accumulate: true,
        adam: adam_lr(2, 4, 1e-2),
        ..AdaMergingConfig::default()
    };
    let mut a = absorbed(merger(&f, config.clone()), &f, 1);
    let state = a.state().unwrap();
    let json = state.metadata_json().unwrap();
    let state = madeit_adapt::AdaptState::from_parts(&json, state.tensors.clone()).unwrap();
    let mut b = merger(&f, config.clone());
    b.restore(&state).unwrap();
    assert_eq!(b.tasks(), a.tasks());
    assert_eq!(b.coefficients(), a.coefficients());
    assert_eq!(max_diff(&dense(&a, &f.theta0), &dense(&b, &f.theta0)), 0.0);
    let ra = absorb(&mut a, &f, 1);
    let rb = absorb(&mut b, &f, 1);
    assert_eq!(ra.losses, rb.losses);
    assert_eq!(a.coefficients(), b.coefficients());
    assert_eq!(max_diff(&dense(&a, &f.theta0), &dense(&b, &f.theta0)), 0.0);

    // Another configuration or method is refused, the merger unchanged.
    let mut c = merger(
        &f,
        AdaMergingConfig {
            accumulate: false,
            ..config
        },
    );
    assert!(matches!(
        c.restore(&state),
        Err(AdaptError::InvalidState { .. })
    ));
    assert_eq!(c.num_tasks(), 0);
}

#[test]
fn bad_inputs_are_typed_errors_and_leave_the_merger_unchanged() {
    let f = fixture(1, 4);
    let mut m = merger(&f, zero_steps(false));
    let (id, ft, seed, head) = &f.tasks[0];

    let mut wrong_shape = ft.clone();
    wrong_shape.insert(
        "post_layernorm.bias",
        HostTensor::new(vec![3], vec![0.0; 3]).unwrap(),
    );
    let err =
        absorb_with(&mut m, &f.theta0, &wrong_shape, id, seed.clone(), head).unwrap_admission();
    assert!(matches!(err, AdmitError::Incompatible { .. }), "{err}");

    let mut nan = ft.clone();
    nan.get_mut("pre_layrnorm.weight").unwrap().data_mut()[0] = f32::NAN;
    let err = absorb_with(&mut m, &f.theta0, &nan, id, seed.clone(), head).unwrap_admission();
    assert!(matches!(err, AdmitError::NonFinite { .. }), "{err}");

    let empty = SeedImages::new(Vec::new(), 0);
    let err = absorb_with(&mut m, &f.theta0, ft, id, empty.clone(), head).unwrap_err();
    assert!(matches!(err, AdaptError::SeedData { .. }), "{err}");

    let err = LwAdaMerging::new(
        AdaMergingConfig {
            init: 1.5,
            ..AdaMergingConfig::default()
        },
        f.cfg.clone(),
        Device::flex(),
    )
    .unwrap_err();
    assert!(matches!(err, AdaptError::InvalidParameter(_)), "{err}");

    assert_eq!(m.num_tasks(), 0);
    assert!(matches!(
        m.merged_model(&f.theta0),
        Err(AdaptError::EmptyStream { .. })
    ));
    // Still usable after the failures.
    absorb(&mut m, &f, 0);
    assert_eq!(m.num_tasks(), 1);
}

#[test]
fn entropy_loss_matches_the_formula() {
    let device = Device::flex();
    let logits = [1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0];
    let t = Tensor::<2>::from_data(TensorData::new(logits.to_vec(), [2, 3]), &device);
    let got = madeit_vit::to_host(&entropy_loss(t)).unwrap().data()[0];
    let mut want = 0.0f64;
    for row in logits.chunks(3) {
        let z: f64 = row.iter().map(|x| f64::from(*x).exp()).sum();
        for x in row {
            let p = f64::from(*x).exp() / z;
            want -= p * (p + 1e-8).ln();
        }
    }
    want /= 2.0;
    assert!((f64::from(got) - want).abs() < 1e-6, "{got} vs {want}");
}
