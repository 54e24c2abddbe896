//! `madeit methods` and the method lists of the help texts and error messages: all read the
//! registry.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::process::{Command, Output};

use madeit::eval::registry::{self, MethodKind};

fn madeit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_madeit"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = madeit(args);
    assert!(
        out.status.success(),
        "madeit {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let out = madeit(&[
        "merge",
        "--method",
        "dare",
        "--pretrained",
        "p",
        "--finetuned",
        "f",
        "--out",
        "o",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let data_free = registry::names_of(MethodKind::DataFree).join(", ");
    assert!(stderr.contains(&data_free), "{stderr}");
    // A test-time method is refused with a pointer to `madeit run`.
    let out = madeit(&[
        "merge",
        "--method",
        "mingle",
        "--pretrained",
        "p",
        "--finetuned",
        "f",
        "--out",
        "o",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("madeit run"), "{stderr}");
}
