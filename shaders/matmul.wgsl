// The matrix-product family: one register-blocked tiled GEMM,
//
//     C[i, j] = epilogue( sum over p of A(i, p) * B(p, j) ),   A: m x k, B: k x n,
//
// and one entry point per CPU twin in src/cpu/kernels.rs, each fixing the
// epilogue:
//
//     matmul_nn, matmul_nt, matmul_tn   C = A B                  (plain store)
//     linear_forward                    C = A B + bias, ReLU if FLAG_RELU
//     backprop_input                    C = (A B) * (aux > 0)     (ReLU mask)
//     weight_update                     C -= lr * A B            (SGD in place)
//
// weight_update can also update the bias in the same pass (FLAG_BIAS): the
// bias gradient is the column sum of dY, which is dY^T times a column of
// ones, so B gets an extra column of ones (j == n) whose result goes to
// bias_out instead of C. With FLAG_MASK the updated weights are multiplied
// by the pruning mask in aux, so pruned weights stay exactly zero.
//
// How each operand is stored (which one is transposed) reaches the kernel
// as strides, so one body serves every layout: A(i, p) lives at
// a[i * a_rs + p * a_cs] and B(p, j) at b[p * b_rs + j * b_cs]. An operand
// may instead be the resident dataset: row r of the batch is example
// index[index_off + r] (or index_off + r when not gathering), stored as f32
// or as bytes packed four to a u32, and scaled by scale/offset on the fly.
// That is how the first layer reads its input without a separate gather.
//
// Tiling: a workgroup of TX x TY threads computes a 4 TY x 4 TX block of C;
// each thread owns a 4 x 4 sub-block held in registers, strided by TX (TY)
// so that neighbouring threads touch neighbouring shared-memory words and
// columns of C. The k loop stages 4 TY x 16 of A and 16 x 4 TX of B in
// workgroup memory. TX and TY are pipeline constants: 16 x 16 (64 x 64
// tiles, 8 KiB of workgroup memory) for large products, 8 x 8 (32 x 32
// tiles) for the skinny ones of small batches, which would otherwise leave
// most of a large GPU idle. Out-of-range elements load as zero and are
// never stored, so no shape needs to be a tile multiple.
//
// The grid is folded: the host may spread the tiles over x and y when there
// are more than a dimension allows, and the tile index is linearised here.

override TX: u32 = 16u;
override TY: u32 = 16u;
const BK: u32 = 16u;

// Where an operand's values come from.
const SRC_BUFFER: u32 = 0u;
const SRC_DATA_F32: u32 = 1u;
const SRC_DATA_U8: u32 = 2u;

const EPI_STORE: u32 = 0u;
const EPI_BIAS: u32 = 1u;
const EPI_MASK: u32 = 2u;
const EPI_SGD: u32 = 3u;

const FLAG_RELU: u32 = 1u;
const FLAG_BIAS: u32 = 2u;
const FLAG_MASK: u32 = 4u;

// Static shape and layout of one dispatch (GemmParams in src/gpu/kernels.rs).
struct Gemm {
    m: u32,
    n: u32,
    k: u32,
    tiles_n: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
    a_src: u32,
    b_src: u32,
    ldc: u32,
    flags: u32,
    dim: u32,
    gather: u32,
    scale: f32,
    offset: f32,
    // Columns of B: n, plus the column of ones with FLAG_BIAS.
    n_ext: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

// What changes from one training step to the next (StepParams), bound with
// a dynamic offset so that many steps share one bind group.
struct Step {
    index_off: u32,
    slot: u32,
    lr: f32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> params: Gemm;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
// Bias (EPI_BIAS) or the mask source laid out like C (EPI_MASK).
@group(0) @binding(4) var<storage, read> aux: array<f32>;
@group(0) @binding(5) var<storage, read> data: array<u32>;
@group(0) @binding(6) var<storage, read> index: array<u32>;
@group(0) @binding(7) var<storage, read_write> c: array<f32>;
// The bias weight_update updates with FLAG_BIAS.
@group(0) @binding(8) var<storage, read_write> bias_out: array<f32>;

var<workgroup> tile_a: array<f32, BK * 4u * TY>; // [BK][BM]
var<workgroup> tile_b: array<f32, BK * 4u * TX>; // [BK][BN]

// Value (row, col) of the preprocessed input batch, read from the dataset.
fn input_value(src: u32, row: u32, col: u32) -> f32 {
    var example = step.index_off + row;
    if params.gather != 0u {
        example = index[example];
    }
    let at = example * params.dim + col;
    var raw: f32;
    if src == SRC_DATA_U8 {
        raw = f32((data[at >> 2u] >> ((at & 3u) * 8u)) & 0xffu);
    } else {
        raw = bitcast<f32>(data[at]);
    }
    return raw * params.scale + params.offset;
}

fn load_a(i: u32, p: u32) -> f32 {
    if i >= params.m || p >= params.k {
        return 0.0;
    }
    if params.a_src == SRC_BUFFER {
        return a[i * params.a_rs + p * params.a_cs];
    }
    return input_value(params.a_src, i, p);
}

fn load_b(p: u32, j: u32) -> f32 {
    if p >= params.k || j >= params.n_ext {
        return 0.0;
    }
    if j >= params.n {
        return 1.0; // the bias column (FLAG_BIAS)
    }
    if params.b_src == SRC_BUFFER {
        return b[p * params.b_rs + j * params.b_cs];
    }
    return input_value(params.b_src, p, j);
}

fn gemm(wid: vec3<u32>, nwg: vec3<u32>, t: u32, epilogue: u32) {
    let bm = 4u * TY;
    let bn = 4u * TX;
    let threads = TX * TY;
    let tile = wid.x + wid.y * nwg.x;
    let row0 = (tile / params.tiles_n) * bm;
    let col0 = (tile % params.tiles_n) * bn;
    let tx = t % TX;
    let ty = t / TX;
    // Let consecutive threads walk the operand's contiguous dimension, so
    // that global loads coalesce whichever way it is stored.
    let a_k_fast = params.a_src != SRC_BUFFER || params.a_cs == 1u;
    let b_n_fast = params.b_src != SRC_BUFFER || params.b_cs == 1u;

    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < params.k; k0 += BK) {
        for (var e = t; e < bm * BK; e += threads) {
            var i: u32;
            var p: u32;
            if a_k_fast {
                p = e % BK;
                i = e / BK;
            } else {
                i = e % bm;
                p = e / bm;
            }
            tile_a[p * bm + i] = load_a(row0 + i, k0 + p);
        }
        for (var e = t; e < bn * BK; e += threads) {
            var j: u32;
            var p: u32;
            if b_n_fast {
                j = e % bn;
                p = e / bn;
            } else {
                p = e % BK;
                j = e / BK;
            }
            tile_b[p * bn + j] = load_b(k0 + p, col0 + j);
        }
        workgroupBarrier();
        for (var p = 0u; p < BK; p++) {
            let bv = vec4<f32>(
                tile_b[p * bn + tx],
                tile_b[p * bn + tx + TX],
                tile_b[p * bn + tx + 2u * TX],
                tile_b[p * bn + tx + 3u * TX],
            );
            for (var r = 0u; r < 4u; r++) {
                acc[r] += tile_a[p * bm + ty + TY * r] * bv;
            }
        }
        workgroupBarrier();
    }

    for (var r = 0u; r < 4u; r++) {
        let i = row0 + ty + TY * r;
        if i >= params.m {
            continue;
        }
        for (var q = 0u; q < 4u; q++) {
            let j = col0 + tx + TX * q;
            if j >= params.n_ext {
                continue;
            }
            let at = i * params.ldc + j;
            var v = acc[r][q];
            switch epilogue {
                case EPI_BIAS: {
                    v += aux[j];
                    if (params.flags & FLAG_RELU) != 0u {
                        v = max(v, 0.0);
                    }
                    c[at] = v;
                }
                case EPI_MASK: {
                    c[at] = select(v, 0.0, aux[at] <= 0.0);
                }
                case EPI_SGD: {
                    if j == params.n {
                        bias_out[i] = bias_out[i] - step.lr * v;
                    } else {
                        var w = c[at] - step.lr * v;
                        if (params.flags & FLAG_MASK) != 0u {
                            w *= aux[at];
                        }
                        c[at] = w;
                    }
                }
                default: {
                    c[at] = v;
                }
            }
        }
    }
}

@compute @workgroup_size(TX, TY)
fn matmul_nn(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    gemm(wid, nwg, t, EPI_STORE);
}

@compute @workgroup_size(TX, TY)
fn matmul_nt(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    gemm(wid, nwg, t, EPI_STORE);
}

@compute @workgroup_size(TX, TY)
fn matmul_tn(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    gemm(wid, nwg, t, EPI_STORE);
}

@compute @workgroup_size(TX, TY)
fn linear_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    gemm(wid, nwg, t, EPI_BIAS);
}

@compute @workgroup_size(TX, TY)
fn backprop_input(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    gemm(wid, nwg, t, EPI_MASK);
}

@compute @workgroup_size(TX, TY)
fn weight_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    gemm(wid, nwg, t, EPI_SGD);
}
