//! A test-time step report: the stream's step report plus the test-time extras.
#![allow(clippy::unwrap_used, missing_docs)]

use indexmap::IndexMap;
use madeit_adapt::{AdaptReport, SeedSource};
use madeit_stream::{StepReport, TaskId};

fn report() -> AdaptReport {
    AdaptReport {
        base: StepReport {
            method: "mingle".into(),
            step: 2,
            task: TaskId::new("svhn"),
            task_vector_norm: 3.0,
            merged_delta_norm: 1.5,
            metrics: IndexMap::from([("mean_k_eff".to_owned(), 4.0)]),
        },
        seed_samples: 10,
        seed_source: SeedSource::SeedSplit,
        losses: vec![0.9, 0.5, 0.25],
        kl_before: Some(0.7),
        kl_after: 0.2,
    }
}

#[test]
fn serialises_flat_and_round_trips() {
    let r = report();
    let json = serde_json::to_value(&r).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "method",
        "step",
        "task",
        "task_vector_norm",
        "merged_delta_norm",
        "metrics",
        "seed_samples",
        "seed_source",
        "losses",
        "kl_before",
        "kl_after",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    assert!(!keys.contains(&"base"), "{keys:?}");
    let back: AdaptReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, r);
}

#[test]
fn the_step_report_puts_the_extras_first_in_its_metrics() {
    let s = StepReport::from(report());
    let base = report().base;
    assert_eq!(
        (
            s.method.as_str(),
            s.step,
            &s.task,
            s.task_vector_norm,
            s.merged_delta_norm
        ),
        (
            base.method.as_str(),
            base.step,
            &base.task,
            base.task_vector_norm,
            base.merged_delta_norm
        )
    );
    let metrics: Vec<(&str, f64)> = s.metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        metrics,
        [
            ("seed_samples", 10.0),
            ("loss_first", 0.9),
            ("loss_last", 0.25),
            ("kl_before", 0.7),
            ("kl_after", 0.2),
            ("mean_k_eff", 4.0),
        ]
    );
}
