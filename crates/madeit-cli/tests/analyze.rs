//! `madeit analyze` on a tiny zoo: the three figures are written, legends included.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{assert_success, run, temp_zoo};

#[test]
fn analyze_writes_its_three_figures_with_their_legends() {
    let (tmp, zoo) = temp_zoo();
    let out = tmp.path().join("analysis");
    let o = run(&[&"analyze", &"--zoo", &zoo, &"--out", &out]);
    assert_success(&o);
    for (file, legend) in [
        ("allocation_map.svg", None),
        (
            "affinity_density.svg",
            Some("subspace affinity S (MADE-IT)"),
        ),
        ("experts_kept.svg", Some("one per task")),
    ] {
        let svg = std::fs::read_to_string(out.join(file)).unwrap();
        assert!(
            svg.trim_end().ends_with("</svg>"),
            "{file} is not a whole SVG"
        );
        if let Some(legend) = legend {
            assert!(svg.contains(legend), "{file} has no legend `{legend}`");
        }
    }
}
