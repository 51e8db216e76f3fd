//! `wgtrain train`: train a model, report test accuracy, optionally save it;
//! with teachers (`wgtrain distill`, see distill.rs) the same run by
//! knowledge distillation.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use signal_hook::consts::{SIGINT, SIGTERM};

use super::args::{check_writable, load_data, parse_list, DataArgs, DeviceArgs, NormalizeArg};
use super::distributed::Job;
use super::{flagged, GivenArgs};
use wgtrain::backend::{join_sizes, steps_per_epoch, Distillation, Regularization, TrainSpec};
use wgtrain::checkpoint::{self, Checkpoint};
use wgtrain::data::builtin::SOURCE as BUILTIN_SOURCE;
use wgtrain::data::{Dataset, Preprocess};
use wgtrain::device::{open_replica, open_training};
use wgtrain::metrics::{MetricsFormat, MetricsRow, MetricsWriter};
use wgtrain::model::{shared_class_names, AnyModel, Mlp, NamesMismatch};
use wgtrain::optim::{Adam, Decay, LrSchedule, Optimizer, ScheduleSpec, Sgd, Warmup};
use wgtrain::train::{Checkpointing, Chosen, Event, StopMetric, TrainConfig};

#[derive(Debug, Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// With a --device list: each device's share of every batch, one
    /// positive weight per device (`1,3`: the second device takes three
    /// quarters of each batch) [default: equal shares].
    #[arg(long, value_name = "W,W[,W...]", value_delimiter = ',')]
    shard_weights: Option<Vec<f64>>,
    /// Hidden layer widths, comma-separated: `500`, or `512,256` for two
    /// hidden layers [default: 500].
    #[arg(long, value_name = "N[,N...]")]
    hidden: Option<String>,
    /// Learning rate of the optimizer: the constant rate, or the base rate
    /// of --schedule (where step and cosine start after any warm-up, the
    /// peak of one-cycle).
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    #[command(flatten)]
    optim: OptimArgs,
    #[command(flatten)]
    regular: RegularArgs,
    /// Start from this saved model's weights and preprocessing instead of
    /// a fresh initialisation (fine-tuning); the architecture comes from the
    /// file, so --hidden and --normalize cannot be given with it.
    #[arg(long, value_name = "MODEL")]
    init: Option<PathBuf>,
    /// The name of each class, stored in the model file for eval, predict
    /// and serve: a FILE of one name a line, in class order (blank lines at
    /// its end are ignored), or, where no such file exists, a
    /// comma-separated list `A,B,...` (a name holding a comma needs the
    /// file). One name per class, non-empty, none twice. Without it, an
    /// --init model keeps its names, wgtrain distill takes the teachers'
    /// and a --resume run the checkpoint's.
    #[arg(long, value_name = "FILE|A,B,...")]
    class_names: Option<String>,
    /// Examples per step (the last, partial batch of an epoch is kept).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Arithmetic of the training products: f32, or f16-mixed (every
    /// product reads its operands rounded to f16 and accumulates in f32;
    /// master weights, optimizer state and the softmax stay f32, and
    /// evaluation runs in f32). On a GPU f16-mixed needs shader-f16; it
    /// gives f16's accuracy, not yet its speed or memory.
    #[arg(long, default_value = "f32", value_name = "f32|f16-mixed")]
    precision: String,
    /// Passes over the training set [default: 10, or 30 for the built-in
    /// digits, whose 1,438 training images make only 23 steps an epoch].
    #[arg(long, value_name = "N")]
    epochs: Option<usize>,
    #[command(flatten)]
    schedule: ScheduleArgs,
    /// Seed of the initial weights, the shuffles and the CSV split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Input preprocessing, recorded in the model file so that eval and
    /// predict apply the same.
    #[arg(long, value_enum, value_name = "HOW")]
    normalize: Option<NormalizeArg>,
    /// Log training loss and accuracy every N steps (0: only per epoch).
    #[arg(long, default_value_t = 100, value_name = "N")]
    log_every: usize,
    /// Save the trained model here (safetensors, loadable by PyTorch).
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Print one JSON object per epoch on stdout (logs stay on stderr).
    #[arg(long)]
    json: bool,
    // Validation, model choice, divergence and the metrics file.
    /// Hold out this fraction of the training set as a validation split
    /// (seeded by --seed, stratified: each class gives round(F x its count)
    /// rows, at least 1 and leaving at least 1). With it, every epoch is
    /// evaluated on the validation split, the test set only once at the end
    /// on the chosen model, and --save writes the best epoch. 0: none, and
    /// the test set is evaluated after every epoch.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    val_split: f64,
    /// Stop after N epochs without a better validation figure (see
    /// --early-stop-metric); needs --val-split.
    #[arg(long, value_name = "N")]
    early_stop: Option<usize>,
    /// The validation figure that picks the best epoch, for --save and
    /// --early-stop: loss (lower is better) or accuracy (higher is better).
    #[arg(long, value_enum, default_value_t = StopMetric::Loss)]
    early_stop_metric: StopMetric,
    /// With --val-split, still evaluate the test set after every epoch.
    #[arg(long)]
    eval_test_each_epoch: bool,
    /// Stochastic weight averaging: from the end of epoch N on, keep the
    /// equal-weight mean of the weights at the end of every epoch (as
    /// torch.optim.swa_utils.AveragedModel, for a network without batch
    /// norm); the model saved and evaluated at the end is that average,
    /// not the best validation epoch's (validation still runs every epoch
    /// and is reported for the average at the end). --early-stop still
    /// stops the run: the average then holds the epochs from N to the
    /// stop, and a run stopped before epoch N saves its best epoch as
    /// usual. Checkpoints keep the average, so --resume continues it.
    /// Combine with a constant or step schedule that stays high enough
    /// to explore (the default, --schedule constant).
    #[arg(long, value_name = "N")]
    swa_from: Option<usize>,
    /// Write every log point and epoch to this file as it goes: JSON lines
    /// (.jsonl) or CSV (.csv), by extension; `wgtrain plot` draws it.
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    // Checkpoints and resume.
    /// Write a checkpoint into DIR at the end of every epoch (and every
    /// --checkpoint-every steps): the parameters, the optimizer state, the
    /// position in the run, the best model so far, and a fingerprint of the
    /// data and the settings. Written atomically; the newest
    /// --keep-checkpoints are kept. Without it, SIGINT or SIGTERM still
    /// writes one, into ./wgtrain-checkpoints.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Also write a checkpoint every N steps, counted across epochs (needs
    /// --checkpoint-dir).
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<usize>,
    /// Checkpoint files kept in --checkpoint-dir (the newest; older
    /// ckpt-e*-s*.safetensors files there are deleted).
    #[arg(long, default_value_t = 3, value_name = "K")]
    keep_checkpoints: usize,
    /// Continue the run whose newest checkpoint is in DIR (or the
    /// checkpoint FILE) with the settings it was started with, ending with
    /// the same model, bit for bit on the CPU, as a run never interrupted.
    /// Only --device, --threads, --log-every, --json, --save,
    /// --metrics-file (appended to) and the checkpoint flags may be given
    /// with it; any other flag must repeat the stored value (--epochs
    /// included: a longer run changes the schedule), else it is refused.
    /// New checkpoints go to the same folder unless --checkpoint-dir says
    /// otherwise.
    #[arg(long, value_name = "DIR|FILE", conflicts_with = "init")]
    resume: Option<PathBuf>,
    // Several processes and machines.
    /// Train as one rank of an MPI job, one process per device:
    /// `mpirun -np N wgtrain train --distributed ...` (needs a build with
    /// the cargo feature `mpi`). Each global batch of --batch examples is
    /// split into N equal contiguous shards, the gradients are summed with
    /// one all-reduce per step, and every rank applies the same update.
    /// Rank 0 alone logs, evaluates, and writes checkpoints, the metrics
    /// file and --save; it reads a --resume checkpoint and sends it to the
    /// others. Every rank loads the data itself and must describe the same
    /// run as rank 0 (data, settings, model), else all refuse to start.
    /// With --device gpu or auto each rank takes the GPU of its rank on the
    /// machine modulo the adapters; --threads 0 shares the cores among the
    /// machine's ranks.
    #[arg(long)]
    distributed: bool,
    /// With --distributed: the longest a rank waits for the others in one
    /// collective call (a step's all-reduce, rank 0's evaluation or
    /// checkpoint) before it ends the whole job as a rank that died or
    /// hangs; 0: no limit.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    mpi_timeout: u64,
}

/// The flags a resumed run may change: none of them alters the model.
const RESUME_MAY_CHANGE: &[&str] = &[
    "device",
    "threads",
    "shard_weights",
    "log_every",
    "json",
    "save",
    "metrics_file",
    "checkpoint_dir",
    "checkpoint_every",
    "keep_checkpoints",
    "distributed",
    "mpi_timeout",
];

/// The folder SIGINT or SIGTERM writes a checkpoint into without
/// --checkpoint-dir.
const DEFAULT_CHECKPOINT_DIR: &str = "wgtrain-checkpoints";

/// The arguments stored in a checkpoint, to resume with.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredArgs {
    args: GivenArgs,
    /// The teachers and their settings of a `wgtrain distill` run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    distill: Option<Distill>,
}

/// What `wgtrain distill` adds to a training run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Distill {
    /// The teacher files, comma-separated, as given.
    pub teacher: String,
    pub temperature: f32,
    pub alpha: f32,
    /// A hash of the teachers' weights and preprocessing, so that a resumed
    /// run learns from the same teachers (`None` until they are loaded).
    #[serde(default)]
    pub weights: Option<String>,
    /// `--teacher-cache`: the file of the teachers' probabilities.
    #[serde(default)]
    pub cache: Option<PathBuf>,
}

/// `wgtrain distill`'s settings and which of them the command line gave
/// (a resumed run must repeat those or leave them out).
pub(crate) struct DistillFlags {
    pub teacher: Option<String>,
    pub cache: Option<PathBuf>,
    pub temperature: f32,
    pub alpha: f32,
    /// The ids of the distill flags given on the command line.
    pub given: Vec<String>,
}

/// The arguments of a `--resume` run: the stored ones, with the flags that
/// may change taken from this command line (others must agree), and the
/// checkpoint read.
fn resume_args(
    ck: Checkpoint,
    given: &[(String, Vec<String>)],
) -> Result<(TrainArgs, GivenArgs, Checkpoint, Option<Distill>)> {
    let file = ck.path.clone();
    let stored: StoredArgs = serde_json::from_str(&ck.extra)
        .with_context(|| format!("--resume: {}: no training arguments stored", file.display()))?;
    let (_, stored_m) = super::parse_train(&stored.args)
        .with_context(|| format!("--resume: {}: the stored arguments do not parse", file.display()))?;
    for (id, vals) in given {
        if id == "resume" || RESUME_MAY_CHANGE.contains(&id.as_str()) {
            continue;
        }
        let was: Vec<String> = stored_m
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if &was != vals {
            anyhow::bail!(
                "--{}: the checkpoint {} was written with {}, this run asks for {}; a resumed run keeps the settings it started with",
                id.replace('_', "-"),
                file.display(),
                if was.is_empty() { "none".into() } else { was.join(",") },
                vals.join(",")
            );
        }
    }
    let mut merged: GivenArgs = stored
        .args
        .into_iter()
        .filter(|(id, _)| {
            !given
                .iter()
                .any(|(g, _)| g == id && RESUME_MAY_CHANGE.contains(&g.as_str()))
        })
        // Shard weights belong to the device list they were given with.
        .filter(|(id, _)| !(id == "shard_weights" && given.iter().any(|(g, _)| g == "device")))
        .collect();
    merged.extend(
        given
            .iter()
            .filter(|(id, _)| RESUME_MAY_CHANGE.contains(&id.as_str()))
            .cloned(),
    );
    let (args, _) = super::parse_train(&merged)?;
    Ok((args, merged, ck, stored.distill))
}

/// The optimizer flags (torch.optim's semantics; `g` is the gradient of the
/// batch's mean loss, `t` the step count from 1).
#[derive(Debug, Args)]
pub(crate) struct OptimArgs {
    /// The update rule (g: gradient, p: parameter, t: step from 1).
    /// sgd: g += wd*p (with --weight-decay); with --momentum, b = mu*b + g
    /// (b = g at the first step) and g = b, or g = g + mu*b with
    /// --nesterov; p -= lr*g. adam: g += wd*p; m = b1*m + (1-b1)*g;
    /// v = b2*v + (1-b2)*g^2; m_hat = m/(1-b1^t); v_hat = v/(1-b2^t);
    /// p -= lr*m_hat/(sqrt(v_hat) + eps). adamw: p -= lr*wd*p, then adam
    /// without the g += wd*p term.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    optimizer: OptimizerKind,
    /// SGD momentum factor mu (dampening 0); 0 is plain SGD.
    #[arg(long, default_value_t = 0.0, value_name = "MU")]
    momentum: f32,
    /// Nesterov momentum for SGD (needs --momentum above 0).
    #[arg(long)]
    nesterov: bool,
    /// Weight decay wd: an L2 term wd*p added to the gradient for sgd and
    /// adam, decoupled (p -= lr*wd*p before the step) for adamw.
    #[arg(long, default_value_t = 0.0, value_name = "WD")]
    weight_decay: f32,
    /// Adam/AdamW decay rates of the moment estimates, each in [0, 1).
    #[arg(long, default_value = "0.9,0.999", value_name = "B1,B2")]
    betas: String,
    /// Adam/AdamW term added to the denominator, sqrt(v_hat) + eps.
    #[arg(long, default_value_t = 1e-8)]
    eps: f32,
}

/// Regularization and augmentation of the training steps (all off by
/// default; never applied at evaluation).
#[derive(Debug, Args)]
pub(crate) struct RegularArgs {
    /// Dropout after each hidden layer: each unit's output is zeroed with
    /// probability P and the rest scaled by 1/(1-P) (inverted dropout),
    /// drawn afresh every step from --seed; off at evaluation.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    dropout: f32,
    /// Label smoothing S: the target puts 1-S on the label and S/classes on
    /// every class (torch's CrossEntropyLoss(label_smoothing=S)); the
    /// training loss reported is the smoothed one.
    #[arg(long, default_value_t = 0.0, value_name = "S")]
    label_smoothing: f32,
    /// Translate each training image by a random offset of up to N pixels
    /// in each direction (vacated pixels are background), drawn every step
    /// from --seed; needs image data (IDX or the built-in digits).
    #[arg(long, default_value_t = 0, value_name = "N")]
    shift: u32,
    /// Scale each step's gradients so their global L2 norm is at most C
    /// (torch's clip_grad_norm_): the norm covers every weight and bias
    /// gradient of the batch's mean loss, each is multiplied by
    /// min(1, C/(norm+1e-6)), then weight decay and the optimizer apply.
    /// Every gradient is stored before any update, so plain SGD leaves its
    /// fused path and each step costs more; e.g. --clip-grad-norm 1.0.
    #[arg(long, value_name = "C")]
    clip_grad_norm: Option<f32>,
}

impl RegularArgs {
    fn spec(&self) -> Regularization {
        Regularization {
            dropout: self.dropout,
            label_smoothing: self.label_smoothing,
            shift: self.shift,
            clip_grad_norm: self.clip_grad_norm,
        }
    }
}

/// The values of `--optimizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
}

/// The optimizer the flags name, checked (flags that do not apply to it are
/// refused rather than ignored).
pub(crate) fn optimizer_of(o: &OptimArgs) -> Result<Optimizer> {
    let sgd_only = o.momentum != 0.0 || o.nesterov;
    let adam_only = o.betas != "0.9,0.999" || o.eps != 1e-8;
    let opt = match o.optimizer {
        OptimizerKind::Sgd => {
            if adam_only {
                anyhow::bail!("--betas and --eps apply to --optimizer adam or adamw, not sgd");
            }
            Optimizer::Sgd(Sgd {
                momentum: o.momentum,
                nesterov: o.nesterov,
                weight_decay: o.weight_decay,
            })
        }
        OptimizerKind::Adam | OptimizerKind::Adamw => {
            if sgd_only {
                anyhow::bail!("--momentum and --nesterov apply to --optimizer sgd only");
            }
            let betas = match o.betas.split(',').map(|b| b.trim().parse::<f32>()).collect::<Vec<_>>()[..] {
                [Ok(b1), Ok(b2)] => (b1, b2),
                _ => anyhow::bail!(
                    "--betas: expected two numbers B1,B2 (e.g. 0.9,0.999), got {:?}",
                    o.betas
                ),
            };
            let a = Adam {
                betas,
                eps: o.eps,
                weight_decay: o.weight_decay,
            };
            if o.optimizer == OptimizerKind::Adam {
                Optimizer::Adam(a)
            } else {
                Optimizer::AdamW(a)
            }
        }
    };
    opt.check().map_err(flagged)?;
    Ok(opt)
}

/// Run `wgtrain train`.
pub(crate) fn run(a: TrainArgs, given: GivenArgs) -> Result<()> {
    run_with(a, given, None)
}

/// The distillation settings of a run: those of the command line, or on
/// `--resume` the checkpoint's (which the command line may repeat, not
/// change), checked.
fn distill_settings(
    flags: Option<DistillFlags>,
    stored: Option<Distill>,
    resume: Option<&Checkpoint>,
) -> Result<Option<Distill>> {
    let d = match (flags, resume) {
        (None, Some(ck)) if stored.is_some() => anyhow::bail!(
            "--resume: {} was written by wgtrain distill; resume it with wgtrain distill --resume",
            ck.path.display()
        ),
        (None, _) => None,
        (Some(_), Some(ck)) if stored.is_none() => anyhow::bail!(
            "--resume: {} was written by wgtrain train; resume it with wgtrain train --resume",
            ck.path.display()
        ),
        (Some(f), Some(ck)) => {
            let s = stored.unwrap_or(Distill {
                teacher: String::new(),
                temperature: 0.0,
                alpha: 0.0,
                weights: None,
                cache: None,
            });
            let differs = |id: &str, now: String, was: String| {
                if f.given.iter().any(|g| g == id) && now != was {
                    anyhow::bail!(
                        "--{}: the checkpoint {} was written with {was}, this run asks for {now}; a resumed run keeps the settings it started with",
                        id.replace('_', "-"),
                        ck.path.display()
                    );
                }
                Ok(())
            };
            differs("teacher", f.teacher.clone().unwrap_or_default(), s.teacher.clone())?;
            differs("temperature", f.temperature.to_string(), s.temperature.to_string())?;
            differs("alpha", f.alpha.to_string(), s.alpha.to_string())?;
            let path = |c: &Option<PathBuf>| c.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            differs("teacher_cache", path(&f.cache), path(&s.cache))?;
            Some(s)
        }
        (Some(f), None) => Some(Distill {
            teacher: f
                .teacher
                .ok_or_else(|| anyhow::anyhow!("--teacher: give the teacher model file(s), T[,T2,...]"))?,
            temperature: f.temperature,
            alpha: f.alpha,
            weights: None,
            cache: f.cache,
        }),
    };
    if let Some(d) = &d {
        Distillation::check_values(d.temperature, d.alpha).map_err(flagged)?;
    }
    Ok(d)
}

/// Run `wgtrain train`, or with `distill` `wgtrain distill`: the same run
/// with the student learning from teachers.
pub(crate) fn run_with(a: TrainArgs, given: GivenArgs, distill: Option<DistillFlags>) -> Result<()> {
    if !a.distributed {
        return run_on(None, a, given, distill, &mut false);
    }
    if distill.is_some() {
        anyhow::bail!(
            "--distributed: wgtrain distill runs in one process (its teachers run beside the student on one device)"
        );
    }
    let job = Job::start(a.mpi_timeout)?;
    // Whether an error now is this rank's alone, while others may wait for
    // it in a collective call.
    let mut alone = false;
    match run_on(Some(&job), a, given, None, &mut alone) {
        Err(e) if alone => Err(job.fail(e)),
        r => r,
    }
}

/// [`run`], as a rank of `job` when there is one; sets `alone` while an
/// error would be met by this rank only.
fn run_on(
    job: Option<&Job>,
    a: TrainArgs,
    given: GivenArgs,
    distill: Option<DistillFlags>,
    alone: &mut bool,
) -> Result<()> {
    let root = job.is_none_or(|j| j.rank() == 0);
    let asked_resume = a.resume.is_some();
    let read = match job {
        // Rank 0 reads the checkpoint for every rank.
        Some(j) => j.share_checkpoint(a.resume.as_deref())?,
        None => match &a.resume {
            Some(p) => Some(checkpoint::read(&checkpoint::latest(p).map_err(flagged)?).map_err(flagged)?),
            None => None,
        },
    };
    *alone = true;
    let (a, stored, resume, stored_distill) = match read {
        Some(ck) => {
            let path = a.resume.clone().unwrap_or_else(|| ck.path.clone());
            let (args, stored, ck, d) = resume_args(ck, &given)?;
            log::info!("resuming from {}", ck.path.display());
            (args, stored, Some((path, ck)), d)
        }
        None => (
            a,
            given.into_iter().filter(|(id, _)| id != "resume").collect(),
            None,
            None,
        ),
    };
    let distill = distill_settings(distill, stored_distill, resume.as_ref().map(|(_, ck)| ck))?;
    if a.checkpoint_every.is_some() && a.checkpoint_dir.is_none() && resume.is_none() {
        anyhow::bail!("--checkpoint-every needs --checkpoint-dir");
    }
    if a.checkpoint_every == Some(0) {
        anyhow::bail!("--checkpoint-every 0: expected at least 1 step");
    }
    if a.keep_checkpoints == 0 {
        anyhow::bail!("--keep-checkpoints 0: expected at least 1");
    }
    // Every value is checked before the data is read.
    let spec = TrainSpec {
        batch: a.batch,
        optimizer: optimizer_of(&a.optim)?,
        regular: a.regular.spec(),
        seed: a.seed,
        precision: a.precision.parse().map_err(flagged)?,
    };
    spec.check().map_err(flagged)?;
    let mut cfg = TrainConfig::constant(a.epochs.unwrap_or(0), f64::from(a.lr), a.seed, a.log_every);
    set_validation(&a, &mut cfg);
    cfg.check().map_err(flagged)?;
    let schedule = a.schedule.spec(f64::from(a.lr))?;
    // Rank 0 alone writes files.
    let mut metrics = match root {
        true => open_metrics(a.metrics_file.as_deref(), resume.is_some())?,
        false => None,
    };
    if let (Some(p), true) = (&a.save, root) {
        check_writable(p)?;
    }
    let hidden = match (&a.init, &a.hidden) {
        (Some(_), Some(_)) => {
            anyhow::bail!("--hidden cannot be given with --init: the architecture comes from the model file")
        }
        (_, Some(h)) => parse_list("--hidden", h, "layer width")?,
        (_, None) => vec![500],
    };
    if a.init.is_some() && a.normalize.is_some() {
        anyhow::bail!("--normalize cannot be given with --init: the preprocessing comes from the model file");
    }
    let init = match &a.init {
        Some(p) => Some(load_init(p)?),
        None => None,
    };
    let teachers = match &distill {
        Some(d) => Some(load_teachers(&d.teacher)?),
        None => None,
    };
    let distill = match (distill, &teachers) {
        (Some(mut d), Some(t)) => {
            let now = teachers_hash(t);
            if let (Some(was), Some((_, ck))) = (&d.weights, &resume) {
                if *was != now {
                    anyhow::bail!(
                        "--teacher: the checkpoint {} was written with other teachers in {} (their weights changed since); a resumed run learns from the same teachers",
                        ck.path.display(),
                        d.teacher
                    );
                }
            }
            d.weights = Some(now);
            Some(d)
        }
        (d, _) => d,
    };
    let data = Arc::new(hold_out(load_data(&a.data, a.seed)?, &a)?);
    let epochs = a.epochs.unwrap_or(if data.source == BUILTIN_SOURCE { 30 } else { 10 });
    cfg.epochs = epochs;
    cfg.schedule = LrSchedule::new(&schedule, steps_per_epoch(data.train.len(), a.batch), epochs).map_err(flagged)?;
    let model = match init {
        Some(m) => fit_init(m, &data, a.init.as_deref().unwrap_or(Path::new("")))?,
        None => {
            let preprocess = Preprocess::fit(a.normalize.unwrap_or(NormalizeArg::Scale).into(), &data);
            let mut sizes = vec![data.dim()];
            sizes.extend(&hidden);
            sizes.push(data.classes);
            // Before anything is allocated: the run must fit the host.
            use wgtrain::resources::{check, cpu_training, gpu_training_host, host_available};
            let need = match a.device.device {
                wgtrain::device::DeviceChoice::Cpu => cpu_training(&sizes, a.batch, spec.optimizer.state_slots()),
                _ => gpu_training_host(&sizes),
            };
            check(
                &need,
                host_available(),
                "give narrower --hidden layers or a smaller --batch",
            )?;
            Mlp::new(&sizes, a.seed, preprocess, data.shape.clone())?
        }
    };
    let model = name_classes(model, &a, resume.as_ref().map(|(_, ck)| ck), teachers.as_deref())?;
    let class_names = model.class_names.clone();
    let distillation = match (&distill, teachers) {
        (Some(d), Some(t)) => Some(distillation(d, t, &model, &data, a.regular.shift)?),
        _ => None,
    };
    let sizes = model.sizes();
    let t0 = std::time::Instant::now();
    let fingerprint = wgtrain::train::fingerprint(&data, &model, &spec, &cfg);
    log::debug!(
        "fingerprint of the data and settings in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    // The first SIGINT or SIGTERM asks the loop to stop after its current
    // steps; a second one ends the process at once.
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, signalled.clone())
            .and_then(|_| signal_hook::flag::register(sig, signalled.clone()))
            .context("cannot install the signal handlers")?;
    }
    let (mut backend, stop) = match job {
        None => (
            open_training(
                &a.device.device,
                a.device.threads,
                a.shard_weights.as_deref(),
                model,
                data.clone(),
                spec,
            )
            .map_err(flagged)?,
            signalled,
        ),
        Some(j) => {
            if a.shard_weights.is_some() {
                anyhow::bail!("--shard-weights applies to a --device list in one process, not to --distributed (its ranks take equal shards)");
            }
            let mut fields = fingerprint.0.clone();
            fields.insert("initial parameters".into(), parameters_hash(&model));
            fields.insert("--resume given".into(), asked_resume.to_string());
            fields.insert("wgtrain version".into(), env!("CARGO_PKG_VERSION").into());
            // The machine's cores, shared among its ranks.
            let threads = match a.device.threads {
                0 => (wgtrain::cpu::cores() / j.local_size()).max(1),
                t => t,
            };
            let replica = open_replica(&a.device.device, threads, j.local_rank(), model, data.clone(), spec)
                .map_err(flagged)
                .with_context(|| format!("rank {} of {}", j.rank(), j.size()))?;
            *alone = false;
            j.check_same(&fields)?;
            *alone = true;
            j.backend(replica, signalled)?
        }
    };
    if let Some(d) = &distillation {
        backend.set_distillation(Some(d)).map_err(flagged)?;
    }
    log::info!(
        "model {} ({} parameters) on {}; batch {}, {} lr {}, {} epochs",
        sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("-"),
        sizes.windows(2).map(|w| w[0] * w[1] + w[1]).sum::<usize>(),
        backend.name(),
        a.batch,
        spec.optimizer.name(),
        a.lr,
        epochs
    );
    log::info!("{}", backend.memory().used());
    log::info!("learning rate: {}", cfg.schedule);
    if let Some(from) = cfg.swa_from {
        log::info!(
            "stochastic weight averaging: the model saved and evaluated at the end is the mean of the weights at the ends of epochs {from} to {epochs}"
        );
    }
    let steps = steps_per_epoch(data.train.len(), a.batch);
    let bar = if std::io::stderr().is_terminal() && !a.json && root {
        let b = ProgressBar::new(steps as u64);
        b.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} steps {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let mut stdout = std::io::stdout();
    let mut json_err = None;
    let mut metrics_err = None;
    let mut end = None;
    let mut on_event = |e: &Event| {
        if let Some(w) = metrics.as_mut() {
            if let Some(row) = metrics_row(e) {
                if let Err(err) = w.write(&row) {
                    metrics_err.get_or_insert(err);
                }
            }
        }
        let line = match e {
            Event::Step { epoch, step, .. } => {
                if let Some(b) = &bar {
                    b.set_prefix(epoch.to_string());
                    b.set_position(*step as u64);
                }
                log_line(e, steps)
            }
            Event::Epoch { .. } => {
                if let Some(b) = &bar {
                    b.set_position(0);
                }
                if a.json && root {
                    if let Err(err) = serde_json::to_writer(&mut stdout, e)
                        .map_err(std::io::Error::from)
                        .and_then(|_| writeln!(stdout))
                    {
                        json_err = Some(err);
                    }
                }
                log_line(e, steps)
            }
            Event::End { .. } => {
                end = Some(e.clone());
                log_line(e, steps)
            }
        };
        match &bar {
            Some(b) => b.suspend(|| log::info!("{line}")),
            None => log::info!("{line}"),
        }
    };
    let resume_dir = resume.as_ref().map(|(p, ck)| match p.is_file() {
        true => ck.path.parent().map(Path::to_path_buf).unwrap_or_default(),
        false => p.clone(),
    });
    if let (Some(dir), None, true) = (&a.checkpoint_dir, &resume, root) {
        if checkpoint::list(dir).is_ok_and(|f| !f.is_empty()) {
            log::warn!(
                "{} already holds checkpoints; --resume picks the newest by epoch and step, of whichever run",
                dir.display()
            );
        }
    }
    let ck = Checkpointing {
        dir: a
            .checkpoint_dir
            .clone()
            .or(resume_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CHECKPOINT_DIR)),
        each_epoch: a.checkpoint_dir.is_some() || resume.is_some(),
        every_steps: a.checkpoint_every,
        keep: a.keep_checkpoints,
        fingerprint,
        extra: serde_json::to_string(&StoredArgs {
            args: stored,
            distill: distill.clone(),
        })?,
        stop: Some(&stop),
        resume: resume.as_ref().map(|(_, ck)| ck),
    };
    let result = wgtrain::train::train_resumable(backend.as_mut(), &data, &cfg, &ck, &mut on_event);
    drop(backend);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    // Every rank stops at the same step with these; the other errors of a
    // step may be this rank's alone.
    *alone = !matches!(
        result,
        Ok(_) | Err(wgtrain::Error::Interrupted { .. } | wgtrain::Error::Diverged { .. })
    );
    let mut trained = result.map_err(flagged)?;
    trained.class_names = class_names;
    if !root {
        return Ok(());
    }
    if let Some(e) = json_err {
        return Err(e).context("cannot write JSON to stdout");
    }
    if let (Some(e), Some(p)) = (metrics_err, &a.metrics_file) {
        return Err(e).with_context(|| format!("cannot write the metrics file {}", p.display()));
    }
    if let Some(p) = &a.save {
        trained
            .save(p)
            .with_context(|| format!("cannot save the model to {}", p.display()))?;
        log::info!("saved model to {} ({})", p.display(), saved_why(end.as_ref()));
    }
    Ok(())
}

/// A hash of a model's parameters, as hex (the ranks of a distributed run
/// must start from the same).
fn parameters_hash(model: &Mlp) -> String {
    let h = model.layers.iter().fold(0u64, |h, l| {
        let h = checkpoint::hash_bytes(h, bytemuck::cast_slice(&l.weight));
        checkpoint::hash_bytes(h, bytemuck::cast_slice(&l.bias))
    });
    format!("{h:016x}")
}

/// The model `--init` names, as f32 weights (a pruned or int8 file is
/// expanded to dense f32).
fn load_init(path: &Path) -> Result<Mlp> {
    let any = AnyModel::load(path).with_context(|| format!("--init: cannot load the model {}", path.display()))?;
    if matches!(any, AnyModel::Ensemble(_)) {
        bail!(
            "--init: {} is an ensemble; start from one model (`wgtrain average` makes one of models of one architecture)",
            path.display()
        );
    }
    if !matches!(any, AnyModel::F32(_)) {
        log::info!(
            "--init: {} is compressed; training starts from its dense f32 expansion",
            path.display()
        );
    }
    any.to_mlp()
        .with_context(|| format!("--init: {} holds no single model", path.display()))
}

/// `model` with its class names: a resumed run's from the checkpoint,
/// else those of --class-names, else an --init model's own, else the
/// teachers' (those that have names must agree), else none.
fn name_classes(
    model: Mlp,
    a: &TrainArgs,
    resume: Option<&Checkpoint>,
    teachers: Option<&[(PathBuf, Mlp)]>,
) -> Result<Mlp> {
    let classes = model.classes();
    let mut from = "--class-names".to_string();
    let names = match (resume, &a.class_names) {
        (Some(ck), _) => {
            from = format!("--resume: the checkpoint {}", ck.path.display());
            ck.state.model.class_names.clone()
        }
        (None, Some(v)) => super::class_names::parse(v, classes)?,
        (None, None) if a.init.is_some() => model.class_names.clone(),
        (None, None) => {
            let teachers = teachers.unwrap_or(&[]);
            match shared_class_names(teachers.iter().map(|(p, t)| (p, &t.class_names[..]))) {
                Err(NamesMismatch { first: (p, na), other: (q, nb) }) => bail!(
                    "--teacher: {} names its classes {na:?} but {} names them {nb:?}; give the student's with --class-names",
                    p.display(),
                    q.display()
                ),
                Ok(None) => vec![],
                Ok(Some((p, names))) => {
                    log::info!("class names from the teacher {}", p.display());
                    from = format!(
                        "--teacher: the class names of {} (give the student's with --class-names)",
                        p.display()
                    );
                    names.to_vec()
                }
            }
        }
    };
    model.with_class_names(names).context(from)
}

/// Check that an `--init` model fits the data it is to be trained on.
fn fit_init(model: Mlp, data: &Dataset, path: &Path) -> Result<Mlp> {
    if model.inputs() != data.dim() {
        anyhow::bail!(
            "--init: {} takes {} inputs, but the data has {} values per example",
            path.display(),
            model.inputs(),
            data.dim()
        );
    }
    if model.classes() < data.classes {
        anyhow::bail!(
            "--init: {} has {} classes, but the data has {}",
            path.display(),
            model.classes(),
            data.classes
        );
    }
    log::info!("starting from the weights of {}", path.display());
    Ok(model)
}

/// The `--schedule` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScheduleKind {
    /// `--lr` at every step.
    Constant,
    /// `--lr` times `--lr-gamma` every `--lr-step-epochs` epochs (torch's
    /// StepLR).
    Step,
    /// Half a cosine from `--lr` down to `--lr-min` over the run (torch's
    /// CosineAnnealingLR, T_max = the run's steps).
    Cosine,
    /// From `--lr`/25 up to `--lr` over the first 30% of the steps, then
    /// down to `--lr`/25/1e4 (torch's OneCycleLR with its defaults).
    OneCycle,
}

/// The learning-rate schedule flags of `wgtrain train`.
#[derive(Debug, Args)]
struct ScheduleArgs {
    /// How the learning rate moves over the run, stepped at every training
    /// step. After a warm-up, the schedule runs over the remaining steps.
    #[arg(long, value_enum, default_value_t = ScheduleKind::Constant)]
    schedule: ScheduleKind,
    /// With `--schedule step`: epochs between two multiplications by
    /// `--lr-gamma` (required).
    #[arg(long, value_name = "N", required_if_eq("schedule", "step"))]
    lr_step_epochs: Option<usize>,
    /// With `--schedule step`: the factor applied every `--lr-step-epochs`
    /// epochs, above 0 and at most 1 [default: 0.1].
    #[arg(long, value_name = "G")]
    lr_gamma: Option<f64>,
    /// With `--schedule cosine`: the rate the cosine falls to, from 0 up to
    /// `--lr` [default: 0].
    #[arg(long, value_name = "LR")]
    lr_min: Option<f64>,
    /// Linear warm-up over the first E epochs: step s (from 0) of W warm-up
    /// steps runs at r * (s + 1) / (W + 1), where r is the rate the schedule
    /// starts from (`--lr`, or `--lr`/25 for one-cycle); 0: none.
    #[arg(long, value_name = "E", conflicts_with = "warmup_steps")]
    warmup_epochs: Option<usize>,
    /// Linear warm-up over the first S steps, as `--warmup-epochs` (torch's
    /// LinearLR with start_factor 1/(S+1) over S steps); 0: none.
    #[arg(long, value_name = "S")]
    warmup_steps: Option<usize>,
}

impl ScheduleArgs {
    /// The schedule these flags give with base rate `lr`, checked as far as
    /// it can be before the run's length is known.
    fn spec(&self, lr: f64) -> Result<ScheduleSpec> {
        let only = |given: bool, flag: &str, kind: ScheduleKind, name: &str| {
            if given && self.schedule != kind {
                anyhow::bail!("{flag} applies only to --schedule {name}");
            }
            Ok(())
        };
        only(
            self.lr_step_epochs.is_some(),
            "--lr-step-epochs",
            ScheduleKind::Step,
            "step",
        )?;
        only(self.lr_gamma.is_some(), "--lr-gamma", ScheduleKind::Step, "step")?;
        only(self.lr_min.is_some(), "--lr-min", ScheduleKind::Cosine, "cosine")?;
        let decay = match self.schedule {
            ScheduleKind::Constant => Decay::Constant,
            ScheduleKind::Step => Decay::Step {
                every_epochs: self.lr_step_epochs.unwrap_or(0),
                gamma: self.lr_gamma.unwrap_or(0.1),
            },
            ScheduleKind::Cosine => Decay::Cosine {
                lr_min: self.lr_min.unwrap_or(0.0),
            },
            ScheduleKind::OneCycle => Decay::OneCycle,
        };
        let warmup = match (self.warmup_epochs, self.warmup_steps) {
            (Some(e), _) => Warmup::Epochs(e),
            (None, Some(s)) => Warmup::Steps(s),
            (None, None) => Warmup::None,
        };
        let spec = ScheduleSpec { lr, decay, warmup };
        spec.check().map_err(flagged)?;
        Ok(spec)
    }
}

/// The validation settings of `a` into `cfg`.
fn set_validation(a: &TrainArgs, cfg: &mut TrainConfig) {
    cfg.val_split = a.val_split;
    cfg.early_stop = a.early_stop;
    cfg.best_by = a.early_stop_metric;
    cfg.eval_test_each_epoch = a.eval_test_each_epoch;
    cfg.swa_from = a.swa_from;
}

/// The dataset with its validation split held out, as --val-split asks.
fn hold_out(mut data: Dataset, a: &TrainArgs) -> Result<Dataset> {
    if a.val_split > 0.0 {
        data.hold_out_validation(a.val_split, a.seed).map_err(flagged)?;
        log::info!(
            "validation: {} examples held out of the training set ({} left to train on)",
            data.validation.len(),
            data.train.len()
        );
    }
    Ok(data)
}

/// The metrics file, created before any data is read.
fn open_metrics(path: Option<&Path>, append: bool) -> Result<Option<MetricsWriter>> {
    let Some(p) = path else { return Ok(None) };
    let format = MetricsFormat::of(p)
        .with_context(|| format!("--metrics-file {}: give a name ending in .jsonl or .csv", p.display()))?;
    let w = if append {
        MetricsWriter::append(p, format)
    } else {
        MetricsWriter::create(p, format)
    }
    .with_context(|| format!("--metrics-file {}: cannot create it", p.display()))?;
    Ok(Some(w))
}

/// The metrics-file row of a log point or epoch end.
fn metrics_row(e: &Event) -> Option<MetricsRow> {
    match *e {
        Event::Step {
            epoch,
            global_step,
            lr,
            loss,
            accuracy,
            examples_per_second,
            elapsed,
            ..
        } => Some(MetricsRow {
            kind: "step".into(),
            epoch,
            global_step,
            lr,
            train_loss: loss,
            train_accuracy: accuracy,
            examples_per_second,
            seconds: elapsed,
            ..MetricsRow::default()
        }),
        Event::Epoch {
            epoch,
            global_step,
            lr,
            train_loss,
            train_accuracy,
            validation_loss,
            validation_accuracy,
            test_loss,
            test_accuracy,
            examples_per_second,
            elapsed,
            ..
        } => Some(MetricsRow {
            kind: "epoch".into(),
            epoch,
            global_step,
            lr,
            train_loss,
            train_accuracy,
            validation_loss,
            validation_accuracy,
            test_loss,
            test_accuracy,
            examples_per_second,
            seconds: elapsed,
        }),
        Event::End { .. } => None,
    }
}

/// The log line of an event.
fn log_line(e: &Event, steps: usize) -> String {
    let pct = |x: f64| x * 100.0;
    match e {
        Event::Step {
            epoch,
            step,
            global_step,
            lr,
            loss,
            accuracy,
            ..
        } => format!(
            "epoch {epoch} step {step:>5}/{steps} (global {global_step:>6}) | lr {lr:.4e} | loss {loss:.4} | acc {:.2}%",
            pct(*accuracy)
        ),
        Event::Epoch {
            epoch,
            lr,
            train_loss,
            train_accuracy,
            validation_loss,
            validation_accuracy,
            test_loss,
            test_accuracy,
            seconds,
            ..
        } => {
            let mut s = format!(
                "epoch {epoch} done in {seconds:.2}s | lr {lr:.4e} | train loss {train_loss:.4} acc {:.2}%",
                pct(*train_accuracy)
            );
            if let (Some(l), Some(acc)) = (validation_loss, validation_accuracy) {
                s += &format!(" | val loss {l:.4} acc {:.2}%", pct(*acc));
            }
            if let (Some(l), Some(acc)) = (test_loss, test_accuracy) {
                s += &format!(" | test loss {l:.4} acc {:.2}%", pct(*acc));
            }
            s
        }
        Event::End {
            test_loss,
            test_accuracy,
            test_examples,
            ..
        } => format!(
            "test accuracy {:.2}% ({test_examples} examples), test loss {test_loss:.4}; model of {}",
            pct(*test_accuracy),
            saved_why(Some(e))
        ),
    }
}

/// Which epoch the run's model is and why, in words.
fn saved_why(end: Option<&Event>) -> String {
    match end {
        Some(Event::End {
            epoch,
            chosen: Chosen::BestValidation,
            validation_loss,
            validation_accuracy,
            stopped_early,
            epochs_run,
            ..
        }) => format!(
            "epoch {epoch}: the best validation figures (loss {:.4}, accuracy {:.2}%){}",
            validation_loss.unwrap_or(f64::NAN),
            validation_accuracy.unwrap_or(f64::NAN) * 100.0,
            if *stopped_early {
                format!("; stopped early after epoch {epochs_run}")
            } else {
                String::new()
            }
        ),
        Some(Event::End {
            epoch,
            chosen: Chosen::Average,
            averaged_from,
            validation_loss,
            validation_accuracy,
            stopped_early,
            ..
        }) => {
            let from = averaged_from.unwrap_or(*epoch);
            let mut s = format!(
                "the weight average of epochs {from} to {epoch} ({} epochs, stochastic weight averaging)",
                epoch + 1 - from
            );
            if let (Some(l), Some(acc)) = (validation_loss, validation_accuracy) {
                s += &format!("; its validation loss {l:.4}, accuracy {:.2}%", acc * 100.0);
            }
            if *stopped_early {
                s += "; stopped early";
            }
            s
        }
        Some(Event::End { epoch, .. }) => format!("epoch {epoch}: the last, no validation split"),
        _ => "the last epoch".into(),
    }
}

/// The teacher files named by `--teacher`, loaded (compressed ones
/// dequantized), each with its path.
fn load_teachers(list: &str) -> Result<Vec<(PathBuf, Mlp)>> {
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
            if matches!(any, AnyModel::Ensemble(_)) {
                bail!(
                    "--teacher: {} is an ensemble; name its members as teachers instead (--teacher A,B,...), whose probabilities are averaged",
                    p.display()
                );
            }
            if !matches!(any, AnyModel::F32(_)) {
                log::info!(
                    "--teacher: {} is compressed; it teaches with its weights dequantized to f32",
                    p.display()
                );
            }
            let m = any
                .to_mlp()
                .with_context(|| format!("--teacher: {} holds no single model", p.display()))?;
            Ok((p, m))
        })
        .collect()
}

/// The distillation of `student` from `teachers`, each checked against the
/// student's input shape and classes (naming the file).
fn distillation(
    d: &Distill,
    teachers: Vec<(PathBuf, Mlp)>,
    student: &Mlp,
    data: &Dataset,
    shift: u32,
) -> Result<Distillation> {
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
    let mut out = Distillation {
        teachers: teachers.into_iter().map(|(_, t)| t).collect(),
        temperature: d.temperature,
        alpha: d.alpha,
        cached: None,
    };
    if let Some(path) = &d.cache {
        if shift > 0 {
            anyhow::bail!(
                "--teacher-cache holds the teachers' probabilities of the unshifted images; it cannot be used with --shift"
            );
        }
        let probs = teacher_cache(path, &out, d.weights.as_deref().unwrap_or_default(), data)?;
        out.cached = Some(Arc::new(probs));
        // The steps read the cache; the teachers need not be on the device.
        out.teachers.clear();
    }
    out.check(student.inputs(), student.classes()).map_err(flagged)?;
    log::info!(
        "distillation: {} teacher(s), temperature {}, alpha {}",
        out.teachers.len(),
        out.temperature,
        out.alpha
    );
    Ok(out)
}

/// FNV-1a (64-bit) over every teacher's widths, preprocessing, weights and
/// biases, in hex.
fn teachers_hash(teachers: &[(PathBuf, Mlp)]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |word: u32| {
        for b in word.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (_, t) in teachers {
        for s in t.sizes() {
            eat(s as u32);
        }
        eat(t.preprocess.scale.to_bits());
        eat(t.preprocess.offset.to_bits());
        for l in &t.layers {
            l.weight.iter().chain(&l.bias).for_each(|v| eat(v.to_bits()));
        }
    }
    format!("{h:016x}")
}

/// The first line of a `--teacher-cache` file; a JSON header line and the
/// probabilities (f32, little-endian, `[rows, classes]`) follow.
const CACHE_MAGIC: &[u8] = b"wgtrain-teacher-probabilities\n";

/// What a `--teacher-cache` file was made from.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct CacheHeader {
    /// The teachers' weights ([`teachers_hash`]).
    teachers: String,
    /// The temperature, as f32 bits.
    temperature_bits: u32,
    /// The training split's features and labels (`checkpoint::hash_bytes`).
    train: String,
    rows: usize,
    classes: usize,
}

/// The teachers' probabilities at the temperature of every training
/// example: read from `path` when it was made from these teachers, data and
/// temperature (else refused), or computed on the CPU and written there.
fn teacher_cache(path: &Path, d: &Distillation, teachers: &str, data: &Dataset) -> Result<Vec<f32>> {
    let classes = d.teachers.first().map_or(0, |t| t.classes());
    let mut train = bytemuck::cast_slice::<f32, u8>(&data.train.features).to_vec();
    train.extend(data.train.labels.iter().flat_map(|l| l.to_le_bytes()));
    let want = CacheHeader {
        teachers: teachers.to_string(),
        temperature_bits: d.temperature.to_bits(),
        train: format!("{:016x}", checkpoint::hash_bytes(13, &train)),
        rows: data.train.len(),
        classes,
    };
    let bad = |why: &str| anyhow::anyhow!("--teacher-cache {}: {why}", path.display());
    if path.exists() {
        let bytes =
            std::fs::read(path).with_context(|| format!("--teacher-cache {}: cannot read it", path.display()))?;
        let rest = bytes
            .strip_prefix(CACHE_MAGIC)
            .ok_or_else(|| bad("not a teacher-probabilities file"))?;
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| bad("no header"))?;
        let got: CacheHeader = serde_json::from_slice(&rest[..end]).map_err(|e| bad(&format!("bad header: {e}")))?;
        if got != want {
            return Err(bad(
                "it was made from other teachers, data or temperature; delete it or name another file",
            ));
        }
        let body = &rest[end + 1..];
        if body.len() != 4 * want.rows * want.classes {
            return Err(bad("truncated"));
        }
        let probs: Vec<f32> = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if probs.iter().any(|p| !(0.0..=1.0).contains(p)) {
            return Err(bad("holds values that are not probabilities"));
        }
        log::info!(
            "--teacher-cache: reusing the teachers' probabilities in {}",
            path.display()
        );
        return Ok(probs);
    }
    let t0 = std::time::Instant::now();
    let probs = wgtrain::cpu::teacher_probabilities(&d.teachers, &data.train.features, d.temperature);
    let mut bytes = CACHE_MAGIC.to_vec();
    bytes.extend(serde_json::to_vec(&want)?);
    bytes.push(b'\n');
    bytes.extend(probs.iter().flat_map(|p| p.to_le_bytes()));
    wgtrain::model::write_atomic(path, &bytes)
        .with_context(|| format!("--teacher-cache {}: cannot write it", path.display()))?;
    log::info!(
        "--teacher-cache: the teachers' probabilities of {} training examples written to {} in {:.1} s",
        want.rows,
        path.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(probs)
}
