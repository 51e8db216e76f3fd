//! The GEMM tile policy: the shapes a matmul.wgsl workgroup can cover
//! ([`Tile`]) and which one a product of a given shape uses
//! ([`Tile::for_shape`]).
//!
//! Each variant is compiled as its own module (the constants go in front of
//! matmul.wgsl, see `shaders::matmul`), so the choice costs nothing at run
//! time; it is made once, when a dispatch is built.

/// Below this many workgroups of wide tiles, a GEMM uses narrow ones.
/// WebGPU does not say how many compute units an adapter has; large GPUs
/// have 30 to 140, and a skinny product of a small batch (64 x 500 is 8
/// wide tiles) would leave most of them idle, while 4x as many narrow
/// tiles cost a little more traffic to workgroup memory per multiply-add.
const NARROW_BELOW: u64 = 64;

/// From this many workgroups of large tiles on, a GEMM uses large ones:
/// twice the multiply-adds per value read from workgroup memory, once
/// there are enough tiles to fill a large GPU.
const LARGE_FROM: u64 = 128;

/// Below this many workgroups of narrow tiles, and from this k on, a GEMM
/// splits k over the slices of a workgroup: its few tiles would otherwise
/// each walk the whole of k alone, one dependent step after another
/// (64 x 500 x 784, the first layer at batch 64, is 32 such tiles). On an
/// H200 such products are bound by the latency of those steps, not by the
/// number of tiles: 8 wide tiles ran 64 x 500 x 784 faster than 32 narrow
/// ones (60 against 58-74 microseconds), 32 x 32 tiles in 4 k-slices in 25
/// and 16 x 16 tiles in 16 k-slices in 14 (docs/PERFORMANCE.md).
const SLICED_BELOW: u64 = 256;
const SLICED_FROM_K: u64 = 64;

/// How a GEMM workgroup covers its block of C (matmul.wgsl): slices of
/// `threads x threads` threads, each thread computing `group x group`
/// blocks of 4 x 4 outputs, `slices` slices splitting k between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    /// 128 x 128 outputs, 256 threads of 8 x 8, an 8-deep k step.
    Large,
    /// 64 x 64 outputs, 256 threads of 4 x 4, a 16-deep k step.
    Wide,
    /// 32 x 32 outputs, 64 threads of 4 x 4, a 16-deep k step.
    Narrow,
    /// 16 x 16 outputs, 16 slices of 16 threads of 4 x 4, each taking every
    /// sixteenth 4-deep k step.
    Sliced,
}

impl Tile {
    /// Every variant.
    pub const ALL: [Tile; 4] = [Tile::Large, Tile::Wide, Tile::Narrow, Tile::Sliced];

    /// Threads of a slice along x (columns) and y (rows).
    pub(crate) fn threads(self) -> u32 {
        match self {
            Tile::Large | Tile::Wide => 16,
            Tile::Narrow => 8,
            Tile::Sliced => 4,
        }
    }

    /// 4 x 4 blocks per thread along each dimension.
    pub(crate) fn group(self) -> u32 {
        match self {
            Tile::Large => 2,
            Tile::Wide | Tile::Narrow | Tile::Sliced => 1,
        }
    }

    /// Depth of the k step staged in workgroup memory.
    pub(crate) fn depth(self) -> u32 {
        match self {
            Tile::Large => 8,
            Tile::Wide | Tile::Narrow => 16,
            Tile::Sliced => 4,
        }
    }

    /// Slices splitting k.
    pub(crate) fn slices(self) -> u32 {
        match self {
            Tile::Sliced => 16,
            _ => 1,
        }
    }

    /// Output rows (and columns) per workgroup.
    pub fn size(self) -> u32 {
        4 * self.group() * self.threads()
    }

    /// Invocations per workgroup.
    fn invocations(self) -> u32 {
        self.threads() * self.threads() * self.slices()
    }

    /// Workgroup memory (`SMEM` in matmul.wgsl): each slice's k step of A
    /// and of B, rows padded by 4 floats, or the slices' partial sums,
    /// whichever is larger.
    pub(crate) fn shared_bytes(self) -> u32 {
        let stage = 2 * self.depth() * (self.size() + 4) * 4;
        let partials = (self.slices() - 1) * self.invocations() / self.slices() * 16 * self.group().pow(2) * 4;
        (self.slices() * stage).max(partials)
    }

    /// Workgroups covering an `m` x `n` output, and how many per row.
    pub(crate) fn grid(self, m: u64, n: u64) -> (u64, u64) {
        let s = u64::from(self.size());
        (m.div_ceil(s) * n.div_ceil(s), n.div_ceil(s))
    }

    /// The variant for an `m` x `n` output with inner dimension `k`.
    pub fn for_shape(m: u64, n: u64, k: u64) -> Tile {
        if Tile::Large.grid(m, n).0 >= LARGE_FROM {
            Tile::Large
        } else if Tile::Wide.grid(m, n).0 >= NARROW_BELOW {
            Tile::Wide
        } else if Tile::Narrow.grid(m, n).0 < SLICED_BELOW && k >= SLICED_FROM_K {
            Tile::Sliced
        } else {
            Tile::Narrow
        }
    }

    /// The variant for a product of this shape on a software adapter
    /// (lavapipe, llvmpipe, WARP), which runs a workgroup's invocations as
    /// SIMD lanes of one CPU thread: there a barrier costs a pass over the
    /// whole workgroup and a k-slice shares none of its loads, so slicing
    /// never pays, and the largest tile the output fills wins (more
    /// multiply-adds per value loaded). Measured on lavapipe
    /// (docs/PERFORMANCE.md): 64 x 500 x 784 ran at 3.2 GFLOP/s in 64 x 64
    /// tiles against 0.9 sliced, 500 x 784 x 64 at 4.1 in 128 x 128 tiles
    /// against 2.2 in 64 x 64.
    pub fn for_software(m: u64, n: u64, _k: u64) -> Tile {
        if m >= 128 && n >= 128 {
            Tile::Large
        } else if m >= 64 && n >= 64 {
            Tile::Wide
        } else {
            Tile::Narrow
        }
    }

    /// [`Tile::for_software`] on a software adapter, else
    /// [`Tile::for_shape`].
    pub fn choose(m: u64, n: u64, k: u64, software: bool) -> Tile {
        if software {
            Tile::for_software(m, n, k)
        } else {
            Tile::for_shape(m, n, k)
        }
    }

    /// This variant if its tiles are at least `n` columns wide, else the
    /// narrowest one that is; `None` when none is (`n` above 128): the
    /// tile of a product whose workgroups must each hold whole rows
    /// (linear_softmax_xent).
    pub(crate) fn covering(self, n: u64) -> Option<Tile> {
        if u64::from(self.size()) >= n {
            return Some(self);
        }
        Tile::ALL
            .into_iter()
            .filter(|t| u64::from(t.size()) >= n)
            .min_by_key(|t| t.size())
    }

    /// The widest tile's columns (and rows): 128.
    pub(crate) fn widest() -> u32 {
        Tile::ALL.iter().map(|t| t.size()).max().unwrap_or(0)
    }

    /// The narrowest tile's rows (and columns): 16.
    pub(crate) fn narrowest() -> u32 {
        Tile::ALL.iter().map(|t| t.size()).min().unwrap_or(1)
    }

    /// The variant named `name` (see [`Tile::name`]).
    pub fn from_name(name: &str) -> Option<Tile> {
        Tile::ALL.into_iter().find(|t| t.name() == name)
    }

    /// `128x128`, `64x64`, `32x32` or `16x16/k16`.
    pub fn name(self) -> &'static str {
        match self {
            Tile::Large => "128x128",
            Tile::Wide => "64x64",
            Tile::Narrow => "32x32",
            Tile::Sliced => "16x16/k16",
        }
    }
}

#[cfg(test)]
mod software_tests {
    use super::Tile;

    /// A tile covering `n` columns is the chosen one when it is wide
    /// enough, else the narrowest that is.
    #[test]
    fn covering_widens_only_when_needed() {
        assert_eq!(Tile::Sliced.covering(10), Some(Tile::Sliced));
        assert_eq!(Tile::Sliced.covering(16), Some(Tile::Sliced));
        assert_eq!(Tile::Sliced.covering(17), Some(Tile::Narrow));
        assert_eq!(Tile::Narrow.covering(33), Some(Tile::Wide));
        assert_eq!(Tile::Large.covering(5), Some(Tile::Large));
        assert_eq!(Tile::Wide.covering(128), Some(Tile::Large));
        assert_eq!(Tile::Sliced.covering(129), None);
        assert_eq!((Tile::narrowest(), Tile::widest()), (16, 128));
    }

    /// The step shapes of 784-500-10 at batch 64 and a square one, with the
    /// variant measured fastest on lavapipe for each (or one within 20% of
    /// it, docs/PERFORMANCE.md).
    #[test]
    fn software_adapters_take_the_largest_tile_the_output_fills() {
        let cases = [
            ((64, 500, 784), Tile::Wide),
            ((500, 784, 64), Tile::Large),
            ((64, 500, 10), Tile::Wide),
            ((10, 500, 64), Tile::Narrow),
            ((64, 10, 500), Tile::Narrow),
            ((256, 256, 256), Tile::Large),
        ];
        for ((m, n, k), want) in cases {
            assert_eq!(Tile::choose(m, n, k, true), want, "{m}x{n}x{k}");
            assert_eq!(Tile::choose(m, n, k, false), Tile::for_shape(m, n, k));
        }
        // No shape slices k on a software adapter.
        for m in [1, 16, 64, 500, 4096] {
            for n in [1, 10, 500, 4096] {
                assert_ne!(Tile::for_software(m, n, 4096), Tile::Sliced);
            }
        }
    }
}
