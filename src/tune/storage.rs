//! The study database: SQLite through rusqlite (with its bundled SQLite).
//!
//! Three tables: `study` (key-value rows: the settings every process of the
//! study must share, and the best trial's test figures once evaluated),
//! `trials` (one row per trial number: configuration as JSON, state, the
//! worker holding it and its heartbeat, the figures of its best epoch) and
//! `curves` (one row per trial and epoch: training and validation loss and
//! accuracy).
//!
//! Several processes may share one database (on one machine, or on
//! several over a file system with working locks). A trial is claimed in
//! a `BEGIN IMMEDIATE` transaction, which holds SQLite's write lock from
//! its start, so two processes never take the same number. A process
//! refreshes the heartbeat of the trials it holds; a `running` trial whose
//! heartbeat is older than the staleness limit belongs to a dead process
//! and goes back to `queued` (its curve dropped) for the next claim, or to
//! `failed` after [`MAX_ATTEMPTS`] tries. Finished trials (`complete`,
//! `pruned`, `failed`) are never run again.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::asha::Asha;
use super::sampler::Sampler;
use super::space::{Space, TrialConfig};
use crate::error::{Result, TuneError};

/// Tries a trial gets before a process dying under it marks it failed.
pub const MAX_ATTEMPTS: i64 = 2;

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialState {
    /// Waiting for a process (re-queued after its process died).
    Queued,
    /// Claimed by a process, whose heartbeat keeps it.
    Running,
    /// Trained every epoch.
    Complete,
    /// Stopped by successive halving.
    Pruned,
    /// Diverged, could not be built, or its processes died.
    Failed,
}

impl TrialState {
    /// The state as stored in the database's `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            TrialState::Queued => "queued",
            TrialState::Running => "running",
            TrialState::Complete => "complete",
            TrialState::Pruned => "pruned",
            TrialState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> TrialState {
        match s {
            "queued" => TrialState::Queued,
            "running" => TrialState::Running,
            "complete" => TrialState::Complete,
            "pruned" => TrialState::Pruned,
            _ => TrialState::Failed,
        }
    }

    /// Whether the trial is done (never to be run again).
    pub fn is_finished(self) -> bool {
        matches!(self, TrialState::Complete | TrialState::Pruned | TrialState::Failed)
    }
}

/// The settings every process of a study must share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudySettings {
    /// The search space trials are drawn from.
    pub space: Space,
    /// How trial configurations are drawn from the space.
    pub sampler: Sampler,
    /// The study's seed (sampler, validation split, trials).
    pub seed: u64,
    /// Successive halving (`None`: every trial trains every epoch).
    pub asha: Option<Asha>,
    /// The fraction of the training set held out for validation.
    pub val_split: f64,
    /// The data's source and sizes.
    pub data: String,
}

/// One trial's row.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialRow {
    /// The trial's number (0-based; its row's key).
    pub number: usize,
    /// The hyperparameters it trains with.
    pub config: TrialConfig,
    /// Where it stands.
    pub state: TrialState,
    /// The process holding it while it runs (`None` otherwise).
    pub worker: Option<String>,
    /// Epochs trained (reported).
    pub epochs: usize,
    /// The epoch of the best validation accuracy, and its figures.
    pub best_epoch: Option<usize>,
    /// The best epoch's validation accuracy (a fraction).
    pub val_accuracy: Option<f64>,
    /// The best epoch's validation loss (mean cross-entropy).
    pub val_loss: Option<f64>,
    /// The trial's model file.
    pub model: Option<String>,
    /// Why it failed or was pruned.
    pub message: Option<String>,
    /// Times a process took it.
    pub attempts: i64,
}

/// One epoch of a trial's curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// The epoch (1-based).
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Training accuracy over the epoch (a fraction).
    pub train_accuracy: f64,
    /// Mean validation loss.
    pub val_loss: f64,
    /// Validation accuracy (a fraction).
    pub val_accuracy: f64,
    /// Wall-clock seconds the epoch took.
    pub seconds: f64,
}

/// The best trial's test figures, evaluated once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestRecord {
    /// The trial's number.
    pub number: usize,
    /// Its best validation accuracy (a fraction).
    pub val_accuracy: f64,
    /// Accuracy of its model on the test split (a fraction).
    pub test_accuracy: f64,
    /// Mean cross-entropy of its model on the test split.
    pub test_loss: f64,
    /// Test examples evaluated.
    pub test_examples: usize,
    /// The model file evaluated.
    pub model: String,
}

/// How a trial ended, for [`Storage::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// How it ended: complete, pruned or failed.
    pub state: TrialState,
    /// The model file written, if any.
    pub model: Option<String>,
    /// Why it failed or was pruned.
    pub message: Option<String>,
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A connection to a study database.
pub struct Storage {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS study (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    number INTEGER PRIMARY KEY,
    config TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'complete', 'pruned', 'failed')),
    worker TEXT,
    heartbeat REAL,
    started REAL,
    finished REAL,
    epochs INTEGER NOT NULL DEFAULT 0,
    best_epoch INTEGER,
    val_accuracy REAL,
    val_loss REAL,
    model TEXT,
    message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS curves (
    trial INTEGER NOT NULL REFERENCES trials(number),
    epoch INTEGER NOT NULL,
    train_loss REAL NOT NULL,
    train_accuracy REAL NOT NULL,
    val_loss REAL NOT NULL,
    val_accuracy REAL NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (trial, epoch)
);
CREATE INDEX IF NOT EXISTS curves_by_epoch ON curves (epoch);
";

impl Storage {
    /// Open (creating it and its tables if needed) a study database.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |e: rusqlite::Error| storage_err(path, e);
        let conn = Connection::open(path).map_err(err)?;
        // Other processes hold the write lock only for short transactions.
        conn.busy_timeout(Duration::from_secs(60)).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Storage {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Open an existing study database (for reports): a missing file is an
    /// error, not a new study.
    pub fn open_existing(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(TuneError::Storage {
                path: path.to_path_buf(),
                message: "no such file".into(),
            }
            .into());
        }
        Storage::open(path)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> crate::Error {
        storage_err(&self.path, e)
    }

    fn get(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM study WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Record the study's settings, or check them against those stored: a
    /// study is only continued with the same space, sampler, seed,
    /// successive halving, validation split and data.
    pub fn init_study(&mut self, settings: &StudySettings) -> Result<()> {
        let json = serde_json::to_string(settings).map_err(|e| self.err(e))?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| storage_err(&self.path, e))?;
        let stored: Option<String> = tx
            .query_row("SELECT value FROM study WHERE key = 'settings'", [], |r| r.get(0))
            .optional()
            .map_err(|e| storage_err(&self.path, e))?;
        match stored {
            None => {
                tx.execute("INSERT INTO study (key, value) VALUES ('settings', ?1)", [&json])
                    .map_err(|e| storage_err(&self.path, e))?;
            }
            Some(s) => {
                let mut old: StudySettings = serde_json::from_str(&s).map_err(|e| storage_err(&self.path, e))?;
                old.space.fill_defaults();
                if &old != settings {
                    let mut differ = Vec::new();
                    if old.space != settings.space {
                        differ.push("the search space");
                    }
                    if old.sampler != settings.sampler {
                        differ.push("the sampler");
                    }
                    if old.seed != settings.seed {
                        differ.push("the seed");
                    }
                    if old.asha != settings.asha {
                        differ.push("successive halving (grace, eta, epochs)");
                    }
                    if old.val_split != settings.val_split {
                        differ.push("the validation split");
                    }
                    if old.data != settings.data {
                        differ.push("the data");
                    }
                    return Err(TuneError::Storage {
                        path: self.path.clone(),
                        message: format!(
                            "holds a study with other settings ({} differ); use another --storage or the same settings",
                            differ.join(", ")
                        ),
                    }
                    .into());
                }
            }
        }
        tx.commit().map_err(|e| storage_err(&self.path, e))
    }

    /// The stored settings, if the study was started.
    pub fn settings(&self) -> Result<Option<StudySettings>> {
        match self.get("settings")? {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s).map(Some).map_err(|e| self.err(e)),
        }
    }

    /// Claim the next trial for `worker`: first re-queue (or fail) the
    /// trials of dead processes (heartbeat older than `stale_after`
    /// seconds), then take the lowest queued trial, else create trial
    /// number `count` with `sample(count)`'s configuration while the study
    /// has fewer than `target` trials. `None`: nothing left to run.
    pub fn claim(
        &mut self,
        worker: &str,
        target: usize,
        stale_after: f64,
        sample: &dyn Fn(usize) -> Option<TrialConfig>,
    ) -> Result<Option<(usize, TrialConfig)>> {
        let path = self.path.clone();
        let e = |e: rusqlite::Error| storage_err(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let t = now();
        let stale = t - stale_after;
        tx.execute(
            "DELETE FROM curves WHERE trial IN
                 (SELECT number FROM trials WHERE state = 'running' AND heartbeat < ?1)",
            [stale],
        )
        .map_err(e)?;
        tx.execute(
            "UPDATE trials SET state = 'failed', finished = ?2, worker = NULL, epochs = 0,
                 best_epoch = NULL, val_accuracy = NULL, val_loss = NULL,
                 message = 'its process stopped reporting ' || attempts || ' times'
             WHERE state = 'running' AND heartbeat < ?1 AND attempts >= ?3",
            params![stale, t, MAX_ATTEMPTS],
        )
        .map_err(e)?;
        let requeued = tx
            .execute(
                "UPDATE trials SET state = 'queued', worker = NULL, epochs = 0, best_epoch = NULL,
                     val_accuracy = NULL, val_loss = NULL,
                     message = 'its process stopped reporting; re-queued'
                 WHERE state = 'running' AND heartbeat < ?1",
                [stale],
            )
            .map_err(e)?;
        if requeued > 0 {
            log::warn!("{requeued} trial(s) of a process that stopped reporting were re-queued");
        }
        let queued: Option<(i64, String)> = tx
            .query_row(
                "SELECT number, config FROM trials WHERE state = 'queued' ORDER BY number LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(e)?;
        let claimed = match queued {
            Some((number, config)) => {
                tx.execute(
                    "UPDATE trials SET state = 'running', worker = ?2, heartbeat = ?3, started = ?3,
                         attempts = attempts + 1
                     WHERE number = ?1",
                    params![number, worker, t],
                )
                .map_err(e)?;
                let config: TrialConfig = serde_json::from_str(&config).map_err(|x| storage_err(&path, x))?;
                Some((number as usize, config))
            }
            None => {
                let count: i64 = tx
                    .query_row("SELECT COUNT(*) FROM trials", [], |r| r.get(0))
                    .map_err(e)?;
                let count = count as usize;
                match (count < target).then(|| sample(count)).flatten() {
                    Some(config) => {
                        let json = serde_json::to_string(&config).map_err(|x| storage_err(&path, x))?;
                        tx.execute(
                            "INSERT INTO trials (number, config, state, worker, heartbeat, started, attempts)
                             VALUES (?1, ?2, 'running', ?3, ?4, ?4, 1)",
                            params![count as i64, json, worker, t],
                        )
                        .map_err(e)?;
                        Some((count, config))
                    }
                    None => None,
                }
            }
        };
        tx.commit().map_err(e)?;
        Ok(claimed)
    }

    /// Refresh the heartbeat of every trial `worker` is running.
    pub fn heartbeat(&self, worker: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE trials SET heartbeat = ?2 WHERE worker = ?1 AND state = 'running'",
                params![worker, now()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Record an epoch of trial `number` and decide whether it goes on:
    /// false when successive halving prunes it at this epoch (a rung).
    /// Refused when `worker` no longer holds the trial (a process that was
    /// taken for dead).
    pub fn report(&mut self, number: usize, worker: &str, p: &CurvePoint, asha: Option<&Asha>) -> Result<bool> {
        let path = self.path.clone();
        let e = |e: rusqlite::Error| storage_err(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let held = tx
            .execute(
                "UPDATE trials SET epochs = ?3, heartbeat = ?4,
                     best_epoch = CASE WHEN val_accuracy IS NULL OR ?5 > val_accuracy THEN ?3 ELSE best_epoch END,
                     val_loss = CASE WHEN val_accuracy IS NULL OR ?5 > val_accuracy THEN ?6 ELSE val_loss END,
                     val_accuracy = CASE WHEN val_accuracy IS NULL OR ?5 > val_accuracy THEN ?5 ELSE val_accuracy END
                 WHERE number = ?1 AND worker = ?2 AND state = 'running'",
                params![number as i64, worker, p.epoch as i64, now(), p.val_accuracy, p.val_loss],
            )
            .map_err(e)?;
        if held == 0 {
            return Err(TuneError::Storage {
                path: path.clone(),
                message: format!("trial {number} is no longer held by this process (taken for dead?)"),
            }
            .into());
        }
        tx.execute(
            "INSERT OR REPLACE INTO curves
                 (trial, epoch, train_loss, train_accuracy, val_loss, val_accuracy, seconds)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                number as i64,
                p.epoch as i64,
                p.train_loss,
                p.train_accuracy,
                p.val_loss,
                p.val_accuracy,
                p.seconds
            ],
        )
        .map_err(e)?;
        let go_on = match asha {
            Some(a) if a.is_rung(p.epoch) => {
                let mut stmt = tx
                    .prepare("SELECT val_accuracy FROM curves WHERE epoch = ?1")
                    .map_err(e)?;
                let at_rung = stmt
                    .query_map([p.epoch as i64], |r| r.get::<_, f64>(0))
                    .map_err(e)?
                    .collect::<std::result::Result<Vec<f64>, _>>()
                    .map_err(e)?;
                drop(stmt);
                a.promotes(p.val_accuracy, &at_rung)
            }
            _ => true,
        };
        tx.commit().map_err(e)?;
        Ok(go_on)
    }

    /// Record how trial `number` ended; false when `worker` no longer held
    /// it (nothing is written then).
    pub fn finish(&mut self, number: usize, worker: &str, o: &Outcome) -> Result<bool> {
        self.conn
            .execute(
                "UPDATE trials SET state = ?3, finished = ?4, model = ?5, message = ?6
                 WHERE number = ?1 AND worker = ?2 AND state = 'running'",
                params![number as i64, worker, o.state.as_str(), now(), o.model, o.message],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    /// Every trial, by number.
    pub fn trials(&self) -> Result<Vec<TrialRow>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT number, config, state, worker, epochs, best_epoch, val_accuracy, val_loss,
                        model, message, attempts
                 FROM trials ORDER BY number",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<f64>>(6)?,
                    r.get::<_, Option<f64>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, i64>(10)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (number, config, state, worker, epochs, best_epoch, val_accuracy, val_loss, model, message, attempts) =
                row.map_err(|e| self.err(e))?;
            let config: TrialConfig =
                serde_json::from_str(&config).map_err(|e| self.err(format!("trial {number}: {e}")))?;
            out.push(TrialRow {
                number: number as usize,
                config,
                state: TrialState::parse(&state),
                worker,
                epochs: epochs as usize,
                best_epoch: best_epoch.map(|e| e as usize),
                val_accuracy,
                val_loss,
                model,
                message,
                attempts,
            });
        }
        Ok(out)
    }

    /// The curve of trial `number`, by epoch.
    pub fn curve(&self, number: usize) -> Result<Vec<CurvePoint>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT epoch, train_loss, train_accuracy, val_loss, val_accuracy, seconds
                 FROM curves WHERE trial = ?1 ORDER BY epoch",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([number as i64], |r| {
                Ok(CurvePoint {
                    epoch: r.get::<_, i64>(0)? as usize,
                    train_loss: r.get(1)?,
                    train_accuracy: r.get(2)?,
                    val_loss: r.get(3)?,
                    val_accuracy: r.get(4)?,
                    seconds: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))
    }

    /// The best trial's test figures, once evaluated.
    pub fn best(&self) -> Result<Option<BestRecord>> {
        match self.get("best")? {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s).map(Some).map_err(|e| self.err(e)),
        }
    }

    /// Run `f` holding the database's write lock (`BEGIN IMMEDIATE` ...
    /// `COMMIT`, rolled back when `f` fails), so that no other process
    /// writes meanwhile.
    pub fn locked<T>(&self, f: impl FnOnce(&Storage) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.err(e))?;
        match f(self) {
            Ok(v) => {
                self.conn.execute_batch("COMMIT").map_err(|e| self.err(e))?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Store the best trial's test figures.
    pub fn set_best(&self, best: &BestRecord) -> Result<()> {
        let json = serde_json::to_string(best).map_err(|e| self.err(e))?;
        self.conn
            .execute("INSERT OR REPLACE INTO study (key, value) VALUES ('best', ?1)", [json])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

fn storage_err(path: &Path, e: impl std::fmt::Display) -> crate::Error {
    TuneError::Storage {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
    .into()
}
