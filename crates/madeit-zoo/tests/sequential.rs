//! Sequential fine-tuning on a micro zoo built from synthetic tasks: a one-task order
//! reproduces the zoo's fine-tuned checkpoint exactly, a two-task order chains the zoo's
//! recipe (task 2 starts from task 1's weights, with a fresh schedule), the train splits are
//! rebuilt and checked against the manifest, and bad input gives typed errors.

#![allow(clippy::panic)] // Tests report unexpected variants by panicking.

mod common;

use std::path::Path;

use madeit_data::Split;
use madeit_params::{ParamDict, Tensor};
use madeit_vit::TaskHead;
use madeit_zoo::{
    BuildConfig, SequentialTask, StepInfo, Zoo, ZooError, finetune_tower, sequential_finetune,
};

/// Largest `|a - b|` over every tensor (the two must have the same names and shapes).
fn max_abs_diff(a: &ParamDict, b: &ParamDict) -> f32 {
    a.max_abs_diff(b).expect("same tensors")
}

/// What the callbacks saw: `(index, task, step, steps, lr)` per step, `(index, task,
/// weights)` per task.
#[derive(Default)]
struct Seen {
    steps: Vec<(usize, String, StepInfo)>,
    tasks: Vec<(usize, String, ParamDict)>,
}

/// The build's recipe function on `task`'s training data and seed, from `start`, without
/// progress (it must succeed).
fn recipe(
    config: &BuildConfig,
    start: &ParamDict,
    task: &SequentialTask,
    stage: &str,
) -> (ParamDict, madeit_zoo::TrainLog) {
    finetune_tower(
        config,
        start,
        &task.head,
        &task.train,
        task.seed,
        stage,
        &mut |_| {},
    )
    .expect("finetune_tower")
}

fn run(
    config: &BuildConfig,
    pretrained: &ParamDict,
    tasks: &[SequentialTask],
) -> (madeit_zoo::Result<madeit_zoo::SequentialOutcome>, Seen) {
    let mut seen = Seen::default();
    let mut steps = Vec::new();
    let mut done = Vec::new();
    let out = sequential_finetune::<ZooError>(
        config,
        pretrained,
        tasks,
        &mut |i, name, s| steps.push((i, name.to_owned(), *s)),
        &mut |i, name, w| {
            done.push((i, name.to_owned(), w.clone()));
            Ok(())
        },
    );
    seen.steps = steps;
    seen.tasks = done;
    (out, seen)
}

/// The micro zoo built under `dir`, with its build configuration, its pretrained weights and
/// the sequential tasks of `order` on its synthetic data.
fn micro_zoo_tasks(
    dir: &Path,
    order: &[&str],
) -> (Zoo, BuildConfig, ParamDict, Vec<SequentialTask>) {
    let (zoo, data) = common::micro_zoo(dir);
    let config = zoo.manifest().build.clone();
    let pretrained = zoo.pretrained().expect("pretrained");
    let tasks = zoo.sequential_tasks_from_data(order, &data).expect("tasks");
    (zoo, config, pretrained, tasks)
}

#[test]
fn one_task_order_reproduces_the_zoo_finetune_exactly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (zoo, config, pretrained, tasks) = micro_zoo_tasks(tmp.path(), &["mnist"]);
    let entry = zoo.task("mnist").expect("entry");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].train.n, entry.splits.train);
    assert_eq!(tasks[0].seed, entry.finetune_seed);
    assert_eq!(tasks[0].seed, config.finetune_seed(entry.id));

    let (out, seen) = run(&config, &pretrained, &tasks);
    let out = out.expect("sequential");
    // The zoo's own fine-tuned checkpoint of the task, made by the build.
    let zoo_finetuned = zoo.finetuned("mnist").expect("finetuned");
    let diff = max_abs_diff(&out.params, &zoo_finetuned);
    assert!(
        diff == 0.0,
        "one-task order differs from the zoo's checkpoint by {diff}"
    );
    assert!(
        max_abs_diff(&out.params, &pretrained) > 1e-4,
        "the tower did not move"
    );
    // And the build's recipe function called directly on the same data and seed.
    let (direct, log) = recipe(&config, &pretrained, &tasks[0], "direct");
    assert!(max_abs_diff(&out.params, &direct) == 0.0);
    assert_eq!(out.runs.len(), 1);
    assert_eq!(out.runs[0].log.losses, log.losses);
    assert_eq!(out.runs[0].steps, config.finetune_steps(entry.splits.train));
    assert_eq!(out.runs[0].steps, entry.finetune.steps);

    // Callbacks: one per step, then one per task with the final weights.
    assert_eq!(seen.steps.len(), out.runs[0].steps);
    assert!(seen.steps.iter().all(|(i, n, _)| *i == 0 && n == "mnist"));
    assert_eq!(seen.tasks.len(), 1);
    assert_eq!((seen.tasks[0].0, seen.tasks[0].1.as_str()), (0, "mnist"));
    assert!(max_abs_diff(&seen.tasks[0].2, &out.params) == 0.0);
}

#[test]
fn two_task_order_chains_the_recipe_from_the_previous_weights() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let order = ["mnist", "rotated_mnist"];
    let (zoo, config, pretrained, tasks) = micro_zoo_tasks(tmp.path(), &order);

    let (out, seen) = run(&config, &pretrained, &tasks);
    let out = out.expect("sequential");

    // Called once per task, in order.
    let called: Vec<(usize, &str)> = seen
        .tasks
        .iter()
        .map(|(i, n, _)| (*i, n.as_str()))
        .collect();
    assert_eq!(called, [(0, "mnist"), (1, "rotated_mnist")]);
    // Step 1 is the zoo's fine-tune of task 1.
    let w1 = &seen.tasks[0].2;
    assert!(max_abs_diff(w1, &zoo.finetuned("mnist").expect("ft")) == 0.0);
    // Step 2 is the recipe on task 2 started from step 1's weights ...
    let (from_w1, _) = recipe(&config, w1, &tasks[1], "from step 1");
    assert!(max_abs_diff(&out.params, &from_w1) == 0.0);
    assert!(max_abs_diff(&seen.tasks[1].2, &out.params) == 0.0);
    // ... and not the zoo's fine-tune of task 2 from the pretrained tower.
    let from_pretrained = zoo.finetuned("rotated_mnist").expect("ft");
    let diff = max_abs_diff(&out.params, &from_pretrained);
    assert!(diff > 1e-4, "task 2 seems to start from pretrained: {diff}");

    // Per-step progress: each task's steps numbered from 1 with a fresh schedule.
    assert_eq!(out.runs.len(), 2);
    for (k, run) in out.runs.iter().enumerate() {
        let steps: Vec<&StepInfo> = seen
            .steps
            .iter()
            .filter(|(i, n, _)| *i == k && n == order[k])
            .map(|(_, _, s)| s)
            .collect();
        assert_eq!(steps.len(), run.steps);
        let schedule = config.finetune_config(tasks[k].train.n);
        for (t, s) in steps.iter().enumerate() {
            assert_eq!(s.step, t + 1);
            assert_eq!(s.steps, run.steps);
            assert_eq!(s.lr, schedule.lr_at(t));
        }
    }
    assert_eq!(
        seen.steps.len(),
        out.runs.iter().map(|r| r.steps).sum::<usize>()
    );
}

#[test]
fn train_splits_are_rebuilt_and_checked_against_the_zoo() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (zoo, data) = common::micro_zoo(tmp.path());
    let mnist = &data[0];
    assert_eq!(mnist.spec.name, "mnist");
    let train = zoo.train_split_from_data("mnist", mnist).expect("train");
    assert_eq!(train, mnist.split(Split::Train).expect("split"));

    // No source in the cache: a typed error naming the task and the cache.
    let empty = tmp.path().join("empty-cache");
    match zoo.train_split("rotated_mnist", &empty) {
        Err(e @ ZooError::TrainDataUnavailable { .. }) => {
            let ZooError::TrainDataUnavailable {
                task, cache_dir, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(task, "rotated_mnist");
            assert_eq!(cache_dir, &empty);
            assert!(e.to_string().contains("madeit zoo build"), "{e}");
        }
        other => panic!("expected TrainDataUnavailable, got {other:?}"),
    }
    let r = zoo.sequential_finetune::<ZooError>(
        &["mnist"],
        &empty,
        &mut |_, _, _| panic!("no step may run"),
        &mut |_, _, _| panic!("no task may finish"),
    );
    assert!(
        matches!(r, Err(ZooError::TrainDataUnavailable { .. })),
        "{r:?}"
    );
    assert!(matches!(
        zoo.sequential_tasks(&["nope"], &empty),
        Err(ZooError::UnknownTask { .. })
    ));

    // Other data than the zoo's: a changed seed image, a changed split, a missing task.
    let mut changed = mnist.clone();
    let first_seed = changed.splits.seed[0];
    let len = changed.images.image_len();
    changed.images.images[first_seed * len] ^= 0xff;
    assert!(matches!(
        zoo.train_split_from_data("mnist", &changed),
        Err(ZooError::TrainDataMismatch { .. })
    ));
    let mut shorter = mnist.clone();
    shorter.splits.train.pop();
    assert!(matches!(
        zoo.train_split_from_data("mnist", &shorter),
        Err(ZooError::TrainDataMismatch { .. })
    ));
    assert!(matches!(
        zoo.train_split_from_data("rotated_mnist", mnist),
        Err(ZooError::TrainDataMismatch { .. })
    ));
    assert!(matches!(
        zoo.sequential_tasks_from_data(&["rotated_mnist"], std::slice::from_ref(mnist)),
        Err(ZooError::TrainDataMismatch { .. })
    ));
}

/// A small valid order without a zoo: a fresh micro tower, synthetic blocks, random heads.
fn bare_setup() -> (BuildConfig, ParamDict, SequentialTask) {
    let mut config = BuildConfig::micro();
    config.model = common::micro_config();
    let pretrained = madeit_zoo::init_params(&config.model, 5).expect("init");
    let head = head(4, config.model.hidden_size);
    let task = SequentialTask {
        name: "blocks".into(),
        train: common::blocks(4, 8, 32, 3, 3),
        head,
        seed: 9,
    };
    (config, pretrained, task)
}

fn head(classes: usize, dim: usize) -> TaskHead {
    let mut rng = common::Bytes::new(classes as u64 * 31 + dim as u64);
    let w: Vec<f32> = (0..classes * dim)
        .map(|_| f32::from(rng.next()) / 255.0 - 0.5)
        .collect();
    TaskHead::new(
        "h",
        &Tensor::new(vec![classes, dim], w).expect("tensor"),
        vec![],
    )
    .expect("head")
}

fn expect_invalid_data(r: madeit_zoo::Result<madeit_zoo::SequentialOutcome>, seen: &Seen) {
    match r {
        Err(ZooError::InvalidData { what, .. }) => assert!(what.contains("blocks"), "{what}"),
        other => panic!("expected InvalidData, got {other:?}"),
    }
    assert!(
        seen.steps.is_empty() && seen.tasks.is_empty(),
        "trained anyway"
    );
}

#[test]
fn bad_input_gives_typed_errors_before_any_training() {
    let (config, pretrained, good) = bare_setup();

    // Empty train set (as the second task: nothing trains before the error).
    let mut empty = good.clone();
    empty.train = good.train.subset(&[]).expect("empty subset");
    let (r, seen) = run(&config, &pretrained, &[good.clone(), empty]);
    expect_invalid_data(r, &seen);

    // A head of the wrong width.
    let mut narrow = good.clone();
    narrow.head = head(4, config.model.hidden_size / 2);
    let (r, seen) = run(&config, &pretrained, &[narrow.clone()]);
    expect_invalid_data(r, &seen);
    // The build's recipe function rejects it too, without panicking.
    assert!(matches!(
        finetune_tower(
            &config,
            &pretrained,
            &narrow.head,
            &narrow.train,
            1,
            "blocks",
            &mut |_| {}
        ),
        Err(ZooError::InvalidData { .. })
    ));

    // Labels beyond the head's classes.
    let mut few = good.clone();
    few.head = head(2, config.model.hidden_size);
    let (r, seen) = run(&config, &pretrained, &[few]);
    expect_invalid_data(r, &seen);

    // Images of another size.
    let mut small = good.clone();
    small.train = common::blocks(4, 2, 28, 1, 3);
    let (r, seen) = run(&config, &pretrained, &[small]);
    expect_invalid_data(r, &seen);

    // No task at all.
    let (r, seen) = run(&config, &pretrained, &[]);
    assert!(
        matches!(r, Err(ZooError::InvalidConfig { field: "tasks", .. })),
        "{r:?}"
    );
    assert!(seen.tasks.is_empty());

    // Weights that do not fit the tower.
    let mut broken = pretrained.clone();
    let first = broken.keys().next().expect("a tensor").to_owned();
    broken.remove(&first);
    let (r, _) = run(&config, &broken, std::slice::from_ref(&good));
    match r {
        Err(ZooError::Vit(madeit_vit::VitError::Checkpoint { report })) => {
            assert!(
                report.missing.iter().any(|(n, _)| *n == first),
                "{report:?}"
            );
        }
        other => panic!("expected a checkpoint report naming `{first}`, got {other:?}"),
    }
}

#[test]
fn an_error_of_the_task_callback_stops_the_order() {
    let (config, pretrained, good) = bare_setup();
    let mut second = good.clone();
    second.name = "second".into();
    let mut calls = Vec::new();
    let r = sequential_finetune::<ZooError>(
        &config,
        &pretrained,
        &[good, second],
        &mut |_, _, _| {},
        &mut |i, name, _| {
            calls.push((i, name.to_owned()));
            Err(ZooError::InvalidConfig {
                field: "evaluation",
                reason: "stop".into(),
            })
        },
    );
    assert!(
        matches!(
            r,
            Err(ZooError::InvalidConfig {
                field: "evaluation",
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(calls, [(0, "blocks".to_owned())]);
}
