// Decode GEMV for T = 1..4 token rows: y[T, N] (+)= x[T, K] · W[N, K]ᵀ, x and y f32, with fusions:
//   NORM  RMSNorm prologue: y = r · W·(x ⊙ g), r = 1/sqrt(mean(x²) + eps) per token. Every workgroup
//         sums x² of its token rows itself while it reads them (no separate RMSNorm dispatch).
//   BIAS  + bias[n] (after NORM, before SILU).   ACC  + the existing y (the residual stream).
//   SILU  rows interleaved gate/up (row 2i = gate_i, row 2i+1 = up_i): y[t, i] = silu(gate)·up, [T, N/2].
// Weights, one row chunk per dispatch (rows row0 .. row0+rows of the weight, `tensor::Weight`/`QWeight`):
//   W_F32 / W_F16 / W_BF16: w [rows, row_words] u32, one f32 or two packed 16-bit values per word.
//   Q4 (GPTQ int4): w [rows, K/8] u32, nibble j of word r = q[row, 8r + j] (0..15); sz [rows, G] u32,
//         f16 scale in the low half, zero (1..16) in bits 16..; W = s·(q − zero). GIDX: g_idx [K] u32,
//         the group of each k (act-order); otherwise g = k / gs.
//
// Work split: a workgroup owns ROWS consecutive rows and every token. Its WG threads stride over K in
// units of VW u32 words (one 16-byte load per row for VW = 4): unit j of every row is loaded by thread
// j % WG, so a subgroup's loads are contiguous. A thread reads the activations of its unit once (all
// tokens; NORM squares and scales them there) and reuses them from registers for its ROWS rows. The
// partial sums are reduced once at the end: subgroupAdd and one pass through workgroup memory, or a
// shared-memory tree without subgroups (or with SG_TREE: subgroups narrower than 4).
//
// Registers: tokens are vector lanes (TV = f32, vec2, vec3, vec4 for T = 1..4: one FMA serves every
// token); rows are named private registers unrolled by hand (R2 adds row 1, R4 rows 2-3, R8 rows 4-7),
// because naga emits loops a driver may not unroll and arrays indexed in loops may spill.
//
// Int4 without an integer→float conversion: with m_j = 0xF << 4j and E_j the bits of 2^(23−4j),
// bitcast<f32>((w & m_j) | E_j) = 2^(23−4j) + q exactly, for nibbles j = 0..3 of w and of w >> 16.
// Subtracting c_j = 2^(23−4j) + zero (exact: zero ≤ 16) leaves q − zero exactly, so the zero point
// costs nothing per weight (one logic op, one subtract, one FMA per token), cheaper than folding it
// as zero·Σx per group, and exact. With sequential groups a unit never straddles a group (the host
// picks VW with gs % (8·VW) == 0): the scale multiplies the unit's partial sum once per (row, unit),
// and each row's sz record is read once per unit (it stays in L1 for the group's other units).
//
// Host defines: WG (threads), RED_LEN (workgroup reduction slots), binding numbers B_Y, B_SZ, B_BIAS,
// B_NORM, B_GIDX; flags: W_F32 | W_F16 | W_BF16 | Q4 (+ GIDX); VEC2 (VW ≥ 2), VEC4 (VW = 4); XS (dense
// only, VW = 1: activations read as scalars with a bound check, for K not a multiple of 4 or odd
// rows); TOK2/TOK3/TOK4 (T ≥ 2, 3, 4); R2/R4/R8; BIAS, ACC, NORM, SILU; SG_TREE.
#include "common.wgsl"

#ifdef TOK4
alias TV = vec4<f32>;
const TOKENS: u32 = 4u;
#else
#ifdef TOK3
alias TV = vec3<f32>;
const TOKENS: u32 = 3u;
#else
#ifdef TOK2
alias TV = vec2<f32>;
const TOKENS: u32 = 2u;
#else
alias TV = f32;
const TOKENS: u32 = 1u;
#endif
#endif
#endif

#ifdef R8
const ROWS: u32 = 8u;
#else
#ifdef R4
const ROWS: u32 = 4u;
#else
#ifdef R2
const ROWS: u32 = 2u;
#else
const ROWS: u32 = 1u;
#endif
#endif
#endif

#ifdef VEC4
alias WV = vec4<u32>;
const VW: u32 = 4u;
#else
#ifdef VEC2
alias WV = vec2<u32>;
const VW: u32 = 2u;
#else
alias WV = u32;
const VW: u32 = 1u;
#endif
#endif

#ifdef Q4
const PER_WORD: u32 = 8u;
#else
#ifdef W_F32
const PER_WORD: u32 = 1u;
#else
const PER_WORD: u32 = 2u;
#endif
#endif
const KU: u32 = VW * PER_WORD;   // k per unit

#ifdef NORM
const NP: u32 = ROWS + 1u;       // reduced slots: the row sums, then Σx²
#else
const NP: u32 = ROWS;
#endif

struct Params {
    k: u32,          // inner dimension K
    row_words: u32,  // u32 words per weight row (Q4: K / 8)
    row0: u32,       // first weight row of this chunk
    rows: u32,       // rows in this chunk
    x_off: u32,      // first element of x (a row offset times K)
    y_stride: u32,   // row stride of y: N, or N / 2 with SILU
    groups: u32,     // Q4: groups per row G (row stride of sz)
    gs: u32,         // Q4: group size (sequential groups)
    eps: f32,        // NORM: RMSNorm epsilon
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#ifdef XS
@group(0) @binding(1) var<storage, read> x: array<f32>;                // [x_off / K + T, K]
#else
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;          // [x_off / K + T, K / 4]
#endif
@group(0) @binding(2) var<storage, read> w: array<WV>;                 // [rows, row_words / VW]
#ifdef Q4
@group(0) @binding(B_SZ) var<storage, read> sz: array<u32>;            // [rows, G]
#endif
@group(0) @binding(B_Y) var<storage, read_write> y: array<f32>;        // [T, y_stride]
#ifdef BIAS
@group(0) @binding(B_BIAS) var<storage, read> bias: array<f32>;        // [N]
#endif
#ifdef NORM
#ifdef XS
@group(0) @binding(B_NORM) var<storage, read> g: array<f32>;           // [K]
#else
@group(0) @binding(B_NORM) var<storage, read> g: array<vec4<f32>>;     // [K / 4]
#endif
#endif
#ifdef GIDX
@group(0) @binding(B_GIDX) var<storage, read> g_idx: array<vec4<u32>>; // [K / 4]
#endif

struct Lane {
    @builtin(local_invocation_index) tid: u32,
#ifdef SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
#endif
}

var<workgroup> red: array<TV, RED_LEN>;   // per-subgroup partials [sg, NP], or the tree [WG]
var<workgroup> tot: array<TV, 9>;         // the NP reduced slots

// Per-invocation registers of the ROWS rows: chunk-local row (clamped into the chunk), the unit of
// weights just loaded, the accumulator; Q4 sequential: the unit's partial sum, scale and c_j + zero.
var<private> rr0: u32; var<private> rr1: u32; var<private> rr2: u32; var<private> rr3: u32;
var<private> rr4: u32; var<private> rr5: u32; var<private> rr6: u32; var<private> rr7: u32;
var<private> q0: WV; var<private> q1: WV; var<private> q2: WV; var<private> q3: WV;
var<private> q4: WV; var<private> q5: WV; var<private> q6: WV; var<private> q7: WV;
var<private> a0: TV; var<private> a1: TV; var<private> a2: TV; var<private> a3: TV;
var<private> a4: TV; var<private> a5: TV; var<private> a6: TV; var<private> a7: TV;
var<private> ss: TV;   // NORM: Σx² of this thread's activations, per token

// ---- tokens as vector lanes ----------------------------------------------------------------

// (a, b, c, d) for tokens 0..3, truncated to TOKENS lanes.
fn tv(a: f32, b: f32, c: f32, d: f32) -> TV {
#ifdef TOK4
    return vec4<f32>(a, b, c, d);
#else
#ifdef TOK3
    return vec3<f32>(a, b, c);
#else
#ifdef TOK2
    return vec2<f32>(a, b);
#else
    return a;
#endif
#endif
#endif
}

// Lane t (token t) of v.
fn lane_of(v: TV, t: u32) -> f32 {
#ifdef TOK2
    return v[t];
#else
    return v;
#endif
}

// Word i of a unit.
fn wd(q: WV, i: u32) -> u32 {
#ifdef VEC2
    return q[i];
#else
    return q;
#endif
}

// ---- activations -----------------------------------------------------------------------------

// Activations k .. k+3 of every token.
struct X4 { k0: TV, k1: TV, k2: TV, k3: TV }

#ifdef XS
// Activation k of every token; 0 beyond K (the padding half of an odd 16-bit row). NORM: Σx² and ⊙ g.
fn x1(k: u32) -> TV {
    if (k >= p.k) { return TV(0.0); }
    let i = p.x_off + k;
    var a = x[i];
    var b = 0.0;
    var c = 0.0;
    var d = 0.0;
#ifdef TOK2
    b = x[i + p.k];
#endif
#ifdef TOK3
    c = x[i + 2u * p.k];
#endif
#ifdef TOK4
    d = x[i + 3u * p.k];
#endif
    var r = tv(a, b, c, d);
#ifdef NORM
    ss += r * r;
    r *= g[k];
#endif
    return r;
}
#else
// k a multiple of 4. NORM: Σx² and ⊙ g.
fn x4(k: u32) -> X4 {
    let i = (p.x_off + k) / 4u;
    let kq = p.k / 4u;
    let v0 = x[i];
    var v1 = vec4<f32>(0.0);
    var v2 = vec4<f32>(0.0);
    var v3 = vec4<f32>(0.0);
#ifdef TOK2
    v1 = x[i + kq];
#endif
#ifdef TOK3
    v2 = x[i + 2u * kq];
#endif
#ifdef TOK4
    v3 = x[i + 3u * kq];
#endif
    var r = X4(tv(v0.x, v1.x, v2.x, v3.x), tv(v0.y, v1.y, v2.y, v3.y), tv(v0.z, v1.z, v2.z, v3.z),
               tv(v0.w, v1.w, v2.w, v3.w));
#ifdef NORM
    ss += r.k0 * r.k0 + r.k1 * r.k1 + r.k2 * r.k2 + r.k3 * r.k3;
    let gv = g[k / 4u];
    r = X4(r.k0 * gv.x, r.k1 * gv.y, r.k2 * gv.z, r.k3 * gv.w);
#endif
    return r;
}
#endif

// ---- rows ------------------------------------------------------------------------------------

fn set_rows(r0: u32) {
    let last = p.rows - 1u;
    rr0 = min(r0, last);
    rr1 = min(r0 + 1u, last);
    rr2 = min(r0 + 2u, last);
    rr3 = min(r0 + 3u, last);
    rr4 = min(r0 + 4u, last);
    rr5 = min(r0 + 5u, last);
    rr6 = min(r0 + 6u, last);
    rr7 = min(r0 + 7u, last);
}

// Unit j of every row (the loads are issued before any arithmetic uses them).
fn load_rows(j: u32) {
    let u = p.row_words / VW;
    q0 = w[rr0 * u + j];
#ifdef R2
    q1 = w[rr1 * u + j];
#endif
#ifdef R4
    q2 = w[rr2 * u + j];
    q3 = w[rr3 * u + j];
#endif
#ifdef R8
    q4 = w[rr4 * u + j];
    q5 = w[rr5 * u + j];
    q6 = w[rr6 * u + j];
    q7 = w[rr7 * u + j];
#endif
}

// ---- dense -----------------------------------------------------------------------------------
#ifndef Q4
#ifdef XS
// One word against activations k (x0) and, for 16-bit words, k + 1 (x1).
fn dot_xs(q: u32, xa: TV, xb: TV) -> TV {
#ifdef W_F32
    return bitcast<f32>(q) * xa;
#else
    let v = unpack_w2(q);
    return v.x * xa + v.y * xb;
#endif
}

// Unit j = word j (VW = 1).
fn step(j: u32) {
    load_rows(j);
#ifdef W_F32
    let xa = x1(j);
    let xb = xa;
#else
    let xa = x1(2u * j);
    let xb = x1(2u * j + 1u);
#endif
    a0 += dot_xs(q0, xa, xb);
#ifdef R2
    a1 += dot_xs(q1, xa, xb);
#endif
#ifdef R4
    a2 += dot_xs(q2, xa, xb);
    a3 += dot_xs(q3, xa, xb);
#endif
#ifdef R8
    a4 += dot_xs(q4, xa, xb);
    a5 += dot_xs(q5, xa, xb);
    a6 += dot_xs(q6, xa, xb);
    a7 += dot_xs(q7, xa, xb);
#endif
}
#else
#ifdef W_F32
// A unit of four f32 weights (VW = 4) against k .. k+3.
fn dot_unit(q: WV, xa: X4, xb: X4) -> TV {
    let v = bitcast<vec4<f32>>(q);
    return v.x * xa.k0 + v.y * xa.k1 + v.z * xa.k2 + v.w * xa.k3;
}
#else
// Two words of 16-bit weights against k .. k+3.
fn dot16(a: u32, b: u32, xs: X4) -> TV {
    let u = unpack_w2(a);
    let v = unpack_w2(b);
    return u.x * xs.k0 + u.y * xs.k1 + v.x * xs.k2 + v.y * xs.k3;
}

// A unit of 16-bit weights: 8 (VW = 4, xa then xb) or 4 (VW = 2) values.
fn dot_unit(q: WV, xa: X4, xb: X4) -> TV {
#ifdef VEC4
    return dot16(q.x, q.y, xa) + dot16(q.z, q.w, xb);
#else
    return dot16(q.x, q.y, xa);
#endif
}
#endif

fn step(j: u32) {
    load_rows(j);
    let e = j * KU;
    let xa = x4(e);
#ifndef W_F32
#ifdef VEC4
    let xb = x4(e + 4u);
#else
    let xb = xa;
#endif
#else
    let xb = xa;
#endif
    a0 += dot_unit(q0, xa, xb);
#ifdef R2
    a1 += dot_unit(q1, xa, xb);
#endif
#ifdef R4
    a2 += dot_unit(q2, xa, xb);
    a3 += dot_unit(q3, xa, xb);
#endif
#ifdef R8
    a4 += dot_unit(q4, xa, xb);
    a5 += dot_unit(q5, xa, xb);
    a6 += dot_unit(q6, xa, xb);
    a7 += dot_unit(q7, xa, xb);
#endif
}
#endif
#endif

// ---- int4 ------------------------------------------------------------------------------------
#ifdef Q4
const QMASK = vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u);
// The bits of 2^23, 2^19, 2^15, 2^11: nibble j of the low half then has weight 1.
const QEXP = vec4<u32>(0x4B000000u, 0x49000000u, 0x47000000u, 0x45000000u);
const QBASE = vec4<f32>(8388608.0, 524288.0, 32768.0, 2048.0);

// 2^(23−4j) + q_j for the four nibbles in the low 16 bits of h, exact.
fn nib4(h: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>((vec4<u32>(h) & QMASK) | QEXP);
}

// Σ_j (q_j − zero)·x_j over the 8 nibbles of word q (k .. k+7); c = QBASE + zero.
fn dot_word(q: u32, c: vec4<f32>, xa: X4, xb: X4) -> TV {
    let lo = nib4(q) - c;
    let hi = nib4(q >> 16u) - c;
    return lo.x * xa.k0 + lo.y * xa.k1 + lo.z * xa.k2 + lo.w * xa.k3
         + hi.x * xb.k0 + hi.y * xb.k1 + hi.z * xb.k2 + hi.w * xb.k3;
}

#ifndef GIDX
var<private> pa0: TV; var<private> pa1: TV; var<private> pa2: TV; var<private> pa3: TV;
var<private> pa4: TV; var<private> pa5: TV; var<private> pa6: TV; var<private> pa7: TV;
var<private> s0: f32; var<private> s1: f32; var<private> s2: f32; var<private> s3: f32;
var<private> s4: f32; var<private> s5: f32; var<private> s6: f32; var<private> s7: f32;
var<private> c0: vec4<f32>; var<private> c1: vec4<f32>; var<private> c2: vec4<f32>; var<private> c3: vec4<f32>;
var<private> c4: vec4<f32>; var<private> c5: vec4<f32>; var<private> c6: vec4<f32>; var<private> c7: vec4<f32>;

// Scale of record r; c = QBASE + zero through `zero_c`.
fn scale_of(r: u32) -> f32 { return unpack2x16float(r).x; }
fn zero_c(r: u32) -> vec4<f32> { return QBASE + f32(r >> 16u); }

// The (row, group) records of every row: one sz load per row and unit.
fn load_groups(grp: u32) {
    let r0v = sz[rr0 * p.groups + grp];
    s0 = scale_of(r0v);
    c0 = zero_c(r0v);
#ifdef R2
    let r1v = sz[rr1 * p.groups + grp];
    s1 = scale_of(r1v);
    c1 = zero_c(r1v);
#endif
#ifdef R4
    let r2v = sz[rr2 * p.groups + grp];
    let r3v = sz[rr3 * p.groups + grp];
    s2 = scale_of(r2v);
    c2 = zero_c(r2v);
    s3 = scale_of(r3v);
    c3 = zero_c(r3v);
#endif
#ifdef R8
    let r4v = sz[rr4 * p.groups + grp];
    let r5v = sz[rr5 * p.groups + grp];
    let r6v = sz[rr6 * p.groups + grp];
    let r7v = sz[rr7 * p.groups + grp];
    s4 = scale_of(r4v);
    c4 = zero_c(r4v);
    s5 = scale_of(r5v);
    c5 = zero_c(r5v);
    s6 = scale_of(r6v);
    c6 = zero_c(r6v);
    s7 = scale_of(r7v);
    c7 = zero_c(r7v);
#endif
}

// Word i of the unit (k .. k+7) for every row, into the unit partials.
fn word_rows(i: u32, k: u32) {
    let xa = x4(k);
    let xb = x4(k + 4u);
    pa0 += dot_word(wd(q0, i), c0, xa, xb);
#ifdef R2
    pa1 += dot_word(wd(q1, i), c1, xa, xb);
#endif
#ifdef R4
    pa2 += dot_word(wd(q2, i), c2, xa, xb);
    pa3 += dot_word(wd(q3, i), c3, xa, xb);
#endif
#ifdef R8
    pa4 += dot_word(wd(q4, i), c4, xa, xb);
    pa5 += dot_word(wd(q5, i), c5, xa, xb);
    pa6 += dot_word(wd(q6, i), c6, xa, xb);
    pa7 += dot_word(wd(q7, i), c7, xa, xb);
#endif
}

fn step(j: u32) {
    load_rows(j);
    let e = j * KU;
    load_groups(e / p.gs);
    pa0 = TV(0.0);
    pa1 = TV(0.0);
    pa2 = TV(0.0);
    pa3 = TV(0.0);
    pa4 = TV(0.0);
    pa5 = TV(0.0);
    pa6 = TV(0.0);
    pa7 = TV(0.0);
    word_rows(0u, e);
#ifdef VEC2
    word_rows(1u, e + 8u);
#endif
#ifdef VEC4
    word_rows(2u, e + 16u);
    word_rows(3u, e + 24u);
#endif
    a0 += s0 * pa0;
#ifdef R2
    a1 += s1 * pa1;
#endif
#ifdef R4
    a2 += s2 * pa2;
    a3 += s3 * pa3;
#endif
#ifdef R8
    a4 += s4 * pa4;
    a5 += s5 * pa5;
    a6 += s6 * pa6;
    a7 += s7 * pa7;
#endif
}
#else
// Act-order: every k has its own group, so scale and zero are looked up per weight (the slow path).
struct SC4 { s: vec4<f32>, c: vec4<f32> }

fn groups4(base: u32, gi: vec4<u32>) -> SC4 {
    let a = sz[base + gi.x];
    let b = sz[base + gi.y];
    let c = sz[base + gi.z];
    let d = sz[base + gi.w];
    let s = vec4<f32>(unpack2x16float(a).x, unpack2x16float(b).x, unpack2x16float(c).x, unpack2x16float(d).x);
    let z = vec4<f32>(f32(a >> 16u), f32(b >> 16u), f32(c >> 16u), f32(d >> 16u));
    return SC4(s, QBASE + z);
}

// Word q of chunk-local row `row` (k .. k+7, groups ga | gb): (q − zero)·s is exact in f32.
fn dot_word_g(q: u32, row: u32, ga: vec4<u32>, gb: vec4<u32>, xa: X4, xb: X4) -> TV {
    let base = row * p.groups;
    let la = groups4(base, ga);
    let lb = groups4(base, gb);
    let lo = (nib4(q) - la.c) * la.s;
    let hi = (nib4(q >> 16u) - lb.c) * lb.s;
    return lo.x * xa.k0 + lo.y * xa.k1 + lo.z * xa.k2 + lo.w * xa.k3
         + hi.x * xb.k0 + hi.y * xb.k1 + hi.z * xb.k2 + hi.w * xb.k3;
}

fn word_rows(i: u32, k: u32) {
    let xa = x4(k);
    let xb = x4(k + 4u);
    let ga = g_idx[k / 4u];
    let gb = g_idx[k / 4u + 1u];
    a0 += dot_word_g(wd(q0, i), rr0, ga, gb, xa, xb);
#ifdef R2
    a1 += dot_word_g(wd(q1, i), rr1, ga, gb, xa, xb);
#endif
#ifdef R4
    a2 += dot_word_g(wd(q2, i), rr2, ga, gb, xa, xb);
    a3 += dot_word_g(wd(q3, i), rr3, ga, gb, xa, xb);
#endif
#ifdef R8
    a4 += dot_word_g(wd(q4, i), rr4, ga, gb, xa, xb);
    a5 += dot_word_g(wd(q5, i), rr5, ga, gb, xa, xb);
    a6 += dot_word_g(wd(q6, i), rr6, ga, gb, xa, xb);
    a7 += dot_word_g(wd(q7, i), rr7, ga, gb, xa, xb);
#endif
}

fn step(j: u32) {
    load_rows(j);
    let e = j * KU;
    word_rows(0u, e);
#ifdef VEC2
    word_rows(1u, e + 8u);
#endif
#ifdef VEC4
    word_rows(2u, e + 16u);
    word_rows(3u, e + 24u);
#endif
}
#endif
#endif

// ---- reduction and store ---------------------------------------------------------------------

// Tree over the workgroup (no subgroups): slot i's total lands in tot[i].
fn tree(i: u32, v: TV, tid: u32) {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) { red[tid] += red[tid + s]; }
        workgroupBarrier();
    }
    if (tid == 0u) { tot[i] = red[0]; }
}

fn reduce_tree(tid: u32) {
    tree(0u, a0, tid);
#ifdef R2
    tree(1u, a1, tid);
#endif
#ifdef R4
    tree(2u, a2, tid);
    tree(3u, a3, tid);
#endif
#ifdef R8
    tree(4u, a4, tid);
    tree(5u, a5, tid);
    tree(6u, a6, tid);
    tree(7u, a7, tid);
#endif
#ifdef NORM
    tree(ROWS, ss, tid);
#endif
    workgroupBarrier();
}

#ifdef SUBGROUPS
#ifdef SG_TREE
const SG_RED: bool = false;
#else
const SG_RED: bool = true;
#endif

// Slot i: the subgroup's sum, stored by its first lane at red[sg_id, i].
fn put(i: u32, v: TV, lane: Lane) {
    let s = subgroupAdd(v);
    if (lane.sg_lane == 0u) { red[lane.sg_id * NP + i] = s; }
}

fn reduce_sg(lane: Lane) {
    put(0u, a0, lane);
#ifdef R2
    put(1u, a1, lane);
#endif
#ifdef R4
    put(2u, a2, lane);
    put(3u, a3, lane);
#endif
#ifdef R8
    put(4u, a4, lane);
    put(5u, a5, lane);
    put(6u, a6, lane);
    put(7u, a7, lane);
#endif
#ifdef NORM
    put(ROWS, ss, lane);
#endif
    workgroupBarrier();
    if (lane.tid < NP) {
        var s = TV(0.0);
        for (var i = 0u; i < lane.sg_count; i++) { s += red[i * NP + lane.tid]; }
        tot[lane.tid] = s;
    }
    workgroupBarrier();
}
#endif

// The NP slot totals into tot (call from uniform control flow).
fn reduce_all(lane: Lane) {
#ifdef SUBGROUPS
    if (SG_RED) { reduce_sg(lane); } else { reduce_tree(lane.tid); }
#else
    reduce_tree(lane.tid);
#endif
}

// Row slot i's total with the NORM factor and the bias of chunk-local row r.
fn finished(i: u32, r: u32) -> TV {
    var v = tot[i];
#ifdef NORM
    v *= inverseSqrt(tot[ROWS] / f32(p.k) + TV(p.eps));
#endif
#ifdef BIAS
    v += bias[p.row0 + r];
#endif
    return v;
}

// y[t, col] (+)= lane t of v, for every token.
fn store(col: u32, v: TV) {
    for (var t = 0u; t < TOKENS; t++) {
        let i = t * p.y_stride + col;
#ifdef ACC
        y[i] += lane_of(v, t);
#else
        y[i] = lane_of(v, t);
#endif
    }
}

@compute @workgroup_size(WG)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, lane: Lane) {
    let r0 = (wid.x + wid.y * nwg.x) * ROWS;   // first chunk-local row of this workgroup
    if (r0 >= p.rows) { return; }                // uniform per workgroup
    set_rows(r0);
    a0 = TV(0.0);
    a1 = TV(0.0);
    a2 = TV(0.0);
    a3 = TV(0.0);
    a4 = TV(0.0);
    a5 = TV(0.0);
    a6 = TV(0.0);
    a7 = TV(0.0);
    ss = TV(0.0);
    let units = p.row_words / VW;
    for (var j = lane.tid; j < units; j += WG) {
        step(j);
    }
    reduce_all(lane);
#ifdef SILU
    // Thread i < ROWS/2 finishes the pair (gate, up) = rows (r0 + 2i, r0 + 2i + 1); rows are even.
    let r = r0 + 2u * lane.tid;
    if (lane.tid < ROWS / 2u && r < p.rows) {
        let gate = finished(2u * lane.tid, r);
        let up = finished(2u * lane.tid + 1u, r + 1u);
        store((p.row0 + r) / 2u, gate / (TV(1.0) + exp(-gate)) * up);
    }
#else
    let r = r0 + lane.tid;
    if (lane.tid < ROWS && r < p.rows) {
        store(p.row0 + r, finished(lane.tid, r));
    }
#endif
}
