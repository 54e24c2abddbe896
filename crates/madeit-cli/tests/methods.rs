//! `madeit methods` and the method lists of the help texts and error messages: all read the
//! registry.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use common::{assert_clean_failure, assert_success, madeit};
use madeit::eval::registry::{self, MethodKind};

fn ok(args: &[&str]) -> String {
    let out = madeit().args(args).output().unwrap();
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `madeit merge --method METHOD` on placeholder paths: refused before any file is read.
fn merge_refused(method: &str) -> String {
    let args = [
        "merge",
        "--method",
        method,
        "--pretrained",
        "p",
        "--finetuned",
        "f",
        "--out",
        "o",
    ];
    assert_clean_failure(&madeit().args(args).output().unwrap())
}

#[test]
fn methods_lists_the_registry() {
    let text = ok(&["methods"]);
    assert_eq!(text.trim_end(), registry::describe_all());
    let json: serde_json::Value = serde_json::from_str(&ok(&["methods", "--json"])).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), registry::methods().len());
    for (row, m) in rows.iter().zip(registry::methods()) {
        assert_eq!(row["name"], m.name());
        assert_eq!(row["label"], m.info.label);
        assert_eq!(row["default_run"], m.info.default_run);
        assert!(row["defaults"].is_object(), "{row}");
        assert!(row["defaults"].get("method").is_none(), "{row}");
    }
    let iso = rows.iter().find(|r| r["name"] == "c_iso_c").unwrap();
    assert_eq!(iso["kind"], "data_free");
    assert_eq!(iso["defaults"]["alpha"], 1.0);
    let mingle = rows.iter().find(|r| r["name"] == "mingle").unwrap();
    assert_eq!(mingle["kind"], "test_time");
}

#[test]
fn help_texts_and_errors_name_the_registered_methods() {
    let merge_help = ok(&["merge", "--help"]);
    let run_help = ok(&["run", "--help"]);
    for m in registry::methods() {
        assert!(run_help.contains(m.name()), "run --help lacks {}", m.name());
        assert!(
            merge_help.contains(m.name()),
            "merge --help lacks {}",
            m.name()
        );
    }
    // `madeit merge` refuses an unknown method, listing the data-free ones it can run.
    let stderr = merge_refused("dare");
    let data_free = registry::names_of(MethodKind::DataFree).join(", ");
    assert!(stderr.contains(&data_free), "{stderr}");
    // A test-time method is refused with a pointer to `madeit run`.
    let stderr = merge_refused("mingle");
    assert!(stderr.contains("madeit run"), "{stderr}");
}
