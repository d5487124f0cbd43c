// Tensor-core flash attention for prefill over the f16 KV cache (layout of attention.wgsl):
// o[B, S, H, D] = softmax(q kᵀ · scale + mask) v, with QKᵀ and PV on 16×16×16 f16×f16→f32 cooperative
// matrices and the softmax in f32. Query head h reads kv head h / (H / Hkv) (GQA).
//
// One workgroup per (BQ = 16·NSG query rows, head, batch); subgroup g owns query rows 16g .. 16g+16.
// Per KV tile of BK keys: the K tile is staged (f16, exact: the cache is f16), each subgroup computes
// its 16×BK scores S = Q Kᵀ (D/16 MMAs per 16 keys) and stores them to workgroup memory; then one
// invocation per row applies the mask and the online softmax in f32 while the V tile is staged, and
// writes P (f16) back; each subgroup accumulates O += P V into D/16 C fragments that stay in
// registers for the whole KV loop.
//
// Online softmax with lazy rescaling: a row keeps a reference maximum m and uses p = exp(s − m)
// while s ≤ m + TAU (so p ≤ e^8, well inside f16); only when a score exceeds it does the row move m
// and scale its sum l and its O row by exp(m_old − m_new). O rows cannot be scaled inside a fragment,
// so that (rare) step goes through workgroup memory for the whole workgroup.
//
// q is multiplied by the softmax scale and staged as f16; SPLIT ("exact") stages it as hi + lo halves
// and P the same way (two MMAs each, results near the f32 kernel). A query row whose |q·scale|
// exceeds f16's range is staged times a power of two 2^-s and its scores multiplied by 2^s (exact);
// the other rows are untouched.
//
// Query i of sequence b sits at position pos0 + i (pos0 = pos[0] with POS_BUF, else the parameter);
// sequence b has keys 0 .. pos0 + n_b, n_b = S or lens[b] with LENS (rows i >= lens[b] output zeros).
// CAUSAL: query i sees keys <= pos0 + i, and KV tiles after the tile's last query are skipped.
// q rows have a stride of q_stride floats (0: H·D), so q can be read from a fused qkv buffer.
//
// COOP_EMU: the coop intrinsics emulated in plain WGSL (tests on adapters without them), as in
// matmul_coop.wgsl.
enable f16;
#ifndef COOP_EMU
enable wgpu_cooperative_matrix;
#endif
#include "common.wgsl"

// Defines: D (a multiple of 16), NSG (subgroups), BK (keys per tile, 16 or 32), SG (subgroup size).
const BQ: u32 = 16u * NSG;       // query rows per workgroup
const WG: u32 = NSG * SG;
const DP: u32 = D / 2u;          // cache words (f16 pairs) per head row
const DQ: u32 = D + 8u;          // row stride of the staged q / K / V tiles (f16; 16-byte aligned rows)
const DF: u32 = D / 16u;         // output fragments per subgroup
const BKS: u32 = BK + 4u;        // row stride of the f32 score tile
const BKP: u32 = BK + 8u;        // row stride of the f16 probability tile
const NEG: f32 = -1.0e30;        // masked score
const TAU: f32 = 8.0;            // lazy-rescale threshold
const F16_MAX: f32 = 65504.0;

struct Params {
    b: u32,           // batch B
    s: u32,           // queries per sequence S
    h: u32,           // query heads H
    hkv: u32,         // kv heads Hkv
    kv_stride: u32,   // cache rows per sequence
    pos0: u32,        // position of query 0 (without POS_BUF)
    scale: f32,       // softmax scale
    q_stride: u32,    // floats per q row (0: H·D)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;              // [B, S, q_stride] (head h at h·D)
@group(0) @binding(2) var<storage, read> kc: array<u32>;             // [B * kv_stride, Hkv, D/2] f16 pairs
@group(0) @binding(3) var<storage, read> vc: array<u32>;             // [B * kv_stride, Hkv, D/2] f16 pairs
@group(0) @binding(4) var<storage, read_write> o: array<f32>;        // [B, S, H, D]
#ifdef LENS
@group(0) @binding(5) var<storage, read> lens: array<u32>;           // [B] valid queries (and new keys)
#ifdef POS_BUF
@group(0) @binding(6) var<storage, read> pos: array<u32>;            // [1] position of query 0
#endif
#else
#ifdef POS_BUF
@group(0) @binding(5) var<storage, read> pos: array<u32>;            // [1] position of query 0
#endif
#endif

var<workgroup> sq: array<f16, BQ * DQ>;        // scaled q tile [BQ, D] (hi)
#ifdef SPLIT
var<workgroup> sq_lo: array<f16, BQ * DQ>;     // q − hi
#endif
var<workgroup> skv: array<f16, BK * DQ>;       // K tile, then V tile [BK, D]
var<workgroup> ss: array<f32, BQ * BKS>;       // scores [BQ, BK]; a subgroup's 16 rows double as its fragment stage
var<workgroup> sp: array<f16, BQ * BKP>;       // probabilities [BQ, BK] (hi)
#ifdef SPLIT
var<workgroup> sp_lo: array<f16, BQ * BKP>;    // p − hi
#endif
var<workgroup> srow: array<f32, BQ>;           // per row: this tile's rescale factor, at the end 1 / l
var<workgroup> qmax: array<atomic<u32>, BQ>;   // per row: largest |q·scale| (f32 bits)
var<workgroup> qsc: array<f32, BQ>;            // per row: the power of two q is staged times
var<workgroup> flag_bits: atomic<u32>;         // "some row must rescale O"
var<workgroup> flag: u32;

// ---- the cooperative-matrix operations (native, or emulated with COOP_EMU) --------------------
#ifdef COOP_EMU
const EPL: u32 = 256u / SG;
struct FragA { off: u32, src: u32 }   // src 0: sq, 1: sq_lo (stride DQ); 2: sp, 3: sp_lo (stride BKP); row-major
struct FragB { off: u32, kt: bool }   // skv: Kᵀ (kt, B(d, key) = skv[off + key·DQ + d]) or V (B(key, d) = skv[off + key·DQ + d])
struct Acc { v: array<f32, EPL> }     // element lane + i·SG of the 16×16 block, row-major
var<private> emu_lane: u32;

fn a_at(f: FragA, r: u32, k: u32) -> f32 {
    switch (f.src) {
        case 0u: { return f32(sq[f.off + r * DQ + k]); }
#ifdef SPLIT
        case 1u: { return f32(sq_lo[f.off + r * DQ + k]); }
        case 3u: { return f32(sp_lo[f.off + r * BKP + k]); }
#endif
        default: { return f32(sp[f.off + r * BKP + k]); }
    }
}
fn b_at(f: FragB, k: u32, c: u32) -> f32 {
    if (f.kt) { return f32(skv[f.off + c * DQ + k]); }
    return f32(skv[f.off + k * DQ + c]);
}
fn frag_q(o: u32) -> FragA { return FragA(o, 0u); }
fn frag_p(o: u32) -> FragA { return FragA(o, 2u); }
fn frag_kt(o: u32) -> FragB { return FragB(o, true); }
fn frag_v(o: u32) -> FragB { return FragB(o, false); }
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
fn store_s(c: Acc, o: u32) {
    for (var i = 0u; i < EPL; i++) {
        let e = emu_lane + i * SG;
        ss[o + (e / 16u) * BKS + e % 16u] = c.v[i];
    }
}
fn store_stage(c: Acc, o: u32) {
    for (var i = 0u; i < EPL; i++) { ss[o + emu_lane + i * SG] = c.v[i]; }
}
fn load_stage(o: u32) -> Acc {
    var r: Acc;
    for (var i = 0u; i < EPL; i++) { r.v[i] = ss[o + emu_lane + i * SG]; }
    return r;
}
#ifdef SPLIT
fn frag_q_lo(o: u32) -> FragA { return FragA(o, 1u); }
fn frag_p_lo(o: u32) -> FragA { return FragA(o, 3u); }
#endif
#else
alias FragA = coop_mat16x16<f16, A>;
alias FragB = coop_mat16x16<f16, B>;
alias Acc = coop_mat16x16<f32, C>;
fn frag_q(o: u32) -> FragA { return coopLoadT<FragA>(&sq[o], DQ); }
fn frag_p(o: u32) -> FragA { return coopLoadT<FragA>(&sp[o], BKP); }
fn frag_kt(o: u32) -> FragB { return coopLoad<FragB>(&skv[o], DQ); }    // column-major: B(d, key) = K[key, d]
fn frag_v(o: u32) -> FragB { return coopLoadT<FragB>(&skv[o], DQ); }    // row-major: B(key, d) = V[key, d]
fn acc_zero() -> Acc { return Acc(); }
fn mma(a: FragA, b: FragB, c: Acc) -> Acc { return coopMultiplyAdd(a, b, c); }
// naga 30's SPIR-V writer needs the pointer index and stride of a coop store bound to lets.
fn store_s(c: Acc, o: u32) {
    let at = o;
    let ld = BKS;
    coopStoreT(c, &ss[at], ld);
}
fn store_stage(c: Acc, o: u32) {
    let at = o;
    let ld = 16u;
    coopStoreT(c, &ss[at], ld);
}
fn load_stage(o: u32) -> Acc { return coopLoadT<Acc>(&ss[o], 16u); }
#ifdef SPLIT
fn frag_q_lo(o: u32) -> FragA { return coopLoadT<FragA>(&sq_lo[o], DQ); }
fn frag_p_lo(o: u32) -> FragA { return coopLoadT<FragA>(&sp_lo[o], BKP); }
#endif
#endif

// Stage cache rows k0 .. k0+BK of kv head `kvh` as f16 (rows >= n are zero; they are masked anyway).
fn load_tile(from_v: bool, row0: u32, k0: u32, n: u32, kvh: u32, tid: u32) {
    for (var e = tid; e < BK * DP; e += WG) {
        let c = e / DP;
        let w = e % DP;
        var v = vec2<f32>(0.0);
        if (c < n) {
            let at = ((row0 + k0 + c) * p.hkv + kvh) * DP + w;
            if (from_v) { v = f16x2(vc[at]); } else { v = f16x2(kc[at]); }
        }
        let h = vec2<f16>(v);   // exact: the cache holds f16
        skv[c * DQ + 2u * w] = h.x;
        skv[c * DQ + 2u * w + 1u] = h.y;
    }
}

// One of the workgroup's flags: atomics written by some invocations, then read uniformly.
fn uniform_flag(tid: u32) -> u32 {
    workgroupBarrier();
    if (tid == 0u) { flag = atomicExchange(&flag_bits, 0u); }
    return workgroupUniformLoad(&flag);
}

// Multiply row r of every O fragment of this subgroup by srow[16·sg + r], through the stage.
fn rescale_rows(acc: ptr<function, array<Acc, DF>>, so: u32, sg: u32, lane: u32) {
    for (var j = 0u; j < DF; j++) {
        store_stage((*acc)[j], so);
        workgroupBarrier();
        for (var e = lane; e < 256u; e += SG) { ss[so + e] *= srow[16u * sg + e / 16u]; }
        workgroupBarrier();
        (*acc)[j] = load_stage(so);
        workgroupBarrier();
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
fn attn_prefill(@builtin(workgroup_id) wid: vec3<u32>, ids: Ids) {
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
    let q0 = wid.x * BQ;
    let hh = wid.y;
    let bb = wid.z;
    let kvh = hh / (p.h / p.hkv);
    let row0 = bb * p.kv_stride;
    let qs_row = select(p.q_stride, p.h * D, p.q_stride == 0u);
#ifdef POS_BUF
    let pos0 = pos[0];
#else
    let pos0 = p.pos0;
#endif
#ifdef LENS
    let n_valid = min(lens[bb], p.s);
#else
    let n_valid = p.s;
#endif
    if (nsg != NSG) {
        // Subgroups of another size than compiled for: NaN rather than a wrong result.
        for (var e = tid; e < BQ * D; e += WG) {
            let i = q0 + e / D;
            if (i < p.s) { o[((bb * p.s + i) * p.h + hh) * D + e % D] = bitcast<f32>(0x7fc00000u); }
        }
        return;
    }
    var kv_end = min(pos0 + n_valid, p.kv_stride);          // keys of this sequence
#ifdef CAUSAL
    kv_end = min(kv_end, pos0 + q0 + BQ);                   // skip tiles after the last query
#endif

    // q tile, scaled; first each row's largest magnitude, so f16 can hold it.
    for (var e = tid; e < BQ * D; e += WG) {
        let i = q0 + e / D;
        if (i < p.s) {
            let a = abs(q[(bb * p.s + i) * qs_row + hh * D + e % D] * p.scale);
            atomicMax(&qmax[e / D], bitcast<u32>(a));
        }
    }
    workgroupBarrier();
    for (var rr = tid; rr < BQ; rr += WG) {
        let b = atomicLoad(&qmax[rr]);
        var f = 1.0;
        if (b > bitcast<u32>(F16_MAX) && b < 0x7f800000u) {
            f = bitcast<f32>((127u - ((b >> 23u) - 127u - 14u)) << 23u);   // |q·scale|·f < 2^15
        }
        qsc[rr] = f;
    }
    workgroupBarrier();
    for (var e = tid; e < BQ * D; e += WG) {
        let i = q0 + e / D;
        var v = 0.0;
        if (i < p.s) { v = q[(bb * p.s + i) * qs_row + hh * D + e % D] * p.scale * qsc[e / D]; }
        let at = (e / D) * DQ + e % D;
        let hi = f16(v);
        sq[at] = hi;
#ifdef SPLIT
        sq_lo[at] = f16(v - f32(hi));
#endif
    }

    let so = 16u * sg * BKS;         // this subgroup's rows of ss (also its fragment stage)
    let r = 16u * sg + lane;         // the query row this invocation keeps the softmax state of (lane < 16)
    var m = NEG;                     // reference maximum of row r
    var l = 0.0;                     // sum of exp(s − m) of row r
    var acc: array<Acc, DF>;
    for (var j = 0u; j < DF; j++) { acc[j] = acc_zero(); }

    for (var k0 = 0u; k0 < kv_end; k0 += BK) {
        let n = min(BK, kv_end - k0);
        workgroupBarrier();                                  // previous V tile and P consumed
        load_tile(false, row0, k0, n, kvh, tid);
        workgroupBarrier();
        for (var j = 0u; j < BK / 16u; j++) {
            var s = acc_zero();
            for (var dd = 0u; dd < DF; dd++) {
                let kf = frag_kt(16u * j * DQ + 16u * dd);
                s = mma(frag_q(16u * sg * DQ + 16u * dd), kf, s);
#ifdef SPLIT
                s = mma(frag_q_lo(16u * sg * DQ + 16u * dd), kf, s);
#endif
            }
            store_s(s, so + 16u * j);
        }
        workgroupBarrier();                                  // scores stored, K tile consumed
        load_tile(true, row0, k0, n, kvh, tid);
        if (lane < 16u) {
            let i = q0 + r;
            let s_unscale = 1.0 / qsc[r];
            var tmax = NEG;
            for (var c = 0u; c < BK; c++) {
                var visible = c < n;
#ifdef CAUSAL
                visible = visible && k0 + c <= pos0 + i;
#endif
                let sc = select(NEG, ss[r * BKS + c] * s_unscale, visible);
                ss[r * BKS + c] = sc;
                tmax = max(tmax, sc);
            }
            var alpha = 1.0;
            if (tmax > m + TAU) {
                alpha = exp(m - tmax);
                if (l > 0.0) { atomicOr(&flag_bits, 1u); }
                l *= alpha;
                m = tmax;
            }
            srow[r] = alpha;
            var psum = 0.0;
            for (var c = 0u; c < BK; c++) {
                let sc = ss[r * BKS + c];
                let pv = select(0.0, exp(sc - m), sc > 0.5 * NEG);
                psum += pv;
                let hi = f16(pv);
                sp[r * BKP + c] = hi;
#ifdef SPLIT
                sp_lo[r * BKP + c] = f16(pv - f32(hi));
#endif
            }
            l += psum;
        }
        if (uniform_flag(tid) != 0u) {                       // P, factors and the V tile visible too
            rescale_rows(&acc, so, sg, lane);
        }
        for (var kk = 0u; kk < BK / 16u; kk++) {
            let pf = frag_p(16u * sg * BKP + 16u * kk);
#ifdef SPLIT
            let pl = frag_p_lo(16u * sg * BKP + 16u * kk);
#endif
            for (var j = 0u; j < DF; j++) {
                let vf = frag_v(16u * kk * DQ + 16u * j);
                acc[j] = mma(pf, vf, acc[j]);
#ifdef SPLIT
                acc[j] = mma(pl, vf, acc[j]);
#endif
            }
        }
    }

    // o = O / l; padding rows (i >= n_valid) are zero.
    if (lane < 16u) { srow[r] = 1.0 / l; }
    workgroupBarrier();
    for (var j = 0u; j < DF; j++) {
        store_stage(acc[j], so);
        workgroupBarrier();
        for (var e = lane; e < 256u; e += SG) {
            let rr = 16u * sg + e / 16u;
            let i = q0 + rr;
            if (i < p.s) {
                let val = select(ss[so + e] * srow[rr], 0.0, i >= n_valid);
                o[((bb * p.s + i) * p.h + hh) * D + 16u * j + e % 16u] = val;
            }
        }
        workgroupBarrier();
    }
}
