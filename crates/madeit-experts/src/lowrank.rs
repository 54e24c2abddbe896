//! Low-rank numerics on thin factors: candidate extraction, affinities, consolidation.
//!
//! Nothing here forms a dense `d_out x d_in` matrix except the candidate's `dW` itself.

use crate::config::{AffinityMetric, CandidateSvd, MergeRule};
use crate::error::{ExpertsError, Result};
use crate::expert::{Expert, to_f32, to_f64};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use madeit_grassmann::expert_affinity;
use madeit_linalg::{Svd, SvdWorkspace, TruncatedSvd};
use std::collections::BTreeSet;

/// A sequential workspace: MADE-IT parallelises over modules, and each decomposition runs
/// on one thread, so that its result does not depend on the number of threads.
fn seq<T: madeit_linalg::Real>() -> SvdWorkspace<T> {
    SvdWorkspace::with_parallelism(Par::Seq)
}

fn linalg(context: impl Into<String>) -> impl FnOnce(madeit_linalg::LinalgError) -> ExpertsError {
    let context = context.into();
    move |source| ExpertsError::Linalg { context, source }
}

/// Top-`rank` SVD of a candidate `dW` (`d_out x d_in`, `f32`), as an expert serving `task`.
pub fn candidate(
    module: &str,
    dw: MatRef<'_, f32>,
    rank: usize,
    method: CandidateSvd,
    seed: u64,
    task: u32,
) -> Result<Expert> {
    let method = match method.for_shape(dw.nrows(), dw.ncols()) {
        CandidateSvd::Exact | CandidateSvd::Auto { .. } => TruncatedSvd::Exact,
        CandidateSvd::Randomized {
            oversample,
            power_iters,
            ..
        } => TruncatedSvd::Randomized {
            oversample,
            power_iters,
            seed,
        },
    };
    let Svd { u, s, v } = seq()
        .truncated_svd(dw, rank, method)
        .map_err(linalg(format!("the candidate SVD of `{module}`")))?;
    Expert::new(module, u, s, v, BTreeSet::from([task]))
}

/// `A B`, computed sequentially.
fn product(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

/// `A^T B` in `f64`.
fn gram(a: MatRef<'_, f32>, b: MatRef<'_, f32>) -> Mat<f64> {
    let mut g = Mat::<f32>::zeros(a.ncols(), b.ncols());
    matmul(
        g.as_mut(),
        Accum::Replace,
        a.transpose(),
        b,
        1.0f32,
        Par::Seq,
    );
    Mat::from_fn(g.nrows(), g.ncols(), |i, j| f64::from(g[(i, j)]))
}

/// Affinity of expert `a` and candidate `c` under `metric`.
pub fn affinity(module: &str, metric: AffinityMetric, a: &Expert, c: &Expert) -> Result<f64> {
    match metric {
        AffinityMetric::Subspace => expert_affinity(
            a.u_subspace(),
            a.v_subspace(),
            c.u_subspace(),
            c.v_subspace(),
        )
        .map(f64::from)
        .map_err(|source| ExpertsError::Grassmann {
            context: format!("the affinity of `{module}`"),
            source,
        }),
        AffinityMetric::FlatCosine => flat_cosine(a, c),
    }
}

/// `<dW_a, dW_c>_F / (||dW_a||_F ||dW_c||_F)` from thin factors:
/// `<dW_a, dW_c>_F = sum_ij s_a,i (U_a^T U_c)_ij s_c,j (V_a^T V_c)_ij`. Zero if either
/// delta is zero; clamped to `[-1, 1]` against rounding.
///
/// # Errors
/// [`ExpertsError::InvalidExpert`] if the experts have different shapes.
pub fn flat_cosine(a: &Expert, c: &Expert) -> Result<f64> {
    check_same_shape("flat_cosine", a, c)?;
    let gu = gram(a.u(), c.u());
    let gv = gram(a.v(), c.v());
    let mut dot = 0.0f64;
    for (j, &sc) in c.s().iter().enumerate() {
        for (i, &sa) in a.s().iter().enumerate() {
            dot += f64::from(sa) * gu[(i, j)] * f64::from(sc) * gv[(i, j)];
        }
    }
    let na = a.frobenius_norm();
    let nc = c.frobenius_norm();
    Ok(if na == 0.0 || nc == 0.0 {
        0.0
    } else {
        (dot / (na * nc)).clamp(-1.0, 1.0)
    })
}

/// Both experts must have the same `d_out`, `d_in` and rank.
fn check_same_shape(module: &str, a: &Expert, c: &Expert) -> Result<()> {
    if (a.d_out(), a.d_in(), a.rank()) == (c.d_out(), c.d_in(), c.rank()) {
        Ok(())
    } else {
        Err(ExpertsError::InvalidExpert {
            module: module.to_owned(),
            reason: format!(
                "experts of shape {}x{} rank {} and {}x{} rank {} cannot be combined",
                a.d_out(),
                a.d_in(),
                a.rank(),
                c.d_out(),
                c.d_in(),
                c.rank()
            ),
        })
    }
}

/// Horizontal concatenation `[A B]` widened to `f64`.
fn hcat(a: MatRef<'_, f32>, b: MatRef<'_, f32>) -> Mat<f64> {
    let (ka, kb) = (a.ncols(), b.ncols());
    let a = to_f64(a);
    let b = to_f64(b);
    Mat::from_fn(a.nrows(), ka + kb, |i, j| {
        if j < ka { a[(i, j)] } else { b[(i, j - ka)] }
    })
}

/// Polar factor of `a` restricted to its numerical column space: from the thin SVD
/// `a = P diag(sigma) Q^T`, keep the `k` directions with `sigma_i > tol * sigma_1` and
/// return `P_k Q_k^T` (`m x n`). Equal to the polar factor `P Q^T` when every
/// `sigma_i > tol * sigma_1`.
pub fn truncated_polar(a: MatRef<'_, f64>, tol: f64, context: &str) -> Result<Mat<f64>> {
    let Svd { u: p, s, v: q } = seq().thin_svd(a).map_err(linalg(context.to_owned()))?;
    let s1 = s.first().copied().unwrap_or(0.0);
    let k = s.iter().take_while(|&&x| x > tol * s1).count().max(1);
    Ok(product(
        p.as_ref().subcols(0, k),
        q.as_ref().subcols(0, k).transpose(),
    ))
}

/// Top-`r` SVD of `A diag(d) B^T` (`A`: `m x k`, `B`: `n x k`) from thin factors:
/// `A = Q_a R_a`, `B = Q_b R_b` (thin QR), `C = R_a diag(d) R_b^T` (at most `k x k`),
/// `C = P diag(sigma) W^T`; result `(Q_a P_r, sigma_r, Q_b W_r)`.
pub fn top_r_of_factors(
    a: MatRef<'_, f64>,
    d: &[f64],
    b: MatRef<'_, f64>,
    r: usize,
    context: &str,
) -> Result<(Mat<f64>, Vec<f64>, Mat<f64>)> {
    let k = d.len();
    if a.ncols() != k || b.ncols() != k || a.nrows() == 0 || b.nrows() == 0 || r == 0 {
        return Err(ExpertsError::InvalidExpert {
            module: context.to_owned(),
            reason: format!(
                "factors {}x{}, {} values, {}x{} and rank {r} do not fit together",
                a.nrows(),
                a.ncols(),
                k,
                b.nrows(),
                b.ncols()
            ),
        });
    }
    let mut ws = seq::<f64>();
    let (qa, ra) = ws.thin_qr(a).map_err(linalg(context.to_owned()))?;
    let (qb, rb) = ws.thin_qr(b).map_err(linalg(context.to_owned()))?;
    // R_a diag(d)
    let mut rad = ra.clone();
    for (j, &dj) in d.iter().enumerate().take(rad.ncols()) {
        for x in rad.col_mut(j).iter_mut() {
            *x *= dj;
        }
    }
    let core = product(rad.as_ref(), rb.transpose());
    let svd = ws
        .thin_svd(core.as_ref())
        .map_err(linalg(context.to_owned()))?;
    if svd.s.len() < r {
        return Err(ExpertsError::InvalidExpert {
            module: context.to_owned(),
            reason: format!("the merged factors have rank at most {} < {r}", svd.s.len()),
        });
    }
    let svd = svd.truncated(r);
    let u = product(qa.as_ref(), svd.u.as_ref());
    let v = product(qb.as_ref(), svd.v.as_ref());
    Ok((u, svd.s, v))
}

/// Consolidates candidate `c` into expert `e` under `rule`; the result has rank `r` and
/// serves `tasks(e) ∪ tasks(c)`. Computed in `f64`, stored in `f32`.
pub fn consolidate(
    module: &str,
    rule: MergeRule,
    polar_rank_tol: f64,
    e: &Expert,
    c: &Expert,
    r: usize,
) -> Result<Expert> {
    check_same_shape(module, e, c)?;
    let context = format!("consolidating into an expert of `{module}`");
    let u = hcat(e.u(), c.u());
    let v = hcat(e.v(), c.v());
    let d: Vec<f64> = e
        .s()
        .iter()
        .chain(c.s().iter())
        .map(|&x| f64::from(x))
        .collect();
    let (u, s, v) = match rule {
        MergeRule::SubspaceMerge => {
            let up = truncated_polar(u.as_ref(), polar_rank_tol, &context)?;
            let vp = truncated_polar(v.as_ref(), polar_rank_tol, &context)?;
            top_r_of_factors(up.as_ref(), &d, vp.as_ref(), r, &context)?
        }
        MergeRule::SumTruncate => top_r_of_factors(u.as_ref(), &d, v.as_ref(), r, &context)?,
    };
    let mut tasks = e.tasks().clone();
    tasks.extend(c.tasks().iter().copied());
    #[allow(clippy::cast_possible_truncation)]
    let s: Vec<f32> = s.iter().map(|&x| x as f32).collect();
    Expert::new(module, to_f32(u.as_ref()), s, to_f32(v.as_ref()), tasks)
}

/// Feature projection alignment `||X V||_F / ||X||_F` of a `tokens x d_in` input `X` and
/// an orthonormal input basis `V` (`d_in x r`); 0 when `X = 0`.
///
/// # Errors
/// [`ExpertsError::Features`] if `x` does not have `d_in` columns.
pub fn fpa(x: MatRef<'_, f32>, v: MatRef<'_, f32>) -> Result<f64> {
    if x.ncols() != v.nrows() {
        return Err(ExpertsError::Features {
            reason: format!(
                "a {}x{} input cannot be projected on a {}x{} basis",
                x.nrows(),
                x.ncols(),
                v.nrows(),
                v.ncols()
            ),
        });
    }
    let xn = frob(x);
    if xn == 0.0 {
        return Ok(0.0);
    }
    let mut xv = Mat::<f32>::zeros(x.nrows(), v.ncols());
    matmul(xv.as_mut(), Accum::Replace, x, v, 1.0f32, Par::Seq);
    Ok(frob(xv.as_ref()) / xn)
}

/// Frobenius norm accumulated in `f64`.
pub fn frob(x: MatRef<'_, f32>) -> f64 {
    x.col_iter()
        .flat_map(|c| c.iter().copied())
        .map(|v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}
