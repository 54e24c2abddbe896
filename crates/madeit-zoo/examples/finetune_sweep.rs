//! Fine-tunes several tasks of a built zoo from its pretrained tower with one fine-tuning
//! setting and reports, for that setting, what continual merging will see: each fine-tune's
//! test accuracy, its task-vector norm, and the accuracy on every task of the two simplest
//! merges of all of them (`θ0 + 0.3 Σ τ_t` and the average `θ0 + (1/T) Σ τ_t`). Used to choose
//! the zoo's fine-tuning recipe: a fine-tune that moves too far gains on its own task but
//! wrecks every merge.
//!
//! `cargo run --release -p madeit-zoo --example finetune_sweep -- ZOO_DIR STEPS LR TASK...`

mod common;

use madeit_data::{Split, load_task, task_by_name};
use madeit_params::ParamDict;
use madeit_vit::ClipVisionModel;
use madeit_zoo::train::TrainConfig;
use madeit_zoo::{Zoo, evaluate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 4 {
        return Err("usage: finetune_sweep ZOO_DIR STEPS LR TASK...".into());
    }
    let zoo = Zoo::open(&a[0])?;
    let steps: usize = a[1].parse()?;
    let lr: f64 = a[2].parse()?;
    let tasks = &a[3..];
    let cfg = TrainConfig {
        steps,
        batch_size: 64,
        lr,
        warmup_steps: (steps / 20).max(1),
        weight_decay: 0.0,
        max_shift: 1,
    };
    let pre = zoo.pretrained()?;
    let mut taus = Vec::new();
    let mut data = Vec::new();
    for task in tasks {
        let d = load_task(&madeit_data::default_cache_dir(), &task_by_name(task)?)?;
        let head = zoo.head(task)?;
        let (ft, log) =
            common::finetune(&zoo, &pre, &head, &d.split(Split::Train)?, &cfg, "sweep")?;
        let test = d.split(Split::Test)?;
        let model = ClipVisionModel::from_params(zoo.config(), &ft)?;
        let acc = evaluate(&model, &head, &test, 250)?;
        let base = evaluate(
            &ClipVisionModel::from_params(zoo.config(), &pre)?,
            &head,
            &test,
            250,
        )?;
        let tau = ft.sub(&pre)?;
        println!(
            "{task}: pretrained {:.1}% -> fine-tuned {:.1}%  |tau| {:.2}  ({:.0} s)",
            100.0 * base,
            100.0 * acc,
            tau.l2_norm(),
            log.seconds
        );
        taus.push(tau);
        data.push((head, test));
    }
    for (label, l) in [("sum x0.3", 0.3f32), ("average", 1.0 / tasks.len() as f32)] {
        let mut m: ParamDict = pre.clone();
        for t in &taus {
            m.axpy(l, t)?;
        }
        let model = ClipVisionModel::from_params(zoo.config(), &m)?;
        let mut accs = Vec::new();
        for (head, test) in &data {
            accs.push(100.0 * evaluate(&model, head, test, 250)?);
        }
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        let row: Vec<String> = accs.iter().map(|x| format!("{x:.1}")).collect();
        println!(
            "steps {steps} lr {lr} {label}: mean {mean:.1} [{}]",
            row.join(" ")
        );
    }
    Ok(())
}
