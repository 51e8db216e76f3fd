//! The training loop, the same for every backend: epochs, seeded shuffles,
//! the learning rate of each step, log points, evaluation after each epoch
//! (on the validation split when there is one, which then picks the model
//! returned and may stop the run early), stochastic weight averaging
//! (`swa_from`), and the divergence check.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::backend::{join_sizes, steps_per_epoch, Backend, SplitKind, StepStats, TrainSpec};
use crate::checkpoint::{self, Checkpoint, Contents, Fingerprint, LoopState};
use crate::data::{check_val_split, epoch_permutation, Dataset};
use crate::error::{Error, Result, Setting};
use crate::metrics::Evaluation;
use crate::model::average::running_update;
use crate::model::Mlp;
use crate::optim::{LrSchedule, StepHyper};

/// Hyper-parameters of a run. [`TrainConfig::check`] validates them, and
/// [`train`] calls it before anything runs.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Epochs to train (each a pass over the training split).
    pub epochs: usize,
    /// The learning rate of each step.
    pub schedule: LrSchedule,
    /// Seeds the epoch permutations (the weights are seeded where the model is made).
    pub seed: u64,
    /// Steps between training log lines (0: never).
    pub log_every: usize,
    /// The fraction of the training set the caller holds out as a
    /// validation split ([`Dataset::hold_out_validation`]); 0: none.
    pub val_split: f64,
    /// Stop after this many epochs without a better validation figure
    /// (needs a validation split).
    pub early_stop: Option<usize>,
    /// The validation figure that picks the best epoch.
    pub best_by: StopMetric,
    /// Evaluate the test set after every epoch, not only on the chosen
    /// model at the end. Without a validation split the test set is
    /// evaluated every epoch regardless.
    pub eval_test_each_epoch: bool,
    /// Stochastic weight averaging: from the end of this epoch (from 1)
    /// on, keep the equal-weight running mean of the weights at the end of
    /// every epoch (`torch.optim.swa_utils.AveragedModel`'s default, for a
    /// network without batch norm), and return it instead of the last or
    /// best epoch's. Validation still runs every epoch and early stopping
    /// still stops the run (the average then holds the epochs run); a run
    /// that stops before this epoch returns its usual choice.
    pub swa_from: Option<usize>,
}

/// The validation figure that picks the best epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StopMetric {
    /// Lower validation loss is better.
    #[default]
    Loss,
    /// Higher validation accuracy is better.
    Accuracy,
}

impl TrainConfig {
    /// A run of `epochs` epochs at the constant learning rate `lr`.
    pub fn constant(epochs: usize, lr: f64, seed: u64, log_every: usize) -> Self {
        TrainConfig {
            epochs,
            schedule: LrSchedule::constant(lr),
            seed,
            log_every,
            val_split: 0.0,
            early_stop: None,
            best_by: StopMetric::Loss,
            eval_test_each_epoch: false,
            swa_from: None,
        }
    }

    /// Check every value the loop relies on.
    pub fn check(&self) -> Result<()> {
        let lr = self.schedule.peak();
        if !(lr.is_finite() && lr > 0.0 && lr as f32 > 0.0) {
            return Err(Error::invalid(Setting::LearningRate, lr, "a positive number"));
        }
        check_val_split(self.val_split)?;
        if let Some(from) = self.swa_from {
            if from == 0 {
                return Err(Error::invalid(Setting::SwaFrom, from, "an epoch from 1"));
            }
            if self.epochs > 0 && from > self.epochs {
                return Err(Error::invalid(
                    Setting::SwaFrom,
                    from,
                    "an epoch no later than the run's last",
                ));
            }
        }
        if let Some(patience) = self.early_stop {
            if patience == 0 {
                return Err(Error::invalid(Setting::EarlyStop, patience, "at least 1 epoch"));
            }
            if self.val_split == 0.0 {
                return Err(Error::Requires {
                    setting: Setting::EarlyStop,
                    needs: Setting::ValSplit,
                });
            }
        }
        Ok(())
    }
}

/// The best epoch so far by one validation figure, and the epochs since.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BestEpoch {
    /// The figure compared (validation loss or accuracy).
    pub metric: StopMetric,
    /// `(epoch, figure)` of the best epoch; `None` before the first.
    pub best: Option<(usize, f64)>,
    /// Epochs since the best one.
    pub since: usize,
}

impl BestEpoch {
    /// No epoch seen yet, comparing by `metric`.
    pub fn new(metric: StopMetric) -> Self {
        BestEpoch {
            metric,
            best: None,
            since: 0,
        }
    }

    /// Record an epoch's validation figures; true when it is the new best
    /// (strictly better: a tie keeps the earlier epoch).
    pub fn update(&mut self, epoch: usize, loss: f64, accuracy: f64) -> bool {
        let (value, better) = match self.metric {
            StopMetric::Loss => (loss, self.best.is_none_or(|(_, b)| loss < b)),
            StopMetric::Accuracy => (accuracy, self.best.is_none_or(|(_, b)| accuracy > b)),
        };
        if better {
            self.best = Some((epoch, value));
            self.since = 0;
        } else {
            self.since += 1;
        }
        better
    }

    /// Whether a run with this patience stops now.
    pub fn should_stop(&self, patience: usize) -> bool {
        self.since >= patience
    }
}

/// Which model a run returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Chosen {
    /// The epoch with the best validation figure.
    BestValidation,
    /// The last epoch (there is no validation split).
    Last,
    /// The mean of the weights at the ends of the epochs from
    /// [`TrainConfig::swa_from`] to the last run.
    Average,
}

/// What the loop reports as it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Training loss and accuracy over the steps since the previous log point.
    Step {
        /// The epoch (1-based).
        epoch: usize,
        /// Steps done in this epoch.
        step: usize,
        /// Steps done in the run (across epochs).
        global_step: usize,
        /// The learning rate of the period's last step.
        lr: f64,
        /// Mean training loss (cross-entropy) over the period's examples.
        loss: f64,
        /// Training accuracy over the period's examples (a fraction).
        accuracy: f64,
        /// Training examples per second over the period (wall clock).
        examples_per_second: f64,
        /// Since the run started.
        elapsed: f64,
    },
    /// The end of an epoch: training figures over the epoch, validation
    /// figures when there is a validation split, and test figures when the
    /// test set is evaluated every epoch.
    Epoch {
        /// The epoch (1-based).
        epoch: usize,
        /// Steps done in the run at the epoch's end.
        global_step: usize,
        /// The learning rate of the epoch's last step.
        lr: f64,
        /// Mean training loss over the epoch's examples.
        train_loss: f64,
        /// Training accuracy over the epoch's examples (a fraction).
        train_accuracy: f64,
        /// Mean loss on the validation split.
        #[serde(skip_serializing_if = "Option::is_none")]
        validation_loss: Option<f64>,
        /// Accuracy on the validation split (a fraction).
        #[serde(skip_serializing_if = "Option::is_none")]
        validation_accuracy: Option<f64>,
        /// Mean loss on the test split.
        #[serde(skip_serializing_if = "Option::is_none")]
        test_loss: Option<f64>,
        /// Accuracy on the test split (a fraction).
        #[serde(skip_serializing_if = "Option::is_none")]
        test_accuracy: Option<f64>,
        /// Training examples per second over the epoch (wall clock).
        examples_per_second: f64,
        /// Seconds the epoch's training took.
        seconds: f64,
        /// Since the run started.
        elapsed: f64,
    },
    /// The end of the run: the model returned and its test figures.
    End {
        /// The epoch whose parameters are returned (for an average, the
        /// last epoch in it).
        epoch: usize,
        /// Which model is returned.
        chosen: Chosen,
        /// The first epoch of an average ([`Chosen::Average`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        averaged_from: Option<usize>,
        /// Epochs run (fewer than asked when early stopping stopped it).
        epochs_run: usize,
        /// Whether early stopping ended the run before the last epoch.
        stopped_early: bool,
        /// The returned model's mean loss on the validation split (`None`
        /// for [`Chosen::Last`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        validation_loss: Option<f64>,
        /// The returned model's accuracy on the validation split (a
        /// fraction; `None` for [`Chosen::Last`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        validation_accuracy: Option<f64>,
        /// The returned model's mean loss on the test split.
        test_loss: f64,
        /// The returned model's accuracy on the test split (a fraction).
        test_accuracy: f64,
        /// Examples in the test split.
        test_examples: usize,
        /// Seconds since the run started.
        elapsed: f64,
    },
}

/// Extra work at chosen steps of a run (pruning's mask updates, for one).
pub struct Hooks<'a> {
    /// Added to the epoch number in the shuffles' seed, so a second run on
    /// the same model (fine-tuning) does not replay the first run's order.
    pub epoch_offset: usize,
    /// Global step counts, ascending, before which `at_stop` runs.
    pub stops: &'a [usize],
    /// Called with the backend and the index of the stop in `stops`.
    pub at_stop: &'a mut dyn FnMut(&mut dyn Backend, usize) -> Result<()>,
}

/// Train for `cfg.epochs` epochs, calling `on_event` at every log point and
/// epoch end, and return the trained model.
pub fn train(
    backend: &mut dyn Backend,
    data: &Dataset,
    cfg: &TrainConfig,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Mlp> {
    let mut none = |_: &mut dyn Backend, _: usize| Ok(());
    let hooks = Hooks {
        epoch_offset: 0,
        stops: &[],
        at_stop: &mut none,
    };
    train_with(backend, data, cfg, hooks, on_event)
}

/// Where and when a run writes checkpoints, and how it is stopped.
pub struct Checkpointing<'a> {
    /// The folder of the checkpoint files.
    pub dir: PathBuf,
    /// Write one at the end of every epoch.
    pub each_epoch: bool,
    /// Also write one every this many global steps (mid-epoch too).
    pub every_steps: Option<usize>,
    /// Checkpoint files kept in `dir` (the newest; at least 1).
    pub keep: usize,
    /// The data and settings of this run ([`fingerprint`]); a resumed
    /// checkpoint must carry the same.
    pub fingerprint: Fingerprint,
    /// Stored verbatim in every checkpoint (the caller's own settings).
    pub extra: String,
    /// Once set (by a signal handler, say), the run finishes the current
    /// steps (at most [`STOP_CHECK_STEPS`]), writes a checkpoint and returns
    /// [`Error::Interrupted`].
    pub stop: Option<&'a AtomicBool>,
    /// Continue from this checkpoint instead of from the start.
    pub resume: Option<&'a Checkpoint>,
}

/// With a stop flag, the loop looks at it at least this often (in steps).
pub const STOP_CHECK_STEPS: usize = 128;

/// The fingerprint of a run: the data, the model's sizes and
/// preprocessing, and every setting of `spec` and `cfg` (all of which the
/// exact continuation of a run depends on).
pub fn fingerprint(data: &Dataset, model: &Mlp, spec: &TrainSpec, cfg: &TrainConfig) -> Fingerprint {
    let mut f = Fingerprint::default();
    f.set(
        "data",
        format!(
            "{} ({} train, {} validation, {} test examples; hash {})",
            data.source,
            data.train.len(),
            data.validation.len(),
            data.test.len(),
            checkpoint::data_hash(data)
        ),
    );
    f.set("architecture", join_sizes(&model.sizes()));
    f.set("preprocess", format!("{:?}", model.preprocess));
    f.set("optimizer", format!("{:?}", spec.optimizer));
    f.set("batch", spec.batch);
    f.set("regularization", format!("{:?}", spec.regular));
    f.set("seed", format!("{} (steps {})", cfg.seed, spec.seed));
    f.set("epochs", cfg.epochs);
    f.set("schedule", cfg.schedule.to_string());
    f.set("val_split", cfg.val_split);
    f.set("early_stop", format!("{:?}", cfg.early_stop));
    f.set("best_by", format!("{:?}", cfg.best_by));
    f.set("eval_test_each_epoch", cfg.eval_test_each_epoch);
    // Only when set, so that checkpoints written before the setting existed
    // still resume runs without it.
    if let Some(from) = cfg.swa_from {
        f.set("swa_from", from);
    }
    f
}

/// [`train`], writing checkpoints as `ck` asks and, with `ck.resume`,
/// continuing the run that wrote it: restored into `backend`, the run ends
/// with the same model, bit for bit on the CPU, as one never interrupted.
/// A checkpoint of another fingerprint is refused ([`Error::Checkpoint`]).
pub fn train_resumable(
    backend: &mut dyn Backend,
    data: &Dataset,
    cfg: &TrainConfig,
    ck: &Checkpointing<'_>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Mlp> {
    let mut none = |_: &mut dyn Backend, _: usize| Ok(());
    let hooks = Hooks {
        epoch_offset: 0,
        stops: &[],
        at_stop: &mut none,
    };
    run(backend, data, cfg, hooks, Some(ck), on_event)
}

/// [`train`], with extra work at the steps `hooks` names.
///
/// With a validation split in `data`, each epoch is evaluated on it and the
/// best epoch's parameters (kept as a host copy) are returned; otherwise
/// the last epoch's. A non-finite training loss stops the run with
/// [`Error::Diverged`] at the next log point or epoch end.
pub fn train_with(
    backend: &mut dyn Backend,
    data: &Dataset,
    cfg: &TrainConfig,
    hooks: Hooks<'_>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Mlp> {
    run(backend, data, cfg, hooks, None, on_event)
}

fn run(
    backend: &mut dyn Backend,
    data: &Dataset,
    cfg: &TrainConfig,
    hooks: Hooks<'_>,
    ck: Option<&Checkpointing<'_>>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Mlp> {
    cfg.check()?;
    let has_val = !data.validation.is_empty();
    if cfg.early_stop.is_some() && !has_val {
        return Err(Error::Requires {
            setting: Setting::EarlyStop,
            needs: Setting::ValSplit,
        });
    }
    let test_each_epoch = cfg.eval_test_each_epoch || !has_val;
    let start = Instant::now();
    let mut hyper: Vec<StepHyper> = Vec::new();
    let n = data.train.len();
    let steps = steps_per_epoch(n, backend.batch_size());
    let chunk = if cfg.log_every == 0 { steps } else { cfg.log_every };
    let mut global = 0;
    let mut next_stop = 0;
    let lr_of = |s: usize| cfg.schedule.lr_at(s);
    let mut tracker = BestEpoch::new(cfg.best_by);
    // The best model and its validation loss and accuracy.
    let mut best: Option<(Mlp, f64, f64)> = None;
    // The running weight average and the epochs in it.
    let mut swa: Option<(Mlp, usize)> = None;
    let mut epochs_run = 0;
    let mut stopped_early = false;
    let stop_flag = ck.and_then(|c| c.stop);
    let stop_requested = || stop_flag.is_some_and(|f| f.load(Ordering::SeqCst));
    // Where a resumed run starts: (epoch, steps done in it, its stats).
    let mut first_epoch = 1;
    let mut resumed: Option<(usize, StepStats, StepStats)> = None;
    if let Some(c) = ck.and_then(|c| c.resume.map(|r| (c, r))) {
        let (ck, r) = c;
        ck.fingerprint.check(&r.fingerprint, &r.path)?;
        let ls = &r.loop_state;
        if ls.epoch == 0 || ls.epoch > cfg.epochs || ls.step > steps || ls.epochs_run > ls.epoch {
            return Err(Error::Checkpoint {
                path: r.path.clone(),
                message: format!(
                    "its position (epoch {}, step {}) is outside this run of {} epochs of {steps} steps",
                    ls.epoch, ls.step, cfg.epochs
                ),
            });
        }
        backend.restore(&r.state)?;
        global = ls.global_step;
        epochs_run = ls.epochs_run;
        stopped_early = ls.stopped_early;
        tracker.best = ls.best.map(|(e, bits)| (e, f64::from_bits(bits)));
        tracker.since = ls.since;
        best = match (&r.best, ls.best_figures) {
            (Some(m), Some((l, a))) => Some((m.clone(), f64::from_bits(l), f64::from_bits(a))),
            _ => None,
        };
        swa = r.swa.clone().map(|m| (m, ls.swa_count));
        if ls.epoch_complete {
            first_epoch = ls.epoch + 1;
        } else {
            first_epoch = ls.epoch;
            resumed = Some((ls.step, ls.epoch_stats.into(), ls.pending_stats.into()));
        }
    }
    // The loop's state for a checkpoint after `step` steps of `epoch`.
    let loop_state = |epoch: usize,
                      step: usize,
                      complete: bool,
                      global: usize,
                      epochs_run: usize,
                      stopped_early: bool,
                      tracker: &BestEpoch,
                      best: &Option<(Mlp, f64, f64)>,
                      swa: &Option<(Mlp, usize)>,
                      epoch_stats: StepStats,
                      pending: StepStats| LoopState {
        epoch,
        step,
        epoch_complete: complete,
        global_step: global,
        epochs_run,
        stopped_early,
        best: tracker.best.map(|(e, v)| (e, v.to_bits())),
        since: tracker.since,
        best_figures: best.as_ref().map(|(_, l, a)| (l.to_bits(), a.to_bits())),
        epoch_stats: epoch_stats.into(),
        pending_stats: pending.into(),
        swa_count: swa.as_ref().map_or(0, |s| s.1),
    };
    let save = |backend: &mut dyn Backend,
                ck: &Checkpointing<'_>,
                ls: &LoopState,
                best: &Option<(Mlp, f64, f64)>,
                swa: &Option<(Mlp, usize)>| {
        if !backend.is_primary() {
            // Another process (rank 0) writes this checkpoint.
            return Ok(ck.dir.join(checkpoint::file_name(ls.epoch, ls.step)));
        }
        let state = backend.state()?;
        checkpoint::write(
            &ck.dir,
            &Contents {
                state: &state,
                loop_state: ls,
                best: best.as_ref().map(|b| &b.0),
                swa: swa.as_ref().map(|s| &s.0),
                fingerprint: &ck.fingerprint,
                extra: &ck.extra,
            },
            ck.keep,
        )
    };
    let finished = stopped_early;
    for epoch in first_epoch..=cfg.epochs {
        if finished {
            break;
        }
        let t0 = Instant::now();
        let mut since_log = Instant::now();
        backend.begin_epoch(&epoch_permutation(n, cfg.seed, hooks.epoch_offset + epoch))?;
        // Figures of the epoch so far, and those since the last log point
        // that a checkpoint took from the backend.
        let (mut done, mut epoch_stats, mut pending) = resumed.take().unwrap_or_default();
        while done < steps {
            while hooks.stops.get(next_stop).is_some_and(|&s| s <= global) {
                (hooks.at_stop)(backend, next_stop)?;
                next_stop += 1;
            }
            // Run up to the next log point (counted in global steps, so the
            // points fall every `log_every` steps across epochs) or stop.
            let mut now = (chunk - global % chunk).min(steps - done);
            if let Some(&s) = hooks.stops.get(next_stop) {
                now = now.min(s - global);
            }
            if let Some(every) = ck.and_then(|c| c.every_steps).filter(|&e| e > 0) {
                now = now.min(every - global % every);
            }
            if stop_flag.is_some() {
                now = now.min(STOP_CHECK_STEPS);
            }
            hyper.clear();
            hyper.extend((global..global + now).map(|s| StepHyper {
                lr: cfg.schedule.lr_at(s) as f32,
            }));
            backend.train_steps(done, &hyper)?;
            done += now;
            global += now;
            if cfg.log_every > 0 && global % cfg.log_every == 0 {
                let mut s = std::mem::take(&mut pending);
                s.add(&backend.take_stats()?);
                epoch_stats.add(&s);
                check_finite(epoch, global, s.mean_loss())?;
                let secs = since_log.elapsed().as_secs_f64();
                since_log = Instant::now();
                on_event(&Event::Step {
                    epoch,
                    step: done,
                    global_step: global,
                    lr: lr_of(global - 1),
                    loss: s.mean_loss(),
                    accuracy: s.accuracy(),
                    examples_per_second: s.examples as f64 / secs.max(1e-9),
                    elapsed: start.elapsed().as_secs_f64(),
                });
            }
            if let Some(c) = ck {
                let due = c.every_steps.is_some_and(|e| e > 0 && global % e == 0);
                let stop = stop_requested();
                if done < steps && (due || stop) {
                    pending.add(&backend.take_stats()?);
                    let ls = loop_state(
                        epoch,
                        done,
                        false,
                        global,
                        epochs_run,
                        stopped_early,
                        &tracker,
                        &best,
                        &swa,
                        epoch_stats,
                        pending,
                    );
                    let path = save(backend, c, &ls, &best, &swa)?;
                    if stop {
                        return Err(Error::Interrupted {
                            epoch,
                            step: done,
                            checkpoint: path,
                        });
                    }
                }
            }
        }
        let mut tail = std::mem::take(&mut pending);
        tail.add(&backend.take_stats()?);
        check_finite(epoch, global, tail.mean_loss())?;
        epoch_stats.add(&tail);
        check_finite(epoch, global, epoch_stats.mean_loss())?;
        let seconds = t0.elapsed().as_secs_f64();
        epochs_run = epoch;
        let val = if has_val {
            Some(evaluate(backend, data, SplitKind::Validation)?)
        } else {
            None
        };
        let test = if test_each_epoch {
            Some(evaluate(backend, data, SplitKind::Test)?)
        } else {
            None
        };
        if let Some(v) = &val {
            if tracker.update(epoch, v.loss, v.accuracy) {
                best = Some((backend.model()?, v.loss, v.accuracy));
            }
        }
        if cfg.swa_from.is_some_and(|from| epoch >= from) {
            let m = backend.model()?;
            swa = Some(match swa.take() {
                None => (m, 1),
                Some((mut avg, k)) => {
                    running_update(&mut avg, k, &m)?;
                    (avg, k + 1)
                }
            });
        }
        on_event(&Event::Epoch {
            epoch,
            global_step: global,
            lr: lr_of(global.saturating_sub(1)),
            train_loss: epoch_stats.mean_loss(),
            train_accuracy: epoch_stats.accuracy(),
            validation_loss: val.as_ref().map(|v| v.loss),
            validation_accuracy: val.as_ref().map(|v| v.accuracy),
            test_loss: test.as_ref().map(|t| t.loss),
            test_accuracy: test.as_ref().map(|t| t.accuracy),
            examples_per_second: epoch_stats.examples as f64 / seconds.max(1e-9),
            seconds,
            elapsed: start.elapsed().as_secs_f64(),
        });
        let mut stop_now = false;
        if let Some(patience) = cfg.early_stop {
            if tracker.should_stop(patience) {
                stopped_early = epoch < cfg.epochs;
                stop_now = true;
            }
        }
        if let Some(c) = ck {
            let stop = stop_requested() && !stop_now && epoch < cfg.epochs;
            if c.each_epoch || stop {
                let ls = loop_state(
                    epoch,
                    steps,
                    true,
                    global,
                    epochs_run,
                    stopped_early,
                    &tracker,
                    &best,
                    &swa,
                    StepStats::default(),
                    StepStats::default(),
                );
                let path = save(backend, c, &ls, &best, &swa)?;
                if stop {
                    return Err(Error::Interrupted {
                        epoch,
                        step: steps,
                        checkpoint: path,
                    });
                }
            }
        }
        if stop_now {
            break;
        }
    }
    // The chosen model: the weight average, else the best validation
    // epoch's, or the last. When the best is the last epoch, the backend
    // still holds it.
    let averaged_from = swa.as_ref().and(cfg.swa_from);
    let (model, epoch, chosen, val) = match (swa, best, tracker.best) {
        (Some((m, _)), _, _) => {
            let val = has_val.then(|| {
                let pred = crate::cpu::predict_rows(&m, &data.validation.features, &data.validation.labels);
                let e = Evaluation::new(&pred, &data.validation.labels, classes_of(data, &pred));
                (e.loss, e.accuracy)
            });
            (m, epochs_run, Chosen::Average, val)
        }
        (None, Some((m, l, a)), Some((e, _))) => (m, e, Chosen::BestValidation, Some((l, a))),
        _ => (backend.model()?, epochs_run, Chosen::Last, None),
    };
    let test = if epoch == epochs_run && chosen != Chosen::Average {
        evaluate(backend, data, SplitKind::Test)?
    } else {
        let pred = crate::cpu::predict_rows(&model, &data.test.features, &data.test.labels);
        Evaluation::new(&pred, &data.test.labels, classes_of(data, &pred))
    };
    on_event(&Event::End {
        epoch,
        chosen,
        averaged_from,
        epochs_run,
        stopped_early,
        validation_loss: val.map(|v| v.0),
        validation_accuracy: val.map(|v| v.1),
        test_loss: test.loss,
        test_accuracy: test.accuracy,
        test_examples: test.examples,
        elapsed: start.elapsed().as_secs_f64(),
    });
    Ok(model)
}

/// [`Error::Diverged`] when the training loss is not a finite number.
fn check_finite(epoch: usize, step: usize, loss: f64) -> Result<()> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(Error::Diverged { epoch, step, loss })
    }
}

fn classes_of(data: &Dataset, pred: &crate::metrics::Predictions) -> usize {
    data.classes
        .max(pred.classes.iter().copied().max().unwrap_or(0) as usize + 1)
}

/// Evaluate the backend's current parameters on a split.
pub fn evaluate(backend: &mut dyn Backend, data: &Dataset, split: SplitKind) -> Result<Evaluation> {
    let pred = backend.predict_split(split)?;
    let labels = match split {
        SplitKind::Train => &data.train.labels,
        SplitKind::Validation => &data.validation.labels,
        SplitKind::Test => &data.test.labels,
    };
    Ok(Evaluation::new(&pred, labels, classes_of(data, &pred)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The epoch at which a run with `patience` stops, by hand: the first
    /// epoch that is `patience` epochs after the best one so far.
    fn stop_epoch(losses: &[f64], patience: usize) -> Option<usize> {
        let mut best = f64::INFINITY;
        let mut best_at = 0;
        for (i, &l) in losses.iter().enumerate() {
            if l < best {
                best = l;
                best_at = i;
            }
            if i - best_at >= patience {
                return Some(i + 1);
            }
        }
        None
    }

    #[test]
    fn best_epoch_rule_stops_after_patience_epochs_without_improvement() {
        let losses = [1.0, 0.8, 0.7, 0.75, 0.7, 0.72, 0.65, 0.66, 0.9, 1.0, 1.1];
        for patience in 1..5 {
            let mut t = BestEpoch::new(StopMetric::Loss);
            let mut stopped = None;
            for (i, &l) in losses.iter().enumerate() {
                t.update(i + 1, l, 0.0);
                if t.should_stop(patience) {
                    stopped = Some(i + 1);
                    break;
                }
            }
            assert_eq!(stopped, stop_epoch(&losses, patience), "patience {patience}");
        }
        // A tie is no improvement; accuracy counts upwards.
        let mut t = BestEpoch::new(StopMetric::Accuracy);
        assert!(t.update(1, 9.0, 0.5));
        assert!(!t.update(2, 0.1, 0.5));
        assert!(t.update(3, 9.0, 0.6));
        assert_eq!(t.best, Some((3, 0.6)));
        assert!(!t.should_stop(1));
    }

    #[test]
    fn early_stopping_needs_a_validation_split() {
        let mut cfg = TrainConfig::constant(3, 0.1, 0, 0);
        cfg.early_stop = Some(2);
        assert!(matches!(
            cfg.check(),
            Err(Error::Requires {
                setting: Setting::EarlyStop,
                needs: Setting::ValSplit
            })
        ));
        cfg.val_split = 0.1;
        cfg.check().unwrap();
        cfg.early_stop = Some(0);
        assert!(cfg.check().is_err());
    }
}
