//! Construction checks and dimension mismatches give typed errors.

use madeit_grassmann::{GrassmannError, Subspace, expert_affinity};
use madeit_linalg::faer::{Mat, mat};
use madeit_linalg::{LinalgError, random};

fn sub(d: usize, r: usize, seed: u64) -> Subspace<f64> {
    Subspace::new(random::orthonormal::<f64>(d, r, seed).expect("r <= d")).expect("orthonormal")
}

#[test]
fn non_orthonormal_basis_is_rejected() {
    let a = mat![[1.0, 0.0], [0.0, 1.0], [0.0, 0.1]];
    match Subspace::new(a.clone()) {
        Err(GrassmannError::NotOrthonormal {
            max_deviation,
            tolerance,
        }) => {
            assert!((max_deviation - 0.01).abs() < 1e-12);
            assert!(tolerance < 1e-10);
        }
        other => unreachable!("expected NotOrthonormal, got {other:?}"),
    }
    // A loose explicit tolerance accepts it; `orthonormalized` repairs it.
    assert!(Subspace::with_tolerance(a.clone(), 0.02).is_ok());
    let fixed = Subspace::orthonormalized(a.as_ref()).expect("full rank");
    assert!(madeit_linalg::orthonormality_error(fixed.basis()) < 1e-14);
    assert_eq!((fixed.dim(), fixed.rank()), (3, 2));
}

#[test]
fn scaled_basis_is_rejected() {
    let q = random::orthonormal::<f32>(20, 4, 1).expect("valid");
    assert!(Subspace::new(q.clone()).is_ok());
    let scaled = &q * madeit_linalg::faer::Scale(1.001f32);
    assert!(matches!(
        Subspace::new(scaled),
        Err(GrassmannError::NotOrthonormal { .. })
    ));
}

#[test]
fn bad_matrices_are_rejected() {
    assert!(matches!(
        Subspace::new(Mat::<f64>::zeros(4, 0)),
        Err(GrassmannError::Linalg(LinalgError::EmptyMatrix { .. }))
    ));
    let mut a = random::orthonormal::<f64>(5, 2, 3).expect("valid");
    a[(3, 1)] = f64::NAN;
    for (result, expected) in [
        (Subspace::new(a.clone()), "basis"),
        (Subspace::orthonormalized(a.as_ref()), "a"),
    ] {
        assert!(
            matches!(
                &result,
                Err(GrassmannError::Linalg(LinalgError::NonFinite {
                    argument,
                    row: 3,
                    col: 1,
                    ..
                })) if *argument == expected
            ),
            "argument `{expected}`: {result:?}"
        );
    }
    let wide = random::gaussian::<f64>(3, 5, 0);
    for (what, result) in [
        ("orthonormalized", Subspace::orthonormalized(wide.as_ref())),
        ("new", Subspace::new(wide)),
    ] {
        assert_eq!(
            result.err(),
            Some(GrassmannError::RankExceedsDimension { dim: 3, rank: 5 }),
            "{what}"
        );
    }
}

#[test]
fn dimension_mismatch_is_reported() {
    let a = sub(6, 2, 1);
    let b = sub(7, 2, 2);
    let mismatch = |what| GrassmannError::DimensionMismatch {
        what,
        left: 6,
        right: 7,
    };
    assert_eq!(a.affinity(&b).err(), Some(mismatch("affinity")));
    assert_eq!(a.overlap(&b).err(), Some(mismatch("overlap")));
    assert_eq!(
        a.principal_angles(&b).err(),
        Some(mismatch("principal_angles"))
    );
    assert_eq!(
        a.chordal_distance(&b).err(),
        Some(mismatch("chordal_distance"))
    );
    assert_eq!(
        a.projection_distance(&b).err(),
        Some(mismatch("projection_distance"))
    );
    assert_eq!(a.cross_gram(&b).err(), Some(mismatch("cross_gram")));
    let v = sub(4, 2, 3);
    let w = sub(5, 2, 4);
    for ((u1, v1, u2, v2), what, left, right) in [
        ((&a, &v, &b, &v), "expert_affinity: U", 6, 7),
        ((&a, &v, &a, &w), "expert_affinity: V", 4, 5),
    ] {
        assert_eq!(
            expert_affinity(u1, v1, u2, v2).err(),
            Some(GrassmannError::DimensionMismatch { what, left, right })
        );
    }
    let msg = a
        .affinity(&b)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("R^6") && msg.contains("R^7"), "{msg}");
}
