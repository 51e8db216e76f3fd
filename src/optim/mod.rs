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
pub mod draw;
mod schedule;

pub use constraint::Constraint;
pub use schedule::{Decay, LrSchedule, ScheduleSpec, Warmup};

use crate::error::{Error, Result, Setting};

/// The update rule. The semantics, and the order of the floating-point
/// operations, are torch.optim's (`torch.optim.SGD`, `Adam`, `AdamW`, with
/// their defaults for everything not named here). With `g` the gradient of
/// the batch's mean loss, `p` a parameter, `lr` the step's learning rate
/// and `t` the step count (1 at the first step):
///
/// ```text
/// SGD (momentum mu, dampening 0, weight decay wd):
///     g = g + wd * p                       (when wd != 0)
///     b = mu * b + g                       (when mu != 0; b = g at the first step)
///     g = g + mu * b   if nesterov,  else  g = b
///     p = p - lr * g
/// Adam (betas b1, b2, eps, weight decay wd as L2):
///     g = g + wd * p                       (when wd != 0)
///     m = b1 * m + (1 - b1) * g           (1 - b1, 1 - b2 from f64, as torch)
///     v = b2 * v + (1 - b2) * g * g
///     m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)
///     p = p - lr * m_hat / (sqrt(v_hat) + eps)
/// AdamW (decoupled weight decay):
///     p = p - lr * wd * p                  (before the Adam step, which has wd = 0)
///     then Adam as above.
/// ```
///
/// The bias corrections `1 - b1^t`, `1 - b2^t` are computed on the host in
/// f64 from the step count each backend keeps; the kernels evaluate the
/// last line as torch does, `p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// SGD, optionally with momentum, Nesterov momentum and L2 weight
    /// decay. Plain SGD (no momentum, no weight decay), the default, is
    /// fused by both backends into the weight-gradient product, so no
    /// gradient is ever stored.
    Sgd(Sgd),
    /// Adam with L2 weight decay added to the gradient.
    Adam(Adam),
    /// AdamW: Adam with decoupled weight decay.
    AdamW(Adam),
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::Sgd(Sgd::default())
    }
}

/// The settings of [`Optimizer::Sgd`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sgd {
    /// Momentum factor `mu` (0: none).
    pub momentum: f32,
    /// Nesterov momentum (needs `momentum > 0`).
    pub nesterov: bool,
    /// L2 penalty `wd`, added to the gradient as `wd * p`.
    pub weight_decay: f32,
}

/// The settings of [`Optimizer::Adam`] and [`Optimizer::AdamW`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam {
    /// Decay rates of the first and second moment estimates, each in `[0, 1)`.
    pub betas: (f32, f32),
    /// Added to the denominator.
    pub eps: f32,
    /// Weight decay: L2 for Adam, decoupled for AdamW.
    pub weight_decay: f32,
}

impl Default for Adam {
    /// torch.optim.Adam's defaults: betas (0.9, 0.999), eps 1e-8, no decay.
    fn default() -> Self {
        Adam {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl Optimizer {
    /// Plain SGD, `p -= lr * g`.
    pub fn sgd() -> Self {
        Optimizer::default()
    }

    /// Buffers of state the optimizer keeps per parameter tensor, each the
    /// tensor's size: 0 for SGD without momentum, 1 (the momentum buffer
    /// `b`) with it, 2 (`m` and `v`) for Adam and AdamW.
    pub fn state_slots(&self) -> usize {
        match self {
            Optimizer::Sgd(s) if s.momentum != 0.0 => 1,
            Optimizer::Sgd(_) => 0,
            Optimizer::Adam(_) | Optimizer::AdamW(_) => 2,
        }
    }

    /// Whether the update is plain SGD, which the backends fuse into the
    /// weight-gradient product; every other rule needs the gradient in a
    /// buffer first.
    pub fn is_fused(&self) -> bool {
        matches!(self, Optimizer::Sgd(s) if s.momentum == 0.0 && s.weight_decay == 0.0)
    }

    /// Its name, as `--optimizer` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd(_) => "sgd",
            Optimizer::Adam(_) => "adam",
            Optimizer::AdamW(_) => "adamw",
        }
    }

    /// Check every setting, as torch.optim's constructors do (and refuse
    /// Nesterov momentum without momentum, which torch also refuses).
    pub fn check(&self) -> Result<()> {
        match self {
            Optimizer::Sgd(s) => {
                if !(s.momentum >= 0.0 && s.momentum.is_finite()) {
                    return Err(Error::invalid(Setting::Momentum, s.momentum, "a finite number >= 0"));
                }
                if s.nesterov && s.momentum == 0.0 {
                    return Err(Error::invalid(
                        Setting::Nesterov,
                        "set",
                        "a momentum above 0 (Nesterov momentum needs momentum)",
                    ));
                }
                check_decay(s.weight_decay)
            }
            Optimizer::Adam(a) | Optimizer::AdamW(a) => {
                let (b1, b2) = a.betas;
                for b in [b1, b2] {
                    if !(0.0..1.0).contains(&b) {
                        return Err(Error::invalid(
                            Setting::Betas,
                            format!("{b1},{b2}"),
                            "two numbers in [0, 1), e.g. 0.9,0.999",
                        ));
                    }
                }
                if !(a.eps >= 0.0 && a.eps.is_finite()) {
                    return Err(Error::invalid(Setting::Eps, a.eps, "a finite number >= 0"));
                }
                check_decay(a.weight_decay)
            }
        }
    }
}

/// The f64 of the shortest decimal that rounds to `x`.
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn check_decay(wd: f32) -> Result<()> {
    if !(wd >= 0.0 && wd.is_finite()) {
        return Err(Error::invalid(Setting::WeightDecay, wd, "a finite number >= 0"));
    }
    Ok(())
}

impl Adam {
    /// `(1 - b1, 1 - b2)` in f64 from the betas as written, rounded to f32:
    /// the weights torch gives the new gradient in the moment updates (in
    /// f32, `1 - 0.999` would be 1.3e-5 off, and would not cancel against
    /// the bias correction).
    pub fn complements(&self) -> (f32, f32) {
        let c = |b: f32| (1.0 - decimal(b)) as f32;
        (c(self.betas.0), c(self.betas.1))
    }

    /// The bias corrections `(1 - b1^t, 1 - b2^t)` of step `t` (from 1),
    /// in f64. Each beta is taken as the decimal it was written as (the
    /// shortest one that rounds to the f32: 0.9, not 0.899999976), as
    /// torch computes these from the Python float.
    pub fn bias_corrections(&self, t: u64) -> (f64, f64) {
        let t = t.min(i32::MAX as u64) as i32;
        let (b1, b2) = (decimal(self.betas.0), decimal(self.betas.1));
        (1.0 - b1.powi(t), 1.0 - b2.powi(t))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn setting_of(o: Optimizer) -> Option<Setting> {
        match o.check() {
            Err(Error::Invalid { setting, .. }) => Some(setting),
            Err(e) => panic!("not an Invalid error: {e}"),
            Ok(()) => None,
        }
    }

    #[test]
    fn check_refuses_what_torch_refuses() {
        let sgd = |momentum, nesterov, weight_decay| {
            Optimizer::Sgd(Sgd {
                momentum,
                nesterov,
                weight_decay,
            })
        };
        assert_eq!(setting_of(sgd(0.9, true, 0.0)), None);
        assert_eq!(setting_of(sgd(0.0, true, 0.0)), Some(Setting::Nesterov));
        assert_eq!(setting_of(sgd(-0.1, false, 0.0)), Some(Setting::Momentum));
        assert_eq!(setting_of(sgd(f32::NAN, false, 0.0)), Some(Setting::Momentum));
        assert_eq!(setting_of(sgd(0.0, false, -1e-4)), Some(Setting::WeightDecay));
        let adam = |b1, b2, eps, wd| {
            Optimizer::AdamW(Adam {
                betas: (b1, b2),
                eps,
                weight_decay: wd,
            })
        };
        assert_eq!(setting_of(adam(0.9, 0.999, 1e-8, 0.01)), None);
        assert_eq!(setting_of(adam(0.0, 0.0, 0.0, 0.0)), None);
        assert_eq!(setting_of(adam(1.0, 0.999, 1e-8, 0.0)), Some(Setting::Betas));
        assert_eq!(setting_of(adam(0.9, -0.1, 1e-8, 0.0)), Some(Setting::Betas));
        assert_eq!(setting_of(adam(0.9, 0.999, -1e-8, 0.0)), Some(Setting::Eps));
        assert_eq!(setting_of(adam(0.9, 0.999, 1e-8, -0.5)), Some(Setting::WeightDecay));
    }

    #[test]
    fn state_slots_and_fusion() {
        assert_eq!(Optimizer::sgd().state_slots(), 0);
        assert!(Optimizer::sgd().is_fused());
        let wd = Optimizer::Sgd(Sgd {
            weight_decay: 0.1,
            ..Sgd::default()
        });
        assert_eq!((wd.state_slots(), wd.is_fused()), (0, false));
        let mom = Optimizer::Sgd(Sgd {
            momentum: 0.9,
            ..Sgd::default()
        });
        assert_eq!((mom.state_slots(), mom.is_fused()), (1, false));
        assert_eq!(Optimizer::Adam(Adam::default()).state_slots(), 2);
        assert_eq!(Optimizer::AdamW(Adam::default()).state_slots(), 2);
    }

    #[test]
    fn bias_corrections_in_f64() {
        let a = Adam::default();
        let (c1, c2) = a.bias_corrections(1);
        assert!((c1 - 0.1).abs() < 1e-12 && (c2 - 0.001).abs() < 1e-12, "{c1} {c2}");
        let (c1, c2) = a.bias_corrections(10);
        assert!((c1 - (1.0 - 0.9f64.powi(10))).abs() < 1e-9);
        assert!((c2 - (1.0 - 0.999f64.powi(10))).abs() < 1e-9);
    }
}
