//! Forward-pass kernels for inference: register-blocked tiles over weights
//! packed in panels of [`PANEL`] outputs, `[panel][input][PANEL]`, so that
//! the outputs lie across the vector lanes and a step over one input is one
//! aligned 64-byte load per panel.
//!
//! Why not the `gemm` crate used for training: at one row the product is a
//! matrix-vector product bound by streaming the weights, and at a few
//! hundred rows a tile that keeps `R x P` vectors of outputs in registers
//! (one weight load serves `R` rows, one broadcast input serves `P` panels)
//! is as fast, without packing the activations on every call.
//!
//! Determinism: every output is computed by one chain,
//! `acc = bias; for k in 0..inputs { acc = fma(w[k], x[k], acc) }`, then
//! ReLU, whatever the tile shape, the row's position in the batch, the
//! thread that runs its panel, or the instruction set (AVX-512, AVX2 and the
//! portable loop with `f32::mul_add` perform the same fused operations in
//! the same order; only the portable loop on a CPU without FMA differs, and
//! it differs the same way for every batch). So a row's probabilities are
//! bitwise identical whether it is predicted alone or inside a micro-batch
//! of the server.

/// Outputs per panel: one 512-bit vector of f32, one 64-byte cache line.
pub const PANEL: usize = 16;

/// A cache-line-aligned group of [`PANEL`] values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C, align(64))]
pub struct Line(pub [f32; PANEL]);

/// A buffer of f32 that starts on a cache line: `len` values in whole lines.
#[derive(Debug, Clone, Default)]
pub struct AlignedBuf {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBuf {
    /// `len` zeros, rounded up to whole lines in storage.
    pub fn zeros(len: usize) -> Self {
        AlignedBuf {
            lines: vec![Line::default(); len.div_ceil(PANEL)],
            len,
        }
    }

    /// The `len` values.
    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` over `[f32; PANEL]` with no padding
        // (64 bytes, align 64), so the lines are `lines.len() * PANEL`
        // contiguous initialised f32 and `len` does not exceed that.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const f32, self.len) }
    }

    /// The `len` values, writable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`; the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut f32, self.len) }
    }
}

/// A linear layer packed for the tiles: `panels` panels of [`PANEL`]
/// outputs, each `[inputs][PANEL]`; outputs past `outputs` have zero weights
/// and zero bias.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    /// Input width.
    pub inputs: usize,
    /// Output width (without the last panel's padding).
    pub outputs: usize,
    /// Panels of [`PANEL`] outputs: `outputs / PANEL` rounded up.
    pub panels: usize,
    /// `[panels][inputs]` lines.
    weight: Vec<Line>,
    /// `[panels]` lines.
    bias: Vec<Line>,
}

impl PackedLinear {
    /// Pack `layer` (`[outputs, inputs]`, as [`crate::model::Linear`]) into panels.
    pub fn pack(layer: &crate::model::Linear) -> Self {
        let (k, n) = (layer.inputs, layer.outputs);
        let panels = n.div_ceil(PANEL);
        let mut weight = vec![Line::default(); panels * k];
        let mut bias = vec![Line::default(); panels];
        for o in 0..n {
            let (p, lane) = (o / PANEL, o % PANEL);
            bias[p].0[lane] = layer.bias[o];
            for i in 0..k {
                weight[p * k + i].0[lane] = layer.weight[o * k + i];
            }
        }
        PackedLinear {
            inputs: k,
            outputs: n,
            panels,
            weight,
            bias,
        }
    }

    /// Outputs including the padding of the last panel.
    pub fn padded_outputs(&self) -> usize {
        self.panels * PANEL
    }

    /// Multiply-adds of one row.
    pub fn macs(&self) -> usize {
        self.inputs * self.outputs
    }
}

/// The instruction sets the tiles are compiled for, chosen once at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX-512F.
    Avx512,
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
    /// Whatever the build targets; fused multiply-add where the target has
    /// it (aarch64, or x86-64 built with `+fma`), unfused elsewhere.
    Portable,
}

impl Isa {
    /// The best variant this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    }

    /// Whether this CPU runs the variant.
    pub fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The variant's name, as benchmarks and logs print it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Portable => "portable",
        }
    }
}

/// Where one call's rows are: `rows` input rows `xs` values apart (at least
/// `inputs` each) and output rows `ys` apart (at least the padded outputs:
/// whole panels are stored).
#[derive(Debug, Clone, Copy)]
pub struct Rows {
    /// The first input row.
    pub x: *const f32,
    /// Values from one input row to the next.
    pub xs: usize,
    /// Number of rows.
    pub rows: usize,
    /// The first output row.
    pub y: *mut f32,
    /// Values from one output row to the next.
    pub ys: usize,
    /// Apply ReLU to the outputs (every layer but the last).
    pub relu: bool,
}

/// Panels `p0..p1` of `layer` for every row of `io`.
///
/// # Safety
/// `isa` is supported by this CPU; `io.x` is readable for `rows` rows of
/// `layer.inputs` values `xs` apart; `io.y` is writable for the columns
/// `p0 * PANEL..p1 * PANEL` of `rows` rows `ys` apart, and nothing else
/// accesses those values meanwhile; `p0 <= p1 <= layer.panels`.
pub unsafe fn forward_panels(isa: Isa, layer: &PackedLinear, p0: usize, p1: usize, io: Rows) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller guarantees the features and the extents.
        Isa::Avx512 => unsafe { x86::panels_avx512(layer, p0, p1, io) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Fma => unsafe { x86::panels_avx2(layer, p0, p1, io) },
        // SAFETY: as above.
        _ => unsafe { panels_portable::<Native>(layer, p0, p1, io) },
    }
}

/// One layer over all its panels on the calling thread, checked: `x` holds
/// `rows` rows `xs` apart, `y` rows `ys` apart, `ys >= layer.padded_outputs()`.
///
/// # Panics
/// When a slice is too short, a stride too small, or `isa` unsupported.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    isa: Isa,
    layer: &PackedLinear,
    x: &[f32],
    xs: usize,
    rows: usize,
    y: &mut [f32],
    ys: usize,
    relu: bool,
) {
    check(layer, x.len(), xs, rows, y.len(), ys);
    assert!(isa.supported(), "{} kernels are not supported on this CPU", isa.name());
    let io = Rows {
        x: x.as_ptr(),
        xs,
        rows,
        y: y.as_mut_ptr(),
        ys,
        relu,
    };
    // SAFETY: the sizes were checked above and `y` is borrowed uniquely.
    unsafe { forward_panels(isa, layer, 0, layer.panels, io) }
}

/// The bounds [`linear_forward`] needs.
pub(crate) fn check(layer: &PackedLinear, xlen: usize, xs: usize, rows: usize, ylen: usize, ys: usize) {
    assert!(xs >= layer.inputs && ys >= layer.padded_outputs(), "strides too small");
    if rows > 0 {
        assert!(xlen >= (rows - 1) * xs + layer.inputs, "x holds {xlen} values, too few");
        assert!(
            ylen >= (rows - 1) * ys + layer.padded_outputs(),
            "y holds {ylen} values, too few"
        );
    }
}

/// How `a * b + c` is evaluated by the portable loop.
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One rounding (`fma`).
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

#[cfg(any(target_arch = "aarch64", target_feature = "fma"))]
type Native = Fused;
#[cfg(not(any(target_arch = "aarch64", target_feature = "fma")))]
type Native = Unfused;

/// The portable loop: per row and panel, [`PANEL`] independent chains.
///
/// # Safety
/// As [`forward_panels`].
unsafe fn panels_portable<M: MulAdd>(layer: &PackedLinear, p0: usize, p1: usize, io: Rows) {
    let k = layer.inputs;
    for r in 0..io.rows {
        // SAFETY: row `r` of `x` holds `k` readable values (caller).
        let x = unsafe { std::slice::from_raw_parts(io.x.add(r * io.xs), k) };
        for p in p0..p1 {
            let mut acc = layer.bias[p].0;
            for (w, &xv) in layer.weight[p * k..(p + 1) * k].iter().zip(x) {
                for (a, &wv) in acc.iter_mut().zip(&w.0) {
                    *a = M::mul_add(wv, xv, *a);
                }
            }
            for (l, a) in acc.into_iter().enumerate() {
                // SAFETY: column `p * PANEL + l < p1 * PANEL` of row `r` is
                // ours to write (caller).
                unsafe { *io.y.add(r * io.ys + p * PANEL + l) = if io.relu { a.max(0.0) } else { a } };
            }
        }
    }
}

/// Explicit x86-64 tiles: the same chains as [`panels_portable`] with
/// `R x P` accumulators in registers.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PackedLinear, Rows, PANEL};
    use std::arch::x86_64::*;

    /// Rows of the AVX-512 tile; with [`P512`] panels, 24 accumulators.
    const R512: usize = 6;
    /// Panels of the AVX-512 tile.
    const P512: usize = 4;
    /// Rows of the AVX2 tile (one panel, two vectors per row).
    const R256: usize = 4;

    /// `R` rows from `r0` times `P` panels from `p` (panel `p` of `w` is
    /// `layer.weight[p * k..]`).
    #[inline(always)]
    unsafe fn tile512<const R: usize, const P: usize>(layer: &PackedLinear, p: usize, r0: usize, io: Rows) {
        let k = layer.inputs;
        // SAFETY (whole body): the caller checked `p + P <= layer.panels` and
        // `r0 + R <= io.rows`; `Line` is 64-byte aligned, so the aligned
        // loads are too; `x` and `y` extents as in `forward_panels`.
        unsafe {
            let w = layer.weight.as_ptr().add(p * k) as *const f32;
            let mut acc = [[_mm512_setzero_ps(); P]; R];
            for (j, b) in layer.bias[p..p + P].iter().enumerate() {
                let bv = _mm512_load_ps(b.0.as_ptr());
                for a in acc.iter_mut() {
                    a[j] = bv;
                }
            }
            let x = io.x.add(r0 * io.xs);
            for i in 0..k {
                let mut wv = [_mm512_setzero_ps(); P];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_load_ps(w.add((j * k + i) * PANEL));
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*x.add(r * io.xs + i));
                    for (aj, &wj) in a.iter_mut().zip(&wv) {
                        *aj = _mm512_fmadd_ps(wj, xv, *aj);
                    }
                }
            }
            let zero = _mm512_setzero_ps();
            for (r, a) in acc.iter().enumerate() {
                let y = io.y.add((r0 + r) * io.ys + p * PANEL);
                for (j, &v) in a.iter().enumerate() {
                    let v = if io.relu { _mm512_max_ps(v, zero) } else { v };
                    _mm512_storeu_ps(y.add(j * PANEL), v);
                }
            }
        }
    }

    /// # Safety
    /// As [`super::forward_panels`], on a CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn panels_avx512(layer: &PackedLinear, p0: usize, p1: usize, io: Rows) {
        macro_rules! rows {
            ($p:expr, $r0:expr, $rr:expr, $P:literal) => {
                // SAFETY: `$p + $P <= p1` and `$r0 + $rr <= io.rows`.
                unsafe {
                    match $rr {
                        1 => tile512::<1, $P>(layer, $p, $r0, io),
                        2 => tile512::<2, $P>(layer, $p, $r0, io),
                        3 => tile512::<3, $P>(layer, $p, $r0, io),
                        4 => tile512::<4, $P>(layer, $p, $r0, io),
                        5 => tile512::<5, $P>(layer, $p, $r0, io),
                        _ => tile512::<R512, $P>(layer, $p, $r0, io),
                    }
                }
            };
        }
        let mut r0 = 0;
        while r0 < io.rows {
            let rr = (io.rows - r0).min(R512);
            let mut p = p0;
            while p + P512 <= p1 {
                rows!(p, r0, rr, 4);
                p += P512;
            }
            while p < p1 {
                rows!(p, r0, rr, 1);
                p += 1;
            }
            r0 += rr;
        }
    }

    /// `R` rows from `r0` times one panel `p`, as two 256-bit halves.
    #[inline(always)]
    unsafe fn tile256<const R: usize>(layer: &PackedLinear, p: usize, r0: usize, io: Rows) {
        let k = layer.inputs;
        // SAFETY (whole body): as in `tile512`.
        unsafe {
            let w = layer.weight.as_ptr().add(p * k) as *const f32;
            let b = layer.bias[p].0.as_ptr();
            let (b0, b1) = (_mm256_load_ps(b), _mm256_load_ps(b.add(8)));
            let mut acc = [[b0, b1]; R];
            let x = io.x.add(r0 * io.xs);
            for i in 0..k {
                let w0 = _mm256_load_ps(w.add(i * PANEL));
                let w1 = _mm256_load_ps(w.add(i * PANEL + 8));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_set1_ps(*x.add(r * io.xs + i));
                    a[0] = _mm256_fmadd_ps(w0, xv, a[0]);
                    a[1] = _mm256_fmadd_ps(w1, xv, a[1]);
                }
            }
            let zero = _mm256_setzero_ps();
            for (r, a) in acc.iter().enumerate() {
                let y = io.y.add((r0 + r) * io.ys + p * PANEL);
                for (h, &v) in a.iter().enumerate() {
                    let v = if io.relu { _mm256_max_ps(v, zero) } else { v };
                    _mm256_storeu_ps(y.add(8 * h), v);
                }
            }
        }
    }

    /// # Safety
    /// As [`super::forward_panels`], on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn panels_avx2(layer: &PackedLinear, p0: usize, p1: usize, io: Rows) {
        let mut r0 = 0;
        while r0 < io.rows {
            let rr = (io.rows - r0).min(R256);
            for p in p0..p1 {
                // SAFETY: `p < p1` and `r0 + rr <= io.rows`.
                unsafe {
                    match rr {
                        1 => tile256::<1>(layer, p, r0, io),
                        2 => tile256::<2>(layer, p, r0, io),
                        3 => tile256::<3>(layer, p, r0, io),
                        _ => tile256::<R256>(layer, p, r0, io),
                    }
                }
            }
            r0 += rr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Linear;

    fn weight(inputs: usize, o: usize, i: usize) -> f32 {
        (((o * inputs + i) * 7919 % 201) as f32 - 100.0) / 300.0
    }

    fn layer(inputs: usize, outputs: usize) -> PackedLinear {
        let weight = (0..inputs * outputs)
            .map(|n| weight(inputs, n / inputs, n % inputs))
            .collect();
        let bias = (0..outputs).map(|i| (i as f32 - 3.0) / 10.0).collect();
        PackedLinear::pack(&Linear {
            inputs,
            outputs,
            weight,
            bias,
        })
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// Every variant this CPU runs, plus the portable loop with fused
    /// multiply-adds (the chain the SIMD tiles must reproduce).
    fn run_all(l: &PackedLinear, x: &[f32], xs: usize, rows: usize, relu: bool) -> Vec<(String, Vec<f32>)> {
        let ys = l.padded_outputs() + 3;
        let mut out = Vec::new();
        for isa in [Isa::Avx512, Isa::Avx2Fma, Isa::Portable] {
            if !isa.supported() {
                continue;
            }
            let mut y = vec![f32::NAN; rows * ys];
            linear_forward(isa, l, x, xs, rows, &mut y, ys, relu);
            out.push((isa.name().to_string(), y));
        }
        let mut y = vec![f32::NAN; rows * ys];
        check(l, x.len(), xs, rows, y.len(), ys);
        let io = Rows {
            x: x.as_ptr(),
            xs,
            rows,
            y: y.as_mut_ptr(),
            ys,
            relu,
        };
        // SAFETY: checked above.
        unsafe { panels_portable::<Fused>(l, 0, l.panels, io) };
        out.push(("portable fused".into(), y));
        out
    }

    #[test]
    fn matches_f64_reference_and_is_batch_and_isa_invariant() {
        // 45 inputs, 77 outputs (4 whole panels and a partial one: both tile
        // widths), 15 rows (two full 6-row tiles and a partial one), x rows
        // padded to 50.
        let (inputs, outputs, rows, xs) = (45, 77, 15, 50);
        let l = layer(inputs, outputs);
        let x: Vec<f32> = (0..rows * xs)
            .map(|i| ((i % xs) < inputs) as u8 as f32 * (((i * 31) % 23) as f32 / 7.0 - 1.5))
            .collect();
        let ys = l.padded_outputs() + 3;
        let all = run_all(&l, &x, xs, rows, false);
        let (_, y) = &all[0];
        for r in 0..rows {
            for j in 0..outputs {
                let want: f64 = (0..inputs)
                    .map(|i| weight(inputs, j, i) as f64 * x[r * xs + i] as f64)
                    .sum::<f64>()
                    + ((j as f32 - 3.0) / 10.0) as f64;
                let got = y[r * ys + j] as f64;
                assert!(
                    (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "{r},{j}: {got} vs {want}"
                );
            }
            // Padding outputs are computed as zero; the gap past them is untouched.
            assert!(y[r * ys + outputs..r * ys + l.padded_outputs()]
                .iter()
                .all(|&v| v == 0.0));
            assert!(y[r * ys + l.padded_outputs()..(r + 1) * ys].iter().all(|v| v.is_nan()));
        }
        // The fused variants agree bit for bit (the unfused portable loop
        // only where the build has no FMA).
        let fused: Vec<&(String, Vec<f32>)> = all
            .iter()
            .filter(|(n, _)| n != "portable" || cfg!(any(target_arch = "aarch64", target_feature = "fma")))
            .collect();
        for (name, v) in &fused {
            assert_eq!(bits(v), bits(y), "{name} differs from {}", all[0].0);
        }
        // Each row alone, and each panel range alone, gives the same bits.
        for isa in [Isa::Avx512, Isa::Avx2Fma, Isa::Portable]
            .into_iter()
            .filter(|i| i.supported())
        {
            let batch = &all.iter().find(|(n, _)| n == isa.name()).unwrap().1;
            for r in 0..rows {
                let mut y1 = vec![f32::NAN; ys];
                linear_forward(isa, &l, &x[r * xs..(r + 1) * xs], xs, 1, &mut y1, ys, false);
                assert_eq!(
                    bits(&y1[..outputs]),
                    bits(&batch[r * ys..r * ys + outputs]),
                    "{isa:?} row {r}"
                );
            }
            let mut y2 = vec![f32::NAN; rows * ys];
            for (p0, p1) in [(0, 1), (1, 3), (3, l.panels)] {
                let io = Rows {
                    x: x.as_ptr(),
                    xs,
                    rows,
                    y: y2.as_mut_ptr(),
                    ys,
                    relu: false,
                };
                // SAFETY: sizes as checked by `run_all`; `y2` is ours.
                unsafe { forward_panels(isa, &l, p0, p1, io) };
            }
            assert_eq!(bits(&y2), bits(batch), "{isa:?} by panel ranges");
        }
    }

    #[test]
    fn relu_and_padding() {
        let l = layer(3, 2);
        assert_eq!(l.padded_outputs(), PANEL);
        let x = [100.0, -100.0, 50.0];
        for (name, y) in run_all(&l, &x, 3, 1, true) {
            assert!(y[..PANEL].iter().all(|&v| v >= 0.0), "{name}");
            assert_eq!(y[2..PANEL], [0.0; PANEL - 2], "{name}");
        }
    }

    #[test]
    fn aligned_buffer() {
        let mut b = AlignedBuf::zeros(37);
        assert_eq!(b.as_slice().len(), 37);
        assert_eq!(b.as_slice().as_ptr() as usize % 64, 0);
        b.as_mut_slice()[36] = 1.0;
        assert_eq!(b.as_slice()[36], 1.0);
    }
}
