//! The host side of every struct the shaders read from a uniform buffer,
//! and of the one record they write for the host (`Stat`). Each mirrors a
//! WGSL struct field for field (names, order, offsets, size); the
//! `layout_tests` module checks them against the parsed shaders, so a field
//! added on one side only fails the tests.

/// `flags` bits of [`GemmParams`] (`FLAG_*` in matmul.wgsl).
pub(crate) const FLAG_RELU: u32 = 1;
pub(crate) const FLAG_BIAS: u32 = 2;
/// weight_update stores the gradient (and the bias gradient with
/// FLAG_BIAS) instead of applying SGD, for the unfused optimizers.
pub(crate) const FLAG_GRAD: u32 = 4;
/// linear_forward: inverted dropout after the ReLU; backprop_input: the
/// dropout scale on the gradient.
pub(crate) const FLAG_DROPOUT: u32 = 8;

/// Bytes of [`StepParams`] as the shaders see them.
pub(crate) const STEP_BYTES: u64 = std::mem::size_of::<StepParams>() as u64;

/// Per-step values, at a dynamic offset in a uniform buffer (`Step` in
/// matmul.wgsl, softmax_xent.wgsl, bias_update.wgsl, apply_mask.wgsl and
/// optim_update.wgsl).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct StepParams {
    /// First position of the step's examples in the index (permutation);
    /// for evaluation, the first example of the chunk.
    pub index_off: u32,
    /// Where the step's loss and correct count go in the stats buffer.
    pub slot: u32,
    pub lr: f32,
    /// Adam's `lr / (1 - b1^t)` for this step, from f64 on the host.
    pub step_size: f32,
    /// Adam's `sqrt(1 - b2^t)` for this step, from f64 on the host.
    pub bc2_sqrt: f32,
    /// The step key of the random draws (`optim::draw`): the update count
    /// plus one, truncated to 32 bits.
    pub draw_step: u32,
    /// The position of the step's first row in the whole batch: 0, or a
    /// data-parallel shard's first row, so that its draws are the ones a
    /// single device makes for those rows.
    pub draw_row0: u32,
    pub pad2: u32,
}

/// `Gemm` in matmul.wgsl: the shape and operand layout of one GEMM-family
/// dispatch.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct GemmParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub tiles_n: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub b_rs: u32,
    pub b_cs: u32,
    pub a_src: u32,
    pub b_src: u32,
    pub ldc: u32,
    pub flags: u32,
    pub dim: u32,
    pub gather: u32,
    pub scale: f32,
    pub offset: f32,
    pub n_ext: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub drop_threshold: u32,
    pub drop_scale: f32,
    pub drop_stream: u32,
    pub shift: u32,
    pub img_h: u32,
    pub img_w: u32,
    /// linear_softmax_xent: stats entries per step (its row blocks'
    /// partials, then zeros), `1 / of_rows`, and the smoothing scalars of
    /// [`crate::cpu::kernels::Smoothing`], as in [`SoftmaxParams`].
    pub stat_stride: u32,
    pub inv_rows: f32,
    pub smoothing: f32,
    pub keep: f32,
    pub per_class: f32,
    pub d_label: f32,
    pub d_class: f32,
}

/// `Softmax` in softmax_xent.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SoftmaxParams {
    pub rows: u32,
    pub classes: u32,
    pub gather: u32,
    pub inv_rows: f32,
    /// Label smoothing (softmax_xent only; 0: none) and its scalars, as
    /// [`crate::cpu::kernels::Smoothing`] computes them.
    pub smoothing: f32,
    pub keep: f32,
    pub per_class: f32,
    pub d_label: f32,
    pub d_class: f32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}

/// `SoftTarget` in soft_target_xent.wgsl: the scalars of
/// [`crate::cpu::kernels::SoftTarget`], and soft_targets' weight.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SoftTargetParams {
    pub rows: u32,
    pub classes: u32,
    pub accumulate: u32,
    pub weight: f32,
    pub inv_t: f32,
    pub hard: f32,
    pub kl: f32,
    pub hard_grad: f32,
    pub soft_grad: f32,
    pub smoothing: f32,
    pub keep: f32,
    pub per_class: f32,
    pub gather_probs: u32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}

/// `Stat` in softmax_xent.wgsl (and matmul.wgsl): what a step or an
/// evaluation chunk writes to its slot of a stats buffer, or (the fused
/// `linear_softmax_xent`) one row block's share of a step's.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Stat {
    pub loss: f32,
    pub correct: u32,
}

/// Bytes of one [`Stat`].
pub(crate) const STAT_BYTES: u64 = std::mem::size_of::<Stat>() as u64;

/// `Bias` in bias_update.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct BiasParams {
    pub rows: u32,
    pub outputs: u32,
    pub pad0: u32,
    pub pad1: u32,
}

/// `Mask` in apply_mask.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MaskParams {
    pub len: u32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}

/// `Optim` in optim_update.wgsl: what an optimizer update keeps for the
/// whole run (the per-step scalars are in [`StepParams`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct OptimParams {
    pub len: u32,
    /// SGD: 1 with Nesterov momentum. Adam: 1 for decoupled weight decay (AdamW).
    pub variant: u32,
    /// SGD: the momentum. Adam: beta1.
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Adam: `1 - beta1` and `1 - beta2`, from f64 on the host.
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
}

/// `Clip` in clip_grad_norm.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ClipParams {
    pub len_x: u32,
    pub len_y: u32,
    pub base: u32,
    pub count: u32,
    pub max_norm: f32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}

/// `Quant` in quantize_rows_i8.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct QuantParams {
    pub rows: u32,
    pub inputs: u32,
    pub x_stride: u32,
    pub words: u32,
    pub scale: f32,
    pub offset: f32,
    pub pad0: u32,
    pub pad1: u32,
}

/// `LinearI8` in linear_forward_i8.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct LinearI8Params {
    pub rows: u32,
    pub outputs: u32,
    pub words: u32,
    pub ldy: u32,
    pub relu: u32,
    pub tiles_n: u32,
    pub pad0: u32,
    pub pad1: u32,
}
