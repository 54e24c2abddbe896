//! The method registry: one entry per method, consistent with the configurations it builds,
//! and the lists that read it.
#![allow(clippy::panic)]

use madeit_eval::registry::{self, MethodKind};
use madeit_eval::report::display_name;
use madeit_eval::{MethodSpec, RunError};
use madeit_merge::MergeError;

#[test]
fn every_method_has_one_consistent_entry() {
    let names = registry::names();
    assert_eq!(
        names,
        [
            "swa",
            "task_arithmetic",
            "ties",
            "magmax",
            "opcm",
            "made_it",
            "c_iso_c",
            "c_lw_adamerging",
            "c_lora_wemoe",
            "mingle",
            "c_finetuned"
        ]
    );
    for (i, m) in registry::methods().iter().enumerate() {
        assert!(!names[..i].contains(&m.name()), "{} twice", m.name());
        let spec = m.default_config();
        assert_eq!(spec.name(), m.name());
        assert_eq!(spec.kind(), m.kind, "{}", m.name());
        assert_eq!(spec.is_test_time(), m.kind == MethodKind::TestTime);
        assert_eq!(spec.seed_setup().is_some(), m.kind == MethodKind::TestTime);
        assert_eq!(
            spec.needs_training_data(),
            m.kind == MethodKind::NeedsTrainingData
        );
        assert_eq!(spec.as_merge().is_some(), m.kind == MethodKind::DataFree);
        assert_eq!(spec.descriptor().map(|d| d.name()), Some(m.name()));
        spec.check().unwrap_or_else(|e| panic!("{}: {e}", m.name()));
        // The defaults are what `method = NAME` parses to, and survive serde.
        assert_eq!(MethodSpec::default_for(m.name()).ok(), Some(spec.clone()));
        let table = serde_json::json!({ "method": m.name() });
        assert_eq!(MethodSpec::from_json_value(table).ok(), Some(spec.clone()));
        let json = serde_json::to_value(&spec).expect("serialise");
        assert_eq!(json["method"], m.name());
        assert_eq!(MethodSpec::from_json_value(json).ok(), Some(spec));
        // Descriptive fields are filled in, and the table label is the registry's.
        assert!(!m.info.title.is_empty() && !m.info.summary.is_empty());
        assert!(!m.info.paper.is_empty());
        assert!(m.info.reference.starts_with("https://github.com/"));
        assert_eq!(display_name(m.name()), m.info.label);
    }
    assert_eq!(display_name("madeit"), "MADE-IT");
    assert_eq!(display_name("not-a-method"), "not-a-method");
}

#[test]
fn the_data_free_part_is_the_merge_registry() {
    let data_free: Vec<&str> = registry::names_of(MethodKind::DataFree);
    let merge: Vec<&str> = madeit_merge::METHODS.iter().map(|m| m.name).collect();
    assert_eq!(data_free, merge);
    for (m, info) in registry::methods().iter().zip(madeit_merge::METHODS) {
        assert_eq!(&m.info, info);
    }
}

#[test]
fn c_iso_c_is_registered_data_free_and_opt_in() {
    let m = registry::method("c_iso_c").expect("registered");
    assert_eq!(m.kind, MethodKind::DataFree);
    assert!(!m.info.default_run);
    assert_eq!(m.info.label, "C. Iso-C");
    assert!(
        !registry::default_methods()
            .iter()
            .any(|d| d.name() == "c_iso_c")
    );
    let spec = MethodSpec::from_toml_str("method = \"c_iso_c\"\nalpha = 1.4").expect("parses");
    let json = serde_json::to_value(&spec).expect("serialise");
    assert_eq!(json["alpha"], 1.4);
}

#[test]
fn unknown_methods_list_every_registered_name() {
    for err in [
        MethodSpec::default_for("dare").expect_err("unknown"),
        MethodSpec::from_toml_str("method = \"dare\"").expect_err("unknown"),
    ] {
        let RunError::Merge(e) = err else {
            panic!("expected a merge error, got {err}")
        };
        let MergeError::UnknownMethod { name, available } = *e else {
            panic!("expected UnknownMethod, got {e}")
        };
        assert_eq!(name, "dare");
        assert_eq!(available, registry::names().join(", "));
    }
    // The other malformed tables keep their messages.
    let err =
        MethodSpec::from_json_value(serde_json::json!({ "lambda": 0.3 })).expect_err("no method");
    assert!(err.to_string().contains("missing key `method`"), "{err}");
    let err = MethodSpec::from_json_value(serde_json::json!(3)).expect_err("not a table");
    assert!(err.to_string().contains("table/object"), "{err}");
}

#[test]
fn describe_all_has_one_line_per_method() {
    let text = registry::describe_all();
    assert_eq!(text.lines().count(), registry::methods().len());
    for (line, m) in text.lines().zip(registry::methods()) {
        assert!(line.starts_with(m.name()), "{line}");
        assert!(line.contains(m.info.label), "{line}");
        assert_eq!(line.contains("opt-in"), !m.info.default_run, "{line}");
    }
}
