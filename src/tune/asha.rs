//! Asynchronous successive halving (ASHA; Li et al., 2018, "A System for
//! Massively Parallel Hyperparameter Tuning"), in its stopping form.
//!
//! The resource is the epoch. Rungs lie at `grace * eta^k` epochs
//! (`k = 0, 1, ...`) below the most epochs of a trial. A trial reports its
//! validation accuracy after every epoch; at a rung it is recorded there and
//! compared with every result recorded at that rung so far (by any trial,
//! in any process, itself included): of those `n` results the best
//! `max(1, floor(n / eta))` are promoted. The trial goes on to the next rung
//! if its accuracy is at least the lowest of those (ties promote), and is
//! pruned otherwise. The first trial to reach a rung is therefore always
//! promoted, and no trial waits for others, as in the paper; a trial's
//! decision never changes later.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The settings of successive halving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asha {
    /// Epochs of the first rung (the grace period, or minimum resource).
    pub grace: usize,
    /// The reduction factor: a rung promotes one result in `eta`.
    pub eta: usize,
    /// The most epochs of a trial (the maximum resource).
    pub max_epochs: usize,
}

impl Asha {
    /// Checked: a grace period of at least 1 epoch, `eta` of at least 2.
    pub fn new(grace: usize, eta: usize, max_epochs: usize) -> Result<Self> {
        if grace == 0 {
            return Err(Error::Config(
                "successive halving's grace period 0: expected at least 1 epoch".into(),
            ));
        }
        if eta < 2 {
            return Err(Error::Config(format!(
                "successive halving's reduction factor {eta}: expected at least 2"
            )));
        }
        Ok(Asha { grace, eta, max_epochs })
    }

    /// The rungs, in epochs, ascending: `grace * eta^k` below `max_epochs`.
    pub fn rungs(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut r = self.grace;
        while r < self.max_epochs {
            out.push(r);
            r = match r.checked_mul(self.eta) {
                Some(n) => n,
                None => break,
            };
        }
        out
    }

    /// Whether `epoch` is a rung.
    pub fn is_rung(&self, epoch: usize) -> bool {
        self.rungs().contains(&epoch)
    }

    /// How many of `n` results at a rung are promoted.
    pub fn promoted_count(&self, n: usize) -> usize {
        (n / self.eta).max(1)
    }

    /// Whether `value` (higher is better) goes on, given every value
    /// recorded at the rung so far, `value` among them.
    pub fn promotes(&self, value: f64, at_rung: &[f64]) -> bool {
        let mut sorted: Vec<f64> = at_rung.iter().copied().filter(|v| !v.is_nan()).collect();
        if value.is_nan() {
            return false;
        }
        sorted.sort_by(|a, b| b.total_cmp(a));
        let k = self.promoted_count(sorted.len()).min(sorted.len());
        k > 0 && value >= sorted[k - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_are_grace_times_powers_of_eta_below_the_maximum() {
        assert_eq!(Asha::new(1, 3, 10).unwrap().rungs(), vec![1, 3, 9]);
        assert_eq!(Asha::new(1, 3, 9).unwrap().rungs(), vec![1, 3]);
        assert_eq!(Asha::new(2, 2, 20).unwrap().rungs(), vec![2, 4, 8, 16]);
        assert_eq!(Asha::new(5, 2, 5).unwrap().rungs(), Vec::<usize>::new());
        assert!(Asha::new(0, 3, 9).is_err());
        assert!(Asha::new(1, 1, 9).is_err());
    }

    #[test]
    fn the_top_one_in_eta_of_the_results_so_far_is_promoted() {
        let a = Asha::new(1, 3, 9).unwrap();
        // One result: always promoted; two: only the best.
        assert!(a.promotes(0.1, &[0.1]));
        assert!(!a.promotes(0.5, &[0.9, 0.5]));
        assert!(a.promotes(0.9, &[0.9, 0.5]));
        // Six results: the best two (floor(6 / 3)); a tie with the second promotes.
        let six = [0.9, 0.8, 0.7, 0.6, 0.5, 0.8];
        assert!(a.promotes(0.8, &six));
        assert!(!a.promotes(0.7, &six));
        assert!(!a.promotes(f64::NAN, &[f64::NAN]));
    }
}
