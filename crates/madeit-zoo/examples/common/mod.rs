//! The fine-tuning run shared by the `finetune_*` examples.

use burn::prelude::*;
use madeit_data::ImageSet;
use madeit_params::ParamDict;
use madeit_vit::{LOGIT_SCALE, TaskHead};
use madeit_zoo::train::{CosineClassifier, TrainConfig, TrainLog, Trainee, train};
use madeit_zoo::{Zoo, tower_from_params};

/// Fine-tunes the tower `start` (of `zoo`'s configuration) on `train_set` against the frozen
/// `head` (cosine logits at CLIP's scale, only the tower moves), batches and augmentation
/// drawn from seed 7; `stage` names the run in errors. Returns the trained tower's weights
/// and the run's log.
pub fn finetune(
    zoo: &Zoo,
    start: &ParamDict,
    head: &TaskHead,
    train_set: &ImageSet,
    cfg: &TrainConfig,
    stage: &str,
) -> Result<(ParamDict, TrainLog), Box<dyn std::error::Error>> {
    let device = Device::flex().autodiff();
    let classifier = CosineClassifier::new(
        head.weight().to_vec(),
        head.num_classes(),
        head.dim(),
        LOGIT_SCALE,
        false,
        &device,
    )?;
    let vit = tower_from_params(zoo.config(), start, &device)?;
    let (trainee, log) = train(
        Trainee { vit, classifier },
        train_set,
        cfg,
        7,
        stage,
        &mut |_| {},
    )?;
    Ok((trainee.vit.to_params()?, log))
}
