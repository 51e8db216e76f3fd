//! Every WGSL kernel against its CPU twin (src/cpu/kernels.rs), both checked
//! against a reference accumulated in f64.
//!
//! Shapes are chosen to break tiling assumptions: not multiples of the 64x64
//! output tile, the 16-deep k step or the 64/256-thread workgroups (37x29x71,
//! 65x33x17, 130x70x3), a 1x1x1 case, and shapes needing more workgroups
//! than one grid dimension allows. Outputs are poisoned with NaN before the
//! kernel runs (see `wgtrain::gpu::ops`), so an unwritten element fails.
//!
//! Tolerances. With unit roundoff u = 2^-24, a dot product of length k
//! summed in f32 in any order is within gamma_k * sum|a_i b_i| of the exact
//! value, gamma_k = k u / (1 - k u) (Higham, Accuracy and Stability of
//! Numerical Algorithms, 3.1). The bounds below use (k + c) u * sum|a_i b_i|
//! with a small c for the epilogue's extra roundings (bias add, scaling of
//! gathered inputs, the SGD step), computed element by element in f64.

mod common;

use wgtrain::cpu::kernels as cpu;
use wgtrain::gpu::ops::{self, Input};

const U: f64 = 1.0 / (1u64 << 24) as f64;

/// A layer-input case: its name, what the GPU gets, what the CPU twin gets
/// (preprocessed in f32), the exact input, and the extra roundings the
/// epilogue and the preprocessing add to the bound.
type InputCase<'a> = (&'a str, Input<'a>, &'a [f32], &'a [f64], f64);

/// Assert `got` (GPU) and `twin` (CPU) both lie within `bound[i]` of the f64
/// `reference`.
fn assert_close(what: &str, got: &[f32], twin: &[f32], reference: &[f64], bound: &[f64]) {
    assert_eq!(got.len(), reference.len(), "{what}: length");
    assert_eq!(twin.len(), reference.len(), "{what}: CPU twin length");
    for i in 0..reference.len() {
        let (g, t, r, b) = (got[i] as f64, twin[i] as f64, reference[i], bound[i]);
        assert!(
            (g - r).abs() <= b,
            "{what}[{i}]: GPU {g} vs reference {r} (|diff| {:e} > bound {b:e})",
            (g - r).abs()
        );
        assert!(
            (t - r).abs() <= b,
            "{what}[{i}]: CPU twin {t} vs reference {r} (|diff| {:e} > bound {b:e})",
            (t - r).abs()
        );
    }
}

/// `c = op(a) op(b)` in f64, with `sum |a||b|` per element, for `a` stored
/// `[m, k]` (or `[k, m]` when `ta`) and `b` stored `[k, n]` (or `[n, k]`
/// when `tb`).
#[allow(clippy::too_many_arguments)]
fn reference_matmul(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, ta: bool, tb: bool) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![0.0; m * n];
    let mut abs = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut sa) = (0.0f64, 0.0f64);
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] } as f64;
                let bv = if tb { b[j * k + p] } else { b[p * n + j] } as f64;
                s += av * bv;
                sa += (av * bv).abs();
            }
            c[i * n + j] = s;
            abs[i * n + j] = sa;
        }
    }
    (c, abs)
}

/// `(m, n, k)` of the GEMM-family tests. Most run with 32x32 tiles; 5x70x300
/// (a long k over a small output) with 16x16 tiles in sixteen k-slices,
/// where 300 is no multiple of a round of the slices (16 x 4); 600x590x5
/// (100 workgroups of 64x64) with 64x64 tiles; and the last (144 workgroups
/// of 128x128) with 128x128 tiles; see `tile_variants_are_all_covered`.
/// `every_tile_variant_matches_the_reference` runs every variant on the
/// small ones.
const SHAPES: [(usize, usize, usize); 8] = [
    (37, 29, 71),
    (65, 33, 17),
    (1, 1, 1),
    (130, 70, 3),
    (64, 64, 64),
    (5, 70, 300),
    (600, 590, 5),
    (1500, 1450, 21),
];

#[test]
fn tile_variants_are_all_covered() {
    use wgtrain::gpu::Tile;

    let tiles: Vec<_> = SHAPES.iter().map(|&(m, n, k)| ops::gemm_tile(m, n, k)).collect();
    for t in Tile::ALL {
        assert!(tiles.contains(&t), "no {} shape in {tiles:?}", t.name());
    }
}

/// Every tile variant on every small shape, whichever variant the shape
/// would choose: the staging, k stepping and edge guards differ by variant.
#[test]
fn every_tile_variant_matches_the_reference() {
    let Some(ctx) = common::gpu() else { return };
    for (s, &(m, n, k)) in SHAPES[..7].iter().enumerate() {
        let a = common::random(m * k, 30 + s as u64);
        let b = common::random(k * n, 40 + s as u64);
        type Cpu = fn(&[f32], &[f32], &mut [f32], usize, usize, usize);
        let variants: [(&str, Cpu, bool, bool); 3] = [
            ("nn", cpu::matmul_nn, false, false),
            ("nt", cpu::matmul_nt, false, true),
            ("tn", cpu::matmul_tn, true, false),
        ];
        for (variant, cpu_fn, ta, tb) in variants {
            let (r, abs) = reference_matmul(&a, &b, m, n, k, ta, tb);
            let bound: Vec<f64> = abs.iter().map(|s| (k as f64 + 1.0) * U * s).collect();
            let mut twin = vec![f32::NAN; m * n];
            cpu_fn(&a, &b, &mut twin, m, n, k);
            for tile in wgtrain::gpu::Tile::ALL {
                let got = ops::matmul_with_tile(&ctx, variant, &a, &b, m, n, k, tile).unwrap();
                let what = format!("matmul_{variant} {m}x{n}x{k} with {} tiles", tile.name());
                assert_close(&what, &got, &twin, &r, &bound);
            }
        }
    }
}

#[test]
fn matmuls_match_cpu_twins() {
    let Some(ctx) = common::gpu() else { return };
    for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
        let a = common::random(m * k, 10 + s as u64);
        let b = common::random(k * n, 20 + s as u64);
        type Cpu = fn(&[f32], &[f32], &mut [f32], usize, usize, usize);
        type Gpu = fn(
            &wgtrain::gpu::GpuContext,
            &[f32],
            &[f32],
            usize,
            usize,
            usize,
        ) -> Result<Vec<f32>, wgtrain::error::GpuError>;
        let variants: [(&str, Cpu, Gpu, bool, bool); 3] = [
            ("matmul_nn", cpu::matmul_nn, ops::matmul_nn, false, false),
            ("matmul_nt", cpu::matmul_nt, ops::matmul_nt, false, true),
            ("matmul_tn", cpu::matmul_tn, ops::matmul_tn, true, false),
        ];
        for (name, cpu_fn, gpu_fn, ta, tb) in variants {
            let got = gpu_fn(&ctx, &a, &b, m, n, k).unwrap();
            let mut twin = vec![f32::NAN; m * n];
            cpu_fn(&a, &b, &mut twin, m, n, k);
            let (r, abs) = reference_matmul(&a, &b, m, n, k, ta, tb);
            let bound: Vec<f64> = abs.iter().map(|s| (k as f64 + 1.0) * U * s).collect();
            assert_close(&format!("{name} {m}x{n}x{k}"), &got, &twin, &r, &bound);
        }
    }
}

/// Raw byte-valued features, an index that repeats and reorders examples,
/// and the preprocessed rows the index selects, in f32 (what the CPU path
/// feeds its kernels) and in f64.
struct Gathered {
    features: Vec<f32>,
    index: Vec<u32>,
    scale: f32,
    offset: f32,
    x32: Vec<f32>,
    x64: Vec<f64>,
}

fn gathered(rows: usize, dim: usize, seed: u64) -> Gathered {
    let examples = rows + 5;
    let features: Vec<f32> = common::random(examples * dim, seed)
        .iter()
        .map(|v| ((v + 1.0) * 127.9).floor())
        .collect();
    let index: Vec<u32> = (0..rows).map(|r| ((r * 7 + 3) % examples) as u32).collect();
    let (scale, offset) = (1.0 / 255.0, -0.25);
    let mut x32 = vec![0.0; rows * dim];
    cpu::gather_rows(&features, &index, dim, scale, offset, &mut x32);
    let x64 = index
        .iter()
        .flat_map(|&i| &features[i as usize * dim..(i as usize + 1) * dim])
        .map(|&v| v as f64 * scale as f64 + offset as f64)
        .collect();
    Gathered {
        features,
        index,
        scale,
        offset,
        x32,
        x64,
    }
}

#[test]
fn linear_forward_matches_cpu_twin() {
    let Some(ctx) = common::gpu() else { return };
    for (s, &(rows, outputs, inputs)) in SHAPES.iter().enumerate() {
        let seed = 100 + 10 * s as u64;
        let w = common::random(outputs * inputs, seed);
        let bias = common::random(outputs, seed + 1);
        let g = gathered(rows, inputs, seed + 2);
        let dense = common::random(rows * inputs, seed + 3);
        let dense64: Vec<f64> = dense.iter().map(|&v| v as f64).collect();
        for relu in [false, true] {
            let cases: [InputCase; 3] = [
                ("dense", Input::Dense(&dense), &dense, &dense64, 2.0),
                (
                    "gathered u8",
                    Input::Gathered {
                        features: &g.features,
                        index: &g.index,
                        scale: g.scale,
                        offset: g.offset,
                        as_u8: true,
                    },
                    &g.x32,
                    &g.x64,
                    4.0,
                ),
                (
                    "gathered f32",
                    Input::Gathered {
                        features: &g.features,
                        index: &g.index,
                        scale: g.scale,
                        offset: g.offset,
                        as_u8: false,
                    },
                    &g.x32,
                    &g.x64,
                    4.0,
                ),
            ];
            for (name, input, x32, x64, c) in cases {
                let got = ops::linear_forward(&ctx, input, &w, &bias, rows, inputs, outputs, relu).unwrap();
                let mut twin = vec![f32::NAN; rows * outputs];
                cpu::linear_forward(x32, &w, &bias, &mut twin, rows, inputs, outputs, relu);
                let mut r = vec![0.0; rows * outputs];
                let mut bound = vec![0.0; rows * outputs];
                for i in 0..rows {
                    for j in 0..outputs {
                        let (mut v, mut abs) = (bias[j] as f64, (bias[j] as f64).abs());
                        for p in 0..inputs {
                            let t = x64[i * inputs + p] * w[j * inputs + p] as f64;
                            v += t;
                            abs += t.abs();
                        }
                        r[i * outputs + j] = if relu { v.max(0.0) } else { v };
                        bound[i * outputs + j] = (inputs as f64 + c) * U * abs;
                    }
                }
                assert_close(
                    &format!("linear_forward {name} relu={relu} {rows}x{outputs}x{inputs}"),
                    &got,
                    &twin,
                    &r,
                    &bound,
                );
            }
        }
    }
}

#[test]
fn backprop_input_matches_cpu_twin() {
    let Some(ctx) = common::gpu() else { return };
    for (s, &(rows, inputs, outputs)) in SHAPES.iter().enumerate() {
        let seed = 200 + 10 * s as u64;
        let dy = common::random(rows * outputs, seed);
        let w = common::random(outputs * inputs, seed + 1);
        // Post-ReLU inputs: about half exactly zero, which must mask.
        let x: Vec<f32> = common::random(rows * inputs, seed + 2)
            .iter()
            .map(|v| v.max(0.0))
            .collect();
        let got = ops::backprop_input(&ctx, &dy, &w, &x, rows, inputs, outputs).unwrap();
        let mut twin = vec![f32::NAN; rows * inputs];
        cpu::backprop_input(&dy, &w, &x, &mut twin, rows, inputs, outputs);
        let (mut r, abs) = reference_matmul(&dy, &w, rows, inputs, outputs, false, false);
        for (v, &h) in r.iter_mut().zip(&x) {
            if h <= 0.0 {
                *v = 0.0;
            }
        }
        let bound: Vec<f64> = abs.iter().map(|s| (outputs as f64 + 1.0) * U * s).collect();
        assert_close(
            &format!("backprop_input {rows}x{inputs}x{outputs}"),
            &got,
            &twin,
            &r,
            &bound,
        );
        // The mask is exact: masked elements are zero, not merely small.
        for (i, (&g, &h)) in got.iter().zip(&x).enumerate() {
            assert!(h > 0.0 || g == 0.0, "backprop_input[{i}] = {g} where x = {h}");
        }
    }
}

#[test]
fn weight_update_matches_cpu_twin() {
    let Some(ctx) = common::gpu() else { return };
    let lr = 0.37f32;
    for (s, &(outputs, inputs, rows)) in SHAPES.iter().enumerate() {
        let seed = 300 + 10 * s as u64;
        let w = common::random(outputs * inputs, seed);
        let dy = common::random(rows * outputs, seed + 1);
        let dense = common::random(rows * inputs, seed + 2);
        let dense64: Vec<f64> = dense.iter().map(|&v| v as f64).collect();
        let g = gathered(rows, inputs, seed + 3);
        let cases: [InputCase; 2] = [
            ("dense", Input::Dense(&dense), &dense, &dense64, 3.0),
            (
                "gathered u8",
                Input::Gathered {
                    features: &g.features,
                    index: &g.index,
                    scale: g.scale,
                    offset: g.offset,
                    as_u8: true,
                },
                &g.x32,
                &g.x64,
                5.0,
            ),
        ];
        for (name, input, x32, x64, c) in cases {
            let (got, no_bias) = ops::weight_update(&ctx, &w, None, &dy, input, rows, inputs, outputs, lr).unwrap();
            assert!(no_bias.is_none());
            let mut twin = w.clone();
            cpu::weight_update(&mut twin, None, &dy, x32, rows, inputs, outputs, lr);
            let mut r = vec![0.0; outputs * inputs];
            let mut bound = vec![0.0; outputs * inputs];
            for i in 0..outputs {
                for j in 0..inputs {
                    let (mut sum, mut abs) = (0.0f64, 0.0f64);
                    for p in 0..rows {
                        let t = dy[p * outputs + i] as f64 * x64[p * inputs + j];
                        sum += t;
                        abs += t.abs();
                    }
                    let w0 = w[i * inputs + j] as f64;
                    r[i * inputs + j] = w0 - lr as f64 * sum;
                    bound[i * inputs + j] = (rows as f64 + c) * U * (w0.abs() + lr as f64 * abs);
                }
            }
            assert_close(
                &format!("weight_update {name} {outputs}x{inputs}x{rows}"),
                &got,
                &twin,
                &r,
                &bound,
            );
        }
    }
}

/// A layer's update as the trainer runs it (weight_update with bias_update
/// fused in, then apply_mask when pruning) against the CPU twins
/// (weight_update with the bias, then apply_mask) run in turn.
#[test]
fn sgd_update_matches_cpu_twins() {
    let Some(ctx) = common::gpu() else { return };
    let lr = 0.37f32;
    // 63 inputs: the bias column lands in the last tile; 64: it needs a tile of its own.
    for (s, &(outputs, inputs, rows)) in [(37, 63, 29), (65, 64, 17), (1, 1, 1), (600, 590, 5)]
        .iter()
        .enumerate()
    {
        let seed = 350 + 10 * s as u64;
        let w = common::random(outputs * inputs, seed);
        let b = common::random(outputs, seed + 1);
        let dy = common::random(rows * outputs, seed + 2);
        let g = gathered(rows, inputs, seed + 3);
        let mask: Vec<f32> = common::random(outputs * inputs, seed + 4)
            .iter()
            .map(|v| (*v > -0.3) as u8 as f32)
            .collect();
        for m in [None, Some(&mask[..])] {
            let input = Input::Gathered {
                features: &g.features,
                index: &g.index,
                scale: g.scale,
                offset: g.offset,
                as_u8: true,
            };
            let (gw, gb) = ops::sgd_update(&ctx, &w, &b, m, &dy, input, rows, inputs, outputs, lr).unwrap();
            let (mut tw, mut tb) = (w.clone(), b.clone());
            cpu::weight_update(&mut tw, Some(&mut tb), &dy, &g.x32, rows, inputs, outputs, lr);
            if let Some(m) = m {
                cpu::apply_mask(&mut tw, m);
            }
            let mut rw = vec![0.0; outputs * inputs];
            let mut bw = vec![0.0; outputs * inputs];
            for i in 0..outputs {
                for j in 0..inputs {
                    let (mut sum, mut abs) = (0.0f64, 0.0f64);
                    for p in 0..rows {
                        let t = dy[p * outputs + i] as f64 * g.x64[p * inputs + j];
                        sum += t;
                        abs += t.abs();
                    }
                    let keep = m.map_or(1.0, |m| m[i * inputs + j] as f64);
                    let w0 = w[i * inputs + j] as f64;
                    rw[i * inputs + j] = (w0 - lr as f64 * sum) * keep;
                    bw[i * inputs + j] = (rows as f64 + 5.0) * U * (w0.abs() + lr as f64 * abs) * keep;
                }
            }
            let what = format!("sgd weight_update mask={} {outputs}x{inputs}x{rows}", m.is_some());
            assert_close(&what, &gw, &tw, &rw, &bw);
            // Pruned weights are exactly zero, not merely small.
            if let Some(m) = m {
                assert!(
                    gw.iter().zip(m).all(|(v, k)| *k != 0.0 || *v == 0.0),
                    "{what}: pruned weight nonzero"
                );
            }
            let (rb, bb) = reference_bias_update(&b, &dy, rows, outputs, lr);
            assert_close(&format!("sgd bias_update {outputs}x{rows}"), &gb, &tb, &rb, &bb);
        }
    }
}

#[test]
fn apply_mask_matches_cpu_twin() {
    let Some(ctx) = common::gpu() else { return };
    for (s, &len) in [1usize, 63, 4097].iter().enumerate() {
        let w = common::random(len, 900 + s as u64);
        let mask: Vec<f32> = common::random(len, 950 + s as u64)
            .iter()
            .map(|v| (*v > 0.0) as u8 as f32)
            .collect();
        let got = ops::apply_mask(&ctx, &w, &mask).unwrap();
        let mut twin = w.clone();
        cpu::apply_mask(&mut twin, &mask);
        // Multiplying by 0 or 1 is exact.
        assert_eq!(got, twin, "apply_mask {len}");
    }
}

#[test]
fn bias_update_matches_cpu_twin() {
    let Some(ctx) = common::gpu() else { return };
    let lr = 0.21f32;
    for (s, &(rows, outputs)) in [(37, 29), (1, 1), (3, 130), (64, 65)].iter().enumerate() {
        let seed = 400 + 10 * s as u64;
        let b = common::random(outputs, seed);
        let dy = common::random(rows * outputs, seed + 1);
        let got = ops::bias_update(&ctx, &b, &dy, rows, outputs, lr).unwrap();
        let mut twin = b.clone();
        cpu::bias_update(&mut twin, &dy, rows, outputs, lr);
        let (r, bound) = reference_bias_update(&b, &dy, rows, outputs, lr);
        assert_close(&format!("bias_update {rows}x{outputs}"), &got, &twin, &r, &bound);
    }
}

/// `b - lr * colsum(dy)` in f64 and its bound. The CPU twin subtracts row
/// by row, so each of its `rows` steps rounds `b` too: hence `|b|` inside
/// the `(rows + 2) u` factor.
fn reference_bias_update(b: &[f32], dy: &[f32], rows: usize, outputs: usize, lr: f32) -> (Vec<f64>, Vec<f64>) {
    let lr = lr as f64;
    (0..outputs)
        .map(|j| {
            let col = (0..rows).map(|r| dy[r * outputs + j] as f64);
            let sum: f64 = col.clone().sum();
            let abs: f64 = col.map(f64::abs).sum();
            let v = b[j] as f64 - lr * sum;
            (v, (rows as f64 + 2.0) * U * (b[j].abs() as f64 + v.abs() + lr * abs))
        })
        .unzip()
}

/// Softmax cross-entropy in f64: `(dlogits, loss, correct, classes)`.
fn reference_softmax(z: &[f32], labels: &[u32], rows: usize, classes: usize) -> (Vec<f64>, f64, u32, Vec<u32>) {
    let mut d = vec![0.0; rows * classes];
    let (mut loss, mut correct, mut pred) = (0.0, 0, vec![0; rows]);
    for r in 0..rows {
        let row: Vec<f64> = z[r * classes..(r + 1) * classes].iter().map(|&v| v as f64).collect();
        let (best, max) = row.iter().enumerate().fold(
            (0, f64::NEG_INFINITY),
            |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
        );
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        let l = labels[r] as usize;
        loss += sum.ln() - (row[l] - max);
        for j in 0..classes {
            d[r * classes + j] = ((row[j] - max).exp() / sum - (j == l) as u8 as f64) / rows as f64;
        }
        correct += (best == l) as u32;
        pred[r] = best as u32;
    }
    (d, loss, correct, pred)
}

#[test]
fn softmax_xent_matches_cpu_twin() {
    let Some(ctx) = common::gpu() else { return };
    // 300 rows: more than the 256 threads of the one workgroup.
    for (s, &(rows, classes)) in [(37, 10), (1, 1), (1, 3), (300, 7), (5, 301)].iter().enumerate() {
        let seed = 500 + 10 * s as u64;
        let z: Vec<f32> = common::random(rows * classes, seed).iter().map(|v| 4.0 * v).collect();
        let labels: Vec<u32> = common::random(rows, seed + 1)
            .iter()
            .map(|v| (((v + 1.0) / 2.0 * classes as f32) as u32).min(classes as u32 - 1))
            .collect();
        let (d, loss, correct) = ops::softmax_xent(&ctx, &z, &labels, rows, classes, 0.0).unwrap();
        let mut twin = vec![f32::NAN; rows * classes];
        let (twin_loss, twin_correct) = cpu::softmax_xent(&z, &labels, &mut twin, rows, classes, 0.0);
        let (rd, rloss, rcorrect, _) = reference_softmax(&z, &labels, rows, classes);
        // exp and log are accurate to a few ulp on every backend WGSL
        // targets (the spec allows 3 + 2|x| ulp for exp of |x| <= 8 here,
        // so ~20 ulp); the softmax divides by a sum of `classes` terms.
        // Each gradient element is within (classes + 24) u of its size
        // (<= 1/rows); each loss term within that of log-sum-exp's size,
        // and summing `rows` terms adds rows u of the total.
        let elem = (classes as f64 + 24.0) * U / rows as f64;
        let bound: Vec<f64> = rd
            .iter()
            .map(|v| elem + (classes as f64 + 24.0) * U * v.abs())
            .collect();
        assert_close(&format!("softmax_xent {rows}x{classes}"), &d, &twin, &rd, &bound);
        let loss_bound = (classes as f64 + 24.0 + rows as f64) * U * (rloss.abs() + rows as f64 * 8.0);
        assert!((loss - rloss).abs() <= loss_bound, "loss {loss} vs {rloss}");
        assert!(
            (twin_loss - rloss).abs() <= loss_bound,
            "CPU loss {twin_loss} vs {rloss}"
        );
        // The arg-max compares the same f32 logits on both sides: exact.
        assert_eq!(correct, twin_correct, "softmax_xent {rows}x{classes} correct");
        assert_eq!(correct, rcorrect);
    }
}

#[test]
fn softmax_xent_eval_matches_cpu_twin() {
    let Some(ctx) = common::gpu() else { return };
    for (s, &(rows, classes)) in [(37, 10), (1, 1), (300, 7)].iter().enumerate() {
        let seed = 600 + 10 * s as u64;
        let z: Vec<f32> = common::random(rows * classes, seed).iter().map(|v| 4.0 * v).collect();
        let labels: Vec<u32> = (0..rows).map(|r| (r * 3 % classes) as u32).collect();
        let (pred, loss) = ops::softmax_xent_eval(&ctx, &z, &labels, rows, classes).unwrap();
        let mut twin_pred = vec![u32::MAX; rows];
        let twin_loss = cpu::softmax_xent_eval(&z, &labels, &mut twin_pred, rows, classes);
        let (_, rloss, _, rpred) = reference_softmax(&z, &labels, rows, classes);
        assert_eq!(pred, twin_pred, "softmax_xent_eval {rows}x{classes} classes");
        assert_eq!(pred, rpred);
        let loss_bound = (classes as f64 + 24.0 + rows as f64) * U * (rloss.abs() + rows as f64 * 8.0);
        assert!((loss - rloss).abs() <= loss_bound, "loss {loss} vs {rloss}");
        assert!(
            (twin_loss - rloss).abs() <= loss_bound,
            "CPU loss {twin_loss} vs {rloss}"
        );
    }
}

/// Rows (of 64-row matmul tiles, or 64-output bias workgroups) enough to
/// need more workgroups than one grid dimension allows, so the grid is
/// folded into two dimensions.
fn beyond_one_dimension(ctx: &wgtrain::gpu::GpuContext) -> usize {
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    // Some drivers allow 2^31 - 1; keep the test's memory bounded there,
    // at the cost of not folding (the report says so).
    if max > 1 << 20 {
        eprintln!("note: this adapter allows {max} workgroups per dimension; the test stays below it");
        return 64 * (1 << 16) + 3;
    }
    64 * (max + 1) + 3
}

#[test]
fn matmul_folds_a_grid_larger_than_one_dimension() {
    let Some(ctx) = common::gpu() else { return };
    let (m, n, k) = (beyond_one_dimension(&ctx), 2, 3);
    let a = common::random(m * k, 700);
    let b = common::random(n * k, 701);
    let got = ops::matmul_nt(&ctx, &a, &b, m, n, k).unwrap();
    let mut twin = vec![f32::NAN; m * n];
    cpu::matmul_nt(&a, &b, &mut twin, m, n, k);
    let (r, abs) = reference_matmul(&a, &b, m, n, k, false, true);
    let bound: Vec<f64> = abs.iter().map(|s| (k as f64 + 1.0) * U * s).collect();
    assert_close(&format!("matmul_nt {m}x{n}x{k}"), &got, &twin, &r, &bound);
}

#[test]
fn bias_update_folds_a_grid_larger_than_one_dimension() {
    let Some(ctx) = common::gpu() else { return };
    let (rows, outputs, lr) = (2, beyond_one_dimension(&ctx), 0.5);
    let b = common::random(outputs, 800);
    let dy = common::random(rows * outputs, 801);
    let got = ops::bias_update(&ctx, &b, &dy, rows, outputs, lr).unwrap();
    let mut twin = b.clone();
    cpu::bias_update(&mut twin, &dy, rows, outputs, lr);
    let (r, bound) = reference_bias_update(&b, &dy, rows, outputs, lr);
    assert_close(&format!("bias_update {rows}x{outputs}"), &got, &twin, &r, &bound);
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let Some(ctx) = common::gpu() else { return };
    let err = ops::matmul_nn(&ctx, &[1.0; 5], &[1.0; 6], 2, 2, 3).unwrap_err();
    assert!(err.to_string().contains("a holds 5 values"), "{err}");
    let err = ops::softmax_xent(&ctx, &[0.0; 4], &[0, 2], 2, 2, 0.0).unwrap_err();
    assert!(err.to_string().contains("label 2"), "{err}");
}

#[test]
fn bench_matmul_reports_a_time() {
    let Some(ctx) = common::gpu() else { return };
    for variant in ["nn", "nt", "tn"] {
        let (t, tile) = ops::bench_matmul(&ctx, variant, 33, 17, 9, 3, None).unwrap();
        assert!(t.is_finite() && t > 0.0, "{variant}: {t}");
        assert_eq!(tile, wgtrain::gpu::Tile::choose(33, 17, 9, ctx.is_software()));
    }
}

/// Per-kernel timestamps of training steps: on an adapter with
/// TIMESTAMP_QUERY, every kernel of a step (the loss folded into fc2's
/// forward pass) is named once, timed once per step, with a positive time;
/// without it, `None`.
#[test]
fn kernel_times_cover_every_kernel_of_a_step() {
    let Some(ctx) = common::gpu() else { return };
    let times = wgtrain::gpu::timing::kernel_times(&ctx, &[70, 33, 9], 16, 3).unwrap();
    let Some(times) = times else {
        assert!(!ctx.supports_timestamps());
        eprintln!("{}: no TIMESTAMP_QUERY, kernel_times is None", ctx.name());
        return;
    };
    let names: Vec<&str> = times.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "fc1 linear_forward",
            "fc2 linear_softmax_xent",
            "fc2 backprop_input",
            "fc2 weight_update",
            "fc1 weight_update"
        ]
    );
    for k in &times {
        assert_eq!(k.calls, 3, "{}", k.name);
        assert!(k.total_us > 0.0 && k.mean_us > 0.0, "{k:?}");
        assert!(
            (k.mean_us * 3.0 - k.total_us).abs() <= 1e-9 * k.total_us.max(1.0),
            "{k:?}"
        );
    }
    eprintln!("{times:#?}");
}

/// Ragged sizes for the elementwise optimizer updates: one element, less
/// than a workgroup, a few workgroups with a partial last one.
const OPTIM_SIZES: [usize; 3] = [1, 7, 1000];

/// SGD with momentum in f64 on the same f32 inputs, and its bound: each of
/// the four f32 operations (`wd p`, `mu b`, the adds, `lr d`) rounds once,
/// relative to the magnitudes it combines, and the momentum buffer's
/// rounding reaches the parameter through `lr`.
fn reference_sgd(p: &[f32], g: &[f32], b: &[f32], s: wgtrain::cpu::optim::SgdScalars) -> [(Vec<f64>, Vec<f64>); 2] {
    let (lr, mu, wd) = (s.lr as f64, s.momentum as f64, s.weight_decay as f64);
    let (mut rp, mut bp, mut rb, mut bb) = (vec![], vec![], vec![], vec![]);
    for i in 0..p.len() {
        let (pi, gi) = (p[i] as f64, g[i] as f64);
        let d = gi + wd * pi;
        let dabs = gi.abs() + (wd * pi).abs();
        let (d, dabs, bi, babs) = if mu != 0.0 {
            let bi = mu * b[i] as f64 + d;
            let babs = (mu * b[i] as f64).abs() + dabs;
            if s.nesterov {
                (d + mu * bi, dabs + mu * babs, bi, babs)
            } else {
                (bi, babs, bi, babs)
            }
        } else {
            (d, dabs, 0.0, 0.0)
        };
        rp.push(pi - lr * d);
        bp.push(8.0 * U * (pi.abs() + lr * dabs));
        rb.push(bi);
        bb.push(4.0 * U * babs);
    }
    [(rp, bp), (rb, bb)]
}

#[test]
fn sgd_momentum_update_matches_cpu_twin() {
    use wgtrain::cpu::optim::{self as copt, SgdScalars};
    let Some(ctx) = common::gpu() else { return };
    let cases = [
        SgdScalars {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        SgdScalars {
            lr: 0.05,
            momentum: 0.8,
            nesterov: true,
            weight_decay: 0.01,
        },
        SgdScalars {
            lr: 0.3,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.1,
        },
    ];
    for (c, &s) in cases.iter().enumerate() {
        for (k, &n) in OPTIM_SIZES.iter().enumerate() {
            let seed = 900 + 10 * (c * OPTIM_SIZES.len() + k) as u64;
            let (p, g, b) = (
                common::random(n, seed),
                common::random(n, seed + 1),
                common::random(n, seed + 2),
            );
            let b = if s.momentum != 0.0 { b } else { Vec::new() };
            let (gp, gb) = ops::sgd_momentum_update(&ctx, &p, &g, &b, s).unwrap();
            let (mut tp, mut tb) = (p.clone(), b.clone());
            copt::sgd_momentum_update(&mut tp, &g, &mut tb, s);
            let [(rp, bp), (rb, bb)] = reference_sgd(&p, &g, &b, s);
            assert_close(&format!("sgd_momentum_update {c} p[{n}]"), &gp, &tp, &rp, &bp);
            if s.momentum != 0.0 {
                assert_close(&format!("sgd_momentum_update {c} buf[{n}]"), &gb, &tb, &rb, &bb);
            }
        }
    }
}

/// Adam in f64 on the same f32 inputs: `(p, m, v)` with their bounds. The
/// moments round a few times relative to their terms; the step
/// `step_size m / (sqrt(v) / bc2_sqrt + eps)` takes about six roundings
/// (sqrt, two divisions, the add, the product, the subtraction), relative
/// to the step and to `p`.
fn reference_adam(
    p: &[f32],
    g: &[f32],
    m: &[f32],
    v: &[f32],
    s: wgtrain::cpu::optim::AdamScalars,
) -> [(Vec<f64>, Vec<f64>); 3] {
    let f = |x: f32| x as f64;
    let (b1, b2, wd, lr) = (f(s.beta1), f(s.beta2), f(s.weight_decay), f(s.lr));
    let mut out: [(Vec<f64>, Vec<f64>); 3] = Default::default();
    for i in 0..p.len() {
        let (mut w, mut d) = (f(p[i]), f(g[i]));
        if wd != 0.0 {
            if s.decoupled {
                w *= 1.0 - lr * wd;
            } else {
                d += wd * w;
            }
        }
        let dabs = f(g[i]).abs() + (wd * f(p[i])).abs();
        let (c1, c2) = (f(s.one_minus_beta1), f(s.one_minus_beta2));
        let mi = b1 * f(m[i]) + c1 * d;
        let mabs = (b1 * f(m[i])).abs() + c1 * dabs;
        let vi = b2 * f(v[i]) + c2 * d * d;
        let vabs = b2 * f(v[i]).abs() + c2 * dabs * dabs;
        let step = f(s.step_size) * mi / (vi.sqrt() / f(s.bc2_sqrt) + f(s.eps));
        // The step's relative error follows m's and half of v's, plus its
        // own roundings.
        let rel = 6.0 * U + 4.0 * U * mabs / mi.abs().max(1e-30) + 2.0 * U * vabs / vi.max(1e-30);
        out[0].0.push(w - step);
        out[0]
            .1
            .push(4.0 * U * f(p[i]).abs() + rel.min(1.0) * step.abs() + 1e-30);
        out[1].0.push(mi);
        out[1].1.push(4.0 * U * mabs);
        out[2].0.push(vi);
        out[2].1.push(5.0 * U * vabs);
    }
    out
}

#[test]
fn adam_update_matches_cpu_twin() {
    use wgtrain::cpu::optim::{self as copt, AdamScalars};
    use wgtrain::optim::Adam;
    let Some(ctx) = common::gpu() else { return };
    let adam = Adam {
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let cases = [
        AdamScalars::new(&adam, false, 0.01, 1),
        AdamScalars::new(&adam, true, 0.003, 7),
        AdamScalars::new(
            &Adam {
                weight_decay: 0.0,
                ..adam
            },
            false,
            0.02,
            100,
        ),
    ];
    for (c, &s) in cases.iter().enumerate() {
        for (k, &n) in OPTIM_SIZES.iter().enumerate() {
            let seed = 950 + 10 * (c * OPTIM_SIZES.len() + k) as u64;
            let (p, g, m) = (
                common::random(n, seed),
                common::random(n, seed + 1),
                common::random(n, seed + 2),
            );
            // v is a running mean of squares: never negative.
            let v: Vec<f32> = common::random(n, seed + 3).iter().map(|x| x * x).collect();
            let (gp, gm, gv) = ops::adam_update(&ctx, &p, &g, &m, &v, s).unwrap();
            let (mut tp, mut tm, mut tv) = (p.clone(), m.clone(), v.clone());
            copt::adam_update(&mut tp, &g, &mut tm, &mut tv, s);
            let [(rp, bp), (rm, bm), (rv, bv)] = reference_adam(&p, &g, &m, &v, s);
            assert_close(&format!("adam_update {c} p[{n}]"), &gp, &tp, &rp, &bp);
            assert_close(&format!("adam_update {c} m[{n}]"), &gm, &tm, &rm, &bm);
            assert_close(&format!("adam_update {c} v[{n}]"), &gv, &tv, &rv, &bv);
        }
    }
}

#[test]
fn adam_update_folds_a_grid_larger_than_one_dimension() {
    use wgtrain::cpu::optim::{self as copt, AdamScalars};
    let Some(ctx) = common::gpu() else { return };
    let n = beyond_one_dimension(&ctx);
    let s = AdamScalars::new(&wgtrain::optim::Adam::default(), true, 0.01, 3);
    let (p, g, m) = (common::random(n, 990), common::random(n, 991), common::random(n, 992));
    let v: Vec<f32> = common::random(n, 993).iter().map(|x| x * x).collect();
    let (gp, _, _) = ops::adam_update(&ctx, &p, &g, &m, &v, s).unwrap();
    let (mut tp, mut tm, mut tv) = (p.clone(), m.clone(), v.clone());
    copt::adam_update(&mut tp, &g, &mut tm, &mut tv, s);
    let [(rp, bp), _, _] = reference_adam(&p, &g, &m, &v, s);
    assert_close(&format!("adam_update p[{n}]"), &gp, &tp, &rp, &bp);
}

#[test]
fn smoothed_softmax_xent_matches_cpu_twin() {
    let Some(ctx) = common::gpu() else { return };
    for (c, &(rows, classes)) in [(1, 3), (7, 10), (33, 37), (33, 3), (1, 10), (7, 37)]
        .iter()
        .enumerate()
    {
        let s = 0.15f32;
        let seed = 1500 + 10 * c as u64;
        let z: Vec<f32> = common::random(rows * classes, seed).iter().map(|v| 4.0 * v).collect();
        let labels: Vec<u32> = common::random(rows, seed + 1)
            .iter()
            .map(|v| (((v + 1.0) / 2.0 * classes as f32) as u32).min(classes as u32 - 1))
            .collect();
        let (d, loss, correct) = ops::softmax_xent(&ctx, &z, &labels, rows, classes, s).unwrap();
        let mut twin = vec![f32::NAN; rows * classes];
        let (twin_loss, twin_correct) = cpu::softmax_xent(&z, &labels, &mut twin, rows, classes, s);
        // The reference: torch's smoothed target q in f64.
        let mut rd = vec![0.0; rows * classes];
        let mut rloss = 0.0;
        for r in 0..rows {
            let row: Vec<f64> = z[r * classes..(r + 1) * classes].iter().map(|&v| v as f64).collect();
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
            for k in 0..classes {
                let q = (1.0 - s as f64) * ((k == labels[r] as usize) as u8 as f64) + s as f64 / classes as f64;
                rloss -= q * (row[k] - lse);
                rd[r * classes + k] = ((row[k] - lse).exp() - q) / rows as f64;
            }
        }
        // As softmax_xent_matches_cpu_twin: exp and log to ~20 ulp, sums of
        // `classes` terms.
        let elem = (classes as f64 + 24.0) * U / rows as f64;
        let bound: Vec<f64> = rd
            .iter()
            .map(|v| elem + (classes as f64 + 24.0) * U * v.abs())
            .collect();
        assert_close(
            &format!("smoothed softmax_xent {rows}x{classes}"),
            &d,
            &twin,
            &rd,
            &bound,
        );
        let loss_bound = (2.0 * classes as f64 + 24.0 + rows as f64) * U * (rloss.abs() + rows as f64 * 8.0);
        assert!((loss - rloss).abs() <= loss_bound, "loss {loss} vs {rloss}");
        assert!(
            (twin_loss - rloss).abs() <= loss_bound,
            "CPU loss {twin_loss} vs {rloss}"
        );
        assert_eq!(correct, twin_correct, "smoothed softmax_xent {rows}x{classes} correct");
    }
}

/// The gradient norm kernels against their CPU twin on ragged sizes: single
/// elements, a partial workgroup chunk (2048 elements per workgroup), a
/// chunk boundary inside the weight part and one between weight and bias.
#[test]
fn clip_coef_matches_cpu_twin() {
    let Some(ctx) = common::gpu() else { return };
    let layouts: [&[usize]; 5] = [
        &[1, 1],
        &[5, 31],
        &[2047, 1, 130, 7],
        &[33 * 130, 130, 2048, 5, 7, 1],
        &[31 * 5000, 31],
    ];
    for (c, lens) in layouts.iter().enumerate() {
        let tensors: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| common::random(n, 1700 + 10 * c as u64 + i as u64))
            .collect();
        let views: Vec<&[f32]> = tensors.iter().map(|t| t.as_slice()).collect();
        let total: f64 = views
            .iter()
            .flat_map(|t| t.iter())
            .map(|&v| (v as f64) * (v as f64))
            .sum();
        let norm = total.sqrt();
        for max_norm in [norm as f32 / 3.0, norm as f32 * 2.0] {
            let gpu = ops::clip_coef(&ctx, &views, max_norm).unwrap();
            let twin = cpu::clip_coef(&views, max_norm);
            let want = (max_norm as f64 / (norm + 1e-6)).min(1.0);
            let what = format!("clip_coef {lens:?} C={max_norm}");
            // f32 partial sums of up to 2048 squares then of the partials:
            // a few hundred ulp at most of the sum, half that of the norm.
            for (who, got) in [("GPU", gpu), ("CPU", twin)] {
                assert!(
                    (got.norm as f64 - norm).abs() <= 1e-5 * norm,
                    "{what}: {who} norm {} vs {norm}",
                    got.norm
                );
                assert!(
                    (got.coef as f64 - want).abs() <= 1e-5 * want,
                    "{what}: {who} coef {} vs {want}",
                    got.coef
                );
            }
            assert_eq!(gpu.coef == 1.0, want == 1.0, "{what}");
        }
    }
}

/// Ragged shapes (rows, outputs, inputs) for the kernels with random draws.
const DRAW_SHAPES: [(usize, usize, usize); 4] = [(1, 5, 3), (7, 31, 9), (33, 130, 17), (64, 70, 33)];

#[test]
fn linear_forward_dropout_draws_the_cpu_mask() {
    use wgtrain::optim::draw::{draw, dropout_stream, Dropout, Key};
    let Some(ctx) = common::gpu() else { return };
    // Seeds with both halves set, so both key words matter.
    let keys = [(0x0123_4567_89ab_cdefu64, 1u64, 0usize), (u64::MAX - 6, 4000, 2)];
    for (s, &(rows, outputs, inputs)) in DRAW_SHAPES.iter().enumerate() {
        let seed = 300 + 10 * s as u64;
        let w = common::random(outputs * inputs, seed);
        let x = common::random(rows * inputs, seed + 1);
        // Biases of both signs (values to compare), then all large
        // (every unit positive, so the zeros are exactly the mask).
        let mixed = common::random(outputs, seed + 2);
        let positive: Vec<f32> = mixed.iter().map(|b| b + 2.0 * inputs as f32).collect();
        for p in [0.1f32, 0.5] {
            let drop = Dropout::new(p).unwrap();
            for &(run_seed, step, layer) in &keys {
                let stream = dropout_stream(layer);
                let draws = ops::StepDraws {
                    seed: run_seed,
                    step,
                    dropout: Some((drop, stream)),
                    shift: None,
                };
                let key = Key::new(run_seed, step, stream);
                let what = format!("{rows}x{outputs}x{inputs} p={p} step {step}");
                for bias in [&mixed, &positive] {
                    let got = ops::linear_forward_train(
                        &ctx,
                        Input::Dense(&x),
                        &w,
                        bias,
                        rows,
                        inputs,
                        outputs,
                        true,
                        &draws,
                    )
                    .unwrap();
                    let mut twin = vec![f32::NAN; rows * outputs];
                    cpu::linear_forward_dropout(&x, &w, bias, &mut twin, rows, inputs, outputs, drop, key);
                    let mut r = vec![0.0; rows * outputs];
                    let mut bound = vec![0.0; rows * outputs];
                    for i in 0..rows {
                        for j in 0..outputs {
                            let (mut v, mut abs) = (bias[j] as f64, (bias[j] as f64).abs());
                            for q in 0..inputs {
                                let t = x[i * inputs + q] as f64 * w[j * inputs + q] as f64;
                                v += t;
                                abs += t.abs();
                            }
                            let kept = draw(run_seed, step, stream, i as u32, j as u32) >= drop.threshold;
                            let scale = drop.scale as f64;
                            r[i * outputs + j] = if kept { v.max(0.0) * scale } else { 0.0 };
                            bound[i * outputs + j] = (inputs as f64 + 3.0) * U * abs * scale;
                        }
                    }
                    assert_close(&format!("linear_forward dropout {what}"), &got, &twin, &r, &bound);
                }
                let got = ops::linear_forward_train(
                    &ctx,
                    Input::Dense(&x),
                    &w,
                    &positive,
                    rows,
                    inputs,
                    outputs,
                    true,
                    &draws,
                )
                .unwrap();
                for (e, &g) in got.iter().enumerate() {
                    let kept =
                        draw(run_seed, step, stream, (e / outputs) as u32, (e % outputs) as u32) >= drop.threshold;
                    assert_eq!(g != 0.0, kept, "{what}: unit {e} is {g}, the hash says kept={kept}");
                }
            }
        }
    }
}

#[test]
fn backprop_input_dropout_matches_cpu_twin() {
    use wgtrain::optim::draw::Dropout;
    let Some(ctx) = common::gpu() else { return };
    let drop = Dropout::new(0.3).unwrap();
    for (s, &(rows, inputs, outputs)) in DRAW_SHAPES.iter().enumerate() {
        let seed = 400 + 10 * s as u64;
        let dy = common::random(rows * outputs, seed);
        let w = common::random(outputs * inputs, seed + 1);
        let x: Vec<f32> = common::random(rows * inputs, seed + 2)
            .iter()
            .map(|v| v.max(0.0))
            .collect();
        let got = ops::backprop_input_dropout(&ctx, &dy, &w, &x, rows, inputs, outputs, drop).unwrap();
        let mut twin = vec![f32::NAN; rows * inputs];
        cpu::backprop_input_dropout(&dy, &w, &x, &mut twin, rows, inputs, outputs, drop.scale);
        let (mut r, abs) = reference_matmul(&dy, &w, rows, inputs, outputs, false, false);
        for (v, &h) in r.iter_mut().zip(&x) {
            *v = if h <= 0.0 { 0.0 } else { *v * drop.scale as f64 };
        }
        let bound: Vec<f64> = abs
            .iter()
            .map(|s| (outputs as f64 + 2.0) * U * s * drop.scale as f64)
            .collect();
        assert_close(
            &format!("backprop_input dropout {rows}x{inputs}x{outputs}"),
            &got,
            &twin,
            &r,
            &bound,
        );
    }
}

#[test]
fn first_layer_gather_with_shift_matches_cpu_twin() {
    use wgtrain::optim::draw::{Key, Shift, SHIFT_STREAM};
    let Some(ctx) = common::gpu() else { return };
    // (rows, channels, height, width, shift)
    for (s, &(rows, c, h, w, max)) in [(1, 1, 5, 7, 2), (7, 2, 4, 3, 1), (33, 1, 9, 6, 3)].iter().enumerate() {
        let dim = c * h * w;
        let g = gathered(rows, dim, 500 + s as u64);
        let shift = Shift::new(max, &[c, h, w]).unwrap().unwrap();
        let (seed, step) = (0xfeed_0000_0000_0001u64 + s as u64, 17 + s as u64);
        let draws = ops::StepDraws {
            seed,
            step,
            dropout: None,
            shift: Some(shift),
        };
        let mut twin = vec![f32::NAN; rows * dim];
        let key = Key::new(seed, step, SHIFT_STREAM);
        cpu::gather_rows_shifted(&g.features, &g.index, dim, g.scale, g.offset, &mut twin, &shift, key);
        // An identity layer passes the gathered input through exactly.
        let eye: Vec<f32> = (0..dim * dim).map(|i| (i / dim == i % dim) as u8 as f32).collect();
        let zero = vec![0.0; dim];
        for as_u8 in [true, false] {
            let input = Input::Gathered {
                features: &g.features,
                index: &g.index,
                scale: g.scale,
                offset: g.offset,
                as_u8,
            };
            let got = ops::linear_forward_train(&ctx, input, &eye, &zero, rows, dim, dim, false, &draws).unwrap();
            for (e, (&a, &b)) in got.iter().zip(&twin).enumerate() {
                // raw * scale + offset, fused or not: within 2 ulps.
                assert!(
                    (a - b).abs() <= 2.0 * f32::EPSILON * b.abs().max(1.0),
                    "{rows} rows of {c}x{h}x{w}, shift {max}, u8={as_u8}: [{e}] GPU {a} vs CPU {b}"
                );
            }
        }
    }
}

/// With `WGTRAIN_WEBGPU_LIMITS=1` (a run of CI) the device these tests use
/// holds WebGPU's default limits, not the adapter's larger ones.
#[test]
fn webgpu_default_limits_are_in_force_when_asked() {
    let Some(ctx) = common::gpu() else { return };
    let r = ctx.report();
    let d = wgpu::Limits::default();
    if std::env::var("WGTRAIN_WEBGPU_LIMITS").is_ok_and(|v| v == "1") {
        assert_eq!(r.max_storage_buffer_binding_size, d.max_storage_buffer_binding_size);
        assert_eq!(r.max_buffer_size, d.max_buffer_size);
    } else {
        assert!(r.max_buffer_size >= d.max_buffer_size, "{r:?}");
    }
}

/// Softmax cross-entropy with label smoothing `s` in f64 on the f32 logits
/// `z`, over a batch of `of_rows` rows: `(dlogits, loss, correct)`, the
/// target `q = (1 - s) onehot + s / classes` (torch's formula).
fn reference_xent(
    z: &[f32],
    labels: &[u32],
    rows: usize,
    classes: usize,
    s: f32,
    of_rows: usize,
) -> (Vec<f64>, f64, u32) {
    let mut d = vec![0.0; rows * classes];
    let (mut loss, mut correct) = (0.0, 0);
    let s = s as f64;
    for r in 0..rows {
        let row: Vec<f64> = z[r * classes..(r + 1) * classes].iter().map(|&v| v as f64).collect();
        let (best, max) = row.iter().enumerate().fold(
            (0, f64::NEG_INFINITY),
            |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
        );
        let lse = row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
        let l = labels[r] as usize;
        for k in 0..classes {
            let q = (1.0 - s) * ((k == l) as u8 as f64) + s / classes as f64;
            loss -= q * (row[k] - lse);
            d[r * classes + k] = ((row[k] - lse).exp() - q) / of_rows as f64;
        }
        correct += (best == l) as u32;
    }
    (d, loss, correct)
}

/// `x w^T + bias` in f64, and its rounding bound: (inputs + 2) u times the
/// sum of the magnitudes.
fn reference_logits(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    rows: usize,
    inputs: usize,
    classes: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut r = vec![0.0; rows * classes];
    let mut bound = vec![0.0; rows * classes];
    for i in 0..rows {
        for j in 0..classes {
            let (mut v, mut abs) = (bias[j] as f64, (bias[j] as f64).abs());
            for p in 0..inputs {
                let t = x[i * inputs + p] as f64 * w[j * inputs + p] as f64;
                v += t;
                abs += t.abs();
            }
            r[i * classes + j] = v;
            bound[i * classes + j] = (inputs as f64 + 2.0) * U * abs;
        }
    }
    (r, bound)
}

/// One linear_softmax_xent case: the GPU's logits and the CPU twin's
/// against f64 (x and w as the product reads them: `xr`, `wr`, rounded to
/// f16 in f16-mixed), each side's dlogits, loss and count against f64
/// softmax cross-entropy of its own logits, and the stats layout: the
/// step's slot holds one partial per row block then zeros, the slots
/// around it stay poisoned.
#[allow(clippy::too_many_arguments)]
fn check_linear_xent(
    what: &str,
    got: &ops::LinearXent,
    xr: &[f32],
    wr: &[f32],
    bias: &[f32],
    labels: &[u32],
    rows: usize,
    inputs: usize,
    classes: usize,
    s: f32,
    of_rows: usize,
) {
    let mut logits = vec![f32::NAN; rows * classes];
    let mut twin = vec![f32::NAN; rows * classes];
    let (twin_loss, twin_correct) = cpu::linear_softmax_xent(
        xr,
        wr,
        bias,
        &mut logits,
        labels,
        &mut twin,
        rows,
        inputs,
        classes,
        s,
        of_rows,
    );
    let (rz, zbound) = reference_logits(xr, wr, bias, rows, inputs, classes);
    assert_close(&format!("{what} logits"), &got.logits, &logits, &rz, &zbound);
    // As smoothed_softmax_xent_matches_cpu_twin: exp and log to ~20 ulp,
    // sums of `classes` terms; each side against the softmax of its own
    // logits (they differ by the products' rounding).
    let elem = (classes as f64 + 24.0) * U / of_rows as f64;
    let bound_of = |d: &[f64]| -> Vec<f64> { d.iter().map(|v| elem + (classes as f64 + 24.0) * U * v.abs()).collect() };
    let (gd, gloss, gcorrect) = reference_xent(&got.logits, labels, rows, classes, s, of_rows);
    let (td, tloss, tcorrect) = reference_xent(&logits, labels, rows, classes, s, of_rows);
    assert_close(
        &format!("{what} dlogits"),
        &got.dlogits,
        &got.dlogits,
        &gd,
        &bound_of(&gd),
    );
    assert_close(&format!("{what} dlogits (CPU twin)"), &twin, &twin, &td, &bound_of(&td));
    let loss_bound = |r: f64| (2.0 * classes as f64 + 24.0 + rows as f64) * U * (r.abs() + rows as f64 * 8.0);
    assert!(
        (got.loss - gloss).abs() <= loss_bound(gloss),
        "{what}: loss {} vs {gloss}",
        got.loss
    );
    assert!(
        (twin_loss - tloss).abs() <= loss_bound(tloss),
        "{what}: CPU loss {twin_loss} vs {tloss}"
    );
    // The arg-max compares each side's own f32 logits: exact.
    assert_eq!(got.correct, gcorrect, "{what}: correct");
    assert_eq!(twin_correct, tcorrect, "{what}: CPU correct");
    // The two sides' losses agree to the logits' rounding.
    assert!(
        (got.loss - twin_loss).abs() <= 1e-4 * (1.0 + tloss.abs()),
        "{what}: GPU loss {} vs CPU {twin_loss}",
        got.loss
    );

    let stride = got.stride;
    let blocks = rows.div_ceil(got.tile.size() as usize);

    assert_eq!(got.stats.len(), 3 * stride, "{what}: stats length");
    for (i, &(loss, correct)) in got.stats.iter().enumerate() {
        let (slot, w) = (i / stride, i % stride);
        if slot != 1 {
            assert!(
                loss.is_nan() && correct == u32::MAX,
                "{what}: stats[{i}] (slot {slot}) was written: ({loss}, {correct})"
            );
        } else if w < blocks {
            assert!(
                loss.is_finite() && correct as usize <= got.tile.size() as usize,
                "{what}: row block {w}'s partial ({loss}, {correct})"
            );
        } else {
            assert_eq!(
                (loss, correct),
                (0.0, 0),
                "{what}: stats entry {w} past {blocks} row blocks"
            );
        }
    }
}

/// Labels in `0..classes` for `rows` rows from `seed`.
fn random_labels(rows: usize, classes: usize, seed: u64) -> Vec<u32> {
    common::random(rows, seed)
        .iter()
        .map(|v| (((v + 1.0) / 2.0 * classes as f32) as u32).min(classes as u32 - 1))
        .collect()
}

/// The fused last layer on every tile variant, for 1, 10 and as many
/// classes as the tile is wide, one row and a ragged number of rows (two
/// blocks and a partial third), with and without label smoothing, and a
/// data-parallel shard's larger batch.
#[test]
fn linear_softmax_xent_matches_cpu_twin() {
    use wgtrain::gpu::Tile;
    let Some(ctx) = common::gpu() else { return };
    let inputs = 19;
    let mut case = 0u64;
    for tile in Tile::ALL {
        let width = tile.size() as usize;
        for classes in [1, 10, width] {
            for rows in [1, 2 * width + 3] {
                for (s, of_rows) in [(0.0, rows), (0.1, rows), (0.0, rows + 5)] {
                    case += 1;
                    let seed = 3000 + 10 * case;
                    let x: Vec<f32> = common::random(rows * inputs, seed).iter().map(|v| 2.0 * v).collect();
                    let w = common::random(classes * inputs, seed + 1);
                    let bias = common::random(classes, seed + 2);
                    let labels = random_labels(rows, classes, seed + 3);
                    let got = ops::linear_softmax_xent_with(
                        &ctx,
                        &x,
                        &w,
                        &bias,
                        &labels,
                        rows,
                        inputs,
                        classes,
                        s,
                        of_rows,
                        Some(tile),
                        wgtrain::backend::Precision::F32,
                    )
                    .unwrap();
                    assert_eq!(got.tile, tile);
                    let what = format!(
                        "linear_softmax_xent {} tiles {rows}x{classes}x{inputs} s={s} of {of_rows}",
                        tile.name()
                    );
                    check_linear_xent(&what, &got, &x, &w, &bias, &labels, rows, inputs, classes, s, of_rows);
                }
            }
        }
    }
}

/// The tile the trainer's dispatch chooses widens to hold every class of a
/// row; past the widest tile, and on a tile narrower than the classes, the
/// kernel is refused.
#[test]
fn linear_softmax_xent_takes_a_tile_as_wide_as_the_classes() {
    use wgtrain::gpu::Tile;
    let Some(ctx) = common::gpu() else { return };
    let (rows, inputs) = (37, 70);
    for (c, classes) in [2usize, 17, 33, 100, 128].into_iter().enumerate() {
        let seed = 3500 + 10 * c as u64;
        let x = common::random(rows * inputs, seed);
        let w = common::random(classes * inputs, seed + 1);
        let bias = common::random(classes, seed + 2);
        let labels = random_labels(rows, classes, seed + 3);
        let got = ops::linear_softmax_xent(&ctx, &x, &w, &bias, &labels, rows, inputs, classes, 0.05, rows).unwrap();
        let chosen = Tile::choose(rows as u64, classes as u64, inputs as u64, ctx.is_software());
        assert!(
            got.tile.size() as usize >= classes,
            "{classes} classes in {:?}",
            got.tile
        );
        if chosen.size() as usize >= classes {
            assert_eq!(got.tile, chosen, "{classes} classes");
        }
        let what = format!(
            "linear_softmax_xent {rows}x{classes}x{inputs} ({} tiles)",
            got.tile.name()
        );
        check_linear_xent(&what, &got, &x, &w, &bias, &labels, rows, inputs, classes, 0.05, rows);
    }
    let (x, w, b) = (vec![0.5; 2 * 3], vec![0.5; 129 * 3], vec![0.0; 129]);
    let err = ops::linear_softmax_xent(&ctx, &x, &w, &b, &[0, 1], 2, 3, 129, 0.0, 2).unwrap_err();
    assert!(err.to_string().contains("129 classes"), "{err}");
    let f32 = wgtrain::backend::Precision::F32;
    let err = ops::linear_softmax_xent_with(&ctx, &x, &w, &b, &[0, 1], 2, 3, 17, 0.0, 2, Some(Tile::Sliced), f32)
        .unwrap_err();
    assert!(err.to_string().contains("17 classes"), "{err}");
    let err = ops::linear_softmax_xent(&ctx, &x, &w, &b, &[0, 1], 2, 3, 10, 0.0, 1).unwrap_err();
    assert!(err.to_string().contains("batch of 1"), "{err}");
    let err = ops::linear_softmax_xent(&ctx, &x, &w, &b, &[0, 10], 2, 3, 10, 0.0, 2).unwrap_err();
    assert!(err.to_string().contains("label 10"), "{err}");
}

/// f16-mixed: the product reads x and w rounded to f16 and accumulates in
/// f32, the logits and the loss stay f32; the CPU twin on rounded operands.
/// Where the adapter has no shader-f16 (GL), the dispatch is refused.
#[test]
fn linear_softmax_xent_f16_mixed_matches_cpu_twin() {
    use wgtrain::backend::Precision;
    use wgtrain::gpu::Tile;
    let Some(ctx) = common::gpu() else { return };
    let inputs = 37;
    if !ctx.supports_f16() {
        let x = common::random(3 * inputs, 1);
        let w = common::random(10 * inputs, 2);
        let got = ops::linear_softmax_xent_with(
            &ctx,
            &x,
            &w,
            &[0.0; 10],
            &[1, 2, 3],
            3,
            inputs,
            10,
            0.0,
            3,
            None,
            Precision::F16Mixed,
        );
        let err = got.expect_err("f16-mixed without shader-f16");
        assert!(err.to_string().contains("shader-f16"), "{err}");
        eprintln!("{}: no shader-f16, f16-mixed refused", ctx.name());
        return;
    }
    let mut case = 0u64;
    for tile in Tile::ALL {
        for (rows, classes, s) in [
            (1, 10, 0.0),
            (2 * tile.size() as usize + 3, 10, 0.1),
            (7, tile.size() as usize, 0.0),
        ] {
            case += 1;
            let seed = 3700 + 10 * case;
            let x: Vec<f32> = common::random(rows * inputs, seed).iter().map(|v| 2.0 * v).collect();
            let w = common::random(classes * inputs, seed + 1);
            let bias = common::random(classes, seed + 2);
            let labels = random_labels(rows, classes, seed + 3);
            let got = ops::linear_softmax_xent_with(
                &ctx,
                &x,
                &w,
                &bias,
                &labels,
                rows,
                inputs,
                classes,
                s,
                rows,
                Some(tile),
                Precision::F16Mixed,
            )
            .unwrap();
            let (mut xr, mut wr) = (x.clone(), w.clone());
            cpu::round_f16(&mut xr);
            cpu::round_f16(&mut wr);
            let what = format!(
                "f16-mixed linear_softmax_xent {} tiles {rows}x{classes}x{inputs} s={s}",
                tile.name()
            );
            check_linear_xent(&what, &got, &xr, &wr, &bias, &labels, rows, inputs, classes, s, rows);
            // The operands are rounded: f32 products of these inputs differ.
            let plain = ops::linear_softmax_xent_with(
                &ctx,
                &x,
                &w,
                &bias,
                &labels,
                rows,
                inputs,
                classes,
                s,
                rows,
                Some(tile),
                Precision::F32,
            )
            .unwrap();
            assert_ne!(plain.logits, got.logits, "{what}: the same logits as f32");
        }
    }
}

#[test]
fn linear_softmax_xent_folds_a_grid_larger_than_one_dimension() {
    use wgtrain::gpu::Tile;
    let Some(ctx) = common::gpu() else { return };
    // 64-row tiles: beyond_one_dimension's rows need one more block than a
    // dimension holds.
    let (rows, inputs, classes) = (beyond_one_dimension(&ctx), 3, 2);
    let x = common::random(rows * inputs, 3900);
    let w = common::random(classes * inputs, 3901);
    let bias = common::random(classes, 3902);
    let labels = random_labels(rows, classes, 3903);
    let f32 = wgtrain::backend::Precision::F32;
    let got = ops::linear_softmax_xent_with(
        &ctx,
        &x,
        &w,
        &bias,
        &labels,
        rows,
        inputs,
        classes,
        0.0,
        rows,
        Some(Tile::Wide),
        f32,
    )
    .unwrap();
    let what = format!("linear_softmax_xent {rows}x{classes}x{inputs}");
    check_linear_xent(&what, &got, &x, &w, &bias, &labels, rows, inputs, classes, 0.0, rows);
}
