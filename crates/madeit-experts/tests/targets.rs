//! Target-module recognition.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use madeit_experts::{ExpertsError, ModuleKind, parse_target_key, target_modules};
use madeit_params::Tensor;

#[test]
fn recognises_hf_names_with_and_without_prefix() {
    for prefix in ["", "vision_model."] {
        let p = pretrained(3, prefix, 1);
        let t = target_modules(&p).unwrap();
        assert_eq!(t.len(), 18);
        let order: Vec<(usize, ModuleKind)> = t.iter().map(|m| m.depth()).collect();
        let mut want = Vec::new();
        for l in 0..3 {
            for k in ModuleKind::ALL {
                want.push((l, k));
            }
        }
        assert_eq!(order, want);
        let fc1 = &t[4];
        assert_eq!(
            fc1.weight_key,
            format!("{prefix}encoder.layers.0.mlp.fc1.weight")
        );
        assert_eq!(fc1.name(), format!("{prefix}encoder.layers.0.mlp.fc1"));
        assert_eq!((fc1.d_out, fc1.d_in), (MLP, D));
    }
}

#[test]
fn sorts_layers_numerically_and_ignores_other_keys() {
    assert_eq!(
        parse_target_key("encoder.layers.10.self_attn.out_proj.weight"),
        Some((10, ModuleKind::Out))
    );
    assert_eq!(
        parse_target_key("vision_model.encoder.layers.2.mlp.fc2.weight"),
        Some((2, ModuleKind::Fc2))
    );
    for key in [
        "text_model.encoder.layers.0.self_attn.q_proj.weight",
        "encoder.layers.0.self_attn.q_proj.bias",
        "encoder.layers.x.self_attn.q_proj.weight",
        "encoder.layers..self_attn.q_proj.weight",
        "encoder.layers.0.mlp.fc3.weight",
        "visual_projection.weight",
        "encoder.layers.+1.mlp.fc1.weight",
    ] {
        assert_eq!(parse_target_key(key), None, "{key}");
    }
    let p = pretrained(11, "", 1);
    let t = target_modules(&p).unwrap();
    assert_eq!(t.last().unwrap().layer, 10);
    assert!(t.windows(2).all(|w| w[0].depth() < w[1].depth()));
}

#[test]
fn errors() {
    let mut p = pretrained(1, "", 1);
    p.insert(
        "encoder.layers.0.mlp.fc1.weight",
        Tensor::new(vec![MLP * D], vec![0.0; MLP * D]).unwrap(),
    );
    assert!(
        matches!(target_modules(&p), Err(ExpertsError::NotAMatrix { name, .. }) if name == "encoder.layers.0.mlp.fc1.weight")
    );

    let mut p = pretrained(1, "", 1);
    p.insert(
        "vision_model.encoder.layers.0.mlp.fc1.weight",
        Tensor::new(vec![MLP, D], vec![0.0; MLP * D]).unwrap(),
    );
    assert!(matches!(
        target_modules(&p),
        Err(ExpertsError::ModuleSetMismatch { .. })
    ));

    let mut p = madeit_params::ParamDict::new();
    p.insert(
        "pre_layrnorm.weight",
        Tensor::new(vec![2], vec![1.0, 1.0]).unwrap(),
    );
    assert!(matches!(
        target_modules(&p),
        Err(ExpertsError::NoTargetModules)
    ));
}
