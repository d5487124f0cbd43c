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
//   gemm (GEMM): prefill, the register-tiled GEMM of gemm_simt.wgsl; each thread dequantizes one packed
//         word (8 k of one weight row) per K-step into the shared weight tile.
#include "common.wgsl"

const WG: u32 = 64u;
#ifndef GEMM
#include "reduce.wgsl"
#endif

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

#include "q4.wgsl"

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

#ifndef GEMM
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
#endif

#ifdef GEMM
#include "gemm_simt.wgsl"

// x[m, k0 .. k0+KPT] of token m (K % 8 == 0: a vec4 is all in or all out), zero outside [T, K].
fn load_x(m: u32, k0: u32) -> Regs {
    var r = Regs(vec4<f32>(0.0), vec4<f32>(0.0));
    if (m >= p.t || k0 >= p.k) { return r; }
    let base = m * (p.k / 4u) + k0 / 4u;
    r.a = x[base];
    if (KPT == 8u) { r.b = x[base + 1u]; }
    return r;
}

// W[row, k0 .. k0+8]: one packed word, dequantized (k0 % 8 == 0), zero outside the chunk.
fn load_w(row: u32, k0: u32) -> Regs {
    if (row >= p.rows || k0 >= p.k) { return Regs(vec4<f32>(0.0), vec4<f32>(0.0)); }
    let w = dequant(qw[row * p.words + k0 / 8u], row, groups8(k0));
    return Regs(w.lo, w.hi);
}
#endif
