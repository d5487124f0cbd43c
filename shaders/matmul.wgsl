// Dense matmul: y[T, N] (+)= x[T, K] · W[N, K]ᵀ (+ bias[N]), x and y f32, W stored as
// W_F32 (one value per u32), W_F16 or W_BF16 (two per u32, row stride `row_words` words).
// A weight larger than one storage binding is split by rows: each dispatch binds one chunk
// (rows row0 .. row0+rows) and writes its columns of y.
//   gemv: decode (T small), ROWS output rows per workgroup, coalesced u32 (VEC4: vec4<u32>) loads,
//         workgroup reduction (subgroupAdd with a shared-memory fallback). Token = workgroup z.
//   gemm (GEMM): prefill, BM×128 output tile per workgroup (BM = 128 with BM128, else 64), BK = 16
//         k-major shared-memory tiles, (BM/16)×8 register tile per thread, loaded with coalesced
//         vec4 reads (VEC4: x as vec4<f32>, W as vec4<u32>) prefetched into registers one K-step ahead.
#include "common.wgsl"

const WG: u32 = 256u;
#ifndef GEMM
#include "reduce.wgsl"
#endif

struct Params {
    t: u32,          // tokens T
    n: u32,          // total output columns N (row stride of y)
    k: u32,          // inner dimension K
    row_words: u32,  // u32 words per weight row
    row0: u32,       // first weight row of this chunk
    rows: u32,       // rows in this chunk
    x_off: u32,      // first element of x (a row offset times K)
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#ifdef GEMM_X4
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;      // [x_off / K + T, K / 4]
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;            // [x_off / K + T, K]
#endif
#ifdef VEC4
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;      // [rows, row_words / 4]
#else
@group(0) @binding(2) var<storage, read> w: array<u32>;            // [rows, row_words]
#endif
@group(0) @binding(3) var<storage, read_write> y: array<f32>;      // [T, N]
#ifdef BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;         // [N]
#endif

#include "matmul_store.wgsl"

#ifndef GEMM
// Dot product of one u32 word of weights (1 or 2 values) with x starting at element `e`.
fn dot_word(word: u32, xo: u32, e: u32) -> f32 {
#ifdef W_F32
    return bitcast<f32>(word) * x[xo + e];
#else
    let v = unpack_w2(word);
    var s = v.x * x[xo + e];
    if (e + 1u < p.k) { s += v.y * x[xo + e + 1u]; }
    return s;
#endif
}

#ifdef W_F32
const PER_WORD: u32 = 1u;
#else
const PER_WORD: u32 = 2u;
#endif

const ROWS: u32 = 4u;

@compute @workgroup_size(WG)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, lane: Lane) {
    let r0 = (wid.x + wid.y * nwg.x) * ROWS;   // first chunk-local row of this workgroup
    if (r0 >= p.rows) { return; }                // uniform per workgroup
    let t = wid.z;
    let xo = p.x_off + t * p.k;
    var acc = vec4<f32>(0.0);
    for (var r = 0u; r < ROWS; r++) {
        let row = min(r0 + r, p.rows - 1u);
#ifdef VEC4
        let base = row * (p.row_words / 4u);
        for (var j = lane.tid; j < p.row_words / 4u; j += WG) {
            let q = w[base + j];
            let e = j * 4u * PER_WORD;
            acc[r] += dot_word(q.x, xo, e) + dot_word(q.y, xo, e + PER_WORD)
                    + dot_word(q.z, xo, e + 2u * PER_WORD) + dot_word(q.w, xo, e + 3u * PER_WORD);
        }
#else
        let base = row * p.row_words;
        let words = (p.k + PER_WORD - 1u) / PER_WORD;
        for (var j = lane.tid; j < words; j += WG) {
            acc[r] += dot_word(w[base + j], xo, j * PER_WORD);
        }
#endif
    }
    let total = wg_sum4(acc, lane);
    if (lane.tid < ROWS && r0 + lane.tid < p.rows) {
        store(t, p.row0 + r0 + lane.tid, total[lane.tid]);
    }
}
#endif

#ifdef GEMM
#include "gemm_simt.wgsl"

#ifndef VEC4
// Weight element (chunk-local row, column k) as f32, zero outside the matrix (scalar path).
fn w_at(row: u32, k: u32) -> f32 {
    if (row >= p.rows || k >= p.k) { return 0.0; }
#ifdef W_F32
    return bitcast<f32>(w[row * p.row_words + k]);
#else
    let v = unpack_w2(w[row * p.row_words + k / 2u]);
    return select(v.x, v.y, (k & 1u) == 1u);
#endif
}
#endif

// x[m, k0 .. k0+8] (KPT = 8) or x[m, k0 .. k0+4] (KPT = 4) of token m, zero outside [T, K].
fn load_x(m: u32, k0: u32) -> Regs {
    var r = Regs(vec4<f32>(0.0), vec4<f32>(0.0));
    if (m >= p.t) { return r; }
#ifdef VEC4
    // K % 4 == 0 and x_off % 4 == 0: a vec4 is all in or all out.
    let base = (p.x_off + m * p.k) / 4u;
    if (k0 < p.k) { r.a = x[base + k0 / 4u]; }
    if (KPT == 8u && k0 + 4u < p.k) { r.b = x[base + k0 / 4u + 1u]; }
#else
    let base = p.x_off + m * p.k;
    for (var i = 0u; i < KPT; i++) {
        if (k0 + i < p.k) {
            if (i < 4u) { r.a[i] = x[base + k0 + i]; } else { r.b[i - 4u] = x[base + k0 + i]; }
        }
    }
#endif
    return r;
}

// W[row, k0 .. k0+8] of chunk-local `row` as f32, zero outside the chunk.
fn load_w(row: u32, k0: u32) -> Regs {
    var r = Regs(vec4<f32>(0.0), vec4<f32>(0.0));
#ifdef VEC4
    // 16-bit: K % 8 == 0, one vec4<u32> is 8 values; f32: K % 4 == 0, two vec4<u32>.
    if (row >= p.rows || k0 >= p.k) { return r; }
#ifdef W_F32
    let base = row * (p.row_words / 4u) + k0 / 4u;
    r.a = bitcast<vec4<f32>>(w[base]);
    if (k0 + 4u < p.k) { r.b = bitcast<vec4<f32>>(w[base + 1u]); }
#else
    let q = w[row * (p.row_words / 4u) + k0 / 8u];
    let lo = unpack_w2(q.x);
    let hi = unpack_w2(q.y);
    let lo2 = unpack_w2(q.z);
    let hi2 = unpack_w2(q.w);
    r.a = vec4<f32>(lo, hi);
    r.b = vec4<f32>(lo2, hi2);
#endif
#else
    for (var i = 0u; i < 4u; i++) {
        r.a[i] = w_at(row, k0 + i);
        r.b[i] = w_at(row, k0 + 4u + i);
    }
#endif
    return r;
}
#endif
