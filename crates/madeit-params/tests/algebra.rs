//! Arithmetic on named tensors: checked binary operations and algebraic identities.

use madeit_params::{DType, ParamDict, ParamsError, TaskVector, Tensor};
use proptest::prelude::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Shapes of a toy model: a matrix, a vector, a scalar and a 3-D tensor.
const SHAPES: [(&str, &[usize]); 4] = [
    ("blocks.0.attn.weight", &[3, 4]),
    ("blocks.0.attn.bias", &[3]),
    ("logit_scale", &[]),
    ("patch.weight", &[2, 1, 3]),
];
const NUMEL: usize = 12 + 3 + 1 + 6;

fn dict_from(values: &[f32]) -> Result<ParamDict, ParamsError> {
    let mut d = ParamDict::new();
    let mut rest = values;
    for (name, shape) in SHAPES {
        let n: usize = shape.iter().product();
        let (head, tail) = rest.split_at(n.min(rest.len()));
        d.insert(name, Tensor::new(shape.to_vec(), head.to_vec())?);
        rest = tail;
    }
    Ok(d)
}

fn values() -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(-100.0f32..100.0, NUMEL)
}

fn max_abs_diff(a: &ParamDict, b: &ParamDict) -> Result<f32, ParamsError> {
    a.max_abs_diff(b)
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * (1.0 + a.abs().max(b.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn add_then_sub_is_identity(a in values(), b in values()) {
        let (a, b) = (dict_from(&a)?, dict_from(&b)?);
        let back = a.add(&b)?.sub(&b)?;
        // |(a+b)-b - a| <= 2 ulp of max(|a|,|b|,|a+b|) <= 2 * 2^-24 * 200 per element.
        prop_assert!(max_abs_diff(&back, &a)? <= 200.0 * 2.0 * f32::EPSILON);
    }

    #[test]
    fn task_vector_applied_with_unit_weight_recovers_finetuned(ft in values(), pre in values()) {
        let (ft, pre) = (dict_from(&ft)?, dict_from(&pre)?);
        let tau = TaskVector::new(&ft, &pre)?;
        let back = tau.apply(&pre, 1.0)?;
        prop_assert!(max_abs_diff(&back, &ft)? <= 200.0 * 2.0 * f32::EPSILON);
        prop_assert_eq!(back.keys().collect::<Vec<_>>(), ft.keys().collect::<Vec<_>>());
        // λ = 0 returns the pretrained weights exactly.
        prop_assert_eq!(tau.apply(&pre, 0.0)?, pre);
    }

    #[test]
    fn squared_norm_is_self_dot(a in values()) {
        let a = dict_from(&a)?;
        let n = a.l2_norm();
        prop_assert!(close(n * n, a.dot(&a)?, 1e-12));
        prop_assert!(close(n * n, a.sum_sq(), 1e-12));
        let tau = TaskVector::from_params(a.clone());
        prop_assert_eq!(tau.l2_norm(), n);
    }

    #[test]
    fn dot_is_symmetric_and_bilinear(a in values(), b in values(), c in values(), s in -4.0f32..4.0) {
        let (a, b, c) = (dict_from(&a)?, dict_from(&b)?, dict_from(&c)?);
        prop_assert_eq!(a.dot(&b)?, b.dot(&a)?);
        // <a + c, b> = <a, b> + <c, b> up to the f32 rounding of a + c.
        let lhs = a.add(&c)?.dot(&b)?;
        let rhs = a.dot(&b)? + c.dot(&b)?;
        let scale = (a.l2_norm() + c.l2_norm()) * b.l2_norm();
        prop_assert!((lhs - rhs).abs() <= 1e-6 * (1.0 + scale));
        // <s a, b> = s <a, b>, exact up to f32 rounding of s a.
        let lhs = a.scale(s).dot(&b)?;
        let rhs = f64::from(s) * a.dot(&b)?;
        prop_assert!((lhs - rhs).abs() <= 1e-6 * (1.0 + f64::from(s.abs()) * a.l2_norm() * b.l2_norm()));
    }

    #[test]
    fn scaling_is_linear(a in values(), b in values(), s in -4.0f32..4.0, t in -4.0f32..4.0) {
        let (a, b) = (dict_from(&a)?, dict_from(&b)?);
        // ||s a|| = |s| ||a||
        prop_assert!(close(a.scale(s).l2_norm(), f64::from(s.abs()) * a.l2_norm(), 1e-6));
        // s (a + b) = s a + s b
        let lhs = a.add(&b)?.scale(s);
        let rhs = a.scale(s).add(&b.scale(s))?;
        prop_assert!(max_abs_diff(&lhs, &rhs)? <= 4.0 * 200.0 * 4.0 * f32::EPSILON);
        // (s + t) a = s a + t a
        let lhs = a.scale(s + t);
        let rhs = a.scale(s).add(&a.scale(t))?;
        prop_assert!(max_abs_diff(&lhs, &rhs)? <= 4.0 * 8.0 * 100.0 * f32::EPSILON);
    }

    #[test]
    fn axpy_matches_add_of_scaled(a in values(), x in values(), alpha in -3.0f32..3.0) {
        let (a, x) = (dict_from(&a)?, dict_from(&x)?);
        let mut y = a.clone();
        y.axpy(alpha, &x)?;
        let want = a.add(&x.scale(alpha))?;
        // Both compute fl(a + fl(alpha x)) elementwise.
        prop_assert_eq!(y, want);
    }

    #[test]
    fn triangle_and_cauchy_schwarz(a in values(), b in values()) {
        let (a, b) = (dict_from(&a)?, dict_from(&b)?);
        prop_assert!(a.dot(&b)?.abs() <= a.l2_norm() * b.l2_norm() * (1.0 + 1e-12));
        prop_assert!(a.add(&b)?.l2_norm() <= (a.l2_norm() + b.l2_norm()) * (1.0 + 1e-6));
    }

    #[test]
    fn as_mat_round_trips_through_from_mat(rows in 0usize..5, cols in 0usize..5, seed in 0u32..1000) {
        let data: Vec<f32> = (0..rows * cols).map(|k| (k as f32 + seed as f32).sin()).collect();
        let t = Tensor::new(vec![rows, cols], data)?;
        let m = t.as_mat()?;
        prop_assert_eq!((m.nrows(), m.ncols()), (rows, cols));
        for o in 0..rows {
            for i in 0..cols {
                prop_assert_eq!(m[(o, i)], t.data()[o * cols + i]);
            }
        }
        prop_assert_eq!(Tensor::from_mat(m), t.clone());
        // Transposed (column-major) views copy back in row-major order too.
        let tt = Tensor::from_mat(m.transpose());
        prop_assert_eq!(tt.shape(), &[cols, rows]);
        for o in 0..rows {
            for i in 0..cols {
                prop_assert_eq!(tt.data()[i * rows + o], t.data()[o * cols + i]);
            }
        }
        let m64 = t.to_mat_f64()?;
        prop_assert_eq!(Tensor::from_mat_f64(m64.as_ref()), t);
    }
}

#[test]
fn task_vector_small_example() -> TestResult {
    let mut pre = ParamDict::new();
    pre.insert("w", Tensor::new(vec![2], vec![1.0, 2.0])?);
    pre.insert("b", Tensor::new(vec![], vec![0.5])?);
    let mut ft = ParamDict::new();
    ft.insert("b", Tensor::new(vec![], vec![1.5])?);
    ft.insert("w", Tensor::new(vec![2], vec![4.0, -2.0])?);
    let tau = TaskVector::new(&ft, &pre)?;
    // Result follows the fine-tuned dictionary's order.
    assert_eq!(tau.params().keys().collect::<Vec<_>>(), ["b", "w"]);
    assert_eq!(tau.params().get("w")?.data(), &[3.0, -4.0]);
    assert_eq!(tau.params().get("b")?.data(), &[1.0]);
    assert_eq!(tau.l2_norm(), (9.0f64 + 16.0 + 1.0).sqrt());
    let half = tau.apply(&pre, 0.5)?;
    assert_eq!(half.get("w")?.data(), &[2.5, 0.0]);
    assert_eq!(half.get("b")?.data(), &[1.0]);
    assert_eq!(tau.dot(&tau.scale(2.0))?, 52.0);
    assert_eq!(tau.add(&tau)?, tau.scale(2.0));
    Ok(())
}

fn pair() -> Result<(ParamDict, ParamDict), ParamsError> {
    let mut a = ParamDict::new();
    a.insert("x", Tensor::new(vec![2, 2], vec![1.0; 4])?);
    a.insert("y", Tensor::new(vec![3], vec![1.0; 3])?);
    Ok((a.clone(), a))
}

#[test]
fn missing_and_unexpected_keys_are_named() -> TestResult {
    let (a, mut b) = pair()?;
    b.remove("y");
    let r = a.add(&b);
    assert!(
        matches!(&r, Err(ParamsError::MissingKey { name }) if name == "y"),
        "{r:?}"
    );
    let r = b.sub(&a);
    assert!(
        matches!(&r, Err(ParamsError::UnexpectedKey { name }) if name == "y"),
        "{r:?}"
    );
    let r = a.get("nope");
    assert!(
        matches!(&r, Err(ParamsError::MissingKey { name }) if name == "nope"),
        "{r:?}"
    );
    assert!(r.is_err_and(|e| e.to_string().contains("nope")));
    Ok(())
}

#[test]
fn shape_mismatch_is_named() -> TestResult {
    let (a, mut b) = pair()?;
    b.insert("x", Tensor::new(vec![4], vec![1.0; 4])?);
    let r = a.dot(&b);
    assert!(
        matches!(&r, Err(ParamsError::ShapeMismatch { name, expected, got })
            if name == "x" && expected == &[2, 2] && got == &[4]),
        "{r:?}"
    );
    assert!(r.is_err_and(|e| e.to_string().contains("`x`")));
    // axpy leaves the target untouched on error.
    let mut c = a.clone();
    assert!(c.axpy(1.0, &b).is_err());
    assert_eq!(c, a);
    Ok(())
}

#[test]
fn dtype_mismatch_is_named() -> TestResult {
    let (a, mut b) = pair()?;
    let y = b.get("y")?.clone().with_dtype(DType::F16);
    b.insert("y", y);
    let r = TaskVector::new(&a, &b);
    assert!(
        matches!(&r, Err(ParamsError::DTypeMismatch { name, expected: DType::F32, got: DType::F16 })
            if name == "y"),
        "{r:?}"
    );
    Ok(())
}

#[test]
fn key_order_does_not_matter_for_compatibility() -> TestResult {
    let (a, _) = pair()?;
    let mut b = ParamDict::new();
    b.insert("y", Tensor::new(vec![3], vec![2.0; 3])?);
    b.insert("x", Tensor::new(vec![2, 2], vec![3.0; 4])?);
    let s = a.add(&b)?;
    assert_eq!(s.keys().collect::<Vec<_>>(), ["x", "y"]);
    assert_eq!(s.get("x")?.data(), &[4.0; 4]);
    assert_eq!(a.dot(&b)?, 4.0 * 3.0 + 3.0 * 2.0);
    Ok(())
}

#[test]
fn tensor_construction_errors() {
    let r = Tensor::new(vec![2, 3], vec![0.0; 5]);
    assert!(
        matches!(
            &r,
            Err(ParamsError::LengthMismatch {
                expected: 6,
                got: 5,
                ..
            })
        ),
        "{r:?}"
    );
    let r = Tensor::zeros(vec![usize::MAX, 3]);
    assert!(
        matches!(&r, Err(ParamsError::ShapeOverflow { .. })),
        "{r:?}"
    );
    let r = Tensor::new(vec![6], vec![0.0; 6]).and_then(|t| t.reshape(vec![4]));
    assert!(
        matches!(&r, Err(ParamsError::LengthMismatch { .. })),
        "{r:?}"
    );
}

#[test]
fn not_a_matrix_is_named_through_the_dict() -> TestResult {
    let (a, _) = pair()?;
    assert_eq!(a.mat("x")?.nrows(), 2);
    let r = a.mat("y");
    assert!(
        matches!(&r, Err(ParamsError::NotAMatrix { name, shape }) if name == "y" && shape == &[3]),
        "{r:?}"
    );
    let t = Tensor::zeros(vec![2, 3, 4])?;
    assert!(!t.is_matrix());
    assert!(t.as_mat().is_err());
    Ok(())
}

#[test]
fn as_mat_mut_writes_through() -> TestResult {
    let mut t = Tensor::zeros(vec![2, 3])?;
    {
        let mut m = t.as_mat_mut()?;
        m[(1, 2)] = 5.0;
        m[(0, 1)] = -1.0;
    }
    assert_eq!(t.data(), &[0.0, -1.0, 0.0, 0.0, 0.0, 5.0]);
    Ok(())
}

#[test]
fn check_finite_names_tensor_and_index() -> TestResult {
    let (mut a, _) = pair()?;
    a.check_finite()?;
    a.get_mut("y")?.data_mut()[1] = f32::NAN;
    let r = a.check_finite();
    assert!(
        matches!(&r, Err(ParamsError::NonFinite { name, index: 1, value }) if name == "y" && value.is_nan()),
        "{r:?}"
    );
    assert!(r.is_err_and(|e| e.to_string().contains("`y`")));
    Ok(())
}

#[test]
fn map_and_zip_map_keep_order_and_name_errors() -> TestResult {
    let (a, b) = pair()?;
    let doubled = a.map(|_, t| t.scale(2.0));
    assert_eq!(doubled.keys().collect::<Vec<_>>(), ["x", "y"]);
    assert_eq!(doubled.get("y")?.data(), &[2.0; 3]);
    let r = a.zip_map(&b, |name, x, y| {
        if name == "y" {
            Tensor::new(vec![7], vec![0.0; 6])
        } else {
            x.add(y)
        }
    });
    assert!(
        matches!(&r, Err(ParamsError::LengthMismatch { name, .. }) if name == "y"),
        "{r:?}"
    );
    let r = a.try_map(|_, t| t.clone().reshape(vec![4]));
    assert!(
        matches!(&r, Err(ParamsError::LengthMismatch { name, .. }) if name == "y"),
        "{r:?}"
    );
    assert_eq!(a.numel(), 7);
    assert_eq!(a.zeros_like().l2_norm(), 0.0);
    Ok(())
}

proptest! {
    /// The blocked, vectorised finiteness check agrees with the element-by-element one,
    /// wherever the non-finite values sit (block boundaries included).
    #[test]
    fn all_finite_agrees_with_the_elementwise_check(
        len in 0usize..5000,
        bad in proptest::collection::vec((0usize..5000, 0u8..3), 0..3),
    ) {
        let mut xs: Vec<f32> = (0..len).map(|i| (i as f32).sin()).collect();
        for (at, kind) in bad {
            if let Some(x) = xs.get_mut(at) {
                *x = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][usize::from(kind)];
            }
        }
        prop_assert_eq!(madeit_params::all_finite(&xs), xs.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn slice_max_abs_diff_matches_the_tensor_form_and_refuses_other_lengths() -> TestResult {
    let (a, b) = ([1.0f32, -2.0, 3.5], [1.5f32, -2.0, 1.0]);
    assert_eq!(madeit_params::max_abs_diff(&a, &b), Some(2.5));
    let ta = Tensor::new(vec![3], a.to_vec())?;
    let tb = Tensor::new(vec![3], b.to_vec())?;
    assert_eq!(ta.max_abs_diff(&tb)?, 2.5);
    assert_eq!(madeit_params::max_abs_diff(&[], &[]), Some(0.0));
    assert_eq!(madeit_params::max_abs_diff(&a, &b[..2]), None);
    Ok(())
}
