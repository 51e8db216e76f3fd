//! Hyperparameter search: a study of trials drawn from a search space
//! ([`space`]) by a sampler ([`sampler`]: random or grid), each trained by
//! [`crate::train::train_with`] and judged on the validation split after
//! every epoch by asynchronous successive halving ([`asha`]), which stops
//! the unpromising ones. The study lives in a SQLite database
//! ([`storage`]) that several processes may share and an interrupted study
//! continues from; [`study`] is the loop.
//!
//! Several trials at once are threads, each with its own backend: on the
//! CPU each gets a share of the cores; on a GPU the backends share one
//! device and their submissions interleave in its queue. Batching trials of
//! one architecture into the same dispatches (one set of kernels over a
//! stack of models) is not done.

pub mod asha;
pub mod sampler;
pub mod space;
pub mod storage;
pub mod study;

pub use asha::Asha;
pub use sampler::Sampler;
pub use space::{Dim, Space, TrialConfig, Value};
pub use storage::{BestRecord, CurvePoint, Storage, StudySettings, TrialRow, TrialState};
pub use study::{best_trial, epochs_spent, run_study, MakeBackend, StudyOptions, StudyResult, TrialEvent};
