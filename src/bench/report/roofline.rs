//! The roofline of a device: attainable f32 GFLOP/s at an arithmetic
//! intensity, `min(peak, intensity × bandwidth)`, from a small table of
//! public spec-sheet peaks matched by a part of the adapter's name, or from
//! peaks the user gives (`--peak NAME=GFLOPS,GBPS`).

use crate::error::ReportError;

/// Peak f32 throughput and memory bandwidth of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    /// Matched, case-insensitively, as a part of a line's device name.
    pub name: String,
    /// Peak f32 arithmetic (no tensor cores), GFLOP/s.
    pub gflops: f64,
    /// Peak memory bandwidth, GB/s (10^9 bytes a second).
    pub gbps: f64,
}

/// Spec-sheet figures (NVIDIA's data sheets: f32 without tensor cores, and
/// the memory bandwidth), the more specific names first.
pub const KNOWN_PEAKS: &[(&str, f64, f64)] = &[
    ("H200", 67_000.0, 4_800.0),
    ("H100 PCIe", 51_000.0, 2_000.0),
    ("H100", 67_000.0, 3_350.0),
    ("A100-SXM4-80GB", 19_500.0, 2_039.0),
    ("A100", 19_500.0, 1_555.0),
    ("RTX 4090", 82_600.0, 1_008.0),
];

impl Peak {
    /// `NAME=GFLOPS,GBPS`, e.g. `RTX 3080=29770,760`.
    pub fn parse(given: &str) -> Result<Peak, ReportError> {
        let bad = |message: &str| ReportError::Peak {
            given: given.to_string(),
            message: message.to_string(),
        };
        let (name, figures) = given.rsplit_once('=').ok_or_else(|| bad("no `=`"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad("no device name before `=`"));
        }
        let (flops, bw) = figures
            .split_once(',')
            .ok_or_else(|| bad("two figures after `=`, GFLOP/s then GB/s, separated by a comma"))?;
        let number = |s: &str, what: &str| -> Result<f64, ReportError> {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| bad(&format!("{what} `{}` is not a positive number", s.trim())))
        };
        Ok(Peak {
            name: name.to_string(),
            gflops: number(flops, "GFLOP/s")?,
            gbps: number(bw, "GB/s")?,
        })
    }

    /// Attainable GFLOP/s at `intensity` FLOP per byte.
    pub fn attainable(&self, intensity: f64) -> f64 {
        self.gflops.min(intensity * self.gbps)
    }

    /// The intensity where the memory roof meets the arithmetic one.
    pub fn ridge(&self) -> f64 {
        self.gflops / self.gbps
    }
}

/// The peaks a report knows: the user's first, then [`KNOWN_PEAKS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Peaks {
    /// Peaks given by the user (`--peak`), tried first.
    pub user: Vec<Peak>,
}

impl Peaks {
    /// The peak of `device`: the first user peak whose name is part of it,
    /// else the first built-in one.
    pub fn lookup(&self, device: &str) -> Option<Peak> {
        let d = device.to_ascii_lowercase();
        let hit = |name: &str| d.contains(&name.to_ascii_lowercase());
        self.user.iter().find(|p| hit(&p.name)).cloned().or_else(|| {
            KNOWN_PEAKS.iter().find(|(n, _, _)| hit(n)).map(|&(n, f, b)| Peak {
                name: n.to_string(),
                gflops: f,
                gbps: b,
            })
        })
    }
}

/// FLOP per byte of an f32 product `C[m,n] = A[m,k] B[k,n]`: `2mnk` FLOP
/// over the bytes of reading A and B and writing C once each,
/// `4(mk + kn + mn)`.
pub fn intensity(m: usize, n: usize, k: usize) -> f64 {
    let (m, n, k) = (m as f64, n as f64, k as f64);
    2.0 * m * n * k / (4.0 * (m * k + k * n + m * n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FLOP and bytes counted element by element: every output is k
    /// multiply-adds, every element of A, B and C crosses memory once.
    fn counted(m: usize, n: usize, k: usize) -> f64 {
        let mut flop = 0u64;
        for _ in 0..m * n {
            for _ in 0..k {
                flop += 2;
            }
        }
        let mut bytes = 0u64;
        for len in [m * k, k * n, m * n] {
            for _ in 0..len {
                bytes += std::mem::size_of::<f32>() as u64;
            }
        }
        flop as f64 / bytes as f64
    }

    #[test]
    fn intensity_matches_a_count_by_element() {
        for (m, n, k) in [(1, 1, 1), (64, 500, 784), (10, 500, 64), (128, 128, 128), (3, 7, 11)] {
            let (a, b) = (intensity(m, n, k), counted(m, n, k));
            assert!((a - b).abs() <= 1e-12 * b, "{m}x{n}x{k}: {a} against {b}");
        }
        // A square product of side s does s/6 FLOP per byte.
        assert!((intensity(4096, 4096, 4096) - 4096.0 / 6.0).abs() < 1e-9);
    }

    #[test]
    fn attainable_is_the_lower_roof() {
        let p = Peak::parse("Test GPU=1000,100").expect("parses");
        assert_eq!(p.ridge(), 10.0);
        assert_eq!(p.attainable(1.0), 100.0);
        assert_eq!(p.attainable(10.0), 1000.0);
        assert_eq!(p.attainable(50.0), 1000.0);
    }

    #[test]
    fn peaks_are_found_by_part_of_the_name() {
        let peaks = Peaks {
            user: vec![Peak::parse("llvmpipe=100,20").expect("parses")],
        };
        let h200 = peaks.lookup("NVIDIA H200 (Vulkan, DiscreteGpu)").expect("known");
        assert_eq!((h200.gflops, h200.gbps), (67_000.0, 4_800.0));
        let pcie = peaks.lookup("NVIDIA H100 PCIe (Vulkan, DiscreteGpu)").expect("known");
        assert_eq!(pcie.name, "H100 PCIe");
        let sxm = peaks
            .lookup("NVIDIA H100 80GB HBM3 (Vulkan, DiscreteGpu)")
            .expect("known");
        assert_eq!(sxm.name, "H100");
        assert_eq!(
            peaks.lookup("LLVMPIPE (LLVM 15, 256 bits)").map(|p| p.gflops),
            Some(100.0)
        );
        assert_eq!(peaks.lookup("cpu (2 threads)"), None);
    }

    #[test]
    fn bad_peaks_are_refused() {
        for bad in ["H200", "=1,2", "X=1", "X=a,2", "X=1,-2", "X=1,inf"] {
            let e = Peak::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(bad) && e.contains("NAME=GFLOPS,GBPS"), "{e}");
        }
    }
}
