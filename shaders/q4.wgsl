// GPTQ int4 dequantization shared by matmul_q4.wgsl and matmul_coop.wgsl (layouts in matmul_q4.wgsl).
// The includer declares `p.groups` (G), `p.gs` (group size), `sz` [rows, G] and, with GIDX, `g_idx`
// [K / 4] vec4<u32>. (q − zero) · s is exact in f32 (11-bit scale × 5-bit integer).

// The four nibbles in the low 16 bits of `q`, k ascending, as f32.
fn nib4(q: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(q) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
}

// (scale, zero) of group record `i` of sz.
fn group(i: u32) -> vec2<f32> {
    let r = sz[i];
    return vec2<f32>(unpack2x16float(r).x, f32(r >> 16u));
}

// Groups of the 8 inputs k .. k+7 (k a multiple of 8).
struct G8 { lo: vec4<u32>, hi: vec4<u32> }
// Eight dequantized weights, k ascending.
struct W8 { lo: vec4<f32>, hi: vec4<f32> }

fn groups8(k: u32) -> G8 {
#ifdef GIDX
    return G8(g_idx[k / 4u], g_idx[k / 4u + 1u]);
#else
    let g = vec4<u32>(k / p.gs);
    return G8(g, g);
#endif
}

#ifdef GIDX
fn deq4(q: vec4<f32>, base: u32, g: vec4<u32>) -> vec4<f32> {
    let a = group(base + g.x);
    let b = group(base + g.y);
    let c = group(base + g.z);
    let d = group(base + g.w);
    return (q - vec4<f32>(a.y, b.y, c.y, d.y)) * vec4<f32>(a.x, b.x, c.x, d.x);
}
#endif

// Dequantize one packed word of chunk-local `row`; (q − zero) · s is exact in f32.
fn dequant(q: u32, row: u32, g: G8) -> W8 {
    let base = row * p.groups;
    let lo = nib4(q);
    let hi = nib4(q >> 16u);
#ifdef GIDX
    return W8(deq4(lo, base, g.lo), deq4(hi, base, g.hi));
#else
    let s = group(base + g.lo.x);
    return W8((lo - s.y) * s.x, (hi - s.y) * s.x);
#endif
}

// Dot product of one packed word with the activations a = x[k .. k+4], b = x[k+4 .. k+8].
fn word_dot(q: u32, row: u32, g: G8, a: vec4<f32>, b: vec4<f32>) -> f32 {
    let w = dequant(q, row, g);
    return dot(a, w.lo) + dot(b, w.hi);
}
