// Attention over an f16 KV cache. Layout (see ARCHITECTURE.md, "KV cache layout", and the addressing
// helper in kv_cache.wgsl): per layer, K and V are each one buffer [ctx, Hkv, D] of f16 packed two per
// u32, i.e. [ctx, Hkv, D/2] words, token-major, the heads of one position contiguous. Batched prefill
// uses [B * kv_stride, Hkv, D/2]: sequence b's keys are rows b*kv_stride ... Math is f32; query head h
// reads kv head h / (H / Hkv) (GQA). Softmax scale (1/sqrt(D)) is a parameter, folded into q when it
// is loaded. The position comes from a buffer, pos[0] = tokens already in the cache before this pass,
// so a recorded pass is replayed at any position by rewriting pos[0] only (no parameter rewrite).
//   kv_write           : k, v [T, Hkv, D] f32 -> cache rows pos0 .. pos0+T (round to f16). One thread per word.
//                        (pos0 is still a parameter here; `rope_kv_write` in rope.wgsl is the fused successor.)
//   attn_prefill       : o[B, S, H, D] = softmax(q kᵀ · scale + mask) v, flash-style: one workgroup per
//                        (BQ query rows, head, batch); K then V tiles of BK keys staged in workgroup
//                        memory; running max and sum per row (online softmax). Query i sits at position
//                        pos0 + i (pos0 = pos[0]); sequence b has keys 0 .. pos0 + n_b with n_b = S (or
//                        lens[b] with LENS). q of token t, head h is read at q[t * q_stride + h * D], so q
//                        may be the Q part of fused qkv rows. CAUSAL: query i also sees only keys <= pos0 + i,
//                        and KV tiles past the tile's last query are skipped. LENS: query rows i >= lens[b]
//                        are padding and output zeros.
//   attn_decode        : flash-decoding pass 1 for one token of each of B sequences (workgroup z = b):
//                        sequence b's query row is q[b * q_stride ..], its keys are cache rows
//                        b * max_ctx + (0 .. kv_len) with kv_len = pos[b] + 1 (B = 1: a session's cache;
//                        B > 1: the slots of a batch, `engine::batch`). Workgroup (head group, split) serves the GQ query heads of one kv head, so K/V are read once for them.
//                        Lanes run along the head dim (LK lanes per key row, VW words per load: coalesced),
//                        NG = WG / LK key groups each keep their own online softmax over U keys per step,
//                        and the per-lane dot products are summed over the LK lanes (subgroupShuffleXor, or
//                        workgroup memory without subgroups). The groups merge in workgroup memory and
//                        write the split's partial (max, sum, unnormalised o[D]) to part [B, H, n_split, D + 2].
//                        n_split is fixed when recording; the splits used, n = clamp(ceil(kv_len /
//                        min_keys), 1, n_split), and their key ranges are computed here from kv_len.
//   attn_decode_reduce : pass 2. One workgroup per (head, sequence) merges the n partials into o [B, H, D].
#include "common.wgsl"
#include "kv_cache.wgsl"

const WG: u32 = 128u;
const NEG: f32 = -1.0e30;   // "minus infinity" for masked scores: exp(NEG - m) == 0 for any real m

#ifdef KV_WRITE
struct Params {
    t: u32,       // tokens T
    hkv: u32,     // kv heads Hkv
    dp: u32,      // u32 words per head row = D / 2
    pos0: u32,    // cache row of the first token
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
    let words = p.hkv * p.dp;
    if (i >= p.t * words) { return; }
    let c = i % words;
    let dst = kv_row_word(p.pos0 + i / words, c / p.dp, p.hkv, p.dp) + c % p.dp;
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
    q_stride: u32,    // elements between the q rows of consecutive tokens (H * D, or (H + 2Hkv) * D in qkv)
    scale: f32,       // softmax scale
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;              // [B, S, q_stride], head h at h * D
@group(0) @binding(2) var<storage, read> kc: array<KvWord>;          // [B * kv_stride, Hkv, D/2] f16 (or f32) pairs
@group(0) @binding(3) var<storage, read> vc: array<KvWord>;          // [B * kv_stride, Hkv, D/2] f16 (or f32) pairs
@group(0) @binding(4) var<storage, read> pos: array<u32>;            // [1]: pos[0] = pos0, keys already cached
@group(0) @binding(5) var<storage, read_write> o: array<f32>;        // [B, S, H, D]
#ifdef LENS
@group(0) @binding(6) var<storage, read> lens: array<u32>;           // [B] valid queries (and new keys)
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
            let at = kv_row_word(row0 + k0 + c, kvh, p.hkv, DP) + e % DP;
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
    let pos0 = pos[0];
    var kv_end = min(pos0 + n_valid, p.kv_stride);          // keys of this sequence (never past its rows)
#ifdef CAUSAL
    kv_end = min(kv_end, pos0 + q0 + BQ);                   // skip tiles after the last query
#endif

    for (var e = tid; e < BQ * DP; e += WG) {
        let i = q0 + e / DP;
        var qv = vec2<f32>(0.0);
        if (i < p.s) {
            let at = (bb * p.s + i) * p.q_stride + hh * D + 2u * (e % DP);
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
            visible = visible && k0 + c <= pos0 + q0 + rr;
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
// Defines: D (even head dim). Pass 1 also: GQ (query heads per workgroup, dividing H / Hkv), VW (u32
// words per vector load: 4 with KV_VEC4, 2 with KV_VEC2, else 1), LK (lanes per key row, a power of
// two <= 8), NR (loads per lane per row = ceil(D / 2 / VW / LK)), U (keys per group per step) and,
// only where every subgroup has at least LK lanes, SG_DOT (lane sums by subgroupShuffleXor).
struct Params {
    h: u32,          // query heads H
    hkv: u32,        // kv heads Hkv
    max_ctx: u32,    // cache rows bound; kv_len = min(pos[0] + 1, max_ctx)
    n_split: u32,    // splits dispatched (workgroup y of pass 1)
    min_keys: u32,   // fewest keys per used split (a multiple of the workgroup step)
    scale: f32,      // softmax scale
    q_stride: u32,   // f32 elements between the query rows of the batch's sequences
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Splits used for kv_len keys.
fn splits_used(kv_len: u32) -> u32 {
    return clamp((kv_len + p.min_keys - 1u) / p.min_keys, 1u, p.n_split);
}

#ifdef REDUCE
@group(0) @binding(1) var<storage, read> pos: array<u32>;            // [B]: pos[b] = kv_len - 1 of sequence b
@group(0) @binding(2) var<storage, read> part: array<f32>;           // [B, H, n_split, D + 2]
@group(0) @binding(3) var<storage, read_write> o: array<f32>;        // [B, H, D]

@compute @workgroup_size(WG)
fn attn_decode_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let hh = wid.y * p.h + wid.x;                 // (sequence, head)
    let n = splits_used(min(pos[wid.y] + 1u, p.max_ctx));
    let row = D + 2u;
    let first = hh * p.n_split * row;
    var mx = NEG;
    for (var s = 0u; s < n; s++) { mx = max(mx, part[first + s * row]); }
    var total = 0.0;
    for (var s = 0u; s < n; s++) {
        total += part[first + s * row + 1u] * exp(part[first + s * row] - mx);
    }
    for (var d = tid; d < D; d += WG) {
        var a = 0.0;
        for (var s = 0u; s < n; s++) {
            a += part[first + s * row + 2u + d] * exp(part[first + s * row] - mx);
        }
        o[hh * D + d] = a / total;
    }
}
#else
const DP: u32 = D / 2u;           // u32 words per head row
const NV: u32 = DP / VW;          // vector loads per head row
const NG: u32 = WG / LK;          // key groups per workgroup
const KB: u32 = NG * U;           // keys per workgroup step
const NS: u32 = U * GQ;           // scores per lane per step
const NS4: u32 = (NS + 3u) / 4u;  // ... packed in vec4s
const NA: u32 = GQ * NR * VW;     // query pairs (and output pairs) per lane
const CH: u32 = LK * 2u * VW;     // output dims per (head, load slot) merge chunk
const SHM: u32 = max(WG * NS, 2u * NG * GQ + WG * 2u * VW);

#ifdef KV_VEC4
alias KvVec = vec4<u32>;
fn kv_word(v: KvVec, i: u32) -> u32 { return v[i]; }
#else
#ifdef KV_VEC2
alias KvVec = vec2<u32>;
fn kv_word(v: KvVec, i: u32) -> u32 { return v[i]; }
#else
alias KvVec = u32;
fn kv_word(v: KvVec, i: u32) -> u32 { return v; }
#endif
#endif

@group(0) @binding(1) var<storage, read> q: array<f32>;              // [B, q_stride]: each row's H Q heads first (a qkv row works)
@group(0) @binding(2) var<storage, read> kc: array<KvVec>;           // [B, max_ctx, Hkv, D/2] f16 pairs, VW words per element
@group(0) @binding(3) var<storage, read> vc: array<KvVec>;           // [B, max_ctx, Hkv, D/2] f16 pairs, VW words per element
@group(0) @binding(4) var<storage, read> pos: array<u32>;            // [B]: pos[b] = kv_len - 1 of sequence b
@group(0) @binding(5) var<storage, read_write> part: array<f32>;     // [B, H, n_split, D + 2]: (max, sum, o[D])

var<workgroup> shm: array<f32, SHM>;   // lane sums (no SG_DOT), then the merge of the NG groups

struct DecLane {
    @builtin(local_invocation_index) tid: u32,
#ifdef SUBGROUPS
#ifdef SG_DOT
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
#endif
#endif
}

// Score i (= u * GQ + g) of a packed score array.
fn score(sc: ptr<function, array<vec4<f32>, NS4>>, i: u32) -> f32 {
    return (*sc)[i / 4u][i % 4u];
}

// Sum every score over the LK lanes of each key group through workgroup memory.
fn sum_shared(sc: ptr<function, array<vec4<f32>, NS4>>, lin: u32) {
    workgroupBarrier();                            // the previous step's reads are done
    for (var i = 0u; i < NS; i++) { shm[lin * NS + i] = score(sc, i); }
    workgroupBarrier();
    let g0 = lin / LK * LK;
    for (var i = 0u; i < NS; i++) {
        var t = 0.0;
        for (var j = 0u; j < LK; j++) { t += shm[(g0 + j) * NS + i]; }
        (*sc)[i / 4u][i % 4u] = t;
    }
}

#ifdef SUBGROUPS
#ifdef SG_DOT
// Lanes in subgroup order: each key group's LK lanes are one aligned block of one subgroup.
fn lane_index(ln: DecLane) -> u32 { return ln.sg_id * ln.sg_size + ln.sg_lane; }
// Butterfly over the LK lanes of each group: every lane ends with the group's sums.
fn lane_sum(sc: ptr<function, array<vec4<f32>, NS4>>, lin: u32) {
    for (var off = LK / 2u; off > 0u; off >>= 1u) {
        for (var i = 0u; i < NS4; i++) { (*sc)[i] += subgroupShuffleXor((*sc)[i], off); }
    }
}
#else
fn lane_index(ln: DecLane) -> u32 { return ln.tid; }
fn lane_sum(sc: ptr<function, array<vec4<f32>, NS4>>, lin: u32) { sum_shared(sc, lin); }
#endif
#else
fn lane_index(ln: DecLane) -> u32 { return ln.tid; }
fn lane_sum(sc: ptr<function, array<vec4<f32>, NS4>>, lin: u32) { sum_shared(sc, lin); }
#endif

@compute @workgroup_size(WG)
fn attn_decode(@builtin(workgroup_id) wid: vec3<u32>, ln: DecLane) {
    let h0 = wid.x * GQ;                           // query heads h0 .. h0 + GQ
    let split = wid.y;
    let b = wid.z;                                 // sequence: its query row, cache slot and length
    let kvh = h0 / (p.h / p.hkv);
    let kv_len = min(pos[b] + 1u, p.max_ctx);
    let q0 = b * p.q_stride;
    let slot0 = b * p.max_ctx;
    let n = splits_used(kv_len);
    if (split >= n) { return; }                    // pass 2 reads only the n used splits
    let per = (kv_len + n - 1u) / n;
    let chunk = (per + KB - 1u) / KB * KB;         // whole workgroup steps
    let k_begin = min(split * chunk, kv_len);
    let k_end = min(k_begin + chunk, kv_len);
    let lin = lane_index(ln);
    let grp = lin / LK;                            // key group
    let j = lin % LK;                              // lane within the group: loads j, j + LK, ...

    // This lane's dims of the GQ query heads, scaled: slot r holds vector j + r*LK, i.e. dims
    // 2*VW*(j + r*LK) .. + 2*VW.
    var qv: array<vec2<f32>, NA>;
    for (var g = 0u; g < GQ; g++) {
        for (var r = 0u; r < NR; r++) {
            let vi = j + r * LK;
            for (var w = 0u; w < VW; w++) {
                if (vi < NV) {
                    let at = q0 + (h0 + g) * D + 2u * (vi * VW + w);
                    qv[(g * NR + r) * VW + w] = vec2<f32>(q[at], q[at + 1u]) * p.scale;
                }
            }
        }
    }
    var acc: array<vec2<f32>, NA>;
    var m: array<f32, GQ>;
    var l: array<f32, GQ>;
    for (var g = 0u; g < GQ; g++) { m[g] = NEG; }

    for (var k0 = k_begin; k0 < k_end; k0 += KB) {
        // Issue every load of the step first: U keys (k0 + u*NG + grp), K and V.
        var kw: array<KvVec, U * NR>;
        var vw: array<KvVec, U * NR>;
        for (var u = 0u; u < U; u++) {
            let key = k0 + u * NG + grp;
            if (key < k_end) {
                let row = kv_row_word(slot0 + key, kvh, p.hkv, DP) / VW;
                for (var r = 0u; r < NR; r++) {
                    let vi = j + r * LK;
                    if (vi < NV) {
                        kw[u * NR + r] = kc[row + vi];
                        vw[u * NR + r] = vc[row + vi];
                    }
                }
            }
        }
        // This lane's part of every score, then the sum over the group's lanes.
        var sc: array<vec4<f32>, NS4>;
        for (var u = 0u; u < U; u++) {
            for (var g = 0u; g < GQ; g++) {
                var s = 0.0;
                for (var r = 0u; r < NR; r++) {
                    for (var w = 0u; w < VW; w++) {
                        s += dot(qv[(g * NR + r) * VW + w], f16x2(kv_word(kw[u * NR + r], w)));
                    }
                }
                let i = u * GQ + g;
                sc[i / 4u][i % 4u] = s;
            }
        }
        lane_sum(&sc, lin);
        // Online softmax per head over the U keys; masked keys have p = 0 and V = 0.
        for (var g = 0u; g < GQ; g++) {
            var mx = m[g];
            for (var u = 0u; u < U; u++) {
                if (k0 + u * NG + grp < k_end) { mx = max(mx, score(&sc, u * GQ + g)); }
            }
            let alpha = exp(m[g] - mx);
            m[g] = mx;
            var a: array<vec2<f32>, NR * VW>;
            for (var e = 0u; e < NR * VW; e++) { a[e] = acc[g * NR * VW + e] * alpha; }
            var ps = 0.0;
            for (var u = 0u; u < U; u++) {
                let pu = select(0.0, exp(score(&sc, u * GQ + g) - mx), k0 + u * NG + grp < k_end);
                ps += pu;
                for (var r = 0u; r < NR; r++) {
                    for (var w = 0u; w < VW; w++) {
                        a[r * VW + w] += pu * f16x2(kv_word(vw[u * NR + r], w));
                    }
                }
            }
            for (var e = 0u; e < NR * VW; e++) { acc[g * NR * VW + e] = a[e]; }
            l[g] = l[g] * alpha + ps;
        }
    }

    // Merge the NG groups: shm[0 .. NG*GQ] maxima, [NG*GQ .. 2*NG*GQ] sums, then one chunk of CH
    // output dims per (head, slot) at [2*NG*GQ ..]. A group that saw no key has (NEG, 0, 0).
    workgroupBarrier();
    if (j == 0u) {
        for (var g = 0u; g < GQ; g++) {
            shm[grp * GQ + g] = m[g];
            shm[NG * GQ + grp * GQ + g] = l[g];
        }
    }
    workgroupBarrier();
    let ob = 2u * NG * GQ;
    for (var g = 0u; g < GQ; g++) {
        var mx = NEG;
        for (var k = 0u; k < NG; k++) { mx = max(mx, shm[k * GQ + g]); }
        let f = exp(m[g] - mx);
        let base = ((b * p.h + h0 + g) * p.n_split + split) * (D + 2u);
        if (lin == 0u) {
            var total = 0.0;
            for (var k = 0u; k < NG; k++) { total += shm[NG * GQ + k * GQ + g] * exp(shm[k * GQ + g] - mx); }
            part[base] = mx;
            part[base + 1u] = total;
        }
        for (var r = 0u; r < NR; r++) {
            workgroupBarrier();                    // the previous chunk (and the maxima above) are read
            for (var w = 0u; w < VW; w++) {
                let a = acc[(g * NR + r) * VW + w] * f;
                shm[ob + lin * 2u * VW + 2u * w] = a.x;
                shm[ob + lin * 2u * VW + 2u * w + 1u] = a.y;
            }
            workgroupBarrier();
            let dim = r * CH + lin;
            if (lin < CH && dim < D) {
                var t = 0.0;
                for (var k = 0u; k < NG; k++) { t += shm[ob + k * CH + lin]; }
                part[base + 2u + dim] = t;
            }
        }
    }
}
#endif
#endif
