//! The model: layer sizes, parameters in PyTorch's `nn.Linear` layout, the
//! seeded initialisation, and safetensors files that PyTorch can load.

use std::collections::HashMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};

use crate::data::{Normalize, Preprocess};
use crate::error::ModelError;

/// One fully connected layer: `y = x W^T + b`, `W` stored row-major as
/// `[out, in]` like PyTorch's `nn.Linear.weight`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub inputs: usize,
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
    pub layers: Vec<Linear>,
    /// How raw inputs are mapped before the first layer.
    pub preprocess: Preprocess,
    /// Shape of one input example (e.g. `[28, 28]`), for predict.
    pub input_shape: Vec<usize>,
}

/// Metadata key naming the file's producer.
pub const FORMAT_KEY: &str = "wgtrain.format";
/// Value of [`FORMAT_KEY`] for a plain f32 MLP.
pub const FORMAT_MLP: &str = "mlp-f32-v1";

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
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layers = sizes.windows(2).map(|w| Linear::init(w[0], w[1], &mut rng)).collect();
        Ok(Mlp {
            layers,
            preprocess,
            input_shape,
        })
    }

    /// Layer widths, inputs first.
    pub fn sizes(&self) -> Vec<usize> {
        let mut v = vec![self.layers[0].inputs];
        v.extend(self.layers.iter().map(|l| l.outputs));
        v
    }

    pub fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    pub fn classes(&self) -> usize {
        self.layers.last().map(|l| l.outputs).unwrap_or(0)
    }

    pub fn parameter_count(&self) -> usize {
        self.layers.iter().map(|l| l.weight.len() + l.bias.len()).sum()
    }

    /// Metadata written into model files.
    pub fn metadata(&self) -> HashMap<String, String> {
        let join = |v: &[usize]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
        HashMap::from([
            (FORMAT_KEY.to_string(), FORMAT_MLP.to_string()),
            ("format".to_string(), "pt".to_string()),
            ("wgtrain.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("layers".to_string(), join(&self.sizes())),
            ("activation".to_string(), "relu".to_string()),
            ("input_shape".to_string(), join(&self.input_shape)),
            ("normalize".to_string(), self.preprocess.kind.as_str().to_string()),
            ("input_scale".to_string(), format!("{:e}", self.preprocess.scale)),
            ("input_offset".to_string(), format!("{:e}", self.preprocess.offset)),
        ])
    }

    /// Serialise to safetensors bytes: `fc1.weight`, `fc1.bias`, ... in
    /// `[out, in]` layout, f32 little-endian.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ModelError> {
        let mut tensors = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            tensors.push((
                format!("fc{}.weight", i + 1),
                vec![l.outputs, l.inputs],
                bytemuck::cast_slice::<f32, u8>(&l.weight),
            ));
            tensors.push((
                format!("fc{}.bias", i + 1),
                vec![l.outputs],
                bytemuck::cast_slice::<f32, u8>(&l.bias),
            ));
        }
        let views = tensors
            .iter()
            .map(|(n, s, d)| {
                TensorView::new(Dtype::F32, s.clone(), d)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| ModelError::Invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize(views, Some(self.metadata())).map_err(|e| ModelError::Invalid(e.to_string()))
    }

    /// Write the model atomically: to a temporary file beside `path`, then
    /// renamed, so a failure never leaves a partial model behind.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        write_atomic(path, &self.to_safetensors()?)
    }

    /// Parse safetensors bytes written by [`Mlp::to_safetensors`]; `path` is
    /// only used in messages.
    pub fn from_safetensors(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        let not_ours = |m: String| ModelError::NotWgtrain {
            path: path.to_path_buf(),
            message: m,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let md = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            md.get(k)
                .cloned()
                .ok_or_else(|| not_ours(format!("metadata has no `{k}`")))
        };
        let parse_list = |k: &str, s: String| -> Result<Vec<usize>, ModelError> {
            if s.is_empty() {
                return Ok(vec![]);
            }
            s.split(',')
                .map(|x| {
                    x.trim()
                        .parse::<usize>()
                        .map_err(|_| not_ours(format!("metadata `{k}` = `{s}` is not a list of sizes")))
                })
                .collect()
        };
        let format = get(FORMAT_KEY)?;
        if format != FORMAT_MLP {
            return Err(not_ours(format!("format `{format}` is not `{FORMAT_MLP}`")));
        }
        let sizes = parse_list("layers", get("layers")?)?;
        if sizes.len() < 2 {
            return Err(not_ours("`layers` needs at least two sizes".into()));
        }
        let input_shape = parse_list("input_shape", get("input_shape")?)?;
        let kind = Normalize::parse(&get("normalize")?).ok_or_else(|| not_ours("unknown `normalize`".into()))?;
        let fnum = |k: &str| -> Result<f32, ModelError> {
            get(k)?
                .parse::<f32>()
                .map_err(|_| not_ours(format!("metadata `{k}` is not a number")))
        };
        let preprocess = Preprocess {
            kind,
            scale: fnum("input_scale")?,
            offset: fnum("input_offset")?,
        };
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>, ModelError> {
            let t = st
                .tensor(name)
                .map_err(|_| not_ours(format!("tensor `{name}` is missing")))?;
            if t.dtype() != Dtype::F32 || t.shape() != shape {
                return Err(not_ours(format!(
                    "tensor `{name}` is {:?} {:?}, expected F32 {:?}",
                    t.dtype(),
                    t.shape(),
                    shape
                )));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let mut layers = Vec::new();
        for (i, w) in sizes.windows(2).enumerate() {
            layers.push(Linear {
                inputs: w[0],
                outputs: w[1],
                weight: read(&format!("fc{}.weight", i + 1), &[w[1], w[0]])?,
                bias: read(&format!("fc{}.bias", i + 1), &[w[1]])?,
            });
        }
        Ok(Mlp {
            layers,
            preprocess,
            input_shape,
        })
    }

    /// Load a model file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_safetensors(&bytes, path)
    }
}

/// Write `bytes` to `path` through a temporary file in the same folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let io = |e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
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

    #[test]
    fn safetensors_round_trip() {
        let p = Preprocess {
            kind: Normalize::Standardize,
            scale: 3.5,
            offset: -0.25,
        };
        let m = Mlp::new(&[5, 4, 3, 2], 7, p, vec![5]).unwrap();
        let bytes = m.to_safetensors().unwrap();
        let back = Mlp::from_safetensors(&bytes, Path::new("m")).unwrap();
        assert_eq!(m, back);
    }
}
