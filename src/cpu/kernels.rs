//! CPU kernels. Each function has a WGSL twin in `shaders/` with the same
//! name; the GPU tests compare the two. Matrices are row-major slices.
//!
//! The matrix products go through the `gemm` crate, whose single entry point
//! takes strides, so the transposed variants cost nothing extra, and whose
//! `dst = alpha*dst + beta*lhs*rhs` form lets the SGD update ride in the
//! weight-gradient product.

// Kernel signatures mirror the shaders' bindings (operands plus their
// sizes), which makes for many plain arguments.
#![allow(clippy::too_many_arguments)]

use super::team;
use crate::optim::draw::{Dropout, Key, Shift};

/// Below this many multiply-adds a product runs on one thread: waking the
/// pool costs more than it saves.
const PARALLEL_MIN_FLOPS: usize = 1 << 20;

/// `c = alpha*c + beta*op(a)*op(b)` where `op(a)` is `[m, k]` and `op(b)` is
/// `[k, n]`, with `ta`/`tb` saying whether `a`/`b` are stored transposed.
/// With `accumulate == false`, `c`'s old contents are ignored.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    c: &mut [f32],
    alpha: f32,
    beta: f32,
    accumulate: bool,
) {
    assert!(a.len() >= m * k, "gemm: a holds {} values, needs {}", a.len(), m * k);
    assert!(b.len() >= k * n, "gemm: b holds {} values, needs {}", b.len(), k * n);
    assert!(c.len() >= m * n, "gemm: c holds {} values, needs {}", c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        } else {
            c[..m * n].iter_mut().for_each(|v| *v *= alpha);
        }
        return;
    }
    // Strides (column stride, row stride) of each operand as stored.
    let (a_cs, a_rs) = if ta { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if tb { (k as isize, 1) } else { (1, n as isize) };
    team::with_current(|team| match team {
        Some(team) if team.size() > 1 && m * n * k >= PARALLEL_MIN_FLOPS => {
            gemm_split(team, m, n, k, a, a_cs, a_rs, b, b_cs, b_rs, c, alpha, beta, accumulate)
        }
        _ => {
            // SAFETY: the asserts above guarantee every element the strides
            // address lies inside the slices; `c` is borrowed mutably and
            // does not alias `a` or `b`.
            unsafe {
                gemm_raw(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    n,
                    a.as_ptr(),
                    a_cs,
                    a_rs,
                    b.as_ptr(),
                    b_cs,
                    b_rs,
                    alpha,
                    beta,
                    accumulate,
                )
            }
        }
    })
}

/// [`gemm`] on the team: C split into one block per thread along its
/// longer side, one single-threaded product per block. At the MLP's shapes
/// this beats the crate's own finer-grained threading, whose
/// synchronisation costs more than these products take.
#[allow(clippy::too_many_arguments)]
fn gemm_split(
    team: &mut team::Team,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_cs: isize,
    a_rs: isize,
    b: &[f32],
    b_cs: isize,
    b_rs: isize,
    c: &mut [f32],
    alpha: f32,
    beta: f32,
    accumulate: bool,
) {
    let split_rows = m >= n;
    let len = if split_rows { m } else { n };
    let (cp, ap, bp) = (
        SendPtr(c.as_mut_ptr()),
        SendPtr(a.as_ptr() as *mut f32),
        SendPtr(b.as_ptr() as *mut f32),
    );
    let parts = team.size().min(len);
    let chunk = len.div_ceil(parts);
    team.run(parts, &|p| {
        let (cp, ap, bp) = (cp, ap, bp);
        let lo = p * chunk;
        let hi = len.min(lo + chunk);
        if lo >= hi {
            return;
        }
        // SAFETY: part `p` covers rows (or columns) lo..hi of C and the
        // matching rows of op(A) (or columns of op(B)); parts are disjoint
        // in C, and A and B are only read. Offsets stay inside the slices
        // that `gemm` checked, which outlive `run`.
        unsafe {
            if split_rows {
                let a_off = lo as isize * a_rs;
                gemm_raw(
                    hi - lo,
                    n,
                    k,
                    cp.0.add(lo * n),
                    n,
                    ap.0.offset(a_off),
                    a_cs,
                    a_rs,
                    bp.0,
                    b_cs,
                    b_rs,
                    alpha,
                    beta,
                    accumulate,
                );
            } else {
                let b_off = lo as isize * b_cs;
                gemm_raw(
                    m,
                    hi - lo,
                    k,
                    cp.0.add(lo),
                    n,
                    ap.0,
                    a_cs,
                    a_rs,
                    bp.0.offset(b_off),
                    b_cs,
                    b_rs,
                    alpha,
                    beta,
                    accumulate,
                );
            }
        }
    });
}

/// A raw pointer that may cross to a worker thread; see the SAFETY notes
/// where it is used.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used for disjoint blocks of C and read-only A and B, inside
// a team job that ends before the borrowed slices do.
unsafe impl Send for SendPtr {}
// SAFETY: as above; the pointer itself is only copied, never dereferenced
// through a shared reference.
unsafe impl Sync for SendPtr {}

/// One single-threaded `gemm` call on an `m x n` block of C whose rows are
/// `ldc` apart (the full matrix's width, so a column block keeps it).
///
/// # Safety
/// Every element the sizes and strides address must be valid; C must not
/// alias A or B.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    a: *const f32,
    a_cs: isize,
    a_rs: isize,
    b: *const f32,
    b_cs: isize,
    b_rs: isize,
    alpha: f32,
    beta: f32,
    accumulate: bool,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            accumulate,
            a,
            a_cs,
            a_rs,
            b,
            b_cs,
            b_rs,
            alpha,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// `c[m,n] = a[m,k] * b[k,n]`.
pub fn matmul_nn(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
    gemm(m, n, k, a, false, b, false, c, 0.0, 1.0, false);
}

/// `c[m,n] = a[m,k] * b[n,k]^T` (the forward pass of `nn.Linear`).
pub fn matmul_nt(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
    gemm(m, n, k, a, false, b, true, c, 0.0, 1.0, false);
}

/// `c[m,n] = a[k,m]^T * b[k,n]` (the weight gradient).
pub fn matmul_tn(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
    gemm(m, n, k, a, true, b, false, c, 0.0, 1.0, false);
}

/// `y[rows, out] = x[rows, in] * w[out, in]^T + bias`, then ReLU when `relu`.
pub fn linear_forward(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
    rows: usize,
    inputs: usize,
    outputs: usize,
    relu: bool,
) {
    matmul_nt(x, w, y, rows, outputs, inputs);
    bias_act(y, bias, rows, outputs, relu);
}

/// [`linear_forward`] of a hidden layer in training, with inverted dropout
/// after the ReLU (linear_forward with FLAG_DROPOUT in matmul.wgsl):
/// `y[r, j] = relu(z[r, j]) * drop.scale` when the draw `key.row(r).col(j)`
/// keeps the unit, else 0.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward_dropout(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
    rows: usize,
    inputs: usize,
    outputs: usize,
    drop: Dropout,
    key: Key,
) {
    matmul_nt(x, w, y, rows, outputs, inputs);
    for (r, row) in y[..rows * outputs].chunks_exact_mut(outputs).enumerate() {
        let rk = key.row(r as u32);
        for (j, (v, b)) in row.iter_mut().zip(bias).enumerate() {
            let a = (*v + b).max(0.0);
            *v = if drop.keeps(rk.col(j as u32)) {
                a * drop.scale
            } else {
                0.0
            };
        }
    }
}

/// Add the bias to each row, then apply ReLU when `relu`.
pub fn bias_act(y: &mut [f32], bias: &[f32], rows: usize, outputs: usize, relu: bool) {
    for row in y[..rows * outputs].chunks_exact_mut(outputs) {
        if relu {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = (*v + b).max(0.0);
            }
        } else {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

/// The scalars of label smoothing `s` over `classes` classes for a batch
/// of `rows` rows, in f32 as both softmax_xent kernels use them (the GPU's
/// host computes them with this function, so the two round alike).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Smoothing {
    /// `s`.
    pub s: f32,
    /// `1 - s`: the weight of the label's negative log-likelihood.
    pub keep: f32,
    /// `s / classes`: the target of every class besides the label's share.
    pub per_class: f32,
    /// `(1 - s) / rows`: subtracted from the label's gradient.
    pub d_label: f32,
    /// `s / classes / rows`: subtracted from every class's gradient.
    pub d_class: f32,
}

impl Smoothing {
    /// The scalars of smoothing `s` over a batch of `rows` rows and `classes` classes (each counted
    /// as 1 when 0).
    pub fn new(s: f32, rows: usize, classes: usize) -> Self {
        let inv = 1.0 / rows.max(1) as f32;
        let keep = 1.0 - s;
        let per_class = s / classes.max(1) as f32;
        Smoothing {
            s,
            keep,
            per_class,
            d_label: keep * inv,
            d_class: per_class * inv,
        }
    }
}

/// Softmax cross-entropy over `rows` rows of `classes` logits, forward and
/// backward in one pass, with label smoothing `smoothing` (`s`, 0: none):
/// the target is `q = (1 - s) onehot(label) + s / classes`, as torch's
/// `CrossEntropyLoss(label_smoothing=s)`. Writes `dlogits = (softmax - q) /
/// rows` (the gradient of the mean loss) and returns the summed loss
/// `-sum_k q_k log p_k` and the number of rows whose arg-max equals the
/// label. With `s == 0` the smoothing terms are not computed at all.
pub fn softmax_xent(
    logits: &[f32],
    labels: &[u32],
    dlogits: &mut [f32],
    rows: usize,
    classes: usize,
    smoothing: f32,
) -> (f64, u32) {
    softmax_xent_part(logits, labels, dlogits, rows, classes, smoothing, rows)
}

/// [`softmax_xent`] over `rows` rows that are part of a batch of `of_rows`
/// rows: the gradient is that of the whole batch's mean loss, `(softmax -
/// q) / of_rows` (a data-parallel replica's shard). The GPU twin is
/// `softmax_xent` with `inv_rows` and the smoothing scalars of `of_rows`.
pub fn softmax_xent_part(
    logits: &[f32],
    labels: &[u32],
    dlogits: &mut [f32],
    rows: usize,
    classes: usize,
    smoothing: f32,
    of_rows: usize,
) -> (f64, u32) {
    let inv = 1.0 / of_rows as f32;
    let sm = Smoothing::new(smoothing, of_rows, classes);
    let mut loss = 0.0f64;
    let mut correct = 0;
    for r in 0..rows {
        let z = &logits[r * classes..(r + 1) * classes];
        let d = &mut dlogits[r * classes..(r + 1) * classes];
        let label = labels[r] as usize;
        let (mut best, mut max) = (0, f32::NEG_INFINITY);
        for (j, &v) in z.iter().enumerate() {
            if v > max {
                max = v;
                best = j;
            }
        }
        let mut sum = 0.0f32;
        for (dj, &v) in d.iter_mut().zip(z) {
            *dj = (v - max).exp();
            sum += *dj;
        }
        let s = inv / sum;
        if smoothing == 0.0 {
            loss += (sum.ln() - (z[label] - max)) as f64;
            for dj in d.iter_mut() {
                *dj *= s;
            }
            d[label] -= inv;
        } else {
            // -sum_k q_k (z_k - max - lse) = (1 - s) nll + s lse - (s / K) sum_k (z_k - max).
            let lse = sum.ln();
            let mut zsum = 0.0f32;
            for &v in z {
                zsum += v - max;
            }
            let nll = lse - (z[label] - max);
            loss += (sm.keep * nll + (sm.s * lse - sm.per_class * zsum)) as f64;
            for dj in d.iter_mut() {
                *dj = *dj * s - sm.d_class;
            }
            d[label] -= sm.d_label;
        }
        correct += (best == label) as u32;
    }
    (loss, correct)
}

/// The last layer's forward pass and the training loss in one call (the
/// twin of matmul.wgsl's `linear_softmax_xent`, the GPU's fused kernel):
/// `logits[rows, classes] = x[rows, inputs] w[classes, inputs]^T + bias`
/// as [`linear_forward`] computes them without ReLU, then
/// [`softmax_xent_part`] of those logits over a batch of `of_rows` rows
/// (`of_rows == rows` but for a data-parallel shard): `dlogits = (softmax
/// - q) / of_rows` with label smoothing `smoothing`, and the returned
/// summed loss and correct count. In f16-mixed the caller rounds `x` and
/// `w`, as for [`linear_forward`]; the logits and the loss stay f32.
pub fn linear_softmax_xent(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    logits: &mut [f32],
    labels: &[u32],
    dlogits: &mut [f32],
    rows: usize,
    inputs: usize,
    classes: usize,
    smoothing: f32,
    of_rows: usize,
) -> (f64, u32) {
    linear_forward(x, w, bias, logits, rows, inputs, classes, false);
    softmax_xent_part(logits, labels, dlogits, rows, classes, smoothing, of_rows)
}

/// The scalars of the distillation loss at temperature `T` with weight
/// `alpha` on the soft targets, label smoothing `s`, over a batch of `rows`
/// rows of `classes` classes, in f32 as both soft-target kernels use them
/// (the GPU's host computes them with this function, so the two round
/// alike).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoftTarget {
    /// `1 / T`.
    pub inv_t: f32,
    /// `1 - alpha`: the weight of the hard (label) loss.
    pub hard: f32,
    /// `alpha * T^2`: the weight of the KL term in the loss.
    pub kl: f32,
    /// `(1 - alpha) / rows`: the hard part's gradient scale.
    pub hard_grad: f32,
    /// `alpha * T / rows`: the soft part's gradient scale.
    pub soft_grad: f32,
    /// The label smoothing of the hard part.
    pub smoothing: Smoothing,
}

impl SoftTarget {
    /// The scalars of distillation at `temperature` with soft-target weight `alpha`, label
    /// smoothing `smoothing` of the hard part, over `rows` rows and `classes` classes.
    pub fn new(temperature: f32, alpha: f32, smoothing: f32, rows: usize, classes: usize) -> Self {
        let inv = 1.0 / rows.max(1) as f32;
        let hard = 1.0 - alpha;
        SoftTarget {
            inv_t: 1.0 / temperature,
            hard,
            kl: alpha * temperature * temperature,
            hard_grad: hard * inv,
            soft_grad: alpha * temperature * inv,
            smoothing: Smoothing::new(smoothing, 1, classes),
        }
    }
}

/// The teachers' soft targets: `probs = weight * softmax(logits / T)` per
/// row of `classes` logits (`inv_t = 1 / T`), added to `probs` when
/// `accumulate`, so that `K` teachers at weight `1 / K` give the mean of
/// their softened probabilities.
pub fn soft_targets(
    logits: &[f32],
    probs: &mut [f32],
    rows: usize,
    classes: usize,
    inv_t: f32,
    weight: f32,
    accumulate: bool,
) {
    for r in 0..rows {
        let z = &logits[r * classes..(r + 1) * classes];
        let p = &mut probs[r * classes..(r + 1) * classes];
        let (_, max) = argmax(z);
        let mut sum = 0.0f32;
        for &v in z {
            sum += ((v - max) * inv_t).exp();
        }
        let s = weight / sum;
        for (pj, &v) in p.iter_mut().zip(z) {
            let q = ((v - max) * inv_t).exp() * s;
            *pj = if accumulate { *pj + q } else { q };
        }
    }
}

/// The distillation loss of Hinton et al. (2015), forward and backward in
/// one pass, over `rows` rows of `classes` student logits `z` with the
/// teachers' probabilities at temperature `T` in `probs` and the labels:
/// per row `(1 - alpha) CE(q, softmax(z)) + alpha T^2 KL(p || softmax(z /
/// T))`, where `q` is the (optionally smoothed, as [`softmax_xent`]) label
/// target. Writes `dlogits = ((1 - alpha)(softmax(z) - q) + alpha T
/// (softmax(z / T) - p)) / rows`, the gradient of the batch's mean loss,
/// and returns the summed loss and the number of rows whose arg-max is the
/// label. With `alpha = 0` and no smoothing, the gradient and loss are
/// [`softmax_xent`]'s bit for bit (the soft terms add zeros).
#[allow(clippy::too_many_arguments)]
pub fn soft_target_xent(
    logits: &[f32],
    probs: &[f32],
    labels: &[u32],
    dlogits: &mut [f32],
    rows: usize,
    classes: usize,
    k: &SoftTarget,
) -> (f64, u32) {
    let sm = k.smoothing;
    let mut loss = 0.0f64;
    let mut correct = 0;
    for r in 0..rows {
        let z = &logits[r * classes..(r + 1) * classes];
        let p = &probs[r * classes..(r + 1) * classes];
        let d = &mut dlogits[r * classes..(r + 1) * classes];
        let label = labels[r] as usize;
        let (best, max) = argmax(z);
        let mut sum = 0.0f32;
        let mut sum_t = 0.0f32;
        let mut zsum = 0.0f32;
        for &v in z {
            sum += (v - max).exp();
            sum_t += ((v - max) * k.inv_t).exp();
            zsum += v - max;
        }
        let lse = sum.ln();
        let lse_t = sum_t.ln();
        // KL(p || s_T) = sum_j p_j (log p_j - log s_T,j), 0 log 0 = 0.
        let mut kl = 0.0f32;
        for (&pj, &v) in p.iter().zip(z) {
            if pj > 0.0 {
                kl += pj * (pj.ln() - ((v - max) * k.inv_t - lse_t));
            }
        }
        let nll = lse - (z[label] - max);
        let hard = if sm.s == 0.0 {
            nll
        } else {
            sm.keep * nll + (sm.s * lse - sm.per_class * zsum)
        };
        loss += (k.hard * hard + k.kl * kl) as f64;
        let hs = k.hard_grad / sum;
        let ss = k.soft_grad / sum_t;
        let d_class = sm.per_class * k.hard_grad;
        for (j, (dj, (&v, &pj))) in d.iter_mut().zip(z.iter().zip(p)).enumerate() {
            let mut h = (v - max).exp() * hs;
            if sm.s != 0.0 {
                h -= d_class;
            }
            if j == label {
                h -= sm.keep * k.hard_grad;
            }
            *dj = h + (((v - max) * k.inv_t).exp() * ss - pj * k.soft_grad);
        }
        correct += (best == label) as u32;
    }
    (loss, correct)
}

/// Per-row loss and arg-max of softmax cross-entropy, without gradients
/// (evaluation). Returns the summed loss.
pub fn softmax_xent_eval(logits: &[f32], labels: &[u32], predictions: &mut [u32], rows: usize, classes: usize) -> f64 {
    let mut loss = 0.0f64;
    for r in 0..rows {
        let z = &logits[r * classes..(r + 1) * classes];
        let (best, max) = argmax(z);
        let sum: f32 = z.iter().map(|&v| (v - max).exp()).sum();
        loss += (sum.ln() - (z[labels[r] as usize] - max)) as f64;
        predictions[r] = best as u32;
    }
    loss
}

/// Index and value of the largest element (the first one on ties).
pub fn argmax(z: &[f32]) -> (usize, f32) {
    z.iter().enumerate().fold(
        (0, f32::NEG_INFINITY),
        |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
    )
}

/// In-place softmax of each row.
pub fn softmax_rows(z: &mut [f32], classes: usize) {
    for row in z.chunks_exact_mut(classes) {
        let (_, max) = argmax(row);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
}

/// Back-propagate through a linear layer and the ReLU before it:
/// `dx[rows, in] = (dy[rows, out] * w[out, in]) * (x > 0)`, where `x` is the
/// layer's (post-ReLU) input.
pub fn backprop_input(dy: &[f32], w: &[f32], x: &[f32], dx: &mut [f32], rows: usize, inputs: usize, outputs: usize) {
    matmul_nn(dy, w, dx, rows, inputs, outputs);
    for (d, &h) in dx[..rows * inputs].iter_mut().zip(x) {
        if h <= 0.0 {
            *d = 0.0;
        }
    }
}

/// [`backprop_input`] through a layer whose input went through dropout
/// (backprop_input with FLAG_DROPOUT): `dx = (dy * w) * scale` where the
/// input `x > 0`, else 0. A dropped unit's input is 0, so the ReLU gate
/// drops its gradient too; a kept one carries the dropout scale.
pub fn backprop_input_dropout(
    dy: &[f32],
    w: &[f32],
    x: &[f32],
    dx: &mut [f32],
    rows: usize,
    inputs: usize,
    outputs: usize,
    scale: f32,
) {
    matmul_nn(dy, w, dx, rows, inputs, outputs);
    for (d, &h) in dx[..rows * inputs].iter_mut().zip(x) {
        *d = if h <= 0.0 { 0.0 } else { *d * scale };
    }
}

/// SGD on a layer, fused with its gradient:
/// `w[out, in] -= lr * dy[rows, out]^T * x[rows, in]`, and with `bias`,
/// `bias[out] -= lr * sum over rows of dy[rows, out]`. The GPU twin computes
/// both in one product (the bias as an extra column of `x` holding ones).
#[allow(clippy::too_many_arguments)]
pub fn weight_update(
    w: &mut [f32],
    bias: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    rows: usize,
    inputs: usize,
    outputs: usize,
    lr: f32,
) {
    gemm(outputs, inputs, rows, dy, true, x, false, w, 1.0, -lr, true);
    if let Some(b) = bias {
        bias_update(b, dy, rows, outputs, lr);
    }
}

/// SGD on a bias: `b[out] -= lr * sum over rows of dy[rows, out]`.
pub fn bias_update(b: &mut [f32], dy: &[f32], rows: usize, outputs: usize, lr: f32) {
    for row in dy[..rows * outputs].chunks_exact(outputs) {
        for (bj, &g) in b.iter_mut().zip(row) {
            *bj -= lr * g;
        }
    }
}

/// The bias gradient: `gb[out] = sum over rows of dy[rows, out]`.
pub fn column_sums(dy: &[f32], gb: &mut [f32], rows: usize, outputs: usize) {
    gb[..outputs].fill(0.0);
    for row in dy[..rows * outputs].chunks_exact(outputs) {
        for (b, &g) in gb.iter_mut().zip(row) {
            *b += g;
        }
    }
}

/// Multiply weights by a 0/1 mask, so pruned weights stay exactly zero.
pub fn apply_mask(w: &mut [f32], mask: &[f32]) {
    for (v, &m) in w.iter_mut().zip(mask) {
        *v *= m;
    }
}

/// Added to the global norm before dividing, as torch's `clip_grad_norm_`.
pub const CLIP_EPS: f32 = 1e-6;

/// A step's global gradient norm and the factor its gradients are scaled
/// by: `coef = min(1, max_norm / (norm + 1e-6))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clip {
    /// The global L2 norm of every layer's gradients.
    pub norm: f32,
    /// The factor every gradient is multiplied by, at most 1.
    pub coef: f32,
}

/// The sum of squares of every element of `tensors`, accumulated in f64,
/// eight lanes per tensor, lanes and tensors summed in order (a fixed
/// order, so the same on every run).
pub fn grad_sq_sum(tensors: &[&[f32]]) -> f64 {
    let mut total = 0.0f64;
    for t in tensors {
        let mut lanes = [0.0f64; 8];
        let chunks = t.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            for (acc, &v) in lanes.iter_mut().zip(c) {
                let v = f64::from(v);
                *acc += v * v;
            }
        }
        for (acc, &v) in lanes.iter_mut().zip(tail) {
            let v = f64::from(v);
            *acc += v * v;
        }
        total += lanes.iter().sum::<f64>();
    }
    total
}

/// Twin of clip_grad_norm.wgsl (`grad_sq_partial` over every tensor, then
/// `clip_coef`): the global L2 norm of `tensors` and torch's
/// `clip_grad_norm_` coefficient for `max_norm`.
pub fn clip_coef(tensors: &[&[f32]], max_norm: f32) -> Clip {
    let norm = grad_sq_sum(tensors).sqrt() as f32;
    let coef = max_norm / (norm + CLIP_EPS);
    Clip {
        norm,
        coef: if coef < 1.0 { coef } else { 1.0 },
    }
}

/// `v *= c`, elementwise.
pub fn scale(v: &mut [f32], c: f32) {
    for x in v {
        *x *= c;
    }
}

/// Round every value to the nearest f16 (ties to even) and back to f32:
/// the operand rounding of the f16-mixed products, the twin of WGSL's
/// `f32(f16(v))` in matmul.wgsl. Values beyond f16's range become
/// infinite, as an f16 store makes them.
pub fn round_f16(v: &mut [f32]) {
    for x in v {
        *x = half::f16::from_f32(*x).to_f32();
    }
}

/// Gather rows of raw features by index and preprocess them:
/// `x[r, :] = features[index[r], :] * scale + offset`.
pub fn gather_rows(features: &[f32], index: &[u32], dim: usize, scale: f32, offset: f32, x: &mut [f32]) {
    for (r, &i) in index.iter().enumerate() {
        let src = &features[i as usize * dim..(i as usize + 1) * dim];
        for (o, &v) in x[r * dim..(r + 1) * dim].iter_mut().zip(src) {
            *o = v * scale + offset;
        }
    }
}

/// [`gather_rows`] over features stored as bytes (the GPU keeps its copy
/// of IDX data the same way).
pub fn gather_rows_u8(features: &[u8], index: &[u32], dim: usize, scale: f32, offset: f32, x: &mut [f32]) {
    for (r, &i) in index.iter().enumerate() {
        let src = &features[i as usize * dim..(i as usize + 1) * dim];
        for (o, &v) in x[r * dim..(r + 1) * dim].iter_mut().zip(src) {
            *o = v as f32 * scale + offset;
        }
    }
}

/// [`gather_rows`] with each row translated (the first layer's gather with
/// a shift in matmul.wgsl): row `r` of the batch moves by the
/// `shift.offsets(key.row(r))` of its position, so output pixel `(y, x)` of
/// each channel reads source pixel `(y - dy, x - dx)`, and a pixel from
/// outside the image is a raw 0, preprocessed (`0 * scale + offset`).
/// `dim` is `channels * height * width`.
pub fn gather_rows_shifted<T: Copy + Into<f32>>(
    features: &[T],
    index: &[u32],
    dim: usize,
    scale: f32,
    offset: f32,
    x: &mut [f32],
    shift: &Shift,
    key: Key,
) {
    let (h, w) = (shift.height as usize, shift.width as usize);
    let plane = h * w;
    let background = 0.0 * scale + offset;
    for (r, &i) in index.iter().enumerate() {
        let (dx, dy) = shift.offsets(key.row(r as u32));
        let src = &features[i as usize * dim..(i as usize + 1) * dim];
        let out = &mut x[r * dim..(r + 1) * dim];
        for (src, out) in src.chunks_exact(plane).zip(out.chunks_exact_mut(plane)) {
            for (y, out_row) in out.chunks_exact_mut(w).enumerate() {
                let sy = y as i64 - i64::from(dy);
                if sy < 0 || sy >= h as i64 {
                    out_row.fill(background);
                    continue;
                }
                let src_row = &src[sy as usize * w..(sy as usize + 1) * w];
                // Output columns lo..hi read source columns lo - dx..hi - dx.
                let lo = dx.clamp(0, w as i32) as usize;
                let hi = (w as i32 + dx).clamp(0, w as i32) as usize;
                let (left, rest) = out_row.split_at_mut(lo.min(hi));
                let (mid, right) = rest.split_at_mut(hi.saturating_sub(lo));
                left.fill(background);
                right.fill(background);
                let from = (lo as i32 - dx) as usize;
                for (o, &v) in mid.iter_mut().zip(&src_row[from..]) {
                    *o = v.into() * scale + offset;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward triple loop in f64, the reference for `gemm`.
    fn naive(m: usize, n: usize, k: usize, a: &[f32], ta: bool, b: &[f32], tb: bool) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] } as f64;
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] } as f64;
                    c[i * n + j] += av * bv;
                }
            }
        }
        c
    }

    #[test]
    fn gemm_variants_match_naive() {
        // Small (one thread), and above PARALLEL_MIN_FLOPS split by rows
        // (m >= n) and by columns, with 3 threads so blocks are uneven.
        let mut team = team::Team::new(3, team::TRAIN_SPIN);
        team.install(|| {
            for (m, n, k) in [(37, 29, 71), (131, 97, 101), (97, 131, 101)] {
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
                let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    let mut c = vec![f32::NAN; m * n];
                    gemm(m, n, k, &a, ta, &b, tb, &mut c, 0.0, 1.0, false);
                    let r = naive(m, n, k, &a, ta, &b, tb);
                    for (x, y) in c.iter().zip(&r) {
                        assert!(
                            (*x as f64 - y).abs() < 1e-4 * (1.0 + y.abs()),
                            "{m}x{n}x{k} {ta} {tb}: {x} vs {y}"
                        );
                    }
                    // Accumulating form: c = 1*c - 0.5*op(a)op(b) = 0.5 * r.
                    gemm(m, n, k, &a, ta, &b, tb, &mut c, 1.0, -0.5, true);
                    for (x, y) in c.iter().zip(&r) {
                        assert!(
                            (*x as f64 - 0.5 * y).abs() < 1e-4 * (1.0 + y.abs()),
                            "{m}x{n}x{k} acc: {x} vs {y}"
                        );
                    }
                }
            }
        });
    }

    /// softmax_xent as it was before label smoothing, kept to check that
    /// `smoothing == 0` computes exactly what it did.
    fn softmax_xent_unsmoothed(
        logits: &[f32],
        labels: &[u32],
        dlogits: &mut [f32],
        rows: usize,
        classes: usize,
    ) -> (f64, u32) {
        let inv = 1.0 / rows as f32;
        let mut loss = 0.0f64;
        let mut correct = 0;
        for r in 0..rows {
            let z = &logits[r * classes..(r + 1) * classes];
            let d = &mut dlogits[r * classes..(r + 1) * classes];
            let label = labels[r] as usize;
            let (mut best, mut max) = (0, f32::NEG_INFINITY);
            for (j, &v) in z.iter().enumerate() {
                if v > max {
                    max = v;
                    best = j;
                }
            }
            let mut sum = 0.0f32;
            for (dj, &v) in d.iter_mut().zip(z) {
                *dj = (v - max).exp();
                sum += *dj;
            }
            loss += (sum.ln() - (z[label] - max)) as f64;
            let s = inv / sum;
            for dj in d.iter_mut() {
                *dj *= s;
            }
            d[label] -= inv;
            correct += (best == label) as u32;
        }
        (loss, correct)
    }

    #[test]
    fn softmax_xent_without_smoothing_is_unchanged_bit_for_bit() {
        let mut seed = 1u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 8.0 - 4.0
        };
        for (rows, classes) in [(1, 3), (7, 10), (33, 37), (64, 10)] {
            let z: Vec<f32> = (0..rows * classes).map(|_| next()).collect();
            let labels: Vec<u32> = (0..rows).map(|r| ((r * 7 + 3) % classes) as u32).collect();
            let (mut d, mut d0) = (vec![0.0; z.len()], vec![0.0; z.len()]);
            let got = softmax_xent(&z, &labels, &mut d, rows, classes, 0.0);
            let want = softmax_xent_unsmoothed(&z, &labels, &mut d0, rows, classes);
            assert_eq!(got.0.to_bits(), want.0.to_bits(), "{rows}x{classes} loss");
            assert_eq!(got.1, want.1);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&d), bits(&d0), "{rows}x{classes} dlogits");
            // And smoothing changes both.
            let smoothed = softmax_xent(&z, &labels, &mut d, rows, classes, 0.1);
            assert_ne!(smoothed.0, want.0);
            assert_ne!(bits(&d), bits(&d0));
        }
    }

    #[test]
    fn softmax_xent_gradient_rows_sum_to_zero() {
        let z = [1.0, 2.0, 3.0, -1.0, 0.5, 0.0];
        let mut d = [0.0; 6];
        let (loss, correct) = softmax_xent(&z, &[2, 0], &mut d, 2, 3, 0.0);
        // Row 0: log(e^1+e^2+e^3) - 3 = 0.407606; row 1: log(e^-1+e^.5+e^0) + 1 = 2.104131.
        assert!((loss - (0.407_605_96 + 2.104_130_6)).abs() < 1e-5, "{loss}");
        assert_eq!(correct, 1);
        assert!(d[..3].iter().sum::<f32>().abs() < 1e-6);
        assert!(d[3..].iter().sum::<f32>().abs() < 1e-6);
    }
}
