//! `--device`: the CPU gives the default result; a device this build lacks is refused
//! before anything is read or written.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::Path;

#[cfg(not(feature = "wgpu"))]
use common::{assert_clean_failure, embed};
use common::{assert_success, madeit, results_digest, temp_zoo};

fn matrices(run: &Path) -> serde_json::Value {
    results_digest(run, &["label", "seed", "matrix"])
}

fn run_on(zoo: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    madeit()
        .args([
            "run",
            "--methods",
            "swa,made_it",
            "--seeds",
            "42",
            "--quiet",
        ])
        .arg("--zoo")
        .arg(zoo)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn device_cpu_is_the_default_run() {
    let (tmp, zoo) = temp_zoo();
    let default = tmp.path().join("default");
    let cpu = tmp.path().join("cpu");
    assert_success(&run_on(&zoo, &default, &[]));
    assert_success(&run_on(&zoo, &cpu, &["--device", "cpu"]));
    assert_eq!(matrices(&default), matrices(&cpu));
    // The default device is not written into the results' configuration.
    let text = std::fs::read_to_string(cpu.join("results.json")).unwrap();
    assert!(!text.contains("\"device\""), "{text}");
}

#[test]
fn an_unknown_device_is_refused_by_the_parser() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = run_on(&tmp.path().join("zoo"), &out, &["--device", "cuda"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown device `cuda`"), "{err}");
    assert!(!out.exists());
}

#[cfg(not(feature = "wgpu"))]
#[test]
fn wgpu_without_the_feature_is_refused_before_any_work() {
    let (tmp, zoo) = temp_zoo();
    let before = common::tree(&zoo);
    let out = tmp.path().join("out");
    let err = assert_clean_failure(&run_on(&zoo, &out, &["--device", "wgpu"]));
    assert!(err.contains("--device wgpu"), "{err}");
    assert!(err.contains("`wgpu` cargo feature"), "{err}");
    assert!(!out.exists(), "an output folder was created");
    assert_eq!(common::tree(&zoo), before);

    // The same in an experiment file.
    let cfg = tmp.path().join("exp.toml");
    std::fs::write(&cfg, "[experiment]\ndevice = \"wgpu\"\n").unwrap();
    let o = madeit()
        .args(["run", "--quiet", "--methods", "swa", "--seeds", "42"])
        .arg("--config")
        .arg(&cfg)
        .arg("--zoo")
        .arg(&zoo)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = assert_clean_failure(&o);
    assert!(err.contains("`wgpu` cargo feature"), "{err}");
    assert!(!out.exists());

    // embed refuses it too, and writes nothing.
    let pixels = tmp.path().join("px.safetensors");
    let emb = tmp.path().join("emb.safetensors");
    let o = embed(
        &zoo.join("pretrained"),
        &pixels,
        &emb,
        &["--device", "wgpu"],
    );
    let err = assert_clean_failure(&o);
    assert!(err.contains("`wgpu` cargo feature"), "{err}");
    assert!(!emb.exists());
}
