//! MADE-IT: every task's update of every attention and MLP weight becomes a low-rank expert
//! (truncated SVD); an expert whose subspaces are close on the Grassmann manifold to an
//! existing one (affinity above the adaptive threshold `mu + kappa sigma`) is consolidated
//! into it by subspace merging. At test time the implicit router picks one expert per module
//! for every image from a pretrained forward pass (feature-projection alignment, propagated
//! along the expert dependency graph): no gate, no training, no data at merge time.
//!
//! Merges the first three tasks of the seed-42 order of the embedded zoo through the run
//! loop, printing the accuracy on every task seen so far after each step; then merges them
//! again with the library alone and prints how many experts each kind of module kept.
//!
//! `cargo run --release -p madeit --example made_it -- [ZOO_DIR]`

mod common;

use madeit::merge::{MergedModel, MethodConfig, Step, TaskId};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::run_registered("made_it", 3)?;

    let bench = common::open_zoo()?;
    let pretrained = bench.load_pretrained()?;
    let mut merger = MethodConfig::default_for("made_it")?.build()?;
    let names = bench.task_names();
    for task in common::short_order(&bench, 3) {
        let finetuned = bench.load_finetuned(task, &pretrained)?;
        merger.absorb(&Step::new(
            &pretrained,
            &finetuned,
            &TaskId::new(names[task].clone()),
        ))?;
    }
    let MergedModel::Experts(model) = merger.merged_model(&pretrained)? else {
        return Err("MADE-IT returns an expert model".into());
    };
    let mut kinds: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for (name, experts) in &model.experts {
        let kind = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
            .into_iter()
            .find(|k| name.contains(k))
            .unwrap_or("other");
        let e = kinds.entry(kind).or_default();
        e.0 += 1;
        e.1 += experts.len();
    }
    for (kind, (modules, experts)) in kinds {
        println!(
            "{kind:>8}: {experts} experts over {modules} modules ({:.2} per module)",
            experts as f64 / modules as f64
        );
    }
    Ok(())
}
