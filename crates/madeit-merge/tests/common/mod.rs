//! Shared helpers of the integration tests: tiny CLIP-like models and comparisons.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use madeit_merge::{
    ContinualMerger, MergeError, MergedModel, MergerState, MethodConfig, ParameterError, Step,
    TaskId,
};
use madeit_params::{ParamDict, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Names and shapes of a tiny one-layer CLIP-like vision tower.
pub fn layout(d: usize, f: usize) -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("embeddings.class_embedding", vec![d]),
        ("embeddings.patch_embedding.weight", vec![d, 3, 2, 2]),
        ("embeddings.position_embedding.weight", vec![5, d]),
        ("pre_layrnorm.weight", vec![d]),
        ("encoder.layers.0.self_attn.q_proj.weight", vec![d, d]),
        ("encoder.layers.0.self_attn.q_proj.bias", vec![d]),
        ("encoder.layers.0.mlp.fc1.weight", vec![f, d]),
        ("encoder.layers.0.mlp.fc1.bias", vec![f]),
        ("encoder.layers.0.mlp.fc2.weight", vec![d, f]),
        ("post_layernorm.bias", vec![d]),
    ]
}

/// A dictionary with the given layout and N(0, scale²) values.
pub fn random_dict(layout: &[(&str, Vec<usize>)], scale: f64, seed: u64) -> ParamDict {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = ParamDict::new();
    for (name, shape) in layout {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                let g: f64 = StandardNormal.sample(&mut rng);
                (g * scale) as f32
            })
            .collect();
        out.insert(*name, Tensor::new(shape.clone(), data).unwrap());
    }
    out
}

/// `a + b` elementwise (rounded to f32), as a new dictionary.
pub fn add(a: &ParamDict, b: &ParamDict) -> ParamDict {
    a.add(b).unwrap()
}

/// A pretrained model and `n` fine-tuned models with random task vectors.
pub fn stream(n: usize, seed: u64) -> (ParamDict, Vec<ParamDict>) {
    let lay = layout(6, 9);
    let pre = random_dict(&lay, 0.5, seed);
    let tasks = (0..n as u64)
        .map(|i| add(&pre, &random_dict(&lay, 0.1, seed * 1000 + i + 1)))
        .collect();
    (pre, tasks)
}

/// A one-tensor dictionary.
pub fn single(name: &str, shape: Vec<usize>, data: Vec<f32>) -> ParamDict {
    let mut p = ParamDict::new();
    p.insert(name, Tensor::new(shape, data).unwrap());
    p
}

/// Bit-for-bit equality of two dictionaries (names, order, shapes, dtypes, value bits).
pub fn assert_bit_identical(a: &ParamDict, b: &ParamDict) {
    let ka: Vec<&str> = a.keys().collect();
    let kb: Vec<&str> = b.keys().collect();
    assert_eq!(ka, kb, "tensor names differ");
    for (name, ta) in a.iter() {
        let tb = b.get(name).unwrap();
        assert_eq!(ta.shape(), tb.shape(), "shape of {name}");
        assert_eq!(ta.dtype(), tb.dtype(), "dtype of {name}");
        for (i, (x, y)) in ta.data().iter().zip(tb.data()).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "{name}[{i}]: {x} vs {y}");
        }
    }
}

/// Largest `|a − b|` over every element (the dictionaries must have the same names).
pub fn max_abs_diff(a: &ParamDict, b: &ParamDict) -> f64 {
    let mut worst = 0.0f64;
    for (name, ta) in a.iter() {
        let tb = b.get(name).unwrap();
        assert_eq!(ta.shape(), tb.shape(), "shape of {name}");
        for (x, y) in ta.data().iter().zip(tb.data()) {
            worst = worst.max((f64::from(*x) - f64::from(*y)).abs());
        }
    }
    worst
}

/// Builds a merger and absorbs the tasks named `t1, t2, ...`.
pub fn run(
    config: &MethodConfig,
    pre: &ParamDict,
    tasks: &[ParamDict],
) -> Box<dyn ContinualMerger> {
    let mut m = config.build().unwrap();
    for (i, ft) in tasks.iter().enumerate() {
        m.absorb(&Step::new(pre, ft, &TaskId::new(format!("t{}", i + 1))))
            .unwrap();
    }
    m
}

/// A merger with the default configuration of `method`.
pub fn build_default(method: &str) -> Box<dyn ContinualMerger> {
    MethodConfig::default_for(method).unwrap().build().unwrap()
}

/// [`run`] with the default configuration of `method`.
pub fn run_default(method: &str, pre: &ParamDict, tasks: &[ParamDict]) -> Box<dyn ContinualMerger> {
    run(&MethodConfig::default_for(method).unwrap(), pre, tasks)
}

/// The merged model of `method`'s default configuration after `tasks` ([`run_default`]).
pub fn merged_default(method: &str, pre: &ParamDict, tasks: &[ParamDict]) -> ParamDict {
    run_default(method, pre, tasks).merged(pre).unwrap()
}

/// Every element of `dict` as `(tensor name, flat index, value)`, in order.
pub fn elements(dict: &ParamDict) -> impl Iterator<Item = (&str, usize, f32)> {
    dict.iter()
        .flat_map(|(name, t)| t.data().iter().enumerate().map(move |(i, &x)| (name, i, x)))
}

/// `Σ_t (θ_t − θ_0)` at element `i` of tensor `name`, in `f64`, where `θ_0` is `p0`.
pub fn task_vector_sum(tasks: &[ParamDict], name: &str, i: usize, p0: f32) -> f64 {
    tasks
        .iter()
        .map(|t| f64::from(t.get(name).unwrap().data()[i]) - f64::from(p0))
        .sum()
}

/// The mean of the models `tasks` at element `i` of tensor `name`, in `f64`.
pub fn mean_at(tasks: &[ParamDict], name: &str, i: usize) -> f64 {
    tasks
        .iter()
        .map(|m| f64::from(m.get(name).unwrap().data()[i]))
        .sum::<f64>()
        / tasks.len() as f64
}

/// Parses `toml` and asserts that the configuration is refused: its check with
/// [`MergeError::InvalidParameter`] naming its method and `parameter`, and its build.
pub fn assert_rejected(toml: &str, parameter: &str) {
    let bad = MethodConfig::from_toml_str(toml).unwrap();
    match bad.check() {
        Err(MergeError::InvalidParameter(ParameterError {
            method,
            parameter: p,
            ..
        })) => assert_eq!((method, p), (bad.name(), parameter), "{toml}"),
        other => panic!("{toml}: expected InvalidParameter, got {other:?}"),
    }
    assert!(bad.build().is_err(), "{toml}");
}

/// A copy of `dict` with tensor `name` flattened to one dimension (and moved last).
pub fn flattened(dict: &ParamDict, name: &str) -> ParamDict {
    let mut out = dict.clone();
    let t = out.remove(name).unwrap();
    let n = t.numel();
    out.insert(name, t.reshape(vec![n]).unwrap());
    out
}

/// A copy of `dict` with element `index` of tensor `name` set to `value`.
pub fn with_value(dict: &ParamDict, name: &str, index: usize, value: f32) -> ParamDict {
    let mut out = dict.clone();
    out.get_mut(name).unwrap().data_mut()[index] = value;
    out
}

/// Saves a state through safetensors bytes and JSON text and reads it back, as a caller
/// storing it on disk would.
pub fn round_trip(state: &MergerState) -> MergerState {
    let json = state.metadata_json().unwrap();
    let bytes = state
        .tensors
        .to_safetensors_bytes(&madeit_params::SaveOptions::default())
        .unwrap();
    let (tensors, _) = ParamDict::from_safetensors_bytes(&bytes).unwrap();
    MergerState::from_parts(&json, tensors).unwrap()
}

/// Checks that a stream of `config` over `tasks` (named `t0, t1, ...`), saved after every
/// possible number of tasks, written out and read back ([`round_trip`]) and resumed, gives
/// bit-identical step reports, tasks, merged models and states to the uninterrupted stream.
pub fn assert_resumes_bit_identically(config: &MethodConfig, pre: &ParamDict, tasks: &[ParamDict]) {
    let name = |i: usize| TaskId::new(format!("t{i}"));
    let mut whole = config.build().unwrap();
    let reports: Vec<_> = tasks
        .iter()
        .enumerate()
        .map(|(i, ft)| whole.absorb(&Step::new(pre, ft, &name(i))).unwrap())
        .collect();
    for cut in 0..tasks.len() {
        let mut first = config.build().unwrap();
        for (i, ft) in tasks.iter().enumerate().take(cut) {
            first.absorb(&Step::new(pre, ft, &name(i))).unwrap();
        }
        let state = round_trip(&first.state().unwrap());
        let mut resumed = madeit_merge::resume(&state).unwrap();
        assert_eq!(resumed.num_tasks(), cut);
        assert_eq!(resumed.state().unwrap(), first.state().unwrap());
        drop(first);
        for (i, ft) in tasks.iter().enumerate().skip(cut) {
            let r = resumed.absorb(&Step::new(pre, ft, &name(i))).unwrap();
            assert_eq!(
                r,
                reports[i],
                "{}: report of step {i} after a cut at {cut}",
                config.name()
            );
        }
        assert_eq!(resumed.tasks(), whole.tasks());
        assert_same_model(
            &resumed.merged_model(pre).unwrap(),
            &whole.merged_model(pre).unwrap(),
        );
        assert_eq!(
            resumed.state().unwrap(),
            whole.state().unwrap(),
            "{}: states differ",
            config.name()
        );
    }
}

/// Every method configuration worth testing (defaults plus the non-default options).
pub fn all_configs() -> Vec<MethodConfig> {
    let mut out: Vec<MethodConfig> = madeit_merge::METHODS
        .iter()
        .map(|m| MethodConfig::default_for(m.name).unwrap())
        .collect();
    out.push(MethodConfig::from_toml_str("method = \"ties\"\naggregate = \"mean\"").unwrap());
    out.push(MethodConfig::from_toml_str("method = \"ties\"\naggregate = \"max\"").unwrap());
    out.push(
        MethodConfig::from_toml_str("method = \"opcm\"\nclass_embedding_quirk = false").unwrap(),
    );
    out
}

/// The dense weights of a merged model, or the backbone of an expert model.
pub fn weights(model: &MergedModel) -> &ParamDict {
    match model {
        MergedModel::Dense(p) => p,
        MergedModel::Experts(m) => &m.backbone,
        _ => panic!("unknown kind of merged model"),
    }
}

/// Bit-for-bit equality of two merged models (weights, and every expert's factors, tasks
/// and routing rule).
pub fn assert_same_model(a: &MergedModel, b: &MergedModel) {
    assert_bit_identical(weights(a), weights(b));
    match (a, b) {
        (MergedModel::Dense(_), MergedModel::Dense(_)) => {}
        (MergedModel::Experts(x), MergedModel::Experts(y)) => {
            assert_eq!(x.routing, y.routing, "routing rules differ");
            let kx: Vec<&String> = x.experts.keys().collect();
            let ky: Vec<&String> = y.experts.keys().collect();
            assert_eq!(kx, ky, "expert modules differ");
            for (name, ex) in &x.experts {
                let ey = &y.experts[name];
                assert_eq!(ex.len(), ey.len(), "number of experts of {name}");
                for (e, (p, q)) in ex.iter().zip(ey).enumerate() {
                    assert_eq!(p.tasks, q.tasks, "tasks of {name} expert {e}");
                    for (s, t) in [(&p.up(), &q.up()), (&p.down(), &q.down())] {
                        assert_eq!(s.shape(), t.shape(), "{name} expert {e}");
                        for (u, v) in s.data().iter().zip(t.data()) {
                            assert_eq!(u.to_bits(), v.to_bits(), "{name} expert {e}");
                        }
                    }
                }
            }
        }
        _ => panic!("the models are of different kinds"),
    }
}

/// `A B` in `f64`.
pub fn mm(a: faer::MatRef<'_, f64>, b: faer::MatRef<'_, f64>) -> faer::Mat<f64> {
    let mut out = faer::Mat::zeros(a.nrows(), b.ncols());
    faer::linalg::matmul::matmul(
        out.as_mut(),
        faer::Accum::Replace,
        a,
        b,
        1.0,
        faer::Par::Seq,
    );
    out
}

/// `max |A_ij - B_ij|` of two matrices of one shape.
pub fn mat_max_abs_diff(a: faer::MatRef<'_, f64>, b: faer::MatRef<'_, f64>) -> f64 {
    let mut worst = 0.0f64;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            worst = worst.max((a[(i, j)] - b[(i, j)]).abs());
        }
    }
    worst
}
