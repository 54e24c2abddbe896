//! The entropy loss of test-time adaptation by entropy minimisation (AdaMerging and the
//! other test-time baselines of MINGLE's tables).

use burn::prelude::*;
use burn::tensor::activation::softmax;

/// Added inside the logarithm, as the reference code does (`log(p + 1e-8)`).
pub const ENTROPY_EPSILON: f64 = 1e-8;

/// Mean Shannon entropy of the predictions of a batch, the reference's formula:
/// `-(1/B) sum_i sum_c p_ic ln(p_ic + 1e-8)` with `p_i = softmax(logits_i)`, for logits
/// `[batch, classes]` (no temperature). Returns a one-element tensor on the logits' device,
/// differentiable when the logits are. The `1e-8` makes the value slightly smaller than the
/// exact entropy (by at most `classes * 1e-8` nats) and keeps the gradient finite where a
/// probability underflows to 0.
#[must_use]
pub fn entropy_loss(logits: Tensor<2>) -> Tensor<1> {
    let batch = logits.dims()[0].max(1) as f64;
    let p = softmax(logits, 1);
    (p.clone() * (p + ENTROPY_EPSILON).log()).sum().neg() / batch
}
