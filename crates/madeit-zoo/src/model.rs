//! The towers the zoo trains: [`madeit_vit::ClipVisionModel`] itself, a burn module whose
//! weights are parameters, built on an autodiff device and trained by burn's optimizers.
//! This module holds what is particular to the zoo: the random initialisation of a new
//! tower ([`init_params`], [`init_tower`]) and the loading of a tower to train from a
//! checkpoint's tower tensors ([`tower_from_params`]), which makes the trained tower write
//! a bare `CLIPVisionModel` state dict in `f32`.

use burn::prelude::*;
use madeit_params::ParamDict;
use madeit_vit::{ClipVisionConfig, ClipVisionModel, expected_tensors};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::error::{Result, ZooError};

/// transformers' `initializer_range` for CLIP: the standard deviation of the patch and
/// position embeddings at initialisation.
pub const INIT_RANGE: f64 = 0.02;

/// The standard deviation of the normal initialisation of a weight, as transformers'
/// `CLIPPreTrainedModel._init_weights` (factor 1) for a tower of width `d` and `L` layers:
///
/// | tensor | std |
/// |---|---|
/// | `class_embedding` | `d^-1/2` |
/// | patch and position embeddings | `INIT_RANGE` (0.02) |
/// | q, k, v | `d^-1/2 (2L)^-1/2` |
/// | out_proj | `d^-1/2` |
/// | fc1 | `(2d)^-1/2` |
/// | fc2 | `d^-1/2 (2L)^-1/2` |
///
/// Biases start at 0 and layer norms at `gamma = 1`, `beta = 0` (not covered here).
#[must_use]
pub fn init_std(name: &str, config: &ClipVisionConfig) -> f64 {
    let d = config.hidden_size.max(1) as f64;
    let l = config.num_hidden_layers.max(1) as f64;
    let in_proj = d.powf(-0.5) * (2.0 * l).powf(-0.5);
    if name.ends_with("class_embedding") || name.contains("out_proj") {
        d.powf(-0.5)
    } else if name.contains("fc1") {
        (2.0 * d).powf(-0.5)
    } else if name.contains("q_proj")
        || name.contains("k_proj")
        || name.contains("v_proj")
        || name.contains("fc2")
    {
        in_proj
    } else {
        INIT_RANGE
    }
}

/// The weights of a randomly initialised tower, as a bare HF `CLIPVisionModel` state dict
/// in the order of [`expected_tensors`]: weights and embeddings `~ N(0, init_std(name)²)`
/// (see [`init_std`]), biases 0, layer norms `gamma = 1`, `beta = 0`, drawn from a ChaCha8
/// stream seeded with `seed` in that order (so the same seed gives the same weights on
/// every platform).
///
/// # Errors
/// [`ZooError::Vit`] for an invalid configuration.
pub fn init_params(config: &ClipVisionConfig, seed: u64) -> Result<ParamDict> {
    config.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut params = ParamDict::new();
    for (name, shape) in expected_tensors(config) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with(".bias") {
            vec![0.0; n]
        } else if name.contains("norm") {
            vec![1.0; n]
        } else {
            let normal = Normal::new(0.0f32, init_std(&name, config) as f32).map_err(|e| {
                ZooError::InvalidConfig {
                    field: "init std",
                    reason: e.to_string(),
                }
            })?;
            (0..n).map(|_| normal.sample(&mut rng)).collect()
        };
        params.insert(name, madeit_params::Tensor::new(shape, data)?);
    }
    Ok(params)
}

/// A randomly initialised tower ([`init_params`]) on `device`; on an autodiff device every
/// weight is trainable.
///
/// # Errors
/// As [`init_params`].
pub fn init_tower(
    config: &ClipVisionConfig,
    seed: u64,
    device: &Device,
) -> Result<ClipVisionModel> {
    tower_from_params(config, &init_params(config, seed)?, device)
}

/// The tower to train, on `device`, from the tower tensors of a checkpoint
/// ([`ClipVisionModel::tower_params`]: a bare or `vision_model.`-prefixed `CLIPVisionModel`
/// or `CLIPModel` state dict; a projection and a text tower are left out, the rest is read
/// as `f32`), so that the tower's [`to_params`](ClipVisionModel::to_params) is a bare
/// `CLIPVisionModel` state dict in `f32`. On an autodiff device every weight is trainable
/// (see [`ClipVisionModel::with_trainable`]).
///
/// # Errors
/// [`ZooError::Vit`]: the checkpoint's tensors are not a tower of `config` (each missing,
/// unexpected or mis-shaped tensor named; a NaN or infinity), or a bad configuration.
pub fn tower_from_params(
    config: &ClipVisionConfig,
    params: &ParamDict,
    device: &Device,
) -> Result<ClipVisionModel> {
    let bare = ClipVisionModel::tower_params(config, params.clone())?;
    Ok(ClipVisionModel::from_params_on(config, &bare, device)?)
}

/// Reads a tensor back to the host.
pub(crate) fn download<const D: usize>(t: &Tensor<D>) -> Result<Vec<f32>> {
    t.try_to_vec_as::<f32>().map_err(|e| ZooError::Backend {
        message: e.to_string(),
    })
}

fn upload<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Uploads host pixels `[batch, C, H, W]` to `device`.
pub(crate) fn pixels_tensor(
    data: Vec<f32>,
    batch: usize,
    config: &ClipVisionConfig,
    device: &Device,
) -> Tensor<4> {
    upload(
        data,
        [
            batch,
            config.num_channels,
            config.image_size,
            config.image_size,
        ],
        device,
    )
}

/// Uploads a host matrix `[rows, cols]` to `device`.
pub(crate) fn matrix_tensor(
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Tensor<2> {
    upload(data, [rows, cols], device)
}
