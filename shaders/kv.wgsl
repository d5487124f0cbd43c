// Paged, optionally quantized KV cache: element formats (included by attention_paged.wgsl) and the
// append kernel. See ARCHITECTURE.md, "Paged KV cache".
//
// A layer's K (and V) lives in arenas: buffers of `rows` positions each, arena a holding the global
// positions row0 .. row0 + rows. Inside one arena (one binding of u32 words):
//   values [rows, Hkv, WPR]      WPR = D / EPW words per head row, EPW elements per word
//   scales [rows, Hkv, D / 32]   (quantized formats only) one word per group of 32 elements:
//                                pack2x16float(scale, min), element x = q * scale + min
// Formats (one define each):
//   FMT_F16 : EPW 2, f16 pairs (element 2i in the low half), no scales          (16 bits / value)
//   FMT_Q8  : EPW 4, u8 per element (byte i = element 4w + i), asymmetric        (9 bits / value)
//   FMT_Q4  : EPW 8, u4 per element (nibble i = element 8w + i), asymmetric      (5 bits / value)
// KROT (keys only): every group of 32 elements was multiplied by the normalised 32-point Walsh-
// Hadamard matrix H (H = Hᵀ = H⁻¹) before quantizing, which spreads an outlier channel over its
// group; attention applies the same H to q (q·k = Hq·Hk), so nothing is undone on the output.
//
// Entry point:
//   kv_append : (KV_APPEND) K and V of T new tokens -> this arena's rows pos[0] + t - row0 (rows of
//               other arenas are skipped, so one dispatch per arena writes every row once). One
//               thread per (token, kv head, group of GW elements): GW = 32 for quantized formats
//               (min/max of the group, then the words and the scale word), 2 for f16 (one word).
#include "common.wgsl"

const GS: u32 = 32u;            // elements per scale group

#ifdef FMT_F16
const EPW: u32 = 2u;
#endif
#ifdef FMT_Q8
const EPW: u32 = 4u;
const QMAX: f32 = 255.0;
const QBITS: u32 = 8u;
#endif
#ifdef FMT_Q4
const EPW: u32 = 8u;
const QMAX: f32 = 15.0;
const QBITS: u32 = 4u;
#endif
const WPR: u32 = D / EPW;       // words per head row

// Word index of (arena row, kv head) and of its first scale word, in an arena of `rows` rows.
fn kv_word0(row: u32, kvh: u32, hkv: u32) -> u32 { return (row * hkv + kvh) * WPR; }
fn kv_scale0(row: u32, kvh: u32, hkv: u32, rows: u32) -> u32 { return rows * hkv * WPR + (row * hkv + kvh) * (D / GS); }

// In-place normalised 32-point Walsh-Hadamard transform.
fn hadamard32(x: ptr<function, array<f32, 32>>) {
    for (var len = 1u; len < 32u; len <<= 1u) {
        for (var i = 0u; i < 32u; i++) {
            if ((i & len) == 0u) {
                let a = (*x)[i];
                let b = (*x)[i + len];
                (*x)[i] = a + b;
                (*x)[i + len] = a - b;
            }
        }
    }
    for (var i = 0u; i < 32u; i++) { (*x)[i] *= 0.17677669529663687; }   // 1 / sqrt(32)
}

// Element i (< EPW) of word `w` dequantized with scale word `sw` (unused for f16).
fn kv_elem(w: u32, sw: vec2<f32>, i: u32) -> f32 {
#ifdef FMT_F16
    return unpack2x16float(w)[i];
#else
    let q = (w >> (i * QBITS)) & ((1u << QBITS) - 1u);
    return f32(q) * sw.x + sw.y;
#endif
}

#ifdef KV_APPEND
#ifdef FMT_F16
const GW: u32 = 2u;
#else
const GW: u32 = GS;
#endif

struct Params {
    t: u32,         // new tokens T
    hkv: u32,       // kv heads Hkv
    row0: u32,      // global position of this arena's first row
    rows: u32,      // rows of this arena
    k_off: u32,     // element offset of token 0's K heads in `ks`
    k_stride: u32,  // elements between consecutive tokens' K rows
    v_off: u32,
    v_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ks: array<f32>;            // K of token t, head h: ks[k_off + t*k_stride + h*D ..]
@group(0) @binding(2) var<storage, read> vs: array<f32>;            // V likewise (may be the same buffer: fused qkv rows)
@group(0) @binding(3) var<storage, read> pos: array<u32>;           // [1]: pos[0] = position of token 0
@group(0) @binding(4) var<storage, read_write> kc: array<u32>;      // K arena: values [rows, Hkv, WPR] (+ scales [rows, Hkv, D/32])
@group(0) @binding(5) var<storage, read_write> vc: array<u32>;      // V arena, same layout

// Write one group of GW elements (x) of (arena row, kv head, group g) into `K` (to_v false) or `V`.
fn store(to_v: bool, x: ptr<function, array<f32, GW>>, row: u32, kvh: u32, g: u32) {
    let w0 = kv_word0(row, kvh, p.hkv) + g * (GW / EPW);
#ifdef FMT_F16
    let word = pack2x16float(vec2<f32>((*x)[0], (*x)[1]));
    if (to_v) { vc[w0] = word; } else { kc[w0] = word; }
#else
    var lo = (*x)[0];
    var hi = (*x)[0];
    for (var i = 1u; i < GW; i++) { lo = min(lo, (*x)[i]); hi = max(hi, (*x)[i]); }
    // Scale and min are rounded to f16 first, so the codes are chosen for the values the reader sees.
    let sm = unpack2x16float(pack2x16float(vec2<f32>((hi - lo) / QMAX, lo)));
    var inv = 0.0;
    if (sm.x > 0.0) { inv = 1.0 / sm.x; }
    for (var j = 0u; j < GW / EPW; j++) {
        var word = 0u;
        for (var i = 0u; i < EPW; i++) {
            let q = u32(clamp(round(((*x)[j * EPW + i] - sm.y) * inv), 0.0, QMAX));
            word |= q << (i * QBITS);
        }
        if (to_v) { vc[w0 + j] = word; } else { kc[w0 + j] = word; }
    }
    let s = kv_scale0(row, kvh, p.hkv, p.rows) + g;
    if (to_v) { vc[s] = pack2x16float(sm); } else { kc[s] = pack2x16float(sm); }
#endif
}

@compute @workgroup_size(64)
fn kv_append(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * 64u + lid;
    let groups = D / GW;
    if (e >= p.t * p.hkv * groups) { return; }
    let t = e / (p.hkv * groups);
    let kvh = (e / groups) % p.hkv;
    let g = e % groups;
    let at = pos[0] + t;
    if (at < p.row0 || at >= p.row0 + p.rows) { return; }
    let row = at - p.row0;
    var x: array<f32, GW>;
    let kb = p.k_off + t * p.k_stride + kvh * D + g * GW;
    for (var i = 0u; i < GW; i++) { x[i] = ks[kb + i]; }
#ifdef KROT
    hadamard32(&x);
#endif
    store(false, &x, row, kvh, g);
    let vb = p.v_off + t * p.v_stride + kvh * D + g * GW;
    for (var i = 0u; i < GW; i++) { x[i] = vs[vb + i]; }
    store(true, &x, row, kvh, g);
}
#endif
