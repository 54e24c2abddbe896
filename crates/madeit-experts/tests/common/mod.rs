//! Shared helpers of the integration tests: tiny CLIP-like parameter dictionaries and
//! seeded low-rank task vectors.
#![allow(dead_code, clippy::unwrap_used, clippy::panic, missing_docs)]

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use madeit_linalg::random::{gaussian, orthonormal};
use madeit_params::{ParamDict, Tensor};

/// Hidden size and MLP size of the tiny model.
pub const D: usize = 12;
pub const MLP: usize = 24;

/// Weight keys and shapes of a tiny `layers`-layer vision tower (optionally with the
/// `vision_model.` prefix), plus non-target tensors.
pub fn shapes(layers: usize, prefix: &str) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![
        (format!("{prefix}embeddings.class_embedding"), vec![D]),
        (format!("{prefix}pre_layrnorm.weight"), vec![D]),
    ];
    for l in 0..layers {
        let p = format!("{prefix}encoder.layers.{l}.");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            out.push((format!("{p}self_attn.{proj}.weight"), vec![D, D]));
            out.push((format!("{p}self_attn.{proj}.bias"), vec![D]));
        }
        out.push((format!("{p}layer_norm1.weight"), vec![D]));
        out.push((format!("{p}mlp.fc1.weight"), vec![MLP, D]));
        out.push((format!("{p}mlp.fc1.bias"), vec![MLP]));
        out.push((format!("{p}mlp.fc2.weight"), vec![D, MLP]));
        out.push((format!("{p}mlp.fc2.bias"), vec![D]));
    }
    out
}

pub fn is_target_shape(shape: &[usize]) -> bool {
    shape.len() == 2
}

/// Seeded pretrained parameters.
pub fn pretrained(layers: usize, prefix: &str, seed: u64) -> ParamDict {
    let mut p = ParamDict::new();
    for (i, (name, shape)) in shapes(layers, prefix).into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let g = gaussian::<f32>(n, 1, seed.wrapping_mul(1000) + i as u64);
        let data: Vec<f32> = (0..n).map(|k| 0.1 * g[(k, 0)]).collect();
        p.insert(name, Tensor::new(shape, data).unwrap());
    }
    p
}

/// `U diag(s) V^T` with Haar-random `U`, `V` of rank `r`.
pub fn low_rank(rows: usize, cols: usize, s: &[f32], seed: u64) -> Mat<f32> {
    let r = s.len();
    let u = orthonormal::<f32>(rows, r, seed).unwrap();
    let v = orthonormal::<f32>(cols, r, seed ^ 0xABCD_EF01).unwrap();
    dense(u.as_ref(), s, v.as_ref())
}

/// `U diag(s) V^T`.
pub fn dense(u: MatRef<'_, f32>, s: &[f32], v: MatRef<'_, f32>) -> Mat<f32> {
    let mut us = u.to_owned();
    for (j, &sj) in s.iter().enumerate() {
        for x in us.col_mut(j).iter_mut() {
            *x *= sj;
        }
    }
    let mut out = Mat::zeros(u.nrows(), v.nrows());
    matmul(
        out.as_mut(),
        Accum::Replace,
        us.as_ref(),
        v.transpose(),
        1.0f32,
        Par::Seq,
    );
    out
}

/// A fine-tuned model: every target weight gets a seeded rank-`rank` update with
/// decaying singular values `scale * 0.7^i` plus small noise; other tensors get noise.
pub fn finetuned(pre: &ParamDict, seed: u64, rank: usize, scale: f32) -> ParamDict {
    let mut out = ParamDict::new();
    for (i, (name, t)) in pre.iter().enumerate() {
        let s = seed.wrapping_mul(7919).wrapping_add(i as u64);
        let shape = t.shape().to_vec();
        let mut data = t.data().to_vec();
        if let [rows, cols] = shape[..] {
            let sv: Vec<f32> = (0..rank).map(|k| scale * 0.7f32.powi(k as i32)).collect();
            let dw = low_rank(rows, cols, &sv, s);
            let noise = gaussian::<f32>(rows, cols, s ^ 0x5555);
            for r in 0..rows {
                for c in 0..cols {
                    data[r * cols + c] += dw[(r, c)] + 1e-3 * noise[(r, c)];
                }
            }
        } else {
            let g = gaussian::<f32>(data.len(), 1, s);
            for (k, x) in data.iter_mut().enumerate() {
                *x += 0.01 * g[(k, 0)];
            }
        }
        out.insert(name, Tensor::new(shape, data).unwrap());
    }
    out
}

/// Replaces `name` in a copy of `p`.
pub fn with_tensor(p: &ParamDict, name: &str, t: Tensor) -> ParamDict {
    let mut out = p.clone();
    out.insert(name, t);
    out
}

/// Max absolute difference of two equal-shape matrices.
pub fn max_abs_diff(a: MatRef<'_, f32>, b: MatRef<'_, f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let mut m = 0.0f32;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            m = m.max((a[(i, j)] - b[(i, j)]).abs());
        }
    }
    m
}

/// Frobenius norm.
pub fn fro(a: MatRef<'_, f32>) -> f32 {
    let mut s = 0.0f64;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            s += f64::from(a[(i, j)]).powi(2);
        }
    }
    s.sqrt() as f32
}

/// A random `k x k` orthogonal matrix.
pub fn rotation(k: usize, seed: u64) -> Mat<f32> {
    orthonormal::<f32>(k, k, seed).unwrap()
}

/// `a * b`.
pub fn mul(a: MatRef<'_, f32>, b: MatRef<'_, f32>) -> Mat<f32> {
    let mut out = Mat::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0f32, Par::Seq);
    out
}
