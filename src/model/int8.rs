//! Int8 weights, and the quantization scheme they share with the int8
//! activations of [`crate::infer::int8`].
//!
//! Symmetric, one scale per row (per output channel for weights, per example
//! for activations): `scale = max |v| / 127` ([`max_abs`], [`scale_for`]),
//! `q = clamp(round(v / scale), -127, 127)` ([`quantize_value`]: round half
//! to even, as WGSL's `round`), so `|v - q*scale| <= scale/2`. A row whose
//! largest magnitude is 0 (or not finite) gets scale 0 and quantizes to
//! zeros.

use super::mlp::Linear;

/// The largest magnitude of a quantized value (symmetric: -127..=127, so
/// negation never overflows).
pub const QMAX: f32 = 127.0;

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
pub fn scale_for(max: f32) -> (f32, f32) {
    if max > 0.0 && max.is_finite() {
        (max / QMAX, QMAX / max)
    } else {
        (0.0, 0.0)
    }
}

/// The largest magnitude in `v` (0 for an empty slice; NaNs are skipped, as
/// `f32::max` skips them). Sixteen running maxima, one per lane, so that
/// the loop vectorizes: a single running maximum is a chain the compiler
/// may not reorder. The result is the same in any order.
#[inline(always)]
pub fn max_abs(v: &[f32]) -> f32 {
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

/// Int8 weights of one layer: `q` is `[outputs, inputs]` row-major, one
/// scale per output.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeights {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// `outputs * inputs` int8 values in `[-127, 127]`.
    pub q: Vec<i8>,
    /// One scale per output row: weight `≈ q * scale`.
    pub scale: Vec<f32>,
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

/// Quantize a layer's weights.
pub fn quantize_linear(l: &Linear) -> QuantizedWeights {
    QuantizedWeights::quantize(&l.weight, l.inputs, l.outputs)
}

/// Pseudo-random values in `-1..=1` for the tests of the int8 code.
#[cfg(test)]
pub(crate) fn pseudo(n: usize, seed: u32) -> Vec<f32> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
