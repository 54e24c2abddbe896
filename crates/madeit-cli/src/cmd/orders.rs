//! `madeit orders`: the task orders of the evaluation protocol.

use madeit::eval::orders::{PUBLISHED_SEEDS, task_order};

/// Arguments of `madeit orders`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of tasks in the stream.
    #[arg(long)]
    tasks: usize,
    /// Seed of Python's `random.seed(seed); random.shuffle(ids)`; every published seed
    /// (42-51) when omitted.
    #[arg(long)]
    seed: Option<u64>,
}

/// Print one line per seed: `seed 42: 4,5,7,8,3,6,1,2`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.tasks > 0, "--tasks must be at least 1");
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => PUBLISHED_SEEDS.to_vec(),
    };
    for seed in seeds {
        let order = task_order(args.tasks, seed);
        let ids: Vec<String> = order.iter().map(ToString::to_string).collect();
        println!("seed {seed}: {}", ids.join(","));
    }
    Ok(())
}
