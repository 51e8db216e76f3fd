//! The compute pipelines, built once per device, and the plumbing that turns
//! a kernel call (shapes, operands, outputs) into a [`Dispatch`]: a bind
//! group and a workgroup count that can be recorded any number of times.
//!
//! Every WGSL entry point is named like its CPU twin in
//! [`crate::cpu::kernels`]. Sizes reach the shaders through a small uniform
//! per dispatch (written once, when the dispatch is built) and a per-step
//! uniform ([`StepParams`]) bound at a dynamic offset, so a whole epoch of
//! steps can be recorded against the same bind groups.

use std::borrow::Cow;

use super::context::GpuContext;
use crate::error::GpuError;

const MATMUL_WGSL: &str = include_str!("../../shaders/matmul.wgsl");
const SOFTMAX_WGSL: &str = include_str!("../../shaders/softmax_xent.wgsl");
const BIAS_WGSL: &str = include_str!("../../shaders/bias_update.wgsl");
const MASK_WGSL: &str = include_str!("../../shaders/apply_mask.wgsl");

/// Below this many workgroups of wide tiles, a GEMM uses narrow ones.
/// WebGPU does not say how many compute units an adapter has; large GPUs
/// have 30 to 140, and a skinny product of a small batch (64 x 500 is 8
/// wide tiles) would leave most of them idle, while 4x as many narrow
/// tiles cost a little more traffic to workgroup memory per multiply-add.
const NARROW_BELOW: u64 = 64;

/// From this many workgroups of large tiles on, a GEMM uses large ones:
/// twice the multiply-adds per value read from workgroup memory, once
/// there are enough tiles to fill a large GPU.
const LARGE_FROM: u64 = 128;

/// Below this many workgroups of narrow tiles, and from this k on, a GEMM
/// splits k over the slices of a workgroup: its few tiles would otherwise
/// each walk the whole of k alone, one dependent step after another
/// (64 x 500 x 784, the first layer at batch 64, is 32 such tiles). On an
/// H200 such products are bound by the latency of those steps, not by the
/// number of tiles: 8 wide tiles ran 64 x 500 x 784 faster than 32 narrow
/// ones (60 against 58-74 microseconds), 32 x 32 tiles in 4 k-slices in 25
/// and 16 x 16 tiles in 16 k-slices in 14 (docs/PERFORMANCE.md).
const SLICED_BELOW: u64 = 256;
const SLICED_FROM_K: u64 = 64;

/// How a GEMM workgroup covers its block of C (matmul.wgsl): slices of
/// `threads x threads` threads, each thread computing `group x group`
/// blocks of 4 x 4 outputs, `slices` slices splitting k between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    /// 128 x 128 outputs, 256 threads of 8 x 8, an 8-deep k step.
    Large,
    /// 64 x 64 outputs, 256 threads of 4 x 4, a 16-deep k step.
    Wide,
    /// 32 x 32 outputs, 64 threads of 4 x 4, a 16-deep k step.
    Narrow,
    /// 16 x 16 outputs, 16 slices of 16 threads of 4 x 4, each taking every
    /// sixteenth 4-deep k step.
    Sliced,
}

impl Tile {
    /// Every variant.
    pub const ALL: [Tile; 4] = [Tile::Large, Tile::Wide, Tile::Narrow, Tile::Sliced];

    /// Threads of a slice along x (columns) and y (rows).
    fn threads(self) -> u32 {
        match self {
            Tile::Large | Tile::Wide => 16,
            Tile::Narrow => 8,
            Tile::Sliced => 4,
        }
    }

    /// 4 x 4 blocks per thread along each dimension.
    fn group(self) -> u32 {
        match self {
            Tile::Large => 2,
            Tile::Wide | Tile::Narrow | Tile::Sliced => 1,
        }
    }

    /// Depth of the k step staged in workgroup memory.
    fn depth(self) -> u32 {
        match self {
            Tile::Large => 8,
            Tile::Wide | Tile::Narrow => 16,
            Tile::Sliced => 4,
        }
    }

    /// Slices splitting k.
    fn slices(self) -> u32 {
        match self {
            Tile::Sliced => 16,
            _ => 1,
        }
    }

    /// Output rows (and columns) per workgroup.
    pub fn size(self) -> u32 {
        4 * self.group() * self.threads()
    }

    /// Invocations per workgroup.
    fn invocations(self) -> u32 {
        self.threads() * self.threads() * self.slices()
    }

    /// Workgroup memory (`SMEM` in matmul.wgsl): each slice's k step of A
    /// and of B, rows padded by 4 floats, or the slices' partial sums,
    /// whichever is larger.
    fn shared_bytes(self) -> u32 {
        let stage = 2 * self.depth() * (self.size() + 4) * 4;
        let partials = (self.slices() - 1) * self.invocations() / self.slices() * 16 * self.group().pow(2) * 4;
        (self.slices() * stage).max(partials)
    }

    /// Workgroups covering an `m` x `n` output, and how many per row.
    fn grid(self, m: u64, n: u64) -> (u64, u64) {
        let s = u64::from(self.size());
        (m.div_ceil(s) * n.div_ceil(s), n.div_ceil(s))
    }

    /// The variant for an `m` x `n` output with inner dimension `k`.
    pub fn for_shape(m: u64, n: u64, k: u64) -> Tile {
        if Tile::Large.grid(m, n).0 >= LARGE_FROM {
            Tile::Large
        } else if Tile::Wide.grid(m, n).0 >= NARROW_BELOW {
            Tile::Wide
        } else if Tile::Narrow.grid(m, n).0 < SLICED_BELOW && k >= SLICED_FROM_K {
            Tile::Sliced
        } else {
            Tile::Narrow
        }
    }

    /// The variant named `name` (see [`Tile::name`]).
    pub fn from_name(name: &str) -> Option<Tile> {
        Tile::ALL.into_iter().find(|t| t.name() == name)
    }

    /// matmul.wgsl with this variant's constants in front.
    fn source(self) -> String {
        format!(
            "const TX: u32 = {t}u;\nconst TY: u32 = {t}u;\nconst GM: u32 = {g}u;\nconst GN: u32 = {g}u;\n\
             const BK: u32 = {d}u;\nconst KS: u32 = {s}u;\n\n{MATMUL_WGSL}",
            t = self.threads(),
            g = self.group(),
            d = self.depth(),
            s = self.slices()
        )
    }

    /// `128x128`, `64x64`, `32x32` or `16x16/k16`.
    pub fn name(self) -> &'static str {
        match self {
            Tile::Large => "128x128",
            Tile::Wide => "64x64",
            Tile::Narrow => "32x32",
            Tile::Sliced => "16x16/k16",
        }
    }
}

/// Whether wgpu's runtime checks (bounds checks on every buffer access,
/// forced loop bounds) go into the matmul shaders: only when the
/// environment sets WGTRAIN_SHADER_CHECKS=1, for debugging a kernel. The
/// kernels guard their own accesses, and on real GPUs the checks cost a
/// compare and select on each access of the inner loops.
fn shader_checks() -> bool {
    std::env::var_os("WGTRAIN_SHADER_CHECKS").is_some_and(|v| v == "1")
}

/// Invocations per bias_update and apply_mask workgroup.
const BIAS_THREADS: u32 = 64;

/// `flags` bits of `Gemm` in matmul.wgsl.
const FLAG_RELU: u32 = 1;
const FLAG_BIAS: u32 = 2;
const FLAG_MASK: u32 = 4;
/// Bytes of [`StepParams`] as the shaders see them.
pub(crate) const STEP_BYTES: u64 = std::mem::size_of::<StepParams>() as u64;

/// Per-step values, at a dynamic offset in a uniform buffer (`Step` in the
/// shaders).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct StepParams {
    /// First position of the step's examples in the index (permutation);
    /// for evaluation, the first example of the chunk.
    pub index_off: u32,
    /// Where the step's loss and correct count go in the stats buffer.
    pub slot: u32,
    pub lr: f32,
    pub pad: u32,
}

/// `Gemm` in matmul.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    tiles_n: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
    a_src: u32,
    b_src: u32,
    ldc: u32,
    flags: u32,
    dim: u32,
    gather: u32,
    scale: f32,
    offset: f32,
    n_ext: u32,
    pad: [u32; 3],
}

/// `Softmax` in softmax_xent.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct SoftmaxParams {
    rows: u32,
    classes: u32,
    gather: u32,
    inv_rows: f32,
}

/// `Mask` in apply_mask.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct MaskParams {
    len: u32,
    pad: [u32; 3],
}

/// `Bias` in bias_update.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct BiasParams {
    rows: u32,
    outputs: u32,
    pad: [u32; 2],
}

/// The WGSL entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    MatmulNn,
    MatmulNt,
    MatmulTn,
    LinearForward,
    BackpropInput,
    WeightUpdate,
    SoftmaxXent,
    SoftmaxXentEval,
    BiasUpdate,
    ApplyMask,
}

impl Entry {
    const ALL: [Entry; 10] = [
        Entry::MatmulNn,
        Entry::MatmulNt,
        Entry::MatmulTn,
        Entry::LinearForward,
        Entry::BackpropInput,
        Entry::WeightUpdate,
        Entry::SoftmaxXent,
        Entry::SoftmaxXentEval,
        Entry::BiasUpdate,
        Entry::ApplyMask,
    ];

    /// The entry point's name, the same as its CPU twin's.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Entry::MatmulNn => "matmul_nn",
            Entry::MatmulNt => "matmul_nt",
            Entry::MatmulTn => "matmul_tn",
            Entry::LinearForward => "linear_forward",
            Entry::BackpropInput => "backprop_input",
            Entry::WeightUpdate => "weight_update",
            Entry::SoftmaxXent => "softmax_xent",
            Entry::SoftmaxXentEval => "softmax_xent_eval",
            Entry::BiasUpdate => "bias_update",
            Entry::ApplyMask => "apply_mask",
        }
    }

    fn family(self) -> Family {
        match self {
            Entry::SoftmaxXent | Entry::SoftmaxXentEval => Family::Softmax,
            Entry::BiasUpdate => Family::Bias,
            Entry::ApplyMask => Family::Mask,
            _ => Family::Gemm,
        }
    }
}

/// Kernels sharing a shader file and a bind group layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Gemm,
    Softmax,
    Bias,
    Mask,
}

/// Where a GEMM operand's values come from.
#[derive(Clone, Copy)]
pub(crate) enum Operand<'a> {
    /// A matrix in `buf`: element `(r, c)` of the operand at
    /// `buf[r * rs + c * cs]`.
    Dense { buf: &'a wgpu::Buffer, rs: u32, cs: u32 },
    /// The resident dataset, gathered and preprocessed on the fly; rows are
    /// batch positions and columns features.
    Data(DataSource<'a>),
}

/// A dataset resident on the GPU, as a GEMM operand sees it.
#[derive(Clone, Copy)]
pub(crate) struct DataSource<'a> {
    /// Raw values, as f32 or as bytes packed four to a u32 word.
    pub data: &'a wgpu::Buffer,
    pub is_u8: bool,
    /// Example numbers, read at `index_off + row` when `gather`.
    pub index: &'a wgpu::Buffer,
    pub gather: bool,
    /// Values per example.
    pub dim: u32,
    pub scale: f32,
    pub offset: f32,
}

impl<'a> Operand<'a> {
    /// Row-major `[rows, cols]` in `buf`.
    pub(crate) fn rows(buf: &'a wgpu::Buffer, cols: usize) -> Self {
        Operand::Dense {
            buf,
            rs: cols as u32,
            cs: 1,
        }
    }

    /// The transpose of row-major `[cols, rows]` in `buf`.
    pub(crate) fn transposed(buf: &'a wgpu::Buffer, rows: usize) -> Self {
        Operand::Dense {
            buf,
            rs: 1,
            cs: rows as u32,
        }
    }
}

/// One GEMM-family kernel call: `c[m, n] = epilogue(A[m, k] B[k, n])`.
pub(crate) struct Gemm<'a> {
    pub entry: Entry,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Operand<'a>,
    pub b: Operand<'a>,
    /// Row-major `[m, n]`.
    pub c: &'a wgpu::Buffer,
    /// The bias (linear_forward), the layer input laid out like `c`
    /// (backprop_input), or the pruning mask laid out like `c`
    /// (weight_update).
    pub aux: Option<&'a wgpu::Buffer>,
    /// linear_forward: apply ReLU.
    pub relu: bool,
    /// weight_update: also update this bias with the column sums of `A`.
    pub bias: Option<&'a wgpu::Buffer>,
}

impl<'a> Gemm<'a> {
    /// A plain product for `matmul_nn`, `matmul_nt` or `matmul_tn`:
    /// `c[m, n] = op(a) op(b)` with `a` stored `[m, k]` (`[k, m]` for tn)
    /// and `b` stored `[k, n]` (`[n, k]` for nt).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn plain(
        entry: Entry,
        a: &'a wgpu::Buffer,
        b: &'a wgpu::Buffer,
        c: &'a wgpu::Buffer,
        m: usize,
        n: usize,
        k: usize,
    ) -> Self {
        let (a, b) = match entry {
            Entry::MatmulNt => (Operand::rows(a, k), Operand::transposed(b, k)),
            Entry::MatmulTn => (Operand::transposed(a, m), Operand::rows(b, n)),
            _ => (Operand::rows(a, k), Operand::rows(b, n)),
        };
        Gemm {
            entry,
            m,
            n,
            k,
            a,
            b,
            c,
            aux: None,
            relu: false,
            bias: None,
        }
    }

    /// `y[rows, outputs] = x[rows, inputs] w[outputs, inputs]^T + bias`, ReLU when `relu`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_forward(
        x: Operand<'a>,
        w: &'a wgpu::Buffer,
        bias: &'a wgpu::Buffer,
        y: &'a wgpu::Buffer,
        rows: usize,
        inputs: usize,
        outputs: usize,
        relu: bool,
    ) -> Self {
        Gemm {
            entry: Entry::LinearForward,
            m: rows,
            n: outputs,
            k: inputs,
            a: x,
            b: Operand::transposed(w, inputs),
            c: y,
            aux: Some(bias),
            relu,
            bias: None,
        }
    }

    /// `dx[rows, inputs] = (dy[rows, outputs] w[outputs, inputs]) * (x > 0)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backprop_input(
        dy: &'a wgpu::Buffer,
        w: &'a wgpu::Buffer,
        x: &'a wgpu::Buffer,
        dx: &'a wgpu::Buffer,
        rows: usize,
        inputs: usize,
        outputs: usize,
    ) -> Self {
        Gemm {
            entry: Entry::BackpropInput,
            m: rows,
            n: inputs,
            k: outputs,
            a: Operand::rows(dy, outputs),
            b: Operand::rows(w, inputs),
            c: dx,
            aux: Some(x),
            relu: false,
            bias: None,
        }
    }

    /// `w[outputs, inputs] -= lr * dy[rows, outputs]^T x[rows, inputs]`;
    /// with `bias`, also `bias[outputs] -= lr * colsum(dy)` (bias_update
    /// fused in), and with `mask`, `w *= mask` after the update.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn weight_update(
        w: &'a wgpu::Buffer,
        bias: Option<&'a wgpu::Buffer>,
        mask: Option<&'a wgpu::Buffer>,
        dy: &'a wgpu::Buffer,
        x: Operand<'a>,
        rows: usize,
        inputs: usize,
        outputs: usize,
    ) -> Self {
        Gemm {
            entry: Entry::WeightUpdate,
            m: outputs,
            n: inputs,
            k: rows,
            a: Operand::transposed(dy, outputs),
            b: x,
            c: w,
            aux: mask,
            relu: false,
            bias,
        }
    }
}

/// A kernel call ready to record: its pipeline, bind group (which keeps its
/// buffers alive) and workgroup grid.
pub(crate) struct Dispatch {
    entry: Entry,
    /// The label it was built with (also its bind group's).
    label: String,
    /// The GEMM tile variant; ignored by the other families.
    tile: Tile,
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
}

impl Dispatch {
    /// Record the dispatch with the step parameters at `step_offset` bytes
    /// into the step buffer it was built with.
    pub(crate) fn record(&self, kernels: &Kernels, pass: &mut wgpu::ComputePass<'_>, step_offset: u32) {
        if self.groups.0 == 0 {
            return;
        }
        pass.set_pipeline(kernels.pipeline(self.entry, self.tile));
        pass.set_bind_group(0, &self.bind_group, &[step_offset]);
        pass.dispatch_workgroups(self.groups.0, self.groups.1, 1);
    }

    pub(crate) fn entry(&self) -> Entry {
        self.entry
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }
}

/// The pipelines and layouts of every kernel, and two placeholder buffers
/// for bindings a kernel does not use.
pub(crate) struct Kernels {
    gemm_layout: wgpu::BindGroupLayout,
    softmax_layout: wgpu::BindGroupLayout,
    bias_layout: wgpu::BindGroupLayout,
    /// One per entry point, and per tile variant for the GEMM family.
    pipelines: Vec<(Entry, Tile, wgpu::ComputePipeline)>,
    /// Bound where a read-only storage binding is unused.
    unused_ro: wgpu::Buffer,
    /// Bound where a writable storage binding is unused (a buffer may not
    /// be bound writable and read-only in the same dispatch, hence two).
    unused_rw: wgpu::Buffer,
    /// Bytes between consecutive [`StepParams`] in a step buffer.
    pub(crate) step_stride: u64,
    max_groups: u32,
}

fn uniform_entry(binding: u32, dynamic: bool, size: u64) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: dynamic,
            min_binding_size: wgpu::BufferSize::new(size),
        },
        count: None,
    }
}

/// A storage binding whose elements are `elem` bytes (the shader's
/// runtime-sized array needs at least one).
fn storage_entry(binding: u32, read_only: bool, elem: u64) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: wgpu::BufferSize::new(elem),
        },
        count: None,
    }
}

/// Fail with [`GpuError::Limit`] when the adapter allows less than the
/// kernels need.
fn need(what: &str, needed: u64, limit: u64, limit_name: &'static str) -> Result<(), GpuError> {
    if needed > limit {
        return Err(GpuError::Limit {
            what: what.to_string(),
            needed,
            limit,
            limit_name,
        });
    }
    Ok(())
}

impl Kernels {
    /// Compile every pipeline. Shader and pipeline errors are caught in an
    /// error scope and returned, rather than left to wgpu's default handler,
    /// which panics.
    pub(crate) fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let l = ctx.limits();
        let threads = "a compute workgroup of 256 invocations";
        need(
            threads,
            256,
            l.max_compute_invocations_per_workgroup.into(),
            "max_compute_invocations_per_workgroup",
        )?;
        need(
            threads,
            256,
            l.max_compute_workgroup_size_x.into(),
            "max_compute_workgroup_size_x",
        )?;
        need(
            "the matmul tiles",
            Tile::ALL.iter().map(|t| t.shared_bytes()).max().unwrap_or(0).into(),
            l.max_compute_workgroup_storage_size.into(),
            "max_compute_workgroup_storage_size, bytes",
        )?;
        need(
            "the kernels' storage bindings",
            7,
            l.max_storage_buffers_per_shader_stage.into(),
            "max_storage_buffers_per_shader_stage",
        )?;
        need(
            "the kernels' bindings",
            9,
            l.max_bindings_per_bind_group.into(),
            "max_bindings_per_bind_group",
        )?;

        let device = &ctx.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = |label: &str, src: &'static str| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(src)),
            })
        };
        let checked = shader_checks();
        let matmul: Vec<(Tile, wgpu::ShaderModule)> = Tile::ALL
            .iter()
            .map(|&t| {
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some("matmul.wgsl"),
                    source: wgpu::ShaderSource::Wgsl(Cow::Owned(t.source())),
                };
                let m = if checked {
                    device.create_shader_module(desc)
                } else {
                    // SAFETY: matmul.wgsl guards every global access with the
                    // operand's shape (load_a, load_b and the epilogue), the
                    // host checks each buffer against that shape before it
                    // builds a dispatch (src/gpu/ops.rs, trainer.rs,
                    // predict.rs), workgroup-memory indices are in range by
                    // construction, and every loop is bounded by a constant or
                    // by params.k. tests/gpu_kernels.rs runs it on ragged
                    // shapes with NaN-poisoned outputs; WGTRAIN_SHADER_CHECKS=1
                    // restores the checks for debugging.
                    unsafe { device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
                };
                (t, m)
            })
            .collect();
        let softmax = module("softmax_xent.wgsl", SOFTMAX_WGSL);
        let bias = module("bias_update.wgsl", BIAS_WGSL);
        let mask = module("apply_mask.wgsl", MASK_WGSL);

        let step = |b| uniform_entry(b, true, STEP_BYTES);
        let gemm_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("matmul bind group layout"),
            entries: &[
                uniform_entry(0, false, std::mem::size_of::<GemmParams>() as u64),
                step(1),
                storage_entry(2, true, 4),
                storage_entry(3, true, 4),
                storage_entry(4, true, 4),
                storage_entry(5, true, 4),
                storage_entry(6, true, 4),
                storage_entry(7, false, 4),
                storage_entry(8, false, 4),
            ],
        });
        let softmax_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("softmax_xent bind group layout"),
            entries: &[
                uniform_entry(0, false, std::mem::size_of::<SoftmaxParams>() as u64),
                step(1),
                storage_entry(2, true, 4),
                storage_entry(3, true, 4),
                storage_entry(4, true, 4),
                storage_entry(5, false, 4),
                storage_entry(6, false, 4),
                // `Stat { loss: f32, correct: u32 }`
                storage_entry(7, false, 8),
            ],
        });
        let bias_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("bias_update bind group layout"),
            entries: &[
                uniform_entry(0, false, std::mem::size_of::<BiasParams>() as u64),
                step(1),
                storage_entry(2, true, 4),
                storage_entry(3, false, 4),
            ],
        });
        let pipeline_layout = |label: &str, bgl: &wgpu::BindGroupLayout| {
            device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(bgl)],
                immediate_size: 0,
            })
        };
        let gemm_pl = pipeline_layout("matmul pipeline layout", &gemm_layout);
        let softmax_pl = pipeline_layout("softmax_xent pipeline layout", &softmax_layout);
        let bias_pl = pipeline_layout("bias_update pipeline layout", &bias_layout);

        let variants = Entry::ALL.iter().flat_map(|&e| {
            let tiles: &[Tile] = if e.family() == Family::Gemm {
                &Tile::ALL
            } else {
                &[Tile::Wide]
            };
            tiles.iter().map(move |&t| (e, t))
        });
        let pipelines = variants
            .map(|(e, tile)| {
                let gemm_module = &matmul.iter().find(|(t, _)| *t == tile).unwrap_or(&matmul[0]).1;
                let (layout, module) = match e.family() {
                    Family::Gemm => (&gemm_pl, gemm_module),
                    Family::Softmax => (&softmax_pl, &softmax),
                    // Same bindings: params, step, one read-only, one writable.
                    Family::Bias => (&bias_pl, &bias),
                    Family::Mask => (&bias_pl, &mask),
                };
                let label = if e.family() == Family::Gemm {
                    format!("{} ({} tiles)", e.name(), tile.name())
                } else {
                    e.name().to_string()
                };
                let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: Some(layout),
                    module,
                    entry_point: Some(e.name()),
                    // Every kernel writes its workgroup memory before reading it.
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &[],
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                });
                (e, tile, p)
            })
            .collect();
        let placeholder = |label: &str| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let unused_ro = placeholder("unused read-only binding");
        let unused_rw = placeholder("unused writable binding");
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Other(format!("building the compute pipelines: {e}")));
        }
        Ok(Kernels {
            gemm_layout,
            softmax_layout,
            bias_layout,
            pipelines,
            unused_ro,
            unused_rw,
            step_stride: u64::from(l.min_uniform_buffer_offset_alignment).max(STEP_BYTES),
            max_groups: l.max_compute_workgroups_per_dimension,
        })
    }

    fn pipeline(&self, e: Entry, tile: Tile) -> &wgpu::ComputePipeline {
        let tile = if e.family() == Family::Gemm { tile } else { Tile::Wide };
        // Every (entry, tile) pair `Dispatch` can hold was built in `new`.
        let found = self.pipelines.iter().find(|(pe, pt, _)| *pe == e && *pt == tile);
        &found.unwrap_or(&self.pipelines[0]).2
    }

    /// Spread `total` workgroups over x and y, each at most the adapter's
    /// per-dimension limit; the kernels linearise `wid.x + wid.y * nwg.x`
    /// and ignore the surplus of the last row.
    pub(crate) fn fold(&self, what: &str, total: u64) -> Result<(u32, u32), GpuError> {
        let max = u64::from(self.max_groups.max(1));
        if total == 0 {
            return Ok((0, 0));
        }
        let x = total.min(max);
        let y = total.div_ceil(x);
        need(
            what,
            y,
            max,
            "max_compute_workgroups_per_dimension (after folding into two dimensions)",
        )?;
        Ok((x as u32, y as u32))
    }

    /// The buffer to bind for an operand, its strides and source kind.
    fn operand<'b>(
        &'b self,
        op: &Operand<'b>,
        rs: &mut u32,
        cs: &mut u32,
        src: &mut u32,
    ) -> (&'b wgpu::Buffer, Option<DataSource<'b>>) {
        match *op {
            Operand::Dense { buf, rs: r, cs: c } => {
                (*rs, *cs, *src) = (r, c, 0);
                (buf, None)
            }
            Operand::Data(d) => {
                *src = if d.is_u8 { 2 } else { 1 };
                (&self.unused_ro, Some(d))
            }
        }
    }

    fn params_buffer(ctx: &GpuContext, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer, GpuError> {
        ctx.uniform_init(&format!("{label} params"), bytes)
    }

    fn step_binding(step: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: step,
            offset: 0,
            size: wgpu::BufferSize::new(STEP_BYTES),
        })
    }

    fn bind_group(
        ctx: &GpuContext,
        label: &str,
        layout: &wgpu::BindGroupLayout,
        buffers: &[(u32, &wgpu::Buffer)],
        params: &wgpu::Buffer,
        step: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        let mut entries = vec![
            wgpu::BindGroupEntry {
                binding: 0,
                resource: params.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: Self::step_binding(step),
            },
        ];
        entries.extend(buffers.iter().map(|&(binding, b)| wgpu::BindGroupEntry {
            binding,
            resource: b.as_entire_binding(),
        }));
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout,
            entries: &entries,
        })
    }

    /// Build a GEMM-family dispatch reading its per-step values from `step`,
    /// with the tile variant chosen for its shape.
    pub(crate) fn gemm(
        &self,
        ctx: &GpuContext,
        label: &str,
        g: &Gemm,
        step: &wgpu::Buffer,
    ) -> Result<Dispatch, GpuError> {
        let n_ext = g.n + g.bias.is_some() as usize;
        self.gemm_tiled(
            ctx,
            label,
            g,
            step,
            Tile::for_shape(g.m as u64, n_ext as u64, g.k as u64),
        )
    }

    /// [`Kernels::gemm`] with the tile variant `tile`.
    pub(crate) fn gemm_tiled(
        &self,
        ctx: &GpuContext,
        label: &str,
        g: &Gemm,
        step: &wgpu::Buffer,
        tile: Tile,
    ) -> Result<Dispatch, GpuError> {
        debug_assert_eq!(g.entry.family(), Family::Gemm);
        let (m, n, k) = (g.m as u64, g.n as u64, g.k as u64);
        let u32_max = u64::from(u32::MAX);
        // Indices are u32 in the shader.
        for (what, v) in [("m*k", m * k), ("k*n", k * n), ("m*n", m * n)] {
            need(
                &format!("{label}: {what} elements"),
                v,
                u32_max,
                "u32 indexing in the shaders",
            )?;
        }
        // With a fused bias, B has an extra column of ones (see matmul.wgsl).
        let n_ext = n + g.bias.is_some() as u64;
        let (tiles, tiles_n) = tile.grid(m, n_ext);
        let groups = self.fold(label, tiles)?;
        let mut p = GemmParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            tiles_n: tiles_n.max(1) as u32,
            n_ext: n_ext as u32,
            ldc: n as u32,
            flags: if g.relu { FLAG_RELU } else { 0 }
                | if g.bias.is_some() { FLAG_BIAS } else { 0 }
                | if g.entry == Entry::WeightUpdate && g.aux.is_some() {
                    FLAG_MASK
                } else {
                    0
                },
            scale: 1.0,
            ..Default::default()
        };
        let (a, a_data) = self.operand(&g.a, &mut p.a_rs, &mut p.a_cs, &mut p.a_src);
        let (b, b_data) = self.operand(&g.b, &mut p.b_rs, &mut p.b_cs, &mut p.b_src);
        let (mut data, mut index) = (&self.unused_ro, &self.unused_ro);
        // At most one operand is the dataset in every kernel built here.
        if let Some(d) = a_data.or(b_data) {
            p.dim = d.dim;
            p.gather = d.gather as u32;
            p.scale = d.scale;
            p.offset = d.offset;
            data = d.data;
            index = d.index;
        }
        let params = Self::params_buffer(ctx, label, bytemuck::bytes_of(&p))?;
        let aux = g.aux.unwrap_or(&self.unused_ro);
        let bind_group = Self::bind_group(
            ctx,
            label,
            &self.gemm_layout,
            &[
                (2, a),
                (3, b),
                (4, aux),
                (5, data),
                (6, index),
                (7, g.c),
                (8, g.bias.unwrap_or(&self.unused_rw)),
            ],
            &params,
            step,
        );
        Ok(Dispatch {
            entry: g.entry,
            label: label.to_string(),
            tile,
            bind_group,
            groups,
        })
    }

    /// Build a softmax_xent (training: `dlogits`, labels through `index`)
    /// or softmax_xent_eval (`predictions`, labels direct) dispatch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn softmax(
        &self,
        ctx: &GpuContext,
        label: &str,
        entry: Entry,
        rows: usize,
        classes: usize,
        logits: &wgpu::Buffer,
        labels: &wgpu::Buffer,
        index: Option<&wgpu::Buffer>,
        out: &wgpu::Buffer,
        stats: &wgpu::Buffer,
        step: &wgpu::Buffer,
    ) -> Result<Dispatch, GpuError> {
        debug_assert_eq!(entry.family(), Family::Softmax);
        need(
            &format!("{label}: rows*classes elements"),
            (rows as u64) * (classes as u64),
            u32::MAX.into(),
            "u32 indexing in the shaders",
        )?;
        let p = SoftmaxParams {
            rows: rows as u32,
            classes: classes as u32,
            gather: index.is_some() as u32,
            inv_rows: 1.0 / rows.max(1) as f32,
        };
        let params = Self::params_buffer(ctx, label, bytemuck::bytes_of(&p))?;
        let (dlogits, predictions) = match entry {
            Entry::SoftmaxXent => (out, &self.unused_rw),
            _ => (&self.unused_rw, out),
        };
        let bind_group = Self::bind_group(
            ctx,
            label,
            &self.softmax_layout,
            &[
                (2, logits),
                (3, labels),
                (4, index.unwrap_or(&self.unused_ro)),
                (5, dlogits),
                (6, predictions),
                (7, stats),
            ],
            &params,
            step,
        );
        Ok(Dispatch {
            entry,
            label: label.to_string(),
            tile: Tile::Wide,
            bind_group,
            // One workgroup reduces the whole batch (see softmax_xent.wgsl).
            groups: if rows == 0 { (0, 0) } else { (1, 1) },
        })
    }

    /// Build a bias_update dispatch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bias_update(
        &self,
        ctx: &GpuContext,
        label: &str,
        rows: usize,
        outputs: usize,
        dy: &wgpu::Buffer,
        bias: &wgpu::Buffer,
        step: &wgpu::Buffer,
    ) -> Result<Dispatch, GpuError> {
        need(
            &format!("{label}: rows*outputs elements"),
            (rows as u64) * (outputs as u64),
            u32::MAX.into(),
            "u32 indexing in the shaders",
        )?;
        let p = BiasParams {
            rows: rows as u32,
            outputs: outputs as u32,
            pad: [0; 2],
        };
        let params = Self::params_buffer(ctx, label, bytemuck::bytes_of(&p))?;
        let groups = self.fold(label, (outputs as u64).div_ceil(BIAS_THREADS.into()))?;
        let bind_group = Self::bind_group(ctx, label, &self.bias_layout, &[(2, dy), (3, bias)], &params, step);
        Ok(Dispatch {
            entry: Entry::BiasUpdate,
            label: label.to_string(),
            tile: Tile::Wide,
            bind_group,
            groups,
        })
    }

    /// Build an apply_mask dispatch: `w[i] *= mask[i]` for `len` elements.
    pub(crate) fn apply_mask(
        &self,
        ctx: &GpuContext,
        label: &str,
        len: usize,
        mask: &wgpu::Buffer,
        w: &wgpu::Buffer,
        step: &wgpu::Buffer,
    ) -> Result<Dispatch, GpuError> {
        need(
            &format!("{label}: elements"),
            len as u64,
            u32::MAX.into(),
            "u32 indexing in the shaders",
        )?;
        let p = MaskParams {
            len: len as u32,
            pad: [0; 3],
        };
        let params = Self::params_buffer(ctx, label, bytemuck::bytes_of(&p))?;
        let groups = self.fold(label, (len as u64).div_ceil(BIAS_THREADS.into()))?;
        let bind_group = Self::bind_group(ctx, label, &self.bias_layout, &[(2, mask), (3, w)], &params, step);
        Ok(Dispatch {
            entry: Entry::ApplyMask,
            label: label.to_string(),
            tile: Tile::Wide,
            bind_group,
            groups,
        })
    }
}
