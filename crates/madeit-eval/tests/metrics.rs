//! ACC, BWT and mean ± std on hand-computed examples, plus identities.

use madeit_eval::EvalError;
use madeit_eval::metrics::{AccuracyMatrix, MeanStd, mean_std, summarize_orders};
use proptest::prelude::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()))
}

/// A 3-task run (rows: tasks, columns: steps), upper triangle not computed.
///
/// ```text
///          step0 step1 step2
/// task0    0.90  0.80  0.70
/// task1     -    0.95  0.85
/// task2     -     -    0.60
/// ```
fn three_tasks() -> Result<AccuracyMatrix, EvalError> {
    AccuracyMatrix::from_rows(vec![
        vec![Some(0.90), Some(0.80), Some(0.70)],
        vec![None, Some(0.95), Some(0.85)],
        vec![None, None, Some(0.60)],
    ])
}

/// An `n`-task matrix with the accuracies `entries` (task, step, accuracy) set in turn.
fn matrix_with(n: usize, entries: &[(usize, usize, f64)]) -> Result<AccuracyMatrix, EvalError> {
    let mut m = AccuracyMatrix::new(n)?;
    for &(task, step, accuracy) in entries {
        m.set(task, step, accuracy)?;
    }
    Ok(m)
}

#[test]
fn acc_and_bwt_by_hand() -> TestResult {
    let m = three_tasks()?;
    // ACC = (0.70 + 0.85 + 0.60) / 3 = 2.15 / 3
    assert!(close(m.acc()?, 2.15 / 3.0));
    // BWT = [(0.70 - 0.90) + (0.85 - 0.95)] / 2 = -0.15
    let bwt = m.bwt()?.ok_or("BWT undefined")?;
    assert!(close(bwt, -0.15), "{bwt}");
    assert_eq!(m.final_accuracies()?, [0.70, 0.85, 0.60]);
    // Seen-task curve: 0.90, (0.80 + 0.95) / 2, ACC.
    assert!(close(m.seen_tasks_accuracy(0)?, 0.90));
    assert!(close(m.seen_tasks_accuracy(1)?, 0.875));
    assert!(close(m.seen_tasks_accuracy(2)?, m.acc()?));
    let r = m.metrics()?;
    assert!(close(r.acc, 2.15 / 3.0));
    assert_eq!(r.bwt, m.bwt()?);
    Ok(())
}

#[test]
fn percentages_work_the_same() -> TestResult {
    // Two tasks in percent: ACC = (70 + 90) / 2 = 80, BWT = (70 - 75) / 1 = -5.
    let mut m = matrix_with(2, &[(0, 0, 75.0), (0, 1, 70.0), (1, 1, 90.0)])?;
    assert_eq!(m.acc()?, 80.0);
    assert_eq!(m.bwt()?, Some(-5.0));
    // Positive backward transfer.
    m.set(0, 1, 78.0)?;
    assert_eq!(m.bwt()?, Some(3.0));
    Ok(())
}

#[test]
fn single_task_has_acc_but_no_bwt() -> TestResult {
    let m = matrix_with(1, &[(0, 0, 0.5)])?;
    assert_eq!(m.acc()?, 0.5);
    assert_eq!(m.bwt()?, None);
    Ok(())
}

#[test]
fn missing_entries_are_reported() -> TestResult {
    let mut m = matrix_with(3, &[(0, 2, 0.7), (2, 2, 0.6)])?;
    let r = m.acc();
    assert!(
        matches!(r, Err(EvalError::MissingAccuracy { task: 1, step: 2 })),
        "{r:?}"
    );
    m.set(1, 2, 0.8)?;
    assert!(m.acc().is_ok());
    // BWT needs the diagonal.
    let r = m.bwt();
    assert!(
        matches!(r, Err(EvalError::MissingAccuracy { task: 0, step: 0 })),
        "{r:?}"
    );
    assert_eq!(m.get(1, 0)?, None);
    Ok(())
}

#[test]
fn bad_input_is_rejected() {
    assert!(matches!(AccuracyMatrix::new(0), Err(EvalError::NoTasks)));
    assert!(matches!(
        AccuracyMatrix::from_rows(vec![]),
        Err(EvalError::NoTasks)
    ));
    assert!(matches!(
        AccuracyMatrix::new(usize::MAX),
        Err(EvalError::TooManyTasks { .. })
    ));
    let r = AccuracyMatrix::from_rows(vec![vec![Some(1.0), None], vec![None]]);
    assert!(
        matches!(
            r,
            Err(EvalError::NotSquare {
                row: 1,
                len: 1,
                expected: 2
            })
        ),
        "{r:?}"
    );
    let r = AccuracyMatrix::from_rows(vec![vec![Some(f64::NAN)]]);
    assert!(
        matches!(
            r,
            Err(EvalError::NonFiniteAccuracy {
                task: 0,
                step: 0,
                ..
            })
        ),
        "{r:?}"
    );
    let r = AccuracyMatrix::new(2).and_then(|mut m| m.set(2, 0, 0.5));
    assert!(
        matches!(
            r,
            Err(EvalError::IndexOutOfRange {
                task: 2,
                step: 0,
                n_tasks: 2
            })
        ),
        "{r:?}"
    );
    let r = AccuracyMatrix::new(2).and_then(|m| m.get(0, 5));
    assert!(matches!(r, Err(EvalError::IndexOutOfRange { .. })), "{r:?}");
    let r = AccuracyMatrix::new(2).and_then(|m| m.seen_tasks_accuracy(2));
    assert!(matches!(r, Err(EvalError::IndexOutOfRange { .. })), "{r:?}");
}

#[test]
fn mean_std_by_hand() -> TestResult {
    // mean 5, deviations -3,-1,1,3 -> sum of squares 20 -> var 20/3.
    let (mean, std) = mean_std(&[2.0, 4.0, 6.0, 8.0])?;
    assert_eq!(mean, 5.0);
    let std = std.ok_or("std undefined")?;
    assert!(close(std, (20.0f64 / 3.0).sqrt()), "{std}");
    // Two values: std = |a - b| / sqrt(2).
    let (mean, std) = mean_std(&[1.0, 2.0])?;
    assert_eq!(mean, 1.5);
    assert!(close(std.ok_or("std undefined")?, 0.5f64.sqrt()));
    // Constant sample.
    assert_eq!(mean_std(&[3.0; 5])?, (3.0, Some(0.0)));
    // One value: std undefined.
    assert_eq!(mean_std(&[7.0])?, (7.0, None));
    assert!(matches!(mean_std(&[]), Err(EvalError::EmptySample)));
    assert!(matches!(
        mean_std(&[1.0, f64::INFINITY]),
        Err(EvalError::NonFiniteSample { index: 1, .. })
    ));
    Ok(())
}

#[test]
fn summary_over_orders_by_hand() -> TestResult {
    // Two 2-task runs: ACC 80 and 90, BWT -5 and -1.
    let a = AccuracyMatrix::from_rows(vec![vec![Some(75.0), Some(70.0)], vec![None, Some(90.0)]])?;
    let b = AccuracyMatrix::from_rows(vec![vec![Some(86.0), Some(85.0)], vec![None, Some(95.0)]])?;
    let s = summarize_orders(&[a.clone(), b])?;
    assert_eq!(s.acc.mean, 85.0);
    assert_eq!(s.acc.n, 2);
    assert!(close(s.acc.std.ok_or("std")?, 50.0f64.sqrt()));
    let bwt = s.bwt.ok_or("BWT undefined")?;
    assert_eq!(bwt.mean, -3.0);
    assert!(close(bwt.std.ok_or("std")?, 8.0f64.sqrt()));

    // Single-task runs have no BWT summary; mixed sizes are an error.
    let one = AccuracyMatrix::from_rows(vec![vec![Some(0.5)]])?;
    assert_eq!(summarize_orders(std::slice::from_ref(&one))?.bwt, None);
    let r = summarize_orders(&[a, one]);
    assert!(
        matches!(
            r,
            Err(EvalError::TaskCountMismatch {
                run: 1,
                expected: 2,
                got: 1
            })
        ),
        "{r:?}"
    );
    assert!(matches!(summarize_orders(&[]), Err(EvalError::EmptySample)));
    Ok(())
}

#[test]
fn serde_round_trip_and_validation() -> TestResult {
    let m = three_tasks()?;
    let json = serde_json::to_string(&m)?;
    assert_eq!(
        json,
        r#"{"rows":[[0.9,0.8,0.7],[null,0.95,0.85],[null,null,0.6]]}"#
    );
    let back: AccuracyMatrix = serde_json::from_str(&json)?;
    assert_eq!(back, m);
    // Non-square input is refused at deserialisation.
    let bad = serde_json::from_str::<AccuracyMatrix>(r#"{"rows":[[0.9,0.8],[null]]}"#);
    assert!(bad.is_err_and(|e| e.to_string().contains("row 1")));
    let bad = serde_json::from_str::<AccuracyMatrix>(r#"{"rows":[]}"#);
    assert!(bad.is_err());
    let s = MeanStd::of(&[1.0, 3.0])?;
    let back: MeanStd = serde_json::from_str(&serde_json::to_string(&s)?)?;
    assert_eq!(back, s);
    Ok(())
}

fn lower_triangular(n: usize, vals: &[f64]) -> Result<AccuracyMatrix, EvalError> {
    let mut m = AccuracyMatrix::new(n)?;
    let mut it = vals.iter().copied().cycle();
    for j in 0..n {
        for i in 0..=j {
            m.set(i, j, it.next().unwrap_or(0.0))?;
        }
    }
    Ok(m)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// With no forgetting (every row constant from the diagonal on) BWT is 0; adding `d` to
    /// every final accuracy shifts both ACC and BWT by `d`.
    #[test]
    fn shifts_and_no_forgetting(n in 2usize..8, vals in proptest::collection::vec(0.0f64..1.0, 40), d in -0.5f64..0.5) {
        let m = lower_triangular(n, &vals)?;
        let mut flat = AccuracyMatrix::new(n)?;
        let mut shifted = m.clone();
        for j in 0..n {
            for i in 0..=j {
                flat.set(i, j, m.require(i, i)?)?;
            }
        }
        for i in 0..n {
            shifted.set(i, n - 1, m.require(i, n - 1)? + d)?;
        }
        prop_assert!(flat.bwt()?.is_some_and(|b| b.abs() < 1e-15));
        prop_assert!(close(shifted.acc()?, m.acc()? + d));
        let (b0, b1) = (m.bwt()?.unwrap_or(f64::NAN), shifted.bwt()?.unwrap_or(f64::NAN));
        prop_assert!((b1 - (b0 + d)).abs() <= 1e-12);
        // ACC is the last point of the seen-tasks curve.
        prop_assert!(close(m.seen_tasks_accuracy(n - 1)?, m.acc()?));
    }

    /// mean ± std is shift-equivariant / invariant and scales with |c|.
    #[test]
    fn mean_std_affine(vals in proptest::collection::vec(-10.0f64..10.0, 2..12), c in -3.0f64..3.0, s in -5.0f64..5.0) {
        let (m, sd) = mean_std(&vals)?;
        let sd = sd.unwrap_or(f64::NAN);
        let t: Vec<f64> = vals.iter().map(|x| c * x + s).collect();
        let (mt, sdt) = mean_std(&t)?;
        let sdt = sdt.unwrap_or(f64::NAN);
        prop_assert!((mt - (c * m + s)).abs() <= 1e-9);
        prop_assert!((sdt - c.abs() * sd).abs() <= 1e-9);
        prop_assert!(sd >= 0.0);
    }
}
