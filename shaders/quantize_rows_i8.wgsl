// Dynamic int8 quantization of activation rows, twin of quantize_rows_i8 in
// src/compress/quant.rs (preceded there by Preprocess::apply_into when the
// rows are raw inputs):
//
//     v[k]     = x[row, k] * scale + offset          (scale 1, offset 0 past the first layer)
//     x_scale  = max_k |v[k]| / 127                  (0 for an all-zero or non-finite row)
//     q[k]     = clamp(round(v[k] * 127 / max), -127, 127)
//
// WGSL's round() rounds half to even, as f32::round_ties_even on the CPU.
// The bytes go out packed four to a u32, little-endian (byte k % 4 of word
// k / 4), in rows of `words` words; bytes past `inputs` are zero, so the
// padded row is exactly what linear_forward_i8 multiplies with the padded
// weights.
//
// One workgroup per row: a max-reduction in workgroup memory, then every
// thread packs whole words. Rows are folded over x and y like the GEMM
// tiles (wid.x + wid.y * nwg.x) when there are more than a dimension allows.

const THREADS: u32 = 64u;
const QMAX: f32 = 127.0;
// The largest finite f32.
const F32_MAX: f32 = 3.40282347e38;

// QuantParams in src/gpu/uniforms.rs.
struct Quant {
    rows: u32,
    inputs: u32,
    // f32 values between consecutive rows of x.
    x_stride: u32,
    // u32 words per row of xq.
    words: u32,
    scale: f32,
    offset: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Quant;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> xq: array<u32>;
@group(0) @binding(3) var<storage, read_write> x_scale: array<f32>;

var<workgroup> part: array<f32, THREADS>;

fn value(row: u32, k: u32) -> f32 {
    return x[row * params.x_stride + k] * params.scale + params.offset;
}

// One value as the low byte of a u32 (two's complement).
fn quantize(v: f32, inv: f32) -> u32 {
    let q = clamp(round(v * inv), -QMAX, QMAX);
    return bitcast<u32>(i32(q)) & 0xffu;
}

@compute @workgroup_size(64)
fn quantize_rows_i8(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    // Uniform across the workgroup, so no thread is left at a barrier.
    if row >= params.rows {
        return;
    }
    var m = 0.0;
    for (var k = t; k < params.inputs; k += THREADS) {
        m = max(m, abs(value(row, k)));
    }
    part[t] = m;
    for (var width = THREADS / 2u; width > 0u; width /= 2u) {
        workgroupBarrier();
        if t < width {
            part[t] = max(part[t], part[t + width]);
        }
    }
    workgroupBarrier();
    let mx = part[0];
    var sc = 0.0;
    var inv = 0.0;
    if mx > 0.0 && mx <= F32_MAX {
        sc = mx / QMAX;
        inv = QMAX / mx;
    }
    if t == 0u {
        x_scale[row] = sc;
    }
    for (var w = t; w < params.words; w += THREADS) {
        var word = 0u;
        for (var b = 0u; b < 4u; b++) {
            let k = 4u * w + b;
            if k < params.inputs {
                word |= quantize(value(row, k), inv) << (8u * b);
            }
        }
        xq[row * params.words + w] = word;
    }
}
