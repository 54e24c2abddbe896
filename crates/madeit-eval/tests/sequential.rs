//! C. Fine-Tuned as a continual method (`SequentialFinetuning`, a `ContinualMethod` whose
//! steps carry the task's training data), on the zoo crate's micro zoo of synthetic tasks:
//! a one-task stream reproduces the zoo's fine-tuned checkpoint exactly, a resumed stream
//! continues bit for bit, and the stream's admission refuses what every method refuses.

#![allow(clippy::panic)] // Tests report unexpected variants by panicking.

#[path = "../../madeit-zoo/tests/common/mod.rs"]
mod zoo_common;

use madeit_eval::{RunError, SequentialFinetuning};
use madeit_merge::{AdmitError, ContinualMethod, MergedModel, Step, TaskId};
use madeit_params::ParamDict;
use madeit_zoo::{SequentialTask, Zoo};

/// The dense tower of a stream.
fn tower(m: &SequentialFinetuning, pretrained: &ParamDict) -> ParamDict {
    match m.merged_model(pretrained).expect("merged") {
        MergedModel::Dense(p) => p,
        _ => panic!("C. Fine-Tuned keeps one dense tower"),
    }
}

/// Feeds task `name` (its fine-tuned checkpoint and its training data) to `m`.
fn absorb(
    m: &mut SequentialFinetuning,
    pretrained: &ParamDict,
    zoo: &Zoo,
    task: &SequentialTask,
) -> Result<madeit_merge::StepReport, RunError> {
    let finetuned = zoo.finetuned(&task.name).expect("finetuned");
    let id = TaskId::new(task.name.clone());
    m.absorb(&Step::new(pretrained, &finetuned, &id).with_extras(task))
}

#[test]
fn c_finetuned_is_a_continual_method_fed_training_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (zoo, data) = zoo_common::micro_zoo(tmp.path());
    let recipe = zoo.manifest().build.clone();
    let pretrained = zoo.pretrained().expect("pretrained");
    let tasks = zoo
        .sequential_tasks_from_data(&["mnist", "rotated_mnist"], &data)
        .expect("tasks");

    // Nothing to evaluate before the first task.
    let mut whole = SequentialFinetuning::new(recipe.clone());
    assert_eq!(whole.method(), "c_finetuned");
    assert!(whole.merged_model(&pretrained).is_err());

    // A one-task stream is the zoo's own fine-tune of the task, bit for bit.
    let report = absorb(&mut whole, &pretrained, &zoo, &tasks[0]).expect("first task");
    assert_eq!((report.step, report.task.as_str()), (1, "mnist"));
    assert!(report.metrics["train_steps"] >= 1.0);
    assert!(report.task_vector_norm > 0.0 && report.merged_delta_norm > 0.0);
    let zoo_finetuned = zoo.finetuned("mnist").expect("finetuned");
    assert_eq!(
        tower(&whole, &pretrained)
            .max_abs_diff(&zoo_finetuned)
            .expect("same tensors"),
        0.0
    );

    // Save after one task, resume in a fresh method, and continue: bit-identical.
    let state = whole.state().expect("state");
    assert_eq!(state.ledger.len(), 1);
    let mut resumed = SequentialFinetuning::new(recipe.clone());
    resumed.restore(&state).expect("restore");
    assert_eq!(resumed.tasks(), whole.tasks());
    absorb(&mut whole, &pretrained, &zoo, &tasks[1]).expect("second task");
    absorb(&mut resumed, &pretrained, &zoo, &tasks[1]).expect("second task, resumed");
    assert_eq!(
        whole.state().expect("state"),
        resumed.state().expect("state")
    );
    assert_eq!(
        whole.tasks(),
        vec![TaskId::new("mnist"), TaskId::new("rotated_mnist")]
    );

    // The stream's admission: a task fed twice, and another pretrained model, are refused
    // and change nothing.
    let before = whole.state().expect("state");
    let err = absorb(&mut whole, &pretrained, &zoo, &tasks[0]).expect_err("repeated task");
    assert!(
        matches!(&err, RunError::Admission(e) if matches!(**e, AdmitError::DuplicateTaskName { .. })),
        "{err}"
    );
    let other = pretrained.scale(1.5);
    let finetuned = zoo.finetuned("mnist").expect("finetuned");
    let id = TaskId::new("again");
    let err = whole
        .absorb(&Step::new(&other, &finetuned, &id).with_extras(&tasks[0]))
        .expect_err("another pretrained model");
    assert!(matches!(err, RunError::Admission(_)), "{err}");
    assert!(whole.merged_model(&other).is_err());
    // Training data of another task than the step's.
    let fresh = finetuned.scale(1.01);
    let err = whole
        .absorb(&Step::new(&pretrained, &fresh, &id).with_extras(&tasks[1]))
        .expect_err("another task's training data");
    assert!(
        err.to_string().contains("training data of `rotated_mnist`"),
        "{err}"
    );
    // Training data the tower cannot take (a label beyond the head's classes) is refused
    // before any training.
    let mut bad = tasks[1].clone();
    bad.name = "again".into();
    bad.train.labels[0] = 99;
    let err = whole
        .absorb(&Step::new(&pretrained, &fresh, &id).with_extras(&bad))
        .expect_err("a label beyond the head");
    assert!(
        matches!(&err, RunError::Zoo(e) if e.to_string().contains("label 99")),
        "{err}"
    );
    assert_eq!(whole.state().expect("state"), before);

    // A state whose tower and ledger disagree is refused.
    let mut broken = before.clone();
    broken.params = ParamDict::new();
    assert!(SequentialFinetuning::new(recipe).restore(&broken).is_err());
}
