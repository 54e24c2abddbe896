//! Thin, truncated and randomized SVD, polar factor and QR orthonormalisation.

use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::householder::{
    apply_block_householder_sequence_on_the_left_in_place_scratch,
    apply_block_householder_sequence_on_the_left_in_place_with_conj,
};
use faer::linalg::matmul::matmul;
use faer::linalg::qr::no_pivoting::factor::{
    qr_in_place, qr_in_place_scratch, recommended_block_size,
};
use faer::linalg::svd::{ComputeSvdVectors, SvdError, svd, svd_scratch};
use faer::{Accum, ColMut, Conj, Mat, MatMut, MatRef, Par};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::validate::{check_matrix, check_rank};
use crate::{LinalgError, Real};

/// A (thin or truncated) singular value decomposition `A ≈ U diag(s) V^T`.
///
/// For an `m x n` matrix and `k` kept triplets: `u` is `m x k` with orthonormal columns,
/// `s` holds `k` non-negative values in non-increasing order, `v` is `n x k` with
/// orthonormal columns (it is `V`, not `V^T`). The thin SVD has `k = min(m, n)` and
/// reproduces `A` exactly (up to rounding); a truncated one keeps the top `k = r`.
#[derive(Debug, Clone, PartialEq)]
pub struct Svd<T> {
    /// Left singular vectors, `m x k`, orthonormal columns.
    pub u: Mat<T>,
    /// Singular values, length `k`, non-negative and non-increasing.
    pub s: Vec<T>,
    /// Right singular vectors, `n x k`, orthonormal columns.
    pub v: Mat<T>,
}

impl<T: Real> Svd<T> {
    /// Number of kept triplets `k`.
    #[must_use]
    pub fn rank(&self) -> usize {
        self.s.len()
    }

    /// `U diag(s) V^T`, the `m x n` matrix this decomposition represents.
    #[must_use]
    pub fn reconstruct(&self) -> Mat<T> {
        let mut us = self.u.clone();
        scale_columns(us.as_mut(), &self.s);
        let mut out = Mat::zeros(self.u.nrows(), self.v.nrows());
        matmul(
            out.as_mut(),
            Accum::Replace,
            us.as_ref(),
            self.v.transpose(),
            T::from_f64(1.0),
            faer::get_global_parallelism(),
        );
        out
    }

    /// Fixes the sign of every singular pair: the entry of largest magnitude of each
    /// column of `U` (the first one on ties) is made non-negative, and the same column of
    /// `V` is negated with it, so `U diag(s) V^T` is unchanged. Every SVD of this crate
    /// returns its factors in this form, so that results do not depend on the sign choices
    /// of the algorithm (which vary, for example, with the number of threads).
    pub fn canonicalize_signs(&mut self) {
        let zero = T::from_f64(0.0);
        let k = self.s.len().min(self.u.ncols()).min(self.v.ncols());
        for j in 0..k {
            let mut best = zero;
            let mut sign_negative = false;
            for x in self.u.col(j).iter() {
                let a = if *x < zero { -*x } else { *x };
                if a > best {
                    best = a;
                    sign_negative = *x < zero;
                }
            }
            if sign_negative {
                for x in self.u.col_mut(j).iter_mut() {
                    *x = -*x;
                }
                for x in self.v.col_mut(j).iter_mut() {
                    *x = -*x;
                }
            }
        }
    }

    /// Keeps the top `rank` triplets (a no-op when `rank >= self.rank()`).
    #[must_use]
    pub fn truncated(mut self, rank: usize) -> Self {
        if rank < self.s.len() {
            // Copies, rather than `Mat::truncate`, which keeps the whole allocation: a
            // top-77 triplet set of a 3072 x 768 SVD would otherwise hold all 768 columns
            // for as long as the factors live (MADE-IT keeps them as experts).
            self.u = self.u.subcols(0, rank).to_owned();
            self.v = self.v.subcols(0, rank).to_owned();
            self.s.truncate(rank);
            self.s.shrink_to_fit();
        }
        self
    }
}

/// How [`truncated_svd`] computes the top-`r` singular triplets.
///
/// # Accuracy of the randomized path
/// The randomized path (Halko, Martinsson and Tropp 2011, "Finding structure with
/// randomness", algorithms 4.4 and 5.1) draws a seeded Gaussian `n x k` test matrix `Ω`,
/// `k = r + oversample`, forms `Q = orth(A Ω)`, refines it with `power_iters` rounds of
/// `Q <- orth(A orth(A^T Q))` (QR re-orthonormalisation between every product), and returns
/// the top `r` triplets of `Q (Q^T A)`, taken from the SVD of the small `k x n` matrix
/// `Q^T A`. Its guarantees:
/// - singular values are never overestimated: `s_i(Q^T A) <= s_i(A)` (interlacing);
/// - the approximation error is near-optimal whatever the spectrum. With `q` power
///   iterations, in expectation over `Ω` (their theorem 10.6 and corollary 10.10),
///   `||A - Q Q^T A||_2 <= [ (1 + sqrt(r/(p-1))) s_{r+1}^{2q+1}
///   + e sqrt(r+p)/p (sum_{j>r} s_j^{2(2q+1)})^{1/2} ]^{1/(2q+1)}`;
/// - individual singular values and vectors are accurate only where the spectrum decays
///   past `r`: the error in `s_i` shrinks roughly like `(s_{k+1}/s_i)^{2(2q+1)}`.
///
/// Accuracy with the defaults (`oversample = 10`, `power_iters = 2`): the bounds below
/// are enforced by `tests/randomized.rs` (random seeds, 100-180 rows or columns, `r` up
/// to 16); in brackets the worst of 8 seeds measured by
/// `cargo run --release -p madeit-linalg --example randomized_accuracy` at 300x200,
/// 200x300 (`r = 20`) and 768x768 (`r = 77`). `Δs = max_i |s_i - s_i^exact| / s_1`;
/// "gap" is `1 - ‖U^T U_exact‖_F^2 / r` (same for `V`; 0 when the subspaces agree);
/// "excess" is `‖A - A_r‖_F / ‖A - A_r^exact‖_F - 1` (0 when optimal).
///
/// | spectrum | `Δs` | gap | excess |
/// |---|---|---|---|
/// | decaying `exp(-i/τ)`, `s_r/s_1 = 1e-3` | `1e-6` f64, `1e-5` f32 \[2e-7, 3e-6\] | `1e-4` \[6e-6\] | `1e-3` \[4e-5\] |
/// | rank `r` (values 10..5) + noise of norm about 1 | `1e-6` f64, `1e-5` f32 \[1e-7, 4e-6\] | `1e-5` \[3e-8\] | `1e-5` \[3e-7\] |
/// | slowly decaying `exp(-i/2r)` | `0.10` \[0.042\] | not bounded \[0.10\] | `0.05` \[0.022\] |
/// | flat, linear from 1 to 0.5 | `0.15` \[0.093\] | not bounded \[0.61\] | `0.03` \[0.012\] |
///
/// So on decaying or low-rank-plus-noise spectra the randomized path reproduces the exact
/// top-`r` SVD; on flat or slowly
/// decaying spectra it still gives a near-optimal rank-`r` approximation, but its singular
/// values are low by up to 10-15% of `s_1` and its singular vectors differ from the exact
/// ones (which are ill-determined there anyway). Without power iterations (`q = 0`) the
/// measured excess was 2-3% on the flat spectrum but 18-116% on the other three.
///
/// Use [`TruncatedSvd::Exact`] when singular vectors must match the exact SVD on a slowly
/// decaying spectrum; use the randomized path when `r + oversample ≪ min(m, n)` and a
/// near-optimal rank-`r` approximation is what matters. When
/// `r + oversample >= min(m, n)` the sketch would not be smaller than the matrix and the
/// exact path is used instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TruncatedSvd {
    /// Full thin SVD, then keep the top `r` triplets. Deterministic and exact.
    #[default]
    Exact,
    /// Randomized range finder with power iterations (see the type's documentation).
    Randomized {
        /// Extra sample columns `p`; the sketch has `k = r + p` columns (10 is customary).
        oversample: usize,
        /// Number of power (subspace) iterations `q` (2 is customary; 0 for a single pass).
        power_iters: usize,
        /// Seed of the Gaussian test matrix (ChaCha8); equal seeds give equal results.
        seed: u64,
    },
}

impl TruncatedSvd {
    /// Default oversampling `p` of the randomized path.
    pub const DEFAULT_OVERSAMPLE: usize = 10;
    /// Default number of power iterations `q` of the randomized path.
    pub const DEFAULT_POWER_ITERS: usize = 2;

    /// The randomized path with the default oversampling and power iterations.
    #[must_use]
    pub const fn randomized(seed: u64) -> Self {
        Self::Randomized {
            oversample: Self::DEFAULT_OVERSAMPLE,
            power_iters: Self::DEFAULT_POWER_ITERS,
            seed,
        }
    }
}

/// Thin SVD `A = U diag(s) V^T` with `k = min(m, n)` triplets, signs canonical (see
/// [`Svd::canonicalize_signs`]).
///
/// # Errors
/// [`LinalgError::EmptyMatrix`], [`LinalgError::NonFinite`] (argument `"a"`), or
/// [`LinalgError::NoConvergence`].
pub fn thin_svd<T: Real>(a: MatRef<'_, T>) -> Result<Svd<T>, LinalgError> {
    SvdWorkspace::new().thin_svd(a)
}

/// Top-`rank` SVD `A ≈ U_r diag(s_r) V_r^T`.
///
/// With [`TruncatedSvd::Exact`] this is the best rank-`r` approximation (Eckart–Young):
/// `||A - U_r diag(s_r) V_r^T||_F = sqrt(sum_{i>r} s_i^2)`. See [`TruncatedSvd`] for the
/// accuracy of the randomized path.
///
/// # Errors
/// [`LinalgError::EmptyMatrix`], [`LinalgError::NonFinite`] (argument `"a"`),
/// [`LinalgError::ZeroRank`], [`LinalgError::RankTooLarge`] (`rank > min(m, n)`), or
/// [`LinalgError::NoConvergence`].
pub fn truncated_svd<T: Real>(
    a: MatRef<'_, T>,
    rank: usize,
    method: TruncatedSvd,
) -> Result<Svd<T>, LinalgError> {
    SvdWorkspace::new().truncated_svd(a, rank, method)
}

/// Polar factor of `A`: the matrix with orthonormal columns closest to `A`,
/// `polar(A) = U V^T` from the thin SVD `A = U diag(s) V^T`.
///
/// For `m >= n` it minimises `||A - Q||_F` over all `m x n` matrices with `Q^T Q = I`
/// (and `A = polar(A) H` with `H = V diag(s) V^T` symmetric positive semi-definite). For
/// `m < n` the result has orthonormal *rows* instead and is the closest such matrix. When
/// `A` is rank-deficient the factor is a minimiser but not the unique one.
///
/// # Errors
/// [`LinalgError::EmptyMatrix`], [`LinalgError::NonFinite`] (argument `"a"`), or
/// [`LinalgError::NoConvergence`].
pub fn polar_factor<T: Real>(a: MatRef<'_, T>) -> Result<Mat<T>, LinalgError> {
    SvdWorkspace::new().polar_factor(a)
}

/// Orthonormal basis of the column space of `A` by Householder QR: the thin `Q` of
/// `A = Q R`, `m x min(m, n)`, with signs chosen so that `diag(R) >= 0`.
///
/// With that sign choice `Q` is unique when `A` has full column rank, and a matrix that
/// already has orthonormal columns is returned unchanged (up to rounding). For `m < n`
/// (numpy's "reduced" mode) `Q` is `m x m`. If `A` is rank-deficient `Q` still has
/// orthonormal columns but some of them are arbitrary directions outside the column space.
///
/// # Errors
/// [`LinalgError::EmptyMatrix`] or [`LinalgError::NonFinite`] (argument `"a"`).
pub fn orthonormalize<T: Real>(a: MatRef<'_, T>) -> Result<Mat<T>, LinalgError> {
    SvdWorkspace::new().orthonormalize(a)
}

/// Reusable scratch space and parallelism setting for the routines of this crate.
///
/// The free functions ([`thin_svd`], [`truncated_svd`], …) create a fresh workspace on
/// every call. In a loop over many matrices keep one `SvdWorkspace` instead: its scratch
/// buffers (the faer work stack, the sketch matrices of the randomized path) grow to the
/// largest shape seen and are then reused, so only the returned factors are allocated.
pub struct SvdWorkspace<T> {
    par: Par,
    mem: MemBuffer,
    mem_req: StackReq,
    omega: Mat<T>,
    y: Mat<T>,
    q: Mat<T>,
    z: Mat<T>,
    qz: Mat<T>,
    coeff: Mat<T>,
    small: Mat<T>,
}

impl<T> core::fmt::Debug for SvdWorkspace<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SvdWorkspace")
            .field("par", &self.par)
            .field("scratch_bytes", &self.mem_req.size_bytes())
            .finish_non_exhaustive()
    }
}

impl<T: Real> Default for SvdWorkspace<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Real> SvdWorkspace<T> {
    /// An empty workspace using faer's global parallelism (rayon on all threads unless
    /// changed with `faer::set_global_parallelism`).
    #[must_use]
    pub fn new() -> Self {
        Self::with_parallelism(faer::get_global_parallelism())
    }

    /// An empty workspace with an explicit parallelism (`Par::Seq` or `Par::rayon(n)`).
    #[must_use]
    pub fn with_parallelism(par: Par) -> Self {
        Self {
            par,
            mem: MemBuffer::new(StackReq::EMPTY),
            mem_req: StackReq::EMPTY,
            omega: Mat::new(),
            y: Mat::new(),
            q: Mat::new(),
            z: Mat::new(),
            qz: Mat::new(),
            coeff: Mat::new(),
            small: Mat::new(),
        }
    }

    /// The parallelism used by this workspace.
    #[must_use]
    pub fn parallelism(&self) -> Par {
        self.par
    }

    /// Sets the parallelism used by this workspace.
    pub fn set_parallelism(&mut self, par: Par) {
        self.par = par;
    }

    /// See [`thin_svd`].
    ///
    /// # Errors
    /// As [`thin_svd`].
    pub fn thin_svd(&mut self, a: MatRef<'_, T>) -> Result<Svd<T>, LinalgError> {
        check_matrix(a, "a")?;
        self.thin_svd_unchecked(a)
    }

    /// See [`truncated_svd`].
    ///
    /// # Errors
    /// As [`truncated_svd`].
    pub fn truncated_svd(
        &mut self,
        a: MatRef<'_, T>,
        rank: usize,
        method: TruncatedSvd,
    ) -> Result<Svd<T>, LinalgError> {
        check_matrix(a, "a")?;
        let (m, n) = a.shape();
        check_rank(rank, m, n)?;
        match method {
            TruncatedSvd::Randomized {
                oversample,
                power_iters,
                seed,
            } if rank.saturating_add(oversample) < m.min(n) => {
                self.randomized_unchecked(a, rank, rank + oversample, power_iters, seed)
            }
            _ => Ok(self.thin_svd_unchecked(a)?.truncated(rank)),
        }
    }

    /// See [`polar_factor`].
    ///
    /// # Errors
    /// As [`polar_factor`].
    pub fn polar_factor(&mut self, a: MatRef<'_, T>) -> Result<Mat<T>, LinalgError> {
        let svd = self.thin_svd(a)?;
        let mut out = Mat::zeros(a.nrows(), a.ncols());
        matmul(
            out.as_mut(),
            Accum::Replace,
            svd.u.as_ref(),
            svd.v.transpose(),
            T::from_f64(1.0),
            self.par,
        );
        Ok(out)
    }

    /// See [`orthonormalize`].
    ///
    /// # Errors
    /// As [`orthonormalize`].
    pub fn orthonormalize(&mut self, a: MatRef<'_, T>) -> Result<Mat<T>, LinalgError> {
        self.checked_qr(a).map(|(q, _)| q)
    }

    /// Householder QR of a checked `a` with this workspace's parallelism: the thin `Q` with
    /// `diag(R) >= 0` signs and the factored work matrix (`R` in its upper triangle, before
    /// the sign fix).
    fn checked_qr(&mut self, a: MatRef<'_, T>) -> Result<(Mat<T>, Mat<T>), LinalgError> {
        check_matrix(a, "a")?;
        let (m, n) = a.shape();
        let mut work = a.to_owned();
        let mut q = Mat::zeros(m, m.min(n));
        let par = self.par;
        self.qr_into(work.as_mut(), q.as_mut(), true, par);
        Ok((q, work))
    }

    /// Grows the work stack to hold `req`.
    fn reserve(&mut self, req: StackReq) {
        let needed = self.mem_req.or(req);
        if needed != self.mem_req {
            self.mem = MemBuffer::new(needed);
            self.mem_req = needed;
        }
    }

    /// Thin SVD of `a` (`m x n`) into `s` (`min(m, n)` values), `u` (`m x min(m, n)`) and
    /// `v` (`n x min(m, n)`), with this workspace's scratch memory.
    fn svd_into(
        &mut self,
        a: MatRef<'_, T>,
        s: &mut [T],
        u: MatMut<'_, T>,
        v: MatMut<'_, T>,
        par: Par,
    ) -> Result<(), SvdError> {
        self.reserve(svd_scratch::<T>(
            a.nrows(),
            a.ncols(),
            ComputeSvdVectors::Thin,
            ComputeSvdVectors::Thin,
            par,
            Default::default(),
        ));
        svd(
            a,
            ColMut::from_slice_mut(s).as_diagonal_mut(),
            Some(u),
            Some(v),
            par,
            MemStack::new(&mut self.mem),
            Default::default(),
        )
    }

    fn thin_svd_unchecked(&mut self, a: MatRef<'_, T>) -> Result<Svd<T>, LinalgError> {
        let (m, n) = a.shape();
        let k = m.min(n);
        let mut u = Mat::zeros(m, k);
        let mut v = Mat::zeros(n, k);
        let mut s = vec![T::from_f64(0.0); k];
        let par = self.par;
        self.svd_into(a, &mut s, u.as_mut(), v.as_mut(), par)
            .map_err(|_| LinalgError::NoConvergence { rows: m, cols: n })?;
        let mut out = Svd { u, s, v };
        out.canonicalize_signs();
        Ok(out)
    }

    /// Householder QR of `work` (`m x n`, destroyed) and the explicit thin `Q` written to
    /// `q` (`m x min(m, n)`). With `fix_signs`, columns are flipped so that `diag(R) >= 0`.
    fn qr_into(
        &mut self,
        mut work: MatMut<'_, T>,
        mut q: MatMut<'_, T>,
        fix_signs: bool,
        par: Par,
    ) {
        let (m, n) = work.shape();
        let k = m.min(n);
        let bs = recommended_block_size::<T>(m, n);
        self.reserve(StackReq::any_of(&[
            qr_in_place_scratch::<T>(m, n, bs, par, Default::default()),
            apply_block_householder_sequence_on_the_left_in_place_scratch::<T>(m, bs, k),
        ]));
        let zero = T::from_f64(0.0);
        self.coeff.resize_with(bs, k, |_, _| zero);
        qr_in_place(
            work.as_mut(),
            self.coeff.as_mut(),
            par,
            MemStack::new(&mut self.mem),
            Default::default(),
        );
        q.fill(zero);
        q.as_mut().diagonal_mut().fill(T::from_f64(1.0));
        apply_block_householder_sequence_on_the_left_in_place_with_conj(
            work.as_ref().subcols(0, k),
            self.coeff.as_ref(),
            Conj::No,
            q.as_mut(),
            par,
            MemStack::new(&mut self.mem),
        );
        if fix_signs {
            for (j, col) in q.col_iter_mut().enumerate() {
                if work.as_ref().get(j, j) < &zero {
                    for x in col.iter_mut() {
                        *x = -*x;
                    }
                }
            }
        }
    }

    /// Randomized top-`rank` SVD with sketch width `k` (`rank <= k < min(m, n)`).
    fn randomized_unchecked(
        &mut self,
        a: MatRef<'_, T>,
        rank: usize,
        k: usize,
        power_iters: usize,
        seed: u64,
    ) -> Result<Svd<T>, LinalgError> {
        let (m, n) = a.shape();
        let par = self.par;
        // The panel factorisations (QR of the m x k and n x k sketches, SVD of the n x k
        // projection) are memory-bound and short; below a few hundred columns threads
        // cost more than they save, so they run sequentially and only the products with
        // `a` use `par`.
        let panel_par = if k >= PANEL_PAR_MIN_WIDTH {
            par
        } else {
            Par::Seq
        };
        let zero = T::from_f64(0.0);
        let one = T::from_f64(1.0);

        // Ω: n x k standard Gaussian, column by column from one ChaCha8 stream.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut omega = core::mem::replace(&mut self.omega, Mat::new());
        omega.resize_with(n, k, |_, _| zero);
        for col in omega.col_iter_mut() {
            for x in col.iter_mut() {
                let g: f64 = StandardNormal.sample(&mut rng);
                *x = T::from_f64(g);
            }
        }

        let mut y = core::mem::replace(&mut self.y, Mat::new());
        let mut q = core::mem::replace(&mut self.q, Mat::new());
        let mut z = core::mem::replace(&mut self.z, Mat::new());
        let mut qz = core::mem::replace(&mut self.qz, Mat::new());
        y.resize_with(m, k, |_, _| zero);
        q.resize_with(m, k, |_, _| zero);
        z.resize_with(n, k, |_, _| zero);
        qz.resize_with(n, k, |_, _| zero);

        let at = a.transpose();
        // Y = A Ω, Q = orth(Y).
        matmul(y.as_mut(), Accum::Replace, a, omega.as_ref(), one, par);
        self.qr_into(y.as_mut(), q.as_mut(), false, panel_par);
        // Power iterations: Q <- orth(A orth(A^T Q)).
        for _ in 0..power_iters {
            matmul(z.as_mut(), Accum::Replace, at, q.as_ref(), one, par);
            self.qr_into(z.as_mut(), qz.as_mut(), false, panel_par);
            matmul(y.as_mut(), Accum::Replace, a, qz.as_ref(), one, par);
            self.qr_into(y.as_mut(), q.as_mut(), false, panel_par);
        }
        // B^T = A^T Q (n x k). Its SVD B^T = V_b diag(s) W^T gives A ≈ Q B = (Q W) diag(s) V_b^T.
        matmul(z.as_mut(), Accum::Replace, at, q.as_ref(), one, par);

        let mut v = Mat::zeros(n, k);
        let mut s = vec![zero; k];
        let mut w = core::mem::replace(&mut self.small, Mat::new());
        w.resize_with(k, k, |_, _| zero);
        let res = self.svd_into(z.as_ref(), &mut s, v.as_mut(), w.as_mut(), panel_par);
        let mut u = Mat::zeros(m, rank);
        if res.is_ok() {
            matmul(
                u.as_mut(),
                Accum::Replace,
                q.as_ref(),
                w.as_ref().subcols(0, rank),
                one,
                par,
            );
        }
        self.omega = omega;
        self.y = y;
        self.q = q;
        self.z = z;
        self.qz = qz;
        self.small = w;
        res.map_err(|_| LinalgError::NoConvergence { rows: k, cols: n })?;
        // A copy: `Mat::truncate` would keep all `k` columns allocated.
        let v = v.subcols(0, rank).to_owned();
        s.truncate(rank);
        let mut out = Svd { u, s, v };
        out.canonicalize_signs();
        Ok(out)
    }

    /// Thin QR `A = Q R` with `Q` `m x k`, `R` `k x n` upper triangular, `k = min(m, n)`,
    /// signs chosen so that `diag(R) >= 0` (see [`orthonormalize`]), computed with this
    /// workspace's parallelism.
    ///
    /// # Errors
    /// [`LinalgError::EmptyMatrix`] or [`LinalgError::NonFinite`] (argument `"a"`).
    pub fn thin_qr(&mut self, a: MatRef<'_, T>) -> Result<(Mat<T>, Mat<T>), LinalgError> {
        let (q, work) = self.checked_qr(a)?;
        let (m, n) = a.shape();
        let k = m.min(n);
        let zero = T::from_f64(0.0);
        let r = Mat::from_fn(k, n, |i, j| {
            let x = if j >= i { work[(i, j)] } else { zero };
            if work[(i, i)] < zero { -x } else { x }
        });
        Ok((q, r))
    }
}

/// Sketch width from which the panel factorisations of the randomized path use threads.
const PANEL_PAR_MIN_WIDTH: usize = 256;

/// Multiplies column `j` of `m` by `s[j]`.
pub(crate) fn scale_columns<T: Real>(mut m: MatMut<'_, T>, s: &[T]) {
    for (col, &sj) in m.as_mut().col_iter_mut().zip(s) {
        for x in col.iter_mut() {
            *x *= sj;
        }
    }
}
