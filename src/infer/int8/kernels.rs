//! The int8 kernels: per-row quantization of the activations
//! ([`quantize_rows_i8`]), the layer product [`linear_forward_i8`] in one
//! variant per instruction set ([`I8Isa`]: AVX-512 VNNI in [`super::vnni`],
//! AVX2 and portable here), its scalar reference, and the f32 epilogue
//! [`dequantize_acc`] every variant shares.

use super::pack::{PackedI8Linear, MR, NR};
#[cfg(target_arch = "x86_64")]
use super::vnni;
use crate::model::int8::{max_abs, quantize_value, scale_for};
use crate::model::QuantizedWeights;

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

    /// The variant's name, as predictor names and benchmarks print it.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::int8::pseudo;

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
}
