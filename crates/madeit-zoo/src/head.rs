//! Fixed task heads (the analogue of CLIP's zero-shot text heads) and accuracy.
//!
//! The zoo's head of a task is its **prototype head**: with `e_i` the pretrained image
//! embedding of training image `i` and `n_c` the number of class-`c` images used,
//!
//! ```text
//! p_c = (1/n_c) sum_{i: y_i = c} e_i / ||e_i||,     h_c = p_c / ||p_c||
//! logits(x) = 100 * <e(x) / ||e(x)||, h_c>
//! ```
//!
//! Like CLIP's class-prompt embeddings, the rows are fixed directions in the pretrained
//! embedding space, computed without training anything (a nearest-class-mean classifier
//! under cosine similarity). Embeddings are computed with [`madeit_vit::ClipVisionModel`],
//! the code path every checkpoint, real or from the zoo, goes through.

use madeit_data::ImageSet;
use madeit_vit::{ClipVisionModel, TaskHead};

use crate::error::{Result, ZooError};
use crate::train::batch_pixels;

/// Image embeddings `[len, dim]` (row-major) of `set`'s images at `indices` (all images
/// when `None`), computed `batch` at a time.
///
/// # Errors
/// [`ZooError::InvalidConfig`] for `batch == 0`; the forward's errors.
pub fn embed_images(
    model: &ClipVisionModel,
    set: &ImageSet,
    indices: Option<&[usize]>,
    batch: usize,
) -> Result<Vec<f32>> {
    if batch == 0 {
        return Err(ZooError::InvalidConfig {
            field: "eval_batch_size",
            reason: "must be positive".into(),
        });
    }
    let all: Vec<usize>;
    let indices = match indices {
        Some(i) => i,
        None => {
            all = (0..set.n).collect();
            &all
        }
    };
    let mut out = Vec::with_capacity(indices.len() * model.embedding_dim());
    for chunk in indices.chunks(batch) {
        let pixels = batch_pixels(set, chunk, None)?;
        let emb = model.embed(pixels, chunk.len())?;
        out.extend_from_slice(emb.data());
    }
    Ok(out)
}

fn unit(v: &[f32]) -> Vec<f64> {
    let n = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    v.iter().map(|&x| f64::from(x) / n).collect()
}

/// The prototype head of a task (see the module docs) from embeddings `[n, dim]` and their
/// labels.
///
/// # Errors
/// [`ZooError::InvalidData`] when the sizes disagree, a label is out of range or a class has
/// no image; [`ZooError::Vit`] from [`TaskHead::new`].
pub fn prototype_head(
    name: &str,
    embeds: &[f32],
    dim: usize,
    labels: &[u32],
    class_names: &[String],
) -> Result<TaskHead> {
    let classes = class_names.len();
    let bad = |reason: String| ZooError::InvalidData {
        what: format!("head `{name}`"),
        reason,
    };
    if dim == 0 || embeds.len() != labels.len() * dim {
        return Err(bad(format!(
            "{} numbers for {} embeddings of width {dim}",
            embeds.len(),
            labels.len()
        )));
    }
    let mut sums = vec![0.0f64; classes * dim];
    let mut counts = vec![0usize; classes];
    for (e, &y) in embeds.chunks_exact(dim).zip(labels) {
        let y = y as usize;
        let (Some(row), Some(count)) = (sums.get_mut(y * dim..(y + 1) * dim), counts.get_mut(y))
        else {
            return Err(bad(format!("label {y} out of range for {classes} classes")));
        };
        for (s, u) in row.iter_mut().zip(unit(e)) {
            *s += u;
        }
        *count += 1;
    }
    if let Some(c) = counts.iter().position(|&n| n == 0) {
        return Err(bad(format!("class {c} has no image")));
    }
    // TaskHead::new normalises the rows; dividing by n_c first only keeps the numbers tame.
    let weight: Vec<f32> = sums
        .chunks_exact(dim)
        .zip(&counts)
        .flat_map(|(row, &n)| row.iter().map(move |&s| (s / n as f64) as f32))
        .collect();
    let t = madeit_params::Tensor::new(vec![classes, dim], weight)?;
    Ok(TaskHead::new(name, &t, class_names.to_vec())?)
}

/// Predicted class of every embedding (`[n, dim]` row-major): the argmax of
/// `<e / ||e||, h_c>` (the first class wins ties).
///
/// # Errors
/// [`ZooError::InvalidData`] when `embeds.len()` is not a multiple of the head's width.
pub fn predict(head: &TaskHead, embeds: &[f32]) -> Result<Vec<u32>> {
    let dim = head.dim();
    if !embeds.len().is_multiple_of(dim) {
        return Err(ZooError::InvalidData {
            what: format!("head `{}`", head.name()),
            reason: format!("{} numbers are not embeddings of width {dim}", embeds.len()),
        });
    }
    Ok(embeds
        .chunks_exact(dim)
        .map(|e| {
            let mut best = (0u32, f64::NEG_INFINITY);
            for (c, h) in head.weight().chunks_exact(dim).enumerate() {
                let s: f64 = e
                    .iter()
                    .zip(h)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                if s > best.1 {
                    best = (c as u32, s);
                }
            }
            best.0
        })
        .collect())
}

/// Fraction of `set`'s images that `model` + `head` classify correctly.
///
/// # Errors
/// [`ZooError::InvalidData`] for an empty set or one whose classes differ from the head's;
/// the forward's errors.
pub fn evaluate(
    model: &ClipVisionModel,
    head: &TaskHead,
    set: &ImageSet,
    batch: usize,
) -> Result<f64> {
    if set.n == 0 || set.num_classes() != head.num_classes() {
        return Err(ZooError::InvalidData {
            what: format!("evaluation of `{}`", head.name()),
            reason: format!(
                "{} images of {} classes for a head of {} classes",
                set.n,
                set.num_classes(),
                head.num_classes()
            ),
        });
    }
    let emb = embed_images(model, set, None, batch)?;
    let pred = predict(head, &emb)?;
    let correct = pred.iter().zip(&set.labels).filter(|(p, l)| p == l).count();
    Ok(correct as f64 / set.n as f64)
}

/// The class vectors of the pretraining objective, one per class *name*: the source of the
/// zoo's name-based heads (see [`name_head`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NameVectors {
    /// The names, in the pretraining classifier's order.
    pub names: Vec<String>,
    /// Width of the vectors.
    pub dim: usize,
    /// `[names, dim]` row-major; rows as trained (not normalised).
    pub vectors: Vec<f32>,
}

impl NameVectors {
    /// The trained vector of `name`, if pretraining had that class name.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        let i = self.names.iter().position(|n| n == name)?;
        self.vectors.get(i * self.dim..(i + 1) * self.dim)
    }
}

/// The 64-bit FNV-1a hash of `name`.
fn fnv1a(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The fixed vector of a class name that pretraining never saw: `dim` standard normal
/// draws (Box–Muller on a ChaCha8 stream seeded with `seed xor FNV-1a(name)`), normalised.
/// Every task whose classes carry that name gets the same vector.
#[must_use]
pub fn unseen_name_vector(name: &str, dim: usize, seed: u64) -> Vec<f32> {
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::{Rng, SeedableRng};
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(name));
    let v: Vec<f64> = (0..dim)
        .map(|_| {
            let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    v.iter().map(|x| (x / n) as f32).collect()
}

/// The name-based head of a task: row `c` is the pretraining vector of the class name
/// `class_names[c]` when pretraining had that name, else [`unseen_name_vector`]`(name,
/// dim, seed)`; rows are normalised by [`TaskHead::new`]. Nothing is fitted to the task.
/// Returns the head and how many of its names pretraining saw.
///
/// # Errors
/// [`ZooError::Vit`] from [`TaskHead::new`] (empty class list, ...).
pub fn name_head(
    task: &str,
    class_names: &[String],
    names: &NameVectors,
    seed: u64,
) -> Result<(TaskHead, usize)> {
    let dim = names.dim;
    let mut weight = Vec::with_capacity(class_names.len() * dim);
    let mut seen = 0;
    for name in class_names {
        match names.get(name) {
            Some(v) => {
                weight.extend_from_slice(v);
                seen += 1;
            }
            None => weight.extend(unseen_name_vector(name, dim, seed)),
        }
    }
    let t = madeit_params::Tensor::new(vec![class_names.len(), dim], weight)?;
    Ok((TaskHead::new(task, &t, class_names.to_vec())?, seen))
}
