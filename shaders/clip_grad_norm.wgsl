// The global gradient norm of a training step and torch's clip_grad_norm_
// coefficient, twins of grad_sq_sum and clip_coef in src/cpu/kernels.rs:
//
//     grad_sq_partial   one dispatch per layer: the squares of its weight
//                       gradient x and bias gradient y (as one vector of
//                       len_x + len_y elements), CHUNK elements per
//                       workgroup, each workgroup's sum into out[base + wg]
//     clip_coef         one workgroup: the `count` partial sums in x, then
//                       out[0] = min(1, max_norm / (sqrt(sum) + 1e-6)) and
//                       out[1] = sqrt(sum), the norm
//
// Every sum runs in a fixed order (a thread's elements in turn, then a
// tree over the workgroup, then the partials strided over the threads and
// another tree), so a step's coefficient is the same on every run. The
// optimizer updates read out[0] and scale each gradient by it: nothing
// goes back to the host. The partial grid may be folded over x and y.

const THREADS: u32 = 256u;
// Elements per thread of grad_sq_partial; CHUNK in src/gpu/clip.rs.
const PER_THREAD: u32 = 8u;
const CHUNK: u32 = THREADS * PER_THREAD;

struct Clip {
    len_x: u32,
    len_y: u32,
    // grad_sq_partial: where this layer's partial sums start in out.
    base: u32,
    // clip_coef: the number of partial sums in x.
    count: u32,
    max_norm: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Clip;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> part: array<f32, THREADS>;

// Sum part over the workgroup; the total lands in element 0.
fn reduce(t: u32) {
    for (var width = THREADS / 2u; width > 0u; width /= 2u) {
        workgroupBarrier();
        if t < width {
            part[t] += part[t + width];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn grad_sq_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let g = wid.x + wid.y * nwg.x;
    let total = params.len_x + params.len_y;
    var acc = 0.0;
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = g * CHUNK + k * THREADS + t;
        if i < params.len_x {
            let v = x[i];
            acc += v * v;
        } else if i < total {
            let v = y[i - params.len_x];
            acc += v * v;
        }
    }
    part[t] = acc;
    reduce(t);
    // The surplus workgroups of a folded grid write nothing.
    if t == 0u && g * CHUNK < total {
        out[params.base + g] = part[0];
    }
}

@compute @workgroup_size(256)
fn clip_coef(@builtin(local_invocation_index) t: u32) {
    var acc = 0.0;
    for (var i = t; i < params.count; i += THREADS) {
        acc += x[i];
    }
    part[t] = acc;
    reduce(t);
    if t == 0u {
        let norm = sqrt(part[0]);
        let coef = params.max_norm / (norm + 1e-6);
        out[0] = select(1.0, coef, coef < 1.0);
        out[1] = norm;
    }
}
