// Causal attention of one sequence over a paged KV cache in any format of kv.wgsl (f16, q8, q4, K
// optionally Hadamard-rotated), dequantized inside the kernels (never a dequantized copy). The cache
// is a list of arenas (one binding each); the host records one dispatch per arena. Math is f32;
// query head h reads kv head h / (H / Hkv); the softmax scale is folded into q. pos[0] = tokens in
// the cache before this pass (read on the GPU, so a recorded pass replays at any position).
//   attn_paged_prefill : (PREFILL) one dispatch per arena, in arena order. Workgroup (BQ query rows,
//                        head); query i sits at position pos0 + i and sees keys <= pos0 + i. The
//                        online-softmax state is carried across dispatches (arenas, and ranges of
//                        k_lo .. k_hi keys within one: see ops::attention_paged): the unnormalised output in
//                        `o` and (max, sum) in `ml`; the first arena starts it (flags bit 0), the
//                        last normalises it (bit 1). K/V tiles of BK keys are dequantized into
//                        workgroup memory.
//   attn_paged_decode  : (DECODE) flash-decoding pass 1 for one token (kv_len = pos[0] + 1), one
//                        dispatch per arena. Workgroup (head group, split) over this arena's keys;
//                        LK lanes per key row, each reading NR words of it (coalesced along the row);
//                        NG = WG / LK key groups with their own online softmax, merged at the end;
//                        writes the split's (max, sum, o[D]) to part [H, total_splits, D + 2] at
//                        split_base + split. Splits with no keys (beyond kv_len, or an arena not yet
//                        reached) write the neutral partial (-1e30, 0, 0).
//   attn_paged_reduce  : (DECODE, REDUCE) one workgroup per head merges all total_splits partials.
#include "kv.wgsl"

const WG: u32 = 128u;
const NEG: f32 = -1.0e30;
const DP: u32 = D / 2u;

#ifdef PREFILL
const TPR: u32 = WG / BQ;                    // threads per query row
const NP: u32 = (DP + TPR - 1u) / TPR;       // output pairs per thread

struct Params {
    s: u32,          // queries T
    h: u32,          // query heads H
    hkv: u32,        // kv heads Hkv
    q_stride: u32,   // elements between consecutive tokens' q rows
    row0: u32,       // global position of this arena's first row
    rows: u32,       // rows of this arena
    flags: u32,      // bit 0: first dispatch (start the state), bit 1: last dispatch (normalise)
    scale: f32,      // softmax scale
    k_lo: u32,       // this dispatch's keys: arena rows k_lo .. k_hi
    k_hi: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;              // [T, q_stride], head h at h * D
@group(0) @binding(2) var<storage, read> kc: array<u32>;             // K arena (kv.wgsl layout)
@group(0) @binding(3) var<storage, read> vc: array<u32>;             // V arena
@group(0) @binding(4) var<storage, read> pos: array<u32>;            // [1]: pos[0] = pos0
@group(0) @binding(5) var<storage, read_write> o: array<f32>;        // [T, H, D]: state, then the output
@group(0) @binding(6) var<storage, read_write> ml: array<f32>;       // [T, H, 2]: running (max, sum)

var<workgroup> qs: array<vec2<f32>, BQ * DP>;   // scaled (and rotated) query tile [BQ, D]
var<workgroup> kv: array<vec2<f32>, BK * DP>;   // dequantized K tile, then V tile [BK, D]
var<workgroup> sc: array<f32, BQ * BK>;         // scores [BQ, BK]

// Dequantize arena rows k0 .. k0 + n (n <= BK) of kv head `kvh` into the tile (rows >= n: zero).
fn load_tile(from_v: bool, k0: u32, n: u32, kvh: u32, tid: u32) {
    for (var e = tid; e < BK * WPR; e += WG) {
        let c = e / WPR;
        let w = e % WPR;
        var word = 0u;
        var sm = vec2<f32>(0.0);
        if (c < n) {
            let at = kv_word0(k0 + c, kvh, p.hkv) + w;
#ifndef FMT_F16
            let sa = kv_scale0(k0 + c, kvh, p.hkv, p.rows) + w * EPW / GS;
            if (from_v) { sm = unpack2x16float(vc[sa]); } else { sm = unpack2x16float(kc[sa]); }
#endif
            if (from_v) { word = vc[at]; } else { word = kc[at]; }
        }
        for (var i = 0u; i < EPW; i += 2u) {
            var pr = vec2<f32>(0.0);
            if (c < n) { pr = vec2<f32>(kv_elem(word, sm, i), kv_elem(word, sm, i + 1u)); }
            kv[c * DP + (w * EPW + i) / 2u] = pr;
        }
    }
}

@compute @workgroup_size(WG)
fn attn_paged_prefill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let q0 = wid.x * BQ;
    let hh = wid.y;
    let kvh = hh / (p.h / p.hkv);
    let pos0 = pos[0];
    // Keys this tile may see, in global positions, then in this arena's rows.
    let kv_end = pos0 + min(q0 + BQ, p.s);
    let k_stop = min(min(max(kv_end, p.row0) - p.row0, p.rows), p.k_hi);

    for (var e = tid; e < BQ * DP; e += WG) {
        let i = q0 + e / DP;
        var qv = vec2<f32>(0.0);
        if (i < p.s) {
            let at = i * p.q_stride + hh * D + 2u * (e % DP);
            qv = vec2<f32>(q[at], q[at + 1u]) * p.scale;
        }
        qs[e] = qv;
    }
#ifdef KROT
    workgroupBarrier();
    for (var e = tid; e < BQ * (D / GS); e += WG) {
        let b = e * (GS / 2u);
        var x: array<f32, 32>;
        for (var i = 0u; i < 16u; i++) { x[2u * i] = qs[b + i].x; x[2u * i + 1u] = qs[b + i].y; }
        hadamard32(&x);
        for (var i = 0u; i < 16u; i++) { qs[b + i] = vec2<f32>(x[2u * i], x[2u * i + 1u]); }
    }
#endif

    let r = tid / TPR;      // this thread's query row in the tile
    let j = tid % TPR;      // and its lane within the row
    let i_row = q0 + r;
    let live = i_row < p.s;
    var m = NEG;
    var l = 0.0;
    var acc: array<vec2<f32>, NP>;
    if (live && (p.flags & 1u) == 0u) {
        let at = (i_row * p.h + hh) * 2u;
        m = ml[at];
        l = ml[at + 1u];
        for (var t = 0u; t < NP; t++) {
            let pi = j + t * TPR;
            if (pi < DP) {
                let ob = (i_row * p.h + hh) * D + 2u * pi;
                acc[t] = vec2<f32>(o[ob], o[ob + 1u]);
            }
        }
    }
    for (var k0 = p.k_lo; k0 < k_stop; k0 += BK) {
        let n = min(BK, k_stop - k0);
        workgroupBarrier();                                 // previous V tile (and q rotation) done
        load_tile(false, k0, n, kvh, tid);
        workgroupBarrier();
        for (var e = tid; e < BQ * BK; e += WG) {
            let rr = e / BK;
            let c = e % BK;
            let visible = c < n && p.row0 + k0 + c <= pos0 + q0 + rr;
            var s = NEG;
            if (visible) {
                s = 0.0;
                for (var w = 0u; w < DP; w++) { s += dot(qs[rr * DP + w], kv[c * DP + w]); }
            }
            sc[e] = s;
        }
        workgroupBarrier();
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
        workgroupBarrier();                                 // scores read, K tile no longer needed
        load_tile(true, k0, n, kvh, tid);
        workgroupBarrier();
        for (var t = 0u; t < NP; t++) {
            let pi = j + t * TPR;
            if (pi < DP) {
                var a = acc[t] * alpha;
                for (var c = 0u; c < n; c++) { a += pr[c] * kv[c * DP + pi]; }
                acc[t] = a;
            }
        }
    }

    if (live) {
        let base = (i_row * p.h + hh) * D;
        let is_last = (p.flags & 2u) != 0u;
        for (var t = 0u; t < NP; t++) {
            let pi = j + t * TPR;
            if (pi < DP) {
                var val = acc[t];
                if (is_last) { val = val / l; }
                o[base + 2u * pi] = val.x;
                o[base + 2u * pi + 1u] = val.y;
            }
        }
        if (j == 0u && !is_last) {
            ml[(i_row * p.h + hh) * 2u] = m;
            ml[(i_row * p.h + hh) * 2u + 1u] = l;
        }
    }
}
#endif

#ifdef DECODE
struct Params {
    h: u32,             // query heads H
    hkv: u32,           // kv heads Hkv
    row0: u32,          // global position of this arena's first row
    rows: u32,          // rows of this arena
    n_split: u32,       // splits dispatched for this arena (workgroup y)
    split_base: u32,    // this arena's first split in `part`
    total_splits: u32,  // splits of all arenas (part's middle dimension)
    min_keys: u32,      // fewest keys per used split (a multiple of the workgroup step)
    scale: f32,         // softmax scale
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

#ifdef REDUCE
@group(0) @binding(1) var<storage, read> part: array<f32>;           // [H, total_splits, D + 2]
@group(0) @binding(2) var<storage, read_write> o: array<f32>;        // [H, D]

@compute @workgroup_size(WG)
fn attn_paged_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let hh = wid.x;
    let row = D + 2u;
    let first = hh * p.total_splits * row;
    var mx = NEG;
    for (var s = 0u; s < p.total_splits; s++) { mx = max(mx, part[first + s * row]); }
    var total = 0.0;
    for (var s = 0u; s < p.total_splits; s++) {
        total += part[first + s * row + 1u] * exp(part[first + s * row] - mx);
    }
    for (var d = tid; d < D; d += WG) {
        var a = 0.0;
        for (var s = 0u; s < p.total_splits; s++) {
            a += part[first + s * row + 2u + d] * exp(part[first + s * row] - mx);
        }
        o[hh * D + d] = a / total;
    }
}
#else
// Defines: GQ (query heads per workgroup), LK (lanes per key row, power of two), NR (words per lane
// per row = ceil(WPR / LK)), U (keys per group per step), SG_DOT (lane sums by subgroup shuffles).
const NG: u32 = WG / LK;          // key groups
const KB: u32 = NG * U;           // keys per workgroup step
const NS: u32 = U * GQ;           // scores per lane per step
const NQ: u32 = NR * EPW;         // dims per lane per head
const SHM: u32 = max(WG * NS, 2u * NG * GQ + WG * EPW);

@group(0) @binding(1) var<storage, read> q: array<f32>;              // [H, D] (a qkv row works: Q heads first)
@group(0) @binding(2) var<storage, read> kc: array<u32>;             // K arena (kv.wgsl layout)
@group(0) @binding(3) var<storage, read> vc: array<u32>;             // V arena
@group(0) @binding(4) var<storage, read> pos: array<u32>;            // [1]: pos[0] = kv_len - 1
@group(0) @binding(5) var<storage, read_write> part: array<f32>;     // [H, total_splits, D + 2]

var<workgroup> shm: array<f32, SHM>;
var<workgroup> qsh: array<f32, GQ * D>;

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

fn sum_shared(sc: ptr<function, array<f32, NS>>, lin: u32) {
    workgroupBarrier();
    for (var i = 0u; i < NS; i++) { shm[lin * NS + i] = (*sc)[i]; }
    workgroupBarrier();
    let g0 = lin / LK * LK;
    for (var i = 0u; i < NS; i++) {
        var t = 0.0;
        for (var j = 0u; j < LK; j++) { t += shm[(g0 + j) * NS + i]; }
        (*sc)[i] = t;
    }
}

#ifdef SUBGROUPS
#ifdef SG_DOT
fn lane_index(ln: DecLane) -> u32 { return ln.sg_id * ln.sg_size + ln.sg_lane; }
fn lane_sum(sc: ptr<function, array<f32, NS>>, lin: u32) {
    for (var off = LK / 2u; off > 0u; off >>= 1u) {
        for (var i = 0u; i < NS; i++) { (*sc)[i] += subgroupShuffleXor((*sc)[i], off); }
    }
}
#else
fn lane_index(ln: DecLane) -> u32 { return ln.tid; }
fn lane_sum(sc: ptr<function, array<f32, NS>>, lin: u32) { sum_shared(sc, lin); }
#endif
#else
fn lane_index(ln: DecLane) -> u32 { return ln.tid; }
fn lane_sum(sc: ptr<function, array<f32, NS>>, lin: u32) { sum_shared(sc, lin); }
#endif

// Scale word of word `w` of a row (f16: unused).
fn scale_of(from_v: bool, row: u32, kvh: u32, w: u32) -> vec2<f32> {
#ifdef FMT_F16
    return vec2<f32>(0.0);
#else
    let sa = kv_scale0(row, kvh, p.hkv, p.rows) + w * EPW / GS;
    if (from_v) { return unpack2x16float(vc[sa]); }
    return unpack2x16float(kc[sa]);
#endif
}

@compute @workgroup_size(WG)
fn attn_paged_decode(@builtin(workgroup_id) wid: vec3<u32>, ln: DecLane) {
    let h0 = wid.x * GQ;
    let split = wid.y;
    let kvh = h0 / (p.h / p.hkv);
    let kv_len = pos[0] + 1u;
    let len = min(max(kv_len, p.row0) - p.row0, p.rows);    // keys in this arena
    let n = clamp((len + p.min_keys - 1u) / p.min_keys, 1u, p.n_split);
    let per = (len + n - 1u) / n;
    let chunk = (per + KB - 1u) / KB * KB;
    let k_begin = min(split * chunk, len);
    let k_end = select(min(k_begin + chunk, len), k_begin, split >= n);
    let lin = lane_index(ln);
    let tid = ln.tid;
    let grp = lin / LK;
    let j = lin % LK;

    // Scaled (and rotated) q of the GQ heads in workgroup memory, then this lane's dims.
    for (var e = tid; e < GQ * D; e += WG) { qsh[e] = q[h0 * D + e] * p.scale; }
#ifdef KROT
    workgroupBarrier();
    for (var e = tid; e < GQ * D / GS; e += WG) {
        var x: array<f32, 32>;
        for (var i = 0u; i < 32u; i++) { x[i] = qsh[e * GS + i]; }
        hadamard32(&x);
        for (var i = 0u; i < 32u; i++) { qsh[e * GS + i] = x[i]; }
    }
#endif
    workgroupBarrier();
    var qv: array<f32, GQ * NQ>;
    for (var g = 0u; g < GQ; g++) {
        for (var r = 0u; r < NR; r++) {
            let w = j + r * LK;
            for (var i = 0u; i < EPW; i++) {
                if (w < WPR) { qv[(g * NR + r) * EPW + i] = qsh[g * D + w * EPW + i]; }
            }
        }
    }
    var acc: array<f32, GQ * NQ>;
    var m: array<f32, GQ>;
    var l: array<f32, GQ>;
    for (var g = 0u; g < GQ; g++) { m[g] = NEG; }

    for (var k0 = k_begin; k0 < k_end; k0 += KB) {
        var kw: array<u32, U * NR>;
        var vw: array<u32, U * NR>;
        var ks: array<vec2<f32>, U * NR>;
        var vs: array<vec2<f32>, U * NR>;
        for (var u = 0u; u < U; u++) {
            let key = k0 + u * NG + grp;
            if (key < k_end) {
                let row = kv_word0(key, kvh, p.hkv);
                for (var r = 0u; r < NR; r++) {
                    let w = j + r * LK;
                    if (w < WPR) {
                        kw[u * NR + r] = kc[row + w];
                        vw[u * NR + r] = vc[row + w];
                        ks[u * NR + r] = scale_of(false, key, kvh, w);
                        vs[u * NR + r] = scale_of(true, key, kvh, w);
                    }
                }
            }
        }
        var sc: array<f32, NS>;
        for (var u = 0u; u < U; u++) {
            for (var g = 0u; g < GQ; g++) {
                var s = 0.0;
                for (var r = 0u; r < NR; r++) {
                    for (var i = 0u; i < EPW; i++) {
                        s += qv[(g * NR + r) * EPW + i] * kv_elem(kw[u * NR + r], ks[u * NR + r], i);
                    }
                }
                sc[u * GQ + g] = s;
            }
        }
        lane_sum(&sc, lin);
        for (var g = 0u; g < GQ; g++) {
            var mx = m[g];
            for (var u = 0u; u < U; u++) {
                if (k0 + u * NG + grp < k_end) { mx = max(mx, sc[u * GQ + g]); }
            }
            let alpha = exp(m[g] - mx);
            m[g] = mx;
            for (var e = 0u; e < NQ; e++) { acc[g * NQ + e] *= alpha; }
            var ps = 0.0;
            for (var u = 0u; u < U; u++) {
                let pu = select(0.0, exp(sc[u * GQ + g] - mx), k0 + u * NG + grp < k_end);
                ps += pu;
                for (var r = 0u; r < NR; r++) {
                    for (var i = 0u; i < EPW; i++) {
                        acc[(g * NR + r) * EPW + i] += pu * kv_elem(vw[u * NR + r], vs[u * NR + r], i);
                    }
                }
            }
            l[g] = l[g] * alpha + ps;
        }
    }

    // Merge the NG groups: shm[0 .. NG*GQ] maxima, [NG*GQ .. 2*NG*GQ] sums, then per (head, r) the
    // lanes' EPW dims at [2*NG*GQ ..]. A group that saw no key holds (NEG, 0, 0).
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
        let base = ((h0 + g) * p.total_splits + p.split_base + split) * (D + 2u);
        if (lin == 0u) {
            var total = 0.0;
            for (var k = 0u; k < NG; k++) { total += shm[NG * GQ + k * GQ + g] * exp(shm[k * GQ + g] - mx); }
            part[base] = mx;
            part[base + 1u] = total;
        }
        for (var r = 0u; r < NR; r++) {
            workgroupBarrier();
            for (var i = 0u; i < EPW; i++) { shm[ob + lin * EPW + i] = acc[(g * NR + r) * EPW + i] * f; }
            workgroupBarrier();
            // Dims of slot r: words r*LK .. r*LK + LK, i.e. dims r*LK*EPW + t for t < LK*EPW.
            let dim = r * LK * EPW + tid;
            if (tid < LK * EPW && dim < D) {
                let jj = tid / EPW;
                let ii = tid % EPW;
                var t = 0.0;
                for (var k = 0u; k < NG; k++) { t += shm[ob + (k * LK + jj) * EPW + ii]; }
                part[base + 2u + dim] = t;
            }
        }
    }
}
#endif
#endif
