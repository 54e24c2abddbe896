//! Fetches the data and builds a zoo, printing the stages (the `madeit zoo build` command
//! does the same with progress bars).
//!
//! `cargo run --release -p madeit-zoo --example build_zoo -- [ZOO_DIR] [CONFIG.json]`
//!
//! The optional JSON file holds a `BuildConfig` (missing fields take their defaults).

use std::path::PathBuf;

use madeit_zoo::{BuildConfig, BuildEvent, BuildOptions, BuildOutcome, build_zoo};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let zoo_dir = args
        .first()
        .map_or_else(madeit_zoo::default_zoo_dir, PathBuf::from);
    let config: BuildConfig = match args.get(1) {
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p)?)?,
        None => BuildConfig::default(),
    };
    let cache_dir = madeit_data::default_cache_dir();
    madeit_data::fetch_sources(&cache_dir, &|e| eprintln!("fetch: {e:?}"))?;
    let opts = BuildOptions {
        zoo_dir,
        cache_dir,
        config,
        force: false,
        threads: None,
    };
    let start = std::time::Instant::now();
    let outcome = build_zoo(&opts, &mut |e: &BuildEvent| match e {
        BuildEvent::Step {
            stage,
            done,
            total,
            loss,
        } => {
            if done % 50 == 0 || done == total {
                eprintln!(
                    "[{:7.1}s] {stage} {done}/{total} loss {}",
                    start.elapsed().as_secs_f64(),
                    loss.map_or("-".into(), |l| format!("{l:.4}"))
                );
            }
        }
        other => eprintln!("[{:7.1}s] {other:?}", start.elapsed().as_secs_f64()),
    })?;
    let m = match outcome {
        BuildOutcome::AlreadyComplete(m) => {
            eprintln!("already complete");
            m
        }
        BuildOutcome::Built(m) => m,
    };
    for t in &m.tasks {
        println!(
            "{:28} pretrained {:5.1} / {:5.1}  finetuned {:5.1} / {:5.1}  (val / test)",
            t.name,
            100.0 * t.accuracy.pretrained.val,
            100.0 * t.accuracy.pretrained.test,
            100.0 * t.accuracy.finetuned.val,
            100.0 * t.accuracy.finetuned.test
        );
    }
    println!(
        "mean test: pretrained {:.1}, finetuned {:.1}; total {:.0}s",
        100.0 * m.mean_pretrained_test(),
        100.0 * m.mean_finetuned_test(),
        m.timings.total
    );
    Ok(())
}
