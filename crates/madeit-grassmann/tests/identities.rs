//! The identities between affinity, principal angles, chordal and projection distance.

mod support;

use madeit_grassmann::{Subspace, expert_affinity};
use proptest::prelude::*;
use support::{
    any_rank_pair, config, equal_rank_pair, overlapping_pair, projector, rotated, rotation,
    subspace,
};

const TOL: f64 = 1e-10;

proptest! {
    #![proptest_config(config(48))]

    /// tr(P_a P_b) = ||A^T B||_F^2.
    #[test]
    fn trace_of_projector_product((a, b, _) in any_rank_pair(10)) {
        let pa = projector(&a);
        let pb = projector(&b);
        let tr: f64 = (&pa * &pb).diagonal().column_vector().iter().sum();
        prop_assert!((tr - a.overlap(&b).expect("same d")).abs() < TOL);
    }

    /// affinity = mean cos^2 of the principal angles (any ranks).
    #[test]
    fn affinity_is_mean_squared_cosine((a, b, _) in any_rank_pair(10)) {
        let angles = a.principal_angles(&b).expect("same d");
        prop_assert_eq!(angles.len(), a.rank().min(b.rank()));
        prop_assert!(angles.windows(2).all(|w| w[0] <= w[1] + TOL));
        prop_assert!(angles.iter().all(|&t| (-TOL..=std::f64::consts::FRAC_PI_2 + TOL).contains(&t)));
        let mean_cos2 = angles.iter().map(|t| t.cos().powi(2)).sum::<f64>() / angles.len() as f64;
        prop_assert!((a.affinity(&b).expect("same d") - mean_cos2).abs() < 1e-9);
        // and the chordal distance is the root sum of sin^2.
        let dc2: f64 = angles.iter().map(|t| t.sin().powi(2)).sum();
        prop_assert!((a.chordal_distance(&b).expect("same d").powi(2) - dc2).abs() < 1e-9);
    }

    /// Equal ranks: affinity = 1 - d_c^2 / r, d_c^2 = ||P_a - P_b||_F^2 / 2, and the
    /// projection distance is ||P_a - P_b||_F.
    #[test]
    fn equal_rank_distance_identities((a, b, _) in equal_rank_pair(10)) {
        let r = a.rank() as f64;
        let dc = a.chordal_distance(&b).expect("same d");
        prop_assert!((a.affinity(&b).expect("same d") - (1.0 - dc * dc / r)).abs() < TOL);
        let dp = (projector(&a) - projector(&b)).norm_l2();
        prop_assert!((dc * dc - dp * dp / 2.0).abs() < TOL);
        prop_assert!((a.projection_distance(&b).expect("same d") - dp).abs() < TOL);
    }

    /// Different ranks: the projection distance is still ||P_a - P_b||_F, and
    /// affinity = 1 - d_c^2 / min(r_a, r_b).
    #[test]
    fn any_rank_distance_identities((a, b, _) in any_rank_pair(10)) {
        let dp = (projector(&a) - projector(&b)).norm_l2();
        prop_assert!((a.projection_distance(&b).expect("same d") - dp).abs() < 1e-9);
        let k = a.rank().min(b.rank()) as f64;
        let dc = a.chordal_distance(&b).expect("same d");
        prop_assert!((a.affinity(&b).expect("same d") - (1.0 - dc * dc / k)).abs() < TOL);
    }

    /// Every quantity is invariant under orthogonal rotations of either basis.
    #[test]
    fn rotation_invariance((a, b, seed) in any_rank_pair(10)) {
        let ar = rotated(&a, &rotation(a.rank(), seed ^ 7));
        let br = rotated(&b, &rotation(b.rank(), seed ^ 11));
        for (x, y) in [(&ar, &b), (&a, &br), (&ar, &br)] {
            prop_assert!((x.affinity(y).expect("d") - a.affinity(&b).expect("d")).abs() < TOL);
            prop_assert!((x.chordal_distance(y).expect("d") - a.chordal_distance(&b).expect("d")).abs() < 1e-9);
            prop_assert!((x.projection_distance(y).expect("d") - a.projection_distance(&b).expect("d")).abs() < 1e-9);
            let t0 = a.principal_angles(&b).expect("d");
            let t1 = x.principal_angles(y).expect("d");
            for (p, q) in t0.iter().zip(&t1) {
                prop_assert!((p - q).abs() < 1e-7, "{p} vs {q}");
            }
        }
    }

    /// Symmetry and range.
    #[test]
    fn symmetric_and_in_range((a, b, _) in any_rank_pair(10)) {
        let s = a.affinity(&b).expect("d");
        prop_assert!((0.0..=1.0).contains(&s));
        prop_assert!((s - b.affinity(&a).expect("d")).abs() < TOL);
        prop_assert!((a.chordal_distance(&b).expect("d") - b.chordal_distance(&a).expect("d")).abs() < TOL);
        prop_assert!((a.projection_distance(&b).expect("d") - b.projection_distance(&a).expect("d")).abs() < TOL);
        let ta = a.principal_angles(&b).expect("d");
        let tb = b.principal_angles(&a).expect("d");
        for (p, q) in ta.iter().zip(&tb) {
            prop_assert!((p - q).abs() < 1e-7);
        }
    }

    /// A subspace has affinity 1 and distance 0 to itself and to any rotation of its basis.
    #[test]
    fn self_affinity_is_one(((d, r), seed) in (support::dim_rank(12), any::<u64>())) {
        let a = subspace(d, r, seed);
        let ar = rotated(&a, &rotation(r, seed ^ 3));
        for other in [&a, &ar] {
            prop_assert!((a.affinity(other).expect("d") - 1.0).abs() < TOL);
            prop_assert!(a.chordal_distance(other).expect("d") < 1e-7);
            prop_assert!(a.projection_distance(other).expect("d") < 1e-7);
            prop_assert!(a.principal_angles(other).expect("d").iter().all(|&t| t < 1e-7));
        }
    }

    /// Subspaces spanned by disjoint sets of columns of one orthonormal basis are
    /// orthogonal: affinity 0, all angles π/2, d_c^2 = min(r_a, r_b).
    #[test]
    fn orthogonal_subspaces_have_zero_affinity((d, seed) in (2..12usize, any::<u64>()), split in 0.0..1.0f64) {
        let q = madeit_linalg::random::orthonormal::<f64>(d, d, seed).expect("square");
        let ra = 1 + ((d - 2) as f64 * split) as usize;
        let a = Subspace::new(q.as_ref().subcols(0, ra).to_owned()).expect("orthonormal");
        let b = Subspace::new(q.as_ref().subcols(ra, d - ra).to_owned()).expect("orthonormal");
        prop_assert!(a.affinity(&b).expect("d") < TOL);
        let k = ra.min(d - ra) as f64;
        prop_assert!((a.chordal_distance(&b).expect("d").powi(2) - k).abs() < TOL);
        prop_assert!(a.principal_angles(&b).expect("d").iter().all(|&t| (t - std::f64::consts::FRAC_PI_2).abs() < 1e-7));
    }

    /// Shared directions give exactly zero angles, resolved accurately (through the sines).
    #[test]
    fn shared_directions_give_zero_angles((a, b, shared) in overlapping_pair(12)) {
        let angles = a.principal_angles(&b).expect("d");
        for t in &angles[..shared] {
            prop_assert!(t.abs() < 1e-7, "angle {t} should be 0");
        }
    }

    /// Expert affinity: (s(U) + s(V)) / 2, symmetric, in [0, 1], rotation invariant, 1 for
    /// an expert with itself.
    #[test]
    fn expert_affinity_properties(
        ((du, ru), (dv, rv), seed) in (support::dim_rank(10), support::dim_rank(10), any::<u64>())
    ) {
        let (ua, uc) = (subspace(du, ru, seed), subspace(du, ru, seed ^ 1));
        let (va, vc) = (subspace(dv, rv, seed ^ 2), subspace(dv, rv, seed ^ 3));
        let s = expert_affinity(&ua, &va, &uc, &vc).expect("dims");
        let want = (ua.affinity(&uc).expect("d") + va.affinity(&vc).expect("d")) / 2.0;
        prop_assert!((s - want).abs() < TOL);
        prop_assert!((0.0..=1.0).contains(&s));
        prop_assert!((s - expert_affinity(&uc, &vc, &ua, &va).expect("dims")).abs() < TOL);
        let rot = |x: &Subspace<f64>, k: u64| rotated(x, &rotation(x.rank(), seed ^ k));
        let sr = expert_affinity(&rot(&ua, 5), &rot(&va, 6), &uc, &rot(&vc, 7)).expect("dims");
        prop_assert!((s - sr).abs() < TOL);
        prop_assert!((expert_affinity(&ua, &va, &ua, &va).expect("dims") - 1.0).abs() < TOL);
    }
}

#[test]
fn nested_subspaces_have_affinity_one() {
    let q = madeit_linalg::random::orthonormal::<f64>(9, 5, 4).expect("valid");
    let big = Subspace::new(q.clone()).expect("orthonormal");
    let small = Subspace::new(q.as_ref().subcols(0, 2).to_owned()).expect("orthonormal");
    assert!((big.affinity(&small).expect("d") - 1.0).abs() < TOL);
    assert!(big.chordal_distance(&small).expect("d") < 1e-7);
    // P_big - P_small is the projector on the 3 remaining directions.
    assert!((big.projection_distance(&small).expect("d") - 3f64.sqrt()).abs() < TOL);
}

#[test]
fn known_angle_in_the_plane() {
    // Lines at angle 0.3 in R^2 (and embedded in R^4).
    let theta = 0.3f64;
    // The line at angle `t` from the first axis, in the plane of the first two.
    let line = |t: f64| {
        Subspace::new(madeit_linalg::faer::mat![
            [t.cos()],
            [t.sin()],
            [0.0],
            [0.0]
        ])
        .expect("unit")
    };
    let a = line(0.0);
    let b = line(theta);
    let angles = a.principal_angles(&b).expect("d");
    assert!((angles[0] - theta).abs() < 1e-14);
    assert!((a.affinity(&b).expect("d") - theta.cos().powi(2)).abs() < 1e-14);
    assert!((a.chordal_distance(&b).expect("d") - theta.sin()).abs() < 1e-14);
    // A tiny angle is resolved to full relative precision, through the sine.
    let tiny = 1e-9f64;
    let c = line(tiny);
    let t = a.principal_angles(&c).expect("d")[0];
    assert!((t - tiny).abs() < 1e-15, "{t}");
    assert!((a.chordal_distance(&c).expect("d") - tiny).abs() < 1e-15);
}

#[test]
fn f32_subspaces_agree_with_f64() {
    let a64 = subspace(64, 6, 1);
    let b64 = subspace(64, 6, 2);
    let to32 = |s: &Subspace<f64>| {
        let m = s.basis();
        Subspace::new(madeit_linalg::faer::Mat::<f32>::from_fn(
            m.nrows(),
            m.ncols(),
            |i, j| m[(i, j)] as f32,
        ))
        .expect("f32 rounding stays within the default tolerance")
    };
    let (a32, b32) = (to32(&a64), to32(&b64));
    assert!(
        (f64::from(a32.affinity(&b32).expect("d")) - a64.affinity(&b64).expect("d")).abs() < 1e-6
    );
    assert!(
        (f64::from(a32.chordal_distance(&b32).expect("d"))
            - a64.chordal_distance(&b64).expect("d"))
        .abs()
            < 1e-5
    );
}
