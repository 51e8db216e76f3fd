//! The pipeline registry: one [`Kernel`] key per compute pipeline (every
//! WGSL entry point, the GEMM ones per [`Tile`], linear_forward_i8 per
//! [`Int8Path`]), the bind group layout of each kernel family, and the
//! pipelines themselves, compiled on first use in groups that share a
//! shader source and kept for the life of the device.
//!
//! Every WGSL entry point is named like its CPU twin ([`crate::cpu::kernels`]
//! for the f32 kernels, [`crate::compress::quant`] for the int8 ones). A key
//! that names no built pipeline is an error, never a substitute.

use std::borrow::Cow;
use std::sync::OnceLock;

use super::device::{need, GpuDevice};
use super::shaders;
use super::tile::Tile;
use super::uniforms::{
    BiasParams, ClipParams, GemmParams, LinearI8Params, MaskParams, OptimParams, QuantParams, SoftTargetParams,
    SoftmaxParams, STAT_BYTES, STEP_BYTES,
};
use crate::backend::Precision;
use crate::error::GpuError;

/// How `linear_forward_i8` multiplies four packed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Int8Path {
    /// WGSL's `dot4I8Packed` (the `packed_4x8_integer_dot_product` extension).
    Dot4 = 0,
    /// Sign-extending shifts and four multiply-adds, for compilers without
    /// the extension.
    Unpacked = 1,
}

impl Int8Path {
    /// The path's name, as predictor names and logs print it.
    pub fn name(self) -> &'static str {
        match self {
            Int8Path::Dot4 => "dot4I8Packed",
            Int8Path::Unpacked => "unpacked",
        }
    }
}

/// The entry points of matmul.wgsl, the GEMM family: one tiled product with
/// a different epilogue each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GemmKernel {
    MatmulNn,
    MatmulNt,
    MatmulTn,
    LinearForward,
    BackpropInput,
    WeightUpdate,
    /// The last layer's linear_forward with softmax_xent in its epilogue.
    LinearSoftmaxXent,
}

impl GemmKernel {
    const ALL: [GemmKernel; 7] = [
        GemmKernel::MatmulNn,
        GemmKernel::MatmulNt,
        GemmKernel::MatmulTn,
        GemmKernel::LinearForward,
        GemmKernel::BackpropInput,
        GemmKernel::WeightUpdate,
        GemmKernel::LinearSoftmaxXent,
    ];

    /// The entry point's name, the same as its CPU twin's.
    pub(crate) fn name(self) -> &'static str {
        match self {
            GemmKernel::MatmulNn => "matmul_nn",
            GemmKernel::MatmulNt => "matmul_nt",
            GemmKernel::MatmulTn => "matmul_tn",
            GemmKernel::LinearForward => "linear_forward",
            GemmKernel::BackpropInput => "backprop_input",
            GemmKernel::WeightUpdate => "weight_update",
            GemmKernel::LinearSoftmaxXent => "linear_softmax_xent",
        }
    }
}

/// What a compute pipeline is: the key of the registry. Only GEMM kernels
/// come in tile variants and precisions (how they round their operands),
/// and only linear_forward_i8 in dot-product paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    Gemm(GemmKernel, Tile, Precision),
    SoftmaxXent,
    SoftmaxXentEval,
    SoftTargets,
    SoftTargetXent,
    BiasUpdate,
    ApplyMask,
    SgdMomentumUpdate,
    AdamUpdate,
    GradSqPartial,
    ClipCoef,
    QuantizeRowsI8,
    LinearForwardI8(Int8Path),
}

impl Kernel {
    /// The WGSL entry point, named like its CPU twin.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kernel::Gemm(g, ..) => g.name(),
            Kernel::SoftmaxXent => "softmax_xent",
            Kernel::SoftmaxXentEval => "softmax_xent_eval",
            Kernel::SoftTargets => "soft_targets",
            Kernel::SoftTargetXent => "soft_target_xent",
            Kernel::BiasUpdate => "bias_update",
            Kernel::ApplyMask => "apply_mask",
            Kernel::SgdMomentumUpdate => "sgd_momentum_update",
            Kernel::AdamUpdate => "adam_update",
            Kernel::GradSqPartial => "grad_sq_partial",
            Kernel::ClipCoef => "clip_coef",
            Kernel::QuantizeRowsI8 => "quantize_rows_i8",
            Kernel::LinearForwardI8(_) => "linear_forward_i8",
        }
    }

    /// The pipeline's label: the entry point and its variant, if any.
    pub(crate) fn label(self) -> String {
        match self {
            Kernel::Gemm(g, tile, Precision::F32) => format!("{} ({} tiles)", g.name(), tile.name()),
            Kernel::Gemm(g, tile, p) => format!("{} ({} tiles, {})", g.name(), tile.name(), p.name()),
            Kernel::LinearForwardI8(path) => format!("linear_forward_i8 ({})", path.name()),
            k => k.name().to_string(),
        }
    }

    /// The bind group layout the kernel shares with its family.
    pub(crate) fn family(self) -> Family {
        match self {
            Kernel::Gemm(GemmKernel::LinearSoftmaxXent, ..) => Family::GemmXent,
            Kernel::Gemm(..) => Family::Gemm,
            Kernel::SoftmaxXent | Kernel::SoftmaxXentEval => Family::Softmax,
            Kernel::SoftTargets | Kernel::SoftTargetXent => Family::SoftTarget,
            Kernel::BiasUpdate | Kernel::ApplyMask => Family::Vector,
            Kernel::SgdMomentumUpdate | Kernel::AdamUpdate => Family::Optim,
            Kernel::GradSqPartial | Kernel::ClipCoef => Family::Clip,
            Kernel::QuantizeRowsI8 => Family::Quantize,
            Kernel::LinearForwardI8(_) => Family::LinearI8,
        }
    }

    /// The pipelines compiled together with this one.
    fn group(self) -> Group {
        match self {
            Kernel::Gemm(.., Precision::F16Mixed) => Group::F16Gemm,
            Kernel::Gemm(..)
            | Kernel::SoftmaxXent
            | Kernel::SoftmaxXentEval
            | Kernel::SoftTargets
            | Kernel::SoftTargetXent
            | Kernel::BiasUpdate
            | Kernel::ApplyMask
            | Kernel::SgdMomentumUpdate
            | Kernel::AdamUpdate
            | Kernel::GradSqPartial
            | Kernel::ClipCoef => Group::F32,
            Kernel::QuantizeRowsI8 => Group::Quantize,
            Kernel::LinearForwardI8(path) => Group::LinearI8(path),
        }
    }
}

/// Kernels that share a bind group layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// matmul.wgsl: params, step, A, B, aux, data, index, C, bias.
    Gemm,
    /// matmul.wgsl's linear_softmax_xent: params, step, A, B, bias, labels,
    /// index, logits, dlogits, stats.
    GemmXent,
    /// softmax_xent.wgsl: params, step, logits, labels, index, dlogits,
    /// predictions, stats.
    Softmax,
    /// soft_target_xent.wgsl: params, step, logits, labels, index, probs,
    /// dlogits, stats.
    SoftTarget,
    /// bias_update.wgsl and apply_mask.wgsl: params, step, one read-only
    /// vector, one written in place.
    Vector,
    /// optim_update.wgsl: params, step, the gradient (read-only), the
    /// parameter and two state buffers, written in place, and the clipping
    /// coefficient (read-only).
    Optim,
    /// clip_grad_norm.wgsl: params, two read-only vectors, one written.
    Clip,
    /// quantize_rows_i8.wgsl: params, x, xq, x_scale.
    Quantize,
    /// linear_forward_i8.wgsl: params, xq, x_scale, w, w_scale, bias, y.
    LinearI8,
}

impl Family {
    /// Whether binding 1 is the per-step uniform ([`super::uniforms::StepParams`]),
    /// bound at a dynamic offset.
    pub(crate) fn has_step(self) -> bool {
        matches!(
            self,
            Family::Gemm | Family::GemmXent | Family::Softmax | Family::SoftTarget | Family::Vector | Family::Optim
        )
    }

    fn name(self) -> &'static str {
        match self {
            Family::Gemm => "matmul",
            Family::GemmXent => "linear_softmax_xent",
            Family::Softmax => "softmax_xent",
            Family::SoftTarget => "soft_target_xent",
            Family::Vector => "bias_update and apply_mask",
            Family::Optim => "optim_update",
            Family::Clip => "clip_grad_norm",
            Family::Quantize => "quantize_rows_i8",
            Family::LinearI8 => "linear_forward_i8",
        }
    }

    /// The bindings: the params uniform, the step uniform where there is
    /// one, then storage buffers, read-only or written, with their element
    /// size (a shader's runtime-sized array needs at least one element).
    fn entries(self) -> Vec<wgpu::BindGroupLayoutEntry> {
        let params = |size: usize| uniform_entry(0, false, size as u64);
        let step = uniform_entry(1, true, STEP_BYTES);
        let ro = |b| storage_entry(b, true, 4);
        let rw = |b| storage_entry(b, false, 4);
        match self {
            Family::Gemm => vec![
                params(std::mem::size_of::<GemmParams>()),
                step,
                ro(2),
                ro(3),
                ro(4),
                ro(5),
                ro(6),
                rw(7),
                rw(8),
            ],
            Family::GemmXent => vec![
                params(std::mem::size_of::<GemmParams>()),
                step,
                ro(2),
                ro(3),
                ro(4),
                ro(5),
                ro(6),
                rw(7),
                rw(8),
                storage_entry(9, false, STAT_BYTES),
            ],
            Family::Softmax => vec![
                params(std::mem::size_of::<SoftmaxParams>()),
                step,
                ro(2),
                ro(3),
                ro(4),
                rw(5),
                rw(6),
                storage_entry(7, false, STAT_BYTES),
            ],
            Family::SoftTarget => vec![
                params(std::mem::size_of::<SoftTargetParams>()),
                step,
                ro(2),
                ro(3),
                ro(4),
                rw(5),
                rw(6),
                storage_entry(7, false, STAT_BYTES),
            ],
            Family::Vector => vec![
                params(std::mem::size_of::<BiasParams>().max(std::mem::size_of::<MaskParams>())),
                step,
                ro(2),
                rw(3),
            ],
            Family::Optim => vec![
                params(std::mem::size_of::<OptimParams>()),
                step,
                ro(2),
                rw(3),
                rw(4),
                rw(5),
                ro(6),
            ],
            Family::Clip => vec![params(std::mem::size_of::<ClipParams>()), ro(1), ro(2), rw(3)],
            Family::Quantize => vec![params(std::mem::size_of::<QuantParams>()), ro(1), rw(2), rw(3)],
            Family::LinearI8 => vec![
                params(std::mem::size_of::<LinearI8Params>()),
                ro(1),
                ro(2),
                ro(3),
                ro(4),
                ro(5),
                rw(6),
            ],
        }
    }
}

/// Pipelines compiled together, in one error scope, the first time one of
/// them is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Every f32 kernel (training, evaluation, f32 inference).
    F32,
    /// The GEMM kernels of f16-mixed training (needs shader-f16).
    F16Gemm,
    Quantize,
    LinearI8(Int8Path),
}

impl Group {
    const COUNT: usize = 5;

    fn index(self) -> usize {
        match self {
            Group::F32 => 0,
            Group::Quantize => 1,
            Group::LinearI8(Int8Path::Dot4) => 2,
            Group::LinearI8(Int8Path::Unpacked) => 3,
            Group::F16Gemm => 4,
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

/// A storage binding whose elements are `elem` bytes.
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

/// The layouts and pipelines of one [`Group`].
struct Built {
    layouts: Vec<(Family, wgpu::BindGroupLayout)>,
    pipelines: Vec<(Kernel, wgpu::ComputePipeline)>,
}

/// Every pipeline of a device, compiled on first use, and two placeholder
/// buffers for bindings a kernel does not use.
pub(crate) struct Registry {
    groups: [OnceLock<Built>; Group::COUNT],
    /// Bound where a read-only storage binding is unused.
    pub(crate) unused_ro: wgpu::Buffer,
    /// Bound where a writable storage binding is unused (a buffer may not
    /// be bound writable and read-only in the same dispatch, hence two).
    pub(crate) unused_rw: wgpu::Buffer,
    /// Bytes between consecutive [`super::uniforms::StepParams`] in a step
    /// buffer.
    pub(crate) step_stride: u64,
}

impl Registry {
    /// An empty registry for `dev`: nothing is compiled until asked for.
    pub(crate) fn new(dev: &GpuDevice) -> Self {
        let placeholder = |label: &str| {
            dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        Registry {
            groups: Default::default(),
            unused_ro: placeholder("unused read-only binding"),
            unused_rw: placeholder("unused writable binding"),
            step_stride: u64::from(dev.limits.min_uniform_buffer_offset_alignment).max(STEP_BYTES),
        }
    }

    /// The pipeline of `kernel` and its bind group layout, compiling its
    /// group first if no pipeline of it has been asked for yet.
    pub(crate) fn get(
        &self,
        dev: &GpuDevice,
        kernel: Kernel,
    ) -> Result<(&wgpu::ComputePipeline, &wgpu::BindGroupLayout), GpuError> {
        let group = kernel.group();
        let cell = &self.groups[group.index()];
        let built = match cell.get() {
            Some(b) => b,
            None => {
                let b = Self::build(dev, group)?;
                // A concurrent first call may have won the race; either value is fine.
                cell.get_or_init(|| b)
            }
        };
        let missing =
            |what: &str| GpuError::Other(format!("the pipeline registry has no {what} for {}", kernel.label()));
        let pipeline = built
            .pipelines
            .iter()
            .find(|(k, _)| *k == kernel)
            .map(|(_, p)| p)
            .ok_or_else(|| missing("pipeline"))?;
        let layout = built
            .layouts
            .iter()
            .find(|(f, _)| *f == kernel.family())
            .map(|(_, l)| l)
            .ok_or_else(|| missing("bind group layout"))?;
        Ok((pipeline, layout))
    }

    /// Compile a group. Shader and pipeline errors are caught in an error
    /// scope and returned, rather than left to wgpu's default handler,
    /// which panics.
    fn build(dev: &GpuDevice, group: Group) -> Result<Built, GpuError> {
        if matches!(group, Group::F32 | Group::F16Gemm) {
            Self::check_f32_limits(&dev.limits)?;
        }
        if group == Group::F16Gemm && !dev.supports_f16() {
            return Err(GpuError::InvalidArgument(
                "this GPU has no shader-f16 (WGSL's f16), which --precision f16-mixed needs; use --precision f32"
                    .into(),
            ));
        }
        if group == Group::LinearI8(Int8Path::Dot4) && !dev.supports_dot4_i8() {
            return Err(GpuError::InvalidArgument(
                "the WGSL compiler lacks packed_4x8_integer_dot_product (dot4I8Packed); use the unpacked path".into(),
            ));
        }
        let device = &dev.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = |label: &str, src: String| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(Cow::Owned(src)),
            })
        };
        // (kernel, index into `modules`) for every pipeline of the group.
        let (modules, kernels): (Vec<wgpu::ShaderModule>, Vec<(Kernel, usize)>) = match group {
            Group::F32 => {
                let (mut modules, mut kernels) = Self::gemm_modules(dev, Precision::F32);
                let mut add = |label: &str, src: &str, ks: &[Kernel]| {
                    modules.push(module(label, src.to_string()));
                    kernels.extend(ks.iter().map(|&k| (k, modules.len() - 1)));
                };
                add(
                    "softmax_xent.wgsl",
                    shaders::SOFTMAX_XENT,
                    &[Kernel::SoftmaxXent, Kernel::SoftmaxXentEval],
                );
                add(
                    "soft_target_xent.wgsl",
                    shaders::SOFT_TARGET_XENT,
                    &[Kernel::SoftTargets, Kernel::SoftTargetXent],
                );
                add("bias_update.wgsl", shaders::BIAS_UPDATE, &[Kernel::BiasUpdate]);
                add("apply_mask.wgsl", shaders::APPLY_MASK, &[Kernel::ApplyMask]);
                add(
                    "optim_update.wgsl",
                    shaders::OPTIM_UPDATE,
                    &[Kernel::SgdMomentumUpdate, Kernel::AdamUpdate],
                );
                add(
                    "clip_grad_norm.wgsl",
                    shaders::CLIP_GRAD_NORM,
                    &[Kernel::GradSqPartial, Kernel::ClipCoef],
                );
                (modules, kernels)
            }
            Group::F16Gemm => Self::gemm_modules(dev, Precision::F16Mixed),
            Group::Quantize => (
                vec![module("quantize_rows_i8.wgsl", shaders::QUANTIZE_ROWS_I8.to_string())],
                vec![(Kernel::QuantizeRowsI8, 0)],
            ),
            Group::LinearI8(path) => (
                vec![module(
                    &format!("linear_forward_i8.wgsl ({})", path.name()),
                    shaders::linear_forward_i8(path == Int8Path::Dot4),
                )],
                vec![(Kernel::LinearForwardI8(path), 0)],
            ),
        };
        let mut families: Vec<Family> = Vec::new();
        for (k, _) in &kernels {
            if !families.contains(&k.family()) {
                families.push(k.family());
            }
        }
        let layouts: Vec<(Family, wgpu::BindGroupLayout, wgpu::PipelineLayout)> = families
            .into_iter()
            .map(|f| {
                let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(&format!("{} bind group layout", f.name())),
                    entries: &f.entries(),
                });
                let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(&format!("{} pipeline layout", f.name())),
                    bind_group_layouts: &[Some(&bgl)],
                    immediate_size: 0,
                });
                (f, bgl, pl)
            })
            .collect();
        let mut pipelines = Vec::with_capacity(kernels.len());
        for (k, m) in kernels {
            let layout = layouts
                .iter()
                .find(|(f, ..)| *f == k.family())
                .map(|(_, _, pl)| pl)
                .ok_or_else(|| GpuError::Other(format!("no pipeline layout for {}", k.label())))?;
            let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&k.label()),
                layout: Some(layout),
                module: &modules[m],
                entry_point: Some(k.name()),
                // Every kernel writes its workgroup memory before reading it.
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            pipelines.push((k, p));
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            let what = match group {
                Group::F32 => "the compute pipelines".to_string(),
                Group::F16Gemm => "the f16-mixed matmul pipelines".to_string(),
                Group::Quantize => "the int8 quantize pipeline".to_string(),
                Group::LinearI8(path) => format!("the int8 pipelines ({})", path.name()),
            };
            return Err(GpuError::Other(format!("building {what}: {e}")));
        }
        Ok(Built {
            layouts: layouts.into_iter().map(|(f, bgl, _)| (f, bgl)).collect(),
            pipelines,
        })
    }

    /// The limits the f32 kernels need beyond WebGPU's defaults' guarantees.
    fn check_f32_limits(l: &wgpu::Limits) -> Result<(), GpuError> {
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
            "the kernels' storage bindings (linear_softmax_xent's 8)",
            8,
            l.max_storage_buffers_per_shader_stage.into(),
            "max_storage_buffers_per_shader_stage",
        )?;
        need(
            "the kernels' bindings",
            10,
            l.max_bindings_per_bind_group.into(),
            "max_bindings_per_bind_group",
        )
    }

    /// One matmul.wgsl module per tile at `precision`, and every GEMM
    /// kernel of each (the kernel and the index of its module).
    fn gemm_modules(dev: &GpuDevice, precision: Precision) -> (Vec<wgpu::ShaderModule>, Vec<(Kernel, usize)>) {
        let modules = Tile::ALL
            .iter()
            .map(|&t| Self::matmul_module(dev, t, precision))
            .collect();
        let kernels = Tile::ALL
            .iter()
            .enumerate()
            .flat_map(|(i, &t)| GemmKernel::ALL.iter().map(move |&g| (Kernel::Gemm(g, t, precision), i)))
            .collect();
        (modules, kernels)
    }

    /// matmul.wgsl for `tile` at `precision`, compiled without wgpu's
    /// runtime checks unless [`shader_checks`] asks for them.
    fn matmul_module(dev: &GpuDevice, tile: Tile, precision: Precision) -> wgpu::ShaderModule {
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some("matmul.wgsl"),
            source: wgpu::ShaderSource::Wgsl(Cow::Owned(shaders::matmul(tile, precision))),
        };
        if shader_checks() {
            dev.device.create_shader_module(desc)
        } else {
            // SAFETY: matmul.wgsl guards every global access with the
            // operand's shape (load_a, load_b and the epilogue), the host
            // checks each buffer against that shape before it builds a
            // dispatch (`Gemm::check_buffers` in gemm.rs; the dataset and
            // its permutation are checked when uploaded, in resident.rs and
            // by `check_order`; linear_softmax_xent's labels are read
            // through that permutation and checked below the classes by
            // `check_fit`, and its stats writes are guarded by the stats
            // buffer's length), workgroup-memory indices are in range by
            // construction, and
            // every loop is bounded by a constant or by params.k.
            // tests/gpu_kernels.rs runs it on ragged shapes with
            // NaN-poisoned outputs; WGTRAIN_SHADER_CHECKS=1 restores the
            // checks for debugging.
            unsafe {
                dev.device
                    .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        }
    }
}
