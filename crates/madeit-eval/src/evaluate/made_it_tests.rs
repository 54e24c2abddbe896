//! MADE-IT's expert models in the evaluator: the router follows `MadeIt::route` on the
//! captured module inputs, and the oracle path is the dense model `θ_0 + expert`.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use super::*;
use madeit_merge::made_it::{FeatureBatch, MadeIt, MadeItConfig};
use madeit_merge::{ContinualMethod, MadeItMerger, MergedModel, Step};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

// The random towers of the integration tests.
#[path = "../../tests/common/random.rs"]
mod random;
use random::{normal, perturbed, random_tower};

/// A merger that absorbed `n` random tasks, with the pretrained tower.
fn stream(config: &ClipVisionConfig, n: u64, made_it: MadeItConfig) -> (ParamDict, MadeItMerger) {
    let pre = random_tower(config, 1);
    let mut m = MadeItMerger::new(made_it).unwrap();
    for t in 0..n {
        m.absorb(&Step::new(
            &pre,
            &perturbed(&pre, 100 + t, 0.05),
            &TaskId::new(format!("task{t}")),
        ))
        .unwrap();
    }
    (pre, m)
}

fn expert_model(m: &MadeItMerger, pre: &ParamDict) -> ExpertModel {
    match m.merged_model(pre).unwrap() {
        MergedModel::Experts(x) => x,
        other => panic!("expected experts, got {other:?}"),
    }
}

fn pixels(config: &ClipVisionConfig, batch: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    normal(
        &mut rng,
        batch * config.num_channels * config.image_size * config.image_size,
        1.0,
    )
}

fn module_id(state: &MadeIt, index: usize) -> ModuleId {
    let key = &state.modules()[index].module().weight_key;
    let (id, true) = ModuleId::parse(key).unwrap() else {
        panic!("{key} is not a weight")
    };
    id
}

#[test]
fn the_router_takes_the_path_made_it_takes_on_the_captured_inputs() {
    for tokens in [
        madeit_merge::made_it::TokenAggregation::Frobenius,
        madeit_merge::made_it::TokenAggregation::ClsOnly,
    ] {
        router_matches_made_it(tokens);
    }
}

fn router_matches_made_it(tokens: madeit_merge::made_it::TokenAggregation) {
    let config = ClipVisionConfig::tiny();
    // A low threshold, so that modules differ in their number of experts and paths have
    // bifurcations.
    let (pre, merger) = stream(
        &config,
        4,
        MadeItConfig {
            rho: 0.1,
            kappa: 0.0,
            token_aggregation: tokens,
            ..MadeItConfig::default()
        },
    );
    let model = expert_model(&merger, &pre);
    let state = merger.experts();
    let counts = state.expert_counts();
    assert!(counts.iter().any(|&c| c > 1), "{counts:?}");

    let tower = ExpertTower::new(&config, &model, &Device::flex()).unwrap();
    let batch = 6;
    let px = tower
        .model
        .pixels(pixels(&config, batch, 7), batch)
        .unwrap();
    let router = model_router(&ProjectionRouter::default(), model.routing)
        .expect("the default router defers to MADE-IT's rule");
    let want = match tokens {
        madeit_merge::made_it::TokenAggregation::ClsOnly => "made_it-paths-cls",
        _ => "made_it-paths",
    };
    assert_eq!(router.name(), want);
    let routing = router
        .route(&RouteRequest {
            model: &tower.model,
            bank: &tower.bank,
            expert_tasks: &tower.expert_tasks,
            pixels: &px,
            task: "unused",
        })
        .unwrap();

    // MADE-IT's own routing of the module inputs of the same backbone pass.
    let (_, inputs) = tower.model.forward_with_inputs(px, None).unwrap();
    let hosts: Vec<HostTensor> = (0..state.modules().len())
        .map(|i| inputs.to_host(module_id(state, i)).unwrap())
        .collect();
    let batches: Vec<FeatureBatch<'_>> = hosts
        .iter()
        .map(|t| {
            let &[b, n, d] = t.shape() else {
                panic!("{:?}", t.shape())
            };
            FeatureBatch::new(t.data(), b, n, d).unwrap()
        })
        .collect();
    let paths = state.route_batch(&batches).unwrap();
    for (i, path) in paths.iter().enumerate() {
        for (m, &e) in path.experts.iter().enumerate() {
            let got = routing.get(module_id(state, m)).unwrap()[i];
            assert_eq!(got, Some(e), "sample {i}, module {m}");
        }
    }
}

#[test]
fn the_oracle_path_of_a_single_task_stream_is_the_dense_model() {
    let config = ClipVisionConfig::tiny();
    let (pre, merger) = stream(
        &config,
        1,
        MadeItConfig {
            rho: 0.25,
            ..MadeItConfig::default()
        },
    );
    let model = expert_model(&merger, &pre);
    let tower = ExpertTower::new(&config, &model, &Device::flex()).unwrap();
    // The oracle is used as configured: it does not defer to the model's rule.
    assert!(model_router(&OracleRouter, model.routing).is_none());
    let batch = 4;
    let px = tower
        .model
        .pixels(pixels(&config, batch, 9), batch)
        .unwrap();
    let routing = OracleRouter
        .route(&RouteRequest {
            model: &tower.model,
            bank: &tower.bank,
            expert_tasks: &tower.expert_tasks,
            pixels: &px,
            task: "task0",
        })
        .unwrap();
    let routed = tower
        .model
        .forward_routed(px.clone(), &tower.bank, &routing)
        .unwrap()
        .embedding();

    // θ0 + up · down on every target weight, as dense weights; also MadeIt::materialize.
    let state = merger.experts();
    let dense = state
        .materialize(&pre, &state.task_path(0).unwrap())
        .unwrap();
    let mut by_hand = model.backbone.clone();
    for (name, experts) in &model.experts {
        let [x] = experts.as_slice() else {
            panic!("one task gives one expert per module")
        };
        let (up, down) = (x.up(), x.down());
        let delta =
            madeit_vit::LowRankFactors::from_ba(up.as_mat().unwrap(), down.as_mat().unwrap())
                .unwrap()
                .to_dense()
                .unwrap();
        by_hand.get_mut(name).unwrap().axpy(1.0, &delta).unwrap();
    }
    for (name, t) in dense.iter() {
        for (a, b) in t.data().iter().zip(by_hand.get(name).unwrap().data()) {
            assert!((a - b).abs() < 1e-5, "{name}: {a} vs {b}");
        }
    }
    let want = ClipVisionModel::from_params(&config, &dense)
        .unwrap()
        .forward(px)
        .unwrap()
        .embedding();
    let (got, want) = (
        madeit_vit::to_host(&routed).unwrap(),
        madeit_vit::to_host(&want).unwrap(),
    );
    assert_eq!(got.shape(), want.shape());
    let worst = got.max_abs_diff(&want).unwrap();
    assert!(
        worst < 1e-3,
        "routed and dense embeddings differ by {worst}"
    );
}

#[test]
fn made_it_models_are_keyed_by_their_routing_rule() {
    let config = ClipVisionConfig::tiny();
    let (pre, merger) = stream(&config, 1, MadeItConfig::default());
    let model = expert_model(&merger, &pre);
    let per_module = MergedModel::Experts(model.clone().with_routing(ExpertRouting::PerModule));
    let made_it = MergedModel::Experts(model);
    assert_ne!(model_key(&per_module), model_key(&made_it));
    assert!(model_router(&ProjectionRouter::default(), ExpertRouting::PerModule).is_none());
    assert!(
        model_router(
            &ProjectionRouter {
                tokens: TokenAggregation::ClsOnly
            },
            ExpertRouting::MadeItPaths {
                tokens: madeit_merge::made_it::TokenAggregation::Frobenius
            }
        )
        .is_none()
    );
}
