//! Typed errors of the library. Every message says what failed and, where it
//! helps, what was expected and what was found.

use std::path::PathBuf;

/// Errors from reading and checking datasets.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A data file that cannot be opened or read.
    #[error("{path}: cannot read file: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A dataset that is not where it was looked for: no IDX file under
    /// any of the names tried (plain and `.gz`), or a source that is
    /// neither a folder nor a file.
    #[error("{path}: not found (looked for {tried})")]
    Missing {
        /// The path looked at.
        path: PathBuf,
        /// What was looked for there, in words.
        tried: String,
    },
    /// An IDX file whose first four bytes are not the expected magic
    /// number.
    #[error("{path}: wrong magic number 0x{found:08x}, expected 0x{expected:08x} ({what})")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic number read.
        found: u32,
        /// The magic number of the expected kind of file.
        expected: u32,
        /// The kind of file expected (images or labels).
        what: &'static str,
    },
    /// An IDX file shorter than its header says.
    #[error("{path}: truncated: header promises {expected} bytes of data, file holds {found}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes of data the header promises.
        expected: usize,
        /// Bytes of data the file holds.
        found: usize,
    },
    /// An images file and a labels file of different lengths.
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch {
        /// The images file.
        images: PathBuf,
        /// The number of images in it.
        n_images: usize,
        /// The labels file.
        labels: PathBuf,
        /// The number of labels in it.
        n_labels: usize,
    },
    /// A label that is negative or not below the class count.
    #[error("{path}: label {label} at index {index} is out of range (the labels must be 0..{max})")]
    LabelOutOfRange {
        /// The file holding the label.
        path: PathBuf,
        /// The example's index in the file (0-based).
        index: usize,
        /// The label read.
        label: i64,
        /// The class count labels must stay below.
        max: usize,
    },
    /// A CSV row that cannot be used (not numeric, wrong width, ...).
    #[error("{path}:{line}: {message}")]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// The line number (1-based).
        line: usize,
        /// What is wrong with the row.
        message: String,
    },
    /// A dataset, or one of its splits, without a single example.
    #[error("{path}: dataset is empty ({what})")]
    Empty {
        /// The file or folder read.
        path: PathBuf,
        /// Which part is empty.
        what: String,
    },
    /// Training and test examples of different sizes.
    #[error("{what}: train images are {train} values each but test images are {test}")]
    ShapeMismatch {
        /// The dataset.
        what: String,
        /// Values per training example.
        train: usize,
        /// Values per test example.
        test: usize,
    },
    /// A dataset option that cannot be used (the message says which).
    #[error("invalid dataset option: {0}")]
    Invalid(String),
}

/// Errors from reading, writing and checking model files.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model file that cannot be read or written.
    #[error("{path}: cannot read model file: {source}")]
    Io {
        /// The model file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A file that does not parse as safetensors.
    #[error("{path}: not a safetensors file: {message}")]
    Format {
        /// The model file.
        path: PathBuf,
        /// What the safetensors parser said.
        message: String,
    },
    /// A safetensors file that is not a wgtrain model: a tensor or
    /// metadata key missing, extra, of the wrong dtype or shape, out of
    /// range, non-finite, or from a newer format version.
    #[error("{path}: not a wgtrain model: {message}")]
    NotWgtrain {
        /// The model file.
        path: PathBuf,
        /// The tensor or key at fault and what is wrong with it.
        message: String,
    },
    /// A model that cannot be built as asked (layer widths, shapes, class
    /// names, ...).
    #[error("invalid model: {0}")]
    Invalid(String),
    /// Data whose examples are not the size of the model's input.
    #[error("model expects {expected} input values per example, data has {found}")]
    InputMismatch {
        /// Input values per example the model takes.
        expected: usize,
        /// Values per example of the data.
        found: usize,
    },
    /// Data with labels the model has no output for.
    #[error("model has {model} classes but the data has labels up to {data}")]
    ClassMismatch {
        /// The model's class count.
        model: usize,
        /// The data's largest label.
        data: usize,
    },
    /// Members that cannot form an ensemble (the message names them).
    #[error("cannot ensemble: {0}")]
    Ensemble(String),
}

/// A run that needs more memory than the machine has: what it needs (part
/// by part), what is available, and what to change.
#[derive(Debug, thiserror::Error)]
#[error("{need}, but {available}; {suggestion}")]
pub struct ResourceError {
    /// What needs how much, in words.
    pub need: String,
    /// What the machine has, in words.
    pub available: String,
    /// What to change.
    pub suggestion: String,
}

/// Errors from the GPU backend.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter matches; the text says what was looked for.
    #[error("no GPU adapter found{0}")]
    NoAdapter(String),
    /// The adapter was found but refused to open a device.
    #[error("cannot open device on adapter {adapter}: {message}")]
    Device {
        /// The adapter's name.
        adapter: String,
        /// What wgpu said.
        message: String,
    },
    /// A buffer or dispatch larger than a limit of the device (or of the
    /// shaders' u32 indexing).
    #[error("{what} needs {needed} but the adapter allows at most {limit} ({limit_name}); try a smaller batch or narrower layers, or the CPU")]
    Limit {
        /// The buffer or dispatch.
        what: String,
        /// What it needs, in the limit's unit (`limit_name` says which).
        needed: u64,
        /// The largest value allowed.
        limit: u64,
        /// The limit's name and unit (e.g. `max_buffer_size, bytes`).
        limit_name: &'static str,
    },
    /// A kernel called with buffers or shapes that do not fit each other;
    /// the host checks this before it encodes a dispatch.
    #[error("invalid kernel arguments: {0}")]
    InvalidArgument(String),
    /// Mapping a buffer for reading back to the host failed.
    #[error("GPU readback failed: {0}")]
    Readback(String),
    /// Any other GPU failure: wgpu's validation and out-of-memory errors,
    /// pipelines that cannot be built, shapes a kernel does not handle.
    #[error("GPU error: {0}")]
    Other(String),
}

/// Errors of a hyperparameter search (`tune`).
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// A search space that cannot be searched; `key` names the entry.
    #[error("{}: search space key `{key}`: {message}", path.display())]
    Space {
        /// The search-space file.
        path: PathBuf,
        /// The entry at fault.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The study database cannot be read or written.
    #[error("study database {}: {message}", path.display())]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Successive halving stopped the trial after this epoch.
    #[error("trial pruned after epoch {epoch}")]
    Pruned {
        /// The last epoch the trial ran (1-based).
        epoch: usize,
    },
}

/// The library's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or checking a dataset failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Reading, writing or checking a model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The GPU backend failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// More memory needed than the host has.
    #[error(transparent)]
    Resources(#[from] ResourceError),
    /// A configuration that cannot run, for a reason no single
    /// [`Setting`] names (the message says why).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A configuration value out of range; the binary names the flag that
    /// set it.
    #[error("{} {value} is out of range: expected {expected}", setting.describe())]
    Invalid {
        /// The setting.
        setting: Setting,
        /// The value refused, as given.
        value: String,
        /// The accepted range, in words.
        expected: &'static str,
    },
    /// Pruning or quantizing failed.
    #[error(transparent)]
    Compress(#[from] CompressError),
    /// A hyperparameter search failed, or pruned a trial.
    #[error(transparent)]
    Tune(#[from] TuneError),
    /// Reading inputs for inference, or running it, failed.
    #[error(transparent)]
    Infer(#[from] InferError),
    /// Exporting a model (ONNX) failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// A benchmark report could not be made.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// A setting that only means something together with another.
    #[error("{} needs a {} above 0", setting.describe(), needs.describe())]
    Requires {
        /// The setting given.
        setting: Setting,
        /// The setting it needs above 0.
        needs: Setting,
    },
    /// A checkpoint that cannot be read, or that belongs to another run.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A stop was requested (a signal); the run wrote `checkpoint` first.
    #[error("interrupted at epoch {epoch} step {step}; checkpoint written to {}", checkpoint.display())]
    Interrupted {
        /// The epoch the run stopped in.
        epoch: usize,
        /// Steps of that epoch done at the stop.
        step: usize,
        /// The checkpoint file written, to resume from.
        checkpoint: PathBuf,
    },
    /// The training loss stopped being a finite number.
    #[error(
        "training diverged: the training loss is {loss} at step {step} (epoch {epoch}); try a lower learning rate"
    )]
    Diverged {
        /// The epoch the loss was seen in.
        epoch: usize,
        /// The global step count at the point the loss was seen.
        step: usize,
        /// The loss seen (NaN or infinite).
        loss: f64,
    },
    /// A run over several processes (MPI) that cannot go on: a rank that
    /// differs from rank 0, or one that stopped answering.
    #[error("distributed run: {0}")]
    Distributed(String),
}

/// The library's result type: [`Error`] unless another is named.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A setting of a training configuration, named in [`Error::Invalid`] so
/// that the library speaks of values and the binary of its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// The (peak) learning rate.
    LearningRate,
    /// Examples per training step.
    BatchSize,
    /// Epochs between the steps of the step schedule.
    LrStepEpochs,
    /// The factor of the step schedule.
    LrGamma,
    /// The learning rate a cosine or one-cycle schedule ends at.
    LrMin,
    /// The linear warm-up, counted in epochs.
    WarmupEpochs,
    /// The linear warm-up, counted in steps.
    WarmupSteps,
    /// SGD's momentum.
    Momentum,
    /// Nesterov momentum (needs a momentum above 0).
    Nesterov,
    /// L2 weight decay (SGD, Adam) or decoupled decay (AdamW).
    WeightDecay,
    /// Adam's `(beta1, beta2)`.
    Betas,
    /// Adam's epsilon.
    Eps,
    /// The fraction of the training set held out for validation.
    ValSplit,
    /// Early stopping's patience, in epochs.
    EarlyStop,
    /// The dropout probability after each hidden layer.
    Dropout,
    /// Label smoothing of the training loss.
    LabelSmoothing,
    /// The largest random image shift, in pixels.
    Shift,
    /// The global gradient-norm bound of clipping.
    ClipGradNorm,
    /// The first epoch of stochastic weight averaging.
    SwaFrom,
    /// The arithmetic of the training products.
    Precision,
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
            Setting::Precision => "precision",
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
    /// An input whose number of values is not the model's input size.
    #[error("{source_name}: {found} values per example, but the model expects {expected} (input shape {shape:?})")]
    InputSize {
        /// Where the input came from (a file name or a request).
        source_name: String,
        /// The model's input size.
        expected: usize,
        /// Values per example of the input.
        found: usize,
        /// The model's input shape.
        shape: Vec<usize>,
    },
    /// An image file that does not decode.
    #[error("{source_name}: cannot decode the image: {message}")]
    Image {
        /// Where the image came from.
        source_name: String,
        /// What the decoder said.
        message: String,
    },
    /// An input that cannot be used for another reason (format, values).
    #[error("{source_name}: {message}")]
    Input {
        /// Where the input came from.
        source_name: String,
        /// What is wrong with it.
        message: String,
    },
    /// Reading an input file as a dataset failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Loading the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Running the model failed (a GPU error, a worker gone).
    #[error("inference failed: {0}")]
    Failed(String),
}

/// Errors from pruning and quantizing models.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// A sparsity that is not a fraction from 0 to `max`.
    #[error(
        "sparsity {found} is out of range: expected a fraction from 0 to {max} (e.g. 0.9 prunes 90% of the weights)"
    )]
    SparsityOutOfRange {
        /// The sparsity asked for.
        found: f64,
        /// The largest sparsity allowed.
        max: f64,
    },
    /// A compression request that cannot be carried out.
    #[error("{what}: {message}")]
    Invalid {
        /// The setting or model at fault.
        what: String,
        /// What is wrong.
        message: String,
    },
}

/// Errors of benchmark reports (`bench --report`, `--compare`).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A run file that cannot be read.
    #[error("{}: cannot read the benchmark lines: {source}", path.display())]
    Read {
        /// The run file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// A line that is not a benchmark line; `line` counts from 1.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        /// The run file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A run file with no benchmark line of a kind the report knows.
    #[error("{}: no benchmark lines ({what}); give the JSON lines `wgtrain bench` prints on stdout", path.display())]
    Empty {
        /// The run file.
        path: PathBuf,
        /// What it held instead, in words.
        what: String,
    },
    /// A device peak (`NAME=GFLOPS,GBPS`) that cannot be read.
    #[error("peak `{given}`: {message}; give NAME=GFLOPS,GBPS, e.g. \"RTX 3080=29770,760\"")]
    Peak {
        /// The text given.
        given: String,
        /// What is wrong with it.
        message: String,
    },
    /// A figure that cannot be drawn or encoded.
    #[error("cannot draw the figure {figure}: {message}")]
    Draw {
        /// The figure's name.
        figure: String,
        /// What plotters or the encoder said.
        message: String,
    },
    /// A report file (or a figure beside it) that cannot be written.
    #[error("{}: cannot write the report: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why it cannot be written.
        #[source]
        source: std::io::Error,
    },
}

/// Errors from exporting a model to another format (ONNX).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// An ONNX operator set version the exporter does not write.
    #[error("ONNX opset {found} is not supported: choose one from {min} to {max}")]
    Opset {
        /// The opset asked for.
        found: i64,
        /// The lowest opset written.
        min: i64,
        /// The highest opset written.
        max: i64,
    },
    /// Class names that do not fit the model.
    #[error("{found} class names given but the model has {classes} classes: give one name per class")]
    ClassNames {
        /// The number of names given.
        found: usize,
        /// The model's class count.
        classes: usize,
    },
    /// The exported file cannot be written.
    #[error("{}: cannot write the exported model: {source}; check that the folder exists and is writable", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}
