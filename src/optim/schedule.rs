//! The learning rate of each step.
//!
//! A schedule is described by a [`ScheduleSpec`] (the base rate, how it
//! decays, and an optional warm-up), which can be checked before the run's
//! length is known, and becomes an [`LrSchedule`] once it is: the number of
//! steps per epoch and of epochs fix the step at which every phase ends.
//!
//! The definitions are those of `torch.optim.lr_scheduler`, stepped once per
//! training step (global step `s`, counted from 0), with `lr` the base rate,
//! `W` the warm-up steps, `T` the run's steps and `t = s - W` the step within
//! the schedule that follows the warm-up, which runs over `T - W` steps:
//!
//! - warm-up, `s < W`: `r0 * (s + 1) / (W + 1)`, where `r0` is the rate the
//!   schedule after it starts from (`lr`, or `lr / 25` for one-cycle):
//!   torch's `LinearLR(start_factor = 1 / (W + 1), total_iters = W)`
//!   followed by the schedule through `SequentialLR(milestones = [W])`. The
//!   rate climbs by equal increments and reaches `r0` at step `W`.
//! - constant: `lr`.
//! - step: `lr * gamma ^ floor(t / (N * steps_per_epoch))`, torch's `StepLR`
//!   with `step_size = N` epochs.
//! - cosine: `lr_min + (lr - lr_min) * (1 + cos(pi * t / (T - W))) / 2`,
//!   torch's `CosineAnnealingLR(T_max = T - W, eta_min = lr_min)`; the last
//!   step is one short of `lr_min`, as in torch.
//! - one-cycle: torch's `OneCycleLR(max_lr = lr, total_steps = T - W)` with
//!   its defaults (`pct_start = 0.3`, cosine annealing, `div_factor = 25`,
//!   `final_div_factor = 1e4`, two phases): from `lr / 25` up to `lr` at
//!   step `0.3 * (T - W) - 1`, then down to `lr / 25 / 1e4` at the last
//!   step. Only the rate cycles; momentum is not touched.
//!
//! Steps past the end of the run keep the last step's rate.

use std::f64::consts::PI;
use std::fmt;

use crate::error::{Error, Result, Setting};

/// How the rate moves after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decay {
    /// The base rate at every step.
    Constant,
    /// Multiplied by `gamma` every `every_epochs` epochs.
    Step {
        /// Epochs between two multiplications (at least 1).
        every_epochs: usize,
        /// The factor, in `(0, 1]`.
        gamma: f64,
    },
    /// Half a cosine from the base rate down to `lr_min` over the run.
    Cosine {
        /// The rate the cosine falls towards (`eta_min`), from 0 to the
        /// base rate.
        lr_min: f64,
    },
    /// torch's one-cycle policy with the base rate as its peak.
    OneCycle,
}

impl Decay {
    /// Its name, as `--schedule` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Decay::Constant => "constant",
            Decay::Step { .. } => "step",
            Decay::Cosine { .. } => "cosine",
            Decay::OneCycle => "one-cycle",
        }
    }
}

/// The optional linear warm-up before the schedule proper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Warmup {
    /// No warm-up: the schedule starts at its first step.
    #[default]
    None,
    /// This many whole epochs.
    Epochs(usize),
    /// This many steps.
    Steps(usize),
}

/// A schedule as a user gives it, before the run's length is known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleSpec {
    /// The base rate: the constant rate, the start of a decay, the peak of
    /// one-cycle.
    pub lr: f64,
    /// How the rate moves after the warm-up.
    pub decay: Decay,
    /// The linear warm-up up to the rate the decay starts from, if any.
    pub warmup: Warmup,
}

/// torch's `OneCycleLR` defaults.
const ONE_CYCLE_PCT_START: f64 = 0.3;
const ONE_CYCLE_DIV: f64 = 25.0;
const ONE_CYCLE_FINAL_DIV: f64 = 1e4;

impl ScheduleSpec {
    /// The constant rate `lr`, without warm-up.
    pub fn constant(lr: f64) -> Self {
        ScheduleSpec {
            lr,
            decay: Decay::Constant,
            warmup: Warmup::None,
        }
    }

    /// Check every value that does not depend on the run's length.
    pub fn check(&self) -> Result<()> {
        let lr = self.lr;
        if !(lr.is_finite() && lr > 0.0 && lr as f32 > 0.0) {
            return Err(Error::invalid(Setting::LearningRate, lr, "a positive number"));
        }
        match self.decay {
            Decay::Constant | Decay::OneCycle => {}
            Decay::Step { every_epochs, gamma } => {
                if every_epochs == 0 {
                    return Err(Error::invalid(Setting::LrStepEpochs, every_epochs, "1 epoch or more"));
                }
                if !(gamma.is_finite() && gamma > 0.0 && gamma <= 1.0) {
                    return Err(Error::invalid(
                        Setting::LrGamma,
                        gamma,
                        "a factor above 0 and at most 1 (e.g. 0.1)",
                    ));
                }
            }
            Decay::Cosine { lr_min } => {
                if !(lr_min.is_finite() && lr_min >= 0.0 && lr_min <= lr) {
                    return Err(Error::invalid(
                        Setting::LrMin,
                        lr_min,
                        "a rate from 0 up to the learning rate",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How the learning rate moves over a run, indexed by the global step
/// (steps run since the start of training, from 0). Built, and checked, by
/// [`LrSchedule::new`]; the module documentation gives the formulas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    lr: f64,
    decay: Decay,
    steps_per_epoch: usize,
    /// Steps of the run, warm-up included.
    total_steps: usize,
    warmup_steps: usize,
}

impl LrSchedule {
    /// The same rate `lr` at every step, for runs of any length. Its value
    /// is checked by `TrainConfig::check` through [`LrSchedule::peak`].
    pub fn constant(lr: f64) -> Self {
        LrSchedule {
            lr,
            decay: Decay::Constant,
            steps_per_epoch: 1,
            total_steps: usize::MAX,
            warmup_steps: 0,
        }
    }

    /// The schedule `spec` over a run of `epochs` epochs of
    /// `steps_per_epoch` steps, after checking `spec` and that a warm-up
    /// leaves at least one step to the schedule after it.
    pub fn new(spec: &ScheduleSpec, steps_per_epoch: usize, epochs: usize) -> Result<Self> {
        spec.check()?;
        if steps_per_epoch == 0 {
            return Err(Error::Config(
                "a learning-rate schedule needs 1 step per epoch or more".into(),
            ));
        }
        let total_steps = epochs
            .checked_mul(steps_per_epoch)
            .ok_or_else(|| Error::Config(format!("{epochs} epochs of {steps_per_epoch} steps is too many steps")))?;
        let (warmup_steps, setting, given) = match spec.warmup {
            Warmup::None => (0, Setting::WarmupSteps, 0),
            Warmup::Steps(s) => (s, Setting::WarmupSteps, s),
            Warmup::Epochs(e) => (e.saturating_mul(steps_per_epoch), Setting::WarmupEpochs, e),
        };
        if warmup_steps > 0 && warmup_steps >= total_steps {
            let unit = if setting == Setting::WarmupEpochs {
                epochs
            } else {
                total_steps
            };
            return Err(Error::invalid(
                setting,
                format!("{given} (of a run of {unit})"),
                "fewer than the run has, leaving steps to the schedule after it",
            ));
        }
        Ok(LrSchedule {
            lr: spec.lr,
            decay: spec.decay,
            steps_per_epoch,
            total_steps,
            warmup_steps,
        })
    }

    /// The rate at global step `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        let step = step.min(self.total_steps.saturating_sub(1));
        if step < self.warmup_steps {
            let w = self.warmup_steps as f64;
            return self.start_rate() * (step as f64 + 1.0) / (w + 1.0);
        }
        self.after_warmup(step - self.warmup_steps)
    }

    /// The rate the schedule after the warm-up starts from, which the
    /// warm-up climbs to.
    fn start_rate(&self) -> f64 {
        match self.decay {
            Decay::OneCycle => self.lr / ONE_CYCLE_DIV,
            Decay::Constant | Decay::Step { .. } | Decay::Cosine { .. } => self.lr,
        }
    }

    /// The rate at step `t` of the schedule that follows the warm-up.
    fn after_warmup(&self, t: usize) -> f64 {
        let lr = self.lr;
        let steps = self.total_steps - self.warmup_steps;
        match self.decay {
            Decay::Constant => lr,
            Decay::Step { every_epochs, gamma } => {
                let k = t / every_epochs.saturating_mul(self.steps_per_epoch);
                lr * gamma.powi(i32::try_from(k).unwrap_or(i32::MAX))
            }
            Decay::Cosine { lr_min } => lr_min + (lr - lr_min) * (1.0 + (PI * t as f64 / steps as f64).cos()) / 2.0,
            Decay::OneCycle => {
                let initial = lr / ONE_CYCLE_DIV;
                let min = initial / ONE_CYCLE_FINAL_DIV;
                let t = t as f64;
                let up_end = ONE_CYCLE_PCT_START * steps as f64 - 1.0;
                let down_end = steps as f64 - 1.0;
                if t <= up_end {
                    annealing_cos(initial, lr, t / up_end)
                } else {
                    annealing_cos(lr, min, (t - up_end) / (down_end - up_end))
                }
            }
        }
    }

    /// The highest rate of the run, the base rate: every schedule starts
    /// from it or climbs to it, and none goes above it.
    pub fn peak(&self) -> f64 {
        self.lr
    }

    /// Steps of warm-up at the start of the run.
    pub fn warmup_steps(&self) -> usize {
        self.warmup_steps
    }
}

/// torch's `_annealing_cos`: from `start` (pct 0) to `end` (pct 1) along
/// half a cosine.
fn annealing_cos(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0)
}

/// The schedule in words, its rates printed as the f32 the backends get.
impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lr = self.lr as f32;
        if self.warmup_steps > 0 {
            write!(f, "linear warm-up over {} steps, then ", self.warmup_steps)?;
        }
        match self.decay {
            Decay::Constant => write!(f, "constant {lr}"),
            Decay::Step { every_epochs, gamma } => {
                write!(f, "{lr} times {} every {every_epochs} epochs", gamma as f32)
            }
            Decay::Cosine { lr_min } => write!(f, "cosine from {lr} to {}", lr_min as f32),
            Decay::OneCycle => write!(
                f,
                "one-cycle from {} up to {lr} and down to {}",
                (self.lr / ONE_CYCLE_DIV) as f32,
                (self.lr / ONE_CYCLE_DIV / ONE_CYCLE_FINAL_DIV) as f32
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(decay: Decay, warmup: Warmup) -> ScheduleSpec {
        ScheduleSpec { lr: 0.1, decay, warmup }
    }

    fn all(s: &LrSchedule, steps: usize) -> Vec<f64> {
        (0..steps).map(|i| s.lr_at(i)).collect()
    }

    fn close(a: &[f64], b: &[f64], rel: f64) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= rel * y.abs(), "step {i}: {x} vs {y}");
        }
    }

    #[test]
    fn constant_is_the_rate_itself_bit_for_bit() {
        let lr = f64::from(0.1f32);
        let built = LrSchedule::new(&ScheduleSpec::constant(lr), 23, 30).unwrap();
        for s in [0, 1, 22, 23, 689, 690, 10_000] {
            assert_eq!(LrSchedule::constant(lr).lr_at(s).to_bits(), lr.to_bits());
            assert_eq!(built.lr_at(s).to_bits(), lr.to_bits());
        }
        assert_eq!(built.peak(), lr);
    }

    #[test]
    fn warmup_climbs_in_equal_steps_to_the_rate() {
        let s = LrSchedule::new(
            &ScheduleSpec {
                lr: 0.3,
                decay: Decay::Constant,
                warmup: Warmup::Steps(2),
            },
            5,
            1,
        )
        .unwrap();
        close(&all(&s, 5), &[0.1, 0.2, 0.3, 0.3, 0.3], 1e-15);
        // Whole epochs of warm-up are epochs times steps per epoch.
        let s = LrSchedule::new(&spec(Decay::Constant, Warmup::Epochs(1)), 3, 2).unwrap();
        assert_eq!(s.warmup_steps(), 3);
        close(&all(&s, 6), &[0.025, 0.05, 0.075, 0.1, 0.1, 0.1], 1e-15);
        // One-cycle's warm-up climbs to where one-cycle starts.
        let s = LrSchedule::new(&spec(Decay::OneCycle, Warmup::Steps(1)), 11, 1).unwrap();
        close(&all(&s, 2), &[0.002, 0.004], 1e-15);
    }

    #[test]
    fn step_decays_once_per_n_epochs_after_the_warmup() {
        let decay = Decay::Step {
            every_epochs: 2,
            gamma: 0.5,
        };
        let s = LrSchedule::new(&spec(decay, Warmup::None), 2, 5).unwrap();
        close(
            &all(&s, 10),
            &[0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025],
            1e-15,
        );
        let s = LrSchedule::new(&spec(decay, Warmup::Epochs(1)), 2, 4).unwrap();
        close(
            &all(&s, 8),
            &[0.1 / 3.0, 0.2 / 3.0, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05],
            1e-15,
        );
    }

    #[test]
    fn cosine_falls_by_half_a_cosine_to_one_step_short_of_the_minimum() {
        let s = LrSchedule::new(&spec(Decay::Cosine { lr_min: 0.0 }, Warmup::None), 2, 2).unwrap();
        // (1 + cos(k pi / 4)) / 2 for k = 0..4.
        close(
            &all(&s, 4),
            &[0.1, 0.08535533905932738, 0.05, 0.014644660940672624],
            1e-14,
        );
        // Past the end: the last step's rate.
        assert_eq!(s.lr_at(4), s.lr_at(3));
        let s = LrSchedule::new(&spec(Decay::Cosine { lr_min: 0.02 }, Warmup::None), 1, 2).unwrap();
        close(&all(&s, 2), &[0.1, 0.06], 1e-14);
    }

    #[test]
    fn one_cycle_goes_up_to_the_rate_and_down_to_its_ten_thousandth_of_a_25th() {
        // 10 steps: up over steps 0..=2 (0.3 * 10 - 1), down over 2..=9.
        let s = LrSchedule::new(&spec(Decay::OneCycle, Warmup::None), 5, 2).unwrap();
        let r = all(&s, 10);
        close(&r[..3], &[0.004, 0.052, 0.1], 1e-14);
        close(&r[9..], &[0.1 / 25.0 / 1e4], 1e-12);
        assert!(r.windows(2).skip(2).all(|w| w[1] < w[0]), "{r:?}");
        // Halfway down (step 5.5) is the mean of the ends.
        let mid = (0.1 + 0.1 / 25.0 / 1e4) / 2.0;
        assert!(r[5] > mid && r[6] < mid, "{r:?}");
        assert_eq!(s.peak(), 0.1);
    }

    fn refused(spec: ScheduleSpec, spe: usize, epochs: usize) -> Setting {
        match LrSchedule::new(&spec, spe, epochs) {
            Err(Error::Invalid { setting, .. }) => setting,
            other => panic!("{spec:?} gave {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_their_setting() {
        let step = |every_epochs, gamma| spec(Decay::Step { every_epochs, gamma }, Warmup::None);
        for g in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            assert_eq!(refused(step(1, g), 10, 2), Setting::LrGamma, "{g}");
            assert!(step(1, g).check().is_err());
        }
        assert!(step(1, 1.0).check().is_ok());
        assert_eq!(refused(step(0, 0.5), 10, 2), Setting::LrStepEpochs);
        for m in [-0.01, 0.11, f64::NAN] {
            assert_eq!(
                refused(spec(Decay::Cosine { lr_min: m }, Warmup::None), 10, 2),
                Setting::LrMin
            );
        }
        assert!(spec(Decay::Cosine { lr_min: 0.1 }, Warmup::None).check().is_ok());
        let mut bad_lr = ScheduleSpec::constant(0.0);
        assert_eq!(refused(bad_lr, 10, 2), Setting::LearningRate);
        bad_lr.lr = f64::NAN;
        assert_eq!(refused(bad_lr, 10, 2), Setting::LearningRate);
        // A warm-up must leave the schedule at least one step.
        assert_eq!(
            refused(spec(Decay::Constant, Warmup::Steps(20)), 10, 2),
            Setting::WarmupSteps
        );
        assert_eq!(
            refused(spec(Decay::Constant, Warmup::Epochs(2)), 10, 2),
            Setting::WarmupEpochs
        );
        assert!(LrSchedule::new(&spec(Decay::Constant, Warmup::Steps(19)), 10, 2).is_ok());
        assert!(LrSchedule::new(&spec(Decay::Constant, Warmup::Epochs(0)), 10, 0).is_ok());
        assert!(LrSchedule::new(&ScheduleSpec::constant(0.1), 0, 2).is_err());
    }

    /// The rates torch.optim.lr_scheduler gives (scripts/lr_schedules.py).
    /// torch computes most of them recursively, each from the previous
    /// step's, and wgtrain in closed form, so they agree to rounding, not
    /// bit for bit: a few ulps (5e-16 relative at most in these cases, the
    /// cosine's recursion over 46 steps); the test allows 1e-12 relative.
    #[test]
    fn every_step_matches_torch() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/lr_schedules.json")).unwrap();
        let cases = v["cases"].as_array().unwrap();
        assert!(cases.len() >= 8);
        for c in cases {
            let f = |k: &str| c[k].as_f64();
            let n = |k: &str| c[k].as_u64().map(|x| x as usize);
            let decay = match c["schedule"].as_str().unwrap() {
                "constant" => Decay::Constant,
                "step" => Decay::Step {
                    every_epochs: n("lr_step_epochs").unwrap(),
                    gamma: f("lr_gamma").unwrap(),
                },
                "cosine" => Decay::Cosine {
                    lr_min: f("lr_min").unwrap(),
                },
                "one-cycle" => Decay::OneCycle,
                other => panic!("unknown schedule {other}"),
            };
            let warmup = match (n("warmup_epochs"), n("warmup_steps")) {
                (Some(e), _) => Warmup::Epochs(e),
                (None, Some(s)) => Warmup::Steps(s),
                (None, None) => Warmup::None,
            };
            let spec = ScheduleSpec {
                lr: f("lr").unwrap(),
                decay,
                warmup,
            };
            let s = LrSchedule::new(&spec, n("steps_per_epoch").unwrap(), n("epochs").unwrap()).unwrap();
            let want: Vec<f64> = c["rates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(want.len(), n("steps_per_epoch").unwrap() * n("epochs").unwrap());
            let got = all(&s, want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-12 * w.abs(), "{c}\nstep {i}: {g} vs torch {w}");
            }
        }
    }
}
