//! Loading and saving in HF layout, and the typed errors of bad checkpoints and inputs.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use common::{fixture, random_params};
use madeit_params::{DType, ParamDict, Tensor as HostTensor};
use madeit_vit::{Activation, ClipVisionConfig, ClipVisionModel, VitError};

fn bits(t: &HostTensor) -> Vec<u32> {
    t.data().iter().map(|x| x.to_bits()).collect()
}

/// Every tensor of `a` is in `b` with the same shape, dtype and bits, and vice versa.
fn assert_identical(a: &ParamDict, b: &ParamDict) {
    assert_eq!(a.len(), b.len());
    for (name, t) in a.iter() {
        let u = b.get(name).unwrap_or_else(|_| panic!("`{name}` missing"));
        assert_eq!(t.shape(), u.shape(), "{name}");
        assert_eq!(t.dtype(), u.dtype(), "{name}");
        assert!(bits(t) == bits(u), "`{name}` differs");
    }
}

/// The vision-tower part of a checkpoint (what `to_params` writes back).
fn vision_part(dict: &ParamDict) -> ParamDict {
    dict.iter()
        .filter(|(k, _)| k.starts_with("vision_model.") || *k == "visual_projection.weight")
        .filter(|(k, _)| !k.ends_with("position_ids"))
        .map(|(k, t)| (k.to_owned(), t.clone()))
        .collect()
}

fn round_trip(dir: &str, dtype: DType) {
    let original = ParamDict::load(&fixture(dir).join("model.safetensors")).unwrap();
    let model = ClipVisionModel::load_dir(&fixture(dir)).unwrap();
    let params = model.to_params().unwrap();
    assert_identical(&vision_part(&original), &params);
    assert!(params.iter().all(|(_, t)| t.dtype() == dtype));

    let tmp = tempfile::tempdir().unwrap();
    model.save_dir(tmp.path()).unwrap();
    let reloaded = ClipVisionModel::load_dir(tmp.path()).unwrap();
    assert_eq!(reloaded.config(), model.config());
    assert_eq!(reloaded.layout(), model.layout());
    assert_identical(&params, &reloaded.to_params().unwrap());
    // The file itself holds the same layout and dtypes.
    let file = ParamDict::load(&tmp.path().join("model.safetensors")).unwrap();
    assert_identical(&params, &file);
}

#[test]
fn load_save_load_is_bit_identical_f32() {
    round_trip("clip_tiny", DType::F32);
}

#[test]
fn load_save_load_is_bit_identical_f16_full_clip() {
    round_trip("clip_tiny_full", DType::F16);
}

#[test]
fn bf16_weights_round_trip() {
    let cfg = ClipVisionConfig::tiny();
    let dict: ParamDict = random_params(&cfg, 3)
        .iter()
        .map(|(k, t)| {
            let mut t = t.clone().with_dtype(DType::BF16);
            t.round_to_dtype();
            (k.to_owned(), t)
        })
        .collect();
    let model = ClipVisionModel::from_params(&cfg, &dict).unwrap();
    assert_identical(&dict, &model.to_params().unwrap());
}

fn tiny_dict() -> (ClipVisionConfig, ParamDict) {
    let cfg = ClipVisionConfig::tiny();
    (cfg.clone(), random_params(&cfg, 7))
}

#[test]
fn missing_unexpected_and_mis_shaped_tensors_are_all_listed() {
    let (cfg, mut dict) = tiny_dict();
    dict.remove("encoder.layers.1.mlp.fc2.bias");
    dict.remove("pre_layrnorm.weight");
    dict.insert(
        "encoder.layers.0.self_attn.qq_proj.weight",
        HostTensor::zeros(vec![2]).unwrap(),
    );
    dict.insert(
        "encoder.layers.0.mlp.fc1.weight",
        HostTensor::zeros(vec![64, 128]).unwrap(),
    );
    let err = ClipVisionModel::from_params(&cfg, &dict).unwrap_err();
    let VitError::Checkpoint { report } = &err else {
        panic!("expected a checkpoint error, got {err}");
    };
    assert_eq!(
        report.missing,
        vec![
            ("pre_layrnorm.weight".to_owned(), vec![64]),
            ("encoder.layers.1.mlp.fc2.bias".to_owned(), vec![64]),
        ]
    );
    assert_eq!(
        report.unexpected,
        vec!["encoder.layers.0.self_attn.qq_proj.weight".to_owned()]
    );
    assert_eq!(report.mismatched.len(), 1);
    assert_eq!(report.mismatched[0].name, "encoder.layers.0.mlp.fc1.weight");
    assert_eq!(report.mismatched[0].expected, vec![128, 64]);
    assert_eq!(report.mismatched[0].got, vec![64, 128]);
    let msg = err.to_string();
    assert!(msg.contains("`pre_layrnorm.weight` [64]"), "{msg}");
    assert!(msg.contains("qq_proj"), "{msg}");
}

#[test]
fn prefixed_missing_names_carry_the_prefix() {
    let (cfg, dict) = tiny_dict();
    let mut prefixed: ParamDict = dict
        .iter()
        .map(|(k, t)| {
            let k = if k == "visual_projection.weight" {
                k.to_owned()
            } else {
                format!("vision_model.{k}")
            };
            (k, t.clone())
        })
        .collect();
    prefixed.remove("vision_model.post_layernorm.bias");
    let err = ClipVisionModel::from_params(&cfg, &prefixed).unwrap_err();
    let VitError::Checkpoint { report } = err else {
        panic!("expected a checkpoint error");
    };
    assert_eq!(
        report.missing,
        vec![("vision_model.post_layernorm.bias".to_owned(), vec![64])]
    );
}

#[test]
fn known_buffers_and_text_tensors_are_ignored() {
    let (cfg, mut dict) = tiny_dict();
    dict.insert(
        "embeddings.position_ids",
        HostTensor::zeros(vec![1, 17]).unwrap(),
    );
    dict.insert(
        "text_model.embeddings.token_embedding.weight",
        HostTensor::zeros(vec![4, 2]).unwrap(),
    );
    dict.insert(
        "text_projection.weight",
        HostTensor::zeros(vec![2, 2]).unwrap(),
    );
    dict.insert("logit_scale", HostTensor::zeros(vec![]).unwrap());
    let model = ClipVisionModel::from_params(&cfg, &dict).unwrap();
    let back = model.to_params().unwrap();
    assert!(!back.contains("embeddings.position_ids"));
    assert!(!back.contains("logit_scale"));
    assert_eq!(back.len(), dict.len() - 4);
}

#[test]
fn nan_weight_is_named() {
    let (cfg, mut dict) = tiny_dict();
    dict.get_mut("encoder.layers.1.self_attn.v_proj.weight")
        .unwrap()
        .data_mut()[5] = f32::NAN;
    match ClipVisionModel::from_params(&cfg, &dict) {
        Err(VitError::NonFiniteWeight { name, index, .. }) => {
            assert_eq!(name, "encoder.layers.1.self_attn.v_proj.weight");
            assert_eq!(index, 5);
        }
        other => panic!("expected NonFiniteWeight, got {other:?}"),
    }
}

#[test]
fn wrong_input_shape_reports_the_expected_shape() {
    let (cfg, dict) = tiny_dict();
    let model = ClipVisionModel::from_params(&cfg, &dict).unwrap();
    let device = model.device().clone();
    for dims in [[2, 3, 16, 32], [2, 1, 32, 32], [0, 3, 32, 32]] {
        let px = burn::tensor::Tensor::<4>::zeros(dims, &device);
        match model.forward(px) {
            Err(e @ VitError::InputShape { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("[batch, 3, 32, 32]"), "{msg}");
            }
            other => panic!("expected InputShape for {dims:?}, got {other:?}"),
        }
    }
    assert!(matches!(
        model.pixels(vec![0.0; 10], 1),
        Err(VitError::Length {
            expected: 3072,
            got: 10,
            ..
        })
    ));
    let mut px = vec![0.0; 3072];
    px[7] = f32::INFINITY;
    assert!(matches!(
        model.pixels(px, 1),
        Err(VitError::NonFiniteInput { index: 7, .. })
    ));
}

#[test]
fn config_json_variants() {
    // A CLIPVisionConfig with unknown fields.
    let text = r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "projection_dim": 32,
        "hidden_act": "quick_gelu", "dropout": 0.0, "architectures": ["X"], "model_type": "clip_vision_model"}"#;
    assert_eq!(
        ClipVisionConfig::from_json_str(text).unwrap(),
        ClipVisionConfig::tiny()
    );
    // Missing fields take the HF defaults (ViT-B/32).
    assert_eq!(
        ClipVisionConfig::from_json_str("{}").unwrap(),
        ClipVisionConfig::vit_b_32()
    );
    // A full CLIPConfig: the nested vision config, with the top-level projection_dim.
    let full = r#"{"projection_dim": 768, "text_config": {"hidden_size": 12},
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
        "num_attention_heads": 16, "patch_size": 14, "projection_dim": 512}}"#;
    assert_eq!(
        ClipVisionConfig::from_json_str(full).unwrap(),
        ClipVisionConfig::vit_l_14()
    );
    let gelu = r#"{"hidden_act": "gelu_pytorch_tanh"}"#;
    assert_eq!(
        ClipVisionConfig::from_json_str(gelu).unwrap().hidden_act,
        Activation::GeluTanh
    );
    // Serialisation round trip.
    let cfg = ClipVisionConfig::vit_b_16();
    assert_eq!(
        ClipVisionConfig::from_json_str(&cfg.to_json_string().unwrap()).unwrap(),
        cfg
    );
}

#[test]
fn config_errors_are_typed() {
    assert!(matches!(
        ClipVisionConfig::from_json_str(r#"{"hidden_act": "swish"}"#),
        Err(VitError::ConfigParse { .. })
    ));
    assert!(matches!(
        ClipVisionConfig::from_json_str("[1, 2]"),
        Err(VitError::ConfigParse { .. })
    ));
    assert!(matches!(
        ClipVisionConfig::from_json_str(r#"{"num_attention_heads": 5}"#),
        Err(VitError::InvalidConfig {
            field: "num_attention_heads",
            ..
        })
    ));
    assert!(matches!(
        ClipVisionConfig::from_json_str(r#"{"patch_size": 30}"#),
        Err(VitError::InvalidConfig {
            field: "patch_size",
            ..
        })
    ));
    assert!(matches!(
        ClipVisionConfig::from_json_str(r#"{"num_hidden_layers": 0}"#),
        Err(VitError::InvalidConfig {
            field: "num_hidden_layers",
            ..
        })
    ));
    let mut cfg = ClipVisionConfig::tiny();
    cfg.layer_norm_eps = f64::NAN;
    assert!(matches!(
        cfg.validate(),
        Err(VitError::InvalidConfig {
            field: "layer_norm_eps",
            ..
        })
    ));
    let missing = std::path::Path::new("/nonexistent/config.json");
    match ClipVisionConfig::from_file(missing) {
        Err(VitError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn presets_are_valid_and_have_the_published_sizes() {
    for (cfg, params, tokens) in [
        (ClipVisionConfig::vit_b_32(), 87_849_216usize, 50usize),
        (ClipVisionConfig::vit_b_16(), 86_192_640, 197),
        (ClipVisionConfig::vit_l_14(), 303_966_208, 257),
    ] {
        cfg.validate().unwrap();
        assert_eq!(cfg.num_positions(), tokens);
        let n: usize = madeit_vit::expected_tensors(&cfg)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        let proj = cfg.projection_dim * cfg.hidden_size;
        assert_eq!(n + proj, params, "{cfg:?}");
    }
}

#[test]
fn summary_counts_parameters() {
    let model = ClipVisionModel::load_dir(&fixture("clip_tiny")).unwrap();
    let s = model.summary();
    let dict = ParamDict::load(&fixture("clip_tiny").join("model.safetensors")).unwrap();
    assert_eq!(s.num_tensors, dict.len());
    assert_eq!(s.num_params, dict.numel());
    assert!(s.has_projection);
    let text = s.to_string();
    assert!(
        text.contains("d=64") && text.contains("projection=32"),
        "{text}"
    );
}

#[test]
fn the_tower_moves_between_devices_and_reads_tower_params() {
    use burn::prelude::Device;
    let (cfg, dict) = tiny_dict();
    let model = ClipVisionModel::from_params(&cfg, &dict).unwrap();
    let pixels = common::random_pixels(&cfg, 2, 5);
    let before = model.embed(pixels.clone(), 2).unwrap();
    // To the autodiff device and back: the same weights, the same forward.
    let moved = model
        .to_device(&Device::flex().autodiff())
        .to_device(&Device::flex());
    assert_identical(&dict, &moved.to_params().unwrap());
    assert_eq!(moved.embed(pixels, 2).unwrap(), before);

    // The tower's tensors of a prefixed checkpoint with a projection and a text tower's
    // tensor: bare names in the order of expected_tensors, F32.
    let mut clip: ParamDict = dict
        .iter()
        .map(|(k, t)| {
            (
                format!("vision_model.{k}"),
                t.clone().with_dtype(DType::F16),
            )
        })
        .collect();
    clip.insert(
        "visual_projection.weight",
        HostTensor::zeros(vec![cfg.projection_dim, cfg.hidden_size]).unwrap(),
    );
    clip.insert("logit_scale", HostTensor::zeros(vec![]).unwrap());
    let tower = ClipVisionModel::tower_params(&cfg, clip).unwrap();
    let names: Vec<String> = madeit_vit::expected_tensors(&cfg)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        tower.keys().collect::<Vec<_>>(),
        names.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(tower.iter().all(|(_, t)| t.dtype() == DType::F32));
    for (name, t) in tower.iter() {
        assert_eq!(bits(t), bits(dict.get(name).unwrap()), "{name}");
    }
    // A tower with a tensor missing is refused, naming it.
    let mut short = dict.clone();
    short.remove("post_layernorm.bias");
    let err = ClipVisionModel::tower_params(&cfg, short).unwrap_err();
    assert!(err.to_string().contains("post_layernorm.bias"), "{err}");
}
