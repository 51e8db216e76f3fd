// The matrix-product family: one register-blocked tiled GEMM,
//
//     C[i, j] = epilogue( sum over p of A(i, p) * B(p, j) ),   A: m x k, B: k x n,
//
// and one entry point per CPU twin in src/cpu/kernels.rs, each fixing the
// epilogue:
//
//     matmul_nn, matmul_nt, matmul_tn   C = A B                  (plain store)
//     linear_forward                    C = A B + bias, ReLU if FLAG_RELU
//     backprop_input                    C = (A B) * (aux > 0)     (ReLU mask),
//                                       times the dropout scale with FLAG_DROPOUT
//     linear_forward with FLAG_DROPOUT  inverted dropout after the ReLU, from
//                                       the hash of draw.wgsl (prepended)
//     weight_update                     C -= lr * A B            (SGD in place)
//                                       C = A B with FLAG_GRAD   (the gradient)
//     linear_softmax_xent               C = A B + bias (the logits), then
//                                       softmax_xent on C's rows (below)
//
// weight_update can also update the bias in the same pass (FLAG_BIAS): the
// bias gradient is the column sum of dY, which is dY^T times a column of
// ones, so B gets an extra column of ones (j == n) whose result goes to
// out2 instead of C. That is the contract of its CPU twin; a pruning
// mask is applied afterwards by apply_mask.wgsl.
//
// How each operand is stored (which one is transposed) reaches the kernel
// as strides, so one body serves every layout: A(i, p) lives at
// a[i * a_rs + p * a_cs] and B(p, j) at b[p * b_rs + j * b_cs]. An operand
// may instead be the resident dataset: row r of the batch is example
// index[index_off + r] (or index_off + r when not gathering), stored as f32
// or as bytes packed four to a u32, and scaled by scale/offset on the fly.
// That is how the first layer reads its input without a separate gather.
//
// Tiling: a slice of TX x TY threads computes a BM x BN block of C,
// BM = 4 GM TY and BN = 4 GN TX. Each thread owns GM x GN sub-blocks of
// 4 x 4, held in registers: rows 4 ty + 4 TY g + r and columns
// 4 tx + 4 TX g + q, so that a thread reads each 4-wide slice of a staged
// operand as one vec4 and the threads of a warp read neighbouring vec4s.
// The k loop stages BK x BM of A and BK x BN of B in workgroup memory
// (rows padded by 4 floats, which spreads the staging stores over the
// banks), and loads the next k step into registers before computing on the
// current one, so global memory latency overlaps the arithmetic.
// Out-of-range elements load as zero and are never stored, so no shape
// needs to be a tile multiple.
//
// A workgroup holds KS slices that split k between them: slice s takes
// the k steps s, s + KS, s + 2 KS, ... of BK each, then the slices add
// their partial sums through workgroup memory and slice 0 runs the
// epilogue. That shortens the chain of dependent k steps KS times for the
// products of small batches, whose outputs are too small to fill a GPU
// with tiles but whose k (784 inputs) is long: there the time goes to the
// latency of each k step, not to arithmetic.
//
// TX, TY, GM, GN, BK and KS are constants the host puts in front of this
// source, one module per tile variant (Tile in src/gpu/tile.rs):
// 128 x 128 tiles (8 x 8 per thread) for large products, 64 x 64 for
// medium ones, 32 x 32 for small ones, and 16 x 16 in 16 k-slices (4-deep
// steps) for small outputs with a long k.
//
// The grid is folded: the host may spread the tiles over x and y when there
// are more than a dimension allows, and the tile index is linearised here.
//
// `operand(v)`, also in front of this source, is what every loaded value of
// A and B goes through, and the ReLU mask's value: `v` itself in the f32
// modules, `f32(f16(v))` in the f16-mixed ones (enable f16), so that the
// products see f16 operands and accumulate in f32 (the twin of round_f16
// in src/cpu/kernels.rs).
//
// linear_softmax_xent is the last layer's linear_forward with the training
// loss of softmax_xent.wgsl folded into its epilogue, one dispatch instead
// of two. The host gives it a tile at least as wide as the classes
// (BN >= n, so tiles_n is 1 and a workgroup holds whole rows of C) and A in
// a buffer (a hidden layer's output), never the dataset: binding 5 then
// holds the labels instead, read through `index` as the dataset's rows are.
// After the product's epilogue has stored the logits in C, a storage
// barrier makes them visible to the whole workgroup, and each thread takes
// a row of the workgroup's block and computes what softmax_xent computes
// for it, with the same formulas in the same order (so dlogits are those
// softmax_xent writes from these logits): dlogits = (softmax - q) / of_rows
// into binding 8, with label smoothing when `smoothing` is not 0, the row's
// loss and whether its arg-max is its label. The workgroup sums those in
// workgroup memory (smem, free by then) and writes one partial Stat, stats[slot * stat_stride +
// w] for its row block w; workgroup 0's threads also zero the entries
// past the last row block, up to stat_stride, so the host sums a step's stat_stride
// entries in f64 whatever the tile (WGSL has no float atomics; one entry
// per workgroup keeps the sum exact to each block's f32 rounding).

const BM: u32 = 4u * GM * TY;
const BN: u32 = 4u * GN * TX;
// Threads per slice, and per workgroup.
const TT: u32 = TX * TY;
const THREADS: u32 = TT * KS;
// Elements of A and of B each thread stages per k step.
const LA: u32 = BM * BK / TT;
const LB: u32 = BN * BK / TT;
// Row strides of the staged operands, in floats and in vec4s.
const SA: u32 = BM + 4u;
const SB: u32 = BN + 4u;
const SA4: u32 = SA / 4u;
const SB4: u32 = SB / 4u;
// vec4s of one slice's staged A, and of A and B together.
const STAGE_A: u32 = BK * SA4;
const STAGE: u32 = STAGE_A + BK * SB4;
// Accumulators (vec4) per thread, and the workgroup memory the slices'
// partial sums need; staging and reduction share one array.
const ACC: u32 = 4u * GM * GN;
const RED: u32 = (KS - 1u) * ACC * TT;
const SMEM: u32 = max(KS * STAGE, RED);

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
// weight_update: store the product (the gradient of an unfused optimizer),
// and the bias column sum with FLAG_BIAS, instead of the SGD step.
const FLAG_GRAD: u32 = 4u;
// linear_forward: inverted dropout after the ReLU; backprop_input: the
// dropout scale on the kept units' gradients.
const FLAG_DROPOUT: u32 = 8u;

// Static shape and layout of one dispatch (GemmParams in src/gpu/uniforms.rs).
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
    // The run's seed, keying the random draws (draw.wgsl).
    seed_lo: u32,
    seed_hi: u32,
    // FLAG_DROPOUT: a unit is dropped when its draw is below drop_threshold,
    // kept units are scaled by drop_scale; drop_stream names the layer.
    drop_threshold: u32,
    drop_scale: f32,
    drop_stream: u32,
    // The dataset operand's images move by up to `shift` pixels per row
    // (0: not at all); they are img_h x img_w, channel after channel.
    shift: u32,
    img_h: u32,
    img_w: u32,
    // linear_softmax_xent: stats entries per step, 1 / of_rows (the rows of
    // the whole batch whose mean loss the gradient is of), and label
    // smoothing s with 1 - s, s / classes, (1 - s) / of_rows and
    // s / classes / of_rows, as softmax_xent.wgsl's Softmax holds them.
    stat_stride: u32,
    inv_rows: f32,
    smoothing: f32,
    keep: f32,
    per_class: f32,
    d_label: f32,
    d_class: f32,
}

// What changes from one training step to the next (StepParams), bound with
// a dynamic offset so that many steps share one bind group.
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

// A step's loss and correct count, or (linear_softmax_xent) one row
// block's share of them (Stat in softmax_xent.wgsl).
struct Stat {
    loss: f32,
    correct: u32,
}

@group(0) @binding(0) var<uniform> params: Gemm;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
// Bias (EPI_BIAS) or the ReLU mask source laid out like C (EPI_MASK).
@group(0) @binding(4) var<storage, read> aux: array<f32>;
// The resident dataset, or the labels in linear_softmax_xent.
@group(0) @binding(5) var<storage, read> data: array<u32>;
@group(0) @binding(6) var<storage, read> index: array<u32>;
@group(0) @binding(7) var<storage, read_write> c: array<f32>;
// The bias weight_update updates with FLAG_BIAS, or linear_softmax_xent's
// dlogits (laid out like C).
@group(0) @binding(8) var<storage, read_write> out2: array<f32>;
// linear_softmax_xent's partial stats.
@group(0) @binding(9) var<storage, read_write> stats: array<Stat>;

// Per slice: A staged as [BK][SA], then B as [BK][SB]; after the k loop,
// the partial sums of slices 1.. (see gemm).
// linear_softmax_xent sums its rows' losses and correct counts in the first
// THREADS entries once the product is done with it.
var<workgroup> smem: array<vec4<f32>, SMEM>;
const_assert SMEM >= THREADS;

// Where row `row` of the input batch starts in the dataset.
fn input_base(row: u32) -> u32 {
    var example = step.index_off + row;
    if params.gather != 0u {
        example = index[example];
    }
    return example * params.dim;
}

// Value (row, col) of the preprocessed input batch, read from the dataset.
fn input_value(src: u32, row: u32, col: u32) -> f32 {
    if params.shift != 0u {
        return shifted_input(src, row, col);
    }
    return input_at(src, input_base(row), col);
}

// input_value of a batch whose images move by the row's (dx, dy): pixel
// (y, x) reads (y - dy, x - dx), and a raw 0 from outside the image (the
// twin of gather_rows_shifted in src/cpu/kernels.rs).
fn shifted_input(src: u32, row: u32, col: u32) -> f32 {
    let w = params.img_w;
    let h = params.img_h;
    let in_plane = col % (h * w);
    let key = draw_row(draw_key(params.seed_lo, params.seed_hi, step.draw_step, SHIFT_STREAM), row + step.draw_row0);
    let span = 2u * params.shift + 1u;
    let dx = i32(draw_col(key, 0u) % span) - i32(params.shift);
    let dy = i32(draw_col(key, 1u) % span) - i32(params.shift);
    let sy = i32(in_plane / w) - dy;
    let sx = i32(in_plane % w) - dx;
    if sy < 0 || sy >= i32(h) || sx < 0 || sx >= i32(w) {
        return 0.0 * params.scale + params.offset;
    }
    return input_at(src, input_base(row), col - in_plane + u32(sy) * w + u32(sx));
}

// Value `col` of the example starting at `base`, preprocessed.
fn input_at(src: u32, base: u32, col: u32) -> f32 {
    let at = base + col;
    var raw: f32;
    if src == SRC_DATA_U8 {
        raw = f32((data[at >> 2u] >> ((at & 3u) * 8u)) & 0xffu);
    } else {
        raw = bitcast<f32>(data[at]);
    }
    return raw * params.scale + params.offset;
}

// A(i, p); `base` is input_base(i) when A is the dataset (rows of A are
// fixed per thread, so the gather is looked up once, not per k step).
fn load_a(i: u32, p: u32, base: u32) -> f32 {
    if i >= params.m || p >= params.k {
        return 0.0;
    }
    if params.a_src == SRC_BUFFER {
        return operand(a[i * params.a_rs + p * params.a_cs]);
    }
    if params.shift != 0u {
        return operand(shifted_input(params.a_src, i, p));
    }
    return operand(input_at(params.a_src, base, p));
}

fn load_b(p: u32, j: u32) -> f32 {
    if p >= params.k || j >= params.n_ext {
        return 0.0;
    }
    if j >= params.n {
        return 1.0; // the bias column (FLAG_BIAS)
    }
    if params.b_src == SRC_BUFFER {
        return operand(b[p * params.b_rs + j * params.b_cs]);
    }
    return operand(input_value(params.b_src, p, j));
}

fn gemm(wid: vec3<u32>, nwg: vec3<u32>, t: u32, epilogue: u32) {
    let tile = wid.x + wid.y * nwg.x;
    let row0 = (tile / params.tiles_n) * BM;
    let col0 = (tile % params.tiles_n) * BN;
    // With one slice (KS is a constant) this folds to 0 and u to t.
    var slice = 0u;
    if KS > 1u {
        slice = t / TT;
    }
    let u = t - slice * TT;
    let tx = u % TX;
    let ty = u / TX;
    let stage_a = slice * STAGE;
    let stage_b = stage_a + STAGE_A;
    // Let consecutive threads walk the operand's contiguous dimension, so
    // that global loads coalesce whichever way it is stored.
    let a_k_fast = params.a_src != SRC_BUFFER || params.a_cs == 1u;
    let b_n_fast = params.b_src != SRC_BUFFER || params.b_cs == 1u;

    // Where each of this thread's staged elements goes: (row or column, k).
    var at_a: array<vec2<u32>, LA>;
    var at_b: array<vec2<u32>, LB>;
    var base_a: array<u32, LA>;
    for (var l = 0u; l < LA; l++) {
        let e = u + l * TT;
        at_a[l] = select(vec2(e % BM, e / BM), vec2(e / BK, e % BK), a_k_fast);
        if params.a_src != SRC_BUFFER && row0 + at_a[l].x < params.m {
            base_a[l] = input_base(row0 + at_a[l].x);
        }
    }
    for (var l = 0u; l < LB; l++) {
        let e = u + l * TT;
        at_b[l] = select(vec2(e / BK, e % BK), vec2(e % BN, e / BN), b_n_fast);
    }

    // The first k step of this slice, into registers.
    var ra: array<f32, LA>;
    var rb: array<f32, LB>;
    let k_first = slice * BK;
    for (var l = 0u; l < LA; l++) {
        ra[l] = load_a(row0 + at_a[l].x, k_first + at_a[l].y, base_a[l]);
    }
    for (var l = 0u; l < LB; l++) {
        rb[l] = load_b(k_first + at_b[l].y, col0 + at_b[l].x);
    }

    var acc: array<vec4<f32>, ACC>;
    // Every slice runs the same number of rounds (barriers need uniform
    // control flow); steps past k load zeros.
    for (var kr = 0u; kr < params.k; kr += KS * BK) {
        for (var l = 0u; l < LA; l++) {
            let w = at_a[l].y * SA + at_a[l].x;
            smem[stage_a + w / 4u][w % 4u] = ra[l];
        }
        for (var l = 0u; l < LB; l++) {
            let w = at_b[l].y * SB + at_b[l].x;
            smem[stage_b + w / 4u][w % 4u] = rb[l];
        }
        workgroupBarrier();
        // The next round's loads are in flight while this one computes.
        let k_next = kr + KS * BK + slice * BK;
        if kr + KS * BK < params.k {
            for (var l = 0u; l < LA; l++) {
                ra[l] = load_a(row0 + at_a[l].x, k_next + at_a[l].y, base_a[l]);
            }
            for (var l = 0u; l < LB; l++) {
                rb[l] = load_b(k_next + at_b[l].y, col0 + at_b[l].x);
            }
        }
        for (var p = 0u; p < BK; p++) {
            var av: array<vec4<f32>, GM>;
            var bv: array<vec4<f32>, GN>;
            for (var g = 0u; g < GM; g++) {
                av[g] = smem[stage_a + p * SA4 + ty + TY * g];
            }
            for (var g = 0u; g < GN; g++) {
                bv[g] = smem[stage_b + p * SB4 + tx + TX * g];
            }
            for (var g = 0u; g < GM; g++) {
                for (var r = 0u; r < 4u; r++) {
                    for (var h = 0u; h < GN; h++) {
                        let x = (g * 4u + r) * GN + h;
                        acc[x] = fma(vec4(av[g][r]), bv[h], acc[x]);
                    }
                }
            }
        }
        workgroupBarrier();
    }

    // Slices 1.. hand their partial sums to slice 0 (the loop's last
    // barrier freed the staging memory this reuses).
    if KS > 1u {
        if slice > 0u {
            for (var x = 0u; x < ACC; x++) {
                smem[((slice - 1u) * ACC + x) * TT + u] = acc[x];
            }
        }
        workgroupBarrier();
        if slice > 0u {
            return;
        }
        for (var s = 1u; s < KS; s++) {
            for (var x = 0u; x < ACC; x++) {
                acc[x] += smem[((s - 1u) * ACC + x) * TT + u];
            }
        }
    }

    let dropout = (params.flags & FLAG_DROPOUT) != 0u;
    var drop_key = 0u;
    if dropout {
        drop_key = draw_key(params.seed_lo, params.seed_hi, step.draw_step, params.drop_stream);
    }
    for (var g = 0u; g < GM; g++) {
        for (var r = 0u; r < 4u; r++) {
            let i = row0 + 4u * ty + 4u * TY * g + r;
            if i >= params.m {
                continue;
            }
            let row_key = draw_row(drop_key, i + step.draw_row0);
            for (var h = 0u; h < GN; h++) {
                for (var q = 0u; q < 4u; q++) {
                    let j = col0 + 4u * tx + 4u * TX * h + q;
                    if j >= params.n_ext {
                        continue;
                    }
                    let at = i * params.ldc + j;
                    var v = acc[(g * 4u + r) * GN + h][q];
                    switch epilogue {
                        case EPI_BIAS: {
                            v += aux[j];
                            if (params.flags & FLAG_RELU) != 0u {
                                v = max(v, 0.0);
                            }
                            if dropout {
                                v = select(0.0, v * params.drop_scale, draw_col(row_key, j) >= params.drop_threshold);
                            }
                            c[at] = v;
                        }
                        case EPI_MASK: {
                            if dropout {
                                v *= params.drop_scale;
                            }
                            c[at] = select(v, 0.0, operand(aux[at]) <= 0.0);
                        }
                        case EPI_SGD: {
                            if (params.flags & FLAG_GRAD) != 0u {
                                if j == params.n {
                                    out2[i] = v;
                                } else {
                                    c[at] = v;
                                }
                            } else if j == params.n {
                                out2[i] = out2[i] - step.lr * v;
                            } else {
                                c[at] = c[at] - step.lr * v;
                            }
                        }
                        default: {
                            c[at] = v;
                        }
                    }
                }
            }
        }
    }
}

@compute @workgroup_size(THREADS)
fn matmul_nn(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    gemm(wid, nwg, t, EPI_STORE);
}

@compute @workgroup_size(THREADS)
fn matmul_nt(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    gemm(wid, nwg, t, EPI_STORE);
}

@compute @workgroup_size(THREADS)
fn matmul_tn(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    gemm(wid, nwg, t, EPI_STORE);
}

@compute @workgroup_size(THREADS)
fn linear_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    gemm(wid, nwg, t, EPI_BIAS);
}

@compute @workgroup_size(THREADS)
fn backprop_input(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    gemm(wid, nwg, t, EPI_MASK);
}

@compute @workgroup_size(THREADS)
fn weight_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    gemm(wid, nwg, t, EPI_SGD);
}

// The label of row `row` of the batch (linear_softmax_xent, where binding 5
// holds the labels): labels[index[index_off + row]] when gathering, as
// input_base finds a row's example. The host checks every label below the
// classes (and the permutation below the examples) before training; the
// guard and the min only keep these reads of an unchecked module in their
// buffers.
fn label_of(row: u32) -> u32 {
    var example = step.index_off + row;
    if params.gather != 0u {
        example = index[example];
    }
    if example >= arrayLength(&data) {
        return 0u;
    }
    return min(data[example], params.n - 1u);
}

// softmax_xent (softmax_xent.wgsl) of row i of C, whose logits start at
// `base`: its dlogits into out2, its loss and whether its arg-max is its
// label.
fn xent_row(i: u32, base: u32) -> vec2<f32> {
    let classes = params.n;
    var best = 0u;
    var mx = c[base];
    for (var j = 1u; j < classes; j++) {
        let v = c[base + j];
        if v > mx {
            mx = v;
            best = j;
        }
    }
    var sum = 0.0;
    for (var j = 0u; j < classes; j++) {
        sum += exp(c[base + j] - mx);
    }
    let label = label_of(i);
    let s = params.inv_rows / sum;
    var loss: f32;
    if params.smoothing == 0.0 {
        loss = log(sum) - (c[base + label] - mx);
        for (var j = 0u; j < classes; j++) {
            var d = exp(c[base + j] - mx) * s;
            if j == label {
                d -= params.inv_rows;
            }
            out2[base + j] = d;
        }
    } else {
        let lse = log(sum);
        var zsum = 0.0;
        for (var j = 0u; j < classes; j++) {
            zsum += c[base + j] - mx;
        }
        let nll = lse - (c[base + label] - mx);
        loss = params.keep * nll + (params.smoothing * lse - params.per_class * zsum);
        for (var j = 0u; j < classes; j++) {
            var d = exp(c[base + j] - mx) * s - params.d_class;
            if j == label {
                d -= params.d_label;
            }
            out2[base + j] = d;
        }
    }
    return vec2(loss, select(0.0, 1.0, best == label));
}

// The loss epilogue of linear_softmax_xent, run by every thread of the
// workgroup once the logits of its row block are in C.
fn xent_block(wid: vec3<u32>, nwg: vec3<u32>, t: u32) {
    let block = wid.x + wid.y * nwg.x;
    let blocks = (params.m + BM - 1u) / BM;
    // The loss and the correct count (in f32, exact: at most BM rows).
    var part = vec2(0.0);
    for (var r = t; r < BM; r += THREADS) {
        let i = block * BM + r;
        if block < blocks && i < params.m {
            part += xent_row(i, i * params.ldc);
        }
    }
    // The product is done with smem (see linear_softmax_xent).
    smem[t] = vec4(part, 0.0, 0.0);
    for (var width = THREADS / 2u; width > 0u; width /= 2u) {
        workgroupBarrier();
        if t < width {
            smem[t] += smem[t + width];
        }
    }
    let base = step.slot * params.stat_stride;
    let len = arrayLength(&stats);
    if t == 0u && block < blocks && base + block < len {
        stats[base + block] = Stat(smem[0].x, u32(smem[0].y));
    }
    // Workgroup 0's threads zero the entries past the last row block
    // (few: the host sizes the stride for the narrowest tile). Not one
    // thread alone: on lavapipe such a loop stopped after ~65,500 trips.
    if block == 0u {
        for (var w = blocks + t; w < params.stat_stride && base + w < len; w += THREADS) {
            stats[base + w] = Stat(0.0, 0u);
        }
    }
}

@compute @workgroup_size(THREADS)
fn linear_softmax_xent(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    // The logits, as linear_forward stores them (no ReLU, no dropout).
    gemm(wid, nwg, t, EPI_BIAS);
    // Every thread of the workgroup reaches these, whichever slice it is in
    // (slices 1.. leave gemm early): the storage barrier makes the logits
    // the epilogue stored visible to the thread that takes their row, the
    // workgroup barrier orders slice 0's last reads of smem before the
    // loss sums overwrite it.
    storageBarrier();
    workgroupBarrier();
    xent_block(wid, nwg, t);
}
