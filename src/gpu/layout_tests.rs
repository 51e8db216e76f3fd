//! Every struct of `uniforms` against the WGSL struct it mirrors: the
//! shader is parsed with naga, its layout computed with naga's `Layouter`,
//! and the member names (in order), offsets and sizes and the struct's size
//! compared with the Rust struct's (`offset_of!`, `size_of`). A field added
//! on either side only fails: on the Rust side the field list below must
//! name every field (a destructuring pattern checks that at compile time).

use super::registry::Int8Path;
use super::shaders;
use super::tile::Tile;
use super::uniforms::{
    BiasParams, ClipParams, GemmParams, LinearI8Params, MaskParams, OptimParams, QuantParams, SoftTargetParams,
    SoftmaxParams, Stat, StepParams,
};
use crate::backend::Precision;

/// A struct's layout: its size and `(name, offset, size)` per member.
#[derive(Debug, PartialEq)]
struct Layout {
    size: usize,
    members: Vec<(String, usize, usize)>,
}

/// The layout of a Rust struct, listing every one of its fields.
macro_rules! host_layout {
    ($ty:ident { $($field:ident),* $(,)? }) => {{
        // Fails to compile if the list misses a field of the struct.
        let _exhaustive = |v: $ty| {
            let $ty { $($field: _),* } = v;
        };
        let zero = <$ty as bytemuck::Zeroable>::zeroed();
        Layout {
            size: std::mem::size_of::<$ty>(),
            members: vec![$((
                stringify!($field).to_string(),
                std::mem::offset_of!($ty, $field),
                std::mem::size_of_val(&zero.$field),
            )),*],
        }
    }};
}

/// The layout of the struct `name` in WGSL `source`, as naga lays it out.
fn shader_layout(source: &str, name: &str) -> Result<Layout, String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).map_err(|e| format!("{e:?}"))?;
    let (_, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))
        .ok_or_else(|| format!("no struct {name} in the shader"))?;
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        return Err(format!("{name} is not a struct"));
    };
    Ok(Layout {
        size: *span as usize,
        members: members
            .iter()
            .map(|m| {
                (
                    m.name.clone().unwrap_or_default(),
                    m.offset as usize,
                    layouter[m.ty].size as usize,
                )
            })
            .collect(),
    })
}

/// Compare `host` with the struct `name` of `source` (`shader` names the
/// file in messages).
fn compare(host: &Layout, shader: &str, source: &str, name: &str) -> Result<(), String> {
    let wgsl = shader_layout(source, name).map_err(|e| format!("{shader}: {e}"))?;
    if *host != wgsl {
        return Err(format!(
            "{shader}: struct {name} and its Rust mirror differ:\n  WGSL: {wgsl:?}\n  Rust: {host:?}"
        ));
    }
    Ok(())
}

fn step() -> Layout {
    host_layout!(StepParams {
        index_off,
        slot,
        lr,
        step_size,
        bc2_sqrt,
        draw_step,
        draw_row0,
        pad2
    })
}

fn gemm() -> Layout {
    host_layout!(GemmParams {
        m,
        n,
        k,
        tiles_n,
        a_rs,
        a_cs,
        b_rs,
        b_cs,
        a_src,
        b_src,
        ldc,
        flags,
        dim,
        gather,
        scale,
        offset,
        n_ext,
        seed_lo,
        seed_hi,
        drop_threshold,
        drop_scale,
        drop_stream,
        shift,
        img_h,
        img_w,
        stat_stride,
        inv_rows,
        smoothing,
        keep,
        per_class,
        d_label,
        d_class,
    })
}

#[test]
fn uniform_structs_match_the_shaders() {
    let matmul: Vec<(String, String)> = Tile::ALL
        .iter()
        .flat_map(|&t| {
            [Precision::F32, Precision::F16Mixed].map(|p| {
                (
                    format!("matmul.wgsl ({} tiles, {})", t.name(), p.name()),
                    shaders::matmul(t, p),
                )
            })
        })
        .collect();
    let linear: Vec<(String, String)> = [Int8Path::Dot4, Int8Path::Unpacked]
        .iter()
        .map(|&p| {
            (
                format!("linear_forward_i8.wgsl ({})", p.name()),
                shaders::linear_forward_i8(p == Int8Path::Dot4),
            )
        })
        .collect();
    let file = |name: &str, src: &str| (name.to_string(), src.to_string());
    let softmax = file("softmax_xent.wgsl", shaders::SOFTMAX_XENT);
    let soft = file("soft_target_xent.wgsl", shaders::SOFT_TARGET_XENT);
    let bias = file("bias_update.wgsl", shaders::BIAS_UPDATE);
    let mask = file("apply_mask.wgsl", shaders::APPLY_MASK);
    let quant = file("quantize_rows_i8.wgsl", shaders::QUANTIZE_ROWS_I8);
    let optim = file("optim_update.wgsl", shaders::OPTIM_UPDATE);
    let clip = file("clip_grad_norm.wgsl", shaders::CLIP_GRAD_NORM);

    let mut cases: Vec<(Layout, &(String, String), &str)> = Vec::new();
    for m in &matmul {
        cases.push((gemm(), m, "Gemm"));
        cases.push((step(), m, "Step"));
        cases.push((host_layout!(Stat { loss, correct }), m, "Stat"));
    }
    cases.push((
        host_layout!(SoftmaxParams {
            rows,
            classes,
            gather,
            inv_rows,
            smoothing,
            keep,
            per_class,
            d_label,
            d_class,
            pad0,
            pad1,
            pad2
        }),
        &softmax,
        "Softmax",
    ));
    cases.push((host_layout!(Stat { loss, correct }), &softmax, "Stat"));
    cases.push((
        host_layout!(SoftTargetParams {
            rows,
            classes,
            accumulate,
            weight,
            inv_t,
            hard,
            kl,
            hard_grad,
            soft_grad,
            smoothing,
            keep,
            per_class,
            gather_probs,
            pad0,
            pad1,
            pad2
        }),
        &soft,
        "SoftTarget",
    ));
    cases.push((host_layout!(Stat { loss, correct }), &soft, "Stat"));
    cases.push((step(), &soft, "Step"));
    cases.push((step(), &softmax, "Step"));
    cases.push((
        host_layout!(BiasParams {
            rows,
            outputs,
            pad0,
            pad1
        }),
        &bias,
        "Bias",
    ));
    cases.push((step(), &bias, "Step"));
    cases.push((host_layout!(MaskParams { len, pad0, pad1, pad2 }), &mask, "Mask"));
    cases.push((step(), &mask, "Step"));
    cases.push((
        host_layout!(OptimParams {
            len,
            variant,
            beta1,
            beta2,
            eps,
            weight_decay,
            one_minus_beta1,
            one_minus_beta2
        }),
        &optim,
        "Optim",
    ));
    cases.push((step(), &optim, "Step"));
    cases.push((
        host_layout!(ClipParams {
            len_x,
            len_y,
            base,
            count,
            max_norm,
            pad0,
            pad1,
            pad2
        }),
        &clip,
        "Clip",
    ));
    cases.push((
        host_layout!(QuantParams {
            rows,
            inputs,
            x_stride,
            words,
            scale,
            offset,
            pad0,
            pad1
        }),
        &quant,
        "Quant",
    ));
    for l in &linear {
        cases.push((
            host_layout!(LinearI8Params {
                rows,
                outputs,
                words,
                ldy,
                relu,
                tiles_n,
                pad0,
                pad1
            }),
            l,
            "LinearI8",
        ));
    }
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(host, (shader, source), name)| compare(host, shader, source, name).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The comparison itself catches a member added, renamed or moved on one
/// side.
#[test]
fn a_field_on_one_side_only_is_caught() {
    let wgsl = |body: &str| format!("struct Step {{ {body} }}\n@group(0) @binding(0) var<uniform> step: Step;\n");
    let ok = wgsl(
        "index_off: u32, slot: u32, lr: f32, step_size: f32, bc2_sqrt: f32, draw_step: u32, draw_row0: u32, pad2: u32",
    );
    assert_eq!(compare(&step(), "ok", &ok, "Step"), Ok(()));
    for body in [
        "index_off: u32, slot: u32, lr: f32, step_size: f32, bc2_sqrt: f32, draw_step: u32, draw_row0: u32, pad2: u32, extra: u32",
        "index_off: u32, slot: u32, lr: f32, step_size: f32, bc2_sqrt: f32, draw_step: u32, draw_row0: u32",
        "index_off: u32, lr: f32, slot: u32, step_size: f32, bc2_sqrt: f32, draw_step: u32, draw_row0: u32, pad2: u32",
        "index_off: u32, slot: u32, lr: f32, step_size: f32, bc2_sqrt: f32, draw_step: u32, draw_row0: u32, pad2: vec2<u32>",
    ] {
        assert!(compare(&step(), "bad", &wgsl(body), "Step").is_err(), "{body}");
    }
}
