//! The prediction of an ensemble: [`EnsemblePredictor`] runs one
//! [`Predictor`] per member and averages their probabilities
//! ([`add_member`], [`finish_mean`]: what every ensemble predictor,
//! the GPU's included, computes); [`evaluate`] turns any predictor's
//! probabilities into loss, accuracy and confusion over a split.

use super::Predictor;
use crate::data::Split;
use crate::error::{InferError, ModelError};
use crate::metrics::{Evaluation, Predictions};

/// Add member `index`'s probabilities `p` into the running sum `sum`
/// (member 0 sets it).
pub fn add_member(sum: &mut [f32], p: &[f32], index: usize) {
    if index == 0 {
        sum.copy_from_slice(p);
    } else {
        for (s, &v) in sum.iter_mut().zip(p) {
            *s += v;
        }
    }
}

/// Turn the sum of `members` members' probabilities into their mean.
pub fn finish_mean(sum: &mut [f32], members: usize) {
    let n = members.max(1) as f32;
    for s in sum.iter_mut() {
        *s /= n;
    }
}

/// Several predictors of one input size and class count, answering with
/// the mean of their probabilities (summed in member order, then divided).
pub struct EnsemblePredictor {
    members: Vec<Box<dyn Predictor>>,
    input_shape: Vec<usize>,
    /// One member's probabilities of the current call.
    scratch: Vec<f32>,
}

impl EnsemblePredictor {
    /// The ensemble of `members`, which must be at least one and share the
    /// first's inputs and classes.
    pub fn new(members: Vec<Box<dyn Predictor>>) -> Result<Self, InferError> {
        let Some(first) = members.first() else {
            return Err(ModelError::Ensemble("an ensemble needs at least one predictor".into()).into());
        };
        let (inputs, classes) = (first.inputs(), first.classes());
        if let Some((i, m)) = members
            .iter()
            .enumerate()
            .find(|(_, m)| m.inputs() != inputs || m.classes() != classes)
        {
            return Err(ModelError::Ensemble(format!(
                "member 0 takes {inputs} inputs to {classes} classes but member {i} takes {} to {}",
                m.inputs(),
                m.classes()
            ))
            .into());
        }
        let input_shape = members
            .iter()
            .map(|m| m.input_shape())
            .find(|s| !s.is_empty())
            .unwrap_or(&[])
            .to_vec();
        Ok(EnsemblePredictor {
            members,
            input_shape,
            scratch: Vec::new(),
        })
    }

    /// Number of member models.
    pub fn members(&self) -> usize {
        self.members.len()
    }
}

impl Predictor for EnsemblePredictor {
    fn name(&self) -> String {
        let names: Vec<String> = self.members.iter().map(|m| m.name()).collect();
        format!("ensemble of {}: {}", self.members.len(), names.join("; "))
    }

    fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    fn inputs(&self) -> usize {
        self.members[0].inputs()
    }

    fn classes(&self) -> usize {
        self.members[0].classes()
    }

    fn waits_on_device(&self) -> bool {
        self.members.iter().any(|m| m.waits_on_device())
    }

    fn probabilities_into(&mut self, raw: &[f32], out: &mut [f32]) -> Result<(), InferError> {
        self.scratch.resize(out.len(), 0.0);
        for (i, m) in self.members.iter_mut().enumerate() {
            m.probabilities_into(raw, &mut self.scratch)?;
            add_member(out, &self.scratch, i);
        }
        finish_mean(out, self.members.len());
        Ok(())
    }
}

/// Rows a call of [`evaluate`] hands the predictor at once.
const EVAL_ROWS: usize = 256;

/// Loss, accuracy and confusion of `predictor` on a labelled split: the
/// class is the arg-max of the probabilities (the lowest index on ties),
/// the loss the mean of `-ln p[label]` in f64, with `p` at least
/// `f32::MIN_POSITIVE` so that a probability that underflowed gives a
/// large finite loss. The predictor must fit the split (the caller checks
/// [`check_fits`]).
pub fn evaluate(predictor: &mut dyn Predictor, split: &Split) -> Result<Evaluation, InferError> {
    let (dim, classes) = (predictor.inputs(), predictor.classes());
    let n = split.labels.len();
    let mut pred = Predictions {
        loss_sum: 0.0,
        classes: vec![0; n],
    };
    let mut probs = vec![0f32; EVAL_ROWS * classes];
    for start in (0..n).step_by(EVAL_ROWS) {
        let rows = EVAL_ROWS.min(n - start);
        let out = &mut probs[..rows * classes];
        predictor.probabilities_into(&split.features[start * dim..(start + rows) * dim], out)?;
        for (r, p) in out.chunks_exact(classes).enumerate() {
            let label = split.labels[start + r] as usize;
            pred.classes[start + r] = crate::cpu::kernels::argmax(p).0 as u32;
            pred.loss_sum -= f64::from(p[label].max(f32::MIN_POSITIVE)).ln();
        }
    }
    Ok(Evaluation::new(&pred, &split.labels, classes))
}

/// Refuse a split the predictor cannot evaluate: rows of another width, or
/// a label past its classes.
pub fn check_fits(predictor: &dyn Predictor, split: &Split, dim: usize) -> Result<(), ModelError> {
    if predictor.inputs() != dim {
        return Err(ModelError::InputMismatch {
            expected: predictor.inputs(),
            found: dim,
        });
    }
    let max_label = split.labels.iter().copied().max().unwrap_or(0) as usize;
    if max_label >= predictor.classes() {
        return Err(ModelError::ClassMismatch {
            model: predictor.classes(),
            data: max_label,
        });
    }
    Ok(())
}
