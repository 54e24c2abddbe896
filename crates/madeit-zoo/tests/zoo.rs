//! A whole build on synthetic tasks with the micro configuration: export / open round trip,
//! idempotence, resumption, incomplete-zoo detection, and the manifest's serde round trip.

#![allow(clippy::panic)] // Tests report unexpected variants by panicking.

mod common;

use std::path::Path;

use madeit_data::Split;
use madeit_zoo::build::BuildEvent;
use madeit_zoo::{
    BuildConfig, BuildOptions, BuildOutcome, Manifest, Zoo, ZooError, build_zoo_from_tasks,
    expected_files, staging_dir,
};

fn options(dir: &Path) -> BuildOptions {
    let mut config = BuildConfig::micro();
    config.model = common::micro_config();
    BuildOptions {
        zoo_dir: dir.join("zoo"),
        cache_dir: dir.join("cache-unused"),
        config,
        force: false,
        threads: Some(2),
    }
}

fn build(opts: &BuildOptions, events: &mut Vec<BuildEvent>) -> madeit_zoo::Result<BuildOutcome> {
    let tasks = common::synthetic_tasks();
    build_zoo_from_tasks(opts, &tasks, &mut |e: &BuildEvent| events.push(e.clone()))
}

/// Builds the zoo of [`options`] under `dir` and returns those options.
fn built(dir: &Path) -> BuildOptions {
    let opts = options(dir);
    build(&opts, &mut Vec::new()).expect("build");
    opts
}

#[test]
fn build_open_round_trip_idempotence_and_resume() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = options(tmp.path());
    let mut events = Vec::new();
    let manifest = match build(&opts, &mut events).expect("build") {
        BuildOutcome::Built(m) => m,
        BuildOutcome::AlreadyComplete(_) => panic!("nothing was there"),
    };
    assert!(
        !staging_dir(&opts.zoo_dir).exists(),
        "the staging folder was left behind"
    );

    // Open and read everything back.
    let zoo = Zoo::open(&opts.zoo_dir).expect("open");
    assert_eq!(zoo.task_names(), ["mnist", "rotated_mnist"]);
    assert_eq!(zoo.manifest(), manifest.as_ref());
    let config = zoo.config().clone();
    let pretrained = zoo.pretrained().expect("pretrained");
    let model = zoo.pretrained_model().expect("model");
    assert_eq!(model.config(), &config);
    for task in zoo.tasks() {
        let name = task.name.as_str();
        let finetuned = zoo.finetuned(name).expect("finetuned");
        finetuned
            .check_compatible(&pretrained)
            .expect("same keys and shapes");
        assert!(
            zoo.task_vector(name).expect("tv").l2_norm() > 0.0,
            "{name} did not move"
        );
        zoo.finetuned_model(name).expect("finetuned model");
        let head = zoo.head(name).expect("head");
        assert_eq!(head.num_classes(), 10);
        assert_eq!(head.dim(), config.hidden_size);
        assert_eq!(head.class_names(), task.class_names.as_slice());
        for split in [Split::Val, Split::Seed, Split::Test] {
            let set = zoo.split(name, split).expect("split");
            let expected = match split {
                Split::Val => task.splits.val,
                Split::Seed => task.splits.seed,
                _ => task.splits.test,
            };
            assert_eq!(set.n, expected);
            assert_eq!((set.height, set.width, set.channels), (32, 32, 3));
        }
        assert!(matches!(
            zoo.split(name, Split::Train),
            Err(ZooError::SplitNotExported { .. })
        ));
        for acc in [task.accuracy.pretrained, task.accuracy.finetuned] {
            assert!((0.0..=1.0).contains(&acc.val) && (0.0..=1.0).contains(&acc.test));
        }
        assert_eq!(task.energy.modules.len(), 6);
        // The recorded test accuracy is what the exported files give.
        let test = zoo.split(name, Split::Test).expect("test");
        let fm = zoo.finetuned_model(name).expect("model");
        let acc =
            madeit_zoo::evaluate(&fm, &zoo.head(name).expect("head"), &test, 64).expect("eval");
        assert_eq!(acc, task.accuracy.finetuned.test);
    }
    assert!(matches!(
        zoo.head("nope"),
        Err(ZooError::UnknownTask { .. })
    ));

    // A complete zoo is left alone.
    let mtime = std::fs::metadata(opts.zoo_dir.join("zoo.json"))
        .and_then(|m| m.modified())
        .expect("mtime");
    match build(&opts, &mut Vec::new()).expect("second build") {
        BuildOutcome::AlreadyComplete(m) => assert_eq!(m, manifest),
        BuildOutcome::Built(_) => panic!("a complete zoo was rebuilt"),
    }
    let mtime2 = std::fs::metadata(opts.zoo_dir.join("zoo.json"))
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(mtime, mtime2);

    // Resume: a staging folder holding the finished stages of the same configuration is
    // reused, and the result is bit-identical to the uninterrupted build.
    let first_ft = std::fs::read(
        opts.zoo_dir
            .join("finetuned/rotated_mnist/model.safetensors"),
    )
    .expect("read");
    let staging = staging_dir(&opts.zoo_dir);
    std::fs::rename(&opts.zoo_dir, &staging).expect("rename");
    std::fs::remove_file(staging.join("zoo.json")).expect("rm manifest");
    std::fs::remove_file(staging.join("stages/finetune-rotated_mnist.json")).expect("rm record");
    std::fs::remove_dir_all(staging.join("finetuned/rotated_mnist")).expect("rm ft");
    let mut events = Vec::new();
    assert!(matches!(
        build(&opts, &mut events).expect("resume"),
        BuildOutcome::Built(_)
    ));
    let reused: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            BuildEvent::StageReused { stage, .. } => Some(stage.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(reused, ["pretrain", "heads", "finetune:mnist"]);
    let second_ft = std::fs::read(
        opts.zoo_dir
            .join("finetuned/rotated_mnist/model.safetensors"),
    )
    .expect("read");
    assert!(first_ft == second_ft, "the resumed fine-tuning differs");
}

#[test]
fn incomplete_zoo_is_detected_and_not_overwritten() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = built(tmp.path());
    let manifest = Zoo::open(&opts.zoo_dir).expect("open").manifest().clone();
    assert!(
        expected_files(&manifest)
            .iter()
            .all(|p| opts.zoo_dir.join(p).is_file())
    );

    let victim = opts.zoo_dir.join("heads/rotated_mnist.safetensors");
    std::fs::remove_file(&victim).expect("rm");
    match Zoo::open(&opts.zoo_dir) {
        Err(ZooError::Incomplete { missing, .. }) => {
            assert_eq!(missing, [Path::new("heads/rotated_mnist.safetensors")]);
        }
        other => panic!("expected an incomplete zoo, got {other:?}"),
    }
    // A build refuses to touch it without `force`.
    assert!(matches!(
        build(&opts, &mut Vec::new()),
        Err(ZooError::Incomplete { .. })
    ));
    // No manifest at all.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    assert!(matches!(
        Zoo::open(&empty),
        Err(ZooError::Incomplete { .. })
    ));
    // With `force` the zoo is rebuilt whole.
    assert_force_rebuilds(&opts);
}

/// With `force` the zoo of `opts` is rebuilt whole, and opens.
fn assert_force_rebuilds(opts: &BuildOptions) {
    let forced = BuildOptions {
        force: true,
        ..opts.clone()
    };
    assert!(matches!(
        build(&forced, &mut Vec::new()).expect("force"),
        BuildOutcome::Built(_)
    ));
    Zoo::open(&opts.zoo_dir).expect("the rebuilt zoo opens");
}

#[test]
fn stale_staging_folder_is_discarded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = options(tmp.path());
    let staging = staging_dir(&opts.zoo_dir);
    std::fs::create_dir_all(staging.join("stages")).expect("mkdir");
    std::fs::write(staging.join("stages/pretrain.json"), b"{}").expect("write");
    let mut events = Vec::new();
    build(&opts, &mut events).expect("build");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, BuildEvent::DiscardedStale { .. }))
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, BuildEvent::StageReused { .. }))
    );
}

#[test]
fn manifest_serde_round_trip_and_format_check() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = built(tmp.path());
    let path = opts.zoo_dir.join("zoo.json");
    let manifest = Manifest::load(&path).expect("load");
    let text = serde_json::to_string(&manifest).expect("ser");
    let back: Manifest = serde_json::from_str(&text).expect("de");
    assert_eq!(back, manifest);
    assert_eq!(back.build, opts.config);
    assert_eq!(back.tasks.len(), 2);
    assert_eq!(back.tasks[0].id, 1);
    assert_eq!(back.tasks[1].name, "rotated_mnist");

    let mut value: serde_json::Value = serde_json::from_str(&text).expect("value");
    value["format"] = "madeit-zoo-v0".into();
    let other = tmp.path().join("other.json");
    std::fs::write(&other, value.to_string()).expect("write");
    assert!(matches!(
        Manifest::load(&other),
        Err(ZooError::Format { .. })
    ));
    std::fs::write(&other, b"{not json").expect("write");
    assert!(matches!(Manifest::load(&other), Err(ZooError::Json { .. })));
}

#[test]
fn heads_are_one_vector_per_class_name_shared_by_tasks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (zoo, _) = common::micro_zoo(tmp.path());
    let names = zoo.name_vectors().expect("names");
    // The pool is the upright synthetic MNIST: its ten class names.
    assert_eq!(names.names, zoo.tasks()[0].class_names);
    assert_eq!(zoo.manifest().pretraining.names, names.names);
    let (a, b) = (
        zoo.head("mnist").expect("head"),
        zoo.head("rotated_mnist").expect("head"),
    );
    // Same class names, same rows: the rotated twin shares the upright task's head.
    assert_eq!(a.weight(), b.weight());
    for (c, row) in a.weight().chunks_exact(a.dim()).enumerate() {
        let v = names.get(&a.class_names()[c]).expect("seen name");
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (x, y) in row.iter().zip(v) {
            assert!((x - y / n).abs() < 1e-6);
        }
    }
    for t in zoo.tasks() {
        assert_eq!(t.head.kind, "names");
        assert_eq!((t.head.classes, t.head.names_seen), (10, 10));
    }
    // A name pretraining never saw gets a fixed seeded unit vector, the same every time.
    let unseen = madeit_zoo::unseen_name_vector("Flags", names.dim, 7);
    assert_eq!(
        unseen,
        madeit_zoo::unseen_name_vector("Flags", names.dim, 7)
    );
    assert_ne!(
        unseen,
        madeit_zoo::unseen_name_vector("Objects", names.dim, 7)
    );
    let norm: f32 = unseen.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    let mixed = vec![names.names[3].clone(), "Flags".to_owned()];
    let (head, seen) = madeit_zoo::name_head("mixed", &mixed, &names, 7).expect("head");
    assert_eq!(seen, 1);
    for (x, y) in head.weight()[names.dim..].iter().zip(&unseen) {
        assert!((x - y).abs() < 1e-6);
    }
}

#[test]
fn task_vector_norms_and_the_interference_matrix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (zoo, _) = common::micro_zoo(tmp.path());
    let pretrained = zoo.pretrained().expect("pretrained");
    for t in zoo.tasks() {
        let tau = zoo.task_vector(&t.name).expect("tau").l2_norm();
        let recorded = t.task_vector;
        assert!(recorded.ratio > 0.0);
        assert!((recorded.norm - tau).abs() <= 1e-4 * recorded.norm.max(1.0));
        let again =
            madeit_zoo::TaskVectorNorm::of(&pretrained, &zoo.finetuned(&t.name).expect("ft"))
                .expect("norm");
        assert_eq!(again, recorded);
        assert!((again.ratio - again.norm / again.pretrained_norm).abs() < 1e-12);
    }
    let mut columns = Vec::new();
    let m = madeit_zoo::interference_matrix(&zoo, None, &mut |j| columns.push(j)).expect("matrix");
    assert_eq!(columns, [0, 1]);
    assert_eq!(m.tasks, ["mnist", "rotated_mnist"]);
    for (i, t) in zoo.tasks().iter().enumerate() {
        // Whole test splits: the diagonal is the recorded gain, the base the recorded
        // pretrained accuracy.
        assert_eq!(m.pretrained[i], t.accuracy.pretrained.test);
        let gain = t.accuracy.finetuned.test - t.accuracy.pretrained.test;
        assert!((m.matrix[i][i] - gain).abs() < 1e-12);
        assert_eq!(m.images[i], t.splits.test);
    }
    let off = (m.matrix[0][1] + m.matrix[1][0]) / 2.0;
    assert!((m.mean_off_diagonal() - off).abs() < 1e-12);
    // A merge with weights (1, 0) is the first fine-tune; (0, 0) the pretrained tower.
    let sets = madeit_zoo::interference::test_sets(&zoo, Some(7)).expect("sets");
    assert!(sets.iter().all(|s| s.n == 7));
    let first = madeit_zoo::merged_accuracies(&zoo, &[1.0, 0.0], &sets).expect("merge");
    let direct = madeit_zoo::interference::accuracies(
        &zoo,
        &zoo.finetuned_model("mnist").expect("model"),
        &sets,
    )
    .expect("acc");
    assert_eq!(first, direct);
    assert!(madeit_zoo::merged_params(&zoo, &[1.0]).is_err());
}

#[test]
fn an_old_zoo_is_recognised_and_must_be_rebuilt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = built(tmp.path());
    let path = opts.zoo_dir.join("zoo.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    value["format"] = "madeit-zoo-v1".into();
    std::fs::write(&path, value.to_string()).expect("write");
    let err = Zoo::open(&opts.zoo_dir).expect_err("old zoo");
    assert!(matches!(err, ZooError::OutdatedZoo { .. }), "{err:?}");
    assert!(err.to_string().contains("madeit zoo build --force"));
    // A build without `force` refuses it; with `force` it is replaced.
    assert!(matches!(
        build(&opts, &mut Vec::new()),
        Err(ZooError::OutdatedZoo { .. })
    ));
    assert_force_rebuilds(&opts);
}
