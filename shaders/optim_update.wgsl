// The elementwise updates of the stateful optimizers, twins of the
// functions of the same names in src/cpu/optim.rs (the formulas are
// torch.optim's; see crate::optim::Optimizer), one thread per element of a
// parameter tensor whose gradient an earlier dispatch wrote to `grad`:
//
//     sgd_momentum_update   g = g + wd p;  b = mu b + g;
//                           g = nesterov ? g + mu b : b;  p -= lr g
//                           (mu = 0: no buffer; s0 and s1 are unused)
//     adam_update           AdamW: p = p (1 - lr wd);  Adam: g = g + wd p
//                           m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g g
//                           p -= step_size m / (sqrt(v) / bc2_sqrt + eps)
//
// Each reads the gradient as g = grad[i] * clip[0]: clip_grad_norm.wgsl's
// coefficient when the step clips, else a buffer holding 1 (exact).
//
// The per-step scalars (lr, and Adam's step_size = lr / (1 - b1^t) and
// bc2_sqrt = sqrt(1 - b2^t), computed in f64 on the host) come from the
// step ring; the rest is fixed for the run. The grid may be folded over x
// and y when the tensor needs more workgroups than one dimension allows.

const THREADS: u32 = 64u;

struct Optim {
    len: u32,
    // SGD: 1 for Nesterov momentum. Adam: 1 for decoupled weight decay.
    variant: u32,
    // SGD: the momentum. Adam: beta1.
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    // Adam: 1 - beta1 and 1 - beta2, from f64 on the host (as torch).
    one_minus_beta1: f32,
    one_minus_beta2: f32,
}

struct Step {
    index_off: u32,
    slot: u32,
    lr: f32,
    step_size: f32,
    bc2_sqrt: f32,
    draw_step: u32,
    // The first row's position in the whole batch (a data-parallel shard), for the draws.
    draw_row0: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Optim;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> p: array<f32>;
// SGD: the momentum buffer. Adam: m.
@group(0) @binding(4) var<storage, read_write> s0: array<f32>;
// Adam: v.
@group(0) @binding(5) var<storage, read_write> s1: array<f32>;
// clip[0] scales the gradient.
@group(0) @binding(6) var<storage, read> clip: array<f32>;

fn element(wid: vec3<u32>, nwg: vec3<u32>, t: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * THREADS + t;
}

@compute @workgroup_size(64)
fn sgd_momentum_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let i = element(wid, nwg, t);
    if i >= params.len {
        return;
    }
    let mu = params.beta1;
    let wd = params.weight_decay;
    var d = grad[i] * clip[0];
    if wd != 0.0 {
        d += wd * p[i];
    }
    if mu != 0.0 {
        let b = mu * s0[i] + d;
        s0[i] = b;
        d = select(b, d + mu * b, params.variant != 0u);
    }
    p[i] = p[i] - step.lr * d;
}

@compute @workgroup_size(64)
fn adam_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let i = element(wid, nwg, t);
    if i >= params.len {
        return;
    }
    let wd = params.weight_decay;
    var d = grad[i] * clip[0];
    var w = p[i];
    if wd != 0.0 {
        if params.variant != 0u {
            w *= 1.0 - step.lr * wd;
        } else {
            d += wd * w;
        }
    }
    let b1 = params.beta1;
    let b2 = params.beta2;
    let m = b1 * s0[i] + params.one_minus_beta1 * d;
    let v = b2 * s1[i] + params.one_minus_beta2 * d * d;
    s0[i] = m;
    s1[i] = v;
    p[i] = w - step.step_size * m / (sqrt(v) / step.bc2_sqrt + params.eps);
}
