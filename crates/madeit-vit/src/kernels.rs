//! Element-wise kernels written for the CPU forward where burn's flex backend uses scalar
//! `libm` calls on one thread (its `sigmoid` / `exp`): quick-GELU with the bias add fused.

use burn::prelude::*;
use rayon::prelude::*;

use crate::VitError;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in a high part exact in f32 and a low correction (Cody-Waite reduction).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `e^x` in f32, within about 2 ulp of the correctly rounded value on `[-87, 88]`, written
/// with branch-free arithmetic so that loops over it vectorise.
///
/// `x = n ln 2 + r` with `n = round(x / ln 2)`, `|r| <= ln 2 / 2`;
/// `e^r` by its degree-7 Taylor polynomial (truncation error below `3e-9` relative);
/// `2^n` assembled in the exponent bits. Inputs are clamped to `[-87.3, 88.0]`, so the result
/// saturates at the smallest normal / largest finite scale instead of reaching 0 or infinity.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.0);
    // Round to nearest with the 1.5 * 2^23 shifter (valid for |x / ln 2| < 2^22).
    const SHIFT: f32 = 12_582_912.0;
    let n = (x * LOG2E + SHIFT) - SHIFT;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// `quick_gelu(x) = x sigmoid(1.702 x) = x / (1 + e^{-1.702 x})`.
#[inline(always)]
pub(crate) fn quick_gelu_f32(x: f32) -> f32 {
    x / (1.0 + exp_f32(-1.702 * x))
}

/// Whether the host kernels run on `x`: only where the tensor already lives in host memory
/// (the flex device) and carries no autodiff graph.
pub(crate) fn runs_on<const D: usize>(x: &Tensor<D>) -> bool {
    !x.is_autodiff() && x.device() == Device::flex()
}

/// `quick_gelu(x + bias)` over the last axis of `x` (`bias` has the width of that axis),
/// on the host with rayon, for flex tensors without autodiff. Hands the tensor back
/// (`Ok(Err(x))`) on other devices and on autodiff tensors; the caller then uses burn ops.
pub(crate) fn quick_gelu_bias<const D: usize>(
    x: Tensor<D>,
    bias: &[f32],
) -> Result<Result<Tensor<D>, Tensor<D>>, VitError> {
    if !runs_on(&x) {
        return Ok(Err(x));
    }
    let dims = x.dims();
    let device = x.device();
    let width = dims[D - 1];
    if bias.len() != width || width == 0 {
        return Ok(Err(x));
    }
    // `into_data` hands over the buffer without a copy when the tensor is contiguous and not
    // shared; the kernel then works in place and `from_data` takes the buffer back.
    let mut data = x.into_data();
    let values = data.as_mut_slice::<f32>().map_err(|e| VitError::Backend {
        message: format!("{e:?}"),
    })?;
    // Rows of `width` values, processed in parallel blocks of rows.
    let rows_per_job = (16_384 / width).max(1);
    values
        .par_chunks_mut(rows_per_job * width)
        .for_each(|block| {
            for row in block.chunks_exact_mut(width) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v = quick_gelu_f32(*v + *b);
                }
            }
        });
    Ok(Ok(Tensor::from_data(data, &device)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn exp_is_accurate(x in -87.0f32..88.0) {
            let want = f64::from(x).exp();
            let got = f64::from(exp_f32(x));
            prop_assert!(((got - want) / want).abs() < 4e-7, "exp({x}) = {got}, want {want}");
        }

        #[test]
        fn quick_gelu_is_accurate(x in -60.0f32..60.0) {
            let xd = f64::from(x);
            let want = xd / (1.0 + (-1.702 * xd).exp());
            let got = f64::from(quick_gelu_f32(x));
            prop_assert!((got - want).abs() <= 1e-6 * (1.0 + want.abs()), "{x}: {got} vs {want}");
        }
    }

    #[test]
    fn exp_at_the_edges() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) > 0.0 && exp_f32(-1000.0) < 1e-37);
        assert!(exp_f32(1000.0).is_finite());
        assert!(quick_gelu_f32(-1000.0).abs() < 1e-30);
        assert_eq!(quick_gelu_f32(1000.0), 1000.0);
        // A dense sweep, including the reduction boundaries.
        let mut x = -80.0f32;
        while x < 80.0 {
            let want = f64::from(x).exp();
            let rel = ((f64::from(exp_f32(x)) - want) / want).abs();
            assert!(rel < 4e-7, "exp({x}) rel err {rel}");
            x += 0.0137;
        }
    }
}
