//! The interface the training loop, evaluation and benchmarks use, so they
//! run unchanged on the CPU and the GPU.
//!
//! The loop owns the schedule and hands each step its scalars
//! ([`StepHyper`]); a backend owns the parameters, the optimizer's state
//! beside them ([`Optimizer::state_slots`] buffers per tensor), and the
//! constraints applied after each update ([`Constraint`]).

use crate::error::{Error, Result, Setting};
pub use crate::metrics::Predictions;
use crate::model::Mlp;
use crate::optim::{Constraint, Optimizer, StepHyper};

/// What a backend is built to train with; fixed for its lifetime.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainSpec {
    /// Examples per training step (at least 1).
    pub batch: usize,
    /// The optimizer and its hyperparameters (the learning rate comes per step, [`StepHyper`]).
    pub optimizer: Optimizer,
    /// Dropout, label smoothing, augmentation and clipping; all off by
    /// default.
    pub regular: Regularization,
    /// Keys the random draws of a step (dropout masks, shifts) together
    /// with the step count, so that every backend draws the same.
    pub seed: u64,
    /// How the products of a training step round their operands.
    pub precision: Precision,
}

/// The arithmetic of a training step's matrix products.
///
/// `F16Mixed` is mixed precision's numerics: every product of a training
/// step (forward, input gradient, weight gradient) reads its operands (the
/// weights, the input batch, each hidden layer's output and each
/// backpropagated gradient) rounded to f16, round to nearest even, and
/// accumulates in f32; the master weights, the biases, the optimizer state,
/// the logits and the softmax stay f32, and evaluation always runs in f32.
/// Both backends round the same values, so they stay twins. The operands
/// are still stored as f32: the rounding gives f16's accuracy, not yet its
/// memory or speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Every value f32 (the default and the reference).
    #[default]
    F32,
    /// f16 operands, f32 accumulation, master weights and state.
    F16Mixed,
}

impl Precision {
    /// The name the command line uses: `f32` or `f16-mixed`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16Mixed => "f16-mixed",
        }
    }

    /// Whether the products round their operands to f16.
    pub fn is_f16(self) -> bool {
        self == Precision::F16Mixed
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16-mixed" => Ok(Precision::F16Mixed),
            _ => Err(Error::invalid(Setting::Precision, s, "f32 or f16-mixed")),
        }
    }
}

/// What a training step does beyond the plain loss and optimizer: each is
/// off at its default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Regularization {
    /// Probability of zeroing each hidden unit's output during training
    /// (inverted dropout: kept outputs are scaled by `1 / (1 - p)`), in
    /// `[0, 1)`; never applied at evaluation.
    pub dropout: f32,
    /// Label smoothing `s` in `[0, 1)`: the target is `(1 - s)` on the label
    /// plus `s / classes` on every class, as torch's
    /// `CrossEntropyLoss(label_smoothing=s)`.
    pub label_smoothing: f32,
    /// Random translation of each training image by up to this many pixels
    /// in each direction (0: none); needs image-shaped data.
    pub shift: u32,
    /// Scale the step's gradients so that their global L2 norm is at most
    /// this, as torch's `clip_grad_norm_`; `None`: no clipping.
    pub clip_grad_norm: Option<f32>,
}

impl Regularization {
    /// Whether every part is off.
    pub fn is_off(&self) -> bool {
        *self == Regularization::default()
    }

    /// Check the values a backend relies on.
    pub fn check(&self) -> Result<()> {
        if !(self.dropout >= 0.0 && self.dropout < 1.0) {
            return Err(Error::invalid(
                Setting::Dropout,
                self.dropout,
                "a probability in [0, 1)",
            ));
        }
        if !(self.label_smoothing >= 0.0 && self.label_smoothing < 1.0) {
            return Err(Error::invalid(
                Setting::LabelSmoothing,
                self.label_smoothing,
                "a fraction in [0, 1)",
            ));
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::invalid(Setting::ClipGradNorm, c, "a positive number"));
            }
        }
        Ok(())
    }
}

impl TrainSpec {
    /// Plain SGD at `batch` examples a step.
    pub fn sgd(batch: usize) -> Self {
        Self::new(batch, Optimizer::sgd())
    }

    /// `optimizer` at `batch` examples a step, without regularization.
    pub fn new(batch: usize, optimizer: Optimizer) -> Self {
        TrainSpec {
            batch,
            optimizer,
            regular: Regularization::default(),
            seed: 0,
            precision: Precision::F32,
        }
    }

    /// Check the values a backend relies on.
    pub fn check(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::invalid(Setting::BatchSize, self.batch, "at least 1"));
        }
        self.optimizer.check()?;
        self.regular.check()
    }
}

/// Knowledge distillation (Hinton et al., 2015): the student trains on
/// `alpha T^2 KL(p_T || softmax(z / T)) + (1 - alpha) CE(labels)`, where
/// `p_T` is the mean of the teachers' softmax at temperature `T`, computed
/// by the backend from each teacher's forward pass on the step's batch (the
/// same gathered and shifted rows, each teacher applying its own
/// preprocessing to the raw input; no dropout in the teachers).
#[derive(Debug, Clone, PartialEq)]
pub struct Distillation {
    /// f32 models of the student's inputs and classes.
    pub teachers: Vec<Mlp>,
    /// `T`, above 0.
    pub temperature: f32,
    /// The weight of the soft targets, in `[0, 1]`.
    pub alpha: f32,
    /// The teachers' probabilities at `temperature` of every training
    /// example (`[n_train, classes]`, in the training split's order, from
    /// [`crate::cpu::teacher_probabilities`]): when set, a step reads its
    /// rows' instead of running the teachers. They are of the unshifted
    /// images, so a backend that shifts its inputs refuses them.
    pub cached: Option<std::sync::Arc<Vec<f32>>>,
}

impl Distillation {
    /// Check the values, and that every teacher takes the student's
    /// `inputs` and gives its `classes`.
    pub fn check(&self, inputs: usize, classes: usize) -> Result<()> {
        Self::check_values(self.temperature, self.alpha)?;
        if self.teachers.is_empty() && self.cached.is_none() {
            return Err(Error::Config("distillation needs at least one teacher".into()));
        }
        for (i, t) in self.teachers.iter().enumerate() {
            if t.inputs() != inputs || t.classes() != classes {
                return Err(Error::Config(format!(
                    "teacher {} is a {} model: {} inputs and {} classes, the student has {} and {}",
                    i + 1,
                    join_sizes(&t.sizes()),
                    t.inputs(),
                    t.classes(),
                    inputs,
                    classes
                )));
            }
        }
        Ok(())
    }

    /// Check the cached probabilities against a training split of
    /// `n_train` examples, `classes` classes, and whether the backend
    /// shifts its inputs.
    pub fn check_cached(&self, n_train: usize, classes: usize, shifts: bool) -> Result<()> {
        let Some(c) = &self.cached else { return Ok(()) };
        if shifts {
            return Err(Error::Config(
                "cached teacher probabilities are of the unshifted images; they cannot be used with a shift".into(),
            ));
        }
        if c.len() != n_train * classes {
            return Err(Error::Config(format!(
                "the cached teacher probabilities hold {} values, the training split needs {n_train} x {classes}",
                c.len()
            )));
        }
        Ok(())
    }

    /// Check a temperature (above 0) and a soft-target weight (in `[0, 1]`).
    pub fn check_values(temperature: f32, alpha: f32) -> Result<()> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::invalid(Setting::Temperature, temperature, "a positive number"));
        }
        if !(0.0..=1.0).contains(&alpha) {
            return Err(Error::invalid(Setting::DistillAlpha, alpha, "a weight in [0, 1]"));
        }
        Ok(())
    }
}

/// Training loss and accuracy summed over the steps run since the last
/// [`Backend::take_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    /// Sum of per-example cross-entropy losses.
    pub loss_sum: f64,
    /// Examples whose arg-max matched the label.
    pub correct: u64,
    /// Examples seen.
    pub examples: u64,
    /// Steps run.
    pub steps: u64,
}

impl StepStats {
    /// Mean loss per example (0 when no example was seen).
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.examples.max(1) as f64
    }
    /// Fraction of examples classified correctly (0 when none was seen).
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.examples.max(1) as f64
    }

    /// Add another period's figures to these.
    pub fn add(&mut self, other: &StepStats) {
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.examples += other.examples;
        self.steps += other.steps;
    }
}

/// Which split to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitKind {
    /// The training split.
    Train,
    /// The rows held out of training ([`crate::data::Dataset::validation`]).
    Validation,
    /// The test split.
    Test,
}

/// A device that holds the parameters and the data and runs training steps.
///
/// A training step takes batch `i` of the current epoch: the examples
/// `order[i*batch .. min((i+1)*batch, n)]`, so the last, partial batch is
/// kept. The loss is the mean over the batch, as PyTorch's
/// `CrossEntropyLoss` computes it.
pub trait Backend {
    /// A human-readable name, e.g. `cpu (2 threads)` or the adapter's name.
    fn name(&self) -> String;

    /// Examples per training step.
    fn batch_size(&self) -> usize;

    /// The memory this backend holds for the run, part by part, as it
    /// allocated it: on the device for a GPU (parameters, weight
    /// gradients, optimizer state, activations and their gradients, the
    /// resident data, teachers, and the rest), on the host for the CPU.
    fn memory(&self) -> crate::resources::Need;

    /// Start an epoch with this order of training examples (a permutation
    /// of `0..n_train`).
    fn begin_epoch(&mut self, order: &[u32]) -> Result<()>;

    /// Run one step per entry of `hyper`, starting at batch `first` of the
    /// current epoch, step `first + i` with `hyper[i]`. Does not wait for
    /// results.
    fn train_steps(&mut self, first: usize, hyper: &[StepHyper]) -> Result<()>;

    /// Loss and accuracy of the steps since the last call (waits for them).
    fn take_stats(&mut self) -> Result<StepStats>;

    /// Forward pass over a whole split with the current parameters.
    fn predict_split(&mut self, split: SplitKind) -> Result<Predictions>;

    /// The current parameters (read back from the device).
    fn model(&mut self) -> Result<Mlp>;

    /// Enforce `constraint` on the parameters at once and after every
    /// update from now on; `None` lifts it.
    fn set_constraint(&mut self, constraint: Option<&Constraint>) -> Result<()>;

    /// Everything a later step depends on: the parameters, every optimizer
    /// state tensor and the update count (waits for the steps submitted).
    fn state(&mut self) -> Result<BackendState>;

    /// Put back a [`Backend::state`] taken from a backend built with the
    /// same layer sizes and optimizer; a mismatch is refused and changes
    /// nothing.
    fn restore(&mut self, state: &BackendState) -> Result<()>;

    /// Train the student by distillation from now on (checked against the
    /// model with [`Distillation::check`]); `None`: plain training again. A
    /// backend that cannot distill refuses.
    fn set_distillation(&mut self, distillation: Option<&Distillation>) -> Result<()> {
        match distillation {
            None => Ok(()),
            Some(_) => Err(Error::Config(format!("{} cannot train by distillation", self.name()))),
        }
    }

    /// Whether this process writes the run's files (checkpoints): true but
    /// on the ranks other than 0 of a distributed run, which take the same
    /// steps as rank 0 and leave the writing to it.
    fn is_primary(&self) -> bool {
        true
    }
}

/// A backend that can serve as one data-parallel replica: it computes the
/// gradient of part of a global batch, and applies a gradient summed over
/// every replica, so that all replicas keep identical parameters.
///
/// A replica is built with the global batch as its [`TrainSpec::batch`]
/// and holds the whole training set; every replica is given the same epoch
/// order, so the rows of a shard are `order[index * batch + rows.start ..
/// index * batch + rows.end]`. A step of `N` replicas is one
/// [`Replica::shard_gradients`] on each (over contiguous, disjoint row
/// ranges covering the batch), the sum of the packed gradients, and one
/// [`Replica::apply_gradients`] of that sum on each.
pub trait Replica: Backend + Send {
    /// Floats in the packed gradient: per layer in order, the weight (its
    /// layout in `Linear`) then the bias.
    fn gradient_len(&self) -> usize;

    /// The gradient of batch `index`'s mean loss (over the whole global
    /// batch, whose size is the backend's `batch_size()`; the last batch may
    /// be partial) restricted to the batch rows `rows`: the sum over those
    /// rows of each example's loss gradient divided by the number of rows of
    /// the whole batch, packed into `out` (length `gradient_len()`). An
    /// empty range gives zeros. Random draws (dropout, shift) use the rows'
    /// positions in the whole batch, so the replicas together draw what one
    /// device would. The rows' loss, correct count and examples count in
    /// `take_stats` (not the step: [`Replica::apply_gradients`] counts it).
    /// Updates nothing.
    fn shard_gradients(&mut self, index: usize, rows: std::ops::Range<usize>, out: &mut [f32]) -> Result<()>;

    /// One optimizer step with `grads` (packed as above, already summed over
    /// the replicas): clipping on its global norm when configured, the
    /// optimizer update with `hyper`, the constraint; counts one update and
    /// one step in `take_stats`.
    fn apply_gradients(&mut self, grads: &[f32], hyper: &StepHyper) -> Result<()>;

    /// Seconds the host spent moving the packed gradients between this
    /// replica's memory and the host since the last call (readbacks,
    /// uploads); 0 for a replica in host memory. For measurements only.
    fn take_transfer_seconds(&mut self) -> f64 {
        0.0
    }
}

/// Check that a shard's rows lie within a batch of `rows` rows.
pub fn check_shard(shard: &std::ops::Range<usize>, rows: usize) -> Result<()> {
    if shard.start > shard.end || shard.end > rows {
        return Err(Error::Config(format!(
            "shard rows {}..{} outside the batch's {rows}",
            shard.start, shard.end
        )));
    }
    Ok(())
}

/// The state a backend carries from one step to the next
/// ([`Backend::state`]), the same on every backend.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendState {
    /// The parameters.
    pub model: Mlp,
    /// Per layer, [`Optimizer::state_slots`] buffers of the weight and as
    /// many of the bias (none for plain SGD).
    pub slots: Vec<LayerSlots>,
    /// Updates applied so far (Adam's `t` of the next step is this plus
    /// one; also the step key of random draws).
    pub updates: u64,
}

/// The optimizer state of one layer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayerSlots {
    /// The weight's buffers, each of the weight's length.
    pub weight: Vec<Vec<f32>>,
    /// The bias's buffers, each of the bias's length.
    pub bias: Vec<Vec<f32>>,
}

impl BackendState {
    /// Check that this state fits a backend of `model`'s layer sizes
    /// running `optimizer`.
    pub fn check_fits(&self, model: &Mlp, optimizer: &Optimizer) -> Result<()> {
        if self.model.sizes() != model.sizes() {
            return Err(Error::Config(format!(
                "the saved state is of a {} model, this backend trains a {} one",
                join_sizes(&self.model.sizes()),
                join_sizes(&model.sizes())
            )));
        }
        if self.model.preprocess != model.preprocess {
            return Err(Error::Config(format!(
                "the saved state preprocesses inputs as {:?}, this backend as {:?}",
                self.model.preprocess, model.preprocess
            )));
        }
        let slots = optimizer.state_slots();
        let fits = self.slots.len() == model.layers.len()
            && self.slots.iter().zip(&model.layers).all(|(s, l)| {
                s.weight.len() == slots
                    && s.bias.len() == slots
                    && s.weight.iter().all(|w| w.len() == l.weight.len())
                    && s.bias.iter().all(|b| b.len() == l.bias.len())
            });
        if !fits {
            return Err(Error::Config(format!(
                "the saved optimizer state does not fit {} ({} buffers per tensor)",
                optimizer.name(),
                slots
            )));
        }
        Ok(())
    }
}

/// Layer widths joined by dashes: `784-500-10`.
pub fn join_sizes(sizes: &[usize]) -> String {
    sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("-")
}

/// Number of training steps in an epoch of `n` examples at batch `batch`.
pub fn steps_per_epoch(n: usize, batch: usize) -> usize {
    n.div_ceil(batch)
}

/// Check that a run of `steps` steps from batch `first` fits in an epoch of
/// `total` steps.
pub fn check_steps(first: usize, steps: usize, total: usize) -> Result<()> {
    if first + steps > total {
        return Err(Error::Config(format!(
            "steps {first}..{} past the epoch's {total}",
            first + steps
        )));
    }
    Ok(())
}

/// Check that an epoch order names `n` examples, each below `n`.
pub fn check_order(order: &[u32], n: usize) -> Result<()> {
    if order.len() != n {
        return Err(Error::Config(format!(
            "epoch order has {} entries for {n} training examples",
            order.len()
        )));
    }
    if let Some(&bad) = order.iter().find(|&&i| i as usize >= n) {
        return Err(Error::Config(format!("epoch order names example {bad} of {n}")));
    }
    Ok(())
}
