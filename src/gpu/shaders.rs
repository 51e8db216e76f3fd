//! The WGSL sources as the pipelines compile them: the files of `shaders/`,
//! and the two that are assembled per variant (matmul.wgsl behind a tile's
//! constants, linear_forward_i8.wgsl behind a dot-product prelude).

use super::tile::Tile;
use crate::backend::Precision;

pub(crate) const SOFTMAX_XENT: &str = include_str!("../../shaders/softmax_xent.wgsl");
pub(crate) const SOFT_TARGET_XENT: &str = include_str!("../../shaders/soft_target_xent.wgsl");
pub(crate) const BIAS_UPDATE: &str = include_str!("../../shaders/bias_update.wgsl");
pub(crate) const APPLY_MASK: &str = include_str!("../../shaders/apply_mask.wgsl");
pub(crate) const OPTIM_UPDATE: &str = include_str!("../../shaders/optim_update.wgsl");
pub(crate) const CLIP_GRAD_NORM: &str = include_str!("../../shaders/clip_grad_norm.wgsl");
pub(crate) const QUANTIZE_ROWS_I8: &str = include_str!("../../shaders/quantize_rows_i8.wgsl");

const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
const DRAW: &str = include_str!("../../shaders/draw.wgsl");
const LINEAR_FORWARD_I8: &str = include_str!("../../shaders/linear_forward_i8.wgsl");
const DOT4_PACKED: &str = include_str!("../../shaders/dot4_i8_packed.wgsl");
const DOT4_UNPACKED: &str = include_str!("../../shaders/dot4_i8_unpacked.wgsl");

/// How matmul.wgsl's `operand` reads a value: unchanged (f32), or
/// rounded through f16 (f16-mixed, which needs `enable f16`).
const OPERAND_F32: &str = "fn operand(v: f32) -> f32 { return v; }\n";
const OPERAND_F16: &str = "enable f16;\n\nfn operand(v: f32) -> f32 { return f32(f16(v)); }\n";

/// matmul.wgsl with the constants of `tile`, the operand rounding of
/// `precision` and the random draws (draw.wgsl) in front.
pub(crate) fn matmul(tile: Tile, precision: Precision) -> String {
    let operand = if precision.is_f16() { OPERAND_F16 } else { OPERAND_F32 };
    format!(
        "{operand}const TX: u32 = {t}u;\nconst TY: u32 = {t}u;\nconst GM: u32 = {g}u;\nconst GN: u32 = {g}u;\n\
         const BK: u32 = {d}u;\nconst KS: u32 = {s}u;\n\n{DRAW}\n{MATMUL}",
        t = tile.threads(),
        g = tile.group(),
        d = tile.depth(),
        s = tile.slices()
    )
}

/// linear_forward_i8.wgsl behind its `dot4_i8`: WGSL's `dot4I8Packed` when
/// `packed`, else the hand-written unpack.
pub(crate) fn linear_forward_i8(packed: bool) -> String {
    let prelude = if packed { DOT4_PACKED } else { DOT4_UNPACKED };
    format!("{prelude}\n{LINEAR_FORWARD_I8}")
}
