//! Input checks shared by the test-time mergers: a new task's seed images against the tower
//! (its weights are checked by the stream's one admission, `madeit_stream::Ledger`).

use madeit_stream::{Ledger, TaskId};
use madeit_vit::{ClipVisionConfig, TaskHead};

use crate::{AdaptError, SeedImages, TestTimeStep};

pub(crate) use madeit_stream::Admitted;

/// The admission of a test-time step: the stream's checks of the two models
/// ([`Ledger::admit`]), then the seed images against the tower. Mutates nothing.
pub(crate) fn admit_step(
    ledger: &Ledger,
    c: &ClipVisionConfig,
    input: &TestTimeStep<'_>,
) -> Result<Admitted, AdaptError> {
    let admitted = ledger.admit(input)?;
    check_seed_images(c, input.task, &input.extras.seed)?;
    Ok(admitted)
}

/// Checks that `seed` holds finite images of the tower's shape.
pub(crate) fn check_seed_images(
    c: &ClipVisionConfig,
    task: &TaskId,
    seed: &SeedImages,
) -> Result<(), AdaptError> {
    let per_image = c.num_channels * c.image_size * c.image_size;
    let err = |reason: String| AdaptError::SeedData {
        task: task.clone(),
        reason,
    };
    if seed.is_empty() {
        return Err(err("no seed samples".into()));
    }
    if seed.pixels().len() != seed.len() * per_image {
        return Err(err(format!(
            "{} pixel values for {} images of [{}, {}, {}]",
            seed.pixels().len(),
            seed.len(),
            c.num_channels,
            c.image_size,
            c.image_size
        )));
    }
    if let Some(i) = seed.pixels().iter().position(|x| !x.is_finite()) {
        return Err(err(format!("non-finite pixel value at flat index {i}")));
    }
    Ok(())
}

/// Checks that `task`'s head reads embeddings of the model's width `embedding_dim`.
pub(crate) fn check_head(
    task: &TaskId,
    head: &TaskHead,
    embedding_dim: usize,
) -> Result<(), AdaptError> {
    if head.dim() != embedding_dim {
        return Err(AdaptError::Head {
            task: task.clone(),
            reason: format!(
                "head dimension {}, the model's embedding dimension is {embedding_dim}",
                head.dim()
            ),
        });
    }
    Ok(())
}
