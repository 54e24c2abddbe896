//! Seeded stratified splits, the task registry, task preparation and the pretraining pool.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeSet, HashSet};

use madeit_data::split::split_seed;
use madeit_data::{
    CHANNELS, Construction, DataError, IMAGE_SIZE, ImageSet, Resize, SourceData, SourceId, Split,
    SplitPlan, TaskGroup, all_tasks, make_splits, prepare_task, pretraining_pool, split_plan,
    task_by_name, zoo_tasks,
};
use proptest::prelude::*;

const PLAN: SplitPlan = SplitPlan {
    test_fraction: 0.2,
    val_fraction: 0.1,
    pretrain_fraction: 0.2,
    seed_per_class: 5,
};

fn labels(per_class: &[usize]) -> Vec<u32> {
    // Interleaved so that classes are not contiguous.
    let mut out = Vec::new();
    let max = per_class.iter().copied().max().unwrap_or(0);
    for k in 0..max {
        for (c, &n) in per_class.iter().enumerate() {
            if k < n {
                out.push(c as u32);
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn splits_partition_and_are_stratified(per_class in proptest::collection::vec(12usize..60, 1..6), seed in any::<u64>()) {
        let l = labels(&per_class);
        let s = make_splits(&l, per_class.len(), None, &PLAN, seed, "p").unwrap();
        s.check_partition(l.len()).unwrap();
        for (c, &n) in per_class.iter().enumerate() {
            let count = |split: Split| s.get(split).iter().filter(|&&i| l[i] as usize == c).count();
            let r = |f: f64| (n as f64 * f).round() as usize;
            prop_assert_eq!(count(Split::Test), r(0.2));
            prop_assert_eq!(count(Split::Val), r(0.1));
            prop_assert_eq!(count(Split::Pretrain), r(0.2));
            prop_assert_eq!(count(Split::Seed), 5);
            prop_assert_eq!(count(Split::Train), n - r(0.2) - r(0.1) - r(0.2) - 5);
        }
        for split in Split::ALL {
            prop_assert!(s.get(split).windows(2).all(|w| w[0] < w[1]));
        }
        // Deterministic.
        prop_assert_eq!(make_splits(&l, per_class.len(), None, &PLAN, seed, "p").unwrap(), s);
    }

    #[test]
    fn official_test_split_is_kept_whole(n_train in 40usize..80, n_test in 1usize..30, seed in any::<u64>()) {
        let mut l: Vec<u32> = (0..n_train).map(|i| (i % 2) as u32).collect();
        l.extend((0..n_test).map(|i| (i % 2) as u32));
        let s = make_splits(&l, 2, Some(n_train..n_train + n_test), &PLAN, seed, "o").unwrap();
        prop_assert_eq!(s.test.clone(), (n_train..n_train + n_test).collect::<Vec<_>>());
        s.check_partition(l.len()).unwrap();
        prop_assert!(s.train.iter().chain(&s.val).chain(&s.seed).chain(&s.pretrain).all(|&i| i < n_train));
    }
}

#[test]
fn different_seeds_give_different_splits() {
    let l = labels(&[100, 100]);
    let a = make_splits(&l, 2, None, &PLAN, 1, "a").unwrap();
    let b = make_splits(&l, 2, None, &PLAN, 2, "b").unwrap();
    assert_ne!(a.test, b.test);
    assert_eq!(a.test.len(), b.test.len());
    let seeds: HashSet<u64> = SourceId::ALL.iter().map(|&s| split_seed(s)).collect();
    assert_eq!(seeds.len(), SourceId::ALL.len());
}

#[test]
fn small_classes_and_bad_plans_are_errors() {
    let l = labels(&[30, 6]);
    let err = make_splits(&l, 2, None, &PLAN, 0, "tiny").unwrap_err();
    assert!(
        matches!(err, DataError::InsufficientClass { class: 1, available: 6, ref name, .. } if name == "tiny")
    );
    let bad = SplitPlan {
        test_fraction: 0.6,
        val_fraction: 0.5,
        ..PLAN
    };
    assert!(matches!(
        make_splits(&l, 2, None, &bad, 0, "x").unwrap_err(),
        DataError::InvalidSplitPlan { .. }
    ));
    let nan = SplitPlan {
        val_fraction: f64::NAN,
        ..PLAN
    };
    assert!(nan.check().is_err());
    assert!(matches!(
        make_splits(&[0, 3], 2, None, &PLAN, 0, "x").unwrap_err(),
        DataError::LabelOutOfRange { label: 3, .. }
    ));
    assert!(make_splits(&l, 2, Some(0..1000), &PLAN, 0, "x").is_err());
}

#[test]
fn every_source_plan_is_valid() {
    for s in SourceId::ALL {
        split_plan(s).check().unwrap();
    }
}

#[test]
fn the_groups_draw_on_distinct_sources_with_at_most_one_twin() {
    let tasks = zoo_tasks();
    assert_eq!(tasks.len(), 8);
    assert_eq!(tasks, TaskGroup::Eight.tasks());
    let long = TaskGroup::Fourteen.tasks();
    assert_eq!(long.len(), 14);
    assert_eq!(
        &long[..8],
        tasks.as_slice(),
        "the long group extends the default one"
    );
    let all = all_tasks();
    assert_eq!(
        &all[..14],
        long.as_slice(),
        "the registry extends the long group"
    );
    let ids: Vec<u32> = all.iter().map(|t| t.id).collect();
    assert_eq!(ids, (1..=all.len() as u32).collect::<Vec<_>>());
    let names: HashSet<&str> = all.iter().map(|t| t.name).collect();
    assert_eq!(names.len(), all.len());
    // The default group: at least six real sources (counted by package: the capitals and
    // the lower case of the fonts are one source) and at most one transformed twin.
    let sources: BTreeSet<SourceId> = tasks.iter().map(|t| t.source.package_source()).collect();
    assert!(sources.len() >= 6, "{sources:?}");
    let twins = tasks
        .iter()
        .filter(|t| t.construction != Construction::Original)
        .count();
    assert!(twins <= 1);
    // Derived tasks are named after their construction.
    for t in &all {
        match t.construction {
            Construction::Rotated { .. } => assert!(t.name.starts_with("rotated_"), "{}", t.name),
            Construction::Mirrored => assert!(t.name.starts_with("mirrored_"), "{}", t.name),
            Construction::Original => {}
        }
    }
    assert_eq!(TaskGroup::from_len(14), Some(TaskGroup::Fourteen));
    assert_eq!(TaskGroup::from_len(9), None);
    assert_eq!(
        task_by_name("optdigits").unwrap().source,
        SourceId::Optdigits
    );
    assert!(matches!(
        task_by_name("cifar10").unwrap_err(),
        DataError::UnknownTask { .. }
    ));
}

#[test]
fn a_class_range_task_keeps_its_classes_and_a_partition_of_their_splits() {
    // A synthetic "fonts" source: 20 classes (0-9, A-J) of 30 images.
    let n = 20 * 30;
    let labels: Vec<u32> = (0..n).map(|i| (i % 20) as u32).collect();
    let images: Vec<u8> = (0..n * 28 * 28).map(|k| (k % 251) as u8).collect();
    let names: Vec<String> = madeit_data::readers::fonts::font_class_names();
    let source = SourceData {
        source: SourceId::Fonts,
        images: madeit_data::ImageSet::new(images, n, 28, 28, 1, labels, names).unwrap(),
        official_test: None,
        pretrain_labels: None,
    };
    let letters = prepare_task(&source, &task_by_name("font_letters").unwrap()).unwrap();
    let digits = prepare_task(&source, &task_by_name("font_digits").unwrap()).unwrap();
    assert_eq!(letters.class_names()[0], "A");
    assert_eq!(letters.class_names().len(), 10);
    assert_eq!(digits.class_names()[9], "9");
    for t in [&letters, &digits] {
        assert_eq!(t.images.n, 300);
        t.splits.check_partition(t.images.n).unwrap();
        assert!(t.images.labels.iter().all(|&l| l < 10));
        assert_eq!(t.splits.seed.len(), 50);
    }
    // The letters' images are the source's images of classes 10..20, in order.
    let src_first_a = 10;
    assert_eq!(
        letters.images.image(0).unwrap(),
        madeit_data::to_common(
            &source.images.subset(&[src_first_a]).unwrap(),
            madeit_data::Resize::Pad
        )
        .unwrap()
        .image(0)
        .unwrap()
    );
    // The pretraining reserve of the source holds all twenty names.
    let part = madeit_data::pretrain_part(&source, true).unwrap().unwrap();
    assert_eq!(part.images.class_names.len(), 20);
    assert_eq!(
        part.images.n,
        letters.splits.pretrain.len() + digits.splits.pretrain.len()
    );
}

#[test]
fn a_relabelled_source_joins_the_pool_under_its_other_names() {
    let n = 10 * 40;
    let labels: Vec<u32> = (0..n).map(|i| (i % 10) as u32).collect();
    let sub: Vec<u32> = (0..n).map(|i| (i % 4) as u32).collect();
    let images: Vec<u8> = vec![7; n * 64 * 64 * 3];
    let names: Vec<String> = (0..10).map(|i| format!("cat{i}")).collect();
    let source = SourceData {
        source: SourceId::Emoji,
        images: madeit_data::ImageSet::new(images, n, 64, 64, 3, labels, names).unwrap(),
        official_test: None,
        pretrain_labels: Some(madeit_data::Relabel {
            labels: sub.clone(),
            class_names: (0..4).map(|i| format!("sub{i}")).collect(),
        }),
    };
    let part = madeit_data::pretrain_part(&source, true).unwrap().unwrap();
    assert_eq!(part.images.class_names, ["sub0", "sub1", "sub2", "sub3"]);
    let plain = madeit_data::pretrain_part(&source, false).unwrap().unwrap();
    assert_eq!(plain.images.class_names.len(), 10);
    let splits = madeit_data::source_splits(&source).unwrap();
    let expect: Vec<u32> = splits.pretrain.iter().map(|&i| sub[i]).collect();
    assert_eq!(part.images.labels, expect);
    assert_eq!((part.images.height, part.images.width), (32, 32));
}

/// A synthetic 28x28 source: 10 classes of `per_class` images, first `test` images of
/// each class at the end as an official test split when `official` is set.
fn synthetic_source(source: SourceId, per_class: usize, side: usize) -> SourceData {
    let l = labels(&[per_class; 10]);
    let n = l.len();
    let images: Vec<u8> = (0..n * side * side)
        .map(|k| ((k * 7 + k / 13) % 251) as u8)
        .collect();
    let set = ImageSet::new(
        images,
        n,
        side,
        side,
        1,
        l,
        (0..10).map(|c| c.to_string()).collect(),
    )
    .unwrap();
    SourceData {
        source,
        images: set,
        official_test: None,
        pretrain_labels: None,
    }
}

#[test]
fn rotated_and_mirrored_tasks_share_their_source_splits() {
    let src = synthetic_source(SourceId::Mnist, 30, 28);
    let up = prepare_task(&src, &task_by_name("mnist").unwrap()).unwrap();
    let rot = prepare_task(&src, &task_by_name("rotated_mnist").unwrap()).unwrap();
    assert_eq!(up.splits, rot.splits);
    assert_eq!(
        (up.images.height, up.images.width, up.images.channels),
        (IMAGE_SIZE, IMAGE_SIZE, CHANNELS)
    );
    assert_eq!(rot.images.labels, up.images.labels);
    // Rotated image = rotation of the padded upright image (padding is symmetric here).
    let again = madeit_data::transform::rotate90(&up.images, 1);
    assert_eq!(again.images, rot.images.images);
    assert!(up.images != rot.images);
    // The mirrored twin likewise: same splits and labels, each padded image mirrored.
    let mir = prepare_task(&src, &task_by_name("mirrored_mnist").unwrap()).unwrap();
    assert_eq!(up.splits, mir.splits);
    assert_eq!(mir.images.labels, up.images.labels);
    assert_eq!(
        madeit_data::transform::mirror(&up.images).images,
        mir.images.images
    );
    let test = up.split(Split::Test).unwrap();
    assert_eq!(test.n, up.splits.test.len());
    // A source that does not match the task is refused.
    assert!(prepare_task(&src, &task_by_name("optdigits").unwrap()).is_err());
}

#[test]
fn pretraining_pool_avoids_every_task_split() {
    let mnist = synthetic_source(SourceId::Mnist, 30, 28);
    let digits = synthetic_source(SourceId::Optdigits, 20, 8);
    let tasks: Vec<_> = ["mnist", "rotated_mnist", "optdigits"]
        .iter()
        .map(|n| {
            let spec = task_by_name(n).unwrap();
            let src = if spec.source == SourceId::Mnist {
                &mnist
            } else {
                &digits
            };
            prepare_task(src, &spec).unwrap()
        })
        .collect();
    let pool = pretraining_pool(&tasks).unwrap();
    // Only upright MNIST contributes (optdigits reserves nothing, rotations are left out).
    assert_eq!(pool.len(), 1);
    assert_eq!((pool[0].source, pool[0].task), (SourceId::Mnist, "mnist"));
    let pool_idx: HashSet<usize> = tasks[0].splits.pretrain.iter().copied().collect();
    assert_eq!(pool[0].images.n, pool_idx.len());
    for t in tasks.iter().filter(|t| t.spec.source == SourceId::Mnist) {
        for s in [Split::Train, Split::Val, Split::Seed, Split::Test] {
            assert!(
                t.splits.get(s).iter().all(|i| !pool_idx.contains(i)),
                "{} {s}",
                t.spec.name
            );
        }
    }
    assert_eq!(task_by_name("optdigits").unwrap().resize, Resize::Bilinear);
}
