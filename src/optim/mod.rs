//! How a gradient becomes an update: the optimizer, the per-step scalars the
//! host hands to a backend, the learning-rate schedule that produces them,
//! and constraints applied to the parameters after every update.
//!
//! The host computes everything that is the same for a whole step (the
//! learning rate of the schedule, and later bias corrections) in f64 and
//! hands it down as a [`StepHyper`]; the backends apply it to every
//! parameter. An optimizer names how many slots of per-parameter state it
//! keeps ([`Optimizer::state_slots`]), and each backend allocates them
//! beside the weights, on its own device.

mod constraint;
mod schedule;

pub use constraint::Constraint;
pub use schedule::{Decay, LrSchedule, ScheduleSpec, Warmup};

/// The update rule. The semantics are torch.optim's.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Optimizer {
    /// Plain SGD, `p -= lr * g` (torch.optim.SGD without momentum or weight
    /// decay). Both backends fuse it into the weight-gradient product, so
    /// no gradient is ever stored.
    #[default]
    Sgd,
}

impl Optimizer {
    /// Buffers of state the optimizer keeps per parameter tensor, each the
    /// tensor's size (0 for plain SGD).
    pub fn state_slots(&self) -> usize {
        match self {
            Optimizer::Sgd => 0,
        }
    }

    /// Its name, as `--optimizer` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd => "sgd",
        }
    }
}

/// The scalars of one training step, the same for every parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepHyper {
    /// The learning rate in force for this step.
    pub lr: f32,
}

impl StepHyper {
    /// `steps` steps at a fixed learning rate.
    pub fn constant(lr: f32, steps: usize) -> Vec<StepHyper> {
        vec![StepHyper { lr }; steps]
    }
}
