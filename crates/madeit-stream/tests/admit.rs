//! The one admission of a task into a stream: every refusal, in the order the checks run,
//! and what an admitted task records.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use madeit_params::{ParamDict, Tensor};
use madeit_stream::{AdmitError, Fingerprint, Step, TaskId, TaskRecord, admit};

fn dict(values: &[f32]) -> ParamDict {
    let mut p = ParamDict::new();
    p.insert("w", Tensor::new(vec![2, 2], values[..4].to_vec()).unwrap());
    p.insert("b", Tensor::new(vec![1], values[4..5].to_vec()).unwrap());
    p
}

fn record(a: &madeit_stream::Admitted) -> TaskRecord {
    a.record.clone()
}

#[test]
fn an_admitted_task_records_its_fingerprints_and_exact_norm() {
    let pre = dict(&[1.0, 2.0, 3.0, 4.0, 5.0]);
    let ft = dict(&[1.0, 2.0, 3.0, 7.0, 1.0]);
    let a = admit(&[], None, &pre, &ft, &TaskId::new("t1")).unwrap();
    assert_eq!(a.pretrained, Fingerprint::of_params(&pre));
    assert_eq!(a.record.fingerprint, Fingerprint::of_params(&ft));
    assert_eq!(a.record.task, TaskId::new("t1"));
    // ||tau||^2 = 3^2 + 4^2
    assert_eq!(a.record.task_vector_norm, 5.0);
}

#[test]
fn every_refusal_names_what_is_wrong() {
    let pre = dict(&[1.0, 2.0, 3.0, 4.0, 5.0]);
    let ft = dict(&[1.5, 2.0, 3.0, 4.0, 5.0]);
    let first = admit(&[], None, &pre, &ft, &TaskId::new("t1")).unwrap();
    let tasks = [record(&first)];
    let seen = Some(first.pretrained);

    let e = admit(&tasks, seen, &pre, &dict(&[9.0; 5]), &TaskId::new("t1")).unwrap_err();
    assert!(matches!(e, AdmitError::DuplicateTaskName { .. }), "{e}");

    let e = admit(
        &[],
        None,
        &ParamDict::new(),
        &ParamDict::new(),
        &TaskId::new("t"),
    )
    .unwrap_err();
    assert!(matches!(e, AdmitError::EmptyModel), "{e}");

    let mut other = dict(&[1.0; 5]);
    other.insert("extra", Tensor::new(vec![1], vec![0.0]).unwrap());
    let e = admit(&tasks, seen, &pre, &other, &TaskId::new("t2")).unwrap_err();
    assert!(matches!(e, AdmitError::Incompatible { .. }), "{e}");

    let e = admit(
        &tasks,
        seen,
        &pre,
        &dict(&[1.0, f32::NAN, 3.0, 4.0, 5.0]),
        &TaskId::new("t2"),
    )
    .unwrap_err();
    assert!(matches!(e, AdmitError::NonFinite { .. }), "{e}");
    assert!(e.to_string().contains("`w`"), "{e}");

    let bad_pre = dict(&[1.0, 2.0, 3.0, 4.0, f32::INFINITY]);
    let e = admit(&[], None, &bad_pre, &ft, &TaskId::new("t2")).unwrap_err();
    assert!(matches!(e, AdmitError::NonFinitePretrained { .. }), "{e}");

    let moved = dict(&[1.0, 2.0, 3.0, 4.0, 6.0]);
    let e = admit(&tasks, seen, &moved, &ft, &TaskId::new("t2")).unwrap_err();
    assert!(matches!(e, AdmitError::PretrainedChanged { .. }), "{e}");

    let e = admit(&tasks, seen, &pre, &ft, &TaskId::new("t2")).unwrap_err();
    match e {
        AdmitError::DuplicateTask { task, previous } => {
            assert_eq!((task.as_str(), previous.as_str()), ("t2", "t1"));
        }
        other => panic!("expected a duplicate checkpoint, got {other}"),
    }

    // A distinct checkpoint is admitted.
    let ok = admit(
        &tasks,
        seen,
        &pre,
        &dict(&[1.0, 2.5, 3.0, 4.0, 5.0]),
        &TaskId::new("t2"),
    );
    assert!(ok.is_ok());
}

#[test]
fn the_ledger_commits_and_recognises_its_pretrained_model() {
    let pre = dict(&[1.0, 2.0, 3.0, 4.0, 5.0]);
    let mut ledger = madeit_stream::Ledger::default();
    assert!(ledger.is_empty());
    assert_eq!(ledger.check_pretrained(&pre).unwrap(), None);
    let a = ledger
        .admit(&Step::new(
            &pre,
            &dict(&[1.0, 2.0, 3.0, 4.0, 6.0]),
            &TaskId::new("t1"),
        ))
        .unwrap();
    ledger.commit(a);
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger.task_ids(), vec![TaskId::new("t1")]);
    assert_eq!(
        ledger.check_pretrained(&pre).unwrap(),
        Some(Fingerprint::of_params(&pre))
    );
    let e = ledger
        .check_pretrained(&dict(&[0.0, 2.0, 3.0, 4.0, 5.0]))
        .unwrap_err();
    assert!(matches!(e, AdmitError::PretrainedChanged { .. }), "{e}");
}
