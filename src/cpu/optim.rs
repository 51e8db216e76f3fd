//! The elementwise update kernels of the stateful optimizers (see
//! [`crate::optim::Optimizer`] for the formulas), each the CPU twin of the
//! entry point of the same name in shaders/optim_update.wgsl, and the state
//! the CPU backend keeps for them.
//!
//! Each kernel reads a gradient computed beforehand into a buffer (plain
//! SGD never gets here: it stays fused into the gradient product) and
//! updates one tensor and its state in place, in the order of operations
//! torch.optim's single-tensor implementations use.

use crate::optim::{Adam, Optimizer, Sgd};

/// Run `f` with subnormal f32 inputs and results flushed to zero (the
/// FTZ and DAZ bits of x86-64's MXCSR, restored afterwards), as GPUs
/// run these kernels. State that decays geometrically (a momentum buffer
/// or Adam's moments of a weight whose gradient is zero, `g * g` of a tiny
/// gradient) reaches subnormal values, each of which costs the CPU about a
/// hundred cycles per operation: a 784x500 Adam update went from 0.4 ms to
/// 30 ms. Flushing changes only values below 1.2e-38. Elsewhere `f` runs
/// as is.
fn flushing_subnormals<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)]
    {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        const FTZ_DAZ: u32 = 0x8040;
        // SAFETY: SSE is part of x86-64; setting FTZ and DAZ changes only
        // how subnormal floats round, and the old mode is put back before
        // returning (`f` is a loop over checked slices that cannot unwind).
        let old = unsafe { _mm_getcsr() };
        unsafe { _mm_setcsr(old | FTZ_DAZ) };
        let r = f();
        unsafe { _mm_setcsr(old) };
        r
    }
    #[cfg(not(target_arch = "x86_64"))]
    f()
}

/// The scalars of one SGD update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdScalars {
    /// The learning rate of the step.
    pub lr: f32,
    /// Momentum `mu` (0: the buffer is neither read nor written).
    pub momentum: f32,
    /// Nesterov momentum (needs a momentum above 0).
    pub nesterov: bool,
    /// L2 weight decay.
    pub weight_decay: f32,
}

/// The scalars of one Adam or AdamW update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamScalars {
    /// The learning rate of the step.
    pub lr: f32,
    /// The decay of the first moment.
    pub beta1: f32,
    /// The decay of the second moment.
    pub beta2: f32,
    /// `1 - beta1` and `1 - beta2`, from f64 ([`Adam::complements`]).
    pub one_minus_beta1: f32,
    /// `1 - beta2`, from f64.
    pub one_minus_beta2: f32,
    /// Added to the square root of the second moment.
    pub eps: f32,
    /// Weight decay: L2 added to the gradient (Adam), or decoupled (AdamW).
    pub weight_decay: f32,
    /// AdamW: `p *= 1 - lr * wd` before the step, instead of L2.
    pub decoupled: bool,
    /// `lr / (1 - b1^t)`, computed in f64 on the host.
    pub step_size: f32,
    /// `sqrt(1 - b2^t)`, computed in f64 on the host.
    pub bc2_sqrt: f32,
}

impl AdamScalars {
    /// The scalars of step `t` (from 1) at learning rate `lr`.
    pub fn new(a: &Adam, decoupled: bool, lr: f32, t: u64) -> Self {
        let (bc1, bc2) = a.bias_corrections(t);
        let (one_minus_beta1, one_minus_beta2) = a.complements();
        AdamScalars {
            one_minus_beta1,
            one_minus_beta2,
            lr,
            beta1: a.betas.0,
            beta2: a.betas.1,
            eps: a.eps,
            weight_decay: a.weight_decay,
            decoupled,
            step_size: (f64::from(lr) / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
        }
    }
}

/// SGD with momentum, Nesterov momentum and L2 weight decay on one tensor:
///
/// ```text
/// g = g + wd * p;  b = mu * b + g;  g = nesterov ? g + mu * b : b;  p -= lr * g
/// ```
///
/// With `mu == 0`, `buf` is not used (it may be empty). A zeroed buffer
/// makes the first step `b = g`, as torch's first step sets it.
/// Subnormal values are flushed to zero on x86-64 (see
/// `flushing_subnormals`).
pub fn sgd_momentum_update(p: &mut [f32], g: &[f32], buf: &mut [f32], s: SgdScalars) {
    assert_eq!(p.len(), g.len());
    if s.momentum != 0.0 {
        assert_eq!(buf.len(), p.len());
    }
    let buf = if s.momentum != 0.0 { buf } else { &mut [][..] };
    let parts = split(p, g, [buf, &mut []]);
    on_team(&parts, &|p, g, [buf, _]| {
        flushing_subnormals(|| isa::sgd_momentum(p, g, buf, s));
    });
}

/// Elements below which an update runs on the calling thread alone.
const PARALLEL_MIN: usize = 1 << 15;

/// A part of an update: the parameters, the gradient and up to two state
/// buffers (empty when unused) of one contiguous range.
type Part<'a> = std::sync::Mutex<(&'a mut [f32], &'a [f32], [&'a mut [f32]; 2])>;

/// An elementwise update of one part: parameters, gradient, state.
type PartUpdate<'f> = dyn Fn(&mut [f32], &[f32], [&mut [f32]; 2]) + Sync + 'f;

/// Split an update into one contiguous part per thread of the installed
/// team (one part on a single thread or a small tensor). Empty state
/// buffers stay empty in every part.
fn split<'a>(p: &'a mut [f32], g: &'a [f32], state: [&'a mut [f32]; 2]) -> Vec<Part<'a>> {
    let n = p.len();
    let threads = if n < PARALLEL_MIN {
        1
    } else {
        super::team::current_size().max(1)
    };
    // Parts of a multiple of 64 elements, so each vector loop ends aligned.
    let chunk = n.div_ceil(threads).div_ceil(64).max(1) * 64;
    let [s0, s1] = state;
    let mut s0 = Some(s0);
    let mut s1 = Some(s1);
    let mut parts = Vec::with_capacity(threads);
    let (mut p, mut g) = (p, g);
    while !p.is_empty() {
        let take = chunk.min(p.len());
        let (ph, pt) = p.split_at_mut(take);
        let (gh, gt) = g.split_at(take);
        let cut = |s: &mut Option<&'a mut [f32]>| -> &'a mut [f32] {
            let whole = s.take().unwrap_or_default();
            if whole.is_empty() {
                *s = Some(whole);
                return &mut [];
            }
            let (h, t) = whole.split_at_mut(take);
            *s = Some(t);
            h
        };
        let a = cut(&mut s0);
        let b = cut(&mut s1);
        parts.push(std::sync::Mutex::new((ph, gh, [a, b])));
        p = pt;
        g = gt;
    }
    parts
}

/// Run `f` on every part, over the installed team when there is more than
/// one. Each part is an independent elementwise update, so the result does
/// not depend on the split.
fn on_team(parts: &[Part<'_>], f: &PartUpdate<'_>) {
    let one = |i: usize| {
        // A part is locked exactly once, by the unit of its index.
        if let Ok(mut guard) = parts[i].lock() {
            let (p, g, [a, b]) = &mut *guard;
            f(p, g, [a, b]);
        }
    };
    if parts.len() < 2 {
        return (0..parts.len()).for_each(one);
    }
    super::team::with_current(|team| match team {
        Some(team) => team.run(parts.len(), &one),
        None => (0..parts.len()).for_each(one),
    });
}

/// The update loops, compiled once for the baseline instruction set and,
/// on x86-64, again for AVX-512 and AVX2, picked at run time. Every variant
/// performs the same IEEE operations in the same order per element (no
/// fused multiply-add), so their results are identical bit for bit.
mod isa {
    use super::{AdamScalars, SgdScalars};

    pub fn sgd_momentum(p: &mut [f32], g: &[f32], buf: &mut [f32], s: SgdScalars) {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                return unsafe { sgd_avx512(p, g, buf, s) };
            }
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                return unsafe { sgd_avx2(p, g, buf, s) };
            }
        }
        super::sgd_momentum_loop(p, g, buf, s)
    }

    pub fn adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamScalars) {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                return unsafe { adam_avx512(p, g, m, v, s) };
            }
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                return unsafe { adam_avx2(p, g, m, v, s) };
            }
        }
        super::adam_loop(p, g, m, v, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn sgd_avx512(p: &mut [f32], g: &[f32], buf: &mut [f32], s: SgdScalars) {
        super::sgd_momentum_loop(p, g, buf, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn sgd_avx2(p: &mut [f32], g: &[f32], buf: &mut [f32], s: SgdScalars) {
        super::sgd_momentum_loop(p, g, buf, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn adam_avx512(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamScalars) {
        super::adam_loop(p, g, m, v, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn adam_avx2(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamScalars) {
        super::adam_loop(p, g, m, v, s)
    }
}

/// The SGD loop, one branch-free variant per combination of the
/// options, so that each vectorizes.
#[inline(always)]
fn sgd_momentum_loop(p: &mut [f32], g: &[f32], buf: &mut [f32], s: SgdScalars) {
    match (s.weight_decay != 0.0, s.momentum != 0.0, s.nesterov) {
        (false, false, _) => sgd_kernel::<false, false, false>(p, g, buf, s),
        (true, false, _) => sgd_kernel::<true, false, false>(p, g, buf, s),
        (false, true, false) => sgd_kernel::<false, true, false>(p, g, buf, s),
        (false, true, true) => sgd_kernel::<false, true, true>(p, g, buf, s),
        (true, true, false) => sgd_kernel::<true, true, false>(p, g, buf, s),
        (true, true, true) => sgd_kernel::<true, true, true>(p, g, buf, s),
    }
}

#[inline(always)]
fn sgd_kernel<const WD: bool, const MOM: bool, const NESTEROV: bool>(
    p: &mut [f32],
    g: &[f32],
    buf: &mut [f32],
    s: SgdScalars,
) {
    let decayed = |d: f32, p: f32| if WD { d + s.weight_decay * p } else { d };
    if MOM {
        for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
            let d = decayed(g, *p);
            let nb = s.momentum * *b + d;
            *b = nb;
            let d = if NESTEROV { d + s.momentum * nb } else { nb };
            *p -= s.lr * d;
        }
    } else {
        for (p, &g) in p.iter_mut().zip(g) {
            *p -= s.lr * decayed(g, *p);
        }
    }
}

/// Adam or AdamW on one tensor with moments `m` and `v`:
///
/// ```text
/// AdamW: p = p * (1 - lr * wd);   Adam: g = g + wd * p
/// m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g * g   (1 - b from f64)
/// p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)
/// ```
///
/// Subnormal values are flushed to zero on x86-64 (see
/// `flushing_subnormals`).
pub fn adam_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamScalars) {
    assert!(g.len() == p.len() && m.len() == p.len() && v.len() == p.len());
    let parts = split(p, g, [m, v]);
    on_team(&parts, &|p, g, [m, v]| {
        flushing_subnormals(|| isa::adam(p, g, m, v, s));
    });
}

/// The Adam loop, one branch-free variant per kind of weight decay, so
/// that each vectorizes.
#[inline(always)]
fn adam_loop(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamScalars) {
    match (s.weight_decay != 0.0, s.decoupled) {
        (false, _) => adam_kernel::<false, false>(p, g, m, v, s),
        (true, false) => adam_kernel::<true, false>(p, g, m, v, s),
        (true, true) => adam_kernel::<true, true>(p, g, m, v, s),
    }
}

#[inline(always)]
fn adam_kernel<const WD: bool, const DECOUPLED: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: AdamScalars,
) {
    let decay = 1.0 - s.lr * s.weight_decay;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let mut d = g;
        let mut w = *p;
        if WD {
            if DECOUPLED {
                w *= decay;
            } else {
                d += s.weight_decay * w;
            }
        }
        let mi = s.beta1 * *m + s.one_minus_beta1 * d;
        let vi = s.beta2 * *v + s.one_minus_beta2 * d * d;
        *m = mi;
        *v = vi;
        *p = w - s.step_size * mi / (vi.sqrt() / s.bc2_sqrt + s.eps);
    }
}

/// The gradient buffers and optimizer state of one layer.
#[derive(Debug, Clone, Default)]
pub struct LayerState {
    /// Weight and bias gradients of the current step.
    pub gw: Vec<f32>,
    /// The bias gradients of the current step.
    pub gb: Vec<f32>,
    /// `state_slots` buffers per tensor, weight then bias.
    pub w: Vec<Vec<f32>>,
    /// `state_slots` buffers of the bias.
    pub b: Vec<Vec<f32>>,
}

impl LayerState {
    /// Zeroed buffers for a layer of `weights` weights and `biases` biases.
    pub fn new(optimizer: &Optimizer, weights: usize, biases: usize) -> Self {
        let slots = optimizer.state_slots();
        LayerState {
            gw: vec![0.0; weights],
            gb: vec![0.0; biases],
            w: vec![vec![0.0; weights]; slots],
            b: vec![vec![0.0; biases]; slots],
        }
    }
}

/// Apply `optimizer`'s update at step `t` (from 1) to a tensor `p` with
/// gradient `g` and state `state`.
pub fn update_tensor(optimizer: &Optimizer, lr: f32, t: u64, p: &mut [f32], g: &[f32], state: &mut [Vec<f32>]) {
    match optimizer {
        Optimizer::Sgd(s) => {
            let Sgd {
                momentum,
                nesterov,
                weight_decay,
            } = *s;
            let scalars = SgdScalars {
                lr,
                momentum,
                nesterov,
                weight_decay,
            };
            let buf = state.first_mut().map(Vec::as_mut_slice).unwrap_or_default();
            sgd_momentum_update(p, g, buf, scalars);
        }
        Optimizer::Adam(a) | Optimizer::AdamW(a) => {
            let s = AdamScalars::new(a, matches!(optimizer, Optimizer::AdamW(_)), lr, t);
            if let [m, v] = state {
                adam_update(p, g, m, v, s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::team::Team;
    use std::time::Duration;

    /// Deterministic values with a spread of magnitudes and signs,
    /// including zeros and values that decay to subnormals.
    fn values(n: usize, salt: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = (i ^ salt)
                    .wrapping_mul(0x9E37_79B9)
                    .rotate_left(13)
                    .wrapping_mul(0x85EB_CA6B);
                match h % 7 {
                    0 => 0.0,
                    1 => 1e-39,
                    _ => ((h >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 10f32.powi((h % 5) as i32 - 3),
                }
            })
            .collect()
    }

    /// The team-split, vectorized updates against the scalar loop run on
    /// one thread, bit for bit, on sizes around the split and vector
    /// boundaries.
    #[test]
    fn split_and_vectorized_updates_match_the_scalar_loop() {
        let mut team = Team::new(3, Duration::ZERO);
        let adam = Adam {
            weight_decay: 0.01,
            ..Adam::default()
        };
        for n in [
            1,
            15,
            17,
            64,
            65,
            PARALLEL_MIN - 1,
            PARALLEL_MIN + 77,
            3 * PARALLEL_MIN + 5,
        ] {
            let g = values(n, 1);
            let p0 = values(n, 2);
            let s0 = values(n, 3);
            let v0: Vec<f32> = values(n, 4).iter().map(|x| x * x).collect();
            for decoupled in [false, true] {
                let s = AdamScalars::new(&adam, decoupled, 0.01, 3);
                let (mut p, mut m, mut v) = (p0.clone(), s0.clone(), v0.clone());
                team.install(|| adam_update(&mut p, &g, &mut m, &mut v, s));
                let (mut pr, mut mr, mut vr) = (p0.clone(), s0.clone(), v0.clone());
                flushing_subnormals(|| adam_loop(&mut pr, &g, &mut mr, &mut vr, s));
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&p), bits(&pr), "adam p, n {n}, decoupled {decoupled}");
                assert_eq!(bits(&m), bits(&mr), "adam m, n {n}");
                assert_eq!(bits(&v), bits(&vr), "adam v, n {n}");
            }
            for (momentum, nesterov) in [(0.0, false), (0.9, false), (0.9, true)] {
                let s = SgdScalars {
                    lr: 0.1,
                    momentum,
                    nesterov,
                    weight_decay: 1e-4,
                };
                let (mut p, mut b) = (p0.clone(), s0.clone());
                team.install(|| sgd_momentum_update(&mut p, &g, &mut b, s));
                let (mut pr, mut br) = (p0.clone(), s0.clone());
                flushing_subnormals(|| sgd_momentum_loop(&mut pr, &g, &mut br, s));
                assert!(
                    p.iter().zip(&pr).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "sgd p, n {n}"
                );
                assert!(
                    b.iter().zip(&br).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "sgd buf, n {n}"
                );
            }
        }
    }
}
