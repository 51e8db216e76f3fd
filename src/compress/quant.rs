//! Post-training int8 quantization and the CPU int8 forward pass.
//!
//! Weights: symmetric, one scale per output channel,
//! `scale[o] = max_k |W[o,k]| / 127`, `q = clamp(round(W / scale), -127, 127)`
//! (round half to even, as WGSL's `round`), so `|W - q*scale| <= scale/2`.
//!
//! Activations (the default mode, [`Activations::Int8`]): quantized
//! dynamically per row the same way, `x_scale[r] = max_k |x[r,k]| / 127`,
//! then `y[r,o] = acc * (x_scale[r] * scale[o]) + bias[o]` where `acc` is the
//! exact i32 sum of `x_q * W_q`. The i32 sums are exact in every kernel
//! variant, and the f32 epilogue is the one function [`dequantize_acc`], so
//! the fast kernels agree with the scalar reference bit for bit, and a GPU
//! twin (`dot4I8Packed` over [`PackedI8Linear::packed_u32`]) can too.
//!
//! [`Activations::F32`] keeps the activations in f32 and only the weights in
//! int8 (dequantized once when the model is loaded, then the f32 GEMM): the
//! accuracy of weight-only quantization, the speed of f32.

use serde::Serialize;

use crate::data::Preprocess;
use crate::metrics::Predictions;
use crate::model::Linear;

/// The largest magnitude of a quantized value (symmetric: -127..=127, so
/// negation never overflows).
pub const QMAX: f32 = 127.0;

/// Packed rows are padded to a multiple of this many values (one AVX-512
/// register of bytes; also a multiple of 4 for `dot4I8Packed`).
pub const K_ALIGN: usize = 64;

/// Outputs per micro-kernel block; packed layers pad their outputs to it.
pub const NR: usize = 4;

/// Rows per micro-kernel block.
pub const MR: usize = 4;

/// How activations are represented in the int8 forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Activations {
    /// Quantized to int8 per row at run time; integer dot products.
    Int8,
    /// Kept in f32; only the weights are int8.
    F32,
}

impl Activations {
    pub fn as_str(self) -> &'static str {
        match self {
            Activations::Int8 => "int8",
            Activations::F32 => "f32",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "int8" => Some(Activations::Int8),
            "f32" => Some(Activations::F32),
            _ => None,
        }
    }
}

/// Int8 weights of one layer: `q` is `[outputs, inputs]` row-major, one
/// scale per output.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeights {
    pub inputs: usize,
    pub outputs: usize,
    pub q: Vec<i8>,
    pub scale: Vec<f32>,
}

/// `round(v)` with ties to even, clamped to `-QMAX..=QMAX`, as i8.
#[inline]
pub fn quantize_value(v: f32, inv_scale: f32) -> i8 {
    // Through i32: the saturating f32 -> i32 conversion vectorizes, the
    // f32 -> i8 one does not; the value is already within i8's range (NaN
    // converts to 0 either way).
    (v * inv_scale).round_ties_even().clamp(-QMAX, QMAX) as i32 as i8
}

/// Scale and its reciprocal for values whose largest magnitude is `max`
/// (an all-zero row gets scale 0 and quantizes to zeros).
#[inline]
fn scale_for(max: f32) -> (f32, f32) {
    if max > 0.0 && max.is_finite() {
        (max / QMAX, QMAX / max)
    } else {
        (0.0, 0.0)
    }
}

impl QuantizedWeights {
    /// Quantize `w` (`[outputs, inputs]`) per output channel.
    pub fn quantize(w: &[f32], inputs: usize, outputs: usize) -> Self {
        assert_eq!(w.len(), inputs * outputs, "weights are not [outputs, inputs]");
        let mut q = vec![0i8; w.len()];
        let mut scale = vec![0.0; outputs];
        if inputs > 0 {
            for ((row, qrow), s) in w.chunks_exact(inputs).zip(q.chunks_exact_mut(inputs)).zip(&mut scale) {
                let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let (sc, inv) = scale_for(max);
                *s = sc;
                for (d, &v) in qrow.iter_mut().zip(row) {
                    *d = quantize_value(v, inv);
                }
            }
        }
        QuantizedWeights {
            inputs,
            outputs,
            q,
            scale,
        }
    }

    /// `q * scale`, `[outputs, inputs]`.
    pub fn dequantize(&self) -> Vec<f32> {
        if self.inputs == 0 {
            return Vec::new();
        }
        self.q
            .chunks_exact(self.inputs)
            .zip(&self.scale)
            .flat_map(|(row, &s)| row.iter().map(move |&v| v as f32 * s))
            .collect()
    }

    /// Number of non-zero weights.
    pub fn nonzeros(&self) -> usize {
        self.q.iter().filter(|&&v| v != 0).count()
    }
}

/// The f32 epilogue shared by every int8 kernel: rescale the exact integer
/// sum, add the bias, apply ReLU.
#[inline(always)]
pub fn dequantize_acc(acc: i32, x_scale: f32, w_scale: f32, bias: f32, relu: bool) -> f32 {
    let v = acc as f32 * (x_scale * w_scale) + bias;
    if relu {
        v.max(0.0)
    } else {
        v
    }
}

/// Quantize `rows` rows of `inputs` f32 values per row (twin of the WGSL
/// `quantize_rows_i8`): `q` gets `[rows, stride]` with zeros past `inputs`,
/// `scale` one value per row.
pub fn quantize_rows_i8(x: &[f32], rows: usize, inputs: usize, stride: usize, q: &mut [i8], scale: &mut [f32]) {
    assert!(stride >= inputs && x.len() >= rows * inputs && q.len() >= rows * stride && scale.len() >= rows);
    // Baseline x86-64 has no vector rounding instruction, so `round_ties_even`
    // would be a library call per value; AVX2 machines get `vroundps`.
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { vnni::quantize_rows(x, rows, inputs, stride, q, scale) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { quantize_rows_avx2(x, rows, inputs, stride, q, scale) };
        }
    }
    quantize_rows_body(x, rows, inputs, stride, q, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_rows_avx2(x: &[f32], rows: usize, inputs: usize, stride: usize, q: &mut [i8], scale: &mut [f32]) {
    quantize_rows_body(x, rows, inputs, stride, q, scale)
}

#[inline(always)]
fn quantize_rows_body(x: &[f32], rows: usize, inputs: usize, stride: usize, q: &mut [i8], scale: &mut [f32]) {
    for r in 0..rows {
        let src = &x[r * inputs..(r + 1) * inputs];
        let dst = &mut q[r * stride..(r + 1) * stride];
        let max = max_abs(src);
        let (sc, inv) = scale_for(max);
        scale[r] = sc;
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = quantize_value(v, inv);
        }
        dst[inputs..].fill(0);
    }
}

/// The largest magnitude in `v` (0 for an empty slice; NaNs are skipped, as
/// `f32::max` skips them). Sixteen running maxima, one per lane, so that
/// the loop vectorizes: a single running maximum is a chain the compiler
/// may not reorder. The result is the same in any order.
#[inline(always)]
fn max_abs(v: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = v.chunks_exact(16);
    let mut m = chunks.remainder().iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = l.max(x.abs());
        }
    }
    for l in lanes {
        m = m.max(l);
    }
    m
}

/// The scalar reference of [`linear_forward_i8`]: unpadded `[rows, inputs]`
/// activations `xq` with per-row scales, `[outputs, inputs]` weights.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward_i8_ref(
    xq: &[i8],
    x_scale: &[f32],
    w: &QuantizedWeights,
    bias: &[f32],
    y: &mut [f32],
    rows: usize,
    relu: bool,
) {
    let (k, n) = (w.inputs, w.outputs);
    for r in 0..rows {
        for o in 0..n {
            let acc: i32 = (0..k).map(|i| xq[r * k + i] as i32 * w.q[o * k + i] as i32).sum();
            y[r * n + o] = dequantize_acc(acc, x_scale[r], w.scale[o], bias[o], relu);
        }
    }
}

/// A quantized layer laid out for the fast kernels: rows padded with zeros
/// to `stride` (a multiple of [`K_ALIGN`]) and outputs padded to a
/// multiple of [`NR`].
#[derive(Debug, Clone)]
pub struct PackedI8Linear {
    pub inputs: usize,
    pub outputs: usize,
    /// Padded row length.
    pub stride: usize,
    /// `[padded outputs, stride]`; padding is zero.
    pub weight: Vec<i8>,
    /// `[padded outputs]`; padding is zero.
    pub scale: Vec<f32>,
    /// `[padded outputs]`.
    pub bias: Vec<f32>,
    /// The same weights in panels of 16 outputs for the AVX-512 VNNI
    /// kernel: `[ceil(outputs/16), stride/4, 16, 4]`, i.e. for each panel
    /// and each group of 4 inputs, 4 bytes per output; padding is zero.
    pub panels: Vec<i8>,
    /// `128 * sum_k weight[o, k]` per panel lane (`[16 * panels]`): the
    /// correction for kernels that feed the activations as unsigned bytes
    /// `x + 128` (x86 `vpdpbusd`).
    pub panel_correction: Vec<i32>,
}

impl PackedI8Linear {
    pub fn pack(w: &QuantizedWeights, bias: &[f32]) -> Self {
        let stride = w.inputs.div_ceil(K_ALIGN).max(1) * K_ALIGN;
        let outs = w.outputs.div_ceil(NR) * NR;
        let mut weight = vec![0i8; outs * stride];
        if w.inputs > 0 {
            for (dst, src) in weight.chunks_exact_mut(stride).zip(w.q.chunks_exact(w.inputs)) {
                dst[..w.inputs].copy_from_slice(src);
            }
        }
        let mut scale = w.scale.clone();
        scale.resize(outs, 0.0);
        let mut b = bias.to_vec();
        b.resize(outs, 0.0);
        let np = w.outputs.div_ceil(16);
        let k4 = stride / 4;
        let mut panels = vec![0i8; np * k4 * 64];
        let mut panel_correction = vec![0i32; np * 16];
        for o in 0..w.outputs {
            let (p, lane) = (o / 16, o % 16);
            let row = &weight[o * stride..(o + 1) * stride];
            panel_correction[o] = 128 * row.iter().map(|&v| v as i32).sum::<i32>();
            for (kk, quad) in row.chunks_exact(4).enumerate() {
                let at = ((p * k4 + kk) * 16 + lane) * 4;
                panels[at..at + 4].copy_from_slice(quad);
            }
        }
        PackedI8Linear {
            inputs: w.inputs,
            outputs: w.outputs,
            stride,
            weight,
            scale,
            bias: b,
            panels,
            panel_correction,
        }
    }

    /// Outputs including padding.
    pub fn padded_outputs(&self) -> usize {
        self.scale.len()
    }

    /// The weights as little-endian packed `u32`s, four i8 per word, rows of
    /// `stride / 4` words: the layout WGSL's `dot4I8Packed` reads.
    pub fn packed_u32(&self) -> Vec<u32> {
        self.weight
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]))
            .collect()
    }
}

/// Which implementation of [`linear_forward_i8`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum I8Isa {
    /// x86-64 AVX-512 VNNI (`vpdpbusd`: 64 byte products per instruction).
    Avx512Vnni,
    /// x86-64 AVX2: the portable loop compiled for AVX2 (`vpmaddwd`).
    Avx2,
    /// The portable blocked loop for whatever the build targets.
    Portable,
}

impl I8Isa {
    /// The best variant this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                return I8Isa::Avx512Vnni;
            }
            if is_x86_feature_detected!("avx2") {
                return I8Isa::Avx2;
            }
        }
        I8Isa::Portable
    }

    /// Whether this CPU can run the variant.
    pub fn supported(self) -> bool {
        match self {
            I8Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            I8Isa::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            I8Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            I8Isa::Avx512Vnni => "avx512-vnni",
            I8Isa::Avx2 => "avx2",
            I8Isa::Portable => "portable",
        }
    }
}

/// `y[r, o] = dequantize_acc(sum_k xq[r,k] * W[o,k], x_scale[r], ...)` for
/// `rows` rows of stride-padded activations `xq` (`[rows, layer.stride]`),
/// writing `[rows, ystride]` (the first `layer.outputs` values of each row).
/// Bitwise equal to [`linear_forward_i8_ref`] on every variant.
///
/// # Panics
/// When the slices are too short, or `isa` is not supported by this CPU.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward_i8(
    isa: I8Isa,
    layer: &PackedI8Linear,
    xq: &[i8],
    x_scale: &[f32],
    rows: usize,
    y: &mut [f32],
    ystride: usize,
    relu: bool,
) {
    assert!(xq.len() >= rows * layer.stride, "activations too short");
    assert!(x_scale.len() >= rows, "activation scales too short");
    assert!(ystride >= layer.outputs && y.len() >= rows.saturating_sub(1) * ystride + layer.outputs);
    assert!(isa.supported(), "{} kernels are not supported on this CPU", isa.name());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` checked the CPU features; the asserts above
        // bound every access.
        I8Isa::Avx512Vnni => unsafe { vnni::forward(layer, xq, x_scale, rows, y, ystride, relu) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        I8Isa::Avx2 => unsafe { forward_avx2(layer, xq, x_scale, rows, y, ystride, relu) },
        _ => forward_portable(layer, xq, x_scale, rows, y, ystride, relu),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn forward_avx2(layer: &PackedI8Linear, xq: &[i8], xs: &[f32], rows: usize, y: &mut [f32], ys: usize, relu: bool) {
    forward_portable(layer, xq, xs, rows, y, ys, relu)
}

/// Blocks of [`MR`] rows x [`NR`] outputs; the compiler vectorises the
/// widening multiply-adds over `k`.
#[inline(always)]
fn forward_portable(layer: &PackedI8Linear, xq: &[i8], xs: &[f32], rows: usize, y: &mut [f32], ys: usize, relu: bool) {
    let k = layer.stride;
    for r0 in (0..rows).step_by(MR) {
        let mr = MR.min(rows - r0);
        for o0 in (0..layer.padded_outputs()).step_by(NR) {
            let mut acc = [[0i32; NR]; MR];
            for (r, accr) in acc.iter_mut().enumerate().take(mr) {
                let x = &xq[(r0 + r) * k..(r0 + r + 1) * k];
                for (j, a) in accr.iter_mut().enumerate() {
                    let w = &layer.weight[(o0 + j) * k..(o0 + j + 1) * k];
                    *a = dot_i8(x, w);
                }
            }
            store_block(layer, &acc, xs, r0, mr, o0, y, ys, relu);
        }
    }
}

#[inline(always)]
fn dot_i8(x: &[i8], w: &[i8]) -> i32 {
    // Lane-wise partial sums in i32 (exact: |x*w| <= 127^2, and a row of
    // up to 2^17 values cannot overflow), then one reduction.
    let mut lanes = [0i32; 16];
    for (xc, wc) in x.chunks_exact(16).zip(w.chunks_exact(16)) {
        for i in 0..16 {
            lanes[i] += xc[i] as i32 * wc[i] as i32;
        }
    }
    lanes.iter().sum()
}

/// Write one block's outputs through [`dequantize_acc`], skipping padded
/// outputs.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn store_block(
    layer: &PackedI8Linear,
    acc: &[[i32; NR]; MR],
    xs: &[f32],
    r0: usize,
    mr: usize,
    o0: usize,
    y: &mut [f32],
    ys: usize,
    relu: bool,
) {
    for (r, accr) in acc.iter().enumerate().take(mr) {
        for (j, &a) in accr.iter().enumerate() {
            let o = o0 + j;
            if o < layer.outputs {
                y[(r0 + r) * ys + o] = dequantize_acc(a, xs[r0 + r], layer.scale[o], layer.bias[o], relu);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::*;
    use std::arch::x86_64::*;

    /// Rows per register block.
    const RB: usize = 6;
    /// Panels of 16 outputs per register block.
    const PB: usize = 2;

    /// A GEMM micro-kernel with the outputs across the vector lanes:
    /// broadcast four activation bytes of a row, multiply them with four
    /// input values of 16 outputs (one panel), accumulate in i32 lanes
    /// with `vpdpbusd` - 64 products per instruction and no horizontal
    /// sums. `vpdpbusd` multiplies unsigned by signed bytes, so the
    /// activations go in as `x + 128` (a flip of the sign bit) and the exact
    /// signed sum is recovered by subtracting `128 * sum_k w` per output.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn forward(
        layer: &PackedI8Linear,
        xq: &[i8],
        xs: &[f32],
        rows: usize,
        y: &mut [f32],
        ys: usize,
        relu: bool,
    ) {
        let panels = layer.panel_correction.len() / 16;
        let mut acc = [[[0i32; 16]; PB]; RB];
        // Panel pairs outside (their weights stay in L1), rows inside.
        for p0 in (0..panels).step_by(PB) {
            let pb = PB.min(panels - p0);
            for r0 in (0..rows).step_by(RB) {
                let rb = RB.min(rows - r0);
                // SAFETY: rows r0..r0+rb lie inside `xq` (checked by the
                // caller) and panels p0..p0+pb inside `layer.panels`.
                unsafe {
                    match (rb, pb) {
                        (6, 2) => block::<6, 2>(layer, xq, r0, p0, &mut acc),
                        (5, 2) => block::<5, 2>(layer, xq, r0, p0, &mut acc),
                        (4, 2) => block::<4, 2>(layer, xq, r0, p0, &mut acc),
                        (3, 2) => block::<3, 2>(layer, xq, r0, p0, &mut acc),
                        (2, 2) => block::<2, 2>(layer, xq, r0, p0, &mut acc),
                        (1, 2) => block::<1, 2>(layer, xq, r0, p0, &mut acc),
                        (6, _) => block::<6, 1>(layer, xq, r0, p0, &mut acc),
                        (5, _) => block::<5, 1>(layer, xq, r0, p0, &mut acc),
                        (4, _) => block::<4, 1>(layer, xq, r0, p0, &mut acc),
                        (3, _) => block::<3, 1>(layer, xq, r0, p0, &mut acc),
                        (2, _) => block::<2, 1>(layer, xq, r0, p0, &mut acc),
                        _ => block::<1, 1>(layer, xq, r0, p0, &mut acc),
                    }
                }
                for (r, accr) in acc.iter().enumerate().take(rb) {
                    for (p, lanes) in accr.iter().enumerate().take(pb) {
                        let o0 = (p0 + p) * 16;
                        // SAFETY: the panel's valid outputs o0.. lie inside
                        // `scale`, `bias`, `panel_correction` and row r0 + r
                        // of `y` (checked by the caller); lanes past
                        // `outputs` are masked off, and masked lanes are
                        // neither read nor written.
                        unsafe { store_panel(layer, lanes, xs[r0 + r], o0, y, (r0 + r) * ys, relu) };
                    }
                }
            }
        }
    }

    /// One panel's 16 outputs of one row through the epilogue of
    /// [`dequantize_acc`], lane by lane the same operations in the same
    /// order (so the same bits): subtract the panel correction, convert,
    /// multiply by `x_scale * w_scale`, add the bias, ReLU.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn store_panel(
        layer: &PackedI8Linear,
        lanes: &[i32; 16],
        x_scale: f32,
        o0: usize,
        y: &mut [f32],
        at: usize,
        relu: bool,
    ) {
        let valid = layer.outputs.saturating_sub(o0).min(16);
        let mask: __mmask16 = if valid == 16 { 0xffff } else { (1u16 << valid) - 1 };
        let a = _mm512_loadu_si512(lanes.as_ptr() as *const _);
        let corr = _mm512_maskz_loadu_epi32(mask, layer.panel_correction.as_ptr().add(o0));
        let scale = _mm512_maskz_loadu_ps(mask, layer.scale.as_ptr().add(o0));
        let bias = _mm512_maskz_loadu_ps(mask, layer.bias.as_ptr().add(o0));
        let sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(a, corr));
        let mut v = _mm512_add_ps(_mm512_mul_ps(sum, _mm512_mul_ps(_mm512_set1_ps(x_scale), scale)), bias);
        if relu {
            // max(v, 0) answers 0 for NaN, as f32::max does.
            v = _mm512_max_ps(v, _mm512_setzero_ps());
        }
        _mm512_mask_storeu_ps(y.as_mut_ptr().add(at + o0), mask, v);
    }

    /// [`super::quantize_rows_body`] with the values 16 at a time: the same
    /// scale, and the same rounding (to nearest, ties to even), clamping
    /// and NaN-to-zero as [`super::quantize_value`].
    #[target_feature(enable = "avx512f")]
    pub(super) fn quantize_rows(x: &[f32], rows: usize, inputs: usize, stride: usize, q: &mut [i8], scale: &mut [f32]) {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let (lo, hi) = (_mm512_set1_ps(-QMAX), _mm512_set1_ps(QMAX));
        for r in 0..rows {
            let src = &x[r * inputs..(r + 1) * inputs];
            let dst = &mut q[r * stride..(r + 1) * stride];
            let (sc, inv) = scale_for(max_abs(src));
            scale[r] = sc;
            let invv = _mm512_set1_ps(inv);
            let mut i = 0;
            while i + 16 <= inputs {
                // SAFETY: i + 16 <= inputs = src.len() <= dst.len().
                unsafe {
                    let v = _mm512_mul_ps(_mm512_loadu_ps(src.as_ptr().add(i)), invv);
                    let v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v), v);
                    let v = _mm512_min_ps(_mm512_max_ps(_mm512_roundscale_ps::<NEAREST>(v), lo), hi);
                    let b = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v));
                    _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, b);
                }
                i += 16;
            }
            for (d, &v) in dst[i..inputs].iter_mut().zip(&src[i..]) {
                *d = quantize_value(v, inv);
            }
            dst[inputs..].fill(0);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn block<const R: usize, const P: usize>(
        layer: &PackedI8Linear,
        xq: &[i8],
        r0: usize,
        p0: usize,
        out: &mut [[[i32; 16]; PB]; RB],
    ) {
        let k = layer.stride;
        let k4 = k / 4;
        let mut acc = [[_mm512_setzero_si512(); P]; R];
        let xp = xq.as_ptr().add(r0 * k);
        let wp = layer.panels.as_ptr().add(p0 * k4 * 64);
        for kk in 0..k4 {
            let mut w = [_mm512_setzero_si512(); P];
            for (j, wj) in w.iter_mut().enumerate() {
                *wj = _mm512_loadu_si512(wp.add((j * k4 + kk) * 64) as *const _);
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let four = (xp.add(r * k + kk * 4) as *const i32).read_unaligned() ^ (0x8080_8080u32 as i32);
                let x = _mm512_set1_epi32(four);
                for (a, &wj) in accr.iter_mut().zip(&w) {
                    *a = _mm512_dpbusd_epi32(*a, x, wj);
                }
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            for (d, v) in o.iter_mut().zip(a) {
                _mm512_storeu_si512(d.as_mut_ptr() as *mut _, *v);
            }
        }
    }
}

/// The output of [`Int8Mlp::logits`], shared by the parts of a team job
/// that write disjoint rows of it.
struct OutPtr(*mut f32);
// SAFETY: see `Int8Mlp::logits`: each part writes its own rows, and the
// job ends before the borrow of the output does.
unsafe impl Sync for OutPtr {}

/// A whole quantized MLP prepared for CPU inference.
#[derive(Debug, Clone)]
pub struct Int8Mlp {
    pub layers: Vec<PackedI8Linear>,
    pub preprocess: Preprocess,
    pub isa: I8Isa,
}

/// Rows per chunk of a forward pass over a large split.
const CHUNK: usize = 1024;

impl Int8Mlp {
    pub fn new(layers: &[(QuantizedWeights, Vec<f32>)], preprocess: Preprocess) -> Self {
        Int8Mlp {
            layers: layers.iter().map(|(w, b)| PackedI8Linear::pack(w, b)).collect(),
            preprocess,
            isa: I8Isa::detect(),
        }
    }

    pub fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    pub fn classes(&self) -> usize {
        self.layers.last().map(|l| l.outputs).unwrap_or(0)
    }

    /// Logits of `rows` raw rows (preprocessing applied here), `[rows,
    /// classes]`, split over the CPU threads by rows: one block of rows per
    /// member of the CPU team (`crate::cpu::team`), whose threads spin
    /// briefly between jobs instead of sleeping as a rayon pool's do.
    pub fn logits(&self, raw: &[f32], rows: usize, out: &mut [f32]) {
        let dim = self.inputs();
        let classes = self.classes();
        assert!(raw.len() >= rows * dim && out.len() >= rows * classes);
        if crate::cpu::threads() < 2 || rows < 16 {
            self.logits_serial(raw, rows, out);
            return;
        }
        let mut team = crate::cpu::team::global().lock().unwrap_or_else(|e| e.into_inner());
        let per = rows.div_ceil(team.parts()).div_ceil(MR) * MR;
        let outp = OutPtr(out.as_mut_ptr());
        team.run(&|p| {
            let outp = &outp;
            let lo = p * per;
            if lo >= rows {
                return;
            }
            let n = per.min(rows - lo);
            // SAFETY: part p writes rows lo..lo + n of `out` only, disjoint
            // from every other part's, inside `out` (asserted above); `out`
            // outlives `run`, which returns after every part.
            let o = unsafe { std::slice::from_raw_parts_mut(outp.0.add(lo * classes), n * classes) };
            self.logits_serial(&raw[lo * dim..(lo + n) * dim], n, o);
        });
    }

    fn logits_serial(&self, raw: &[f32], rows: usize, out: &mut [f32]) {
        let dim = self.inputs();
        let mut x: Vec<f32> = vec![0.0; rows * dim];
        self.preprocess.apply_into(&raw[..rows * dim], &mut x);
        let nl = self.layers.len();
        let mut xq = Vec::new();
        let mut xs = vec![0.0; rows];
        for (l, layer) in self.layers.iter().enumerate() {
            xq.resize(rows * layer.stride, 0);
            quantize_rows_i8(&x, rows, layer.inputs, layer.stride, &mut xq, &mut xs);
            if l + 1 == nl {
                linear_forward_i8(self.isa, layer, &xq, &xs, rows, out, layer.outputs, false);
            } else {
                x.resize(rows * layer.outputs, 0.0);
                linear_forward_i8(self.isa, layer, &xq, &xs, rows, &mut x, layer.outputs, true);
            }
        }
    }

    /// Loss and arg-max of raw rows with labels, as
    /// [`crate::cpu::predict_rows`] computes them for f32 models.
    pub fn predict_rows(&self, features: &[f32], labels: &[u32]) -> Predictions {
        let dim = self.inputs();
        let classes = self.classes();
        let n = labels.len();
        let mut out = Predictions {
            loss_sum: 0.0,
            classes: vec![0; n],
        };
        let mut logits = vec![0.0; CHUNK * classes];
        for start in (0..n).step_by(CHUNK) {
            let rows = CHUNK.min(n - start);
            self.logits(&features[start * dim..(start + rows) * dim], rows, &mut logits);
            out.loss_sum += crate::cpu::kernels::softmax_xent_eval(
                &logits,
                &labels[start..start + rows],
                &mut out.classes[start..start + rows],
                rows,
                classes,
            );
        }
        out
    }
}

/// Quantize a layer's weights.
pub fn quantize_linear(l: &Linear) -> QuantizedWeights {
    QuantizedWeights::quantize(&l.weight, l.inputs, l.outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn quantize_dequantize_error_within_half_a_step() {
        let (inp, out) = (37, 11);
        let mut w = pseudo(inp * out, 3);
        w[5 * inp..6 * inp].fill(0.0); // an all-zero row
        let q = QuantizedWeights::quantize(&w, inp, out);
        let d = q.dequantize();
        for o in 0..out {
            let s = q.scale[o];
            for i in 0..inp {
                let e = (w[o * inp + i] - d[o * inp + i]).abs();
                assert!(e <= s / 2.0 * (1.0 + 1e-6) + 1e-12, "row {o}: error {e} > {}", s / 2.0);
            }
            // The largest magnitude maps to +-127 exactly.
            assert!(s == 0.0 || q.q[o * inp..(o + 1) * inp].iter().any(|v| v.abs() == 127));
        }
        assert_eq!(q.scale[5], 0.0);
        assert!(d[5 * inp..6 * inp].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn fast_quantization_matches_the_scalar_body_bitwise() {
        // Ties at every rounding step (the row's max is 127 so inv_scale is
        // 1), NaN and infinities (a row with an infinity gets scale 0),
        // -0.0, an all-zero row, and lengths around multiples of 16.
        let ties: Vec<f32> = (0..40).map(|i| i as f32 * 0.5 - 10.25 + 0.25).collect();
        let mut special = pseudo(37, 3);
        special[3] = f32::NAN;
        special[20] = -0.0;
        let mut inf = pseudo(33, 4);
        inf[32] = f32::INFINITY;
        for (name, mut row) in [
            ("ties", ties),
            ("nan", special),
            ("inf", inf),
            ("zeros", vec![0.0; 17]),
            ("wide", pseudo(784, 5)),
            ("short", pseudo(15, 6)),
        ] {
            if name == "ties" {
                row.push(127.0);
            }
            let inputs = row.len();
            let rows = 2;
            let x: Vec<f32> = row
                .iter()
                .chain(row.iter().map(|v| v * -3.0).collect::<Vec<_>>().iter())
                .copied()
                .collect();
            let stride = inputs + 5;
            let (mut q, mut qs) = (vec![7i8; rows * stride], vec![0.0; rows]);
            let (mut r, mut rs) = (vec![7i8; rows * stride], vec![0.0; rows]);
            quantize_rows_i8(&x, rows, inputs, stride, &mut q, &mut qs);
            quantize_rows_body(&x, rows, inputs, stride, &mut r, &mut rs);
            assert_eq!(q, r, "{name}: values");
            assert_eq!(
                qs.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                rs.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{name}: scales"
            );
        }
    }

    #[test]
    fn fast_kernels_match_the_scalar_reference_bitwise() {
        // Shapes that are not multiples of the blocks or of K_ALIGN, a 1x1
        // case, and one wider than a block of outputs.
        for &(rows, inp, out) in &[(1, 1, 1), (5, 70, 9), (9, 130, 17), (4, 64, 4), (13, 200, 33)] {
            let w = QuantizedWeights::quantize(&pseudo(inp * out, 7), inp, out);
            let bias = pseudo(out, 9);
            let x = pseudo(rows * inp, 11);
            let mut xq = vec![0i8; rows * inp];
            let mut xs = vec![0.0; rows];
            quantize_rows_i8(&x, rows, inp, inp, &mut xq, &mut xs);
            let packed = PackedI8Linear::pack(&w, &bias);
            let mut xqp = vec![0i8; rows * packed.stride];
            quantize_rows_i8(&x, rows, inp, packed.stride, &mut xqp, &mut xs);
            for relu in [false, true] {
                let mut want = vec![f32::NAN; rows * out];
                linear_forward_i8_ref(&xq, &xs, &w, &bias, &mut want, rows, relu);
                for isa in [I8Isa::Portable, I8Isa::Avx2, I8Isa::Avx512Vnni] {
                    if !isa.supported() {
                        continue;
                    }
                    let mut got = vec![f32::NAN; rows * out];
                    linear_forward_i8(isa, &packed, &xqp, &xs, rows, &mut got, out, relu);
                    assert_eq!(
                        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{} rows {rows} in {inp} out {out} relu {relu}",
                        isa.name()
                    );
                }
            }
        }
    }

    #[test]
    fn split_logits_equal_serial_logits_bitwise() {
        // Rows split over the CPU team (on a machine with 2 or more cores)
        // against one pass on this thread, with row counts that do and do
        // not divide evenly into blocks.
        let layers = [
            (QuantizedWeights::quantize(&pseudo(90 * 40, 1), 90, 40), pseudo(40, 2)),
            (QuantizedWeights::quantize(&pseudo(40 * 7, 3), 40, 7), pseudo(7, 4)),
        ];
        let p = Preprocess {
            kind: crate::data::Normalize::Scale,
            scale: 0.5,
            offset: 0.1,
        };
        let mlp = Int8Mlp::new(&layers, p);
        for rows in [16, 37, 100] {
            let raw = pseudo(rows * 90, 5 + rows as u32);
            let mut split = vec![f32::NAN; rows * 7];
            let mut serial = vec![f32::NAN; rows * 7];
            mlp.logits(&raw, rows, &mut split);
            mlp.logits_serial(&raw, rows, &mut serial);
            assert_eq!(
                split.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                serial.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "rows {rows}"
            );
        }
    }

    #[test]
    fn int8_forward_is_close_to_f32() {
        // Bound from the scales: |x.w - xq.wq sx sw| <= sum_k |x_k| sw/2 +
        // |w_k| sx/2 + sx sw / 4, per output.
        let (rows, inp, out) = (6, 100, 7);
        let wf = pseudo(inp * out, 1);
        let w = QuantizedWeights::quantize(&wf, inp, out);
        let x = pseudo(rows * inp, 2);
        let bias = vec![0.0; out];
        let mut xq = vec![0i8; rows * inp];
        let mut xs = vec![0.0; rows];
        quantize_rows_i8(&x, rows, inp, inp, &mut xq, &mut xs);
        let mut y = vec![0.0; rows * out];
        linear_forward_i8_ref(&xq, &xs, &w, &bias, &mut y, rows, false);
        for r in 0..rows {
            for o in 0..out {
                let (mut exact, mut bound) = (0.0f64, 0.0f64);
                for k in 0..inp {
                    let (xv, wv) = (x[r * inp + k] as f64, wf[o * inp + k] as f64);
                    exact += xv * wv;
                    bound += xv.abs() * w.scale[o] as f64 / 2.0
                        + wv.abs() * xs[r] as f64 / 2.0
                        + (xs[r] * w.scale[o]) as f64 / 4.0;
                }
                let e = (y[r * out + o] as f64 - exact).abs();
                assert!(e <= bound * 1.001 + 1e-6, "({r},{o}): error {e} > bound {bound}");
            }
        }
    }

    #[test]
    fn packed_u32_is_little_endian_bytes() {
        let w = QuantizedWeights {
            inputs: 4,
            outputs: 1,
            q: vec![1, -1, 2, -128 + 1],
            scale: vec![1.0],
        };
        let p = PackedI8Linear::pack(&w, &[0.0]);
        assert_eq!(p.packed_u32()[0], u32::from_le_bytes([1, 0xff, 2, 0x81]));
        assert_eq!(p.packed_u32().len(), p.weight.len() / 4);
    }
}
