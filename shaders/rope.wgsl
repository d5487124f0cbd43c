// Rotary position embedding, NeoX / rotate-half style over the full head dim D, on the fused QKV
// rows qkv[T, stride] with stride = (H + 2·Hkv)·D: Q heads then K heads then V heads per token.
// For pair (t, head, i < D/2), pairs i and i + D/2:
//   out[i]       = x[i]·cos a − x[i + D/2]·sin a
//   out[i + D/2] = x[i + D/2]·cos a + x[i]·sin a,     a = f32(pos) · inv_freq[i]
// with pos = pos0 + t (t taken modulo `seq` for a batch of sequences [B, S] laid out as T = B·S rows).
// inv_freq comes from the host (f32, theta^(−2i/D)) so every backend uses the same angles.
// cos/sin are computed here, not with the built-ins (whose accuracy is unspecified outside
// [−π, π]): Cody–Waite reduction by π/2 with exact products for |a| < 2^18·π/2 ≈ 411774, then
// Cephes minimax polynomials on [−π/4, π/4]; abs error ≈ 1.1e-7 over all such angles.
// Entry points:
//   rope          : in place on the first `heads` (= H + Hkv) heads of each row; pos0 is a parameter.
//   rope_kv_write : (ROPE_KV) one dispatch per layer and step: rotates the H query heads in place,
//                   rotates the Hkv key heads into f16 cache_k rows pos0 + t, copies the Hkv value heads
//                   into f16 cache_v rows pos0 + t. pos0 = pos[0] is read from a buffer, so a recorded
//                   dispatch is replayed at any position without a parameter rewrite. K in qkv stays
//                   unrotated. Rows >= ctx_len are not written (the host sizes the cache).
//                   With `slots`, row t is the one new token of sequence t of a batch (`engine::batch`):
//                   its position is pos[t] and its cache row t·ctx_len + pos[t] (slot t of ctx_len rows).
const WG: u32 = 256u;

// π/2 as a sum of f32 parts with at most 6 significant bits each (the last holds the rest),
// so k·part is exact for k < 2^18.
const P0: f32 = 1.5625;
const P1: f32 = 8.056640625e-3;
const P2: f32 = 2.3651123046875e-4;
const P3: f32 = 3.159046173095703e-6;
const P4: f32 = 1.5832483768463135e-8;
const P5: f32 = 6.0026650317013264e-11;
const P6: f32 = 7.389644451905042e-13;
const P7: f32 = 5.329070518200751e-15;
const P8: f32 = 6.123234262925839e-17;

// (sin a, cos a) for 0 ≤ a < 411774.
fn sincos(a: f32) -> vec2<f32> {
    let k = round(a * 0.63661977236758134);
    let r = (((((((a - k * P0) - k * P1) - k * P2) - k * P3) - k * P4) - k * P5) - k * P6) - k * P7 - k * P8;
    let z = r * r;
    let s = r + r * z * ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1);
    let c = 1.0 - 0.5 * z + z * z * ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2);
    switch (u32(k) & 3u) {
        case 0u: { return vec2<f32>(s, c); }
        case 1u: { return vec2<f32>(c, -s); }
        case 2u: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}

#ifdef ROPE_KV
#include "kv_cache.wgsl"

struct Params {
    t: u32,        // tokens T
    h: u32,        // query heads H (rotated in place)
    hkv: u32,      // kv heads Hkv (K rotated into cache_k, V copied into cache_v)
    d: u32,        // head dim D (even)
    seq: u32,      // rows per sequence in a right-padded batch (positions restart); 0 = one sequence
    ctx_len: u32,  // cache rows (with `slots`: rows per slot)
    slots: u32,    // 1: row t is sequence t's token at pos[t], cached in slot t
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;    // [T, (H + 2·Hkv)·D]
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;     // [D/2]
@group(0) @binding(3) var<storage, read> pos: array<u32>;          // [1]: pos[0] = position of token 0
@group(0) @binding(4) var<storage, read_write> kc: array<u32>;     // [ctx, Hkv, D/2] f16 pairs
@group(0) @binding(5) var<storage, read_write> vc: array<u32>;     // [ctx, Hkv, D/2] f16 pairs

// Element `e` (< D) of the rotated head starting at qkv[base], at position `at`. Same arithmetic as
// `rope` (so K matches the two-dispatch path bit for bit before the f16 rounding).
fn rotated(base: u32, e: u32, at: u32) -> f32 {
    let half = p.d / 2u;
    let i = e % half;
    let sc = sincos(f32(at) * inv_freq[i]);
    if (e < half) {
        return qkv[base + e] * sc.y - qkv[base + e + half] * sc.x;
    }
    return qkv[base + e] * sc.y + qkv[base + i] * sc.x;
}

// One thread per Q pair (t, head < H, i < D/2) or per cache word (t, kv head, w < D/2).
@compute @workgroup_size(WG)
fn rope_kv_write(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = (wid.x + wid.y * nwg.x) * WG + lid;
    let half = p.d / 2u;
    let per_tok = (p.h + p.hkv) * half;
    if (e >= p.t * per_tok) { return; }
    let t = e / per_tok;
    let r = e % per_tok;
    let slots = p.slots != 0u;
    let pos0 = pos[select(0u, t, slots)];
    let at = pos0 + select(select(t, t % p.seq, p.seq > 0u), 0u, slots);
    let row_base = t * (p.h + 2u * p.hkv) * p.d;
    if (r < p.h * half) {
        let i = r % half;
        let base = row_base + (r / half) * p.d + i;
        let sc = sincos(f32(at) * inv_freq[i]);
        let x0 = qkv[base];
        let x1 = qkv[base + half];
        qkv[base] = x0 * sc.y - x1 * sc.x;
        qkv[base + half] = x1 * sc.y + x0 * sc.x;
        return;
    }
    // A padded batch's rows are pos0 + t (positions restart, rows do not); a slot's are its own.
    let row = select(pos0 + t, t * p.ctx_len + at, slots);
    if (row >= select(p.ctx_len, (t + 1u) * p.ctx_len, slots)) { return; }
    let kvh = (r - p.h * half) / half;
    let w = (r - p.h * half) % half;
    let kb = row_base + (p.h + kvh) * p.d;
    let vb = row_base + (p.h + p.hkv + kvh) * p.d;
    let dst = kv_row_word(row, kvh, p.hkv, half) + w;
    kc[dst] = pack2x16float(vec2<f32>(rotated(kb, 2u * w, at), rotated(kb, 2u * w + 1u, at)));
    vc[dst] = pack2x16float(vec2<f32>(qkv[vb + 2u * w], qkv[vb + 2u * w + 1u]));
}
#else
struct Params {
    t: u32,        // tokens T
    heads: u32,    // heads rotated per token (H + Hkv)
    d: u32,        // head dim D (even)
    stride: u32,   // elements per token row ((H + 2·Hkv)·D)
    pos0: u32,     // position of token 0
    seq: u32,      // rows per sequence in a right-padded batch (positions restart); 0 = one sequence
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;   // [T, stride]
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;    // [D/2]

@compute @workgroup_size(WG)
fn rope(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = (wid.x + wid.y * nwg.x) * WG + lid;
    let half = p.d / 2u;
    if (e >= p.t * p.heads * half) { return; }
    let i = e % half;
    let th = e / half;               // t · heads + head
    let t = th / p.heads;
    let base = t * p.stride + (th % p.heads) * p.d + i;
    let pos = p.pos0 + select(t, t % p.seq, p.seq > 0u);
    let sc = sincos(f32(pos) * inv_freq[i]);
    let x0 = qkv[base];
    let x1 = qkv[base + half];
    qkv[base] = x0 * sc.y - x1 * sc.x;
    qkv[base + half] = x1 * sc.y + x0 * sc.x;
}
#endif
