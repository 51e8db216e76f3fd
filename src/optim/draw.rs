//! The random draws of a training step (dropout masks, image shifts) as a
//! counter-based hash: each draw is a pure function of
//! `(seed, step, stream, row, column)`, so there is no mask buffer and no
//! generator state, the CPU and the GPU draw the same numbers, and a
//! resumed run draws what the uninterrupted one would have.
//!
//! The hash is MurmurHash3 (x86, 32-bit, seed 0) of the six key words as
//! 24 little-endian bytes: u32 arithmetic only, because WGSL has no u64.
//! Its WGSL twin is `shaders/draw.wgsl`; the GPU tests compare the two
//! through the kernels that use it. `step` is the backend's update count
//! plus one (torch's `t`, the number Adam's bias corrections use), truncated
//! to 32 bits.

use crate::error::{Error, Result, Setting};

/// The stream of the image shifts; dropout after hidden layer `l` (from 0)
/// draws from stream `l + 1`.
pub const SHIFT_STREAM: u32 = 0;

/// The stream of dropout after hidden layer `layer` (from 0).
pub fn dropout_stream(layer: usize) -> u32 {
    layer as u32 + 1
}

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// One 4-byte block of MurmurHash3's body.
fn absorb(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finalizer.
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The hash state after the words that are fixed for a step and stream
/// (and, after [`Key::row`], for a row): the per-element work is one block
/// and the finalizer.
///
/// A key may carry a row offset ([`Key::rows_from`]): a data-parallel
/// replica computing rows `a..b` of a batch numbers its local row `r` as
/// `a + r`, so the replicas together draw what one device would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    state: u32,
    row0: u32,
}

impl Key {
    /// The key of `stream` at `step` of a run seeded with `seed`.
    pub fn new(seed: u64, step: u64, stream: u32) -> Key {
        let h = absorb(0, seed as u32);
        let h = absorb(h, (seed >> 32) as u32);
        let h = absorb(h, step as u32);
        Key {
            state: absorb(h, stream),
            row0: 0,
        }
    }

    /// This key with local row `r` standing for row `row0 + r` of the batch.
    pub fn rows_from(self, row0: u32) -> Key {
        Key { row0, ..self }
    }

    /// The key of row `row` of the batch (plus the row offset).
    pub fn row(self, row: u32) -> Key {
        Key {
            state: absorb(self.state, row.wrapping_add(self.row0)),
            row0: 0,
        }
    }

    /// The draw of column `col` of this row: uniform over u32.
    pub fn col(self, col: u32) -> u32 {
        fmix(absorb(self.state, col) ^ 24)
    }
}

/// The draw of `(seed, step, stream, row, col)`.
pub fn draw(seed: u64, step: u64, stream: u32, row: u32, col: u32) -> u32 {
    Key::new(seed, step, stream).row(row).col(col)
}

/// Inverted dropout as the kernels apply it: a unit is dropped when its
/// draw is below `threshold` (`p * 2^32`, rounded), and a kept unit is
/// multiplied by `scale` (`1 / (1 - p)` in f32).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Draws below this drop the unit: `round(p * 2^32)`, at least 1.
    pub threshold: u32,
    /// The factor of a kept unit: `1 / (1 - p)`.
    pub scale: f32,
}

impl Dropout {
    /// Dropout with probability `p` in `[0, 1)`; `None` when `p` is 0. A
    /// positive `p` too small to round to a threshold of 1 still drops
    /// (threshold 1), so dropout is never silently off.
    pub fn new(p: f32) -> Option<Dropout> {
        if p <= 0.0 || !p.is_finite() {
            return None;
        }
        let t = (f64::from(p) * 4_294_967_296.0).round().clamp(1.0, f64::from(u32::MAX));
        Some(Dropout {
            threshold: t as u32,
            scale: 1.0 / (1.0 - p),
        })
    }

    /// Whether a unit whose draw is `h` is kept.
    pub fn keeps(&self, h: u32) -> bool {
        h >= self.threshold
    }
}

/// Random translation of image rows: each row of a batch moves by
/// `(dx, dy)`, each uniform in `[-max, max]`, and pixels that come from
/// outside the image are the raw value 0 (preprocessed like any pixel).
/// Every channel of a `[c, h, w]` image moves alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shift {
    /// The largest shift in pixels, in each direction.
    pub max: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Image width in pixels.
    pub width: u32,
}

impl Shift {
    /// A shift of up to `max` pixels on examples of `shape`; `None` when
    /// `max` is 0. Refuses shapes that are not images (`[h, w]` or
    /// `[c, h, w]`) and shifts that reach across the whole image.
    pub fn new(max: u32, shape: &[usize]) -> Result<Option<Shift>> {
        if max == 0 {
            return Ok(None);
        }
        let (h, w) = match *shape {
            [h, w] | [_, h, w] => (h, w),
            _ => {
                return Err(Error::invalid(
                    Setting::Shift,
                    format!("{max} on examples of shape {shape:?}"),
                    "0 unless the data are images of shape [h, w] or [c, h, w]",
                ))
            }
        };
        if max as usize >= h.min(w) {
            return Err(Error::invalid(
                Setting::Shift,
                format!("{max} on {h} x {w} images"),
                "fewer pixels than the image's smaller side",
            ));
        }
        Ok(Some(Shift {
            max,
            height: h as u32,
            width: w as u32,
        }))
    }

    /// `(dx, dy)` of the row whose key is `row`.
    pub fn offsets(&self, row: Key) -> (i32, i32) {
        let span = 2 * self.max + 1;
        let d = |c| (row.col(c) % span) as i32 - self.max as i32;
        (d(0), d(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MurmurHash3_x86_32 over bytes, written from the reference
    /// implementation (blocks, tail, length, finalizer).
    fn murmur3(bytes: &[u8], seed: u32) -> u32 {
        let mut h = seed;
        let blocks = bytes.chunks_exact(4);
        let tail = blocks.remainder();
        for b in blocks {
            let mut k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            k = k.wrapping_mul(C1);
            k = k.rotate_left(15);
            k = k.wrapping_mul(C2);
            h ^= k;
            h = h.rotate_left(13);
            h = h.wrapping_mul(5).wrapping_add(0xe654_6b64);
        }
        let mut k = 0u32;
        for (i, &b) in tail.iter().enumerate() {
            k ^= u32::from(b) << (8 * i);
        }
        if !tail.is_empty() {
            k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
            h ^= k;
        }
        h ^= bytes.len() as u32;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }

    #[test]
    fn the_reference_matches_published_vectors() {
        assert_eq!(murmur3(b"", 0), 0);
        assert_eq!(murmur3(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3(b"The quick brown fox jumps over the lazy dog", 0), 0x2e4f_f723);
    }

    #[test]
    fn draw_is_murmur3_of_the_key_bytes() {
        for (seed, step, stream, row, col) in [
            (0u64, 0u64, 0u32, 0u32, 0u32),
            (42, 1, 1, 7, 130),
            (u64::MAX, 123_456_789, 3, 63, 499),
            (0x1234_5678_9abc_def0, 5, 0, 1, 1),
        ] {
            let mut bytes = Vec::new();
            for w in [seed as u32, (seed >> 32) as u32, step as u32, stream, row, col] {
                bytes.extend_from_slice(&w.to_le_bytes());
            }
            assert_eq!(draw(seed, step, stream, row, col), murmur3(&bytes, 0));
        }
    }

    #[test]
    fn dropout_threshold_rounds_p_times_two_to_the_32() {
        assert_eq!(Dropout::new(0.0), None);
        let d = Dropout::new(0.5).unwrap();
        assert_eq!(d.threshold, 1 << 31);
        assert_eq!(d.scale, 2.0);
        assert_eq!(Dropout::new(1e-12).unwrap().threshold, 1);
        assert!(!d.keeps((1 << 31) - 1) && d.keeps(1 << 31));
    }

    #[test]
    fn shift_needs_an_image_larger_than_the_shift() {
        assert_eq!(Shift::new(0, &[5]).unwrap(), None);
        assert!(Shift::new(1, &[784]).is_err());
        assert!(Shift::new(28, &[28, 28]).is_err());
        assert!(Shift::new(3, &[2, 3, 8]).is_err());
        let s = Shift::new(2, &[1, 28, 27]).unwrap().unwrap();
        assert_eq!((s.height, s.width, s.max), (28, 27, 2));
    }

    #[test]
    fn shifts_cover_the_range_and_stay_in_it() {
        let s = Shift::new(2, &[28, 28]).unwrap().unwrap();
        let key = Key::new(9, 4, SHIFT_STREAM);
        let mut seen = [[0usize; 5]; 2];
        for r in 0..2000 {
            let (dx, dy) = s.offsets(key.row(r));
            assert!(dx.abs() <= 2 && dy.abs() <= 2, "{dx} {dy}");
            seen[0][(dx + 2) as usize] += 1;
            seen[1][(dy + 2) as usize] += 1;
        }
        // 400 expected per value; 5 sigma is about 90.
        for counts in seen {
            assert!(counts.iter().all(|&c| (310..=490).contains(&c)), "{counts:?}");
        }
    }
}
