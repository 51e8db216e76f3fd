// Prepended to linear_forward_i8.wgsl when the WGSL compiler has the
// packed 4x8 integer dot product: one SDot instruction where the device
// supports integer dot products (the compiler polyfills it elsewhere).
requires packed_4x8_integer_dot_product;

fn dot4_i8(a: u32, b: u32) -> i32 {
    return dot4I8Packed(a, b);
}
