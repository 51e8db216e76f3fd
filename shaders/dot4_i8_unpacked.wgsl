// Prepended to linear_forward_i8.wgsl when the WGSL compiler lacks the
// packed 4x8 integer dot product (and to test that path everywhere): each
// byte sign-extended by shifting it to the top of an i32 and back
// (arithmetic shift), then four exact multiply-adds.

fn dot4_i8(a: u32, b: u32) -> i32 {
    let sa = bitcast<i32>(a);
    let sb = bitcast<i32>(b);
    var sum = 0;
    for (var i = 0u; i < 4u; i++) {
        let up = 24u - 8u * i;
        sum += ((sa << up) >> 24u) * ((sb << up) >> 24u);
    }
    return sum;
}
