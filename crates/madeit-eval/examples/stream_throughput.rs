//! Decoding throughput of a benchmark file's test splits, for docs/performance.md: every
//! test image is read, decoded and preprocessed (CLIP's resize, crop and normalisation) on
//! the worker threads of the evaluation's stream, exactly as `madeit run --benchmark` reads
//! them, and thrown away (no model). Prints images per second and the process's peak RSS.
//!
//! ```text
//! cargo run --release -p madeit-eval --example stream_throughput -- FILE [--workers N] [--batch 128] [--limit N]
//! ```
//!
//! Compare with the model alone: `cargo run --release -p madeit-vit --example
//! forward_throughput -- DIR` (threads: `RAYON_NUM_THREADS`).

use std::path::PathBuf;
use std::time::Instant;

use madeit_eval::benchmark_file::{BenchmarkFile, Roots};
use madeit_eval::images::StreamedImages;

fn arg(args: &[String], name: &str) -> Option<usize> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// The process's peak resident set (`VmHWM`), in MiB, where /proc tells it.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = PathBuf::from(
        args.first()
            .ok_or("usage: stream_throughput FILE [--workers N] [--batch 128] [--limit N]")?,
    );
    let batch = arg(&args, "--batch").unwrap_or(128);
    let resolved = BenchmarkFile::open(&file)?.resolve(&Roots::default())?;
    let pipeline = resolved.pipeline().clone();
    println!(
        "rss after opening the datasets: {:.0} MiB",
        peak_rss_mib().unwrap_or(0.0)
    );
    for task in resolved.tasks() {
        let mut dataset = task.test.1.clone();
        if let Some(limit) = arg(&args, "--limit") {
            let picked: Vec<usize> = (0..dataset.len().min(limit)).collect();
            dataset = dataset.select(&picked)?;
        }
        let mut images = StreamedImages::new(dataset, pipeline.preprocess.clone(), pipeline.alpha);
        if let Some(w) = arg(&args, "--workers") {
            images = images.with_workers(w);
        }
        let start = Instant::now();
        let mut n = 0usize;
        let mut checksum = 0.0f64;
        for b in images.batches(batch) {
            let b = b?;
            n += b.len;
            checksum += f64::from(b.pixels.first().copied().unwrap_or(0.0));
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{}: {n} images in {secs:.1} s = {:.1} images/s (batch {batch}); peak RSS {:.0} MiB \
             (checksum {checksum:.3})",
            task.name,
            n as f64 / secs,
            peak_rss_mib().unwrap_or(0.0)
        );
    }
    Ok(())
}
