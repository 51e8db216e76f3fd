//! `wgtrain distill`: train a student model on a mix of one or more
//! teachers' softened probabilities and the true labels (knowledge
//! distillation), with every flag of `wgtrain train`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::train::{Distill, DistillFlags, TrainArgs};
use super::GivenArgs;
use wgtrain::backend::{join_sizes, Distillation};
use wgtrain::model::{AnyModel, Mlp};

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
    #[command(flatten)]
    train: TrainArgs,
}

/// The ids of the flags `distill` adds to `train`'s.
const DISTILL_IDS: &[&str] = &["teacher", "temperature", "alpha"];

/// Run `wgtrain distill`: `given` holds every flag of the command line by
/// id; the training ones go to `train`'s run (and its checkpoints), the
/// distillation ones beside them.
pub(crate) fn run(a: DistillArgs, given: GivenArgs) -> Result<()> {
    let (distill_given, train_given): (GivenArgs, GivenArgs) = given
        .into_iter()
        .partition(|(id, _)| DISTILL_IDS.contains(&id.as_str()));
    let flags = DistillFlags {
        teacher: a.teacher,
        temperature: a.temperature,
        alpha: a.alpha,
        given: distill_given.into_iter().map(|(id, _)| id).collect(),
    };
    super::train::run_with(a.train, train_given, Some(flags))
}

/// The teacher files named by `--teacher`, loaded (compressed ones
/// dequantized), each with its path.
pub(crate) fn load_teachers(list: &str) -> Result<Vec<(PathBuf, Mlp)>> {
    let paths: Vec<PathBuf> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    if paths.is_empty() {
        anyhow::bail!("--teacher: give at least one model file, T[,T2,...]");
    }
    paths
        .into_iter()
        .map(|p| {
            let any =
                AnyModel::load(&p).with_context(|| format!("--teacher: cannot load the model {}", p.display()))?;
            if !matches!(any, AnyModel::F32(_)) {
                log::info!(
                    "--teacher: {} is compressed; it teaches with its weights dequantized to f32",
                    p.display()
                );
            }
            let m = any.to_mlp();
            Ok((p, m))
        })
        .collect()
}

/// The distillation of `student` from `teachers`, each checked against the
/// student's input shape and classes (naming the file).
pub(crate) fn distillation(d: &Distill, teachers: Vec<(PathBuf, Mlp)>, student: &Mlp) -> Result<Distillation> {
    for (p, t) in &teachers {
        let shape_differs =
            !t.input_shape.is_empty() && !student.input_shape.is_empty() && t.input_shape != student.input_shape;
        if t.inputs() != student.inputs() || shape_differs {
            anyhow::bail!(
                "--teacher: {} takes inputs of shape {:?} ({} values), the student {:?} ({} values)",
                p.display(),
                t.input_shape,
                t.inputs(),
                student.input_shape,
                student.inputs()
            );
        }
        if t.classes() != student.classes() {
            anyhow::bail!(
                "--teacher: {} has {} classes, the student {}",
                p.display(),
                t.classes(),
                student.classes()
            );
        }
        log::info!(
            "teacher {}: {} ({} parameters)",
            p.display(),
            join_sizes(&t.sizes()),
            t.sizes().windows(2).map(|w| w[0] * w[1] + w[1]).sum::<usize>()
        );
    }
    let out = Distillation {
        teachers: teachers.into_iter().map(|(_, t)| t).collect(),
        temperature: d.temperature,
        alpha: d.alpha,
    };
    out.check(student.inputs(), student.classes()).map_err(super::flagged)?;
    log::info!(
        "distillation: {} teacher(s), temperature {}, alpha {}",
        out.teachers.len(),
        out.temperature,
        out.alpha
    );
    Ok(out)
}
