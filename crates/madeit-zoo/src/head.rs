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
