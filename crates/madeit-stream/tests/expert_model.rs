//! The exchange form of an expert model: its factors as one named dict and the tasks each
//! expert serves, as `madeit merge` and the Python package write them.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use madeit_params::{ParamDict, Tensor};
use madeit_stream::{ExpertModel, LowRankExpert, TaskId};

fn expert(value: f32, tasks: &[&str]) -> LowRankExpert {
    LowRankExpert::new(
        Tensor::new(vec![2, 1], vec![value, value + 1.0]).unwrap(),
        Tensor::new(vec![1, 3], vec![value; 3]).unwrap(),
        tasks.iter().map(|t| TaskId::new(*t)).collect(),
    )
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
        &m.experts["a.fc2.weight"][1].up
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
