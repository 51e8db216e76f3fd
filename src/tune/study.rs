//! The study loop: claim a trial, train it through [`train_with`] with a
//! report after every epoch (successive halving's decision stops it), record
//! how it ended, and go on until the study holds its trials; at the end the
//! best trial's model is evaluated once on the test set.
//!
//! Trials never see the test set: the dataset they train on has the
//! validation split in place of the test split, so the figures the training
//! loop computes at its end are validation figures too. Only the final
//! evaluation of the best trial reads the test set.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::asha::Asha;
use super::sampler::Sampler;
use super::space::{Space, TrialConfig};
use super::storage::{BestRecord, CurvePoint, Outcome, Storage, StudySettings, TrialRow, TrialState};
use crate::backend::{steps_per_epoch, Backend, TrainSpec};
use crate::data::{Dataset, Preprocess, Split};
use crate::error::{Error, Result, TuneError};
use crate::metrics::Evaluation;
use crate::model::Mlp;
use crate::optim::LrSchedule;
use crate::train::{train_with, Event, Hooks, StopMetric, TrainConfig};

/// How a study runs.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// Trials the study holds in all (across processes and resumptions).
    pub trials: usize,
    /// How trial configurations are drawn from the space.
    pub sampler: Sampler,
    /// Seeds the sampler, the validation split, and every trial's
    /// initialisation and shuffles.
    pub seed: u64,
    /// Successive halving (`None`: no pruning).
    pub asha: Option<Asha>,
    /// Trials this process trains at once.
    pub parallel: usize,
    /// The folder of the trials' models and `best.safetensors`.
    pub out: PathBuf,
    /// The study database.
    pub storage: PathBuf,
    /// A running trial whose heartbeat is older than this belongs to a dead
    /// process.
    pub stale_after: Duration,
    /// The fraction of the training set held out for validation (for the
    /// record; the caller holds it out).
    pub val_split: f64,
    /// The class names every trial's model (and `best.safetensors`)
    /// carries, one per class; empty: none.
    pub class_names: Vec<String>,
}

/// What the study reports as it goes (from the workers' threads).
#[derive(Debug, Clone)]
pub enum TrialEvent {
    /// A trial was claimed and starts training.
    Started {
        /// The trial's number.
        number: usize,
        /// Its hyperparameters.
        config: TrialConfig,
    },
    /// A trial finished an epoch, recorded in the database.
    Epoch {
        /// The trial's number.
        number: usize,
        /// The epoch's figures.
        point: CurvePoint,
        /// False when successive halving prunes the trial here.
        promoted: bool,
    },
    /// A trial ended.
    Finished {
        /// The trial's number.
        number: usize,
        /// How it ended.
        state: TrialState,
        /// Epochs it trained.
        epochs: usize,
        /// Its best validation accuracy (a fraction), if it reached an epoch.
        val_accuracy: Option<f64>,
        /// Why it failed or was pruned.
        message: Option<String>,
    },
}

/// What a study's run did.
#[derive(Debug, Clone)]
pub struct StudyResult {
    /// Trials this process trained.
    pub ran: Vec<usize>,
    /// Every trial in the database at the end.
    pub trials: Vec<TrialRow>,
    /// The best trial's test figures, once no trial is left running.
    pub best: Option<BestRecord>,
}

/// Builds a trial's backend from its model, data and settings (on one
/// device; called from the worker threads).
pub type MakeBackend<'a> = dyn Fn(Mlp, Arc<Dataset>, TrainSpec) -> Result<Box<dyn Backend>> + Sync + 'a;

/// A worker's name: host, process id, start time and a count of the
/// studies this process started.
pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    format!(
        "{}:{}:{:.0}",
        host.trim(),
        std::process::id(),
        super::storage::now() * 1e3
    )
}

/// Epochs the trials have trained, and what training every trial to the
/// end would have (`trials x max epochs`).
pub fn epochs_spent(trials: &[TrialRow], max_epochs: usize) -> (usize, usize) {
    (trials.iter().map(|t| t.epochs).sum(), trials.len() * max_epochs)
}

/// The best trial by validation accuracy: complete trials first (pruned
/// ones only when none completed), ties to the lower number.
pub fn best_trial(trials: &[TrialRow]) -> Option<&TrialRow> {
    let pick = |state: TrialState| {
        trials
            .iter()
            .filter(|t| t.state == state && t.val_accuracy.is_some() && t.model.is_some())
            .max_by(|a, b| {
                let (x, y) = (a.val_accuracy.unwrap_or(0.0), b.val_accuracy.unwrap_or(0.0));
                x.total_cmp(&y).then(b.number.cmp(&a.number))
            })
    };
    pick(TrialState::Complete).or_else(|| pick(TrialState::Pruned))
}

/// Run (or continue) a study on `data`, which must hold a validation
/// split; `make` builds each trial's backend, `on_event` hears every
/// trial's progress.
pub fn run_study(
    space: &Space,
    mut data: Dataset,
    opts: &StudyOptions,
    make: &MakeBackend<'_>,
    on_event: &(dyn Fn(&TrialEvent) + Sync),
) -> Result<StudyResult> {
    if data.validation.is_empty() {
        return Err(Error::Config(
            "a study needs a validation split to compare trials (never the test set)".into(),
        ));
    }
    if opts.parallel == 0 {
        return Err(Error::Config("trials at once: expected at least 1".into()));
    }
    // A shift the data cannot take fails here, not in the middle of a trial.
    if let Some(max) = space.largest("shift") {
        crate::optim::draw::Shift::new(max as u32, &data.shape)?;
    }
    std::fs::create_dir_all(opts.out.join("trials")).map_err(|e| TuneError::Storage {
        path: opts.out.clone(),
        message: format!("cannot create the study folder: {e}"),
    })?;
    let settings = StudySettings {
        space: space.clone(),
        sampler: opts.sampler,
        seed: opts.seed,
        asha: opts.asha,
        val_split: opts.val_split,
        data: format!(
            "{} ({} train, {} validation examples)",
            data.source,
            data.train.len(),
            data.validation.len()
        ),
    };
    Storage::open(&opts.storage)?.init_study(&settings)?;
    let test: Split = std::mem::replace(&mut data.test, data.validation.clone());
    let preprocess = Preprocess::fit(crate::data::Normalize::Scale, &data);
    let data = Arc::new(data);
    let worker = worker_name();
    let target = match opts.sampler.limit(space) {
        Some(n) if n < opts.trials => {
            log::warn!("the grid holds {n} configurations; the study stops there");
            n
        }
        _ => opts.trials,
    };
    let abort = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let ran: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        // The heartbeat of every trial this process holds.
        let beat = s.spawn(|| -> Result<()> {
            let db = Storage::open(&opts.storage)?;
            let every = (opts.stale_after / 6).max(Duration::from_millis(50));
            let mut last = std::time::Instant::now();
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20).min(every));
                if last.elapsed() >= every {
                    db.heartbeat(&worker)?;
                    last = std::time::Instant::now();
                }
            }
            Ok(())
        });
        let workers: Vec<_> = (0..opts.parallel)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut db = Storage::open(&opts.storage)?;
                    let sample = |n: usize| opts.sampler.sample(space, opts.seed, n);
                    while !abort.load(Ordering::SeqCst) {
                        let Some((number, config)) =
                            db.claim(&worker, target, opts.stale_after.as_secs_f64(), &sample)?
                        else {
                            break;
                        };
                        if let Ok(mut r) = ran.lock() {
                            r.push(number);
                        }
                        on_event(&TrialEvent::Started {
                            number,
                            config: config.clone(),
                        });
                        let r = run_trial(
                            &mut db, &worker, number, &config, space, &data, preprocess, opts, make, on_event,
                        );
                        if let Err(e) = r {
                            abort.store(true, Ordering::SeqCst);
                            return Err(e);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let mut out: Vec<Result<()>> = workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(Error::Config("a trial's thread panicked".into())))
            })
            .collect();
        done.store(true, Ordering::SeqCst);
        out.push(
            beat.join()
                .unwrap_or_else(|_| Err(Error::Config("the heartbeat thread panicked".into()))),
        );
        out
    });
    for r in results {
        r?;
    }
    let db = Storage::open(&opts.storage)?;
    let trials = db.trials()?;
    let pending = trials.iter().any(|t| !t.state.is_finished());
    // Under the write lock: the first process to finish evaluates and
    // writes best.safetensors, the others read its figures.
    let best = if pending {
        None
    } else {
        db.locked(|db| final_evaluation(db, &trials, &test, &opts.out))?
    };
    let mut ran = ran.into_inner().unwrap_or_default();
    ran.sort_unstable();
    Ok(StudyResult { ran, trials, best })
}

/// Evaluate the best trial's model once on the test set (the stored
/// figures when it was), and copy it to `out/best.safetensors`.
fn final_evaluation(db: &Storage, trials: &[TrialRow], test: &Split, out: &Path) -> Result<Option<BestRecord>> {
    let Some(best) = best_trial(trials) else {
        return Ok(None);
    };
    if let Some(rec) = db.best()? {
        if rec.number == best.number {
            return Ok(Some(rec));
        }
    }
    let Some(path) = &best.model else { return Ok(None) };
    let model = Mlp::load(Path::new(path))?;
    let pred = crate::cpu::predict_rows(&model, &test.features, &test.labels);
    let classes = model
        .classes()
        .max(pred.classes.iter().copied().max().unwrap_or(0) as usize + 1);
    let eval = Evaluation::new(&pred, &test.labels, classes);
    let dest = out.join("best.safetensors");
    model.save(&dest)?;
    let rec = BestRecord {
        number: best.number,
        val_accuracy: best.val_accuracy.unwrap_or(0.0),
        test_accuracy: eval.accuracy,
        test_loss: eval.loss,
        test_examples: eval.examples,
        model: dest.display().to_string(),
    };
    db.set_best(&rec)?;
    Ok(Some(rec))
}

/// Train trial `number` and record how it ended. Only storage errors
/// return `Err` (they stop the study); a trial that diverges or cannot be
/// built is recorded as failed.
#[allow(clippy::too_many_arguments)]
fn run_trial(
    db: &mut Storage,
    worker: &str,
    number: usize,
    config: &TrialConfig,
    space: &Space,
    data: &Arc<Dataset>,
    preprocess: Preprocess,
    opts: &StudyOptions,
    make: &MakeBackend<'_>,
    on_event: &(dyn Fn(&TrialEvent) + Sync),
) -> Result<()> {
    let epochs = space.epochs;
    let model_path = opts.out.join("trials").join(format!("trial-{number:04}.safetensors"));
    // Storage errors met inside the loop's callbacks, which cannot return
    // them; they stop the trial and then the study.
    let storage_error: RefCell<Option<Error>> = RefCell::new(None);
    let pruned_at: Cell<Option<usize>> = Cell::new(None);
    let pruned_model: RefCell<Option<Mlp>> = RefCell::new(None);
    let db = RefCell::new(db);
    let result = (|| -> Result<Mlp> {
        let spec = config.spec(opts.seed);
        spec.check()?;
        let mut sizes = vec![data.dim()];
        sizes.extend(config.hidden());
        sizes.push(data.classes);
        let model =
            Mlp::new(&sizes, opts.seed, preprocess, data.shape.clone())?.with_class_names(opts.class_names.clone())?;
        let steps = steps_per_epoch(data.train.len(), config.batch);
        let schedule = LrSchedule::new(&config.schedule_spec(epochs), steps, epochs)?;
        let cfg = TrainConfig {
            epochs,
            schedule,
            seed: opts.seed,
            log_every: 0,
            val_split: opts.val_split,
            early_stop: None,
            best_by: StopMetric::Accuracy,
            eval_test_each_epoch: false,
            swa_from: None,
        };
        let mut backend = make(model, data.clone(), spec)?;
        // Before the first step of epochs 2..=epochs: the decision about the
        // epoch before.
        let stops: Vec<usize> = (1..epochs).map(|e| e * steps).collect();
        let mut at_stop = |b: &mut dyn Backend, _i: usize| -> Result<()> {
            if let Some(e) = storage_error.borrow_mut().take() {
                return Err(e);
            }
            if let Some(epoch) = pruned_at.get() {
                *pruned_model.borrow_mut() = Some(b.model()?);
                return Err(TuneError::Pruned { epoch }.into());
            }
            Ok(())
        };
        let hooks = Hooks {
            epoch_offset: 0,
            stops: &stops,
            at_stop: &mut at_stop,
        };
        let mut events = |e: &Event| {
            if let Event::Epoch {
                epoch,
                train_loss,
                train_accuracy,
                validation_loss: Some(val_loss),
                validation_accuracy: Some(val_accuracy),
                seconds,
                ..
            } = e
            {
                let point = CurvePoint {
                    epoch: *epoch,
                    train_loss: *train_loss,
                    train_accuracy: *train_accuracy,
                    val_loss: *val_loss,
                    val_accuracy: *val_accuracy,
                    seconds: *seconds,
                };
                match db.borrow_mut().report(number, worker, &point, opts.asha.as_ref()) {
                    Ok(promoted) => {
                        if !promoted {
                            pruned_at.set(Some(*epoch));
                        }
                        on_event(&TrialEvent::Epoch {
                            number,
                            point,
                            promoted,
                        });
                    }
                    Err(err) => *storage_error.borrow_mut() = Some(err),
                }
            }
        };
        train_with(backend.as_mut(), data, &cfg, hooks, &mut events)
    })();
    if let Some(e) = storage_error.borrow_mut().take() {
        return Err(e);
    }
    let save = |m: &Mlp| -> Option<String> {
        match m.save(&model_path) {
            Ok(()) => Some(model_path.display().to_string()),
            Err(e) => {
                log::warn!("trial {number}: cannot save its model: {e}");
                None
            }
        }
    };
    let outcome = match result {
        Ok(model) => Outcome {
            state: TrialState::Complete,
            model: save(&model),
            message: None,
        },
        Err(Error::Tune(TuneError::Pruned { epoch })) => Outcome {
            state: TrialState::Pruned,
            model: pruned_model.borrow().as_ref().and_then(save),
            message: Some(format!("pruned after epoch {epoch}")),
        },
        Err(e @ Error::Tune(TuneError::Storage { .. })) => return Err(e),
        Err(e) => Outcome {
            state: TrialState::Failed,
            model: None,
            message: Some(e.to_string()),
        },
    };
    let db = db.into_inner();
    if !db.finish(number, worker, &outcome)? {
        log::warn!("trial {number} was taken over by another process; its result is dropped");
    }
    let row = db.trials()?.into_iter().find(|t| t.number == number);
    on_event(&TrialEvent::Finished {
        number,
        state: outcome.state,
        epochs: row.as_ref().map(|r| r.epochs).unwrap_or(0),
        val_accuracy: row.and_then(|r| r.val_accuracy),
        message: outcome.message,
    });
    Ok(())
}
