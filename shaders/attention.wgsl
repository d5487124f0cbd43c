// Attention over an f16 KV cache. Layout (see ARCHITECTURE.md, "KV cache layout"): per layer, K and V
// are each one buffer [ctx, Hkv, D] of f16 packed two per u32, i.e. [ctx, Hkv, D/2] words, token-major,
// the heads of one position contiguous. Batched prefill uses [B * kv_stride, Hkv, D/2]: sequence b's
// keys are rows b*kv_stride ... Math is f32; query head h reads kv head h / (H / Hkv) (GQA).
// Softmax scale (1/sqrt(D)) is a parameter, folded into q when it is loaded.
//   kv_write           : k, v [T, Hkv, D] f32 -> cache rows pos0 .. pos0+T (round to f16). One thread per word.
//   attn_prefill       : o[B, S, H, D] = softmax(q kᵀ · scale + mask) v, flash-style: one workgroup per
//                        (BQ query rows, head, batch); K then V tiles of BK keys staged in workgroup
//                        memory; running max and sum per row (online softmax). Query i sits at position
//                        pos0 + i; sequence b has keys 0 .. pos0 + n_b with n_b = S (or lens[b] with LENS).
//                        CAUSAL: query i also sees only keys <= pos0 + i, and KV tiles past the tile's last
//                        query are skipped. LENS: query rows i >= lens[b] are padding and output zeros.
//   attn_decode        : flash-decoding pass 1. One query token per head, q [H, D]; workgroup (head, split)
//                        covers keys [split*chunk, min((split+1)*chunk, kv_len)) and writes the partial
//                        (max, sum, unnormalised o[D]) to part [H, n_split, D + 2]. A split whose range is
//                        empty writes the neutral partial (max = NEG, sum = 0, o = 0), so a dispatch sized for
//                        the longest context stays correct for any kv_len >= 1.
//   attn_decode_reduce : pass 2. One workgroup per head merges the n_split partials into o [H, D].
#include "common.wgsl"

const WG: u32 = 128u;
const NEG: f32 = -1.0e30;   // "minus infinity" for masked scores: exp(NEG - m) == 0 for any real m

#ifdef KV_WRITE
struct Params {
    t: u32,       // tokens T
    words: u32,   // u32 words per cache row = Hkv * D / 2
    pos0: u32,    // cache row of the first token
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;              // [T, Hkv, D]
@group(0) @binding(2) var<storage, read> v: array<f32>;              // [T, Hkv, D]
@group(0) @binding(3) var<storage, read_write> kc: array<u32>;       // [ctx, Hkv, D/2] f16 pairs
@group(0) @binding(4) var<storage, read_write> vc: array<u32>;       // [ctx, Hkv, D/2] f16 pairs

@compute @workgroup_size(WG)
fn kv_write(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) tid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + tid;   // word index within the T new rows
    if (i >= p.t * p.words) { return; }
    let dst = p.pos0 * p.words + i;
    kc[dst] = pack2x16float(vec2<f32>(k[2u * i], k[2u * i + 1u]));
    vc[dst] = pack2x16float(vec2<f32>(v[2u * i], v[2u * i + 1u]));
}
#endif

#ifdef PREFILL
// Defines: D (even head dim), BQ query rows and BK keys per tile (BQ divides WG).
const DP: u32 = D / 2u;                      // f16 pairs per head row
const TPR: u32 = WG / BQ;                    // threads per query row
// KV_F32: K and V are f32 [B * kv_stride, Hkv, D] (e.g. BERT's k, v activations read directly, no
// f16 rounding); a "word" is then one vec2<f32> pair instead of one u32 of two f16.
#ifdef KV_F32
alias KvWord = vec2<f32>;
fn kv_pair(w: KvWord) -> vec2<f32> { return w; }
#else
alias KvWord = u32;
fn kv_pair(w: KvWord) -> vec2<f32> { return f16x2(w); }
#endif
const NP: u32 = (DP + TPR - 1u) / TPR;       // output pairs per thread

struct Params {
    b: u32,           // batch B
    s: u32,           // queries per sequence S
    h: u32,           // query heads H
    hkv: u32,         // kv heads Hkv
    kv_stride: u32,   // cache rows per sequence
    pos0: u32,        // position of query 0 (keys 0 .. pos0 are already in the cache)
    scale: f32,       // softmax scale
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;              // [B, S, H, D]
@group(0) @binding(2) var<storage, read> kc: array<KvWord>;          // [B * kv_stride, Hkv, D/2] f16 (or f32) pairs
@group(0) @binding(3) var<storage, read> vc: array<KvWord>;          // [B * kv_stride, Hkv, D/2] f16 (or f32) pairs
@group(0) @binding(4) var<storage, read_write> o: array<f32>;        // [B, S, H, D]
#ifdef LENS
@group(0) @binding(5) var<storage, read> lens: array<u32>;           // [B] valid queries (and new keys)
#endif

var<workgroup> qs: array<vec2<f32>, BQ * DP>;   // scaled query tile [BQ, D]
var<workgroup> kv: array<KvWord, BK * DP>;      // K tile, then V tile [BK, D/2]
var<workgroup> sc: array<f32, BQ * BK>;         // scores [BQ, BK]

// Stage cache rows k0 .. k0+BK of kv head `kvh` (rows >= n are zero; they are masked anyway).
fn load_tile(from_v: bool, row0: u32, k0: u32, n: u32, kvh: u32, tid: u32) {
    for (var e = tid; e < BK * DP; e += WG) {
        let c = e / DP;
        var w = KvWord();
        if (c < n) {
            let at = ((row0 + k0 + c) * p.hkv + kvh) * DP + e % DP;
            if (from_v) { w = vc[at]; } else { w = kc[at]; }
        }
        kv[e] = w;
    }
}

@compute @workgroup_size(WG)
fn attn_prefill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let q0 = wid.x * BQ;
    let hh = wid.y;
    let bb = wid.z;
    let kvh = hh / (p.h / p.hkv);
    let row0 = bb * p.kv_stride;
#ifdef LENS
    let n_valid = min(lens[bb], p.s);
#else
    let n_valid = p.s;
#endif
    var kv_end = p.pos0 + n_valid;                          // keys of this sequence
#ifdef CAUSAL
    kv_end = min(kv_end, p.pos0 + q0 + BQ);                 // skip tiles after the last query
#endif

    for (var e = tid; e < BQ * DP; e += WG) {
        let i = q0 + e / DP;
        var qv = vec2<f32>(0.0);
        if (i < p.s) {
            let at = ((bb * p.s + i) * p.h + hh) * D + 2u * (e % DP);
            qv = vec2<f32>(q[at], q[at + 1u]) * p.scale;
        }
        qs[e] = qv;
    }

    let r = tid / TPR;      // this thread's query row in the tile
    let j = tid % TPR;      // and its lane within the row
    var m = NEG;
    var l = 0.0;
    var acc: array<vec2<f32>, NP>;
    for (var k0 = 0u; k0 < kv_end; k0 += BK) {
        let n = min(BK, kv_end - k0);
        workgroupBarrier();                                 // previous V tile consumed
        load_tile(false, row0, k0, n, kvh, tid);
        workgroupBarrier();
        for (var e = tid; e < BQ * BK; e += WG) {
            let rr = e / BK;
            let c = e % BK;
            var visible = c < n;
#ifdef CAUSAL
            visible = visible && k0 + c <= p.pos0 + q0 + rr;
#endif
            var s = NEG;
            if (visible) {
                s = 0.0;
                for (var w = 0u; w < DP; w++) {
                    s += dot(qs[rr * DP + w], kv_pair(kv[c * DP + w]));
                }
            }
            sc[e] = s;
        }
        workgroupBarrier();
        // Online softmax for row r, computed identically by the TPR threads of the row.
        var tmax = NEG;
        for (var c = 0u; c < BK; c++) { tmax = max(tmax, sc[r * BK + c]); }
        let mn = max(m, tmax);
        let alpha = exp(m - mn);
        var pr: array<f32, BK>;
        var psum = 0.0;
        for (var c = 0u; c < BK; c++) {
            pr[c] = exp(sc[r * BK + c] - mn);
            psum += pr[c];
        }
        l = l * alpha + psum;
        m = mn;
        load_tile(true, row0, k0, n, kvh, tid);             // K reads finished at the barrier above
        workgroupBarrier();
        for (var i = 0u; i < NP; i++) {
            let pi = j + i * TPR;
            if (pi < DP) {
                var a = acc[i] * alpha;
                for (var c = 0u; c < n; c++) { a += pr[c] * kv_pair(kv[c * DP + pi]); }
                acc[i] = a;
            }
        }
    }

    let i = q0 + r;
    if (i < p.s) {
        let base = ((bb * p.s + i) * p.h + hh) * D;
        let pad = i >= n_valid;
        for (var t = 0u; t < NP; t++) {
            let pi = j + t * TPR;
            if (pi < DP) {
                let val = select(acc[t] / l, vec2<f32>(0.0), pad);
                o[base + 2u * pi] = val.x;
                o[base + 2u * pi + 1u] = val.y;
            }
        }
    }
}
#endif

#ifdef DECODE
// Define: D (even head dim, D/2 <= WG).
const DP: u32 = D / 2u;
const G: u32 = WG / DP;     // key groups sharing the V accumulation: threads tid < G*DP own pair tid % DP
#include "reduce.wgsl"

struct Params {
    h: u32,         // query heads H
    hkv: u32,       // kv heads Hkv
    kv_len: u32,    // valid cache rows (>= 1)
    n_split: u32,   // splits dispatched (workgroup y of pass 1)
    chunk: u32,     // keys per split = ceil(kv_len / n_split)
    scale: f32,     // softmax scale
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#ifdef REDUCE
@group(0) @binding(1) var<storage, read> part: array<f32>;           // [H, n_split, D + 2]
@group(0) @binding(2) var<storage, read_write> o: array<f32>;        // [H, D]
#else
@group(0) @binding(1) var<storage, read> q: array<f32>;              // [H, D]
@group(0) @binding(2) var<storage, read> kc: array<u32>;             // [ctx, Hkv, D/2] f16 pairs
@group(0) @binding(3) var<storage, read> vc: array<u32>;             // [ctx, Hkv, D/2] f16 pairs
@group(0) @binding(4) var<storage, read_write> part: array<f32>;     // [H, n_split, D + 2]
#endif

#ifndef REDUCE
var<workgroup> qd: array<vec2<f32>, DP>;     // scaled query [D]
var<workgroup> pk: array<f32, WG>;           // probabilities of the current key tile
var<workgroup> accs: array<vec2<f32>, WG>;   // per-group partial outputs

@compute @workgroup_size(WG)
fn attn_decode(@builtin(workgroup_id) wid: vec3<u32>, lane: Lane) {
    let tid = lane.tid;
    let hh = wid.x;
    let split = wid.y;
    let kvh = hh / (p.h / p.hkv);
    let k_begin = min(split * p.chunk, p.kv_len);
    let k_end = min(k_begin + p.chunk, p.kv_len);
    for (var e = tid; e < DP; e += WG) {
        qd[e] = vec2<f32>(q[hh * D + 2u * e], q[hh * D + 2u * e + 1u]) * p.scale;
    }
    workgroupBarrier();
    let pi = tid % DP;
    let grp = tid / DP;
    var m = NEG;
    var l = 0.0;
    var acc = vec2<f32>(0.0);
    for (var k0 = k_begin; k0 < k_end; k0 += WG) {
        let key = k0 + tid;
        var s = NEG;
        if (key < k_end) {
            s = 0.0;
            let at = (key * p.hkv + kvh) * DP;
            for (var w = 0u; w < DP; w++) { s += dot(qd[w], f16x2(kc[at + w])); }
        }
        let mn = max(m, wg_max(s, lane));
        let alpha = exp(m - mn);
        let pv = select(0.0, exp(s - mn), key < k_end);
        l = l * alpha + wg_sum(pv, lane);
        m = mn;
        pk[tid] = pv;
        workgroupBarrier();
        acc *= alpha;
        if (grp < G) {
            let n = min(WG, k_end - k0);
            for (var c = grp; c < n; c += G) {
                acc += pk[c] * f16x2(vc[((k0 + c) * p.hkv + kvh) * DP + pi]);
            }
        }
        workgroupBarrier();
    }
    accs[tid] = acc;
    workgroupBarrier();
    let base = (hh * p.n_split + split) * (D + 2u);
    if (tid < DP) {
        var total = vec2<f32>(0.0);
        for (var g = 0u; g < G; g++) { total += accs[g * DP + tid]; }
        part[base + 2u + 2u * tid] = total.x;
        part[base + 3u + 2u * tid] = total.y;
    }
    if (tid == 0u) {
        part[base] = m;
        part[base + 1u] = l;
    }
}
#else
@compute @workgroup_size(WG)
fn attn_decode_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let hh = wid.x;
    let row = D + 2u;
    let first = hh * p.n_split * row;
    var mx = NEG;
    for (var s = 0u; s < p.n_split; s++) { mx = max(mx, part[first + s * row]); }
    var total = 0.0;
    for (var s = 0u; s < p.n_split; s++) {
        total += part[first + s * row + 1u] * exp(part[first + s * row] - mx);
    }
    for (var d = tid; d < D; d += WG) {
        var a = 0.0;
        for (var s = 0u; s < p.n_split; s++) {
            a += part[first + s * row + 2u + d] * exp(part[first + s * row] - mx);
        }
        o[hh * D + d] = a / total;
    }
}
#endif
#endif
