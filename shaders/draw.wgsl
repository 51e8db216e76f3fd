// The random draws of a training step, the twin of src/optim/draw.rs: a
// draw is MurmurHash3 (x86, 32-bit, seed 0) of the key words
// (seed_lo, seed_hi, step, stream, row, col) as 24 little-endian bytes.
// draw_key absorbs the words fixed for a step and stream, draw_row the
// row, draw_col the column and finishes. u32 arithmetic wraps, as the
// hash needs.

const SHIFT_STREAM: u32 = 0u;

fn draw_absorb(h: u32, k0: u32) -> u32 {
    var k = k0 * 0xcc9e2d51u;
    k = (k << 15u) | (k >> 17u);
    k = k * 0x1b873593u;
    var x = h ^ k;
    x = (x << 13u) | (x >> 19u);
    return x * 5u + 0xe6546b64u;
}

fn draw_fmix(h0: u32) -> u32 {
    var h = h0;
    h ^= h >> 16u;
    h = h * 0x85ebca6bu;
    h ^= h >> 13u;
    h = h * 0xc2b2ae35u;
    return h ^ (h >> 16u);
}

fn draw_key(seed_lo: u32, seed_hi: u32, step: u32, stream: u32) -> u32 {
    return draw_absorb(draw_absorb(draw_absorb(draw_absorb(0u, seed_lo), seed_hi), step), stream);
}

fn draw_row(key: u32, row: u32) -> u32 {
    return draw_absorb(key, row);
}

fn draw_col(key: u32, col: u32) -> u32 {
    return draw_fmix(draw_absorb(key, col) ^ 24u);
}
