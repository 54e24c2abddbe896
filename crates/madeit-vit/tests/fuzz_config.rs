//! The `config.json` reader on hostile input: any JSON, and configs claiming enormous
//! sizes, never make it panic or allocate past a bound, also when the configuration is
//! then checked against weights.
//!
//! One test per binary: the allocation bound is enforced by a global allocator that fails
//! (aborting the test) on any request past the limit, so nothing else may run beside it.

#![allow(clippy::unwrap_used, clippy::panic)]

use madeit_params::{ParamDict, Tensor};
use madeit_vit::{ClipVisionConfig, ClipVisionModel, expected_tensors};
use proptest::prelude::*;

#[path = "../../madeit-params/tests/support/bounded_alloc.rs"]
mod bounded_alloc;

use bounded_alloc::{bounded, runner};

const FIELDS: [&str; 10] = [
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "image_size",
    "patch_size",
    "num_channels",
    "layer_norm_eps",
    "hidden_act",
    "projection_dim",
];

fn value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        (0u64..4096).prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        "[a-z_]{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        Just(serde_json::json!([1, 2])),
    ]
}

/// A tiny tower's weights, to check parsed configs against.
fn tiny_weights() -> ParamDict {
    let mut p = ParamDict::new();
    for (name, shape) in expected_tensors(&ClipVisionConfig::tiny()) {
        let n = shape.iter().product();
        p.insert(name, Tensor::new(shape, vec![0.01; n]).unwrap());
    }
    p
}

#[test]
fn the_config_reader_never_panics_nor_over_allocates() {
    let weights = tiny_weights();
    let mut runner = runner(1024);
    let strategy = (
        proptest::collection::vec((0..FIELDS.len(), value()), 0..12),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(fields, nested)| {
            let mut obj = serde_json::to_value(ClipVisionConfig::tiny()).unwrap();
            for (i, v) in fields {
                obj[FIELDS[i]] = v;
            }
            if nested {
                obj = serde_json::json!({"vision_config": obj, "projection_dim": 32});
            }
            let text = obj.to_string();
            bounded(|| {
                if let Ok(cfg) = ClipVisionConfig::from_json_str(&text) {
                    let _ = ClipVisionModel::check_params(&cfg, &weights);
                }
            });
            Ok(())
        })
        .unwrap();
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..512), |bytes| {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            bounded(|| {
                let _ = ClipVisionConfig::from_json_str(&text);
            });
            Ok(())
        })
        .unwrap();
    // The sizes users reported.
    for layers in [1_000_000_000_000u64, 100_000, 1025] {
        let mut obj = serde_json::to_value(ClipVisionConfig::tiny()).unwrap();
        obj["num_hidden_layers"] = layers.into();
        let err = bounded(|| ClipVisionConfig::from_json_str(&obj.to_string())).unwrap_err();
        assert!(err.to_string().contains("num_hidden_layers"), "{err}");
    }
}
