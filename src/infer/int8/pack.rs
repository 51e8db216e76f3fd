//! The layout of int8 layers for the kernels: rows padded to [`K_ALIGN`]
//! bytes, outputs padded to [`NR`], and the panels of 16 outputs the
//! AVX-512 VNNI kernel reads; [`PackedI8Linear::packed_u32`] gives the rows
//! as the words WGSL's `dot4I8Packed` reads.

use crate::model::QuantizedWeights;

/// Packed rows are padded to a multiple of this many values (one AVX-512
/// register of bytes; also a multiple of 4 for `dot4I8Packed`).
pub const K_ALIGN: usize = 64;

/// Outputs per micro-kernel block; packed layers pad their outputs to it.
pub const NR: usize = 4;

/// Rows per micro-kernel block.
pub const MR: usize = 4;

/// A quantized layer laid out for the fast kernels: rows padded with zeros
/// to `stride` (a multiple of [`K_ALIGN`]) and outputs padded to a
/// multiple of [`NR`].
#[derive(Debug, Clone)]
pub struct PackedI8Linear {
    /// Input width (unpadded).
    pub inputs: usize,
    /// Output width (unpadded).
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
    /// Pack `w` and its `w.outputs` biases, padding rows and outputs with zeros.
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

#[cfg(test)]
mod tests {
    use super::*;

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
