//! Bad inputs give typed errors that name the argument and position.
#![allow(clippy::panic)]

use madeit_linalg::faer::Mat;
use madeit_linalg::{
    LinalgError, SvdWorkspace, TruncatedSvd, check_orthonormal, orthonormalize, polar_factor,
    random, thin_svd, truncated_svd,
};

fn with_value(m: usize, n: usize, row: usize, col: usize, value: f64) -> Mat<f64> {
    let mut a = random::gaussian::<f64>(m, n, 3);
    a[(row, col)] = value;
    a
}

#[test]
fn nan_and_inf_are_reported_with_position() {
    for (value, row, col) in [
        (f64::NAN, 2, 3),
        (f64::INFINITY, 0, 0),
        (f64::NEG_INFINITY, 4, 1),
    ] {
        let a = with_value(5, 4, row, col, value);
        let errors = [
            thin_svd(a.as_ref()).err(),
            truncated_svd(a.as_ref(), 2, TruncatedSvd::Exact).err(),
            truncated_svd(a.as_ref(), 1, TruncatedSvd::randomized(0)).err(),
            polar_factor(a.as_ref()).err(),
            orthonormalize(a.as_ref()).err(),
        ];
        for err in errors {
            match err {
                Some(LinalgError::NonFinite {
                    argument,
                    row: r,
                    col: c,
                    value: v,
                }) => {
                    assert_eq!((argument, r, c), ("a", row, col));
                    assert_eq!(v.is_nan(), value.is_nan());
                    if !value.is_nan() {
                        assert_eq!(v, value);
                    }
                }
                other => panic!("expected NonFinite, got {other:?}"),
            }
        }
    }
}

#[test]
fn non_finite_in_a_strided_view_is_found() {
    let a = with_value(6, 5, 4, 2, f64::NAN);
    // The transpose is row-major: the check takes its strided path.
    match thin_svd(a.transpose()) {
        Err(LinalgError::NonFinite { row: 2, col: 4, .. }) => {}
        other => panic!("expected NonFinite at (2, 4), got {other:?}"),
    }
}

#[test]
fn first_non_finite_in_column_major_order_is_reported() {
    let mut a = with_value(4, 4, 3, 1, f64::NAN);
    a[(1, 2)] = f64::INFINITY;
    match thin_svd(a.as_ref()) {
        Err(LinalgError::NonFinite { row: 3, col: 1, .. }) => {}
        other => panic!("expected the NaN at (3, 1), got {other:?}"),
    }
}

#[test]
fn empty_matrices_are_rejected() {
    for (m, n) in [(0, 0), (0, 3), (3, 0)] {
        let a = Mat::<f32>::zeros(m, n);
        let expect = LinalgError::EmptyMatrix {
            argument: "a",
            rows: m,
            cols: n,
        };
        assert_eq!(thin_svd(a.as_ref()).err(), Some(expect.clone()));
        assert_eq!(
            truncated_svd(a.as_ref(), 1, TruncatedSvd::Exact).err(),
            Some(expect.clone())
        );
        assert_eq!(polar_factor(a.as_ref()).err(), Some(expect.clone()));
        assert_eq!(orthonormalize(a.as_ref()).err(), Some(expect));
    }
}

#[test]
fn impossible_ranks_are_rejected() {
    let a = random::gaussian::<f32>(6, 4, 1);
    for method in [TruncatedSvd::Exact, TruncatedSvd::randomized(1)] {
        assert_eq!(
            truncated_svd(a.as_ref(), 0, method).err(),
            Some(LinalgError::ZeroRank { rows: 6, cols: 4 })
        );
        assert_eq!(
            truncated_svd(a.as_ref(), 5, method).err(),
            Some(LinalgError::RankTooLarge {
                rank: 5,
                rows: 6,
                cols: 4
            })
        );
        // rank = min(m, n) is allowed.
        let svd = truncated_svd(a.as_ref(), 4, method).expect("full rank is valid");
        assert_eq!(svd.rank(), 4);
    }
}

#[test]
fn orthonormality_check_reports_the_deviation() {
    let q = random::orthonormal::<f64>(10, 3, 5).expect("valid shape");
    check_orthonormal(q.as_ref(), 1e-12, "q").expect("orthonormal");
    let a = random::gaussian::<f64>(10, 3, 5);
    match check_orthonormal(a.as_ref(), 1e-6, "w") {
        Err(LinalgError::NotOrthonormal {
            argument: "w",
            max_deviation,
            tolerance,
        }) => {
            assert!(max_deviation > 1e-6);
            assert_eq!(tolerance, 1e-6);
        }
        other => panic!("expected NotOrthonormal, got {other:?}"),
    }
}

#[test]
fn random_generators_validate_their_shapes() {
    assert!(matches!(
        random::orthonormal::<f64>(3, 4, 0),
        Err(LinalgError::RankTooLarge { .. })
    ));
    assert!(matches!(
        random::orthonormal::<f64>(0, 0, 0),
        Err(LinalgError::EmptyMatrix { .. })
    ));
    assert!(matches!(
        random::with_spectrum::<f64>(3, 5, &[1.0, 2.0, 3.0, 4.0], 0),
        Err(LinalgError::RankTooLarge { .. })
    ));
    assert!(matches!(
        random::with_spectrum::<f64>(3, 5, &[1.0, f64::NAN], 0),
        Err(LinalgError::NonFinite {
            argument: "singular_values",
            row: 1,
            ..
        })
    ));
}

#[test]
fn errors_display_the_argument() {
    let a = with_value(3, 3, 1, 2, f64::NAN);
    let msg = thin_svd(a.as_ref())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("`a`") && msg.contains("row 1") && msg.contains("column 2"),
        "{msg}"
    );
}

#[test]
fn a_workspace_survives_an_error() {
    let mut ws = SvdWorkspace::<f64>::new();
    let bad = with_value(8, 6, 0, 0, f64::NAN);
    assert!(
        ws.truncated_svd(bad.as_ref(), 2, TruncatedSvd::randomized(0))
            .is_err()
    );
    let good = random::gaussian::<f64>(8, 6, 2);
    let svd = ws.thin_svd(good.as_ref()).expect("valid input");
    assert_eq!(svd.rank(), 6);
}

#[test]
fn a_row_major_view_reports_the_first_non_finite_in_column_major_order() {
    // In memory (row by row) the infinity at (0, 3) of the view comes first; in
    // column-major order the NaN at (2, 1) does.
    let mut a = random::gaussian::<f64>(5, 4, 9);
    a[(1, 2)] = f64::NAN;
    a[(3, 0)] = f64::INFINITY;
    let view = a.transpose(); // 4 x 5, row-major
    match thin_svd(view) {
        Err(LinalgError::NonFinite { row: 2, col: 1, .. }) => {}
        other => panic!("expected the NaN at (2, 1), got {other:?}"),
    }
    let finite = random::gaussian::<f64>(5, 4, 9);
    assert!(thin_svd(finite.transpose()).is_ok());
}
