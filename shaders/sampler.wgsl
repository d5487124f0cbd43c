// Sampling on the device over one logits row, in ONE workgroup, with exactly the semantics of
// `sampling::decide` (src/sampling.rs, the CPU twin): penalties read from a token history,
// temperature, top-k (ties at the boundary kept), top-p (τ = the largest value whose upper set
// holds ≥ p of the kept mass; ties kept), and a draw in id order with a counter-based uniform
// u = uniform(seed, pos[slot]) (`rng::uniform_bits`); slot is 0 except in a batch (one sampler per sequence).
//   sample:    pass A: penalised logits (written to scores[] when a penalty is on), max, argmax,
//              min, count of the max and Σ exp((l − max)/T) (online). Top-k: radix select on counts.
//              Top-p: radix select on masses. Both select over an order-preserving u32 key of l,
//              16 buckets (4 bits) per pass, ≤ 8 passes, and stop early once the boundary bucket
//              holds one element. The common peaked case (the max alone holds ≥ p of the mass)
//              needs no select pass. Draw: each thread owns a contiguous id chunk, a monotone
//              two-level scan of the chunk masses, and the one thread whose range holds u·Σ
//              rescans its chunk. No pass at all after pass A when one token is kept.
//   greedy:    pass A only: argmax of the penalised logits (lowest id among equal maxima).
//   hist_init: hist[V] = SEEN for prompt ids, SEEN | count for generated ids.
// Both sampling entries end the same way: ids[slot] = token, toks[pos[slot] % len(toks)] = token,
// hist[token] = SEEN | count + 1, dbg[0..16] (see DBG_* in src/ops/sampler.rs), and with
// p.advance, pos[slot] += 1, so a recorded decode step replays with no host write.
// Masses are f32: q_i = exp((l_i − l_max) · inv_t) (q_max = 1), sums per thread then in a fixed
// order across the workgroup (deterministic on a given device). Every long f32 sum is cascaded
// (blocks of CASC terms summed apart, then the block sums), so its rounding grows with
// ~2·CASC + n/CASC² terms instead of n: a thread's 4096 masses at V = 2^20 with 256 threads
// round like 130 terms, and the result does not depend on the workgroup size beyond that. Ordering and ties are decided on
// the u32 keys of the penalised logits, so they are exact; only mass comparisons round.

const NB: u32 = 16u;                 // buckets per select pass
const NONE: u32 = 0xffffffffu;
const SEEN: u32 = 0x80000000u;       // hist: the token is in the prompt or the generated text
const ROWS32: u32 = 64u;             // partial rows per round of wg_sum32 (64 × 32 values)
const GS: u32 = WG / 32u;            // draw scan: 32 groups of GS threads
const CASC: u32 = 64u;               // terms per cascade block (see Casc)
// Loops over the row take UNROLL elements per iteration: Mesa's llvmpipe (lavapipe) before 23.x
// stops every loop of an invocation once their iterations reach 65535 in total, which one
// thread's passes over a 2^20 row with 256 threads (18 passes of 4096 at most) would exceed.
const UNROLL: u32 = 4u;

struct Params {
    n: u32,          // V, the row length
    skip: u32,       // element offset of the row inside the logits binding
    top_k: u32,      // 0 or ≥ V: off
    advance: u32,    // 1: pos[0] += 1 after sampling
    inv_t: f32,      // 1 / temperature
    top_p: f32,      // ≥ 1: off
    rep: f32,        // repetition penalty r: a seen token's negative logit × r
    inv_rep: f32,    // 1 / r: a seen token's positive logit × 1/r
    presence: f32,   // subtracted once from a generated token
    frequency: f32,  // subtracted per occurrence in the generated tokens
    seed_lo: u32,
    seed_hi: u32,
    penalize: u32,   // 1: read hist (and keep the penalised row in scores)
    n_prompt: u32,   // hist_init: the first n_prompt ids are the prompt
    n_ids: u32,      // hist_init: prompt + generated ids
    slot: u32,       // the row of ids and pos this sampler owns (a batch's sequence; 0 alone)
}

@group(0) @binding(0) var<uniform> p: Params;

#ifdef HIST_INIT
@group(0) @binding(1) var<storage, read_write> hist_a: array<atomic<u32>>;  // [V]
@group(0) @binding(2) var<storage, read> hist_ids: array<u32>;              // [n_ids] (≥ 1)

@compute @workgroup_size(WG)
fn hist_init(@builtin(local_invocation_index) tid: u32) {
    for (var i = tid; i < p.n; i += WG) { atomicStore(&hist_a[i], 0u); }
    storageBarrier();
    for (var j = tid; j < p.n_ids; j += WG) {
        let t = hist_ids[j];
        if (t < p.n) {
            if (j >= p.n_prompt) { atomicAdd(&hist_a[t], 1u); }
            atomicOr(&hist_a[t], SEEN);
        }
    }
}
#else

@group(0) @binding(1) var<storage, read> logits: array<f32>;        // [skip + V]
@group(0) @binding(2) var<storage, read_write> hist: array<u32>;    // [V]: SEEN | count in generated
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;  // [V] scratch: penalised logits
@group(0) @binding(4) var<storage, read_write> ids: array<u32>;     // [> slot]: ids[slot] = token
@group(0) @binding(5) var<storage, read_write> pos: array<u32>;     // [> slot]: pos[slot] = RNG counter
@group(0) @binding(6) var<storage, read_write> toks: array<u32>;    // [cap]: toks[pos[slot] % cap] = token
@group(0) @binding(7) var<storage, read_write> dbg: array<u32>;     // [16]: decision details

struct Lane {
    @builtin(local_invocation_index) tid: u32,
#ifdef SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
#endif
}

var<workgroup> rows: array<u32, 2048>;    // reduction partials (f32 stored as bits)
var<workgroup> res: array<f32, 32>;       // wg_sum32 result
var<workgroup> res_a: PassA;              // pass A result
var<workgroup> nrows_sh: u32;             // partial rows: subgroups (or WG without them)
var<workgroup> scan: array<f32, WG>;      // draw: per-thread chunk mass → local inclusive prefix
var<workgroup> goff: array<f32, 33>;      // draw: exclusive prefix of the 32 group sums, total
var<workgroup> pick: atomic<u32>;         // draw: the chosen id

// A cascaded f32 sum: terms add into a block, every CASC terms the block into a super-block, every
// CASC² terms the super-block into the total. Order fixed by the caller; `scale` multiplies every
// level (online softmax rescaling).
struct Casc {
    t: f32,
    s: f32,
    b: f32,
    n: u32,
}

fn casc_add(c: ptr<function, Casc>, v: f32) {
    (*c).b += v;
    (*c).n += 1u;
    if ((*c).n % CASC == 0u) {
        (*c).s += (*c).b;
        (*c).b = 0.0;
        if ((*c).n % (CASC * CASC) == 0u) {
            (*c).t += (*c).s;
            (*c).s = 0.0;
        }
    }
}

fn casc_scale(c: ptr<function, Casc>, f: f32) {
    (*c).t *= f;
    (*c).s *= f;
    (*c).b *= f;
}

fn casc_value(c: Casc) -> f32 {
    return c.t + (c.s + c.b);
}

// Order-preserving key of a float (−0 and +0 are one value): a < b ⇔ key(a) < key(b).
fn key_of(x: f32) -> u32 {
    let b = select(bitcast<u32>(x), 0u, x == 0.0);
    return select(b | SEEN, ~b, (b & SEEN) != 0u);
}

fn val_of(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & ~SEEN, (k & SEEN) != 0u));
}

// Number of partial rows a reduction combines: one per subgroup, or one per thread. Call once.
fn partial_rows(lane: Lane) -> u32 {
#ifdef SUBGROUPS
    if (lane.tid == 0u) { nrows_sh = lane.sg_count; }
#else
    if (lane.tid == 0u) { nrows_sh = WG; }
#endif
    return workgroupUniformLoad(&nrows_sh);
}

// Workgroup sums of 32 per-thread values; every thread gets them. Fixed order: within each
// subgroup (subgroupAdd), then partial rows in ascending order. 2 barriers per 64 rows, + 1.
fn wg_sum32(v: array<f32, 32>, lane: Lane, nrows: u32) -> array<f32, 32> {
    var s = v;
#ifdef SUBGROUPS
    for (var j = 0u; j < 32u; j++) { s[j] = subgroupAdd(v[j]); }
    let leader = lane.sg_lane == 0u;
    let row = lane.sg_id;
#else
    let leader = true;
    let row = lane.tid;
#endif
    var acc = 0.0;
    for (var r0 = 0u; r0 < nrows; r0 += ROWS32) {
        workgroupBarrier();
        if (leader && row >= r0 && row < r0 + ROWS32) {
            for (var j = 0u; j < 32u; j++) { rows[(row - r0) * 32u + j] = bitcast<u32>(s[j]); }
        }
        workgroupBarrier();
        if (lane.tid < 32u) {
            let m = min(ROWS32, nrows - r0);
            var part = 0.0;   // this round's rows apart, then into the total (a 2-level cascade)
            for (var r = 0u; r < m; r++) { part += bitcast<f32>(rows[r * 32u + lane.tid]); }
            acc += part;
        }
    }
    // Every reader of the previous result has passed the first barrier above: none needed here.
    if (lane.tid < 32u) { res[lane.tid] = acc; }
    return workgroupUniformLoad(&res);
}

// Logit i after the penalties (HF repetition penalty on seen tokens, then OpenAI presence and
// frequency penalties on generated ones).
fn penalised(i: u32) -> f32 {
    var l = logits[p.skip + i];
    if (p.penalize != 0u) {
        let h = hist[i];
        if ((h & SEEN) != 0u) { l = select(l * p.rep, l * p.inv_rep, l > 0.0); }
        let c = h & ~SEEN;
        if (c > 0u) { l = l - (p.frequency * f32(c) + p.presence); }
    }
    return l;
}

// The penalised logit after pass A.
fn score(i: u32) -> f32 {
    if (p.penalize != 0u) { return scores[i]; }
    return logits[p.skip + i];
}

fn mass(l: f32, lmax: f32) -> f32 {
    return exp((l - lmax) * p.inv_t);
}

// Counter-based uniform bits (`rng::uniform_bits`): 24 bits of a hash of (seed, counter).
fn hash32(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

fn uniform_bits(counter: u32) -> u32 {
    let a = hash32(p.seed_lo ^ 0x9e3779b9u);
    let b = hash32(p.seed_hi ^ 0x85ebca6bu);
    return hash32(hash32(counter ^ a) ^ b) >> 8u;
}

struct PassA {
    max_key: u32,
    min_key: u32,
    arg: u32,        // lowest id holding the max
    count_max: f32,  // elements equal to the max
    sum: f32,        // Σ exp((l − max)/T) over the row (with_sum only)
}

// s · exp((v − m)/T), 0 for an empty partial (s = 0; v may then be NaN), s where v = m (also
// both −∞: a row that starts with masked logits).
fn rescale(s: f32, v: f32, m: f32) -> f32 {
    return select(select(s * mass(v, m), s, v == m), 0.0, s == 0.0);
}

// Merge partial b into a: the larger max (lower id on ties), the smaller min, the sum rescaled
// to the new max (online softmax), the count of the new max.
fn merge(a: PassA, b: PassA) -> PassA {
    var r = a;
    if (b.max_key > a.max_key || (b.max_key == a.max_key && b.arg < a.arg)) { r = b; }
    r.min_key = min(a.min_key, b.min_key);
    let m = val_of(r.max_key);
    r.sum = rescale(a.sum, val_of(a.max_key), m) + rescale(b.sum, val_of(b.max_key), m);
    r.count_max = select(0.0, a.count_max, a.max_key == r.max_key) + select(0.0, b.count_max, b.max_key == r.max_key);
    return r;
}

// Pass A over the row, reduced in one round: subgroup partials (or one per thread) merged in
// ascending row order by thread 0.
// One thread's pass A state: max key, min key, argmax, max logit, Σ mass (online), count of max.
struct PaState {
    mk: u32,
    mn: u32,
    mi: u32,
    ml: f32,
    cs: Casc,
    c: f32,
}

// Element i (skipped when ≥ V) into a thread's pass A state.
fn pa_step(a: ptr<function, PaState>, i: u32, with_sum: bool) {
    if (i >= p.n) { return; }
    let l = penalised(i);
    if (p.penalize != 0u) { scores[i] = l; }
    let k = key_of(l);
    (*a).mn = min((*a).mn, k);
    var cs = (*a).cs;
    if ((*a).mi == NONE || k > (*a).mk) {
        if (with_sum && (*a).mi != NONE) { casc_scale(&cs, mass((*a).ml, l)); }
        casc_add(&cs, 1.0);
        (*a).c = 1.0;
        (*a).mk = k;
        (*a).mi = i;
        (*a).ml = l;
    } else {
        // l == ml: mass 1, also where both are −∞ (exp(NaN) otherwise).
        if (with_sum) { casc_add(&cs, select(mass(l, (*a).ml), 1.0, l == (*a).ml)); }
        if (k == (*a).mk) { (*a).c += 1.0; }
    }
    (*a).cs = cs;
}

fn pass_a(with_sum: bool, lane: Lane, nrows: u32) -> PassA {
    var st = PaState(0u, NONE, NONE, 0.0, Casc(0.0, 0.0, 0.0, 0u), 0.0);
    // Elements tid, tid + WG, ... in order, UNROLL per iteration.
    for (var i = lane.tid; i < p.n; i += UNROLL * WG) {
        pa_step(&st, i, with_sum);
        pa_step(&st, i + WG, with_sum);
        pa_step(&st, i + 2u * WG, with_sum);
        pa_step(&st, i + 3u * WG, with_sum);
    }
    let mk = st.mk;
    let mn = st.mn;
    let mi = st.mi;
    let ml = st.ml;
    let c = st.c;
    var s = casc_value(st.cs);
    if (!with_sum) { s = 0.0; }
    if (p.penalize != 0u) { storageBarrier(); }
#ifdef SUBGROUPS
    let sk = subgroupMax(mk);
    let top = mi != NONE && mk == sk;
    let part = PassA(
        sk,
        subgroupMin(mn),
        subgroupMin(select(NONE, mi, top)),
        subgroupAdd(select(0.0, c, top)),
        subgroupAdd(rescale(s, ml, val_of(sk))));
    let leader = lane.sg_lane == 0u;
    let row = lane.sg_id;
#else
    let part = PassA(mk, mn, mi, select(0.0, c, mi != NONE), s);
    let leader = true;
    let row = lane.tid;
#endif
    var acc = PassA(0u, NONE, NONE, 0.0, 0.0);
    for (var r0 = 0u; r0 < nrows; r0 += 256u) {
        workgroupBarrier();
        if (leader && row >= r0 && row < r0 + 256u) {
            let o = (row - r0) * 8u;
            rows[o] = part.max_key;
            rows[o + 1u] = part.min_key;
            rows[o + 2u] = part.arg;
            rows[o + 3u] = bitcast<u32>(part.count_max);
            rows[o + 4u] = bitcast<u32>(part.sum);
        }
        workgroupBarrier();
        if (lane.tid == 0u) {
            // Blocks of 16 rows merged apart, then into the total (a cascaded sum).
            var blk = PassA(0u, NONE, NONE, 0.0, 0.0);
            let m = min(256u, nrows - r0);
            for (var r = 0u; r < m; r++) {
                let o = r * 8u;
                blk = merge(blk, PassA(rows[o], rows[o + 1u], rows[o + 2u], bitcast<f32>(rows[o + 3u]), bitcast<f32>(rows[o + 4u])));
                if (r % 16u == 15u || r + 1u == m) {
                    acc = merge(acc, blk);
                    blk = PassA(0u, NONE, NONE, 0.0, 0.0);
                }
            }
        }
    }
    if (lane.tid == 0u) { res_a = acc; }
    return workgroupUniformLoad(&res_a);
}

// Element i (skipped when ≥ V) into a radix pass's histogram: count in h[16 + b], mass in hb[b].
fn rx_step(h: ptr<function, array<f32, 32>>, hb: ptr<function, array<f32, 16>>, i: u32, lo: u32, hi: u32, w: u32, with_mass: bool, lmax: f32) {
    if (i >= p.n) { return; }
    let l = score(i);
    let k = key_of(l);
    if (k >= lo && k <= hi) {
        let b = (k - lo) / w;
        (*h)[NB + b] += 1.0;
        if (with_mass) { (*hb)[b] += mass(l, lmax); }
    }
}

struct Sel {
    key: u32,     // the kept set is {key ≥ this} (within the caller's interval)
    count: f32,   // its size
    passes: u32,  // select passes run
    total: f32,   // mass mode: Σ q over the initial interval (0 when no pass ran)
}

// Radix select over the keys in [lo0, hi0] (hi0 = the max key): the largest key t such that
// W(t) = Σ_{t ≤ key_i ≤ hi0} w_i ≥ goal, with w_i = 1 (count mode; goal = goal0) or
// w_i = q_i (mass mode; goal = frac × Σ over [lo0, hi0], measured in the first pass).
// count0 = elements in [lo0, hi0]. Each pass splits [lo, hi] into 16 equal key ranges.
fn radix(lo0: u32, hi0: u32, with_mass: bool, goal0: f32, frac: f32, count0: f32, lmax: f32, lane: Lane, nrows: u32) -> Sel {
    var lo = lo0;
    var hi = hi0;
    var above = 0.0;     // weight of keys in (hi, hi0]
    var above_n = 0.0;   // count of keys in (hi, hi0]
    var inside_n = count0;
    var goal = goal0;
    var passes = 0u;
    var total = 0.0;
    loop {
        if (lo == hi) { break; }
        let w = (hi - lo) / NB + 1u;
        var h: array<f32, 32>;   // [0, 16): mass per bucket, [16, 32): count per bucket (exact)
        var hs: array<f32, 16>;  // masses of the current super-block and block (cascade, as Casc)
        var hb: array<f32, 16>;
        var it = 0u;
        for (var i = lane.tid; i < p.n; i += UNROLL * WG) {
            rx_step(&h, &hb, i, lo, hi, w, with_mass, lmax);
            rx_step(&h, &hb, i + WG, lo, hi, w, with_mass, lmax);
            rx_step(&h, &hb, i + 2u * WG, lo, hi, w, with_mass, lmax);
            rx_step(&h, &hb, i + 3u * WG, lo, hi, w, with_mass, lmax);
            it += UNROLL;
            if (with_mass && it % CASC == 0u) {
                for (var j = 0u; j < NB; j++) { hs[j] += hb[j]; hb[j] = 0.0; }
                if (it % (CASC * CASC) == 0u) {
                    for (var j = 0u; j < NB; j++) { h[j] += hs[j]; hs[j] = 0.0; }
                }
            }
        }
        if (with_mass) {
            for (var j = 0u; j < NB; j++) { h[j] += hs[j] + hb[j]; }
        }
        let t = wg_sum32(h, lane, nrows);
        passes++;
        if (with_mass && passes == 1u) {
            var s = 0.0;
            for (var b = 0u; b < NB; b++) { s += t[b]; }
            total = s;
            goal = frac * s;
        }
        // The highest bucket b whose upper set (with everything above hi) reaches the goal.
        var cum = above;
        var cum_n = above_n;
        var chosen = NONE;
        var low_cum = above;     // fallback (rounding): the lowest non-empty bucket
        var low_n = above_n;
        var low_b = NONE;
        for (var j = 0u; j < NB; j++) {
            let b = NB - 1u - j;
            let wb = select(t[NB + b], t[b], with_mass);
            if (t[NB + b] > 0.0) {
                low_b = b;
                low_cum = cum;
                low_n = cum_n;
            }
            if (cum + wb >= goal && t[NB + b] > 0.0) {
                chosen = b;
                break;
            }
            cum += wb;
            cum_n += t[NB + b];
        }
        if (chosen == NONE) {
            chosen = low_b;
            cum = low_cum;
            cum_n = low_n;
        }
        above = cum;
        above_n = cum_n;
        inside_n = t[NB + chosen];
        let nlo = lo + chosen * w;
        hi = nlo + min(hi - nlo, w - 1u);
        lo = nlo;
        if (inside_n == 1.0) { break; }
    }
    return Sel(lo, above_n + inside_n, passes, total);
}

// A thread's running kept mass over its chunk: blocks of CASC terms summed apart, then added.
struct Run {
    sum: f32,
    blk: f32,
    n: u32,
}

// Element i (skipped when ≥ end) into the running mass when kept; returns its mass, −1 if not kept.
// The block is flushed before the next term, so sum + blk after a term is the same value in the
// first pass and in the rescan.
fn run_step(r: ptr<function, Run>, i: u32, end: u32, tau: u32, lmax: f32) -> f32 {
    if (i >= end) { return -1.0; }
    let l = score(i);
    if (key_of(l) < tau) { return -1.0; }
    if ((*r).n > 0u && (*r).n % CASC == 0u) {
        (*r).sum += (*r).blk;
        (*r).blk = 0.0;
    }
    let q = mass(l, lmax);
    (*r).blk += q;
    (*r).n += 1u;
    return q;
}

// The rescan's step: until j is found, element i into the running mass; j = i once the mass
// passes rem; last = the last kept id of positive mass.
fn pick_step(r: ptr<function, Run>, j: ptr<function, u32>, last: ptr<function, u32>, i: u32, end: u32, tau: u32, lmax: f32, rem: f32) {
    if (*j != NONE) { return; }
    let q = run_step(r, i, end, tau, lmax);
    if (q > 0.0) { *last = i; }
    if (q >= 0.0 && (*r).sum + (*r).blk > rem) { *j = i; }
}

// The smallest id j with Σ_{i ≤ j, key_i ≥ tau} q_i > u · Σ_{key_i ≥ tau} q_i; also returns the
// kept mass (f32 bits) in .y.
fn draw(tau: u32, lmax: f32, u: f32, lane: Lane) -> vec2<u32> {
    let tid = lane.tid;
    let chunk = (p.n + WG - 1u) / WG;
    let s0 = min(tid * chunk, p.n);
    let s1 = min(s0 + chunk, p.n);
    // The chunk's kept mass in blocks of CASC terms (a 2-level cascade); the rescan below
    // repeats exactly these additions.
    var o = Run(0.0, 0.0, 0u);
    for (var i = s0; i < s1; i += UNROLL) {
        run_step(&o, i, s1, tau, lmax);
        run_step(&o, i + 1u, s1, tau, lmax);
        run_step(&o, i + 2u, s1, tau, lmax);
        run_step(&o, i + 3u, s1, tau, lmax);
    }
    let own = o.sum + o.blk;
    workgroupBarrier();
    scan[tid] = own;
    if (tid == 0u) { atomicStore(&pick, NONE); }
    workgroupBarrier();
    // Two-level scan, sequential at each level, so the prefix is monotone and the ranges
    // [excl, incl) of consecutive threads tile [0, total) exactly.
    if (tid < 32u) {
        var a = 0.0;
        for (var j = 0u; j < GS; j++) {
            a += scan[tid * GS + j];
            scan[tid * GS + j] = a;
        }
        goff[tid] = a;
    }
    workgroupBarrier();
    if (tid == 0u) {
        var a = 0.0;
        for (var g = 0u; g < 32u; g++) {
            let x = goff[g];
            goff[g] = a;
            a += x;
        }
        goff[32] = a;
    }
    workgroupBarrier();
    let total = goff[32];
    let incl = goff[tid / GS] + scan[tid];
    var excl = 0.0;
    if (tid > 0u) { excl = goff[(tid - 1u) / GS] + scan[tid - 1u]; }
    let goal = u * total;
    let mine = (excl <= goal && goal < incl) || (goal >= total && excl < total && incl >= total);
    if (mine) {
        // The chunk's own running sum against the goal's remainder: a running sum started at
        // excl (up to the whole kept mass) would round every term at the total's scale.
        let rem = goal - excl;
        var r = Run(0.0, 0.0, 0u);
        var j = NONE;
        var last = NONE;
        for (var i = s0; i < s1 && j == NONE; i += UNROLL) {
            pick_step(&r, &j, &last, i, s1, tau, lmax, rem);
            pick_step(&r, &j, &last, i + 1u, s1, tau, lmax, rem);
            pick_step(&r, &j, &last, i + 2u, s1, tau, lmax, rem);
            pick_step(&r, &j, &last, i + 3u, s1, tau, lmax, rem);
        }
        atomicMin(&pick, select(j, last, j == NONE));
    }
    workgroupBarrier();
    return vec2<u32>(atomicLoad(&pick), bitcast<u32>(total));
}

// Thread 0: the outputs every sampling entry writes.
fn finish(tok: u32, counter: u32) {
    ids[p.slot] = tok;
    toks[counter % arrayLength(&toks)] = tok;
    let h = hist[tok];
    hist[tok] = select((h | SEEN) + 1u, h, (h & ~SEEN) == ~SEEN);
    if (p.advance != 0u) { pos[p.slot] = counter + 1u; }
    dbg[0] = tok;
}

#ifdef GREEDY
@compute @workgroup_size(WG)
fn greedy(lane: Lane) {
    let a = pass_a(false, lane, partial_rows(lane));
    if (lane.tid == 0u) {
        let counter = pos[p.slot];
        finish(a.arg, counter);
        dbg[1] = 1u;
        dbg[2] = a.max_key;
        dbg[3] = a.max_key;
        dbg[4] = 1u;
        dbg[5] = a.max_key;
        dbg[6] = 0u;
        dbg[7] = 0u;
        dbg[8] = 0u;
        dbg[9] = 0u;
        dbg[10] = 0u;
        dbg[11] = 1u;
        dbg[12] = u32(a.count_max);
        dbg[13] = a.arg;
    }
}
#endif

#ifdef SAMPLE
@compute @workgroup_size(WG)
fn sample(lane: Lane) {
    let counter = pos[p.slot];
    let nrows = partial_rows(lane);
    let a = pass_a(true, lane, nrows);
    let lmax = val_of(a.max_key);
    var flags = 0u;
    var passes = 0u;
    // Top-k: K = {key ≥ kappa}.
    var kappa = a.min_key;
    var k_count = f32(p.n);
    if (p.top_k > 0u && p.top_k < p.n) {
        if (a.count_max >= f32(p.top_k)) {
            kappa = a.max_key;
            k_count = a.count_max;
        } else {
            let s = radix(a.min_key, a.max_key, false, f32(p.top_k), 0.0, f32(p.n), lmax, lane, nrows);
            kappa = s.key;
            k_count = s.count;
            passes += s.passes;
        }
    }
    // Top-p over K: kept = {key ≥ tau}.
    var tau = kappa;
    var kept = k_count;
    var k_mass = 0.0;
    if (p.top_p < 1.0 && kappa != a.max_key) {
        let k_off = p.top_k == 0u || p.top_k >= p.n;
        if (k_off && a.count_max >= p.top_p * a.sum) {
            tau = a.max_key;
            kept = a.count_max;
            k_mass = a.sum;
            flags |= 2u;
        } else {
            let s = radix(kappa, a.max_key, true, 0.0, max(p.top_p, 0.0), k_count, lmax, lane, nrows);
            tau = s.key;
            kept = s.count;
            k_mass = s.total;
            passes += s.passes;
        }
    }
    // Draw.
    let bits = uniform_bits(counter);
    var tok = a.arg;
    var kept_mass = a.count_max;
    if (kept == 1.0) {
        flags |= 4u;
    } else {
        let d = draw(tau, lmax, f32(bits) * (1.0 / 16777216.0), lane);
        tok = d.x;
        kept_mass = bitcast<f32>(d.y);
        passes += 1u;
    }
    if (lane.tid == 0u) {
        finish(tok, counter);
        dbg[1] = u32(kept);
        dbg[2] = tau;
        dbg[3] = kappa;
        dbg[4] = u32(k_count);
        dbg[5] = a.max_key;
        dbg[6] = bits;
        dbg[7] = passes;
        dbg[8] = bitcast<u32>(a.sum);
        dbg[9] = bitcast<u32>(k_mass);
        dbg[10] = bitcast<u32>(kept_mass);
        dbg[11] = flags;
        dbg[12] = u32(a.count_max);
        dbg[13] = a.arg;
    }
}
#endif
#endif
