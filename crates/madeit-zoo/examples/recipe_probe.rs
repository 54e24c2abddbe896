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
//! A task the zoo was not built with gets its name-based head from the zoo's name vectors.
//! The data cache is `$MADEIT_CACHE_DIR`, else `.cache/madeit`.
//!
//! `PROBE_DIR=DIR` keeps each fine-tuned tower as `DIR/<task>.safetensors`, with the
//! configuration it was made with in its metadata, and reuses it on a later probe with the
//! same configuration (a tower made with another one is fine-tuned again and replaced).
//! `PROBE_GROUPS="a,b,c;d,e"` also prints, for each group of the named tasks, the means of
//! the pretrained and fine-tuned accuracy and of the interference among them, and the
//! accuracy of the average and of the 0.3-sum of their task vectors.

use std::path::PathBuf;

use madeit_data::{Split, default_cache_dir, load_tasks, task_by_name};
use madeit_params::{Metadata, ParamDict};
use madeit_vit::ClipVisionModel;
use madeit_zoo::build::derive_seed;
use madeit_zoo::interference::evenly_spaced;
use madeit_zoo::{BuildConfig, TaskVectorNorm, Zoo, evaluate, finetune_tower, name_head};

/// Metadata key of a kept tower: the configuration it was fine-tuned with.
const PROBE_KEY: &str = "probe_config";

/// The seed stream of the vectors of unseen names (as in the build).
const STREAM_NAMES: u64 = 200;

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
    // A task the zoo was not built with gets its name-based head from the zoo's name
    // vectors, exactly as a build would make it.
    let names = zoo.name_vectors()?;
    let heads: Vec<_> = tasks
        .iter()
        .zip(&data)
        .map(|(t, d)| {
            if zoo.task(t).is_ok() {
                zoo.head(t)
            } else {
                name_head(
                    t,
                    d.class_names(),
                    &names,
                    derive_seed(cfg.seed, STREAM_NAMES),
                )
                .map(|(h, _)| h)
            }
        })
        .collect::<Result<_, _>>()?;
    let acc_all = |m: &ClipVisionModel| -> Result<Vec<f64>, madeit_zoo::ZooError> {
        heads
            .iter()
            .zip(&val)
            .map(|(h, s)| evaluate(m, h, s, 250))
            .collect()
    };
    let keep_dir = std::env::var_os("PROBE_DIR").map(PathBuf::from);
    let recipe = serde_json::to_string(&cfg)?;
    let base_acc = acc_all(&ClipVisionModel::from_params(&cfg.model, &pretrained)?)?;
    let mut tuned = Vec::new();
    let mut columns = Vec::new();
    for (k, d) in data.iter().enumerate() {
        let train = d.split(Split::Train)?;
        let t0 = std::time::Instant::now();
        let kept = keep_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.safetensors", tasks[k])));
        // A kept tower is reused only if it was made with this configuration.
        let reusable = match kept.as_ref().filter(|p| p.is_file()) {
            Some(path) => match ParamDict::load_with_metadata(path)? {
                (params, Some(meta)) if meta.get(PROBE_KEY) == Some(&recipe) => Some(params),
                _ => None,
            },
            None => None,
        };
        let (params, losses) = match reusable {
            Some(params) => (params, None),
            None => {
                let (params, log) = finetune_tower(
                    &cfg,
                    &pretrained,
                    &heads[k],
                    &train,
                    cfg.finetune_seed(d.spec.id),
                    &tasks[k],
                    &mut |_| {},
                )?;
                if let Some(path) = &kept {
                    std::fs::create_dir_all(path.parent().unwrap_or(path))?;
                    let meta = Metadata::from([(PROBE_KEY.to_owned(), recipe.clone())]);
                    params.save_with_metadata(path, &meta)?;
                }
                (params, Some((log.first_loss, log.last_loss)))
            }
        };
        let norm = TaskVectorNorm::of(&pretrained, &params)?;
        let acc = acc_all(&ClipVisionModel::from_params(&cfg.model, &params)?)?;
        let (first, last) = losses.unwrap_or((f32::NAN, f32::NAN));
        println!(
            "{:<24} val {:5.1}% (from {:5.1}%)  |tau|/|t0| {:5.2}%  loss {:.3} -> {:.3}  {:.0} s",
            tasks[k],
            100.0 * acc[k],
            100.0 * base_acc[k],
            100.0 * norm.ratio,
            first,
            last,
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
    let merge = |members: &[usize], lambda: f64| -> Result<Vec<f64>, Box<dyn std::error::Error>> {
        let mut m = pretrained.clone();
        for t in members.iter().filter_map(|&j| tuned.get(j)) {
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
    let all: Vec<usize> = (0..n).collect();
    let ft_mean = mean(&(0..n).map(|k| columns[k][k]).collect::<Vec<_>>());
    println!(
        "mean val: pretrained {:.1}%, fine-tuned {:.1}%, average {:.1}%, 0.3-sum {:.1}%",
        mean(&base_acc),
        ft_mean,
        mean(&merge(&all, 1.0 / n as f64)?),
        mean(&merge(&all, 0.3)?)
    );
    let groups = std::env::var("PROBE_GROUPS").unwrap_or_default();
    for group in groups.split(';').filter(|g| !g.trim().is_empty()) {
        let members = group
            .split(',')
            .map(|t| {
                tasks
                    .iter()
                    .position(|x| x == t.trim())
                    .ok_or_else(|| format!("PROBE_GROUPS names {t}, which was not probed"))
            })
            .collect::<Result<Vec<usize>, _>>()?;
        let m = members.len();
        let pick = |v: &[f64]| members.iter().map(|&i| v[i]).collect::<Vec<_>>();
        let mut off = 0.0;
        for &i in &members {
            for &j in &members {
                if i != j {
                    off += 100.0 * (columns[j][i] - base_acc[i]);
                }
            }
        }
        println!(
            "group [{}]: pretrained {:.1}%, fine-tuned {:.1}%, mean off-diagonal {:+.2}, average {:.1}%, 0.3-sum {:.1}%",
            group.trim(),
            mean(&pick(&base_acc)),
            mean(&members.iter().map(|&k| columns[k][k]).collect::<Vec<_>>()),
            off / (m * (m - 1)).max(1) as f64,
            mean(&pick(&merge(&members, 1.0 / m as f64)?)),
            mean(&pick(&merge(&members, 0.3)?))
        );
    }
    Ok(())
}
