// Tensor-core GEMM on cooperative matrices: y[T, N] (+)= x[T, K] · W[N, K]ᵀ (+ bias[N]), x and y f32,
// f16 tiles multiplied into f32 accumulators (coop_mat16x16: f16 A and B, f32 C, the 16×16×16
// configuration the host found in the adapter's list). W is a dense f16/bf16 weight (W_F16 / W_BF16,
// two per u32, K % 8 == 0) or, with Q4, a GPTQ int4 weight in matmul_q4.wgsl's layout (K % 32 == 0),
// dequantized into the f16 tile as it is staged. A weight larger than one binding is split by rows:
// one dispatch per chunk (rows row0 .. row0+rows), as in matmul.wgsl.
//
// Workgroup tile BM × BN = 32·SGM tokens × 32·SGN columns; SGM × SGN subgroups of SG invocations,
// each owning a 32×32 block as 2×2 C fragments. Per K-step of BK = 32 the x tile [BM, BK] and the W
// tile [BN, BK] are staged in workgroup memory as f16 (row stride BKP = 40 halves = 80 bytes: every
// fragment pointer and stride is 16-byte aligned, as coop loads require). A is loaded row-major
// (coopLoadT); B(k, n) = W[n, k] is the W tile read column-major (coopLoad).
//
// Numerics (ARCHITECTURE.md, "Numerics"):
// - W is multiplied by `w_scale`, a power of two chosen at load so |W|·w_scale < 2^15 (bf16 has
//   f16's precision but not its range); the result is multiplied by 1/w_scale, exactly.
// - SPLIT ("exact"): x enters as hi = f16(x), lo = f16(x − hi), two MMAs; with Q4 the dequantized
//   weight (16 significant bits) is split the same way, exactly: three MMAs (lo·lo is dropped).
//   Without SPLIT ("fast") x is rounded once to f16.
// - Range: every thread tracks the largest |x| it staged. If the A panel of the workgroup (its BM
//   tokens over all of K) held a finite |x| > 65504, which f16 cannot hold, the workgroup finds the
//   largest |x| of each of its token rows and runs the K loop again with each such row multiplied by
//   its own power of two 2^-s (|x|·2^-s < 2^15), the row's results multiplied by 2^s in the epilogue:
//   exact, rows without outliers keep their full precision, and only that workgroup pays.
// - Epilogue: each C fragment goes through workgroup memory (one 16×16 f32 block per subgroup) so
//   partial tiles, bias, accumulation and the unscaling are plain per-element code.
//
// COOP_EMU: the coop intrinsics are emulated in plain WGSL (a fragment is a reference into the staged
// tile; C is 256/SG floats per invocation of a block of SG invocations). Everything else is the same
// code, so the tiling, staging, range handling and epilogue are tested on adapters without
// cooperative matrices. Tests only: it is slow.
enable f16;
#ifndef COOP_EMU
enable wgpu_cooperative_matrix;
#endif
#include "common.wgsl"

const NSG: u32 = SGM * SGN;      // subgroups per workgroup
const WG: u32 = NSG * SG;        // invocations per workgroup
const BM: u32 = 32u * SGM;       // tokens per tile
const BN: u32 = 32u * SGN;       // output columns per tile
const BK: u32 = 32u;             // K per step
const BKP: u32 = 40u;            // row stride of the staged f16 tiles
const F16_MAX: f32 = 65504.0;

struct Params {
    t: u32,           // tokens T
    n: u32,           // total output columns N (row stride of y)
    k: u32,           // inner dimension K
    words: u32,       // u32 words per weight row (dense: row_words; Q4: K / 8)
    row0: u32,        // first weight row of this chunk
    rows: u32,        // rows in this chunk
    x_off: u32,       // first vec4 of x (first token row × K / 4)
    groups: u32,      // Q4: groups per row G
    gs: u32,          // Q4: group size (sequential groups)
    w_scale: f32,     // power of two applied to W before rounding to f16
    w_unscale: f32,   // 1 / w_scale
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;        // [x_off / (K/4) + T, K / 4]
#ifdef Q4
@group(0) @binding(2) var<storage, read> qw: array<u32>;             // [rows, K / 8] packed nibbles
@group(0) @binding(3) var<storage, read> sz: array<u32>;             // [rows, G] f16 scale | zero << 16
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
#else
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;        // [rows, words / 4]: 8 halves per vec4
@group(0) @binding(3) var<storage, read_write> y: array<f32>;        // [T, N]
#ifdef BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;           // [N]
#endif
#endif

#include "matmul_store.wgsl"
#ifdef Q4
#include "q4.wgsl"
#endif

var<workgroup> sa: array<f16, BM * BKP>;        // x tile [BM, BK] (hi)
#ifdef SPLIT
var<workgroup> sa_lo: array<f16, BM * BKP>;     // x − hi
#endif
var<workgroup> sb: array<f16, BN * BKP>;        // W tile [BN, BK] (hi)
#ifdef Q4
#ifdef SPLIT
var<workgroup> sb_lo: array<f16, BN * BKP>;     // W − hi
#endif
#endif
var<workgroup> stage: array<f32, NSG * 256u>;   // one 16×16 C fragment per subgroup, row-major
var<workgroup> amax_bits: atomic<u32>;          // largest |x| staged (f32 bits; order = value order)
var<workgroup> amax_seen: u32;
var<workgroup> rmax: array<atomic<u32>, BM>;    // largest |x| of each token row (rescaled pass only)
var<workgroup> xsc: array<f32, BM>;             // power of two each token row of x is staged times

// ---- the cooperative-matrix operations (native, or emulated with COOP_EMU) --------------------
#ifdef COOP_EMU
const EPL: u32 = 256u / SG;                     // C elements per invocation
struct FragA { off: u32, lo: bool }             // A(r, k) = tile[off + r * BKP + k]
struct FragB { off: u32, lo: bool }             // B(k, c) = tile[off + c * BKP + k] (column-major)
struct Acc { v: array<f32, EPL> }               // element lane + i·SG, row-major in the 16×16 block
var<private> emu_lane: u32;

fn a_at(f: FragA, r: u32, k: u32) -> f32 {
    let i = f.off + r * BKP + k;
#ifdef SPLIT
    if (f.lo) { return f32(sa_lo[i]); }
#endif
    return f32(sa[i]);
}
fn b_at(f: FragB, k: u32, c: u32) -> f32 {
    let i = f.off + c * BKP + k;
#ifdef Q4
#ifdef SPLIT
    if (f.lo) { return f32(sb_lo[i]); }
#endif
#endif
    return f32(sb[i]);
}
fn frag_a(o: u32) -> FragA { return FragA(o, false); }
fn frag_b(o: u32) -> FragB { return FragB(o, false); }
fn acc_zero() -> Acc { return Acc(); }
fn mma(a: FragA, b: FragB, c: Acc) -> Acc {
    var r = c;
    for (var i = 0u; i < EPL; i++) {
        let e = emu_lane + i * SG;
        var s = 0.0;
        for (var k = 0u; k < 16u; k++) { s += a_at(a, e / 16u, k) * b_at(b, k, e % 16u); }
        r.v[i] += s;
    }
    return r;
}
fn store_frag(c: Acc, o: u32) {
    for (var i = 0u; i < EPL; i++) { stage[o + emu_lane + i * SG] = c.v[i]; }
}
#ifdef SPLIT
fn frag_a_lo(o: u32) -> FragA { return FragA(o, true); }
#ifdef Q4
fn frag_b_lo(o: u32) -> FragB { return FragB(o, true); }
#endif
#endif
#else
alias FragA = coop_mat16x16<f16, A>;
alias FragB = coop_mat16x16<f16, B>;
alias Acc = coop_mat16x16<f32, C>;
fn frag_a(o: u32) -> FragA { return coopLoadT<FragA>(&sa[o], BKP); }
fn frag_b(o: u32) -> FragB { return coopLoad<FragB>(&sb[o], BKP); }
fn acc_zero() -> Acc { return Acc(); }
fn mma(a: FragA, b: FragB, c: Acc) -> Acc { return coopMultiplyAdd(a, b, c); }
fn store_frag(c: Acc, o: u32) {
    // naga 30's SPIR-V writer needs the pointer index and stride of a coop store bound to lets.
    let at = o;
    let ld = 16u;
    coopStoreT(c, &stage[at], ld);
}
#ifdef SPLIT
fn frag_a_lo(o: u32) -> FragA { return coopLoadT<FragA>(&sa_lo[o], BKP); }
#ifdef Q4
fn frag_b_lo(o: u32) -> FragB { return coopLoad<FragB>(&sb_lo[o], BKP); }
#endif
#endif
#endif

// ---- staging -------------------------------------------------------------------------------------
// x tile rows m0 .. m0+BM, columns k0 .. k0+BK (times the row scales when `scaled`) into sa (and
// sa_lo); returns the largest magnitude staged.
fn stage_x(m0: u32, k0: u32, tid: u32, scaled: bool) -> f32 {
    var mx = 0.0;
    for (var e = tid; e < BM * (BK / 4u); e += WG) {
        let r = e / (BK / 4u);
        let c = 4u * (e % (BK / 4u));
        var v = vec4<f32>(0.0);
        if (m0 + r < p.t && k0 + c < p.k) {   // K % 4 == 0: a vec4 is all in or all out
            v = x[p.x_off + (m0 + r) * (p.k / 4u) + (k0 + c) / 4u];
            if (scaled) { v *= xsc[r]; }
        }
        let a = abs(v);
        mx = max(mx, max(max(a.x, a.y), max(a.z, a.w)));
        let o = r * BKP + c;
        let hi = vec4<f16>(v);
        sa[o] = hi.x;
        sa[o + 1u] = hi.y;
        sa[o + 2u] = hi.z;
        sa[o + 3u] = hi.w;
#ifdef SPLIT
        let lo = vec4<f16>(v - vec4<f32>(hi));
        sa_lo[o] = lo.x;
        sa_lo[o + 1u] = lo.y;
        sa_lo[o + 2u] = lo.z;
        sa_lo[o + 3u] = lo.w;
#endif
    }
    return mx;
}

// Eight scaled weights W[n0 + r, k .. k+8]·w_scale into the W tile at row r, column c.
fn put_w8(r: u32, c: u32, lo4: vec4<f32>, hi4: vec4<f32>) {
    let o = r * BKP + c;
    let a = vec4<f16>(lo4 * p.w_scale);
    let b = vec4<f16>(hi4 * p.w_scale);
    sb[o] = a.x;
    sb[o + 1u] = a.y;
    sb[o + 2u] = a.z;
    sb[o + 3u] = a.w;
    sb[o + 4u] = b.x;
    sb[o + 5u] = b.y;
    sb[o + 6u] = b.z;
    sb[o + 7u] = b.w;
#ifdef Q4
#ifdef SPLIT
    let al = vec4<f16>(lo4 * p.w_scale - vec4<f32>(a));
    let bl = vec4<f16>(hi4 * p.w_scale - vec4<f32>(b));
    sb_lo[o] = al.x;
    sb_lo[o + 1u] = al.y;
    sb_lo[o + 2u] = al.z;
    sb_lo[o + 3u] = al.w;
    sb_lo[o + 4u] = bl.x;
    sb_lo[o + 5u] = bl.y;
    sb_lo[o + 6u] = bl.z;
    sb_lo[o + 7u] = bl.w;
#endif
#endif
}

// W tile rows n0 .. n0+BN (chunk-local), columns k0 .. k0+BK: one packed group of 8 k per step.
fn stage_w(n0: u32, k0: u32, tid: u32) {
    for (var e = tid; e < BN * (BK / 8u); e += WG) {
        let r = e / (BK / 8u);
        let c = 8u * (e % (BK / 8u));
        let row = n0 + r;
        var lo4 = vec4<f32>(0.0);
        var hi4 = vec4<f32>(0.0);
        if (row < p.rows && k0 + c < p.k) {   // K % 8 == 0: all 8 in or all out
#ifdef Q4
            let d = dequant(qw[row * p.words + (k0 + c) / 8u], row, groups8(k0 + c));
            lo4 = d.lo;
            hi4 = d.hi;
#else
            let q = w[row * (p.words / 4u) + (k0 + c) / 8u];
            lo4 = vec4<f32>(unpack_w2(q.x), unpack_w2(q.y));
            hi4 = vec4<f32>(unpack_w2(q.z), unpack_w2(q.w));
#endif
        }
        put_w8(r, c, lo4, hi4);
    }
}

// Largest |x| of each token row of the A panel, then the per-row scales (the rare rescaled pass).
fn row_scales(m0: u32, tid: u32) {
    let kv4 = p.k / 4u;
    for (var e = tid; e < BM * kv4; e += WG) {
        let r = e / kv4;
        if (m0 + r < p.t) {
            let a = abs(x[p.x_off + (m0 + r) * kv4 + e % kv4]);
            atomicMax(&rmax[r], bitcast<u32>(max(max(a.x, a.y), max(a.z, a.w))));
        }
    }
    workgroupBarrier();
    for (var r = tid; r < BM; r += WG) {
        let b = atomicLoad(&rmax[r]);
        if (b > bitcast<u32>(F16_MAX) && b < 0x7f800000u) {
            // |x| in [2^e, 2^(e+1)) with e >= 15: x·2^-(e-14) < 2^15.
            xsc[r] = bitcast<f32>((127u - ((b >> 23u) - 127u - 14u)) << 23u);
        }
    }
    workgroupBarrier();
}

// The subgroup's staged fragment (tile rows r0.., output columns c0..) to y, unscaled.
fn write_frag(m0: u32, r0: u32, c0: u32, so: u32, lane: u32) {
    for (var e = lane; e < 256u; e += SG) {
        let r = r0 + e / 16u;
        let n = c0 + e % 16u;
        if (m0 + r < p.t && n < p.rows) { store(m0 + r, p.row0 + n, stage[so + e] * p.w_unscale / xsc[r]); }
    }
}

struct Ids {
    @builtin(local_invocation_index) tid: u32,
#ifndef COOP_EMU
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(num_subgroups) nsg: u32,
#endif
}

@compute @workgroup_size(WG)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, ids: Ids) {
    let tid = ids.tid;
#ifdef COOP_EMU
    let sg = tid / SG;
    let lane = tid % SG;
    let nsg = NSG;
    emu_lane = lane;
#else
    let sg = ids.sg;
    let lane = ids.lane;
    let nsg = ids.nsg;
#endif
    let n0 = wid.x * BN;                 // chunk-local weight row = output column
    let m0 = wid.y * BM;                 // token
    let fm = 32u * (sg / SGN);           // this subgroup's 32×32 block within the tile
    let fn0 = 32u * (sg % SGN);
    if (nsg != NSG) {
        // The adapter split the workgroup into subgroups of another size than the kernel was
        // compiled for: write NaN rather than a wrong product.
        for (var e = tid; e < BM * BN; e += WG) {
            let m = m0 + e / BN;
            let n = n0 + e % BN;
            if (m < p.t && n < p.rows) { y[m * p.n + p.row0 + n] = bitcast<f32>(0x7fc00000u); }
        }
        return;
    }
    var c00 = acc_zero();
    var c01 = acc_zero();
    var c10 = acc_zero();
    var c11 = acc_zero();
    for (var r = tid; r < BM; r += WG) { xsc[r] = 1.0; }
    var scaled = false;
    loop {
        c00 = acc_zero();
        c01 = acc_zero();
        c10 = acc_zero();
        c11 = acc_zero();
        var mx = 0.0;
        for (var k0 = 0u; k0 < p.k; k0 += BK) {
            mx = max(mx, stage_x(m0, k0, tid, scaled));
            stage_w(n0, k0, tid);
            workgroupBarrier();
            for (var kk = 0u; kk < BK; kk += 16u) {
                let a0 = frag_a(fm * BKP + kk);
                let a1 = frag_a((fm + 16u) * BKP + kk);
                let b0 = frag_b(fn0 * BKP + kk);
                let b1 = frag_b((fn0 + 16u) * BKP + kk);
                c00 = mma(a0, b0, c00);
                c01 = mma(a0, b1, c01);
                c10 = mma(a1, b0, c10);
                c11 = mma(a1, b1, c11);
#ifdef SPLIT
                let l0 = frag_a_lo(fm * BKP + kk);
                let l1 = frag_a_lo((fm + 16u) * BKP + kk);
                c00 = mma(l0, b0, c00);
                c01 = mma(l0, b1, c01);
                c10 = mma(l1, b0, c10);
                c11 = mma(l1, b1, c11);
#ifdef Q4
                let d0 = frag_b_lo(fn0 * BKP + kk);
                let d1 = frag_b_lo((fn0 + 16u) * BKP + kk);
                c00 = mma(a0, d0, c00);
                c01 = mma(a0, d1, c01);
                c10 = mma(a1, d0, c10);
                c11 = mma(a1, d1, c11);
#endif
#endif
            }
            workgroupBarrier();
        }
        // The panel's largest |x|: f16 holds it, or it is inf/NaN (propagated as the f32 path
        // would), or the loop runs once more with the offending rows scaled down.
        atomicMax(&amax_bits, bitcast<u32>(mx));
        workgroupBarrier();
        if (tid == 0u) {
            amax_seen = atomicLoad(&amax_bits);
            atomicStore(&amax_bits, 0u);
        }
        let seen = workgroupUniformLoad(&amax_seen);
        if (scaled || seen <= bitcast<u32>(F16_MAX) || seen >= 0x7f800000u) { break; }
        row_scales(m0, tid);
        scaled = true;
    }
    let so = sg * 256u;
    store_frag(c00, so);
    workgroupBarrier();
    write_frag(m0, fm, n0 + fn0, so, lane);
    workgroupBarrier();
    store_frag(c01, so);
    workgroupBarrier();
    write_frag(m0, fm, n0 + fn0 + 16u, so, lane);
    workgroupBarrier();
    store_frag(c10, so);
    workgroupBarrier();
    write_frag(m0, fm + 16u, n0 + fn0, so, lane);
    workgroupBarrier();
    store_frag(c11, so);
    workgroupBarrier();
    write_frag(m0, fm + 16u, n0 + fn0 + 16u, so, lane);
}
