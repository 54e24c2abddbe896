//! The stages of a build: pretraining, the name-based heads and the fine-tunes (with the
//! accuracy measurements that go into the manifest).

use super::*;

/// A seeded sample of at most `cap` indices of `0..n`, in increasing order.
pub(super) fn sample(n: usize, cap: Option<usize>, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if let Some(cap) = cap.filter(|&c| c < n) {
        shuffle(&mut idx, &mut ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(cap);
        idx.sort_unstable();
    }
    idx
}

/// The pretraining set: the pool's parts concatenated, labelled by class *name*: every
/// distinct name of the parts is one class (in order of first appearance), so that parts
/// sharing a name share its class vector.
pub(super) fn pretraining_set(
    cfg: &BuildConfig,
    parts: &[PretrainPart],
) -> Result<(ImageSet, Vec<PretrainPartSummary>)> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut class_names: Vec<String> = Vec::new();
    let mut summaries = Vec::with_capacity(parts.len());
    let mut dims = None;
    for (k, part) in parts.iter().enumerate() {
        let set = &part.images;
        if *dims.get_or_insert((set.height, set.width, set.channels))
            != (set.height, set.width, set.channels)
        {
            return Err(ZooError::InvalidData {
                what: "pretraining pool".into(),
                reason: format!("part `{}` has images of another size", part.task),
            });
        }
        let class_of: Vec<u32> = set
            .class_names
            .iter()
            .map(|name| match class_names.iter().position(|n| n == name) {
                Some(i) => i as u32,
                None => {
                    class_names.push(name.clone());
                    (class_names.len() - 1) as u32
                }
            })
            .collect();
        let idx = sample(
            set.n,
            cfg.pretrain_images_per_source,
            derive_seed(cfg.seed, STREAM_PRETRAIN_SUBSET + 1000 * k as u64),
        );
        let sub = set.subset(&idx)?;
        images.extend_from_slice(&sub.images);
        labels.extend(
            sub.labels
                .iter()
                .map(|&l| class_of.get(l as usize).copied().unwrap_or(0)),
        );
        summaries.push(PretrainPartSummary {
            task: part.task.to_owned(),
            source: part.source,
            images: sub.n,
            names: set.class_names.len(),
        });
    }
    let (h, w, c) = dims.ok_or_else(|| ZooError::InvalidData {
        what: "pretraining pool".into(),
        reason: "no source contributes pretraining images".into(),
    })?;
    let n = labels.len();
    Ok((
        ImageSet::new(images, n, h, w, c, labels, class_names)?,
        summaries,
    ))
}

/// What every stage of a build shares: the configuration, the staging folder, its
/// `stages/` folder of completion records, and the progress callback. The build makes one
/// and hands it to each stage in turn.
pub(super) struct StageContext<'a> {
    /// The build configuration.
    pub(super) cfg: &'a BuildConfig,
    /// The staging folder (`<zoo>.partial`).
    pub(super) staging: &'a Path,
    /// The staging folder's `stages/` folder: one JSON record per completed stage.
    pub(super) stages: &'a Path,
    /// Receives the build's progress.
    pub(super) on_event: &'a mut (dyn FnMut(&BuildEvent) + Send),
}

impl StageContext<'_> {
    /// Reports `event` to the progress callback.
    pub(super) fn emit(&mut self, event: &BuildEvent) {
        (self.on_event)(event);
    }
}

pub(super) fn progress<'a>(
    stage: &'a str,
    on_event: &'a mut (dyn FnMut(&BuildEvent) + Send),
) -> impl FnMut(&StepInfo) + 'a {
    move |s: &StepInfo| {
        on_event(&BuildEvent::Step {
            stage: stage.to_owned(),
            done: s.step,
            total: s.steps,
            loss: Some(s.loss),
        });
    }
}

pub(super) fn stage_pretrain(
    ctx: &mut StageContext<'_>,
    pool: &[PretrainPart],
) -> Result<PretrainSummary> {
    let (cfg, staging) = (ctx.cfg, ctx.staging);
    let record_path = ctx.stages.join("pretrain.json");
    let dir = staging.join(layout::pretrained_dir());
    if let Some(r) = read_record::<PretrainRecord>(&record_path)
        && layout::model_files(&dir).iter().all(|p| p.is_file())
        && staging.join(layout::names_file()).is_file()
    {
        ctx.emit(&BuildEvent::StageReused {
            stage: "pretrain".into(),
            detail: format!(
                "loss {:.3} -> {:.3}",
                r.summary.run.first_loss, r.summary.run.last_loss
            ),
        });
        return Ok(r.summary);
    }
    let (set, parts) = pretraining_set(cfg, pool)?;
    ctx.emit(&BuildEvent::StageStarted {
        stage: "pretrain".into(),
        total: cfg.pretrain.steps,
    });
    let device = Device::flex().autodiff();
    let vit = init_tower(&cfg.model, derive_seed(cfg.seed, STREAM_INIT), &device)?;
    let classifier = CosineClassifier::random(
        set.num_classes(),
        vit.embedding_dim(),
        cfg.pretrain_logit_scale,
        derive_seed(cfg.seed, STREAM_CLASSIFIER),
        &device,
    )?;
    let (trainee, log) = train(
        Trainee { vit, classifier },
        &set,
        &cfg.pretrain,
        derive_seed(cfg.seed, STREAM_PRETRAIN_BATCHES),
        "pretrain",
        &mut progress("pretrain", ctx.on_event),
    )?;
    save_tower(&dir, &cfg.model, &trainee.vit.to_params()?)?;
    crate::zoo::save_name_vectors(
        &staging.join(layout::names_file()),
        &NameVectors {
            names: set.class_names.clone(),
            dim: trainee.vit.embedding_dim(),
            vectors: trainee.classifier.weight()?,
        },
    )?;
    let summary = PretrainSummary {
        parts,
        classes: set.num_classes(),
        names: set.class_names.clone(),
        run: run_summary(&log, &cfg.pretrain),
        seed: cfg.seed,
    };
    write_json_atomic(
        &record_path,
        &PretrainRecord {
            summary: summary.clone(),
        },
    )?;
    ctx.emit(&BuildEvent::StageFinished {
        stage: "pretrain".into(),
        seconds: log.seconds,
        detail: format!(
            "{} images, {} classes, loss {:.3} -> {:.3}",
            set.n,
            set.num_classes(),
            log.first_loss,
            log.last_loss
        ),
    });
    Ok(summary)
}

pub(super) const STREAM_VAL: u64 = 300;

pub(super) fn accuracy_on(
    model: &ClipVisionModel,
    head: &TaskHead,
    task: &TaskData,
    cfg: &BuildConfig,
) -> Result<SplitAccuracy> {
    let val = task.split(Split::Val)?;
    let idx = sample(
        val.n,
        cfg.val_images,
        derive_seed(cfg.seed, STREAM_VAL + u64::from(task.spec.id)),
    );
    Ok(SplitAccuracy {
        val: evaluate(model, head, &val.subset(&idx)?, cfg.eval_batch_size)?,
        test: evaluate(model, head, &task.split(Split::Test)?, cfg.eval_batch_size)?,
    })
}

pub(super) fn stage_heads(
    ctx: &mut StageContext<'_>,
    tasks: &[TaskData],
    names: &NameVectors,
    pretrained: &ParamDict,
) -> Result<HeadsRecord> {
    let (cfg, staging) = (ctx.cfg, ctx.staging);
    let record_path = ctx.stages.join("heads.json");
    if let Some(r) = read_record::<HeadsRecord>(&record_path)
        && r.tasks.len() == tasks.len()
        && tasks
            .iter()
            .all(|t| staging.join(layout::head_file(t.spec.name)).is_file())
    {
        ctx.emit(&BuildEvent::StageReused {
            stage: "heads".into(),
            detail: format!("{} heads", r.tasks.len()),
        });
        return Ok(r);
    }
    let t0 = Instant::now();
    ctx.emit(&BuildEvent::StageStarted {
        stage: "heads".into(),
        total: tasks.len(),
    });
    let model = ClipVisionModel::from_params(&cfg.model, pretrained)?;
    let mut records = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter().enumerate() {
        let name = task.spec.name;
        let (head, seen) = name_head(
            name,
            task.class_names(),
            names,
            derive_seed(cfg.seed, STREAM_NAMES),
        )?;
        let path = staging.join(layout::head_file(name));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ZooError::io(parent, e))?;
        }
        head.save(&path)?;
        let pretrained_acc = accuracy_on(&model, &head, task, cfg)?;
        records.push(HeadRecord {
            task: name.to_owned(),
            head: HeadSummary {
                kind: "names".into(),
                classes: task.class_names().len(),
                names_seen: seen,
            },
            pretrained: pretrained_acc,
        });
        ctx.emit(&BuildEvent::Step {
            stage: "heads".into(),
            done: i + 1,
            total: tasks.len(),
            loss: None,
        });
    }
    let record = HeadsRecord {
        tasks: records,
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_json_atomic(&record_path, &record)?;
    let mean = record.tasks.iter().map(|r| r.pretrained.test).sum::<f64>()
        / record.tasks.len().max(1) as f64;
    ctx.emit(&BuildEvent::StageFinished {
        stage: "heads".into(),
        seconds: record.seconds,
        detail: format!("mean pretrained test accuracy {:.1} %", 100.0 * mean),
    });
    Ok(record)
}

/// The fine-tuning recipe of every zoo task: the tower `start` trained on `train_set` against
/// the frozen `head` (cosine logits at CLIP's scale, only the tower moves) for
/// [`BuildConfig::finetune_steps`]`(train_set.n)` steps of [`BuildConfig::finetune`] (a fresh
/// Adam and a fresh warm-up + cosine schedule), batches and augmentation drawn from `seed`.
/// `stage` names the run in errors; `on_step` is called after every step. Returns the
/// trained tower and the run's log.
///
/// The build fine-tunes each task from the pretrained tower with this function
/// ([`build_zoo`]); [`crate::sequential::sequential_finetune`] chains it through a task order.
///
/// # Errors
/// [`ZooError::InvalidData`] when the head does not fit the tower (its width is not the
/// tower's embedding width), the data is empty, its images do not fit the tower or a label
/// is not a class of the head; [`ZooError::Vit`] (a checkpoint report) when `start` does
/// not fit `cfg.model`; [`ZooError::Diverged`]; the configuration's and the backend's errors.
pub fn finetune_tower(
    cfg: &BuildConfig,
    start: &ParamDict,
    head: &TaskHead,
    train_set: &ImageSet,
    seed: u64,
    stage: &str,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<(ParamDict, TrainLog)> {
    let ft = cfg.finetune_config(train_set.n);
    let device = Device::flex().autodiff();
    let vit =
        tower_from_params(&cfg.model, start, &device)?.with_trainable(match cfg.finetune_scope {
            FinetuneScope::All => TrainableWeights::All,
            FinetuneScope::LinearWeights => TrainableWeights::LinearWeights,
            FinetuneScope::AttentionWeights => TrainableWeights::AttentionWeights,
        });
    if head.dim() != vit.embedding_dim() {
        return Err(ZooError::InvalidData {
            what: stage.into(),
            reason: format!(
                "the head `{}` has width {}, the tower embeds in {}",
                head.name(),
                head.dim(),
                vit.embedding_dim()
            ),
        });
    }
    let classifier = CosineClassifier::new(
        head.weight().to_vec(),
        head.num_classes(),
        head.dim(),
        cfg.finetune_logit_scale,
        false,
        &device,
    )?;
    let (trainee, log) = train(
        Trainee { vit, classifier },
        train_set,
        &ft,
        seed,
        stage,
        on_step,
    )?;
    Ok((trainee.vit.to_params()?, log))
}

pub(super) fn stage_finetune(
    ctx: &mut StageContext<'_>,
    task: &TaskData,
    pretrained: &ParamDict,
) -> Result<FinetuneRecord> {
    let (cfg, staging) = (ctx.cfg, ctx.staging);
    let name = task.spec.name;
    let stage = format!("finetune:{name}");
    let record_path = ctx.stages.join(format!("finetune-{name}.json"));
    let dir = staging.join(layout::finetuned_dir(name));
    if let Some(r) = read_record::<FinetuneRecord>(&record_path)
        && layout::model_files(&dir).iter().all(|p| p.is_file())
    {
        ctx.emit(&BuildEvent::StageReused {
            stage,
            detail: format!("test accuracy {:.1} %", 100.0 * r.finetuned.test),
        });
        return Ok(r);
    }
    let t0 = Instant::now();
    let train_set = task.split(Split::Train)?;
    let ft = cfg.finetune_config(train_set.n);
    ctx.emit(&BuildEvent::StageStarted {
        stage: stage.clone(),
        total: ft.steps,
    });
    let head = TaskHead::load(&staging.join(layout::head_file(name)))?;
    let seed = cfg.finetune_seed(task.spec.id);
    let (params, log) = finetune_tower(
        cfg,
        pretrained,
        &head,
        &train_set,
        seed,
        &stage,
        &mut progress(&stage, ctx.on_event),
    )?;
    save_tower(&dir, &cfg.model, &params)?;
    let model = ClipVisionModel::from_params(&cfg.model, &params)?;
    let finetuned = accuracy_on(&model, &head, task, cfg)?;
    let energy = task_vector_energy(pretrained, &params, &cfg.model, cfg.energy_fraction)?;
    let task_vector = TaskVectorNorm::of(pretrained, &params)?;
    let record = FinetuneRecord {
        task: name.to_owned(),
        seed,
        run: run_summary(&log, &ft),
        finetuned,
        energy,
        task_vector,
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_json_atomic(&record_path, &record)?;
    ctx.emit(&BuildEvent::StageFinished {
        stage,
        seconds: record.seconds,
        detail: format!(
            "loss {:.3} -> {:.3}, test accuracy {:.1} %, |tau|/|theta0| {:.2} %",
            log.first_loss,
            log.last_loss,
            100.0 * finetuned.test,
            100.0 * task_vector.ratio
        ),
    });
    Ok(record)
}
