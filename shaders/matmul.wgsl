// Dense matmul: y[T, N] (+)= x[T, K] · W[N, K]ᵀ (+ bias[N]), x and y f32, W stored as
// W_F32 (one value per u32), W_F16 or W_BF16 (two per u32, row stride `row_words` words).
// A weight larger than one storage binding is split by rows: each dispatch binds one chunk
// (rows row0 .. row0+rows) and writes its columns of y.
//   gemv: decode (T small), ROWS output rows per workgroup, coalesced u32 (VEC4: vec4<u32>) loads,
//         workgroup reduction (subgroupAdd with a shared-memory fallback). Token = workgroup z.
//   gemm: prefill, 64×64 output tile per workgroup, BK=16 shared-memory tiles, 4×4 register tile.
#include "common.wgsl"

const WG: u32 = 256u;
#include "reduce.wgsl"

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
@group(0) @binding(1) var<storage, read> x: array<f32>;            // [x_off / K + T, K]
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

#ifndef VEC4
const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
var<workgroup> xs: array<f32, 1024>;   // [BK, BM] (k-major, so the inner loop reads consecutive m)
var<workgroup> ws: array<f32, 1024>;   // [BK, BN]

// Weight element (chunk-local row, column k), zero outside the matrix.
fn w_at(row: u32, k: u32) -> f32 {
    if (row >= p.rows || k >= p.k) { return 0.0; }
#ifdef W_F32
    return bitcast<f32>(w[row * p.row_words + k]);
#else
    let v = unpack_w2(w[row * p.row_words + k / 2u]);
    return select(v.x, v.y, (k & 1u) == 1u);
#endif
}


// Each thread owns rows m0 + tm + 16i and columns n0 + tn + 16j (i, j < 4) in four vec4
// accumulators: registers only (a dynamically indexed array would spill to local memory).
@compute @workgroup_size(WG)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let n0 = wid.x * BN;   // chunk-local row
    let m0 = wid.y * BM;   // token
    let tm = tid / 16u;
    let tn = tid % 16u;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * WG;
            let r = e % BM;    // consecutive threads: consecutive rows (conflict-free stores)
            let c = e / BM;
            let m = m0 + r;
            var xv = 0.0;
            if (m < p.t && k0 + c < p.k) { xv = x[p.x_off + m * p.k + k0 + c]; }
            xs[c * BM + r] = xv;
            ws[c * BN + r] = w_at(n0 + r, k0 + c);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let xb = kk * BM + tm;
            let wb = kk * BN + tn;
            let a = vec4<f32>(xs[xb], xs[xb + 16u], xs[xb + 32u], xs[xb + 48u]);
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
