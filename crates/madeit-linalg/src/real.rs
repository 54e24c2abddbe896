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
/// - **`f64`** where errors accumulate over many steps or small differences matter:
///   OPCM's running projections and merged task vectors are updated at every task, and
///   the projection `(I - U U^T) dW` of a nearly-contained update is a difference of close
///   numbers; in `f32` its relative error grows like `eps_f32 * cond`, which is visible
///   after a few tasks. Use `f64` there.
/// - **`f32`** where one decomposition is taken and truncated: the top-`r` experts of
///   MADE-IT, affinities between subspaces (values in `[0, 1]` needed to a few digits), the
///   randomized range finder. `f32` SVDs are about 1.6x faster and take half the memory;
///   singular values come out to about `1e-6` relative to `s_1`, far below the
///   noise of a fine-tuned task vector.
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
