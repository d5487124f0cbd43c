// GPTQ int4 dequant-matmul: y[T, N] (+)= x[T, K] · W[N, K]ᵀ (+ bias[N]), x and y f32.
// W is never materialised: W[n, k] = s[n, g] · (q[n, k] − zero[n, g]), g = group of k, is formed in
// registers (gemv) or in one shared-memory tile per K-step (gemm). Layouts (repacked at load by
// `tensor::QWeight`, the transpose of AutoGPTQ's qweight):
//   qw [rows, K/8] u32: nibble j (bits 4j..4j+3) of word r holds q[row, k = 8r + j], 0..15.
//   sz [rows, G]   u32: low half the f16 scale s, bits 16.. the zero (AutoGPTQ z_stored + 1, 1..16).
//   g_idx [K] u32 (GIDX only; desc_act): group of input k. Without GIDX: g = k / gs (gs % 8 == 0).
// A weight larger than one storage binding is split by rows: each dispatch binds one chunk
// (rows row0 .. row0+rows) and writes its columns of y.
//   gemv: decode (T small), ROWS output rows per workgroup; each thread dequantizes whole words (VEC4:
//         four words, 32 k) and reuses the activations it loaded across the ROWS rows; workgroup
//         reduction (subgroupAdd with a shared-memory fallback). Token = workgroup z.
//   gemm: prefill, 64×64 output tile per workgroup; per BK=32 K-step one [64, 32] activation tile and
//         one dequantized [32, 64] weight tile in shared memory (one packed word per thread), 4×4
//         register tile.
#include "common.wgsl"

const WG: u32 = 64u;
#include "reduce.wgsl"

struct Params {
    t: u32,       // tokens T
    n: u32,       // total output columns N (row stride of y)
    k: u32,       // inner dimension K (a multiple of 8)
    words: u32,   // K / 8: packed words per weight row
    groups: u32,  // G: quantization groups per row (row stride of sz)
    gs: u32,      // group size (sequential groups only)
    row0: u32,    // first weight row of this chunk
    rows: u32,    // rows in this chunk
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;        // [T, K / 4]
#ifdef VEC4
@group(0) @binding(2) var<storage, read> qw: array<vec4<u32>>;       // [rows, K / 32]
#else
@group(0) @binding(2) var<storage, read> qw: array<u32>;             // [rows, K / 8]
#endif
@group(0) @binding(3) var<storage, read> sz: array<u32>;             // [rows, G]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;        // [T, N]
#ifdef BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;           // [N]
#ifdef GIDX
@group(0) @binding(6) var<storage, read> g_idx: array<vec4<u32>>;    // [K / 4]
#endif
#else
#ifdef GIDX
@group(0) @binding(5) var<storage, read> g_idx: array<vec4<u32>>;    // [K / 4]
#endif
#endif

#include "matmul_store.wgsl"

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

const ROWS: u32 = 4u;

#ifdef VEC4
// 32 activations and the groups of their 32 weights.
struct X32 { a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>, e: vec4<f32>, f: vec4<f32>, g: vec4<f32>, h: vec4<f32> }
struct G32 { a: G8, b: G8, c: G8, d: G8 }

// Dot product of the 32 weights in vec4 word `j` of `row` with 32 activations.
fn vec_dot(row: u32, j: u32, row_vec4: u32, g: G32, x: X32) -> f32 {
    let q = qw[row * row_vec4 + j];
    return word_dot(q.x, row, g.a, x.a, x.b) + word_dot(q.y, row, g.b, x.c, x.d)
         + word_dot(q.z, row, g.c, x.e, x.f) + word_dot(q.w, row, g.d, x.g, x.h);
}
#endif

@compute @workgroup_size(WG)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, lane: Lane) {
    let r0 = (wid.x + wid.y * nwg.x) * ROWS;   // first chunk-local row of this workgroup
    if (r0 >= p.rows) { return; }                // uniform per workgroup
    let xo = wid.z * (p.k / 4u);                 // token row of x, in vec4
    var acc = vec4<f32>(0.0);
#ifdef VEC4
    // Named registers only: arrays indexed in loops would spill to local memory on some drivers.
    let row_vec4 = p.words / 4u;
    let last = p.rows - 1u;
    for (var j = lane.tid; j < row_vec4; j += WG) {
        let xb = xo + j * 8u;
        let xs = X32(x[xb], x[xb + 1u], x[xb + 2u], x[xb + 3u], x[xb + 4u], x[xb + 5u], x[xb + 6u], x[xb + 7u]);
        let kb = j * 32u;
        let gs = G32(groups8(kb), groups8(kb + 8u), groups8(kb + 16u), groups8(kb + 24u));
        acc.x += vec_dot(min(r0, last), j, row_vec4, gs, xs);
        acc.y += vec_dot(min(r0 + 1u, last), j, row_vec4, gs, xs);
        acc.z += vec_dot(min(r0 + 2u, last), j, row_vec4, gs, xs);
        acc.w += vec_dot(min(r0 + 3u, last), j, row_vec4, gs, xs);
    }
#else
    for (var j = lane.tid; j < p.words; j += WG) {
        let a = x[xo + 2u * j];
        let b = x[xo + 2u * j + 1u];
        let g = groups8(j * 8u);
        for (var r = 0u; r < ROWS; r++) {
            let row = min(r0 + r, p.rows - 1u);
            acc[r] += word_dot(qw[row * p.words + j], row, g, a, b);
        }
    }
#endif
    let total = wg_sum4(acc, lane);
    if (lane.tid < ROWS && r0 + lane.tid < p.rows) {
        store(wid.z, p.row0 + r0 + lane.tid, total[lane.tid]);
    }
}

#ifndef VEC4
const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 32u;
var<workgroup> xs: array<f32, 2048>;   // [BM, BK]
var<workgroup> ws: array<f32, 2048>;   // [BK, BN] (transposed: the inner loop reads along n)

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let n0 = wid.x * BN;   // chunk-local row
    let m0 = wid.y * BM;   // token
    let tm = tid / 16u;
    let tn = tid % 16u;
    // Rows m0 + tm + 16i, columns n0 + tn + 16j in vec4 registers (no dynamically indexed array,
    // which would spill to local memory).
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Activations: 64 tokens × 8 vec4, two per thread (K % 4 == 0: a vec4 is all in or all out).
        for (var i = 0u; i < 2u; i++) {
            let e = tid + i * 256u;
            let r = e / 8u;
            let c = (e % 8u) * 4u;
            let m = m0 + r;
            var v = vec4<f32>(0.0);
            if (m < p.t && k0 + c < p.k) { v = x[(m * p.k + k0 + c) / 4u]; }
            let o = r * BK + c;
            xs[o] = v.x;
            xs[o + 1u] = v.y;
            xs[o + 2u] = v.z;
            xs[o + 3u] = v.w;
        }
        // Weights: 64 rows × 4 packed words, one word (8 k) dequantized per thread.
        let r = tid / 4u;
        let c = (tid % 4u) * 8u;
        let row = n0 + r;
        let k = k0 + c;
        var w = W8(vec4<f32>(0.0), vec4<f32>(0.0));
        if (row < p.rows && k < p.k) { w = dequant(qw[row * p.words + k / 8u], row, groups8(k)); }
        for (var i = 0u; i < 4u; i++) {
            ws[(c + i) * BN + r] = w.lo[i];
            ws[(c + 4u + i) * BN + r] = w.hi[i];
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let xb = tm * BK + kk;
            let wb = kk * BN + tn;
            let a = vec4<f32>(xs[xb], xs[xb + 16u * BK], xs[xb + 32u * BK], xs[xb + 48u * BK]);
            let b = vec4<f32>(ws[wb], ws[wb + 16u], ws[wb + 32u], ws[wb + 48u]);
            c0 += a.x * b;
            c1 += a.y * b;
            c2 += a.z * b;
            c3 += a.w * b;
        }
        workgroupBarrier();
    }
    let n = n0 + tn;
    store4(m0 + tm, n, c0);
    store4(m0 + tm + 16u, n, c1);
    store4(m0 + tm + 32u, n, c2);
    store4(m0 + tm + 48u, n, c3);
}

#endif
