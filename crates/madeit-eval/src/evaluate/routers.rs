//! The expert routers of the evaluator: which expert each sample takes in each module.
//! [`ProjectionRouter`] scores module inputs of a backbone pass, [`MadeItRouter`] applies
//! MADE-IT's path-consistent routing to those scores, [`OracleRouter`] uses the task label.

use super::*;

/// What a router sees for one batch.
#[derive(Debug)]
#[non_exhaustive]
pub struct RouteRequest<'a> {
    /// The backbone tower.
    pub model: &'a ClipVisionModel,
    /// The experts, uploaded.
    pub bank: &'a ExpertBank,
    /// Per module with experts, the tasks each of its experts serves (expert-index order).
    pub expert_tasks: &'a [(ModuleId, Vec<Vec<TaskId>>)],
    /// The normalised pixels of the batch, `[batch, C, H, W]`.
    pub pixels: &'a Tensor<4>,
    /// The task whose test split the batch comes from. A continual method must not use it;
    /// it exists for oracle baselines.
    pub task: &'a str,
}

/// Chooses, for every sample of a batch, which expert each module uses.
pub trait ExpertRouter: Send + Sync + std::fmt::Debug {
    /// A short name, recorded with the results (`projection`, `oracle`, ...).
    fn name(&self) -> String;

    /// The routing table of one batch.
    ///
    /// # Errors
    /// Any [`RunError`]; the evaluation stops with it.
    fn route(&self, request: &RouteRequest<'_>) -> Result<Routing, RunError>;

    /// Whether an expert model that prescribes its own routing rule (for example
    /// [`ExpertRouting::MadeItPaths`]) is routed by that rule instead of by this router.
    /// `false` unless a router says otherwise; the default [`ProjectionRouter`] (all tokens)
    /// says `true`.
    fn defers_to_model(&self) -> bool {
        false
    }
}

/// Routes every module independently to the expert whose input subspace best holds the
/// sample's module input: with `X_i` the input of module `m` for sample `i` in a backbone
/// pass and `V_e` expert `e`'s input factor, `e* = argmax_e ‖X_i V_e‖_F / ‖X_i‖_F`
/// ([`ClipVisionModel::forward_scored`]; the first expert wins ties). The score is the
/// feature-projection alignment when `V_e` has orthonormal columns.
#[derive(Debug, Clone, Copy)]
pub struct ProjectionRouter {
    /// Which tokens enter the score (default: all of them, [`TokenAggregation::Frobenius`]).
    pub tokens: TokenAggregation,
}

impl Default for ProjectionRouter {
    fn default() -> Self {
        Self {
            tokens: TokenAggregation::Frobenius,
        }
    }
}

impl ExpertRouter for ProjectionRouter {
    fn name(&self) -> String {
        match self.tokens {
            TokenAggregation::ClsOnly => "projection-cls".into(),
            _ => "projection".into(),
        }
    }

    fn defers_to_model(&self) -> bool {
        self.tokens == TokenAggregation::Frobenius
    }

    fn route(&self, r: &RouteRequest<'_>) -> Result<Routing, RunError> {
        let batch = r.pixels.dims()[0];
        let (_, scores) = r
            .model
            .forward_scored(r.pixels.clone(), r.bank, None, self.tokens)?;
        let mut routing = Routing::new(batch);
        for m in r.bank.modules() {
            let e = scores.num_experts(m);
            let choices = (0..batch)
                .map(|i| {
                    (0..e)
                        .filter_map(|k| scores.get(m, i, k).map(|s| (k, s)))
                        .fold(None, |best: Option<(usize, f32)>, (k, s)| match best {
                            Some((_, b)) if b >= s => best,
                            _ => Some((k, s)),
                        })
                        .map(|(k, _)| k)
                })
                .collect();
            routing.set(m, choices)?;
        }
        Ok(routing)
    }
}

/// MADE-IT's implicit routing: the feature-projection alignment of every expert of every
/// module from one backbone pass ([`ClipVisionModel::forward_scored`], the scores of
/// [`ProjectionRouter`]), then, per sample, the path-consistent propagation of
/// [`madeit_merge::made_it::routing`]: the anchor module (most experts, the deepest on ties) takes
/// its best-scoring expert and the active task set `S` of that expert; the other modules
/// are visited outward from the anchor (the deeper first at equal distance) and take the
/// only expert sharing a task with `S`, or at a bifurcation the best-scoring such expert,
/// with `S <- S ∩ tasks(pick)` ([`madeit_merge::made_it::route_from_scores`], the code
/// `MadeIt::route` runs).
///
/// The score is `‖X V_e‖_F / ‖X‖_F` with `V_e = down_e^T`; MADE-IT stores experts as
/// `up = U diag(s)`, `down = V^T` with orthonormal `V`, so it is exactly the FPA. Modules
/// are taken in forward order (layer, then q, k, v, out_proj, fc1, fc2) and task names
/// are only compared with each other. Scores come from the tower in `f32`; `MadeIt::route`
/// accumulates norms in `f64`, so the two can differ on near-ties of the order of `1e-6`.
#[derive(Debug, Clone, Copy)]
pub struct MadeItRouter {
    /// Which tokens enter the score (default: all of them, [`TokenAggregation::Frobenius`]).
    pub tokens: TokenAggregation,
}

impl Default for MadeItRouter {
    fn default() -> Self {
        Self {
            tokens: TokenAggregation::Frobenius,
        }
    }
}

impl MadeItRouter {
    /// The router of an expert model's routing rule, if the rule is MADE-IT's.
    #[must_use]
    pub fn for_rule(rule: ExpertRouting) -> Option<Self> {
        match rule {
            ExpertRouting::MadeItPaths { tokens } => Some(Self { tokens }),
            _ => None,
        }
    }
}

impl ExpertRouter for MadeItRouter {
    fn name(&self) -> String {
        match self.tokens {
            TokenAggregation::ClsOnly => "made_it-paths-cls".into(),
            _ => "made_it-paths".into(),
        }
    }

    fn route(&self, r: &RouteRequest<'_>) -> Result<Routing, RunError> {
        let batch = r.pixels.dims()[0];
        let (_, scores) = r
            .model
            .forward_scored(r.pixels.clone(), r.bank, None, self.tokens)?;
        // Modules with experts, in forward order, with their experts' task sets.
        let mut ids: BTreeMap<&str, u32> = BTreeMap::new();
        let mut modules: Vec<(ModuleId, Vec<BTreeSet<u32>>)> = Vec::new();
        for (m, experts) in r.expert_tasks {
            if r.bank.num_experts(*m) == 0 {
                continue;
            }
            let sets = experts
                .iter()
                .map(|tasks| {
                    tasks
                        .iter()
                        .map(|t| {
                            let next = u32::try_from(ids.len()).unwrap_or(u32::MAX);
                            *ids.entry(t.as_str()).or_insert(next)
                        })
                        .collect()
                })
                .collect();
            modules.push((*m, sets));
        }
        modules.sort_by_key(|(m, _)| *m);
        let sets: Vec<Vec<BTreeSet<u32>>> = modules.iter().map(|(_, s)| s.clone()).collect();
        let fail = |reason: String| RunError::Experts { reason };
        let mut choices = vec![Vec::with_capacity(batch); modules.len()];
        for i in 0..batch {
            let sample = modules
                .iter()
                .map(|(m, s)| {
                    (0..s.len())
                        .map(|e| {
                            scores.get(*m, i, e).map(f64::from).ok_or_else(|| {
                                fail(format!("no routing score for expert {e} of `{m}`"))
                            })
                        })
                        .collect::<Result<Vec<f64>, RunError>>()
                })
                .collect::<Result<Vec<_>, RunError>>()?;
            let path = madeit_merge::made_it::route_from_scores(&sets, &sample)
                .map_err(|e| fail(format!("MADE-IT routing of sample {i}: {e}")))?;
            for (c, &e) in choices.iter_mut().zip(&path.experts) {
                c.push(Some(e));
            }
        }
        let mut routing = Routing::new(batch);
        for ((m, _), c) in modules.iter().zip(choices) {
            routing.set(*m, c)?;
        }
        Ok(routing)
    }
}

/// The router that evaluates a model with routing rule `rule` when `configured` is the
/// router asked for: MADE-IT's own router for a [`ExpertRouting::MadeItPaths`] model if
/// `configured` [defers to it](ExpertRouter::defers_to_model), `None` to use `configured`.
#[must_use]
pub fn model_router(configured: &dyn ExpertRouter, rule: ExpertRouting) -> Option<MadeItRouter> {
    if configured.defers_to_model() {
        MadeItRouter::for_rule(rule)
    } else {
        None
    }
}

/// Routes every sample of a task's test split to the (first) expert that serves that task,
/// in every module; modules with no such expert add nothing. It reads the task label, so it
/// is an upper bound for routing, not a continual method.
#[derive(Debug, Clone, Copy, Default)]
pub struct OracleRouter;

impl ExpertRouter for OracleRouter {
    fn name(&self) -> String {
        "oracle".into()
    }

    fn route(&self, r: &RouteRequest<'_>) -> Result<Routing, RunError> {
        let batch = r.pixels.dims()[0];
        let mut routing = Routing::new(batch);
        for (m, experts) in r.expert_tasks {
            let choice = experts
                .iter()
                .position(|tasks| tasks.iter().any(|t| t.as_str() == r.task));
            routing.set(*m, vec![choice; batch])?;
        }
        Ok(routing)
    }
}
