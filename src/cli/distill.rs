//! `wgtrain distill`: train a student model on a mix of one or more
//! teachers' softened probabilities and the true labels (knowledge
//! distillation), with every flag of `wgtrain train`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::train::{DistillFlags, TrainArgs};
use super::GivenArgs;

#[derive(Debug, Args)]
pub(crate) struct DistillArgs {
    /// The teacher models, comma-separated: f32 models (a compressed one is
    /// dequantized to f32) of the student's input shape and classes. Each
    /// applies its own preprocessing to the raw input, and runs its forward
    /// pass on every training batch (the same shifted rows as the
    /// student's, without dropout) on the same device, within the step.
    /// With several, the soft target is the mean of their probabilities at
    /// --temperature. Required, except with --resume (the checkpoint's).
    #[arg(long, value_name = "T[,T2,...]")]
    teacher: Option<String>,
    /// The temperature T above 0 that softens the teachers' and the
    /// student's softmax in the soft-target term, softmax(z / T).
    #[arg(long, default_value_t = 4.0, value_name = "T")]
    temperature: f32,
    /// The weight of the soft targets, in [0, 1]: each example's loss is
    /// alpha * T^2 * KL(p_teacher,T || softmax(z / T)) + (1 - alpha) *
    /// CE(label, softmax(z)) (Hinton et al., 2015), with --label-smoothing
    /// applying to the label term; 0 is plain training.
    #[arg(long, default_value_t = 0.7, value_name = "A")]
    alpha: f32,
    /// Store the teachers' probabilities at --temperature of every
    /// (unshifted) training example in FILE, computed once on the CPU, and
    /// read each step's rows from it instead of running the teachers; a
    /// FILE made from these teachers, data and temperature is reused,
    /// another refused. Not with --shift (the teachers would see other
    /// images than the student).
    #[arg(long, value_name = "FILE")]
    teacher_cache: Option<PathBuf>,
    #[command(flatten)]
    train: TrainArgs,
}

/// The ids of the flags `distill` adds to `train`'s.
const DISTILL_IDS: &[&str] = &["teacher", "temperature", "alpha", "teacher_cache"];

/// Run `wgtrain distill`: `given` holds every flag of the command line by
/// id; the training ones go to `train`'s run (and its checkpoints), the
/// distillation ones beside them.
pub(crate) fn run(a: DistillArgs, given: GivenArgs) -> Result<()> {
    let (distill_given, train_given): (GivenArgs, GivenArgs) = given
        .into_iter()
        .partition(|(id, _)| DISTILL_IDS.contains(&id.as_str()));
    let flags = DistillFlags {
        teacher: a.teacher,
        cache: a.teacher_cache,
        temperature: a.temperature,
        alpha: a.alpha,
        given: distill_given.into_iter().map(|(id, _)| id).collect(),
    };
    super::train::run_with(a.train, train_given, Some(flags))
}
