//! Markdown tables of an experiment, in the shape of the papers' tables.
//!
//! - [`table_methods`]: rows Pre-Trained, Fine-Tuned (individual), then each method;
//!   columns ACC and BWT in percent, `mean ± std` over the task orders (sample std, ddof 1).
//!   The two reference rows are order-independent (no std, no BWT). Rows carry the
//!   method's note in brackets (the mode of C. LW AdaMerging; "needs training data" for
//!   C. Fine-Tuned), and a C. Fine-Tuned row marked "not run" when the experiment left it
//!   out (it is opt-in: `--methods c_finetuned`).
//! - [`table_per_task`]: the final accuracy of each method on each task (mean over orders).
//! - [`table_timings`]: seconds per absorb step and per stream.

use std::fmt::Write as _;

use crate::experiment::ExperimentResults;
use crate::metrics::MeanStd;

/// The display name of a registered method, its registry label (`ties` → `TIES-Merging`);
/// `madeit`, an earlier name of `made_it`, is shown as `made_it` is. Unknown names are
/// returned as given.
#[must_use]
pub fn display_name(method: &str) -> &str {
    let name = if method == "madeit" {
        "made_it"
    } else {
        method
    };
    crate::registry::find(name).map_or(method, |m| m.info.label)
}

fn row_name(label: &str, method: &str, note: Option<&str>) -> String {
    let name = if label == method {
        display_name(method).to_owned()
    } else {
        format!("{} (`{label}`)", display_name(method))
    };
    match note {
        Some(n) => format!("{name} [{n}]"),
        None => name,
    }
}

/// `mean ± std` of fractions, in percent with one decimal (`mean` alone for one value).
#[must_use]
pub fn pct(m: &MeanStd) -> String {
    match m.std {
        Some(s) => format!("{:.1} ± {:.1}", 100.0 * m.mean, 100.0 * s),
        None => format!("{:.1}", 100.0 * m.mean),
    }
}

/// The ACC / BWT table (see the module docs).
#[must_use]
pub fn table_methods(r: &ExperimentResults) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| Method | ACC (%) ↑ | BWT (%) ↑ |");
    let _ = writeln!(s, "|---|---:|---:|");
    let _ = writeln!(
        s,
        "| Pre-Trained | {:.1} | – |",
        100.0 * r.references.pretrained_mean()
    );
    let _ = writeln!(
        s,
        "| Fine-Tuned (individual) | {:.1} | – |",
        100.0 * r.references.finetuned_mean()
    );
    for m in &r.summaries {
        let bwt = m.orders.bwt.as_ref().map_or_else(|| "–".to_owned(), pct);
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            row_name(&m.label, &m.method, m.note.as_deref()),
            pct(&m.orders.acc),
            bwt
        );
    }
    // The reference rows that need training data (C. Fine-Tuned) are opt-in; say so.
    for m in crate::registry::methods() {
        if m.kind == crate::registry::MethodKind::NeedsTrainingData
            && !r.summaries.iter().any(|sm| sm.method == m.name())
        {
            let _ = writeln!(
                s,
                "| {} [{}] | not run | not run |",
                m.info.label,
                m.kind.describe()
            );
        }
    }
    s
}

/// The per-task final-accuracy table (see the module docs).
#[must_use]
pub fn table_per_task(r: &ExperimentResults) -> String {
    let tasks = &r.references.tasks;
    let mut s = String::new();
    let _ = writeln!(s, "| Method | {} | Avg |", tasks.join(" | "));
    let _ = writeln!(s, "|---|{}---:|", "---:|".repeat(tasks.len()));
    let line = |s: &mut String, name: &str, values: &[f64]| {
        let cells: Vec<String> = values.iter().map(|v| format!("{:.1}", 100.0 * v)).collect();
        let avg = if values.is_empty() {
            0.0
        } else {
            values.iter().sum::<f64>() / values.len() as f64
        };
        let _ = writeln!(s, "| {name} | {} | {:.1} |", cells.join(" | "), 100.0 * avg);
    };
    line(&mut s, "Pre-Trained", &r.references.pretrained);
    line(&mut s, "Fine-Tuned (individual)", &r.references.finetuned);
    for m in &r.summaries {
        let v: Vec<f64> = m.final_accuracy.iter().map(|x| x.mean).collect();
        line(
            &mut s,
            &row_name(&m.label, &m.method, m.note.as_deref()),
            &v,
        );
    }
    s
}

/// Seconds per absorb step and per stream, mean ± std.
#[must_use]
pub fn table_timings(r: &ExperimentResults) -> String {
    let f = |m: &MeanStd| match m.std {
        Some(s) => format!("{:.3} ± {:.3}", m.mean, s),
        None => format!("{:.3}", m.mean),
    };
    let mut s = String::new();
    let _ = writeln!(s, "| Method | absorb (s / step) | stream (s) |");
    let _ = writeln!(s, "|---|---:|---:|");
    for m in &r.summaries {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            row_name(&m.label, &m.method, m.note.as_deref()),
            f(&m.absorb_seconds),
            f(&m.stream_seconds)
        );
    }
    s
}

/// The whole Markdown report: a header describing the run, then the three tables.
#[must_use]
pub fn render_markdown(r: &ExperimentResults) -> String {
    let seeds: Vec<String> = r.config.seeds.iter().map(ToString::to_string).collect();
    let mut s = String::new();
    let _ = writeln!(s, "# Continual merging results\n");
    let _ = writeln!(
        s,
        "{} tasks ({}), {} task order{} (seeds {}), evaluation `{}`, {} {} images in all{}. \
         Accuracies in percent; methods: mean ± sample std over the orders.\n",
        r.benchmark.tasks.len(),
        r.benchmark.tasks.join(", "),
        r.config.seeds.len(),
        if r.config.seeds.len() == 1 { "" } else { "s" },
        seeds.join(", "),
        match r.config.eval {
            crate::runner::EvalMode::Full => "full",
            crate::runner::EvalMode::Final => "final",
        },
        r.benchmark.test_images.iter().sum::<usize>(),
        match r.config.split {
            crate::experiment::EvalSplit::Test => "test",
            crate::experiment::EvalSplit::Val => "validation",
        },
        r.config
            .test_images
            .map_or_else(String::new, |m| format!(" (at most {m} per task)")),
    );
    let _ = writeln!(s, "## ACC and BWT\n\n{}", table_methods(r));
    let _ = writeln!(s, "## Final accuracy per task\n\n{}", table_per_task(r));
    let _ = writeln!(s, "## Timings\n\n{}", table_timings(r));
    let m = &r.machine;
    let _ = writeln!(
        s,
        "Run finished {} on {} logical cores ({}; {} {}), {:.1} s in all (references {:.1} s, \
         streams {:.1} s).",
        r.date,
        m.cores,
        m.cpu.as_deref().unwrap_or("unknown CPU"),
        m.os,
        m.arch,
        r.timings.total_s,
        r.timings.references_s,
        r.timings.streams_s
    );
    s
}
