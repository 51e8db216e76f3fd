//! The AVX-512 VNNI int8 kernels (x86-64): the layer product with
//! `vpdpbusd` and the quantization of activation rows 16 values at a time.

use std::arch::x86_64::*;

use super::pack::PackedI8Linear;
use crate::model::int8::{max_abs, quantize_value, scale_for, QMAX};

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
/// [`super::kernels::dequantize_acc`], lane by lane the same operations in
/// the same order (so the same bits): subtract the panel correction,
/// convert, multiply by `x_scale * w_scale`, add the bias, ReLU.
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

/// The body of [`super::kernels::quantize_rows_i8`] with the values 16 at a
/// time: the same scale, and the same rounding (to nearest, ties to even),
/// clamping and NaN-to-zero as [`quantize_value`].
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
