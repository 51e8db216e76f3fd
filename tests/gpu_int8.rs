//! The int8 WGSL kernels against their CPU twins in
//! `wgtrain::infer::int8`, through both dot-product paths.
//!
//! - `linear_forward_i8` with unit scales and zero bias outputs the integer
//!   sums themselves (exact in f32 below 2^24), so those must be equal bit
//!   for bit; with real scales and biases the f32 epilogue
//!   `acc * (x_scale * w_scale) + bias` may be contracted into a fused
//!   multiply-add by the GPU compiler, so the outputs must agree within
//!   2 ulp of `|acc * s| + |bias|` (one rounding each way, doubled).
//! - `quantize_rows_i8`: scales within 1 ulp (WGSL allows division to be a
//!   little less accurate than the CPU's correctly rounded one); quantized
//!   values equal except where `x / scale` lies within a few ulp of a
//!   rounding tie, where a scale one ulp off may round the other way.
//!
//! Shapes: not multiples of the 32x32 tile or of the 64-byte row padding
//! (70, 130, 200 inputs), a 1x1 case, outputs not a multiple of 4, and a
//! rows count that spans several tiles.

mod common;

use wgtrain::gpu::{ops, Int8Path};
use wgtrain::infer::int8::{self, I8Isa, PackedI8Linear};
use wgtrain::model::QuantizedWeights;

const SHAPES: [(usize, usize, usize); 6] = [
    (1, 1, 1),
    (5, 70, 9),
    (9, 130, 17),
    (4, 64, 4),
    (37, 200, 33),
    (70, 20, 3),
];

fn paths(ctx: &wgtrain::gpu::GpuContext) -> Vec<Int8Path> {
    let mut v = vec![Int8Path::Unpacked];
    if ctx.supports_dot4_i8() {
        v.push(Int8Path::Dot4);
    }
    v
}

/// Quantized values spread over the whole range, including -127 and 127.
fn random_q(len: usize, seed: u64) -> Vec<i8> {
    common::random(len, seed)
        .iter()
        .map(|v| (v * 127.49).round() as i8)
        .collect()
}

#[test]
fn integer_sums_match_the_cpu_twin_exactly() {
    let Some(ctx) = common::gpu() else { return };
    for path in paths(&ctx) {
        for &(rows, inputs, outputs) in &SHAPES {
            let w = QuantizedWeights {
                inputs,
                outputs,
                q: random_q(inputs * outputs, 1),
                scale: vec![1.0; outputs],
            };
            let layer = PackedI8Linear::pack(&w, &vec![0.0; outputs]);
            let mut xq = vec![0i8; rows * layer.stride];
            for (r, row) in xq.chunks_exact_mut(layer.stride).enumerate() {
                row[..inputs].copy_from_slice(&random_q(inputs, 100 + r as u64));
            }
            let xs = vec![1.0; rows];
            for relu in [false, true] {
                let mut want = vec![f32::NAN; rows * outputs];
                int8::linear_forward_i8(I8Isa::Portable, &layer, &xq, &xs, rows, &mut want, outputs, relu);
                let got = ops::linear_forward_i8(&ctx, path, &layer, &xq, &xs, rows, relu).unwrap();
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{path:?} rows {rows} in {inputs} out {outputs} relu {relu}"
                );
            }
        }
    }
}

#[test]
fn outputs_match_the_cpu_twin_within_the_epilogue_rounding() {
    let Some(ctx) = common::gpu() else { return };
    let u = f64::from(f32::EPSILON) / 2.0;
    for path in paths(&ctx) {
        for &(rows, inputs, outputs) in &SHAPES {
            let w = QuantizedWeights::quantize(&common::random(inputs * outputs, 7), inputs, outputs);
            let bias = common::random(outputs, 9);
            let layer = PackedI8Linear::pack(&w, &bias);
            let x: Vec<f32> = common::random(rows * inputs, 11).iter().map(|v| v * 3.0).collect();
            let mut xq = vec![0i8; rows * layer.stride];
            let mut xs = vec![0.0; rows];
            int8::quantize_rows_i8(&x, rows, inputs, layer.stride, &mut xq, &mut xs);
            // Integer sums for the bound.
            let mut acc = vec![0.0; rows * outputs];
            int8::linear_forward_i8(
                I8Isa::Portable,
                &PackedI8Linear::pack(
                    &QuantizedWeights {
                        scale: vec![1.0; outputs],
                        ..w.clone()
                    },
                    &vec![0.0; outputs],
                ),
                &xq,
                &vec![1.0; rows],
                rows,
                &mut acc,
                outputs,
                false,
            );
            for relu in [false, true] {
                let mut want = vec![f32::NAN; rows * outputs];
                int8::linear_forward_i8(I8Isa::Portable, &layer, &xq, &xs, rows, &mut want, outputs, relu);
                let got = ops::linear_forward_i8(&ctx, path, &layer, &xq, &xs, rows, relu).unwrap();
                let mut worst = 0.0f64;
                for i in 0..rows * outputs {
                    let (r, o) = (i / outputs, i % outputs);
                    let s = f64::from(xs[r]) * f64::from(w.scale[o]);
                    let bound = 4.0 * u * (f64::from(acc[i]).abs() * s + f64::from(bias[o]).abs()) + 1e-30;
                    let d = (f64::from(got[i]) - f64::from(want[i])).abs();
                    worst = worst.max(d / bound);
                    assert!(
                        d <= bound,
                        "{path:?} rows {rows} in {inputs} out {outputs} relu {relu} [{r},{o}]: GPU {} CPU {} (|diff| {d:e} > {bound:e})",
                        got[i],
                        want[i]
                    );
                }
                eprintln!("{path:?} {rows}x{inputs}x{outputs} relu {relu}: worst |diff| / bound {worst:.3}");
            }
        }
    }
}

#[test]
fn quantize_rows_matches_the_cpu_twin() {
    let Some(ctx) = common::gpu() else { return };
    let u = f32::EPSILON / 2.0;
    for &(rows, inputs, _) in &SHAPES {
        for stride in [inputs.next_multiple_of(4), inputs.div_ceil(64) * 64] {
            let mut x: Vec<f32> = common::random(rows * inputs, 21).iter().map(|v| v * 5.0).collect();
            // An all-zero row (scale 0), and exact ties (.5 multiples of the scale).
            if rows > 2 {
                x[inputs..2 * inputs].fill(0.0);
                for (k, v) in x[2 * inputs..3 * inputs].iter_mut().enumerate() {
                    *v = [127.0, -0.5, 1.5, 2.5, -3.5][k % 5];
                }
            }
            let mut want_q = vec![0x55i8; rows * stride];
            let mut want_s = vec![f32::NAN; rows];
            int8::quantize_rows_i8(&x, rows, inputs, stride, &mut want_q, &mut want_s);
            let (got_q, got_s) = ops::quantize_rows_i8(&ctx, &x, rows, inputs, stride).unwrap();
            let mut near_ties = 0;
            for r in 0..rows {
                let (g, w) = (got_s[r], want_s[r]);
                assert!(
                    (g - w).abs() <= w * u * 2.0,
                    "rows {rows} in {inputs}: scale {r} GPU {g} CPU {w}"
                );
                let max = x[r * inputs..(r + 1) * inputs]
                    .iter()
                    .fold(0.0f32, |m, v| m.max(v.abs()));
                for k in 0..stride {
                    let (g, w) = (got_q[r * stride + k], want_q[r * stride + k]);
                    if k >= inputs {
                        assert_eq!(g, 0, "padding [{r},{k}]");
                        continue;
                    }
                    if g != w {
                        // Only a value within a few ulp of a tie may round the other way.
                        let t = f64::from(x[r * inputs + k]) * 127.0 / f64::from(max);
                        let from_tie = (t - t.floor() - 0.5).abs();
                        assert!(
                            (g as i32 - w as i32).abs() == 1 && from_tie <= 8.0 * f64::from(u) * t.abs(),
                            "rows {rows} in {inputs}: q[{r},{k}] GPU {g} CPU {w} (x {}, {t} in steps)",
                            x[r * inputs + k]
                        );
                        near_ties += 1;
                    }
                }
            }
            if near_ties > 0 {
                eprintln!("rows {rows} in {inputs}: {near_ties} values at ties rounded the other way");
            }
        }
    }
}
