//! The exchange form of an expert model: its factors as one named dict and the tasks each
//! expert serves, as `madeit merge` and the Python package write them.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use madeit_params::ParamDict;
use madeit_stream::{ExpertModel, FactorsError, LowRankExpert, LowRankFactors, TaskId};

fn expert(value: f32, tasks: &[&str]) -> LowRankExpert {
    // u = [value, value + 1]^T (2 x 1), s = [1], v = [value; 3] (3 x 1).
    let factors =
        LowRankFactors::new(2, 3, vec![value, value + 1.0], vec![1.0], vec![value; 3]).unwrap();
    LowRankExpert::new(factors, tasks.iter().map(|t| TaskId::new(*t)).collect())
}

#[test]
fn factors_and_tasks_are_named_per_module_and_expert() {
    let mut m = ExpertModel::new(ParamDict::new());
    // Module order is insertion order (not sorted).
    m.experts
        .insert("z.fc1.weight".into(), vec![expert(1.0, &["a", "b"])]);
    m.experts.insert(
        "a.fc2.weight".into(),
        vec![expert(2.0, &["a"]), expert(3.0, &["b", "c"])],
    );
    let f = m.factor_dict();
    let keys: Vec<&str> = f.keys().collect();
    assert_eq!(
        keys,
        [
            "z.fc1.weight.expert0.up",
            "z.fc1.weight.expert0.down",
            "a.fc2.weight.expert0.up",
            "a.fc2.weight.expert0.down",
            "a.fc2.weight.expert1.up",
            "a.fc2.weight.expert1.down",
        ]
    );
    assert_eq!(
        f.get("a.fc2.weight.expert1.up").unwrap(),
        &m.experts["a.fc2.weight"][1].up()
    );
    assert_eq!(f.get("z.fc1.weight.expert0.down").unwrap().shape(), &[1, 3]);

    let tasks = m.expert_tasks();
    let modules: Vec<&String> = tasks.keys().collect();
    assert_eq!(modules, ["z.fc1.weight", "a.fc2.weight"]);
    assert_eq!(tasks["z.fc1.weight"], vec![vec!["a", "b"]]);
    assert_eq!(tasks["a.fc2.weight"], vec![vec!["a"], vec!["b", "c"]]);

    // No experts: nothing to write.
    let empty = ExpertModel::new(ParamDict::new());
    assert!(empty.factor_dict().is_empty() && empty.expert_tasks().is_empty());
}

#[test]
fn the_exchange_form_puts_s_on_up_and_multiplies_back_to_the_dense_update() {
    // U = [[1, 0], [0, 1], [1, 1]] (3 x 2), s = [2, 0.5], V = [[1, 2], [3, 4]] (2 x 2).
    let u = vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    let v = vec![1.0, 2.0, 3.0, 4.0];
    let f = LowRankFactors::new(3, 2, u, vec![2.0, 0.5], v).unwrap();
    let x = LowRankExpert::new(f.clone(), vec![TaskId::new("t")]);
    let (up, down) = (x.up(), x.down());
    assert_eq!(up.shape(), &[3, 2]);
    assert_eq!(up.data(), &[2.0, 0.0, 0.0, 0.5, 2.0, 0.5]);
    assert_eq!(down.shape(), &[2, 2]);
    assert_eq!(down.data(), &[1.0, 3.0, 2.0, 4.0]);
    let dense = f.to_dense().unwrap();
    let product = up.as_mat().unwrap() * down.as_mat().unwrap();
    for i in 0..3 {
        for j in 0..2 {
            assert_eq!(product[(i, j)], dense.data()[i * 2 + j], "({i}, {j})");
        }
    }
}

#[test]
fn inconsistent_or_non_finite_factors_are_refused() {
    let shape = LowRankFactors::new(2, 3, vec![1.0; 3], vec![1.0], vec![1.0; 3]).unwrap_err();
    assert!(matches!(shape, FactorsError::Shape { .. }), "{shape}");
    let empty = LowRankFactors::new(2, 3, vec![], vec![], vec![]).unwrap_err();
    assert!(matches!(empty, FactorsError::Shape { .. }), "{empty}");
    let nan = LowRankFactors::new(2, 1, vec![1.0, f32::NAN], vec![1.0], vec![1.0]).unwrap_err();
    assert!(
        matches!(&nan, FactorsError::NonFinite { index: 1, .. }),
        "{nan}"
    );
}
