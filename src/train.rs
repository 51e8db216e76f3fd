//! The training loop, the same for every backend: epochs, seeded shuffles,
//! the learning rate of each step, log points, and evaluation after each
//! epoch.

use std::time::Instant;

use serde::Serialize;

use crate::backend::{steps_per_epoch, Backend, SplitKind};
use crate::data::{epoch_permutation, Dataset};
use crate::error::{Error, Result, Setting};
use crate::metrics::Evaluation;
use crate::model::Mlp;
use crate::optim::{LrSchedule, StepHyper};

/// Hyper-parameters of a run. [`TrainConfig::check`] validates them, and
/// [`train`] calls it before anything runs.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub epochs: usize,
    /// The learning rate of each step.
    pub schedule: LrSchedule,
    pub seed: u64,
    /// Steps between training log lines (0: never).
    pub log_every: usize,
}

impl TrainConfig {
    /// A run of `epochs` epochs at the constant learning rate `lr`.
    pub fn constant(epochs: usize, lr: f64, seed: u64, log_every: usize) -> Self {
        TrainConfig {
            epochs,
            schedule: LrSchedule::constant(lr),
            seed,
            log_every,
        }
    }

    /// Check every value the loop relies on.
    pub fn check(&self) -> Result<()> {
        let lr = self.schedule.peak();
        if !(lr.is_finite() && lr > 0.0 && lr as f32 > 0.0) {
            return Err(Error::invalid(Setting::LearningRate, lr, "a positive number"));
        }
        Ok(())
    }
}

/// What the loop reports as it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Training loss and accuracy over the steps since the previous log point.
    Step {
        epoch: usize,
        step: usize,
        global_step: usize,
        loss: f64,
        accuracy: f64,
    },
    /// The end of an epoch: training figures over the epoch and test figures.
    Epoch {
        epoch: usize,
        train_loss: f64,
        train_accuracy: f64,
        test_loss: f64,
        test_accuracy: f64,
        seconds: f64,
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

/// [`train`], with extra work at the steps `hooks` names.
pub fn train_with(
    backend: &mut dyn Backend,
    data: &Dataset,
    cfg: &TrainConfig,
    hooks: Hooks<'_>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Mlp> {
    cfg.check()?;
    let mut hyper: Vec<StepHyper> = Vec::new();
    let n = data.train.len();
    let steps = steps_per_epoch(n, backend.batch_size());
    let chunk = if cfg.log_every == 0 { steps } else { cfg.log_every };
    let mut global = 0;
    let mut next_stop = 0;
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        backend.begin_epoch(&epoch_permutation(n, cfg.seed, hooks.epoch_offset + epoch))?;
        let mut epoch_stats = crate::backend::StepStats::default();
        let mut done = 0;
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
            hyper.clear();
            hyper.extend((global..global + now).map(|s| StepHyper {
                lr: cfg.schedule.lr_at(s) as f32,
            }));
            backend.train_steps(done, &hyper)?;
            done += now;
            global += now;
            if cfg.log_every > 0 && global % cfg.log_every == 0 {
                let s = backend.take_stats()?;
                epoch_stats.add(&s);
                on_event(&Event::Step {
                    epoch,
                    step: done,
                    global_step: global,
                    loss: s.mean_loss(),
                    accuracy: s.accuracy(),
                });
            }
        }
        epoch_stats.add(&backend.take_stats()?);
        let seconds = t0.elapsed().as_secs_f64();
        let eval = evaluate(backend, data, SplitKind::Test)?;
        on_event(&Event::Epoch {
            epoch,
            train_loss: epoch_stats.mean_loss(),
            train_accuracy: epoch_stats.accuracy(),
            test_loss: eval.loss,
            test_accuracy: eval.accuracy,
            seconds,
        });
    }
    backend.model()
}

/// Evaluate the backend's current parameters on a split.
pub fn evaluate(backend: &mut dyn Backend, data: &Dataset, split: SplitKind) -> Result<Evaluation> {
    let pred = backend.predict_split(split)?;
    let labels = match split {
        SplitKind::Train => &data.train.labels,
        SplitKind::Test => &data.test.labels,
    };
    let classes = data
        .classes
        .max(pred.classes.iter().copied().max().unwrap_or(0) as usize + 1);
    Ok(Evaluation::new(&pred, labels, classes))
}
