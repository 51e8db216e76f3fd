//! Magnitude pruning: masks that keep the largest weights, globally or per
//! layer, and fine-tuning with those masks held, either at the final
//! sparsity from the first step or rising along the cubic schedule of Zhu
//! and Gupta (2017, "To prune, or not to prune").
//!
//! Biases are never pruned. A mask is one `f32` per weight (1.0 keep, 0.0
//! prune), the form [`Constraint::Mask`] holds.

use serde::Serialize;

use crate::backend::{steps_per_epoch, Backend};
use crate::data::Dataset;
use crate::error::{CompressError, Error, Result};
use crate::model::{Mlp, Scope};
use crate::optim::Constraint;
use crate::train::{train_with, Event, Hooks, TrainConfig};

/// The largest sparsity accepted: at 0.99 a 784-500-10 MLP keeps about
/// 4,000 weights, below that layers start to lose whole rows.
pub const MAX_SPARSITY: f64 = 0.99;

/// Check a target sparsity: a finite fraction in `0..=MAX_SPARSITY`.
pub fn check_sparsity(s: f64) -> Result<f64, CompressError> {
    if s.is_finite() && (0.0..=MAX_SPARSITY).contains(&s) {
        Ok(s)
    } else {
        Err(CompressError::SparsityOutOfRange {
            found: s,
            max: MAX_SPARSITY,
        })
    }
}

/// Masks that prune the `round(sparsity * n)` weights of smallest magnitude
/// (`n` counted over all layers for [`Scope::Global`], per layer for
/// [`Scope::Layer`]). Ties at the threshold are broken by position, so the
/// count is exact. Weights that are already zero go first, which makes the
/// masks of a rising schedule nested.
pub fn magnitude_masks(model: &Mlp, sparsity: f64, scope: Scope) -> Result<Vec<Vec<f32>>, CompressError> {
    let sparsity = check_sparsity(sparsity)?;
    let weights: Vec<&[f32]> = model.layers.iter().map(|l| l.weight.as_slice()).collect();
    Ok(match scope {
        Scope::Global => {
            let n: usize = weights.iter().map(|w| w.len()).sum();
            prune_smallest(&weights, (sparsity * n as f64).round() as usize)
        }
        Scope::Layer => weights
            .iter()
            .map(|w| {
                let k = (sparsity * w.len() as f64).round() as usize;
                prune_smallest(&[w], k).pop().unwrap_or_default()
            })
            .collect(),
    })
}

/// Masks over `weights` (taken as one pool) that drop the `k` smallest
/// magnitudes, the earlier position first on ties.
fn prune_smallest(weights: &[&[f32]], k: usize) -> Vec<Vec<f32>> {
    let mut masks: Vec<Vec<f32>> = weights.iter().map(|w| vec![1.0; w.len()]).collect();
    let n: usize = weights.iter().map(|w| w.len()).sum();
    let k = k.min(n);
    if k == 0 {
        return masks;
    }
    let mut mags: Vec<f32> = weights.iter().flat_map(|w| w.iter().map(|v| v.abs())).collect();
    let (_, &mut threshold, _) = mags.select_nth_unstable_by(k - 1, f32::total_cmp);
    // Everything strictly below the threshold goes; of the values equal to
    // it, as many as needed to reach k, in order.
    let below = weights
        .iter()
        .flat_map(|w| w.iter())
        .filter(|v| v.abs().total_cmp(&threshold).is_lt())
        .count();
    let mut ties_left = k - below;
    for (w, m) in weights.iter().zip(masks.iter_mut()) {
        for (v, mv) in w.iter().zip(m.iter_mut()) {
            match v.abs().total_cmp(&threshold) {
                std::cmp::Ordering::Less => *mv = 0.0,
                std::cmp::Ordering::Equal if ties_left > 0 => {
                    *mv = 0.0;
                    ties_left -= 1;
                }
                _ => {}
            }
        }
    }
    masks
}

/// Multiply each layer's weights by its mask.
pub fn apply_masks(model: &mut Mlp, masks: &[Vec<f32>]) -> Result<()> {
    Constraint::Mask(masks.to_vec()).apply_to(model)
}

/// The cubic schedule of Zhu and Gupta: the sparsity after `step` of
/// `steps` ramp steps, `s_t = s_f + (s_0 - s_f) (1 - t/T)^3`, rising fast
/// at first (when many redundant weights remain) and slowly at the end.
pub fn cubic_sparsity(initial: f64, target: f64, step: usize, steps: usize) -> f64 {
    if steps == 0 || step >= steps {
        return target;
    }
    let left = 1.0 - step as f64 / steps as f64;
    target + (initial - target) * left.powi(3)
}

/// How the masks are chosen during fine-tuning.
#[derive(Debug, Clone, Serialize)]
pub struct PruneConfig {
    /// Final sparsity, `0..=MAX_SPARSITY`.
    pub sparsity: f64,
    /// Whether one threshold spans every layer or each layer reaches the sparsity.
    pub scope: Scope,
    /// Rise along [`cubic_sparsity`] instead of pruning everything at once.
    pub gradual: bool,
    /// Sparsity at the start of a gradual ramp.
    pub initial_sparsity: f64,
    /// Steps between mask updates during a gradual ramp.
    pub update_every: usize,
    /// Fraction of the fine-tuning steps the gradual ramp spans; the rest
    /// trains at the final sparsity with fixed masks, to recover.
    pub ramp_fraction: f64,
}

impl PruneConfig {
    /// One-shot pruning to `sparsity` (validated).
    pub fn new(sparsity: f64, scope: Scope, gradual: bool) -> Result<Self, CompressError> {
        Ok(PruneConfig {
            sparsity: check_sparsity(sparsity)?,
            scope,
            gradual,
            initial_sparsity: 0.0,
            update_every: 100,
            ramp_fraction: 0.75,
        })
    }

    /// The global steps (counted from 0 over all fine-tuning epochs) at
    /// which masks are recomputed, with the sparsity each one sets.
    pub fn mask_updates(&self, total_steps: usize) -> Vec<(usize, f64)> {
        if !self.gradual || total_steps == 0 {
            return vec![(0, self.sparsity)];
        }
        let ramp = ((self.ramp_fraction * total_steps as f64).round() as usize).clamp(1, total_steps);
        let every = self.update_every.max(1);
        let mut v: Vec<(usize, f64)> = (0..ramp)
            .step_by(every)
            .map(|t| (t, cubic_sparsity(self.initial_sparsity, self.sparsity, t, ramp)))
            .collect();
        // The last update reaches the target.
        if ramp < total_steps {
            v.push((ramp, self.sparsity));
        } else if let Some(last) = v.last_mut() {
            last.1 = self.sparsity;
        }
        v
    }
}

/// Count of zero weights per layer.
pub fn zero_counts(model: &Mlp) -> Vec<usize> {
    model
        .layers
        .iter()
        .map(|l| l.weight.iter().filter(|&&v| v == 0.0).count())
        .collect()
}

/// Prune the backend's current model and fine-tune it for `train.epochs`
/// epochs with the masks held by [`Backend::set_constraint`], recomputing the masks from the current
/// weights at each of [`PruneConfig::mask_updates`]. Emits the same events
/// as [`crate::train::train`] and returns the fine-tuned model with its
/// final masks. The epoch shuffles use `train.seed`, offset so they differ
/// from the base training run's.
pub fn prune_and_finetune(
    backend: &mut dyn Backend,
    data: &Dataset,
    prune: &PruneConfig,
    train: &TrainConfig,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(Mlp, Vec<Vec<f32>>)> {
    train.check()?;
    let n = data.train.len();
    let steps = steps_per_epoch(n, backend.batch_size());
    let total = steps * train.epochs;
    let updates = prune.mask_updates(total);
    let mut masks: Vec<Vec<f32>> = Vec::new();
    let update_masks = |backend: &mut dyn Backend, s: f64, masks: &mut Vec<Vec<f32>>| -> Result<()> {
        let model = backend.model()?;
        *masks = magnitude_masks(&model, s, prune.scope)?;
        backend.set_constraint(Some(&Constraint::Mask(masks.clone())))?;
        log::debug!("masks set to sparsity {s:.4}");
        Ok(())
    };
    if train.epochs == 0 {
        update_masks(backend, prune.sparsity, &mut masks)?;
        return Ok((backend.model()?, masks));
    }
    let stops: Vec<usize> = updates.iter().map(|u| u.0).collect();
    let mut at_stop = |backend: &mut dyn Backend, i: usize| update_masks(backend, updates[i].1, &mut masks);
    let hooks = Hooks {
        // Fine-tuning must not replay the base run's first shuffles.
        epoch_offset: 1_000_000,
        stops: &stops,
        at_stop: &mut at_stop,
    };
    train_with(backend, data, train, hooks, on_event)?;
    let model = backend.model()?;
    // The invariant masked training promises; cheap to check once.
    for (l, (layer, mask)) in model.layers.iter().zip(&masks).enumerate() {
        if let Some(i) = layer.weight.iter().zip(mask).position(|(&w, &m)| m == 0.0 && w != 0.0) {
            return Err(Error::Config(format!(
                "backend {} let pruned weight {i} of layer {} become {} during fine-tuning",
                backend.name(),
                l + 1,
                layer.weight[i]
            )));
        }
    }
    Ok((model, masks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Preprocess;

    #[test]
    fn sparsity_out_of_range_is_an_error() {
        for s in [-0.1, 0.995, 1.0, f64::NAN, f64::INFINITY] {
            let e = check_sparsity(s).unwrap_err().to_string();
            assert!(e.contains("out of range") && e.contains("0.99"), "{e}");
        }
        assert_eq!(check_sparsity(0.0).unwrap(), 0.0);
        assert_eq!(check_sparsity(0.99).unwrap(), 0.99);
    }

    #[test]
    fn global_masks_prune_the_smallest_across_layers() {
        let mut m = Mlp::new(&[3, 2, 2], 0, Preprocess::identity(), vec![3]).unwrap();
        m.layers[0].weight = vec![0.1, -0.5, 0.3, 0.2, -0.05, 0.9];
        m.layers[1].weight = vec![0.01, 0.4, -0.3, 0.3];
        // 10 weights, 40% = 4 smallest: 0.01, 0.05, 0.1, 0.2.
        let masks = magnitude_masks(&m, 0.4, Scope::Global).unwrap();
        assert_eq!(masks[0], vec![0.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
        assert_eq!(masks[1], vec![0.0, 1.0, 1.0, 1.0]);
        // Per layer: round(0.4*6) = 2 and round(0.4*4) = 2 (ties in order:
        // the first 0.3 goes).
        let masks = magnitude_masks(&m, 0.4, Scope::Layer).unwrap();
        assert_eq!(masks[0], vec![0.0, 1.0, 1.0, 1.0, 0.0, 1.0]);
        assert_eq!(masks[1], vec![0.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn exact_counts_with_ties() {
        let mut m = Mlp::new(&[10, 10], 0, Preprocess::identity(), vec![10]).unwrap();
        m.layers[0].weight = vec![0.5; 100];
        let masks = magnitude_masks(&m, 0.37, Scope::Global).unwrap();
        assert_eq!(masks[0].iter().filter(|&&v| v == 0.0).count(), 37);
    }

    #[test]
    fn cubic_schedule_ends_at_target() {
        assert_eq!(cubic_sparsity(0.0, 0.9, 0, 100), 0.0);
        assert_eq!(cubic_sparsity(0.0, 0.9, 100, 100), 0.9);
        // Half-way: 0.9 * (1 - 0.5^3) = 0.7875.
        assert!((cubic_sparsity(0.0, 0.9, 50, 100) - 0.7875).abs() < 1e-12);
        let p = PruneConfig::new(0.9, Scope::Global, true).unwrap();
        let u = p.mask_updates(1000);
        // Ramp of 750 steps, updates every 100, then the target at 750.
        assert_eq!(u.first().unwrap().0, 0);
        assert_eq!(*u.last().unwrap(), (750, 0.9));
        assert!(u.windows(2).all(|w| w[0].1 <= w[1].1 && w[0].0 < w[1].0));
        let one = PruneConfig::new(0.9, Scope::Global, false).unwrap();
        assert_eq!(one.mask_updates(1000), vec![(0, 0.9)]);
    }
}
