//! The learning rate of each step.

/// How the learning rate moves over a run, indexed by the global step
/// (steps run since the start of training, from 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// The same rate at every step.
    Constant { lr: f64 },
}

impl LrSchedule {
    /// The rate at global step `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        let _ = step;
        match *self {
            LrSchedule::Constant { lr } => lr,
        }
    }

    /// The first step's rate, which every schedule must keep positive.
    pub fn peak(&self) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
        }
    }
}
