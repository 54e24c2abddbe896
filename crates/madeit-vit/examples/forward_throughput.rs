//! Forward throughput of a model folder, for side-by-side comparisons with
//! `scripts/bench_forward_torch.py` (same flags, same output format):
//!
//! ```text
//! cargo run --release -p madeit-vit --example forward_throughput -- DIR [--batch 32] [--iters 10] [--warmup 2]
//! ```
//!
//! Uniform pixels in `[-1.5, 1.5)` from a fixed seed; prints the median time per batch and
//! images per second. Threads: `RAYON_NUM_THREADS`.

use std::path::PathBuf;
use std::time::Instant;

use madeit_vit::{ClipVisionModel, to_host};

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        args.first()
            .ok_or("usage: forward_throughput DIR [--batch N]")?,
    );
    let (batch, iters, warmup) = (
        arg(&args, "--batch", 32),
        arg(&args, "--iters", 10),
        arg(&args, "--warmup", 2),
    );
    let model = ClipVisionModel::load_dir(&dir)?;
    let c = model.config();
    let n = batch * c.num_channels * c.image_size * c.image_size;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let pixels: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 3.0 - 1.5
        })
        .collect();
    let mut times = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        let out = model.forward(model.pixels(pixels.clone(), batch)?)?;
        let _sum: f32 = to_host(&out.embedding())?.data().iter().sum();
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let med = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "madeit threads={threads} batch={batch}: median {:.1} ms/batch, {:.2} images/s (min {:.1} ms, max {:.1} ms over {} runs)",
        med * 1000.0,
        batch as f64 / med,
        times.first().copied().unwrap_or(f64::NAN) * 1000.0,
        times.last().copied().unwrap_or(f64::NAN) * 1000.0,
        times.len()
    );
    Ok(())
}
