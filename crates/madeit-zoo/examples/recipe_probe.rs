//! Tries a fine-tuning recipe on a built zoo's pretrained tower and heads, without
//! rebuilding it: fine-tunes the named tasks with the given configuration and prints their
//! fine-tuned accuracy, `||tau|| / ||theta_0||`, the interference matrix among them, and the
//! accuracy of the average and of the 0.3-sum of their task vectors, all on at most
//! `CAP` validation images per task (recipes are compared on validation splits, never on
//! test splits).
//!
//! ```text
//! cargo run --release -p madeit-zoo --example recipe_probe -- ZOO CONFIG.json CAP TASK...
//! ```
//!
//! `CONFIG.json` is a `BuildConfig` (missing fields take the zoo's build configuration).
//! The data cache is `$MADEIT_CACHE_DIR`, else `.cache/madeit`.

use std::path::PathBuf;

use madeit_data::{Split, default_cache_dir, load_tasks, task_by_name};
use madeit_vit::ClipVisionModel;
use madeit_zoo::interference::evenly_spaced;
use madeit_zoo::{BuildConfig, TaskVectorNorm, Zoo, evaluate, finetune_tower};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [zoo_dir, config, cap, tasks @ ..] = args.as_slice() else {
        return Err("usage: recipe_probe ZOO CONFIG.json CAP TASK...".into());
    };
    let zoo = Zoo::open(PathBuf::from(zoo_dir))?;
    let mut base = serde_json::to_value(&zoo.manifest().build)?;
    let patch: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config)?)?;
    if let (Some(b), Some(p)) = (base.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            b.insert(k.clone(), v.clone());
        }
    }
    let cfg: BuildConfig = serde_json::from_value(base)?;
    let cap: usize = cap.parse()?;
    let specs = tasks
        .iter()
        .map(|t| task_by_name(t))
        .collect::<Result<Vec<_>, _>>()?;
    let data = load_tasks(&default_cache_dir(), &specs)?;
    let pretrained = zoo.pretrained()?;
    let val: Vec<_> = data
        .iter()
        .map(|d| {
            let s = d.split(Split::Val)?;
            s.subset(&evenly_spaced(s.n, Some(cap)))
        })
        .collect::<Result<_, _>>()?;
    let heads: Vec<_> = tasks
        .iter()
        .map(|t| zoo.head(t))
        .collect::<Result<_, _>>()?;
    let acc_all = |m: &ClipVisionModel| -> Result<Vec<f64>, madeit_zoo::ZooError> {
        heads
            .iter()
            .zip(&val)
            .map(|(h, s)| evaluate(m, h, s, 250))
            .collect()
    };
    let base_acc = acc_all(&ClipVisionModel::from_params(&cfg.model, &pretrained)?)?;
    let mut tuned = Vec::new();
    let mut columns = Vec::new();
    for (k, d) in data.iter().enumerate() {
        let train = d.split(Split::Train)?;
        let t0 = std::time::Instant::now();
        let (params, log) = finetune_tower(
            &cfg,
            &pretrained,
            &heads[k],
            &train,
            cfg.finetune_seed(d.spec.id),
            &tasks[k],
            &mut |_| {},
        )?;
        let norm = TaskVectorNorm::of(&pretrained, &params)?;
        let acc = acc_all(&ClipVisionModel::from_params(&cfg.model, &params)?)?;
        println!(
            "{:<24} val {:5.1}% (from {:5.1}%)  |tau|/|t0| {:5.2}%  loss {:.3} -> {:.3}  {:.0} s",
            tasks[k],
            100.0 * acc[k],
            100.0 * base_acc[k],
            100.0 * norm.ratio,
            log.first_loss,
            log.last_loss,
            t0.elapsed().as_secs_f64()
        );
        columns.push(acc);
        tuned.push(params);
    }
    let n = tasks.len();
    println!("interference (rows: task evaluated, columns: tau added), points:");
    let mut off = 0.0;
    for i in 0..n {
        let row: Vec<String> = (0..n)
            .map(|j| {
                let v = 100.0 * (columns[j][i] - base_acc[i]);
                if i != j {
                    off += v;
                }
                format!("{v:+6.1}")
            })
            .collect();
        println!("  {:<24} {}", tasks[i], row.join(" "));
    }
    println!(
        "mean off-diagonal {:+.2}",
        off / (n * (n - 1)).max(1) as f64
    );
    let merge = |lambda: f64| -> Result<Vec<f64>, Box<dyn std::error::Error>> {
        let mut m = pretrained.clone();
        for t in &tuned {
            for (key, p) in m.iter_mut() {
                let (f, b) = (t.get(key)?, pretrained.get(key)?);
                for ((o, &fv), &bv) in p.data_mut().iter_mut().zip(f.data()).zip(b.data()) {
                    *o += (lambda * f64::from(fv - bv)) as f32;
                }
            }
        }
        Ok(acc_all(&ClipVisionModel::from_params(&cfg.model, &m)?)?)
    };
    let mean = |v: &[f64]| 100.0 * v.iter().sum::<f64>() / v.len().max(1) as f64;
    let ft_mean = mean(&(0..n).map(|k| columns[k][k]).collect::<Vec<_>>());
    println!(
        "mean val: pretrained {:.1}%, fine-tuned {:.1}%, average {:.1}%, 0.3-sum {:.1}%",
        mean(&base_acc),
        ft_mean,
        mean(&merge(1.0 / n as f64)?),
        mean(&merge(0.3)?)
    );
    Ok(())
}
