//! What a run needs and what the machine has: the memory a training run
//! takes on the host (parameters, gradients, optimizer state, the
//! activations of a batch), estimated from the layer sizes before anything
//! is allocated, against the memory the host has available. A run that
//! cannot fit is refused with both figures and a suggestion, instead of
//! ending in a failed allocation. (The GPU's buffers are checked one by
//! one against the adapter's limits when the GPU backend creates them.)

use std::fmt;

use crate::error::ResourceError;

/// Bytes a run needs, part by part.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    /// What needs it, in words (e.g. `training 784-500-10 on the CPU`).
    pub what: String,
    /// `(part, bytes)`, e.g. `("parameters", 1_590_040)`.
    pub parts: Vec<(&'static str, u64)>,
}

impl Need {
    /// The sum of the parts, in bytes (saturating).
    pub fn total(&self) -> u64 {
        self.parts.iter().fold(0u64, |a, (_, b)| a.saturating_add(*b))
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.said("needs about"))
    }
}

impl Need {
    /// What uses these bytes, as allocated rather than estimated:
    /// `training 784-500-10 on cpu uses 12.3 MB (parameters 1.6 MB, ...)`.
    pub fn used(&self) -> String {
        self.said("uses")
    }

    fn said(&self, verb: &str) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .filter(|(_, b)| *b > 0)
            .map(|(p, b)| format!("{p} {}", bytes(*b)))
            .collect();
        let mut s = format!("{} {verb} {}", self.what, bytes(self.total()));
        if !parts.is_empty() {
            s.push_str(&format!(" ({})", parts.join(", ")));
        }
        s
    }
}

impl Need {
    /// The parts of several needs added up by name, in the order they first
    /// appear, under `what`.
    pub fn sum<'a>(what: String, needs: impl IntoIterator<Item = &'a Need>) -> Need {
        let mut parts: Vec<(&'static str, u64)> = Vec::new();
        for (name, b) in needs.into_iter().flat_map(|n| &n.parts) {
            match parts.iter_mut().find(|(p, _)| p == name) {
                Some((_, t)) => *t = t.saturating_add(*b),
                None => parts.push((name, *b)),
            }
        }
        Need { what, parts }
    }
}

/// The bytes a training backend holds, part by part, as it allocated
/// them (what [`crate::backend::Backend::memory`] reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrainingBytes {
    /// The model's weights and biases.
    pub parameters: u64,
    /// Their gradients, where they are stored apart.
    pub gradients: u64,
    /// The optimizer's state (momentum, Adam's moments).
    pub state: u64,
    /// The batch's activations and their gradients.
    pub activations: u64,
    /// The dataset held for training and evaluation.
    pub data: u64,
    /// Distillation's teachers.
    pub teachers: u64,
    /// Everything else (uniforms, staging, masks, ...).
    pub other: u64,
}

impl TrainingBytes {
    /// The [`Need`] of training a model of `sizes` on `device` (a device's
    /// name, as `Backend::name` gives it).
    pub fn need(self, sizes: &[usize], device: &str) -> Need {
        Need {
            what: format!("training {} on {device}", widths(sizes)),
            parts: vec![
                ("parameters", self.parameters),
                ("gradients", self.gradients),
                ("optimizer state", self.state),
                ("activations", self.activations),
                ("data", self.data),
                ("teachers", self.teachers),
                ("other", self.other),
            ],
        }
    }
}

/// Bytes in words: `1.6 MB`, `12.0 GB`.
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1e12 => format!("{:.1} TB", n / 1e12),
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n} bytes"),
    }
}

/// Parameters of an MLP with these layer widths (inputs first), or `None`
/// when the count overflows.
pub fn parameters(sizes: &[usize]) -> Option<u64> {
    sizes.windows(2).try_fold(0u64, |acc, w| {
        let (i, o) = (w[0] as u64, w[1] as u64);
        acc.checked_add(i.checked_mul(o)?.checked_add(o)?)
    })
}

/// The host memory of training an MLP of `sizes` at `batch` rows on the
/// CPU with `state_slots` optimizer tensors per parameter tensor: the
/// parameters, their gradients and optimizer state (4 bytes each), and per
/// layer the batch's pre-activations, activations and their gradients.
pub fn cpu_training(sizes: &[usize], batch: usize, state_slots: usize) -> Need {
    let p = parameters(sizes).unwrap_or(u64::MAX);
    let f32s = |n: u64| n.saturating_mul(4);
    let units = sizes.iter().fold(0u64, |a, &s| a.saturating_add(s as u64));
    let activations = f32s(units.saturating_mul(batch as u64).saturating_mul(3));
    Need {
        what: format!("training {} on the CPU", widths(sizes)),
        parts: vec![
            ("parameters", f32s(p)),
            ("gradients", f32s(p)),
            ("optimizer state", f32s(p).saturating_mul(state_slots as u64)),
            ("activations", activations),
        ],
    }
}

/// The host memory of training an MLP of `sizes` on a GPU: the model
/// itself and one copy read back from the device.
pub fn gpu_training_host(sizes: &[usize]) -> Need {
    let p = parameters(sizes).unwrap_or(u64::MAX);
    Need {
        what: format!("training {} on a GPU", widths(sizes)),
        parts: vec![("parameters and a read-back copy", p.saturating_mul(8))],
    }
}

/// Layer widths joined by `-`: `784-500-10`.
pub fn widths(sizes: &[usize]) -> String {
    sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("-")
}

/// Memory the host can give a new allocation without swapping, in bytes:
/// `MemAvailable` of /proc/meminfo (Linux); `None` where unknown.
pub fn host_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_available(&text)
}

/// `MemAvailable` (in kB) of a /proc/meminfo text, in bytes.
fn meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Refuse `need` when it exceeds `available` bytes (`None`: unknown, so
/// only needs that no machine could hold are refused, those beyond 2^48
/// bytes); `suggestion` says what to change.
pub fn check(need: &Need, available: Option<u64>, suggestion: &str) -> Result<(), ResourceError> {
    let total = need.total();
    let limit = available.unwrap_or(1 << 48);
    if total <= limit {
        return Ok(());
    }
    Err(ResourceError {
        need: need.to_string(),
        available: match available {
            Some(a) => format!("the host has {} available", bytes(a)),
            None => "no machine has that much".into(),
        },
        suggestion: suggestion.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_count_weights_and_biases() {
        assert_eq!(parameters(&[784, 500, 10]), Some(784 * 500 + 500 + 500 * 10 + 10));
        assert_eq!(parameters(&[3]), Some(0));
        assert_eq!(parameters(&[usize::MAX, usize::MAX]), None);
    }

    #[test]
    fn cpu_training_adds_its_parts() {
        // 2-3-2: 9 + 8 = 17 parameters; 7 units, batch 4.
        let n = cpu_training(&[2, 3, 2], 4, 2);
        let p = 17 * 4;
        assert_eq!(n.total(), p + p + 2 * p + 7 * 4 * 3 * 4);
        assert!(
            n.to_string().starts_with("training 2-3-2 on the CPU needs about"),
            "{n}"
        );
    }

    #[test]
    fn meminfo_is_read_in_kilobytes() {
        let t = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   21000000 kB\n";
        assert_eq!(meminfo_available(t), Some(21_000_000 * 1024));
        assert_eq!(meminfo_available("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn check_refuses_with_both_figures() {
        let n = cpu_training(&[784, 1_000_000, 10], 64, 2);
        let e = check(&n, Some(8_000_000_000), "use narrower --hidden")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs about") && e.contains("8.0 GB available") && e.contains("narrower"),
            "{e}"
        );
        assert!(check(&cpu_training(&[784, 500, 10], 64, 2), Some(8_000_000_000), "").is_ok());
        // Unknown availability: only the impossible is refused.
        assert!(check(&cpu_training(&[784, 100_000, 10], 64, 2), None, "").is_ok());
        assert!(check(&cpu_training(&[784, 300_000_000_000, 10], 64, 2), None, "").is_err());
    }
}
