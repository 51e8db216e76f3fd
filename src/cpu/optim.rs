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
    pub lr: f32,
    /// Momentum `mu` (0: the buffer is neither read nor written).
    pub momentum: f32,
    pub nesterov: bool,
    /// L2 weight decay.
    pub weight_decay: f32,
}

/// The scalars of one Adam or AdamW update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamScalars {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// `1 - beta1` and `1 - beta2`, from f64 ([`Adam::complements`]).
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
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
/// [`flushing_subnormals`]).
pub fn sgd_momentum_update(p: &mut [f32], g: &[f32], buf: &mut [f32], s: SgdScalars) {
    assert_eq!(p.len(), g.len());
    if s.momentum != 0.0 {
        assert_eq!(buf.len(), p.len());
    }
    flushing_subnormals(|| sgd_momentum_loop(p, g, buf, s));
}

fn sgd_momentum_loop(p: &mut [f32], g: &[f32], buf: &mut [f32], s: SgdScalars) {
    for i in 0..p.len() {
        let mut d = g[i];
        if s.weight_decay != 0.0 {
            d += s.weight_decay * p[i];
        }
        if s.momentum != 0.0 {
            let b = s.momentum * buf[i] + d;
            buf[i] = b;
            d = if s.nesterov { d + s.momentum * b } else { b };
        }
        p[i] -= s.lr * d;
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
/// [`flushing_subnormals`]).
pub fn adam_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamScalars) {
    assert!(g.len() == p.len() && m.len() == p.len() && v.len() == p.len());
    flushing_subnormals(|| adam_loop(p, g, m, v, s));
}

fn adam_loop(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamScalars) {
    let decay = 1.0 - s.lr * s.weight_decay;
    for i in 0..p.len() {
        let mut d = g[i];
        let mut w = p[i];
        if s.weight_decay != 0.0 {
            if s.decoupled {
                w *= decay;
            } else {
                d += s.weight_decay * w;
            }
        }
        let mi = s.beta1 * m[i] + s.one_minus_beta1 * d;
        let vi = s.beta2 * v[i] + s.one_minus_beta2 * d * d;
        m[i] = mi;
        v[i] = vi;
        p[i] = w - s.step_size * mi / (vi.sqrt() / s.bc2_sqrt + s.eps);
    }
}

/// The gradient buffers and optimizer state of one layer.
#[derive(Debug, Clone, Default)]
pub struct LayerState {
    /// Weight and bias gradients of the current step.
    pub gw: Vec<f32>,
    pub gb: Vec<f32>,
    /// `state_slots` buffers per tensor, weight then bias.
    pub w: Vec<Vec<f32>>,
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
