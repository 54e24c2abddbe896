//! Null-space constrained gating: the projection of a gate-weight gradient off the input
//! subspace of earlier tasks, with adaptive relaxation (paper section 3.4, eqs. 8-11).

use faer::{Mat, MatRef};

use crate::GateProjection;

/// Guard added to `||g||` in the interference ratio, as in the reference.
pub const NORM_GUARD: f64 = 1e-12;

/// Projects the gradient of one module's newest gate weight, step after step, keeping the
/// running interference score `h` of that module for the current task.
///
/// With `U = [u_1 .. u_K]` (`d x K`, orthonormal columns; the module's stored input
/// subspace) and the gradient `g` (`d` values), one call of [`project`](Self::project):
///
/// ```text
/// c_p     = g . u_p
/// r_p     = |c_p| / (||g|| + 1e-12)             interference of direction p
/// h_p    <- beta h_p + (1 - beta) r_p           EMA over the task's steps, h = 0 at start
/// lambda_p = exp(-gamma h_p)                    in (0, 1]
/// g      <- g - sum_p lambda_p c_p u_p          = (I - U diag(lambda) U^T) g
/// ```
///
/// `lambda = 1` everywhere is the hard null-space projector `I - U U^T` (reached for
/// `gamma = 0`, or by [`GateProjection::Hard`]); larger `gamma` or larger interference lets
/// more of `g` through along the stored directions ("relaxation"); components of `g`
/// orthogonal to `U` are never changed. With [`GateProjection::None`], `g` is returned
/// as is. Arithmetic is in `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientProjector {
    basis: Mat<f64>,
    h: Vec<f64>,
    gamma: f64,
    beta: f64,
    mode: GateProjection,
    steps: usize,
}

impl GradientProjector {
    /// A projector for the subspace spanned by the columns of `basis` (`d x K`, assumed
    /// orthonormal), with `h = 0`.
    #[must_use]
    pub fn new(basis: MatRef<'_, f32>, mode: GateProjection, gamma: f64, beta: f64) -> Self {
        let basis = Mat::from_fn(basis.nrows(), basis.ncols(), |i, j| {
            f64::from(basis[(i, j)])
        });
        let k = basis.ncols();
        Self {
            basis,
            h: vec![0.0; k],
            gamma,
            beta,
            mode,
            steps: 0,
        }
    }

    /// Input width `d`.
    #[must_use]
    pub fn dim(&self) -> usize {
        self.basis.nrows()
    }

    /// Number of stored directions `K`.
    #[must_use]
    pub fn num_directions(&self) -> usize {
        self.basis.ncols()
    }

    /// The running interference scores `h` (one per direction).
    #[must_use]
    pub fn interference(&self) -> &[f64] {
        &self.h
    }

    /// The current shrinkage coefficients `lambda_p` (all 1 for the hard projector, all 0
    /// for none).
    #[must_use]
    pub fn lambdas(&self) -> Vec<f64> {
        match self.mode {
            GateProjection::Relaxed => self.h.iter().map(|h| (-self.gamma * h).exp()).collect(),
            GateProjection::Hard => vec![1.0; self.h.len()],
            GateProjection::None => vec![0.0; self.h.len()],
        }
    }

    /// Number of gradients projected so far.
    #[must_use]
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Projects `grad` (see the type docs), updating `h`. Returns `None` when `grad` does
    /// not have `d` values.
    #[must_use]
    pub fn project(&mut self, grad: &[f32]) -> Option<Vec<f32>> {
        let d = self.dim();
        if grad.len() != d {
            return None;
        }
        self.steps += 1;
        if self.mode == GateProjection::None || self.basis.ncols() == 0 {
            return Some(grad.to_vec());
        }
        let g: Vec<f64> = grad.iter().map(|x| f64::from(*x)).collect();
        let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        let coeffs: Vec<f64> = (0..self.basis.ncols())
            .map(|p| {
                self.basis
                    .col(p)
                    .iter()
                    .zip(&g)
                    .map(|(u, x)| u * x)
                    .sum::<f64>()
            })
            .collect();
        for (h, c) in self.h.iter_mut().zip(&coeffs) {
            let r = c.abs() / (norm + NORM_GUARD);
            *h = self.beta * *h + (1.0 - self.beta) * r;
        }
        let lambdas = self.lambdas();
        let mut out = g;
        for (p, (c, l)) in coeffs.iter().zip(&lambdas).enumerate() {
            let w = c * l;
            if w == 0.0 {
                continue;
            }
            for (o, u) in out.iter_mut().zip(self.basis.col(p).iter()) {
                *o -= w * u;
            }
        }
        Some(out.into_iter().map(|x| x as f32).collect())
    }
}
