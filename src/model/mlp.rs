//! The f32 model: [`Mlp`] and its [`Linear`] layers in PyTorch's
//! `nn.Linear` layout, and the seeded initialisation. Its file is read and
//! written by [`super::file`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::header::{check_class_names, Header};
use crate::data::Preprocess;
use crate::error::ModelError;

/// One fully connected layer: `y = x W^T + b`, `W` stored row-major as
/// `[out, in]` like PyTorch's `nn.Linear.weight`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// Input width (`in`).
    pub inputs: usize,
    /// Output width (`out`).
    pub outputs: usize,
    /// `[outputs, inputs]`, row-major.
    pub weight: Vec<f32>,
    /// `[outputs]`.
    pub bias: Vec<f32>,
}

impl Linear {
    /// Initialise as `nn.Linear.reset_parameters` does: Kaiming-uniform with
    /// a = sqrt(5), which gives bound 1/sqrt(fan_in) for the weights, and the
    /// bias uniform in +-1/sqrt(fan_in).
    pub fn init(inputs: usize, outputs: usize, rng: &mut impl Rng) -> Self {
        let bound = 1.0 / (inputs as f32).sqrt();
        let mut u = || rng.random_range(-bound..bound);
        let weight = (0..inputs * outputs).map(|_| u()).collect();
        let bias = (0..outputs).map(|_| u()).collect();
        Linear {
            inputs,
            outputs,
            weight,
            bias,
        }
    }
}

/// A multi-layer perceptron: ReLU between layers, logits out.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    /// The layers, input first; each layer's inputs are the previous one's outputs.
    pub layers: Vec<Linear>,
    /// How raw inputs are mapped before the first layer.
    pub preprocess: Preprocess,
    /// Shape of one input example (e.g. `[28, 28]`), for predict.
    pub input_shape: Vec<usize>,
    /// The name of each class, in class order; empty when the model has
    /// none (see [`Mlp::with_class_names`]).
    pub class_names: Vec<String>,
}

impl Mlp {
    /// A freshly initialised network with the given layer widths
    /// (`sizes[0]` inputs, `sizes.last()` classes).
    pub fn new(
        sizes: &[usize],
        seed: u64,
        preprocess: Preprocess,
        input_shape: Vec<usize>,
    ) -> Result<Self, ModelError> {
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(ModelError::Invalid(format!(
                "layer sizes {sizes:?}: need at least inputs and outputs, all non-zero"
            )));
        }
        // Refuse what cannot be allocated instead of aborting in the
        // allocator: a count that overflows, or an allocation that fails.
        let params = crate::resources::parameters(sizes)
            .filter(|&p| p.checked_mul(4).is_some_and(|b| b <= isize::MAX as u64))
            .ok_or_else(|| ModelError::Invalid(format!("layer sizes {sizes:?}: too many parameters to address")))?;
        let mut probe: Vec<f32> = Vec::new();
        probe.try_reserve_exact(params as usize).map_err(|_| {
            ModelError::Invalid(format!(
                "layer sizes {sizes:?}: cannot allocate {} for {params} parameters",
                crate::resources::bytes(params * 4)
            ))
        })?;
        drop(probe);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layers = sizes.windows(2).map(|w| Linear::init(w[0], w[1], &mut rng)).collect();
        Ok(Mlp {
            layers,
            preprocess,
            input_shape,
            class_names: Vec::new(),
        })
    }

    /// The model with these class names (one per class, non-empty, none
    /// twice; see [`check_class_names`]); an empty list removes them.
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<Self, ModelError> {
        check_class_names(&names, self.classes()).map_err(ModelError::Invalid)?;
        self.class_names = names;
        Ok(self)
    }

    /// Layer widths, inputs first.
    pub fn sizes(&self) -> Vec<usize> {
        let mut v = vec![self.layers[0].inputs];
        v.extend(self.layers.iter().map(|l| l.outputs));
        v
    }

    /// Input values per example: the first layer's inputs (panics on a model without layers).
    pub fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    /// Number of classes: the last layer's outputs (0 without layers).
    pub fn classes(&self) -> usize {
        self.layers.last().map(|l| l.outputs).unwrap_or(0)
    }

    /// Weights and biases of every layer, counted.
    pub fn parameter_count(&self) -> usize {
        self.layers.iter().map(|l| l.weight.len() + l.bias.len()).sum()
    }

    /// Layer widths, input shape and preprocessing.
    pub fn header(&self) -> Header {
        Header {
            sizes: self.sizes(),
            input_shape: self.input_shape.clone(),
            preprocess: self.preprocess,
            class_names: self.class_names.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_bounds_follow_fan_in() {
        let m = Mlp::new(&[784, 500, 10], 0, Preprocess::identity(), vec![28, 28]).unwrap();
        let b1 = 1.0 / 784f32.sqrt();
        assert!(m.layers[0].weight.iter().all(|w| w.abs() <= b1));
        // Uniform(-b, b) has variance b^2/3.
        let n = m.layers[0].weight.len() as f32;
        let var = m.layers[0].weight.iter().map(|w| w * w).sum::<f32>() / n;
        assert!((var - b1 * b1 / 3.0).abs() < 0.02 * b1 * b1, "{var}");
        let b2 = 1.0 / 500f32.sqrt();
        assert!(m.layers[1].bias.iter().all(|w| w.abs() <= b2));
    }
}
