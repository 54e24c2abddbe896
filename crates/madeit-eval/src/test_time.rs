//! What the run loop does for test-time methods (MINGLE, C. LW AdaMerging, C. LoRA-WEMoE): load a task's unlabelled seed
//! images, and evaluate a gated model.
//!
//! # Seed images
//!
//! [`seed_images`] takes them from the split named by [`SeedSetup::source`] (the method's `seed_source`):
//! the task's seed split by default ([`Benchmark::seed_images`]: on the zoo the `seed`
//! split, disjoint from the test split; in a benchmark file the split it names), or the
//! test split (the paper's protocol). In both cases the stratified subset of
//! [`select_seed_indices`] keeps at most [`SeedSetup::per_class`] images per class,
//! drawn with [`SeedSetup::seed`]; the labels serve only this draw and are never passed to
//! the method. On the embedded zoo the seed split holds 5 images per class (45 for the
//! emoji task), so the default keeps all of them.
//!
//! # Gated evaluation
//!
//! [`evaluate_gated`] is [`crate::evaluate::evaluate_model`] with the gated forward: the
//! test split is cut into batches of the evaluator's batch size, each batch holding images
//! of one task only, and the gates (averaged over the batch, see [`GatedModel`]) decide how
//! much each expert contributes. No task label reaches the model; the head is the task's
//! fixed head, as for every other method. Because the gates average over a batch, the
//! accuracy depends on the batch size (the reference evaluates one task's test loader at a
//! time, as here).

use madeit_adapt::{GatedModel, SeedImages, SeedSource, select_seed_indices};
use madeit_vit::TaskHead;

use crate::benchmark::Benchmark;
use crate::error::RunError;
use crate::evaluate::count_correct;
use crate::images::{ImagesRef, TaskImages};
use crate::method::SeedSetup;

/// The seed images of benchmark task `index` for a test-time method's seed setup (see the
/// module docs), normalised for the tower. `test` is the task's test split (used only with
/// [`SeedSource::TestSplit`]).
///
/// With [`SeedSource::SeedSplit`] the images come from the task's seed source
/// ([`Benchmark::seed_images`]); a benchmark file may cap the images per class of a task
/// ([`crate::benchmark::BenchmarkTask::seed_per_class`]), and the draw keeps at most the
/// smaller of that cap and the method's `per_class`.
///
/// # Errors
/// As [`Benchmark::seed_images`]; [`RunError::InvalidTask`] for an empty selection;
/// decoding and pixel-conversion errors of the data crate.
pub fn seed_images(
    bench: &Benchmark,
    index: usize,
    test: &TaskImages,
    setup: SeedSetup,
) -> Result<SeedImages, RunError> {
    let loaded;
    let (set, per_class) = match setup.source {
        SeedSource::SeedSplit => {
            loaded = bench.seed_images(index)?;
            let cap = bench
                .tasks()
                .get(index)
                .and_then(|t| t.seed_per_class)
                .unwrap_or(usize::MAX);
            (&loaded, setup.per_class.min(cap))
        }
        SeedSource::TestSplit => (test, setup.per_class),
    };
    let labels: Vec<usize> = set.labels().iter().map(|&l| l as usize).collect();
    let indices = select_seed_indices(&labels, per_class, setup.seed);
    if indices.is_empty() {
        return Err(RunError::InvalidTask {
            task: bench
                .tasks()
                .get(index)
                .map_or_else(|| format!("#{index}"), |t| t.name.clone()),
            reason: format!("no seed images in the {:?} source", setup.source),
        });
    }
    let pixels = set.pixels(&indices)?;
    Ok(SeedImages::new(pixels, indices.len()))
}

/// Test accuracy of a gated model on one task's test split, `batch` images of that task per
/// forward (see the module docs).
///
/// # Errors
/// [`RunError::InvalidTask`] when the split does not fit the model or head; errors of the
/// gated forward.
pub fn evaluate_gated<'a>(
    model: &GatedModel,
    head: &TaskHead,
    test: impl Into<ImagesRef<'a>>,
    batch: usize,
) -> Result<f64, RunError> {
    count_correct(model.model(), head, test.into(), batch, &|px| {
        Ok(model.forward(px)?.embedding())
    })
}
