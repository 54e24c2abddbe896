//! Fine-tunes one task of a built zoo again with another fine-tuning configuration and
//! prints its test accuracy (for choosing the build's fine-tuning settings).
//!
//! `cargo run --release -p madeit-zoo --example finetune_probe -- ZOO_DIR TASK STEPS BATCH LR SHIFT`

mod common;

use madeit_data::{Split, load_task, task_by_name};
use madeit_vit::ClipVisionModel;
use madeit_zoo::train::TrainConfig;
use madeit_zoo::{Zoo, evaluate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| a.get(i).cloned().unwrap_or_default();
    let zoo = Zoo::open(arg(0))?;
    let task = arg(1);
    let cfg = TrainConfig {
        steps: arg(2).parse()?,
        batch_size: arg(3).parse()?,
        lr: arg(4).parse()?,
        warmup_steps: arg(2).parse::<usize>()? / 10,
        weight_decay: 0.0,
        max_shift: arg(5).parse()?,
    };
    let data = load_task(&madeit_data::default_cache_dir(), &task_by_name(&task)?)?;
    let head = zoo.head(&task)?;
    let (params, log) = common::finetune(
        &zoo,
        &zoo.pretrained()?,
        &head,
        &data.split(Split::Train)?,
        &cfg,
        "probe",
    )?;
    let model = ClipVisionModel::from_params(zoo.config(), &params)?;
    let acc = evaluate(&model, &head, &data.split(Split::Test)?, 250)?;
    println!(
        "{task} steps {} batch {} lr {} shift {}: test {:.2}% loss {:.3}->{:.3} ({:.0}s)",
        cfg.steps,
        cfg.batch_size,
        cfg.lr,
        cfg.max_shift,
        100.0 * acc,
        log.first_loss,
        log.last_loss,
        log.seconds
    );
    Ok(())
}
