// Shared helpers, included with `#include "common.wgsl"`.
// f16 and bf16 live packed two per u32 word (element 2i in the low half); math is f32.
// No kernel needs shader-f16: unpack2x16float is core WGSL (naga 30 also mis-types
// `bitcast<vec2<f16>>(u32)`, so an f16-arithmetic variant would buy nothing here).

fn bf16_lo(w: u32) -> f32 { return bitcast<f32>(w << 16u); }
fn bf16_hi(w: u32) -> f32 { return bitcast<f32>(w & 0xffff0000u); }
fn bf16x2(w: u32) -> vec2<f32> { return vec2<f32>(bf16_lo(w), bf16_hi(w)); }
fn f16x2(w: u32) -> vec2<f32> { return unpack2x16float(w); }

// Two weights from one word of a row stored as W_F16 or W_BF16.
fn unpack_w2(w: u32) -> vec2<f32> {
#ifdef W_BF16
    return bf16x2(w);
#else
    return f16x2(w);
#endif
}
