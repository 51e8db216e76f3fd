// SGD on a bias vector, twin of bias_update in src/cpu/kernels.rs:
//
//     b[j] -= lr * sum over rows of dy[row, j]
//
// One thread per output, summing its column; the rows are few (a batch), so
// the loop is short, and neighbouring threads read neighbouring columns.
// The grid may be folded over x and y when the outputs need more workgroups
// than one dimension allows.

const THREADS: u32 = 64u;

struct Bias {
    rows: u32,
    outputs: u32,
    pad0: u32,
    pad1: u32,
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

@group(0) @binding(0) var<uniform> params: Bias;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> bias: array<f32>;

@compute @workgroup_size(64)
fn bias_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let j = (wid.x + wid.y * nwg.x) * THREADS + t;
    if j >= params.outputs {
        return;
    }
    var sum = 0.0;
    for (var r = 0u; r < params.rows; r++) {
        sum += dy[r * params.outputs + j];
    }
    bias[j] = bias[j] - step.lr * sum;
}
