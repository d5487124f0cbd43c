// The register-tiled f32 GEMM shared by matmul.wgsl and matmul_q4.wgsl (their `gemm` entry point):
// y[T, N] (+)= x[T, K] · W[N, K]ᵀ for one weight chunk. The includer declares `p` (t, n, k, rows, row0),
// `x`, `w`, `y` and, after this file, defines
//   fn load_x(m: u32, k0: u32) -> Regs   // x[m, k0 .. k0+KPT] (KPT values, zero outside [T, K])
//   fn load_w(row: u32, k0: u32) -> Regs // W[row, k0 .. k0+8] dequantized to f32, zero outside the chunk
// and includes matmul_store.wgsl (`store`).
//
// Workgroup tile: BM tokens × BN = 128 output columns, K in steps of BK = 16. 256 threads in a 16×16
// grid; thread (tm, tn) owns rows 4tm+i (and 64+4tm+i with BM128) and columns 4tn+j and 64+4tn+j,
// i, j < 4: a (BM/16)×8 register tile (`Tile`).
// Shared tiles are k-major, [BK, BM] and [BK, BN] as vec4 along m / n, so the inner loop reads four
// vec4s (two broadcasts, two consecutive) per 64 (BM128) or 32 FMAs.
// Global reads are coalesced into full 32-byte sectors: each thread reads KPT consecutive k of one
// token and 8 consecutive k of one weight row, consecutive threads taking consecutive rows (so the
// transposing stores into the k-major tiles hit consecutive words: no bank conflicts). The next
// K-step is read into registers before the current one is multiplied (one-step prefetch).

#ifdef BM128
const BM: u32 = 128u;
#else
const BM: u32 = 64u;
#endif
const BN: u32 = 128u;
const BK: u32 = 16u;
const KPT: u32 = BM * BK / 256u;   // x values each thread loads per K-step: 8 (BM128) or 4

struct Regs { a: vec4<f32>, b: vec4<f32> }   // up to 8 consecutive k, k ascending

var<workgroup> xs: array<vec4<f32>, BK * BM / 4u>;   // [BK, BM / 4]: xs[k * BM/4 + m/4][m % 4] = x[m0 + m, k0 + k]
var<workgroup> ws: array<vec4<f32>, BK * BN / 4u>;   // [BK, BN / 4]: ws[k * BN/4 + n/4][n % 4] = W[n0 + n, k0 + k]

// Scatter one thread's prefetched values into the k-major tiles.
fn put_tiles(xr: Regs, wr: Regs, tid: u32) {
    let m = tid % BM;
    let kx = KPT * (tid / BM);
    for (var i = 0u; i < KPT; i++) {
        let v = select(xr.b[i % 4u], xr.a[i % 4u], i < 4u);
        xs[(kx + i) * (BM / 4u) + m / 4u][m % 4u] = v;
    }
    let n = tid % BN;
    let kw = 8u * (tid / BN);
    for (var i = 0u; i < 4u; i++) {
        ws[(kw + i) * (BN / 4u) + n / 4u][n % 4u] = wr.a[i];
        ws[(kw + 4u + i) * (BN / 4u) + n / 4u][n % 4u] = wr.b[i];
    }
}

// Four consecutive outputs y[m, n .. n+4] (chunk-local n), bounds-checked.
fn store_row4(m: u32, n: u32, v: vec4<f32>) {
    if (m >= p.t) { return; }
    for (var j = 0u; j < 4u; j++) {
        if (n + j < p.rows) { store(m, p.row0 + n + j, v[j]); }
    }
}

// The register tile: rXg = row 4tm+X (X < 4) or 64+4tm+X-4 (X >= 4, BM128), column group g (4tn..4tn+4
// or 64+4tn..). Named vec4s, not an array, so nothing is dynamically indexed (which could spill).
struct Tile {
    r00: vec4<f32>, r01: vec4<f32>, r10: vec4<f32>, r11: vec4<f32>,
    r20: vec4<f32>, r21: vec4<f32>, r30: vec4<f32>, r31: vec4<f32>,
#ifdef BM128
    r40: vec4<f32>, r41: vec4<f32>, r50: vec4<f32>, r51: vec4<f32>,
    r60: vec4<f32>, r61: vec4<f32>, r70: vec4<f32>, r71: vec4<f32>,
#endif
}

// One k of the shared tiles into the register tile: four vec4 reads, 64 (BM128) or 32 FMAs.
fn fma_k(c: ptr<function, Tile>, kk: u32, tm: u32, tn: u32) {
    let a0 = xs[kk * (BM / 4u) + tm];
    let b0 = ws[kk * (BN / 4u) + tn];
    let b1 = ws[kk * (BN / 4u) + 16u + tn];
    (*c).r00 += a0.x * b0; (*c).r01 += a0.x * b1;
    (*c).r10 += a0.y * b0; (*c).r11 += a0.y * b1;
    (*c).r20 += a0.z * b0; (*c).r21 += a0.z * b1;
    (*c).r30 += a0.w * b0; (*c).r31 += a0.w * b1;
#ifdef BM128
    let a1 = xs[kk * (BM / 4u) + 16u + tm];
    (*c).r40 += a1.x * b0; (*c).r41 += a1.x * b1;
    (*c).r50 += a1.y * b0; (*c).r51 += a1.y * b1;
    (*c).r60 += a1.z * b0; (*c).r61 += a1.z * b1;
    (*c).r70 += a1.w * b0; (*c).r71 += a1.w * b1;
#endif
}

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let n0 = wid.x * BN;   // chunk-local row of W = output column
    let m0 = wid.y * BM;   // token
    let tm = tid / 16u;
    let tn = tid % 16u;
    var c = Tile();
    let xm = m0 + tid % BM;
    let xk = KPT * (tid / BM);
    let wn = n0 + tid % BN;
    let wk = 8u * (tid / BN);
    var xr = load_x(xm, xk);
    var wr = load_w(wn, wk);
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        put_tiles(xr, wr, tid);
        workgroupBarrier();
        if (k0 + BK < p.k) {   // uniform: prefetch the next K-step while this one is multiplied
            xr = load_x(xm, k0 + BK + xk);
            wr = load_w(wn, k0 + BK + wk);
        }
        // Unrolled by four by hand: naga bounds every loop with a counter, which also hinders the
        // driver's own unrolling.
        for (var kk = 0u; kk < BK; kk += 4u) {
            fma_k(&c, kk, tm, tn);
            fma_k(&c, kk + 1u, tm, tn);
            fma_k(&c, kk + 2u, tm, tn);
            fma_k(&c, kk + 3u, tm, tn);
        }
        workgroupBarrier();
    }
    let m = m0 + 4u * tm;
    let n = 4u * tn;
    store_row4(m, n0 + n, c.r00); store_row4(m, n0 + 64u + n, c.r01);
    store_row4(m + 1u, n0 + n, c.r10); store_row4(m + 1u, n0 + 64u + n, c.r11);
    store_row4(m + 2u, n0 + n, c.r20); store_row4(m + 2u, n0 + 64u + n, c.r21);
    store_row4(m + 3u, n0 + n, c.r30); store_row4(m + 3u, n0 + 64u + n, c.r31);
#ifdef BM128
    store_row4(m + 64u, n0 + n, c.r40); store_row4(m + 64u, n0 + 64u + n, c.r41);
    store_row4(m + 65u, n0 + n, c.r50); store_row4(m + 65u, n0 + 64u + n, c.r51);
    store_row4(m + 66u, n0 + n, c.r60); store_row4(m + 66u, n0 + 64u + n, c.r61);
    store_row4(m + 67u, n0 + n, c.r70); store_row4(m + 67u, n0 + 64u + n, c.r71);
#endif
}
