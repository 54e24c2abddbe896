//! The unlabeled seed samples of a task: the pixel container, the stratified draw used for
//! the paper's test-split protocol, and the shuffled batch stream of the adaptation.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Unlabeled images of one task, already resized and normalised for the vision tower:
/// a row-major `[count, channels, image_size, image_size]` buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedImages {
    pixels: Vec<f32>,
    count: usize,
}

impl SeedImages {
    /// Wraps `count` images stored in `pixels` (checked against the model at
    /// [`absorb`](crate::ContinualMethod::absorb) time).
    #[must_use]
    pub fn new(pixels: Vec<f32>, count: usize) -> Self {
        Self { pixels, count }
    }

    /// Number of images.
    #[must_use]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no images.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The whole buffer.
    #[must_use]
    pub fn pixels(&self) -> &[f32] {
        &self.pixels
    }

    /// Values per image (`pixels.len() / count`; 0 when empty).
    #[must_use]
    pub fn image_len(&self) -> usize {
        self.pixels.len().checked_div(self.count).unwrap_or(0)
    }

    /// The images at `indices`, concatenated (indices beyond the set are skipped).
    #[must_use]
    pub fn gather(&self, indices: &[usize]) -> Vec<f32> {
        let n = self.image_len();
        let mut out = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            if let Some(img) = self.pixels.get(i * n..(i + 1) * n) {
                out.extend_from_slice(img);
            }
        }
        out
    }
}

/// Indices of a stratified random subset: `per_class` samples of every class drawn without
/// replacement (all samples of a class that has fewer), returned in increasing order.
///
/// This is the reference's seed draw (`select_seed_subset`), for the paper's protocol of
/// taking the seed samples from the test split ([`SeedSource::TestSplit`](crate::SeedSource)).
/// The draw is seeded (ChaCha8) and independent of the order classes first appear in.
#[must_use]
pub fn select_seed_indices(labels: &[usize], per_class: usize, seed: u64) -> Vec<usize> {
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &c) in labels.iter().enumerate() {
        by_class.entry(c).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (_, mut idx) in by_class {
        if idx.len() > per_class {
            idx.shuffle(&mut rng);
            idx.truncate(per_class);
        }
        out.extend(idx);
    }
    out.sort_unstable();
    out
}

/// An endless stream of shuffled mini-batches over `n` samples, like a shuffling data loader
/// restarted at every epoch: each epoch is a fresh permutation cut into batches of
/// `batch_size` (the last one of an epoch may be smaller).
#[derive(Debug, Clone)]
pub struct SeedBatches {
    n: usize,
    batch_size: usize,
    order: Vec<usize>,
    pos: usize,
    rng: ChaCha8Rng,
}

impl SeedBatches {
    /// A stream over `n` samples (at least one batch of one sample when `n > 0`).
    #[must_use]
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Self {
        Self {
            n,
            batch_size: batch_size.max(1),
            order: Vec::new(),
            pos: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The batches of one epoch: a fresh permutation cut into batches.
    #[must_use]
    pub fn epoch(&mut self) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.n).collect();
        order.shuffle(&mut self.rng);
        order
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }
}

impl Iterator for SeedBatches {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        if self.n == 0 {
            return None;
        }
        if self.pos >= self.order.len() {
            self.order = (0..self.n).collect();
            self.order.shuffle(&mut self.rng);
            self.pos = 0;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let batch = self.order.get(self.pos..end).map(<[usize]>::to_vec);
        self.pos = end;
        batch
    }
}
