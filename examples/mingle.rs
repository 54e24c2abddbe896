//! MINGLE: low-rank experts with linear gates; at every step the new task's gates are adapted
//! at test time on a few unlabeled images of that task (the zoo's seed split, 5 per class),
//! with gradients projected off the input subspaces of earlier tasks (null-space constraint,
//! adaptively relaxed). Unlike the weight-space methods and MADE-IT it needs those unlabeled
//! images, so it runs through the run loop that loads them (`madeit_eval::run_stream`).
//!
//! Merges the first three tasks of the seed-42 order of the embedded zoo and prints the
//! accuracy matrix, ACC and BWT.
//!
//! `cargo run --release -p madeit --example mingle -- [ZOO_DIR]`

mod common;

use madeit::eval::runner::{RunEvent, StreamSpec, run_stream};
use madeit::eval::{Evaluator, MethodSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bench = common::open_zoo()?;
    let evaluator = Evaluator::from_benchmark(&bench, 128)?;
    let pretrained = bench.load_pretrained()?;
    let method = MethodSpec::default_for("mingle")?;
    let spec = StreamSpec::new(method, common::short_order(&bench, 3));
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
        } => {
            println!("step {step}: absorbed {task} (adaptation included) in {seconds:.1} s");
        }
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
