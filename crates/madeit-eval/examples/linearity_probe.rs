//! Probes how linear a zoo's fine-tunes are: the test accuracy of `θ0 + λ τ_t` on task `t`
//! for several `λ`, the cosine between task vectors, and the accuracy of the plain average
//! `θ0 + (1/T) Σ τ_t` on every task. A zoo whose fine-tunes stay in the linear regime of the
//! pretrained model (as CLIP's do) keeps most of each task's gain at `λ ≈ 0.3-0.5` and gains
//! on every task from the average.
//!
//! `cargo run --release -p madeit-eval --example linearity_probe -- [ZOO_DIR]`

use madeit_eval::{Benchmark, Evaluator};
use madeit_merge::MergedModel;
use madeit_params::ParamDict;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "zoo".into());
    let bench = Benchmark::open_zoo(std::path::Path::new(&dir))?;
    let ev = Evaluator::from_benchmark(&bench, 250)?;
    let pre = bench.load_pretrained()?;
    let n = bench.num_tasks();
    let names = bench.task_names();
    let taus: Vec<ParamDict> = (0..n)
        .map(|t| Ok(bench.load_finetuned(t, &pre)?.sub(&pre)?))
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    println!("|θ0| = {:.2}", pre.l2_norm());
    let lambdas = [0.0f32, 0.3, 0.5, 1.0];
    println!(
        "| task | |τ| | {} |",
        lambdas.map(|l| format!("λ={l}")).join(" | ")
    );
    for t in 0..n {
        let mut row = Vec::new();
        for &l in &lambdas {
            let mut m = pre.clone();
            m.axpy(l, &taus[t])?;
            let acc = ev.evaluate(&MergedModel::Dense(m), &[t])?[0];
            row.push(format!("{:.1}", 100.0 * acc));
        }
        println!(
            "| {} | {:.2} | {} |",
            names[t],
            taus[t].l2_norm(),
            row.join(" | ")
        );
    }
    println!("cosines:");
    for a in 0..n {
        let row: Vec<String> = (0..n)
            .map(|b| {
                let c = taus[a].dot(&taus[b]).unwrap_or(f64::NAN)
                    / (taus[a].l2_norm() * taus[b].l2_norm());
                format!("{c:.2}")
            })
            .collect();
        println!("{} {}", names[a], row.join(" "));
    }
    let all: Vec<usize> = (0..n).collect();
    let is_target = |name: &str| {
        name.ends_with(".weight")
            && ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
                .iter()
                .any(|k| name.contains(k))
    };
    // Which tensors a merge touches: all, the target linear weights, or the rest.
    type Keep<'a> = &'a dyn Fn(&str) -> bool;
    let groups: [(&str, Keep); 3] = [
        ("", &|_| true),
        (", linear weights only", &|n| is_target(n)),
        (", all but linear weights", &|n| !is_target(n)),
    ];
    for ((label, l), (suffix, keep)) in [("average", 1.0 / n as f32), ("sum x0.3", 0.3)]
        .into_iter()
        .flat_map(|x| groups.iter().map(move |g| (x, *g)))
    {
        let label = format!("{label}{suffix}");
        let mut m = pre.clone();
        for tau in &taus {
            let part = tau.map(|name, t| if keep(name) { t.clone() } else { t.scale(0.0) });
            m.axpy(l, &part)?;
        }
        let accs = ev.evaluate(&MergedModel::Dense(m), &all)?;
        let mean = accs.iter().sum::<f64>() / n as f64;
        let row: Vec<String> = accs.iter().map(|a| format!("{:.1}", 100.0 * a)).collect();
        println!("{label}: mean {:.1} [{}]", 100.0 * mean, row.join(" "));
    }
    Ok(())
}
