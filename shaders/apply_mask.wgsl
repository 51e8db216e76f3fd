// Multiply weights by a 0/1 pruning mask, twin of apply_mask in
// src/cpu/kernels.rs, so pruned weights are exactly zero: once when a mask
// is set, then after each of its layer's weight_update while training.
//
// One thread per element; the grid may be folded over x and y.

const THREADS: u32 = 64u;

struct Mask {
    len: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
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

@group(0) @binding(0) var<uniform> params: Mask;
// Unused here; the layout is shared with bias_update.
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> w: array<f32>;

@compute @workgroup_size(64)
fn apply_mask(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * THREADS + t;
    if i >= params.len {
        return;
    }
    w[i] = w[i] * mask[i];
}
