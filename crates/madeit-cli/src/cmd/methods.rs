//! `madeit methods`: the method registry, one method per line (or as JSON).

use madeit::eval::registry::{self, MethodKind};

/// Arguments of `madeit methods`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array (name, label, title, summary, paper, reference, kind,
    /// default_run and the default configuration of every method).
    #[arg(long)]
    json: bool,
}

/// The `--method(s)` help of `madeit merge` and `madeit run`: the registered names of the
/// given kinds, from the registry.
pub fn names_of(kinds: &[MethodKind]) -> String {
    registry::methods()
        .iter()
        .filter(|m| kinds.contains(&m.kind))
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The registered names that are not run by default (comma-separated).
pub fn opt_in_names() -> String {
    registry::methods()
        .iter()
        .filter(|m| !m.info.default_run)
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn kind_key(kind: MethodKind) -> &'static str {
    match kind {
        MethodKind::DataFree => "data_free",
        MethodKind::TestTime => "test_time",
        MethodKind::NeedsTrainingData => "needs_training_data",
        _ => "other",
    }
}

/// Prints the registry.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.json {
        let mut all = Vec::new();
        for m in registry::methods() {
            let mut defaults = serde_json::to_value(m.default_config())?;
            if let Some(map) = defaults.as_object_mut() {
                map.remove("method");
            }
            all.push(serde_json::json!({
                "name": m.name(),
                "label": m.info.label,
                "title": m.info.title,
                "summary": m.info.summary,
                "paper": m.info.paper,
                "reference": m.info.reference,
                "kind": kind_key(m.kind),
                "default_run": m.info.default_run,
                "defaults": defaults,
            }));
        }
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        println!("{}", registry::describe_all());
    }
    Ok(())
}
