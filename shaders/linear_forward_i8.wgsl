// The int8 linear layer, twin of linear_forward_i8 in src/compress/quant.rs:
//
//     acc[i, o] = sum_k xq[i, k] * w[o, k]                       (exact, i32)
//     y[i, o]   = acc * (x_scale[i] * w_scale[o]) + bias[o]      (ReLU if params.relu)
//
// Both operands are int8 packed four to a u32 (PackedI8Linear::packed_u32
// for the weights, quantize_rows_i8 for the activations) in rows of
// `words` words, a multiple of 16 (rows are padded with zeros to 64 bytes),
// so the k loop needs no bounds checks. `dot4_i8` is prepended by the host:
// WGSL's dot4I8Packed where the compiler has the packed_4x8_integer_dot_product
// extension (one instruction on GPUs with integer dot products), else a
// sign-extending unpack and four multiply-adds; both give the exact sum.
//
// Tiling: a workgroup of 8 x 8 threads computes 32 rows x 32 outputs, each
// thread 4 x 4 of them strided by 8; every k step stages 16 words (64
// values) of 32 rows and 32 weight rows in workgroup memory, transposed so
// that threads of a row of the workgroup read neighbouring words. Rows and
// outputs past the end load as zero and are never stored. Tiles are folded
// over x and y (wid.x + wid.y * nwg.x).

const TS: u32 = 8u;
const BM: u32 = 32u;
const BKW: u32 = 16u;

// LinearI8Params in src/gpu/uniforms.rs.
struct LinearI8 {
    rows: u32,
    outputs: u32,
    words: u32,
    ldy: u32,
    relu: u32,
    tiles_n: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> params: LinearI8;
@group(0) @binding(1) var<storage, read> xq: array<u32>;
@group(0) @binding(2) var<storage, read> x_scale: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<u32>;
@group(0) @binding(4) var<storage, read> w_scale: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

var<workgroup> tile_x: array<u32, BKW * BM>; // [word][row]
var<workgroup> tile_w: array<u32, BKW * BM>; // [word][output]

@compute @workgroup_size(8, 8)
fn linear_forward_i8(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let tile = wid.x + wid.y * nwg.x;
    let row0 = (tile / params.tiles_n) * BM;
    let out0 = (tile % params.tiles_n) * BM;
    // The surplus of a folded grid; uniform across the workgroup.
    if row0 >= params.rows {
        return;
    }
    let tx = t % TS;
    let ty = t / TS;
    var acc: array<vec4<i32>, 4>;
    for (var k0 = 0u; k0 < params.words; k0 += BKW) {
        // Consecutive threads read consecutive words of a row.
        for (var e = t; e < BM * BKW; e += TS * TS) {
            let p = e % BKW;
            let i = e / BKW;
            var xv = 0u;
            if row0 + i < params.rows {
                xv = xq[(row0 + i) * params.words + k0 + p];
            }
            tile_x[p * BM + i] = xv;
            var wv = 0u;
            if out0 + i < params.outputs {
                wv = w[(out0 + i) * params.words + k0 + p];
            }
            tile_w[p * BM + i] = wv;
        }
        workgroupBarrier();
        for (var p = 0u; p < BKW; p++) {
            let wv = vec4<u32>(
                tile_w[p * BM + tx],
                tile_w[p * BM + tx + TS],
                tile_w[p * BM + tx + 2u * TS],
                tile_w[p * BM + tx + 3u * TS],
            );
            for (var r = 0u; r < 4u; r++) {
                let xv = tile_x[p * BM + ty + TS * r];
                acc[r] += vec4<i32>(dot4_i8(xv, wv.x), dot4_i8(xv, wv.y), dot4_i8(xv, wv.z), dot4_i8(xv, wv.w));
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let i = row0 + ty + TS * r;
        if i >= params.rows {
            continue;
        }
        for (var q = 0u; q < 4u; q++) {
            let o = out0 + tx + TS * q;
            if o >= params.outputs {
                continue;
            }
            var v = f32(acc[r][q]) * (x_scale[i] * w_scale[o]) + bias[o];
            if params.relu != 0u {
                v = max(v, 0.0);
            }
            y[i * params.ldy + o] = v;
        }
    }
}
