//! Small conversions between host buffers and burn tensors.

use burn::prelude::*;

use crate::VitError;

/// Uploads a row-major buffer as a rank-`D` tensor. The caller guarantees
/// `data.len() == prod(shape)` (checked here in debug builds).
pub(crate) fn upload<const D: usize>(
    data: Vec<f32>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    debug_assert_eq!(data.len(), shape.iter().product::<usize>());
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Reads a tensor back into a row-major `f32` buffer.
pub(crate) fn download<const D: usize>(t: &Tensor<D>) -> Result<Vec<f32>, VitError> {
    t.try_to_vec_as::<f32>().map_err(|e| VitError::Backend {
        message: e.to_string(),
    })
}

/// Reads a tensor back as a host [`madeit_params::Tensor`] (row-major, dtype `F32`).
///
/// # Errors
/// [`VitError::Backend`] if the backend cannot read the tensor.
pub fn to_host<const D: usize>(t: &Tensor<D>) -> Result<madeit_params::Tensor, VitError> {
    let shape = t.dims().to_vec();
    let data = download(t)?;
    Ok(madeit_params::Tensor::new(shape, data)?)
}

/// Transposes a row-major `rows x cols` matrix into a row-major `cols x rows` one.
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    debug_assert_eq!(data.len(), rows * cols);
    let mut out = vec![0.0f32; data.len()];
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}

/// First non-finite value of a buffer, as `(index, value)`.
pub(crate) fn first_non_finite(data: &[f32]) -> Option<(usize, f32)> {
    data.iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
        .map(|(i, v)| (i, *v))
}
