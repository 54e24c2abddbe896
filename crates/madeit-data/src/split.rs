//! Deterministic, seeded, stratified splits.
//!
//! Each source is split once, per class, into disjoint index sets:
//!
//! * **test** — the official test split where the source has one (Fashion-MNIST), else a
//!   `test_fraction` of each class;
//! * **val** — a `val_fraction` of each class, for model selection;
//! * **seed** — `seed_per_class` images of each class, the unlabelled samples that
//!   test-time adaptation methods may look at (their labels are kept only for reference);
//! * **pretrain** — a `pretrain_fraction` of each class that belongs to no task split and
//!   may be used to pretrain the shared backbone (see `docs/data.md`);
//! * **train** — the rest, for fine-tuning.
//!
//! Fractions are of each class's non-test images when there is an official test split and
//! of all its images otherwise, rounded to the nearest integer. The order within a class is
//! a Fisher–Yates shuffle driven by a ChaCha8 stream seeded with [`split_seed`], using
//! unbiased rejection sampling on `next_u64`; the shuffle is written out here rather than
//! taken from `rand`, so the splits cannot change with a `rand` release. Every split's
//! indices are returned in increasing order. Tasks derived from a source (rotations) use
//! the source's splits unchanged, so a rotated test image is never a training image of the
//! upright task and vice versa.

use std::ops::Range;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

use crate::error::{DataError, Result};
use crate::source::{SourceData, SourceId};

/// The splits of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Images reserved for pretraining the backbone (in no task split).
    Pretrain,
    /// Fine-tuning images.
    Train,
    /// Validation images.
    Val,
    /// A few unlabelled images per class for test-time adaptation.
    Seed,
    /// Test images.
    Test,
}

impl Split {
    /// Every split.
    pub const ALL: [Split; 5] = [
        Split::Pretrain,
        Split::Train,
        Split::Val,
        Split::Seed,
        Split::Test,
    ];

    /// Lower-case name (`"test"`, …), used in file names.
    pub fn name(self) -> &'static str {
        match self {
            Split::Pretrain => "pretrain",
            Split::Train => "train",
            Split::Val => "val",
            Split::Seed => "seed",
            Split::Test => "test",
        }
    }

    /// The split with this [`Split::name`].
    pub fn from_name(name: &str) -> Option<Split> {
        Split::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a source is split.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitPlan {
    /// Share of each class held out for testing (ignored when the source has an official
    /// test split).
    pub test_fraction: f64,
    /// Share of each class held out for validation.
    pub val_fraction: f64,
    /// Share of each class reserved for pretraining.
    pub pretrain_fraction: f64,
    /// Seed (unlabelled) images per class.
    pub seed_per_class: usize,
}

impl SplitPlan {
    /// Checks that every fraction is in `[0, 1)` and that they sum to less than 1.
    pub fn check(&self) -> Result<()> {
        let f = [
            self.test_fraction,
            self.val_fraction,
            self.pretrain_fraction,
        ];
        if f.iter().any(|x| !(x.is_finite() && (0.0..1.0).contains(x)))
            || f.iter().sum::<f64>() >= 1.0
        {
            return Err(DataError::InvalidSplitPlan {
                detail: format!(
                    "fractions test {}, val {}, pretrain {} must each be in [0, 1) and sum to less than 1",
                    self.test_fraction, self.val_fraction, self.pretrain_fraction
                ),
            });
        }
        Ok(())
    }
}

/// The split plan of each source.
///
/// Fashion-MNIST keeps its official 10,000 test images; of its 60,000 training images a
/// third (2,000 a class) is reserved for pretraining and a twelfth (500 a class) for
/// validation. MNIST and the animal silhouettes (1,000 a class) hold out 20 % for testing,
/// 10 % for validation and reserve 20 % for pretraining. Optdigits is small and reserves
/// nothing. The two emoji sources and the fonts hold out 20 % / 10 % and reserve 30 % of
/// each class for pretraining; the clip-art stamps reserve 20 %.
pub fn split_plan(source: SourceId) -> SplitPlan {
    // (test, validation, pretraining) fractions; every source keeps 5 seed images a class.
    let (test_fraction, val_fraction, pretrain_fraction) = match source {
        SourceId::FashionMnist => (0.0, 1.0 / 12.0, 1.0 / 3.0),
        SourceId::Mnist | SourceId::AnimalMnist | SourceId::Tuxpaint => (0.2, 0.1, 0.2),
        SourceId::Optdigits => (0.2, 0.1, 0.0),
        SourceId::Emoji | SourceId::Twemoji | SourceId::Fonts | SourceId::FontLowercase => {
            (0.2, 0.1, 0.3)
        }
    };
    SplitPlan {
        test_fraction,
        val_fraction,
        pretrain_fraction,
        seed_per_class: 5,
    }
}

/// Base seed of all splits.
pub const SPLIT_SEED: u64 = 0x6d61_6465_6974_0001;

/// The seed of a source's split: [`SPLIT_SEED`] xor the 64-bit FNV-1a hash of its name.
pub fn split_seed(source: SourceId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in source.name().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    SPLIT_SEED ^ h
}

/// Disjoint index sets into a source's images.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Splits {
    /// Reserved for pretraining.
    pub pretrain: Vec<usize>,
    /// Fine-tuning.
    pub train: Vec<usize>,
    /// Validation.
    pub val: Vec<usize>,
    /// Unlabelled seed images.
    pub seed: Vec<usize>,
    /// Test.
    pub test: Vec<usize>,
}

impl Splits {
    /// The indices of one split.
    pub fn get(&self, split: Split) -> &[usize] {
        match split {
            Split::Pretrain => &self.pretrain,
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Seed => &self.seed,
            Split::Test => &self.test,
        }
    }

    /// Total number of indices over all splits.
    pub fn total(&self) -> usize {
        Split::ALL.iter().map(|&s| self.get(s).len()).sum()
    }

    /// Checks that the splits are disjoint and cover `0..n` exactly.
    pub fn check_partition(&self, n: usize) -> Result<()> {
        let mut seen = vec![false; n];
        for s in Split::ALL {
            for &i in self.get(s) {
                match seen.get_mut(i) {
                    Some(v) if !*v => *v = true,
                    Some(_) => {
                        return Err(DataError::InvalidImageSet {
                            detail: format!("index {i} is in two splits (second: {s})"),
                        });
                    }
                    None => return Err(DataError::IndexOutOfRange { index: i, n }),
                }
            }
        }
        if let Some(i) = seen.iter().position(|v| !v) {
            return Err(DataError::InvalidImageSet {
                detail: format!("index {i} is in no split"),
            });
        }
        Ok(())
    }
}

/// A uniform integer in `0..n` (`n > 0`) by rejection sampling (no modulo bias). Shared with
/// the zoo's training batches, so both draw the same values from the same generator.
#[must_use]
pub fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % n;
        }
    }
}

/// Fisher–Yates shuffle: for `i` from the end down to 1, swap `v[i]` with `v[below(i+1)]`.
pub fn shuffle(v: &mut [usize], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

fn count(n: usize, fraction: f64) -> usize {
    (n as f64 * fraction).round() as usize
}

/// Splits images with `labels` (classes `0..num_classes`) according to `plan`.
///
/// `official_test` is the index range of an official test split, which becomes the test
/// split whole. `name` names the data in errors.
///
/// # Errors
/// [`DataError::InvalidSplitPlan`] for a bad plan; [`DataError::LabelOutOfRange`] for a
/// label `>= num_classes`; [`DataError::IndexOutOfRange`] if `official_test` exceeds the
/// labels; [`DataError::InsufficientClass`] if a class has too few images to leave at least
/// one training image.
pub fn make_splits(
    labels: &[u32],
    num_classes: usize,
    official_test: Option<Range<usize>>,
    plan: &SplitPlan,
    seed: u64,
    name: &str,
) -> Result<Splits> {
    plan.check()?;
    if let Some(r) = &official_test
        && (r.end > labels.len() || r.start > r.end)
    {
        return Err(DataError::IndexOutOfRange {
            index: r.end,
            n: labels.len(),
        });
    }
    let in_test = |i: usize| official_test.as_ref().is_some_and(|r| r.contains(&i));
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    let mut eligible: Vec<usize> = Vec::with_capacity(labels.len());
    for (i, &l) in labels.iter().enumerate() {
        if (l as usize) >= num_classes {
            return Err(DataError::LabelOutOfRange {
                file: name.to_owned(),
                index: i,
                label: i64::from(l),
                num_classes,
            });
        }
        if !in_test(i) {
            eligible.push(i);
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    shuffle(&mut eligible, &mut rng);
    for &i in &eligible {
        if let Some(list) = labels.get(i).and_then(|&l| by_class.get_mut(l as usize)) {
            list.push(i);
        }
    }
    let mut out = Splits::default();
    if let Some(r) = official_test.clone() {
        out.test = r.collect();
    }
    let held_out_test = official_test.is_none();
    for (class, members) in by_class.iter().enumerate() {
        let n = members.len();
        let k_test = if held_out_test {
            count(n, plan.test_fraction)
        } else {
            0
        };
        let k_val = count(n, plan.val_fraction);
        let k_seed = plan.seed_per_class;
        let k_pre = count(n, plan.pretrain_fraction);
        let required = k_test + k_val + k_seed + k_pre + 1;
        if n < required {
            return Err(DataError::InsufficientClass {
                name: name.to_owned(),
                class,
                available: n,
                required,
            });
        }
        let mut it = members.iter().copied();
        out.test.extend(it.by_ref().take(k_test));
        out.val.extend(it.by_ref().take(k_val));
        out.seed.extend(it.by_ref().take(k_seed));
        out.pretrain.extend(it.by_ref().take(k_pre));
        out.train.extend(it);
    }
    for s in [
        &mut out.pretrain,
        &mut out.train,
        &mut out.val,
        &mut out.seed,
        &mut out.test,
    ] {
        s.sort_unstable();
    }
    Ok(out)
}

/// The splits of a source, with its [`split_plan`] and [`split_seed`].
pub fn source_splits(data: &SourceData) -> Result<Splits> {
    make_splits(
        &data.images.labels,
        data.images.num_classes(),
        data.official_test.clone(),
        &split_plan(data.source),
        split_seed(data.source),
        data.source.name(),
    )
}
