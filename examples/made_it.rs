//! MADE-IT: every task's update of every attention and MLP weight becomes a low-rank expert
//! (truncated SVD); an expert whose subspaces are close on the Grassmann manifold to an
//! existing one (affinity above the adaptive threshold `mu + kappa sigma`) is consolidated
//! into it by subspace merging. At test time the implicit router picks one expert per module
//! for every image from a pretrained forward pass (feature-projection alignment, propagated
//! along the expert dependency graph): no gate, no training, no data at merge time.
//!
//! Merges the first three tasks of the seed-42 order of the embedded zoo, prints the
//! accuracy on every task seen so far after each step, then how many experts each kind of
//! module kept.
//!
//! `cargo run --release -p madeit --example made_it -- [ZOO_DIR]`

mod common;

use madeit::merge::{MergedModel, MethodConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::describe("made_it")?;
    let config = MethodConfig::default_for("made_it")?;
    println!("config: {}", serde_json::to_string(&config)?);
    let mut merger = config.build()?;
    common::run_example(merger.as_mut())?;

    let bench = common::open_zoo()?;
    let MergedModel::Experts(model) = merger.merged_model(&bench.load_pretrained()?)? else {
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
