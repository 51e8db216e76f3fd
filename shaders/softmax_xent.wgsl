// Softmax cross-entropy over a batch of logits, twins of softmax_xent and
// softmax_xent_eval in src/cpu/kernels.rs.
//
// softmax_xent (training) writes dlogits = (softmax - q) / rows, the
// gradient of the batch's mean loss, and stores the batch's summed loss and
// its count of correct arg-maxes in stats[step.slot]. The target q is the
// one-hot label, or with label smoothing s, (1 - s) onehot + s / classes
// (torch's CrossEntropyLoss(label_smoothing=s)), whose loss per row is
// (1 - s) nll + s lse - (s / classes) sum_k (z_k - max). softmax_xent_eval
// writes each row's arg-max class to predictions[index_off + row] and the
// summed loss to stats[step.slot].
//
// One workgroup handles the whole batch, a row per thread at a time, then
// reduces the loss and the count in workgroup memory: WGSL has no float
// atomics, and one slot per step (summed in f64 on the host) keeps the
// totals exact to f32 rounding of a single batch however long training runs.
// A batch's logits are small (rows x classes), so one workgroup is enough.

const THREADS: u32 = 256u;

struct Softmax {
    rows: u32,
    classes: u32,
    // Nonzero: row r's label is labels[index[index_off + r]], else labels[index_off + r].
    gather: u32,
    inv_rows: f32,
    // Label smoothing s (softmax_xent; 0: none), 1 - s, s / classes,
    // (1 - s) / rows and s / classes / rows, computed on the host.
    smoothing: f32,
    keep: f32,
    per_class: f32,
    d_label: f32,
    d_class: f32,
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

struct Stat {
    loss: f32,
    correct: u32,
}

@group(0) @binding(0) var<uniform> params: Softmax;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> labels: array<u32>;
@group(0) @binding(4) var<storage, read> index: array<u32>;
@group(0) @binding(5) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(6) var<storage, read_write> predictions: array<u32>;
@group(0) @binding(7) var<storage, read_write> stats: array<Stat>;

var<workgroup> loss_part: array<f32, THREADS>;
var<workgroup> correct_part: array<u32, THREADS>;

fn label_of(row: u32) -> u32 {
    var example = step.index_off + row;
    if params.gather != 0u {
        example = index[example];
    }
    return labels[example];
}

// Arg-max (the first one on ties) and maximum of row `base..base+classes`.
fn row_max(base: u32) -> vec2<f32> {
    var best = 0u;
    var mx = logits[base];
    for (var j = 1u; j < params.classes; j++) {
        let v = logits[base + j];
        if v > mx {
            mx = v;
            best = j;
        }
    }
    return vec2<f32>(bitcast<f32>(best), mx);
}

fn row_sum_exp(base: u32, mx: f32) -> f32 {
    var sum = 0.0;
    for (var j = 0u; j < params.classes; j++) {
        sum += exp(logits[base + j] - mx);
    }
    return sum;
}

// Sum loss_part and correct_part over the workgroup; the total lands in
// element 0.
fn reduce(t: u32) {
    for (var width = THREADS / 2u; width > 0u; width /= 2u) {
        workgroupBarrier();
        if t < width {
            loss_part[t] += loss_part[t + width];
            correct_part[t] += correct_part[t + width];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn softmax_xent(@builtin(local_invocation_index) t: u32) {
    var loss = 0.0;
    var correct = 0u;
    for (var r = t; r < params.rows; r += THREADS) {
        let base = r * params.classes;
        let m = row_max(base);
        let best = bitcast<u32>(m.x);
        let sum = row_sum_exp(base, m.y);
        let label = label_of(r);
        let s = params.inv_rows / sum;
        if params.smoothing == 0.0 {
            loss += log(sum) - (logits[base + label] - m.y);
            for (var j = 0u; j < params.classes; j++) {
                var d = exp(logits[base + j] - m.y) * s;
                if j == label {
                    d -= params.inv_rows;
                }
                dlogits[base + j] = d;
            }
        } else {
            let lse = log(sum);
            var zsum = 0.0;
            for (var j = 0u; j < params.classes; j++) {
                zsum += logits[base + j] - m.y;
            }
            let nll = lse - (logits[base + label] - m.y);
            loss += params.keep * nll + (params.smoothing * lse - params.per_class * zsum);
            for (var j = 0u; j < params.classes; j++) {
                var d = exp(logits[base + j] - m.y) * s - params.d_class;
                if j == label {
                    d -= params.d_label;
                }
                dlogits[base + j] = d;
            }
        }
        correct += select(0u, 1u, best == label);
    }
    loss_part[t] = loss;
    correct_part[t] = correct;
    reduce(t);
    if t == 0u {
        stats[step.slot] = Stat(loss_part[0], correct_part[0]);
    }
}

@compute @workgroup_size(256)
fn softmax_xent_eval(@builtin(local_invocation_index) t: u32) {
    var loss = 0.0;
    for (var r = t; r < params.rows; r += THREADS) {
        let base = r * params.classes;
        let m = row_max(base);
        let sum = row_sum_exp(base, m.y);
        loss += log(sum) - (logits[base + label_of(r)] - m.y);
        predictions[step.index_off + r] = bitcast<u32>(m.x);
    }
    loss_part[t] = loss;
    correct_part[t] = 0u;
    reduce(t);
    if t == 0u {
        stats[step.slot] = Stat(loss_part[0], 0u);
    }
}
