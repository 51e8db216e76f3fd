//! The bitmask storage of a sparse `[outputs, inputs]` weight matrix: per
//! row, `ceil(inputs / 8)` bytes whose bit `k % 8` (least significant
//! first) of byte `k / 8` says whether weight `k` is non-zero, then the
//! values of the set bits in row-major order. At 90% sparsity this costs
//! 1.125 bits of position per weight plus one byte per kept int8 value:
//! 0.225 bytes per weight against 1 dense, and rows stay independent for
//! parallel decoding.

/// Bytes of the mask of one row of `inputs` weights.
pub fn row_bytes(inputs: usize) -> usize {
    inputs.div_ceil(8)
}

/// The bitmask of `nonzero(j)` over the row-major indices `j` of
/// `[outputs, inputs]`.
pub fn encode(inputs: usize, outputs: usize, nonzero: impl Fn(usize) -> bool) -> Vec<u8> {
    let rb = row_bytes(inputs);
    let mut m = vec![0u8; outputs * rb];
    for o in 0..outputs {
        for k in 0..inputs {
            if nonzero(o * inputs + k) {
                m[o * rb + k / 8] |= 1 << (k % 8);
            }
        }
    }
    m
}

/// The row-major indices of the set bits of a mask of `[outputs, inputs]`
/// (`mask` holds `outputs * row_bytes(inputs)` bytes), in order.
pub fn positions(mask: &[u8], inputs: usize, outputs: usize) -> Vec<usize> {
    let rb = row_bytes(inputs);
    (0..outputs * inputs)
        .filter(|&j| mask[(j / inputs) * rb + (j % inputs) / 8] >> ((j % inputs) % 8) & 1 == 1)
        .collect()
}

/// The dense `[len]` matrix holding `values` at `positions`, zero
/// elsewhere (the two zipped: extra values or positions are ignored).
pub fn scatter<T: Copy + Default>(len: usize, positions: &[usize], values: &[T]) -> Vec<T> {
    let mut w = vec![T::default(); len];
    for (&p, &v) in positions.iter().zip(values) {
        w[p] = v;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_invert_encode() {
        let (inputs, outputs) = (11, 3);
        let w: Vec<i8> = (0..33)
            .map(|j| if j % 3 == 0 || j == 10 { 0 } else { j as i8 })
            .collect();
        let mask = encode(inputs, outputs, |j| w[j] != 0);
        assert_eq!(mask.len(), 6);
        // Row 0: weights 1, 2, 4, 5, 7, 8 set; 10 clear.
        assert_eq!(mask[0], 0b1011_0110);
        let pos = positions(&mask, inputs, outputs);
        let vals: Vec<i8> = pos.iter().map(|&p| w[p]).collect();
        assert_eq!(scatter(w.len(), &pos, &vals), w);
    }
}
