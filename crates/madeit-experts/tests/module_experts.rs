//! The experts of a module stay consistent: every expert has the module's shape and rank,
//! no task is served twice, and a replacement never drops a task. A refused change leaves
//! the module as it was.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;

use madeit_experts::{Expert, ExpertChange, ExpertsError, ModuleExperts, ModuleKind, TargetModule};
use madeit_linalg::random::orthonormal;

const D: usize = 6;

fn module() -> TargetModule {
    TargetModule {
        weight_key: "encoder.layers.0.self_attn.q_proj.weight".into(),
        layer: 0,
        kind: ModuleKind::Q,
        d_out: D,
        d_in: D,
    }
}

fn expert(rows: usize, rank: usize, tasks: &[u32], seed: u64) -> Expert {
    let u = orthonormal::<f32>(rows, rank, seed).unwrap();
    let v = orthonormal::<f32>(D, rank, seed + 1).unwrap();
    let s = (0..rank).map(|i| 1.0 / (1 + i) as f32).collect();
    Expert::new("m", u, s, v, tasks.iter().copied().collect()).unwrap()
}

fn refused(err: &ExpertsError, words: &str) {
    assert!(
        matches!(err, ExpertsError::InvalidExpert { module, reason }
            if module == "encoder.layers.0.self_attn.q_proj" && reason.contains(words)),
        "{err}"
    );
}

#[test]
fn pushes_and_replacements_that_keep_the_module_consistent_are_applied() {
    let mut m = ModuleExperts::new(module(), 2, vec![expert(D, 2, &[0], 1)]).unwrap();
    let pushed = m
        .apply_change(ExpertChange::Push(expert(D, 2, &[1], 3)))
        .unwrap();
    assert_eq!(pushed, 1);
    // A consolidation: expert 0 now serves tasks 0 and 2.
    let merged = expert(D, 2, &[0, 2], 5);
    let replaced = m
        .apply_change(ExpertChange::Replace {
            index: 0,
            expert: merged.clone(),
        })
        .unwrap();
    assert_eq!(replaced, 0);
    assert_eq!(m.len(), 2);
    assert_eq!(m.expert(0).unwrap(), &merged);
    assert_eq!(m.tasks(), BTreeSet::from([0, 1, 2]));
    assert_eq!(m.expert_of_task(2), Some(0));
    assert_eq!(m.expert_of_task(1), Some(1));
}

#[test]
fn inconsistent_changes_are_refused_and_leave_the_module_unchanged() {
    let mut m = ModuleExperts::new(
        module(),
        2,
        vec![expert(D, 2, &[0], 1), expert(D, 2, &[1], 3)],
    )
    .unwrap();
    let before = m.clone();
    let cases = [
        (ExpertChange::Push(expert(D, 3, &[2], 7)), "rank 3"),
        (ExpertChange::Push(expert(D + 1, 2, &[2], 9)), "7x6"),
        (
            ExpertChange::Push(expert(D, 2, &[1, 2], 11)),
            "task 1 is served by two experts",
        ),
        (
            ExpertChange::Replace {
                index: 0,
                expert: expert(D, 2, &[2], 13),
            },
            "drops its task 0",
        ),
        (
            ExpertChange::Replace {
                index: 0,
                expert: expert(D, 2, &[0, 1], 15),
            },
            "task 1 is served by two experts",
        ),
    ];
    for (change, words) in cases {
        refused(&m.check_change(&change).unwrap_err(), words);
        refused(&m.apply_change(change).unwrap_err(), words);
        assert_eq!(m, before);
    }
    let far = ExpertChange::Replace {
        index: 5,
        expert: expert(D, 2, &[0], 17),
    };
    assert!(matches!(
        m.apply_change(far).unwrap_err(),
        ExpertsError::ExpertIndex {
            index: 5,
            count: 2,
            ..
        }
    ));
    assert_eq!(m, before);
}

#[test]
fn a_module_is_built_only_from_consistent_experts() {
    refused(
        &ModuleExperts::new(
            module(),
            2,
            vec![expert(D, 2, &[0], 1), expert(D, 2, &[0], 3)],
        )
        .unwrap_err(),
        "task 0 is served by two experts",
    );
    refused(
        &ModuleExperts::new(module(), 2, vec![expert(D, 1, &[0], 1)]).unwrap_err(),
        "rank 1",
    );
    refused(
        &ModuleExperts::new(module(), D + 1, vec![]).unwrap_err(),
        "rank 7 is not in 1..=6",
    );
}
