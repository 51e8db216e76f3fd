//! The interface the training loop, evaluation and benchmarks use, so they
//! run unchanged on the CPU and the GPU.

use crate::error::Result;
use crate::model::Mlp;

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
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.examples.max(1) as f64
    }
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
    Train,
    Test,
}

/// Per-example results of a forward pass over a whole split.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    /// Sum of per-example cross-entropy losses.
    pub loss_sum: f64,
    /// Arg-max class of each example, in the split's order.
    pub classes: Vec<u32>,
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

    /// Start an epoch with this order of training examples (a permutation
    /// of `0..n_train`).
    fn begin_epoch(&mut self, order: &[u32]) -> Result<()>;

    /// Run `steps` SGD steps with learning rate `lr`, starting at batch
    /// `first` of the current epoch. Does not wait for results.
    fn train_steps(&mut self, first: usize, steps: usize, lr: f32) -> Result<()>;

    /// Loss and accuracy of the steps since the last call (waits for them).
    fn take_stats(&mut self) -> Result<StepStats>;

    /// Forward pass over a whole split with the current parameters.
    fn predict_split(&mut self, split: SplitKind) -> Result<Predictions>;

    /// The current parameters (read back from the device).
    fn model(&mut self) -> Result<Mlp>;

    /// Keep these weights at zero from now on: `masks[l]` has one entry per
    /// weight of layer `l` (`[out, in]`), 1.0 to keep, 0.0 to prune. The
    /// weights are multiplied by the masks at once and after every SGD
    /// update, so a pruned weight stays exactly zero. `None` removes them.
    fn set_masks(&mut self, masks: Option<&[Vec<f32>]>) -> Result<()> {
        let _ = masks;
        Err(crate::error::Error::Config(format!(
            "masked (pruned) training is not supported on {}",
            self.name()
        )))
    }
}

/// Check that masks match the model's weight shapes.
pub fn check_masks(model: &Mlp, masks: &[Vec<f32>]) -> Result<()> {
    if masks.len() != model.layers.len() || masks.iter().zip(&model.layers).any(|(m, l)| m.len() != l.weight.len()) {
        return Err(crate::error::Error::Config(format!(
            "masks of shapes {:?} do not match the weights of {:?}",
            masks.iter().map(Vec::len).collect::<Vec<_>>(),
            model.layers.iter().map(|l| l.weight.len()).collect::<Vec<_>>()
        )));
    }
    Ok(())
}

/// Number of training steps in an epoch of `n` examples at batch `batch`.
pub fn steps_per_epoch(n: usize, batch: usize) -> usize {
    n.div_ceil(batch)
}
