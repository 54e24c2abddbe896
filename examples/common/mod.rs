//! What every method example shares: look the method up in the registry, open the embedded
//! zoo, run a short task stream through the run loop (the same loop as `madeit run`, for
//! every kind of method), and print the accuracy on every task seen so far after each step,
//! with ACC and BWT at the end.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use madeit::eval::orders::task_order;
use madeit::eval::registry::{self, MethodDescriptor};
use madeit::eval::{Benchmark, Evaluator};

/// The position of the zoo folder among the command-line arguments (1: the first).
static ZOO_ARG: AtomicUsize = AtomicUsize::new(1);

/// Takes the zoo folder from argument `index` (1-based) instead of the first.
pub fn zoo_arg(index: usize) {
    ZOO_ARG.store(index, Ordering::Relaxed);
}

/// The zoo folder: the first command-line argument (see [`zoo_arg`]), else `$MADEIT_ZOO`,
/// else `zoo`.
pub fn zoo_dir() -> PathBuf {
    std::env::args()
        .nth(ZOO_ARG.load(Ordering::Relaxed))
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("MADEIT_ZOO").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("zoo"))
}

/// Opens the zoo, with a message saying how to build it when it is missing.
pub fn open_zoo() -> Result<Benchmark, Box<dyn std::error::Error>> {
    let dir = zoo_dir();
    if !dir.join("zoo.json").is_file() {
        return Err(format!(
            "no zoo at {}: build it once with `cargo run --release -p madeit-cli -- zoo build` \
             (or pass another zoo folder as the first argument)",
            dir.display()
        )
        .into());
    }
    Ok(Benchmark::open_zoo(&dir)?)
}

/// The first `len` tasks of the protocol's order for seed 42 (0-based benchmark indices).
pub fn short_order(bench: &Benchmark, len: usize) -> Vec<usize> {
    // `task_order` gives the 1-based ids of the paper's tables.
    let mut order: Vec<usize> = task_order(bench.num_tasks(), 42)
        .into_iter()
        .map(|id| id - 1)
        .collect();
    order.truncate(len.min(order.len()));
    order
}

/// The registry entry of `name` (the error lists every registered name), after printing its
/// label, summary, paper and reference.
pub fn describe(name: &str) -> Result<&'static MethodDescriptor, Box<dyn std::error::Error>> {
    let m = registry::method(name)?;
    println!(
        "{} (`{}`, {}): {}",
        m.info.label,
        m.name(),
        m.kind.describe(),
        m.info.summary
    );
    println!("paper: {}\nreference: {}", m.info.paper, m.info.reference);
    Ok(m)
}

/// Runs the registered method `name` with its reference defaults on the first `len` tasks of
/// the seed-42 order through the run loop ([`run_method`]), whatever its kind.
pub fn run_registered(name: &str, len: usize) -> Result<(), Box<dyn std::error::Error>> {
    let m = describe(name)?;
    let spec = m.default_config();
    println!("config: {}", serde_json::to_string(&spec)?);
    run_method(spec, len)
}

/// Runs `method` through the run loop (`madeit_eval::run_stream`, the one loop for every
/// kind of method: it loads the seed images and heads a test-time method needs, or the
/// training data of C. Fine-Tuned) on the first `len` tasks of the seed-42 order, printing
/// each evaluation, then ACC and BWT.
pub fn run_method(
    method: madeit::eval::MethodSpec,
    len: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use madeit::eval::runner::{RunEvent, StreamSpec, run_stream};

    let bench = open_zoo()?;
    let evaluator = Evaluator::from_benchmark(&bench, 128)?;
    let pretrained = bench.load_pretrained()?;
    let name = method.name();
    let spec = StreamSpec::new(method, short_order(&bench, len));
    let result = run_stream(&bench, &evaluator, &pretrained, &spec, &mut |ev| match ev {
        RunEvent::TaskEvaluated {
            step,
            task,
            accuracy,
            ..
        } => println!("step {step}: {task} {:.1}%", 100.0 * accuracy),
        RunEvent::Absorbed {
            step,
            task,
            seconds,
            ..
        } => println!("step {step}: {name} absorbed {task} in {seconds:.1} s"),
        _ => {}
    })?;
    if let Some(m) = result.metrics {
        println!(
            "ACC {:.1}%  BWT {:.1}%",
            100.0 * m.acc,
            100.0 * m.bwt.unwrap_or(0.0)
        );
    }
    Ok(())
}
