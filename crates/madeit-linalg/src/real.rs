//! The scalar types this crate works with: `f32` and `f64`.

use core::fmt::{Debug, Display};
use faer::traits::RealField;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A real floating-point scalar: faer's [`RealField`] restricted to `f32` and `f64`.
///
/// Every routine of this crate and of `madeit-grassmann` is generic over `T: Real`.
/// The trait is sealed; it only adds the conversions and constants that generic numeric
/// code needs (faer's own trait has no `Copy` bound and no conversion to `f64`).
///
/// # Which precision where
/// - **`f64`** where results depend on individual singular vectors. OPCM projects each
///   new task vector `τ` onto the singular directions of the merged update `D = U S V^T`
///   (`C = U^T τ V`, then it zeroes the diagonal of `C`, direction by direction). Where
///   singular values of `D` nearly coincide, the individual `u_i`, `v_i` are
///   ill-conditioned (their error is about `eps / gap`), and an `f32` SVD moves the
///   projected result by about `1e-5`. The error scales with `eps`, so `f64` shrinks it
///   by about nine orders of magnitude: OPCM's SVDs should be `f64`.
/// - **`f32`** where one decomposition is taken and truncated: the top-`r` experts of
///   MADE-IT, affinities between subspaces (values in `[0, 1]` needed to a few digits),
///   the randomized range finder. Checkpoints are stored in `f32` (or lower) anyway,
///   `f32` singular values agree with `f64` ones to about `1e-6 s_1` (tested), and an
///   `f32` thin SVD is about 1.6x faster than an `f64` one and takes half the memory.
pub trait Real:
    RealField + Copy + Send + Sync + Debug + Display + Default + 'static + sealed::Sealed
{
    /// The type's name, `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// Machine epsilon (`2^-23` or `2^-52`).
    const EPSILON: Self;
    /// Converts from `f64`, rounding to nearest.
    fn from_f64(x: f64) -> Self;
    /// Widens (or copies) to `f64`.
    fn to_f64(self) -> f64;
    /// Converts a count, as `from_f64(n as f64)`.
    fn from_usize(n: usize) -> Self {
        #[allow(clippy::cast_precision_loss)]
        Self::from_f64(n as f64)
    }
    /// `true` unless NaN or infinite.
    fn finite(self) -> bool;
    /// Square root.
    fn sqrt_(self) -> Self;
    /// Absolute value.
    fn abs_(self) -> Self;
    /// Largest of two values (NaN-ignoring, as `f64::max`).
    fn max_(self, other: Self) -> Self;
    /// Smallest of two values (NaN-ignoring, as `f64::min`).
    fn min_(self, other: Self) -> Self;
    /// Clamps into `[lo, hi]`.
    fn clamp_(self, lo: Self, hi: Self) -> Self {
        self.max_(lo).min_(hi)
    }
}

macro_rules! impl_real {
    ($t:ty, $name:literal) => {
        impl Real for $t {
            const NAME: &'static str = $name;
            const EPSILON: Self = <$t>::EPSILON;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                #[allow(clippy::cast_possible_truncation)]
                {
                    x as $t
                }
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                f64::from(self)
            }
            #[inline(always)]
            fn finite(self) -> bool {
                self.is_finite()
            }
            #[inline(always)]
            fn sqrt_(self) -> Self {
                self.sqrt()
            }
            #[inline(always)]
            fn abs_(self) -> Self {
                self.abs()
            }
            #[inline(always)]
            fn max_(self, other: Self) -> Self {
                self.max(other)
            }
            #[inline(always)]
            fn min_(self, other: Self) -> Self {
                self.min(other)
            }
        }
    };
}

impl_real!(f32, "f32");
impl_real!(f64, "f64");
