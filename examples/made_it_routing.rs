//! MADE-IT's routing report: merges every task of the embedded zoo (seed-42 order), prints
//! how many experts each component of each layer kept, then for
//! every task's test images (at most 500 each) routes each image with the implicit router
//! and counts how often the routed path's final task set contains the image's true task, and
//! how often the anchor module alone picked an expert serving it. A task whose images are
//! sent to other tasks' experts loses accuracy however good its experts are.
//!
//! `cargo run --release -p madeit --example made_it_routing -- [ZOO_DIR]`

mod common;

use madeit::merge::made_it::FeatureBatch;
use madeit::merge::{ContinualMethod, MadeItMerger, Step, TaskId};
use madeit::vit::{ClipVisionModel, ModuleId};

const PER_TASK: usize = 500;
const BATCH: usize = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bench = common::open_zoo()?;
    let names = bench.task_names();
    let order = common::short_order(&bench, bench.num_tasks());
    let pretrained = bench.load_pretrained()?;
    let mut merger = MadeItMerger::new(Default::default())?;
    for &t in &order {
        let ft = bench.load_finetuned(t, &pretrained)?;
        merger.absorb(&Step::new(&pretrained, &ft, &TaskId::new(names[t].clone())))?;
    }
    let state = merger.experts();
    println!(
        "{} experts over {} modules after {} tasks",
        state.num_experts(),
        state.modules().len(),
        order.len()
    );
    let ids: Vec<ModuleId> = state
        .modules()
        .iter()
        .map(|m| match ModuleId::parse(&m.module().weight_key) {
            Some((id, true)) => Ok(id),
            _ => Err(format!(
                "`{}` is not a target weight",
                m.module().weight_key
            )),
        })
        .collect::<Result<_, _>>()?;
    // Experts kept per component (columns) and layer (rows), out of one per task.
    let kinds = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"];
    let layers = bench.config().num_hidden_layers;
    let mut kept = vec![[0usize; 6]; layers];
    for (me, id) in state.modules().iter().zip(&ids) {
        let key = &me.module().weight_key;
        if let (Some(k), Some(row)) = (
            kinds.iter().position(|k| key.contains(k)),
            kept.get_mut(id.layer),
        ) {
            row[k] = me.len();
        }
    }
    println!("| layer | {} | reduction |", kinds.join(" | "));
    println!("|---:|{}---:|", "---:|".repeat(kinds.len()));
    for (l, row) in kept.iter().enumerate() {
        let total: usize = row.iter().sum();
        let cells: Vec<String> = row.iter().map(ToString::to_string).collect();
        println!(
            "| {l} | {} | {:.0} % |",
            cells.join(" | "),
            100.0 * (1.0 - total as f64 / (kinds.len() * order.len()) as f64)
        );
    }
    let model = ClipVisionModel::from_params(bench.config(), &pretrained)?;
    println!(
        "| task | images | path serves the task | anchor serves the task | mean size of the final task set |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (t, name) in names.iter().enumerate() {
        let Some(id) = merger.task_id(&TaskId::new(name.clone())) else {
            continue;
        };
        let test = bench.load_test(t)?;
        let n = test.n.min(PER_TASK);
        let (mut hit, mut anchor_hit, mut set_size) = (0usize, 0usize, 0usize);
        for start in (0..n).step_by(BATCH) {
            let idx: Vec<usize> = (start..(start + BATCH).min(n)).collect();
            let px = model.pixels(
                test.normalized_nchw(&idx, &madeit::data::NORM_MEAN, &madeit::data::NORM_STD)?,
                idx.len(),
            )?;
            let (_, inputs) = model.forward_with_inputs(px, None)?;
            let hosts = ids
                .iter()
                .map(|&m| inputs.to_host(m))
                .collect::<Result<Vec<_>, _>>()?;
            let batches = hosts
                .iter()
                .map(|h| match h.shape() {
                    &[b, k, d] => Ok(FeatureBatch::new(h.data(), b, k, d)?),
                    s => Err(format!("unexpected input shape {s:?}").into()),
                })
                .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
            for path in state.route_batch(&batches)? {
                hit += usize::from(path.tasks.contains(&id));
                set_size += path.tasks.len();
                if let Some(a) = path.anchor {
                    let module = &state.modules()[a];
                    let chosen = module.expert(path.experts[a])?;
                    anchor_hit += usize::from(chosen.tasks().contains(&id));
                }
            }
        }
        println!(
            "| {name} | {n} | {:.1} % | {:.1} % | {:.2} |",
            100.0 * hit as f64 / n as f64,
            100.0 * anchor_hit as f64 / n as f64,
            set_size as f64 / n as f64
        );
    }
    Ok(())
}
