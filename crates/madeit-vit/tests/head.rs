//! Task heads: cosine logits, accuracy, files and errors.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use burn::prelude::*;
use common::host;
use madeit_params::Tensor as HostTensor;
use madeit_vit::{LOGIT_SCALE, TaskHead, VitError, distillation_loss};

fn head() -> TaskHead {
    // Rows (3, 4) and (0, 2) and (-1, 0): normalised to unit length on construction.
    let w = HostTensor::new(vec![3, 2], vec![3.0, 4.0, 0.0, 2.0, -1.0, 0.0]).unwrap();
    TaskHead::new("toy", &w, vec!["a".into(), "b".into(), "c".into()]).unwrap()
}

fn embeds(rows: &[[f32; 2]]) -> Tensor<2> {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(data, [rows.len(), 2]), &Device::flex())
}

#[test]
fn logits_are_scaled_cosines() {
    let h = head();
    assert_eq!(h.weight(), &[0.6, 0.8, 0.0, 1.0, -1.0, 0.0]);
    let logits = host(&h.logits(embeds(&[[10.0, 0.0], [0.0, -0.5]])).unwrap());
    let want = [60.0, 0.0, -100.0, -80.0, -100.0, 0.0];
    for (g, w) in logits.data().iter().zip(want) {
        assert!((g - w).abs() < 1e-4, "{g} vs {w}");
    }
    assert_eq!(LOGIT_SCALE, 100.0);
}

#[test]
fn predictions_and_accuracy() {
    let h = head();
    let e = embeds(&[[1.0, 1.0], [0.1, 5.0], [-3.0, 0.1], [1.0, 0.0]]);
    assert_eq!(h.predict(e.clone()).unwrap(), vec![0, 1, 2, 0]);
    assert_eq!(h.accuracy(e.clone(), &[0, 1, 2, 2]).unwrap(), 0.75);
    assert!(matches!(
        h.accuracy(e.clone(), &[0, 1, 2]),
        Err(VitError::Head { .. })
    ));
    assert!(matches!(
        h.accuracy(e, &[0, 1, 2, 3]),
        Err(VitError::Head { .. })
    ));
}

#[test]
fn dimension_mismatch_is_an_error() {
    let h = head();
    let e = Tensor::<2>::zeros([2, 3], &Device::flex());
    match h.logits(e) {
        Err(VitError::Head { head, reason }) => {
            assert_eq!(head, "toy");
            assert!(reason.contains("3") && reason.contains("2"), "{reason}");
        }
        other => panic!("expected a head error, got {other:?}"),
    }
}

#[test]
fn bad_head_matrices_are_rejected() {
    let zero_row = HostTensor::new(vec![2, 2], vec![1.0, 0.0, 0.0, 0.0]).unwrap();
    assert!(matches!(
        TaskHead::new("z", &zero_row, vec![]),
        Err(VitError::Head { .. })
    ));
    let vector = HostTensor::new(vec![4], vec![1.0; 4]).unwrap();
    assert!(matches!(
        TaskHead::new("v", &vector, vec![]),
        Err(VitError::Head { .. })
    ));
    let w = HostTensor::new(vec![2, 2], vec![1.0, 0.0, 0.0, 1.0]).unwrap();
    assert!(matches!(
        TaskHead::new("n", &w, vec!["only one".into()]),
        Err(VitError::Head { .. })
    ));
    let nan = HostTensor::new(vec![1, 2], vec![f32::NAN, 1.0]).unwrap();
    assert!(matches!(
        TaskHead::new("nan", &nan, vec![]),
        Err(VitError::NonFiniteInput { .. })
    ));
}

#[test]
fn head_file_round_trip() {
    let h = head();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("toy_head.safetensors");
    h.save(&path).unwrap();
    let back = TaskHead::load(&path).unwrap();
    assert_eq!(back, h);
    assert_eq!(back.class_names(), ["a", "b", "c"]);
    assert_eq!((back.num_classes(), back.dim()), (3, 2));
    // A plain file with only `head.weight`: the name is the file stem, rows get normalised.
    let mut d = madeit_params::ParamDict::new();
    d.insert(
        "head.weight",
        HostTensor::new(vec![1, 2], vec![0.0, 3.0]).unwrap(),
    );
    let plain = dir.path().join("cars.safetensors");
    d.save(&plain).unwrap();
    let back = TaskHead::load(&plain).unwrap();
    assert_eq!(back.name(), "cars");
    assert_eq!(back.weight(), &[0.0, 1.0]);
    assert!(back.class_names().is_empty());
    // No `head.weight`.
    let mut d = madeit_params::ParamDict::new();
    d.insert(
        "other",
        HostTensor::new(vec![1, 2], vec![0.0, 3.0]).unwrap(),
    );
    d.save(&plain).unwrap();
    assert!(matches!(TaskHead::load(&plain), Err(VitError::Head { .. })));
}

#[test]
fn distillation_loss_is_the_tempered_cross_entropy() {
    let s = embeds(&[[1.0, -1.0], [0.5, 2.0]]);
    let t = embeds(&[[0.0, 2.0], [1.0, 1.0]]);
    let got = host(&distillation_loss(s, t, 2.0).unwrap()).data()[0];
    let rows = [([1.0f64, -1.0], [0.0f64, 2.0]), ([0.5, 2.0], [1.0, 1.0])];
    let mut want = 0.0;
    for (s, t) in rows {
        let st = [s[0] / 2.0, s[1] / 2.0];
        let tt = [t[0] / 2.0, t[1] / 2.0];
        let lse = (st[0].exp() + st[1].exp()).ln();
        let z = tt[0].exp() + tt[1].exp();
        want -= (tt[0].exp() / z) * (st[0] - lse) + (tt[1].exp() / z) * (st[1] - lse);
    }
    want /= 2.0;
    assert!((f64::from(got) - want).abs() < 1e-6, "{got} vs {want}");
    let bad = distillation_loss(embeds(&[[1.0, 0.0]]), embeds(&[[1.0, 0.0]]), 0.0);
    assert!(matches!(bad, Err(VitError::Head { .. })));
}
