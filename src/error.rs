//! Typed errors of the library. Every message says what failed and, where it
//! helps, what was expected and what was found.

use std::path::PathBuf;

/// Errors from reading and checking datasets.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: cannot read file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not found (looked for {tried})")]
    Missing { path: PathBuf, tried: String },
    #[error("{path}: wrong magic number 0x{found:08x}, expected 0x{expected:08x} ({what})")]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
        what: &'static str,
    },
    #[error("{path}: truncated: header promises {expected} bytes of data, file holds {found}")]
    Truncated {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch {
        images: PathBuf,
        n_images: usize,
        labels: PathBuf,
        n_labels: usize,
    },
    #[error("{path}: label {label} at index {index} is out of range (the labels must be 0..{max})")]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        label: i64,
        max: usize,
    },
    #[error("{path}:{line}: {message}")]
    Csv {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: dataset is empty ({what})")]
    Empty { path: PathBuf, what: String },
    #[error("{what}: train images are {train} values each but test images are {test}")]
    ShapeMismatch { what: String, train: usize, test: usize },
    #[error("invalid dataset option: {0}")]
    Invalid(String),
}

/// Errors from reading, writing and checking model files.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: cannot read model file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: not a wgtrain model: {message}")]
    NotWgtrain { path: PathBuf, message: String },
    #[error("invalid model: {0}")]
    Invalid(String),
    #[error("model expects {expected} input values per example, data has {found}")]
    InputMismatch { expected: usize, found: usize },
    #[error("model has {model} classes but the data has labels up to {data}")]
    ClassMismatch { model: usize, data: usize },
    /// Members that cannot form an ensemble (the message names them).
    #[error("cannot ensemble: {0}")]
    Ensemble(String),
}

/// Errors from the GPU backend.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter found{0}")]
    NoAdapter(String),
    #[error("cannot open device on adapter {adapter}: {message}")]
    Device { adapter: String, message: String },
    #[error("{what} needs {needed} but the adapter allows at most {limit} ({limit_name}); try a smaller batch or narrower layers, or the CPU")]
    Limit {
        what: String,
        needed: u64,
        limit: u64,
        limit_name: &'static str,
    },
    #[error("invalid kernel arguments: {0}")]
    InvalidArgument(String),
    #[error("GPU readback failed: {0}")]
    Readback(String),
    #[error("GPU error: {0}")]
    Other(String),
}

/// Errors of a hyperparameter search (`tune`).
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// A search space that cannot be searched; `key` names the entry.
    #[error("{}: search space key `{key}`: {message}", path.display())]
    Space {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// The study database cannot be read or written.
    #[error("study database {}: {message}", path.display())]
    Storage { path: PathBuf, message: String },
    /// Successive halving stopped the trial after this epoch.
    #[error("trial pruned after epoch {epoch}")]
    Pruned { epoch: usize },
}

/// The library's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A configuration value out of range; the binary names the flag that
    /// set it.
    #[error("{} {value} is out of range: expected {expected}", setting.describe())]
    Invalid {
        setting: Setting,
        value: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Compress(#[from] CompressError),
    #[error(transparent)]
    Tune(#[from] TuneError),
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Report(#[from] ReportError),
    /// A setting that only means something together with another.
    #[error("{} needs a {} above 0", setting.describe(), needs.describe())]
    Requires { setting: Setting, needs: Setting },
    /// A checkpoint that cannot be read, or that belongs to another run.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    /// A stop was requested (a signal); the run wrote `checkpoint` first.
    #[error("interrupted at epoch {epoch} step {step}; checkpoint written to {}", checkpoint.display())]
    Interrupted {
        epoch: usize,
        step: usize,
        checkpoint: PathBuf,
    },
    /// The training loss stopped being a finite number.
    #[error(
        "training diverged: the training loss is {loss} at step {step} (epoch {epoch}); try a lower learning rate"
    )]
    Diverged {
        epoch: usize,
        /// The global step count at the point the loss was seen.
        step: usize,
        loss: f64,
    },
    /// A run over several processes (MPI) that cannot go on: a rank that
    /// differs from rank 0, or one that stopped answering.
    #[error("distributed run: {0}")]
    Distributed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A setting of a training configuration, named in [`Error::Invalid`] so
/// that the library speaks of values and the binary of its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    LearningRate,
    BatchSize,
    LrStepEpochs,
    LrGamma,
    LrMin,
    WarmupEpochs,
    WarmupSteps,
    Momentum,
    Nesterov,
    WeightDecay,
    Betas,
    Eps,
    ValSplit,
    EarlyStop,
    Dropout,
    LabelSmoothing,
    Shift,
    ClipGradNorm,
    /// The first epoch of stochastic weight averaging.
    SwaFrom,
    /// Where a checkpoint (or resume) goes.
    Checkpoint,
    /// The shares of a global batch that data-parallel replicas take.
    ShardWeights,
    /// The distillation temperature.
    Temperature,
    /// The weight of the soft targets in distillation.
    DistillAlpha,
}

impl Setting {
    /// The setting in words.
    pub fn describe(self) -> &'static str {
        match self {
            Setting::LearningRate => "learning rate",
            Setting::BatchSize => "batch size",
            Setting::LrStepEpochs => "epochs between learning-rate steps",
            Setting::LrGamma => "learning-rate step factor",
            Setting::LrMin => "final learning rate",
            Setting::WarmupEpochs => "warm-up epochs",
            Setting::WarmupSteps => "warm-up steps",
            Setting::Momentum => "momentum",
            Setting::Nesterov => "Nesterov momentum",
            Setting::WeightDecay => "weight decay",
            Setting::Betas => "Adam betas",
            Setting::Eps => "Adam epsilon",
            Setting::ValSplit => "validation fraction",
            Setting::EarlyStop => "early-stopping patience",
            Setting::Dropout => "dropout probability",
            Setting::LabelSmoothing => "label smoothing",
            Setting::Shift => "image shift",
            Setting::ClipGradNorm => "gradient-norm clip",
            Setting::SwaFrom => "first epoch of weight averaging",
            Setting::Checkpoint => "checkpoint",
            Setting::ShardWeights => "shard weights",
            Setting::Temperature => "distillation temperature",
            Setting::DistillAlpha => "soft-target weight (alpha)",
        }
    }
}

impl Error {
    /// [`Error::Invalid`] for `setting` holding `value`.
    pub fn invalid(setting: Setting, value: impl std::fmt::Display, expected: &'static str) -> Self {
        Error::Invalid {
            setting,
            value: value.to_string(),
            expected,
        }
    }
}

/// Errors from reading inputs for inference and from running it.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{source_name}: {found} values per example, but the model expects {expected} (input shape {shape:?})")]
    InputSize {
        source_name: String,
        expected: usize,
        found: usize,
        shape: Vec<usize>,
    },
    #[error("{source_name}: cannot decode the image: {message}")]
    Image { source_name: String, message: String },
    #[error("{source_name}: {message}")]
    Input { source_name: String, message: String },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("inference failed: {0}")]
    Failed(String),
}

/// Errors from pruning and quantizing models.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error(
        "sparsity {found} is out of range: expected a fraction from 0 to {max} (e.g. 0.9 prunes 90% of the weights)"
    )]
    SparsityOutOfRange { found: f64, max: f64 },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

/// Errors of benchmark reports (`bench --report`, `--compare`).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A run file that cannot be read.
    #[error("{}: cannot read the benchmark lines: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line that is not a benchmark line; `line` counts from 1.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A run file with no benchmark line of a kind the report knows.
    #[error("{}: no benchmark lines ({what}); give the JSON lines `wgtrain bench` prints on stdout", path.display())]
    Empty { path: PathBuf, what: String },
    /// A device peak (`NAME=GFLOPS,GBPS`) that cannot be read.
    #[error("peak `{given}`: {message}; give NAME=GFLOPS,GBPS, e.g. \"RTX 3080=29770,760\"")]
    Peak { given: String, message: String },
    /// A figure that cannot be drawn or encoded.
    #[error("cannot draw the figure {figure}: {message}")]
    Draw { figure: String, message: String },
    /// A report file (or a figure beside it) that cannot be written.
    #[error("{}: cannot write the report: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Errors from exporting a model to another format (ONNX).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// An ONNX operator set version the exporter does not write.
    #[error("ONNX opset {found} is not supported: choose one from {min} to {max}")]
    Opset { found: i64, min: i64, max: i64 },
    /// Class names that do not fit the model.
    #[error("{found} class names given but the model has {classes} classes: give one name per class")]
    ClassNames { found: usize, classes: usize },
    /// The exported file cannot be written.
    #[error("{}: cannot write the exported model: {source}; check that the folder exists and is writable", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
