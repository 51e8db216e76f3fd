//! Constraints on the parameters, applied after every update.

use crate::error::{Error, Result};
use crate::model::Mlp;

/// What a backend enforces on the weights after each update (and once when
/// it is set).
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Weights whose mask entry is 0 are held at exactly zero (pruning):
    /// `masks[l]` has one entry per weight of layer `l` (`[out, in]`),
    /// 1.0 to keep, 0.0 to prune; after each update `w *= mask`.
    Mask(Vec<Vec<f32>>),
}

impl Constraint {
    /// Check the constraint against the weight counts of each layer.
    pub fn check(&self, weights: &[usize]) -> Result<()> {
        match self {
            Constraint::Mask(masks) => {
                if masks.len() != weights.len() || masks.iter().zip(weights).any(|(m, &n)| m.len() != n) {
                    return Err(Error::Config(format!(
                        "masks of sizes {:?} do not match the weights of sizes {:?}",
                        masks.iter().map(Vec::len).collect::<Vec<_>>(),
                        weights
                    )));
                }
                Ok(())
            }
        }
    }

    /// Check the constraint against `model` and enforce it on its weights.
    pub fn apply_to(&self, model: &mut Mlp) -> Result<()> {
        self.check(&model.layers.iter().map(|l| l.weight.len()).collect::<Vec<_>>())?;
        match self {
            Constraint::Mask(masks) => {
                for (layer, mask) in model.layers.iter_mut().zip(masks) {
                    for (w, &m) in layer.weight.iter_mut().zip(mask) {
                        *w *= m;
                    }
                }
            }
        }
        Ok(())
    }
}
