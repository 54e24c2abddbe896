//! MINGLE's low-rank experts: the task vector of a module, projected off the dominant
//! directions of the earlier experts, truncated to rank `r` (paper eqs. 3-4).
//!
//! For module weight `W` (`[d_out, d_in]`) and task `t`:
//!
//! 1. `tau = W_t - W_0`.
//! 2. If earlier experts exist: `D = sum_{i<t} B_i A_i`, thin SVD `D = U S V^T`,
//!    `p = s / sum(s)`, `k_eff = floor(exp(-sum_i p_i ln p_i))` (the exponential of the
//!    spectral entropy, an "effective rank"), and
//!    `tau <- U C V^T` with `C = U^T tau V`, `C[:k_eff, :k_eff] = 0`. With full singular
//!    bases this is `tau <- tau - U_k (U_k^T tau V_k) V_k^T` (`U_k`, `V_k` the first
//!    `k_eff` columns), which is how it is computed here. The diagonal of `C` beyond
//!    `k_eff` is *not* zeroed (the reference's `C.diag().fill_(0)` acts on a copy).
//! 3. Rank-`r` SVD `tau ~ U_r diag(s_r) V_r^T`; the expert is `B = U_r`,
//!    `A = diag(s_r) V_r^T`, stored as [`LowRankFactors`] `(U_r, s_r, V_r)`.
//!
//! The SVD of `D` is taken from the factors: with `B_all = [U_1 diag(s_1) | ...]`
//! (`d_out x R`) and `A_all = [V_1 | ...]` (`d_in x R`), QR both, `D = Q_b (R_b R_a^T) Q_a^T`
//! and only the `R x R` core is decomposed; when `R >= min(d_out, d_in)` the dense `D` is
//! decomposed instead. Both give the exact nonzero spectrum; zero singular values add
//! nothing to the entropy (`0 ln 0 = 0`). Everything is computed in `f64`.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use madeit_linalg::{Svd, TruncatedSvd, orthonormalize, thin_svd, truncated_svd};
use madeit_stream::FactorsError;
use madeit_vit::{LowRankFactors, ModuleId};
use serde::{Deserialize, Serialize};

use crate::AdaptError;

/// What building one expert did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExpertStats {
    /// Effective rank `k_eff` of the earlier experts' sum (0 without earlier experts or
    /// with the projection off).
    pub k_eff: usize,
    /// Rank of the expert.
    pub rank: usize,
    /// `||tau||_F` before the projection.
    pub tau_norm: f64,
    /// `||tau'||_F` after the projection (equal to `tau_norm` without one).
    pub projected_norm: f64,
    /// `||B A||_F / ||tau'||_F`: the fraction of the projected update's norm the rank-`r`
    /// expert keeps (1 when `tau'` is zero).
    pub kept_fraction: f64,
}

/// `floor(exp(H(p)))` with `p = s / sum(s)` and `H(p) = -sum p_i ln p_i` (terms with
/// `p_i = 0` contribute 0). Returns 0 when `sum(s)` is zero or not finite.
///
/// For `n` equal nonzero values this is `n`; for a single nonzero value, 1. `exp(H)` is
/// raised by a relative `1e-9` before the floor, so that rounding in the entropy sum cannot
/// turn `n` equal values into `n - 1`.
#[must_use]
pub fn effective_rank(s: &[f64]) -> usize {
    let total: f64 = s.iter().map(|x| x.abs()).sum();
    if !(total > 0.0 && total.is_finite()) {
        return 0;
    }
    let entropy: f64 = s
        .iter()
        .map(|x| x.abs() / total)
        .filter(|p| *p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    // exp(H) of n equal values is n up to the rounding of the sum (about n ulps): a relative
    // tolerance of 1e-9 keeps floor from dropping to n - 1.
    let k = (entropy.exp() * (1.0 + 1e-9)).floor();
    let nonzero = s.iter().filter(|x| **x != 0.0).count();
    (k as usize).min(nonzero)
}

fn mat_f64(f: &LowRankFactors, which: Which) -> Mat<f64> {
    let (rows, buf) = match which {
        Which::U => (f.d_out(), f.u()),
        Which::V => (f.d_in(), f.v()),
    };
    let r = f.rank();
    let s = f.s();
    Mat::from_fn(rows, r, |i, j| {
        let x = f64::from(buf[i * r + j]);
        match which {
            Which::U => x * f64::from(s[j]),
            Which::V => x,
        }
    })
}

#[derive(Clone, Copy)]
enum Which {
    U,
    V,
}

fn matmul_into(out: faer::MatMut<'_, f64>, a: MatRef<'_, f64>, b: MatRef<'_, f64>) {
    matmul(out, Accum::Replace, a, b, 1.0, Par::rayon(0));
}

fn product(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::zeros(a.nrows(), b.ncols());
    matmul_into(out.as_mut(), a, b);
    out
}

/// Thin SVD of `D = sum_e U_e diag(s_e) V_e^T` (the earlier experts of one `d_out x d_in`
/// module), in `f64`. Only the `min(R, d_out, d_in)` leading triplets are returned
/// (`R` = total rank); the rest of the spectrum is zero.
///
/// # Errors
/// [`AdaptError::Module`] when the experts do not have the module's shape, and
/// [`AdaptError::Linalg`] when a decomposition fails.
pub fn experts_svd(
    module: ModuleId,
    d_out: usize,
    d_in: usize,
    experts: &[LowRankFactors],
) -> Result<Svd<f64>, AdaptError> {
    if let Some(f) = experts
        .iter()
        .find(|f| f.d_out() != d_out || f.d_in() != d_in)
    {
        return Err(AdaptError::Module {
            module,
            reason: format!(
                "an earlier expert is {}x{}, the module weight is {d_out}x{d_in}",
                f.d_out(),
                f.d_in()
            ),
        });
    }
    let linalg = |source| AdaptError::Linalg {
        module,
        what: "earlier experts",
        source,
    };
    let total: usize = experts.iter().map(LowRankFactors::rank).sum();
    if total == 0 {
        return Ok(Svd {
            u: Mat::zeros(d_out, 0),
            s: Vec::new(),
            v: Mat::zeros(d_in, 0),
        });
    }
    let mut b_all = Mat::<f64>::zeros(d_out, total);
    let mut a_all = Mat::<f64>::zeros(d_in, total);
    let mut col = 0;
    for f in experts {
        let (us, v) = (mat_f64(f, Which::U), mat_f64(f, Which::V));
        b_all
            .as_mut()
            .subcols_mut(col, f.rank())
            .copy_from(us.as_ref());
        a_all
            .as_mut()
            .subcols_mut(col, f.rank())
            .copy_from(v.as_ref());
        col += f.rank();
    }
    if total < d_out.min(d_in) {
        // D = Qb (Qb^T B) (Qa^T A)^T Qa^T, with Qb^T B and Qa^T A computed by projection
        // (robust to rank-deficient factors, where R of a QR is not unique).
        let qb = orthonormalize(b_all.as_ref()).map_err(linalg)?;
        let qa = orthonormalize(a_all.as_ref()).map_err(linalg)?;
        let rb = product(qb.transpose(), b_all.as_ref());
        let ra = product(qa.transpose(), a_all.as_ref());
        let core = product(rb.as_ref(), ra.transpose());
        let svd = thin_svd(core.as_ref()).map_err(linalg)?;
        Ok(Svd {
            u: product(qb.as_ref(), svd.u.as_ref()),
            s: svd.s,
            v: product(qa.as_ref(), svd.v.as_ref()),
        })
    } else {
        let dense = product(b_all.as_ref(), a_all.transpose());
        thin_svd(dense.as_ref()).map_err(linalg)
    }
}

/// `tau - U_k (U_k^T tau V_k) V_k^T` with `U_k`, `V_k` the first `k` columns of `u`, `v`:
/// zeroes the leading `k x k` block of `tau` in the singular bases of the earlier experts.
#[must_use]
pub fn project_out_block(
    tau: MatRef<'_, f64>,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    k: usize,
) -> Mat<f64> {
    let k = k.min(u.ncols()).min(v.ncols());
    let mut out = tau.to_owned();
    if k == 0 {
        return out;
    }
    let uk = u.subcols(0, k);
    let vk = v.subcols(0, k);
    let c = product(product(uk.transpose(), tau).as_ref(), vk); // k x k
    let left = product(uk, c.as_ref()); // d_out x k
    matmul(
        out.as_mut(),
        Accum::Add,
        left.as_ref(),
        vk.transpose(),
        -1.0,
        Par::rayon(0),
    );
    out
}

/// Builds the expert of one module for a new task (see the module docs).
///
/// `pretrained` and `finetuned` are the module's `[d_out, d_in]` weights, `previous` the
/// module's earlier experts (in task order), `rank` the expert rank (already capped, at
/// most `min(d_out, d_in)`), `project` whether to project off the earlier experts.
///
/// # Errors
/// [`AdaptError::Module`] on mismatched shapes or a zero rank, [`AdaptError::Linalg`] when
/// a decomposition fails (non-finite weights included).
pub fn build_expert(
    module: ModuleId,
    pretrained: MatRef<'_, f32>,
    finetuned: MatRef<'_, f32>,
    previous: &[LowRankFactors],
    rank: usize,
    project: bool,
    svd: TruncatedSvd,
) -> Result<(LowRankFactors, ExpertStats), AdaptError> {
    let (d_out, d_in) = pretrained.shape();
    if finetuned.shape() != (d_out, d_in) {
        return Err(AdaptError::Module {
            module,
            reason: format!(
                "fine-tuned weight is {}x{}, pretrained is {d_out}x{d_in}",
                finetuned.nrows(),
                finetuned.ncols()
            ),
        });
    }
    if rank == 0 || rank > d_out.min(d_in) {
        return Err(AdaptError::Module {
            module,
            reason: format!("expert rank {rank} is not in 1..={}", d_out.min(d_in)),
        });
    }
    let tau = Mat::<f64>::from_fn(d_out, d_in, |i, j| {
        f64::from(finetuned[(i, j)]) - f64::from(pretrained[(i, j)])
    });
    let tau_norm = tau.norm_l2();
    let (tau, k_eff) = if project && !previous.is_empty() {
        let d = experts_svd(module, d_out, d_in, previous)?;
        let k = effective_rank(&d.s);
        (
            project_out_block(tau.as_ref(), d.u.as_ref(), d.v.as_ref(), k),
            k,
        )
    } else {
        (tau, 0)
    };
    let projected_norm = tau.norm_l2();
    let t = truncated_svd(tau.as_ref(), rank, svd).map_err(|source| AdaptError::Linalg {
        module,
        what: "task vector",
        source,
    })?;
    let kept = t.s.iter().map(|x| x * x).sum::<f64>().sqrt();
    let kept_fraction = if projected_norm > 0.0 {
        kept / projected_norm
    } else {
        1.0
    };
    let u = Mat::<f32>::from_fn(d_out, rank, |i, j| t.u[(i, j)] as f32);
    let v = Mat::<f32>::from_fn(d_in, rank, |i, j| t.v[(i, j)] as f32);
    let s: Vec<f32> = t.s.iter().map(|x| *x as f32).collect();
    let factors = LowRankFactors::from_mats(u.as_ref(), &s, v.as_ref()).map_err(|e| match e {
        FactorsError::NonFinite { what, index } => AdaptError::Module {
            module,
            reason: format!("non-finite {what} at index {index}"),
        },
        other => AdaptError::from(other),
    })?;
    Ok((
        factors,
        ExpertStats {
            k_eff,
            rank,
            tau_norm,
            projected_norm,
            kept_fraction,
        },
    ))
}
