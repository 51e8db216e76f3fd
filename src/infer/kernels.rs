//! Forward-pass kernels for inference: a row-blocked matrix-vector product
//! over `[out, in]` row-major weights whose rows are zero-padded to a
//! multiple of [`LANES`].
//!
//! Why not the `gemm` crate used for training: at one row the product is a
//! matrix-vector product, bound by streaming the weights from cache, and a
//! plain loop with [`LANES`] independent accumulators streams them faster
//! than a general GEMM's packing does (see `bench_inference`).
//!
//! Every output value is computed by the same sequence of fused
//! multiply-adds, lane by lane, and the same fixed reduction tree, whatever
//! the number of rows in the batch and whichever block size or instruction
//! set runs it (the lanes are independent, so the vector width only changes
//! how many run at once). So a row's probabilities are bitwise identical
//! whether it is predicted alone or inside a micro-batch of the server.

/// Independent accumulators per dot product: eight 256-bit registers,
/// enough to hide the latency of the fused multiply-add.
pub const LANES: usize = 64;

/// Round `n` up to a multiple of [`LANES`].
pub fn padded(n: usize) -> usize {
    n.div_ceil(LANES) * LANES
}

/// A linear layer with its weight rows padded with zeros to `stride` values.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    pub inputs: usize,
    pub outputs: usize,
    /// Padded row length, a multiple of [`LANES`].
    pub stride: usize,
    /// `[outputs, stride]`, row-major; columns past `inputs` are zero.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl PackedLinear {
    pub fn pack(layer: &crate::model::Linear) -> Self {
        let stride = padded(layer.inputs);
        let mut weight = vec![0.0; layer.outputs * stride];
        for (dst, src) in weight
            .chunks_exact_mut(stride)
            .zip(layer.weight.chunks_exact(layer.inputs))
        {
            dst[..layer.inputs].copy_from_slice(src);
        }
        PackedLinear {
            inputs: layer.inputs,
            outputs: layer.outputs,
            stride,
            weight,
            bias: layer.bias.clone(),
        }
    }
}

/// How `a * b + c` is evaluated: fused where the hardware has it.
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One rounding (`fma`); only used where the instruction exists.
#[allow(dead_code)]
struct Fused;
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Two roundings; for CPUs without FMA, where `f32::mul_add` would be a
/// slow library call.
#[allow(dead_code)]
struct Unfused;
impl MulAdd for Unfused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Sum the lanes with a fixed pairwise tree.
#[inline(always)]
fn reduce(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0]
}

/// Dot products of one padded weight row with `R` padded input rows that
/// start `xstride` apart in `x`.
#[inline(always)]
fn dot_rows<M: MulAdd, const R: usize>(w: &[f32], x: &[f32], xstride: usize) -> [f32; R] {
    let mut acc = [[0.0f32; LANES]; R];
    let chunks = w.len() / LANES;
    for c in 0..chunks {
        let wc: &[f32; LANES] = w[c * LANES..(c + 1) * LANES].try_into().unwrap_or(&[0.0; LANES]);
        for (r, a) in acc.iter_mut().enumerate() {
            let o = r * xstride + c * LANES;
            let xc: &[f32; LANES] = x[o..o + LANES].try_into().unwrap_or(&[0.0; LANES]);
            for l in 0..LANES {
                a[l] = M::mul_add(wc[l], xc[l], a[l]);
            }
        }
    }
    let mut out = [0.0; R];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = reduce(a);
    }
    out
}

/// `y[r, j] = act(dot(w[j], x[r]) + b[j])` for `rows` rows, `R` rows at a
/// time. `x` rows are `layer.stride` apart; `y` rows are `ystride` apart.
#[inline(always)]
fn forward_rows<M: MulAdd, const R: usize>(
    layer: &PackedLinear,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    ystride: usize,
    relu: bool,
) {
    let s = layer.stride;
    let mut r0 = 0;
    while r0 + R <= rows {
        let xb = &x[r0 * s..(r0 + R) * s];
        for (j, (w, &b)) in layer.weight.chunks_exact(s).zip(&layer.bias).enumerate() {
            let d = dot_rows::<M, R>(w, xb, s);
            for (r, v) in d.into_iter().enumerate() {
                let v = v + b;
                y[(r0 + r) * ystride + j] = if relu { v.max(0.0) } else { v };
            }
        }
        r0 += R;
    }
    while r0 < rows {
        let xb = &x[r0 * s..(r0 + 1) * s];
        for (j, (w, &b)) in layer.weight.chunks_exact(s).zip(&layer.bias).enumerate() {
            let [v] = dot_rows::<M, 1>(w, xb, s);
            let v = v + b;
            y[r0 * ystride + j] = if relu { v.max(0.0) } else { v };
        }
        r0 += 1;
    }
}

/// The instruction sets the kernel is compiled for, chosen once at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
    /// Whatever the build targets; fused multiply-add on aarch64, unfused
    /// elsewhere.
    Portable,
}

impl Isa {
    /// The best variant this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2Fma => "avx2+fma",
            Isa::Portable => "portable",
        }
    }
}

/// Explicit x86-64 kernels: the same per-lane operations and reduction
/// tree as [`dot_rows`], written with intrinsics so that the accumulators
/// stay in registers.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PackedLinear, LANES};
    use std::arch::x86_64::*;

    /// One dot product, 256-bit: accumulator `q` holds lanes `8q..8q+8`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot256(w: *const f32, x: *const f32, chunks: usize) -> f32 {
        let mut a = [_mm256_setzero_ps(); 8];
        for c in 0..chunks {
            let wp = w.add(c * LANES);
            let xp = x.add(c * LANES);
            for (q, aq) in a.iter_mut().enumerate() {
                *aq = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(8 * q)), _mm256_loadu_ps(xp.add(8 * q)), *aq);
            }
        }
        // Width 32: lanes l and l+32 are accumulators q and q+4.
        let b = [
            _mm256_add_ps(a[0], a[4]),
            _mm256_add_ps(a[1], a[5]),
            _mm256_add_ps(a[2], a[6]),
            _mm256_add_ps(a[3], a[7]),
        ];
        // Width 16, then 8.
        let c = [_mm256_add_ps(b[0], b[2]), _mm256_add_ps(b[1], b[3])];
        reduce8(_mm256_add_ps(c[0], c[1]))
    }

    /// The last levels of the tree: width 4, 2, 1 over 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn reduce8(y: __m256) -> f32 {
        let v = _mm_add_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps::<1>(y));
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        let v = _mm_add_ss(v, _mm_shuffle_ps::<0b01>(v, v));
        _mm_cvtss_f32(v)
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; `x` holds `rows * layer.stride` values and
    /// `y` `rows * ystride`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn forward_avx2(
        layer: &PackedLinear,
        x: &[f32],
        rows: usize,
        y: &mut [f32],
        ystride: usize,
        relu: bool,
    ) {
        let s = layer.stride;
        for r in 0..rows {
            let xp = x.as_ptr().add(r * s);
            for (j, &b) in layer.bias.iter().enumerate() {
                let v = dot256(layer.weight.as_ptr().add(j * s), xp, s / LANES) + b;
                y[r * ystride + j] = if relu { v.max(0.0) } else { v };
            }
        }
    }
}

fn forward_portable(layer: &PackedLinear, x: &[f32], rows: usize, y: &mut [f32], ystride: usize, relu: bool) {
    #[cfg(target_arch = "aarch64")]
    forward_rows::<Fused, 2>(layer, x, rows, y, ystride, relu);
    #[cfg(not(target_arch = "aarch64"))]
    forward_rows::<Unfused, 2>(layer, x, rows, y, ystride, relu);
}

/// One layer over `rows` padded input rows (`layer.stride` apart) into `y`
/// (rows `ystride` apart; only the first `layer.outputs` values of each row
/// are written, so padding set to zero stays zero).
///
/// # Panics
/// When `x` or `y` is too short for `rows` rows.
pub fn linear_forward(
    isa: Isa,
    layer: &PackedLinear,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    ystride: usize,
    relu: bool,
) {
    assert!(
        x.len() >= rows * layer.stride,
        "x holds {} values, needs {}",
        x.len(),
        rows * layer.stride
    );
    assert!(ystride >= layer.outputs && y.len() >= rows * ystride, "y too short");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Fma` is only produced by `detect` after checking
        // that the CPU has these features; the asserts above check the sizes.
        Isa::Avx2Fma => unsafe { x86::forward_avx2(layer, x, rows, y, ystride, relu) },
        _ => forward_portable(layer, x, rows, y, ystride, relu),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Linear;

    fn layer(inputs: usize, outputs: usize) -> PackedLinear {
        let weight = (0..inputs * outputs)
            .map(|i| ((i * 7919 % 201) as f32 - 100.0) / 300.0)
            .collect();
        let bias = (0..outputs).map(|i| (i as f32 - 3.0) / 10.0).collect();
        PackedLinear::pack(&Linear {
            inputs,
            outputs,
            weight,
            bias,
        })
    }

    #[test]
    fn matches_f64_reference_and_is_batch_invariant() {
        // 45 inputs: not a multiple of LANES; 7 rows: a partial block of each size.
        let (inputs, outputs, rows) = (45, 13, 7);
        let l = layer(inputs, outputs);
        let mut x = vec![0.0f32; rows * l.stride];
        for r in 0..rows {
            for i in 0..inputs {
                x[r * l.stride + i] = ((r * 31 + i * 17) % 23) as f32 / 7.0 - 1.5;
            }
        }
        let isa = Isa::detect();
        let mut y = vec![f32::NAN; rows * outputs];
        linear_forward(isa, &l, &x, rows, &mut y, outputs, false);
        for r in 0..rows {
            for j in 0..outputs {
                let want: f64 = (0..inputs)
                    .map(|i| l.weight[j * l.stride + i] as f64 * x[r * l.stride + i] as f64)
                    .sum::<f64>()
                    + l.bias[j] as f64;
                let got = y[r * outputs + j] as f64;
                assert!(
                    (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "{r},{j}: {got} vs {want}"
                );
            }
            // The same row alone gives the same bits.
            let mut y1 = vec![f32::NAN; outputs];
            linear_forward(isa, &l, &x[r * l.stride..], 1, &mut y1, outputs, false);
            assert_eq!(
                y1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                y[r * outputs..(r + 1) * outputs]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            );
        }
        // The intrinsics follow the lanes and the tree of the portable code
        // exactly: the same bits (`f32::mul_add` is exact wherever it runs).
        if isa != Isa::Portable {
            let mut y2 = vec![f32::NAN; rows * outputs];
            forward_rows::<Fused, 3>(&l, &x, rows, &mut y2, outputs, false);
            assert_eq!(y, y2);
        }
    }

    #[test]
    fn relu_and_padding() {
        let l = layer(3, 2);
        assert_eq!(l.stride, LANES);
        assert!(l.weight[3..LANES].iter().all(|&w| w == 0.0));
        let mut x = vec![0.0; LANES];
        x[..3].copy_from_slice(&[100.0, -100.0, 50.0]);
        let mut y = vec![7.0; 4];
        linear_forward(Isa::detect(), &l, &x, 1, &mut y, 4, true);
        assert!(y[..2].iter().all(|&v| v >= 0.0));
        assert_eq!(&y[2..], &[7.0, 7.0], "padding of y untouched");
    }
}
