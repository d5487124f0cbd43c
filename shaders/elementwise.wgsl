// Element-wise ops, one thread per output element; workgroups beyond 65535 fold into y
// (linear workgroup index wid.x + wid.y * nwg.x). f32 throughout.
//   silu_mul: out[T, I] = silu(gu[T, 0..I]) · gu[T, I..2I]   (gate | up halves of each row; with
//             INTERLEAVED the row is gate_0, up_0, gate_1, up_1, …)
//   gelu:     x[n] = x·Φ(x) = 0.5·x·(1 + erf(x/√2)), in place (exact erf form, see `erf_f32`)
//   add:      y[n] += x[n]
//   gather_rows: out[R, C] = x[rows[r], :] (a row index ≥ T gives zeros)

const WG: u32 = 256u;

struct Params {
    n: u32,      // output elements
    i: u32,      // silu_mul: I, the output row length; gather_rows: C
    t: u32,      // gather_rows: rows T of x
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn index(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

#ifdef SILU_MUL
@group(0) @binding(1) var<storage, read> gu: array<f32>;         // [T, 2I] (gate | up, or interleaved)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // [T, I]

@compute @workgroup_size(WG)
fn silu_mul(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(lid, wid, nwg);
    if (e >= p.n) { return; }
    let t = e / p.i;
    let j = e % p.i;
#ifdef INTERLEAVED
    let g = gu[2u * e];
    let u = gu[2u * e + 1u];
#else
    let g = gu[t * 2u * p.i + j];
    let u = gu[t * 2u * p.i + p.i + j];
#endif
    out[e] = g / (1.0 + exp(-g)) * u;
}
#endif

#ifdef GELU
@group(0) @binding(1) var<storage, read_write> x: array<f32>;    // [n]

// erf in f32, max abs error about 6e-8 with a correctly rounded exp (N. Juffa's minimax fits:
// an odd polynomial below |a| = 0.927734375, 1 − exp(poly) above).
fn erf_f32(a: f32) -> f32 {
    let t = abs(a);
    let s = a * a;
    if (t > 0.927734375) {
        var r = fma(-1.72853470e-5, t, 3.83197126e-4);
        let u = fma(-3.88396438e-3, t, 2.42546219e-2);
        r = fma(r, s, u);
        r = fma(r, t, -1.06777877e-1);
        r = fma(r, t, -6.34846687e-1);
        r = fma(r, t, -1.28717512e-1);
        r = fma(r, t, -t);
        return sign(a) * (1.0 - exp(r));
    }
    var r = -5.96761703e-4;
    r = fma(r, s, 4.99119423e-3);
    r = fma(r, s, -2.67681349e-2);
    r = fma(r, s, 1.12819925e-1);
    r = fma(r, s, -3.76125336e-1);
    r = fma(r, s, 1.28379166e-1);
    return fma(r, a, a);
}

@compute @workgroup_size(WG)
fn gelu(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(lid, wid, nwg);
    if (e >= p.n) { return; }
    let v = x[e];
    x[e] = 0.5 * v * (1.0 + erf_f32(v * 0.70710678118654752));
}
#endif

#ifdef ADD
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [n]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;    // [n]

@compute @workgroup_size(WG)
fn add(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(lid, wid, nwg);
    if (e >= p.n) { return; }
    y[e] += x[e];
}
#endif

#ifdef GATHER_ROWS
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [T, C]
@group(0) @binding(2) var<storage, read> rows: array<u32>;       // [R]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // [R, C]

@compute @workgroup_size(WG)
fn gather_rows(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(lid, wid, nwg);
    if (e >= p.n) { return; }
    let src = rows[e / p.i];
    out[e] = select(0.0, x[src * p.i + e % p.i], src < p.t);
}
#endif
