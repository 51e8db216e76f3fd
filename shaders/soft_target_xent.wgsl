// Knowledge distillation's loss kernels, twins of soft_targets and
// soft_target_xent in src/cpu/kernels.rs.
//
// soft_targets turns one teacher's logits into its probabilities at
// temperature T, weighted: probs = weight * softmax(logits / T), added to
// probs when params.accumulate is set (K teachers at weight 1/K give the
// mean of their softened probabilities). One thread per row.
//
// soft_target_xent is the loss of Hinton et al. (2015) on the student's
// logits z with the teachers' probabilities p:
//   (1 - alpha) CE(q, softmax(z)) + alpha T^2 KL(p || softmax(z / T))
// per row, q the label target (with label smoothing s: (1 - s) onehot +
// s / classes). It writes dlogits = ((1 - alpha)(softmax(z) - q)
// + alpha T (softmax(z / T) - p)) / rows, the gradient of the batch's mean
// loss, and stores the batch's summed loss and count of correct arg-maxes
// in stats[step.slot], reduced in one workgroup as softmax_xent does.

const THREADS: u32 = 256u;

struct SoftTarget {
    rows: u32,
    classes: u32,
    // soft_targets: nonzero adds to probs instead of overwriting it.
    accumulate: u32,
    // soft_targets: the teacher's weight (1 / teachers).
    weight: f32,
    // 1 / T.
    inv_t: f32,
    // 1 - alpha, alpha T^2, (1 - alpha) / rows, alpha T / rows.
    hard: f32,
    kl: f32,
    hard_grad: f32,
    soft_grad: f32,
    // Label smoothing s, 1 - s, s / classes.
    smoothing: f32,
    keep: f32,
    per_class: f32,
    // soft_target_xent: nonzero reads row r's probabilities at row
    // index[index_off + r] of probs (a table of every training example's,
    // cached), else at row r.
    gather_probs: u32,
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

@group(0) @binding(0) var<uniform> params: SoftTarget;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> labels: array<u32>;
@group(0) @binding(4) var<storage, read> index: array<u32>;
@group(0) @binding(5) var<storage, read_write> probs: array<f32>;
@group(0) @binding(6) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(7) var<storage, read_write> stats: array<Stat>;

var<workgroup> loss_part: array<f32, THREADS>;
var<workgroup> correct_part: array<u32, THREADS>;

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

@compute @workgroup_size(256)
fn soft_targets(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let r = gid.x + gid.y * groups.x * THREADS;
    if r >= params.rows {
        return;
    }
    let base = r * params.classes;
    let mx = row_max(base).y;
    var sum = 0.0;
    for (var j = 0u; j < params.classes; j++) {
        sum += exp((logits[base + j] - mx) * params.inv_t);
    }
    let s = params.weight / sum;
    for (var j = 0u; j < params.classes; j++) {
        let q = exp((logits[base + j] - mx) * params.inv_t) * s;
        if params.accumulate != 0u {
            probs[base + j] = probs[base + j] + q;
        } else {
            probs[base + j] = q;
        }
    }
}

fn label_of(row: u32) -> u32 {
    return labels[index[step.index_off + row]];
}

@compute @workgroup_size(256)
fn soft_target_xent(@builtin(local_invocation_index) t: u32) {
    var loss = 0.0;
    var correct = 0u;
    for (var r = t; r < params.rows; r += THREADS) {
        let base = r * params.classes;
        let m = row_max(base);
        let best = bitcast<u32>(m.x);
        let mx = m.y;
        let label = label_of(r);
        var pbase = base;
        if params.gather_probs != 0u {
            pbase = index[step.index_off + r] * params.classes;
        }
        var sum = 0.0;
        var sum_t = 0.0;
        var zsum = 0.0;
        for (var j = 0u; j < params.classes; j++) {
            let v = logits[base + j] - mx;
            sum += exp(v);
            sum_t += exp(v * params.inv_t);
            zsum += v;
        }
        let lse = log(sum);
        let lse_t = log(sum_t);
        var kl = 0.0;
        for (var j = 0u; j < params.classes; j++) {
            let p = probs[pbase + j];
            if p > 0.0 {
                kl += p * (log(p) - ((logits[base + j] - mx) * params.inv_t - lse_t));
            }
        }
        let nll = lse - (logits[base + label] - mx);
        var hard = nll;
        if params.smoothing != 0.0 {
            hard = params.keep * nll + (params.smoothing * lse - params.per_class * zsum);
        }
        loss += params.hard * hard + params.kl * kl;
        let hs = params.hard_grad / sum;
        let ss = params.soft_grad / sum_t;
        let d_class = params.per_class * params.hard_grad;
        for (var j = 0u; j < params.classes; j++) {
            let v = logits[base + j] - mx;
            var h = exp(v) * hs;
            if params.smoothing != 0.0 {
                h -= d_class;
            }
            if j == label {
                h -= params.keep * params.hard_grad;
            }
            dlogits[base + j] = h + (exp(v * params.inv_t) * ss - probs[pbase + j] * params.soft_grad);
        }
        correct += select(0u, 1u, best == label);
    }
    loss_part[t] = loss;
    correct_part[t] = correct;
    for (var width = THREADS / 2u; width > 0u; width /= 2u) {
        workgroupBarrier();
        if t < width {
            loss_part[t] += loss_part[t + width];
            correct_part[t] += correct_part[t + width];
        }
    }
    workgroupBarrier();
    if t == 0u {
        stats[step.slot] = Stat(loss_part[0], correct_part[0]);
    }
}
