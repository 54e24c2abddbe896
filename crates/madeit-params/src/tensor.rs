//! A dense `f32` tensor in row-major (PyTorch) layout with a recorded storage dtype.

use faer::{Mat, MatMut, MatRef};

use crate::{DType, ParamsError};

/// A dense tensor: a shape, row-major `f32` data and the [`DType`] it is stored as on disk.
///
/// The layout is PyTorch's: a linear layer's weight has shape `[out, in]` and element
/// `(o, i)` sits at flat index `o * in + i`. A shape `[]` is a scalar with one element.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// `Σ a_k b_k` over the common length, accumulated in `f64` in eight interleaved partial sums
/// (which lets the compiler vectorise the loop, and shortens the rounding-error chains).
pub(crate) fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let (ca, ra) = a.as_chunks::<LANES>();
    let (cb, rb) = b.as_chunks::<LANES>();
    let mut acc = [0f64; LANES];
    for (x, y) in ca.iter().zip(cb) {
        for ((s, &xi), &yi) in acc.iter_mut().zip(x).zip(y) {
            *s += f64::from(xi) * f64::from(yi);
        }
    }
    let tail: f64 = ra
        .iter()
        .zip(rb)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    acc.iter().sum::<f64>() + tail
}

/// `prod(shape)`, or `None` on overflow.
pub(crate) fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Tensor {
    /// Builds an [`F32`](DType::F32) tensor from a shape and row-major data.
    ///
    /// # Errors
    /// [`ParamsError::LengthMismatch`] if `data.len() != prod(shape)`,
    /// [`ParamsError::ShapeOverflow`] if `prod(shape)` overflows.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, ParamsError> {
        let Some(expected) = checked_numel(&shape) else {
            return Err(ParamsError::ShapeOverflow {
                name: String::new(),
                shape,
            });
        };
        if expected != data.len() {
            return Err(ParamsError::LengthMismatch {
                name: String::new(),
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(Self {
            dtype: DType::F32,
            shape,
            data,
        })
    }

    /// Same tensor with the storage dtype set to `dtype`. The in-memory values are not
    /// rounded (use [`Tensor::round_to_dtype`] for that); rounding happens when saving.
    #[must_use]
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// An [`F32`](DType::F32) tensor of zeros.
    ///
    /// # Errors
    /// [`ParamsError::ShapeOverflow`] if `prod(shape)` overflows `usize`.
    pub fn zeros(shape: Vec<usize>) -> Result<Self, ParamsError> {
        let Some(n) = checked_numel(&shape) else {
            return Err(ParamsError::ShapeOverflow {
                name: String::new(),
                shape,
            });
        };
        Ok(Self {
            dtype: DType::F32,
            shape,
            data: vec![0.0; n],
        })
    }

    /// A tensor of zeros with the same shape and dtype as `self`.
    #[must_use]
    pub fn zeros_like(&self) -> Self {
        Self {
            dtype: self.dtype,
            shape: self.shape.clone(),
            data: vec![0.0; self.data.len()],
        }
    }

    /// Shape, outermost dimension first.
    #[must_use]
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Storage dtype.
    #[must_use]
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Row-major data.
    #[must_use]
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Row-major data, mutable (the shape cannot change through it).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the tensor and returns its row-major data.
    #[must_use]
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Number of elements, `prod(shape)`.
    #[must_use]
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor is 2-D.
    #[must_use]
    pub fn is_matrix(&self) -> bool {
        self.shape.len() == 2
    }

    /// `(rows, cols)` of a 2-D tensor.
    fn matrix_dims(&self) -> Result<(usize, usize), ParamsError> {
        match self.shape.as_slice() {
            &[r, c] => Ok((r, c)),
            _ => Err(ParamsError::NotAMatrix {
                name: String::new(),
                shape: self.shape.clone(),
            }),
        }
    }

    /// Zero-copy view of a 2-D tensor `[out, in]` as an `out × in` matrix.
    ///
    /// # Errors
    /// [`ParamsError::NotAMatrix`] if the tensor is not 2-D.
    pub fn as_mat(&self) -> Result<MatRef<'_, f32>, ParamsError> {
        let (r, c) = self.matrix_dims()?;
        Ok(MatRef::from_row_major_slice(&self.data, r, c))
    }

    /// Zero-copy mutable view of a 2-D tensor `[out, in]` as an `out × in` matrix.
    ///
    /// # Errors
    /// [`ParamsError::NotAMatrix`] if the tensor is not 2-D.
    pub fn as_mat_mut(&mut self) -> Result<MatMut<'_, f32>, ParamsError> {
        let (r, c) = self.matrix_dims()?;
        Ok(MatMut::from_row_major_slice_mut(&mut self.data, r, c))
    }

    /// Copies a matrix into an [`F32`](DType::F32) tensor of shape `[rows, cols]`, row-major.
    #[must_use]
    pub fn from_mat(m: MatRef<'_, f32>) -> Self {
        let (r, c) = (m.nrows(), m.ncols());
        let mut data = Vec::with_capacity(r * c);
        for i in 0..r {
            data.extend(m.row(i).iter().copied());
        }
        Self {
            dtype: DType::F32,
            shape: vec![r, c],
            data,
        }
    }

    /// Copies the tensor into an owned `f64` matrix (2-D tensors only).
    ///
    /// # Errors
    /// [`ParamsError::NotAMatrix`] if the tensor is not 2-D.
    pub fn to_mat_f64(&self) -> Result<Mat<f64>, ParamsError> {
        let m = self.as_mat()?;
        Ok(Mat::from_fn(m.nrows(), m.ncols(), |i, j| {
            f64::from(m[(i, j)])
        }))
    }

    /// Copies an `f64` matrix into an [`F32`](DType::F32) tensor `[rows, cols]` (values rounded
    /// to `f32`).
    #[must_use]
    pub fn from_mat_f64(m: MatRef<'_, f64>) -> Self {
        let (r, c) = (m.nrows(), m.ncols());
        let mut data = Vec::with_capacity(r * c);
        for i in 0..r {
            data.extend(m.row(i).iter().map(|&x| x as f32));
        }
        Self {
            dtype: DType::F32,
            shape: vec![r, c],
            data,
        }
    }

    /// Same data under a new shape with the same number of elements.
    ///
    /// # Errors
    /// [`ParamsError::LengthMismatch`] if `prod(shape) != numel()`.
    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Self, ParamsError> {
        match checked_numel(&shape) {
            Some(n) if n == self.data.len() => {
                self.shape = shape;
                Ok(self)
            }
            Some(n) => Err(ParamsError::LengthMismatch {
                name: String::new(),
                shape,
                expected: n,
                got: self.data.len(),
            }),
            None => Err(ParamsError::ShapeOverflow {
                name: String::new(),
                shape,
            }),
        }
    }

    /// Rounds every value to the storage dtype in place, so memory holds exactly what a
    /// save-and-load round trip would return.
    pub fn round_to_dtype(&mut self) {
        if self.dtype != DType::F32 {
            let d = self.dtype;
            self.data.iter_mut().for_each(|x| *x = d.round(*x));
        }
    }

    /// Checks that shape and dtype agree with `other` (`self` is the expected side).
    ///
    /// # Errors
    /// [`ParamsError::ShapeMismatch`] or [`ParamsError::DTypeMismatch`] (with an empty name).
    pub fn check_compatible(&self, other: &Self) -> Result<(), ParamsError> {
        if self.shape != other.shape {
            return Err(ParamsError::ShapeMismatch {
                name: String::new(),
                expected: self.shape.clone(),
                got: other.shape.clone(),
            });
        }
        if self.dtype != other.dtype {
            return Err(ParamsError::DTypeMismatch {
                name: String::new(),
                expected: self.dtype,
                got: other.dtype,
            });
        }
        Ok(())
    }

    /// Checks that every value is finite.
    ///
    /// # Errors
    /// [`ParamsError::NonFinite`] with the flat index of the first NaN or infinity.
    pub fn check_finite(&self) -> Result<(), ParamsError> {
        if all_finite(&self.data) {
            return Ok(());
        }
        match self.data.iter().position(|x| !x.is_finite()) {
            None => Ok(()),
            Some(index) => Err(ParamsError::NonFinite {
                name: String::new(),
                index,
                value: self.data.get(index).copied().unwrap_or(f32::NAN),
            }),
        }
    }

    /// Elementwise `f(a, b)` of two compatible tensors; the result keeps `self`'s dtype.
    ///
    /// # Errors
    /// As [`Tensor::check_compatible`].
    pub fn zip_with(&self, other: &Self, f: impl Fn(f32, f32) -> f32) -> Result<Self, ParamsError> {
        self.check_compatible(other)?;
        Ok(Self {
            dtype: self.dtype,
            shape: self.shape.clone(),
            data: self
                .data
                .iter()
                .zip(&other.data)
                .map(|(&a, &b)| f(a, b))
                .collect(),
        })
    }

    /// Elementwise `f(a)`; shape and dtype are kept.
    #[must_use]
    pub fn map(&self, f: impl Fn(f32) -> f32) -> Self {
        Self {
            dtype: self.dtype,
            shape: self.shape.clone(),
            data: self.data.iter().map(|&a| f(a)).collect(),
        }
    }

    /// `self + other`, elementwise in `f32`.
    ///
    /// # Errors
    /// As [`Tensor::check_compatible`].
    pub fn add(&self, other: &Self) -> Result<Self, ParamsError> {
        self.zip_with(other, |a, b| a + b)
    }

    /// `self - other`, elementwise in `f32`.
    ///
    /// # Errors
    /// As [`Tensor::check_compatible`].
    pub fn sub(&self, other: &Self) -> Result<Self, ParamsError> {
        self.zip_with(other, |a, b| a - b)
    }

    /// `alpha * self`, elementwise in `f32`.
    #[must_use]
    pub fn scale(&self, alpha: f32) -> Self {
        self.map(|a| alpha * a)
    }

    /// `self += alpha * x`, elementwise in `f32`.
    ///
    /// # Errors
    /// As [`Tensor::check_compatible`].
    pub fn axpy(&mut self, alpha: f32, x: &Self) -> Result<(), ParamsError> {
        self.check_compatible(x)?;
        self.data
            .iter_mut()
            .zip(&x.data)
            .for_each(|(a, &b)| *a += alpha * b);
        Ok(())
    }

    /// `Σ x_k²` accumulated in `f64`.
    #[must_use]
    pub fn sum_sq(&self) -> f64 {
        dot_f64(&self.data, &self.data)
    }

    /// Frobenius / flattened L2 norm `sqrt(Σ x_k²)`, accumulated in `f64`.
    #[must_use]
    pub fn l2_norm(&self) -> f64 {
        self.sum_sq().sqrt()
    }

    /// Flattened inner product `Σ a_k b_k`, accumulated in `f64`.
    ///
    /// # Errors
    /// As [`Tensor::check_compatible`].
    pub fn dot(&self, other: &Self) -> Result<f64, ParamsError> {
        self.check_compatible(other)?;
        Ok(dot_f64(&self.data, &other.data))
    }

    /// Largest element-wise difference `max |a_k − b_k|`, in `f32` (0 for empty tensors;
    /// NaN differences are passed over, as by `f32::max`).
    ///
    /// # Errors
    /// As [`Tensor::check_compatible`].
    pub fn max_abs_diff(&self, other: &Self) -> Result<f32, ParamsError> {
        self.check_compatible(other)?;
        // Equal shapes hold equal lengths: the slice form always gives a value here.
        Ok(max_abs_diff(&self.data, &other.data).unwrap_or(f32::NAN))
    }
}

/// Largest element-wise difference `max |a_k − b_k|` of two slices, in `f32` (0 for empty
/// slices; NaN differences are passed over, as by `f32::max`); `None` when the lengths
/// differ.
#[must_use]
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> Option<f32> {
    (a.len() == b.len()).then(|| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    })
}

/// Whether every value is finite (no NaN, no infinity). The check runs in blocks without
/// short-circuiting inside a block, so that it vectorises; it stops at the first block with
/// a non-finite value.
#[must_use]
pub fn all_finite(xs: &[f32]) -> bool {
    xs.chunks(1024)
        .all(|c| c.iter().fold(true, |ok, x| ok & x.is_finite()))
}

#[cfg(test)]
mod tests {
    use super::dot_f64;

    #[test]
    fn lane_dot_matches_sequential_sum() {
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 1000] {
            let a: Vec<f32> = (0..n).map(|k| (k as f32 * 0.7).sin()).collect();
            let b: Vec<f32> = (0..n).map(|k| (k as f32 * 1.3).cos()).collect();
            let seq: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum();
            let scale: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs())
                .sum();
            assert!(
                (dot_f64(&a, &b) - seq).abs() <= 1e-14 * (1.0 + scale),
                "n = {n}"
            );
        }
    }
}
