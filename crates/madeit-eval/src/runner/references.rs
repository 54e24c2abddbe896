//! The reference rows of a benchmark: the pretrained tower on every task and each
//! fine-tuned tower on its own task.

use super::*;

/// The order-independent reference rows: the pretrained tower's accuracy on every task
/// (heads only) and every fine-tuned tower's accuracy on its own task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct References {
    /// Task names, in benchmark order.
    pub tasks: Vec<String>,
    /// Pretrained accuracy per task.
    pub pretrained: Vec<f64>,
    /// Fine-tuned (individual) accuracy per task.
    pub finetuned: Vec<f64>,
}

impl References {
    /// Mean pretrained accuracy over the tasks.
    #[must_use]
    pub fn pretrained_mean(&self) -> f64 {
        mean(&self.pretrained)
    }

    /// Mean fine-tuned accuracy over the tasks.
    #[must_use]
    pub fn finetuned_mean(&self) -> f64 {
        mean(&self.finetuned)
    }
}

fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        0.0
    } else {
        x.iter().sum::<f64>() / x.len() as f64
    }
}

/// Computes the [`References`] of `bench` (loading one fine-tuned checkpoint at a time).
///
/// # Errors
/// As [`Benchmark::load_finetuned`] and [`Evaluator::session`]'s evaluations.
pub fn reference_rows(
    bench: &Benchmark,
    evaluator: &Evaluator,
    pretrained: &ParamDict,
    progress: &mut dyn FnMut(&RunEvent),
) -> Result<References, RunError> {
    let names = bench.task_names();
    let base = MergedModel::Dense(pretrained.clone());
    let mut session = evaluator.session(&base);
    let mut pre = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let a = session.accuracy(i)?.accuracy;
        progress(&RunEvent::ReferenceEvaluated {
            kind: "pretrained",
            task: name.clone(),
            accuracy: a,
        });
        pre.push(a);
    }
    drop(session);
    drop(base);
    let mut ft = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let model = MergedModel::Dense(bench.load_finetuned(i, pretrained)?);
        let a = evaluator.session(&model).accuracy(i)?.accuracy;
        progress(&RunEvent::ReferenceEvaluated {
            kind: "finetuned",
            task: name.clone(),
            accuracy: a,
        });
        ft.push(a);
    }
    Ok(References {
        tasks: names,
        pretrained: pre,
        finetuned: ft,
    })
}
